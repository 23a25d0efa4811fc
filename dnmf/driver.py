"""The iteration loop: state on the cluster, scalars on the driver.

Each iteration builds one step graph (``blocked.step``), persists the new
``W``, ``Ht`` and ``HHt`` on the workers and computes only the step's scalar
vector. Persisting releases the previous state, so the task graph does not
grow with the number of iterations.

Stopping rules follow scikit-learn for each solver, so ``n_iter_`` agrees
(``stopping="auto"``):

- ``cd``: the summed projected-gradient violation of the iteration divided
  by that of the first iteration falls to ``tol`` or below;
- ``mu``: every 10 iterations, the decrease of the error since the last
  check divided by the error at initialisation falls below ``tol``;
- ``anls-bpp``: as ``cd``, with the projected gradient at the start of each
  half-step.

``stopping="stationarity"`` applies the first rule and ``stopping="loss"``
the second to any solver. The stationarity measure (``S_VIOLATION``) comes
with every step at no extra pass over X, and its ratio to the first
iteration's is kept in ``FitResult.stationarity_history``.

For beta-divergences other than Frobenius the error of an iteration's
result is measured during the next iteration (it needs ``W @ H`` at X's
non-zeros, which that iteration computes anyway). When that lagged check
says the fit converged at iteration ``t``, the driver returns the state of
iteration ``t`` it kept aside, so the result is exactly scikit-learn's.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import dask
import dask.array as da
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from . import blocked, kernels

logger = logging.getLogger("dnmf")

Callback = Callable[[int, float, float], object]


@dataclass
class FitResult:
    """What a fit returns: the factors stay distributed (persisted)."""

    W: da.Array
    Ht: da.Array
    n_iter: int
    loss_history: list[float] = field(default_factory=list)
    reconstruction_err: float = math.nan
    converged: bool = False
    elapsed: float = 0.0
    stationarity_history: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LoopConfig:
    solver: str
    beta: float
    tol: float
    max_iter: int
    max_time: float | None
    l1_reg_W: float
    l1_reg_H: float
    l2_reg_W: float
    l2_reg_H: float
    update_H: bool
    sq_norm_x: float
    shuffle: bool = False
    verbose: int = 0
    stopping: str = "auto"  # "auto", "loss" or "stationarity" (see module doc)
    inner_W: int = 1  # accelerated HALS: largest sweeps per half-step (cd)
    inner_H: int = 1
    inner_tol: float = 0.1


class Runner:
    """Persist and compute on the given Client, or on the current scheduler.

    The step graphs are built minimal, so Dask's graph optimisation (culling,
    fusion) is skipped: on small problems it costs more than the step.
    """

    def __init__(self, client=None, single_block: bool = False):
        self.client = client
        # One block leaves nothing to run in parallel within a step; unless a
        # scheduler was configured, the synchronous one then saves the thread
        # pool's hand-offs (same results).
        self.scheduler = None
        if client is None and single_block and dask.config.get("scheduler", None) is None:
            self.scheduler = "sync"

    def persist(self, *arrays):
        if self.client is not None:
            return tuple(self.client.persist(list(arrays), optimize_graph=False))
        return dask.persist(*arrays, optimize_graph=False, scheduler=self.scheduler)

    def compute(self, array):
        if self.client is not None:
            return self.client.compute(array, sync=True, optimize_graph=False)
        return array.compute(optimize_graph=False, scheduler=self.scheduler)

    def fetch(self, persisted: da.Array) -> np.ndarray:
        """The value of a persisted single-chunk array, with no new graph."""
        if self.client is None:
            (value,) = dict(persisted.__dask_graph__()).values()
            if isinstance(value, np.ndarray):
                return value
        return np.asarray(self.compute(persisted))


def _permutations(config: LoopConfig, k: int, rng: np.random.RandomState | None):
    if config.solver != "cd":
        return None, None
    identity = tuple(range(k))
    if config.shuffle and rng is not None:
        # scikit-learn draws W's permutation, then H's only when H is updated.
        perm_W = tuple(int(t) for t in rng.permutation(k))
        perm_H = tuple(int(t) for t in rng.permutation(k)) if config.update_H else identity
        return perm_W, perm_H
    return identity, identity


def stopping_rule(config: LoopConfig) -> str:
    """The rule ``config.stopping`` names: "auto" picks scikit-learn's per solver."""
    if config.stopping != "auto":
        return config.stopping
    return "loss" if config.solver == "mu" else "stationarity"


def run(
    X: da.Array,
    W: da.Array,
    Ht: da.Array,
    config: LoopConfig,
    *,
    runner: Runner | None = None,
    callback: Callback | None = None,
    rng: np.random.RandomState | None = None,
    holdout: da.Array | None = None,
) -> FitResult:
    """Run the solver from (W, Ht) until a stopping rule holds.

    Parameters
    ----------
    X : dask array (m, n) with NumPy or CSR blocks
    W : dask array (m, k), chunked like X's rows, one column chunk
    Ht : dask array (n, k), chunked like X's columns, one column chunk
    config : LoopConfig
    runner : Runner, optional
        Where to run; the current Dask scheduler by default.
    callback : callable, optional
        ``callback(iteration, elapsed_seconds, loss)`` after every iteration
        whose loss is known (one iteration late for beta != 2). Returning
        ``False`` stops the fit.
    rng : RandomState, optional
        Used for the coordinate order when ``config.shuffle``.
    holdout : dask array (m, n) of CSR blocks, optional
        Held-out coordinates (X must be zero there): fit the entries outside
        them only (Frobenius; see ``blocked.step``). The loss reported is
        then the imputation majoriser of the loss on the kept entries.
    """
    runner = runner or Runner()
    beta = config.beta
    k = W.shape[1]
    start = time.perf_counter()
    (W, Ht) = runner.persist(W, Ht)
    (HHt,) = runner.persist(blocked.gram(Ht))

    history: list[float] = []
    error_at_init = previous_error = None
    violation_init = None
    stationarity: list[float] = []
    rule = stopping_rule(config)
    converged = False
    stop_requested = False
    n_iter = 0

    def report(iteration: int, loss: float) -> bool:
        history.append(loss)
        elapsed = time.perf_counter() - start
        rel = (history[-2] - loss) / history[-2] if len(history) > 1 and history[-2] else math.nan
        msg = "iteration %d: loss %.6g (relative change %.3g), %.2f s"
        if config.verbose:
            logger.info(msg, iteration, loss, rel, elapsed)
        else:
            logger.debug(msg, iteration, loss, rel, elapsed)
        if callback is not None:
            return callback(iteration, elapsed, loss) is not False
        return True

    for n_iter in range(1, config.max_iter + 1):
        perm_W, perm_H = _permutations(config, k, rng)
        params = blocked.StepParams(
            solver=config.solver,
            beta=beta,
            l1_reg_W=config.l1_reg_W,
            l1_reg_H=config.l1_reg_H,
            l2_reg_W=config.l2_reg_W,
            l2_reg_H=config.l2_reg_H,
            update_H=config.update_H,
            incoming_loss=(n_iter == 1),
            perm_W=perm_W,
            perm_H=perm_H,
            inner_W=config.inner_W,
            inner_H=config.inner_H,
            inner_tol=config.inner_tol,
        )
        W_prev, Ht_prev = W, Ht
        W, Ht, HHt, scalars = blocked.step(X, W, Ht, HHt, params, holdout=holdout)
        W, Ht, HHt, scalars = runner.persist(W, Ht, HHt, scalars)
        s = runner.fetch(scalars)

        if beta == 2:
            if n_iter == 1:
                error_at_init = previous_error = kernels.frobenius_from_terms(
                    config.sq_norm_x + s[blocked.S_IMPUTED_IN], s[blocked.S_IN_A], s[blocked.S_IN_B]
                )
            if config.update_H:
                error = kernels.frobenius_from_terms(
                    config.sq_norm_x + s[blocked.S_IMPUTED], s[blocked.S_CROSS_H], s[blocked.S_GRAMDOT_H]
                )
            else:
                error = kernels.frobenius_from_terms(
                    config.sq_norm_x, s[blocked.S_CROSS_W], s[blocked.S_GRAMDOT_W]
                )
            if not report(n_iter, error):
                stop_requested = True
        else:
            # s[S_IN_A] is the divergence of the state this iteration started from.
            lagged = math.sqrt(2 * max(s[blocked.S_IN_A], 0.0))
            if n_iter == 1:
                error_at_init = previous_error = lagged
            else:
                t = n_iter - 1
                if not report(t, lagged):
                    stop_requested = True
                if rule == "loss" and config.tol > 0 and t % 10 == 0:
                    if (previous_error - lagged) / error_at_init < config.tol:
                        W, Ht = W_prev, Ht_prev
                        n_iter = t
                        converged = True
                        break
                    previous_error = lagged

        violation = s[blocked.S_VIOLATION]
        if n_iter == 1:
            violation_init = violation
        stationarity.append(violation / violation_init if violation_init else 0.0)
        if rule == "stationarity":
            if violation_init == 0:
                converged = True
                break
            if violation / violation_init <= config.tol:
                converged = True
                break
        elif beta == 2 and rule == "loss" and config.tol > 0 and n_iter % 10 == 0:
            if (previous_error - error) / error_at_init < config.tol:
                converged = True
                break
            previous_error = error

        if stop_requested:
            break
        if config.max_time is not None and time.perf_counter() - start >= config.max_time:
            logger.info("stopping after %d iterations: max_time=%s s reached", n_iter, config.max_time)
            break

    if beta == 2:
        final_error = history[-1] if history else math.nan
    elif converged:
        final_error = history[-1]
    else:
        HHt = runner.persist(blocked.gram(Ht))[0]
        terms = np.asarray(runner.compute(blocked.objective_terms(X, W, Ht, HHt, beta)))
        final_error = math.sqrt(2 * max(terms[0], 0.0))
        report(n_iter, final_error)

    if not converged and n_iter == config.max_iter and config.tol > 0:
        warnings.warn(
            f"Maximum number of iterations {config.max_iter} reached. Increase it "
            "(max_iter) to improve convergence.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(
        W=W,
        Ht=Ht,
        n_iter=n_iter,
        loss_history=history,
        reconstruction_err=final_error,
        converged=converged,
        elapsed=time.perf_counter() - start,
        stationarity_history=stationarity[:n_iter],
    )
