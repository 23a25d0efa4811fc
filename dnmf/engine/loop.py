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
from collections.abc import Callable
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ..nmf import graph as blocked
from ..nmf import kernels
from .checkpoint import Checkpointer, LoopState, rng_from_json, rng_to_json
from .checkpoint import load as load_checkpoint
from .runner import REBASE_EVERY, REBASE_MAX_BYTES, FitFailed, Runner, nbytes, recoverable_errors

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
    """What the loop needs to know: solver, loss, stopping rule, penalties (already scaled)."""

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


Recover = Callable[[], tuple]


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
    state: LoopState | None = None,
    checkpointer: Checkpointer | None = None,
    recover: Recover | None = None,
    max_retries: int = 3,
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
    state : LoopState, optional
        Where to continue from (a resumed checkpoint); a fresh start if None.
    checkpointer : Checkpointer, optional
        Writes checkpoints when due and once at the end.
    recover : callable, optional
        Called after a lost worker (or lost data) made an iteration fail:
        returns ``(X, W, Ht, state)`` to continue from (the last checkpoint,
        or the initial factors). Without it such errors propagate.
    max_retries : int
        Recoveries allowed in one fit before :class:`FitFailed` is raised.
    """
    runner = runner or Runner()
    beta = config.beta
    k = W.shape[1]
    st = state if state is not None else LoopState()
    if rng is not None and st.rng_state is not None:
        rng.set_state(rng_from_json(st.rng_state).get_state())
    initial_rng = rng_to_json(rng)
    start = time.perf_counter() - st.elapsed
    (W, Ht) = runner.persist(W, Ht)
    (HHt,) = runner.persist(blocked.gram(Ht))
    rule = stopping_rule(config)
    converged = False
    stop_requested = False
    retries = 0
    recoverable = recoverable_errors() if runner.client is not None else ()

    def report(iteration: int, loss: float) -> bool:
        st.history.append(loss)
        elapsed = time.perf_counter() - start
        hist = st.history
        rel = (hist[-2] - loss) / hist[-2] if len(hist) > 1 and hist[-2] else math.nan
        msg = "iteration %d: loss %.6g (relative change %.3g), %.2f s"
        if config.verbose:
            logger.info(msg, iteration, loss, rel, elapsed)
        else:
            logger.debug(msg, iteration, loss, rel, elapsed)
        if callback is not None:
            return callback(iteration, elapsed, loss) is not False
        return True

    def save_checkpoint() -> None:
        st.elapsed = time.perf_counter() - start
        st.rng_state = rng_to_json(rng)
        checkpointer.save(runner, W, Ht, st)

    while st.iteration < config.max_iter:
        n_iter = st.iteration + 1
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
        try:
            W_new, Ht_new, HHt_new, scalars = blocked.step(X, W, Ht, HHt, params, holdout=holdout)
            W_new, Ht_new, HHt_new, scalars = runner.persist(W_new, Ht_new, HHt_new, scalars)
            s = runner.fetch(scalars)
        except recoverable as exc:
            retries += 1
            where = checkpointer.last.path if checkpointer and checkpointer.last else None
            if recover is None or retries > max_retries:
                hint = (
                    f" Resume from the checkpoint {where}."
                    if where
                    else (" Fit with checkpoint=PATH to keep progress across failures.")
                )
                raise FitFailed(
                    f"Iteration {n_iter} failed {retries} time(s) after workers or their data were "
                    f"lost ({type(exc).__name__}: {exc}).{hint}"
                ) from exc
            logger.warning(
                "iteration %d lost work (%s: %s); recovering (%d/%d) from %s",
                n_iter,
                type(exc).__name__,
                exc,
                retries,
                max_retries,
                where or "the initial factors",
            )
            X, W, Ht, st = recover()
            if rng is not None:
                rng.set_state(rng_from_json(st.rng_state or initial_rng).get_state())
            start = time.perf_counter() - st.elapsed
            (W, Ht) = runner.persist(W, Ht)
            (HHt,) = runner.persist(blocked.gram(Ht))
            continue
        W, Ht, HHt = W_new, Ht_new, HHt_new

        if beta == 2:
            if n_iter == 1:
                st.error_at_init = st.previous_error = kernels.frobenius_from_terms(
                    config.sq_norm_x + s[blocked.S_IMPUTED_IN], s[blocked.S_IN_A], s[blocked.S_IN_B]
                )
            if config.update_H:
                error = kernels.frobenius_from_terms(
                    config.sq_norm_x + s[blocked.S_IMPUTED], s[blocked.S_CROSS_H], s[blocked.S_GRAMDOT_H]
                )
            else:
                error = kernels.frobenius_from_terms(config.sq_norm_x, s[blocked.S_CROSS_W], s[blocked.S_GRAMDOT_W])
            if not report(n_iter, error):
                stop_requested = True
        else:
            # s[S_IN_A] is the divergence of the state this iteration started from.
            lagged = math.sqrt(2 * max(s[blocked.S_IN_A], 0.0))
            if n_iter == 1:
                st.error_at_init = st.previous_error = lagged
            else:
                t = n_iter - 1
                # A resumed run may already hold loss(t) from the final pass before its checkpoint.
                if len(st.history) < t and not report(t, lagged):
                    stop_requested = True
                if rule == "loss" and config.tol > 0 and t % 10 == 0:
                    if (st.previous_error - lagged) / st.error_at_init < config.tol:
                        W, Ht = W_prev, Ht_prev
                        st.iteration = t
                        converged = True
                        break
                    st.previous_error = lagged

        st.iteration = n_iter
        violation = s[blocked.S_VIOLATION]
        if n_iter == 1:
            st.violation_init = violation
        st.stationarity.append(violation / st.violation_init if st.violation_init else 0.0)
        if rule == "stationarity":
            if st.violation_init == 0 or violation / st.violation_init <= config.tol:
                converged = True
                break
        elif beta == 2 and rule == "loss" and config.tol > 0 and n_iter % 10 == 0:
            if (st.previous_error - error) / st.error_at_init < config.tol:
                converged = True
                break
            st.previous_error = error

        if stop_requested:
            break
        if config.max_time is not None and time.perf_counter() - start >= config.max_time:
            logger.info("stopping after %d iterations: max_time=%s s reached", n_iter, config.max_time)
            break
        if checkpointer is not None and checkpointer.due(n_iter) and n_iter < config.max_iter:
            save_checkpoint()
            if runner.client is not None:
                # Continue from the checkpoint's blocks: cuts the lineage (see Runner.rebase).
                _, _, W, Ht = load_checkpoint(checkpointer.path, checkpointer.storage_options)
                (W, Ht) = runner.persist(W, Ht)
                (HHt,) = runner.rebase(HHt)
        elif runner.client is not None and n_iter % REBASE_EVERY == 0 and nbytes(W, Ht) <= REBASE_MAX_BYTES:
            W, Ht, HHt = runner.rebase(W, Ht, HHt)

    n_iter = st.iteration
    if beta == 2:
        final_error = st.history[-1] if st.history else math.nan
    elif converged:
        final_error = st.history[-1]
    else:
        HHt = runner.persist(blocked.gram(Ht))[0]
        terms = np.asarray(runner.compute(blocked.objective_terms(X, W, Ht, HHt, beta)))
        final_error = math.sqrt(2 * max(terms[0], 0.0))
        report(n_iter, final_error)
    if checkpointer is not None:
        save_checkpoint()

    if not converged and n_iter == config.max_iter and config.tol > 0:
        warnings.warn(
            f"Maximum number of iterations {config.max_iter} reached. Increase it (max_iter) to improve convergence.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(
        W=W,
        Ht=Ht,
        n_iter=n_iter,
        loss_history=list(st.history),
        reconstruction_err=final_error,
        converged=converged,
        elapsed=time.perf_counter() - start,
        stationarity_history=st.stationarity[:n_iter],
    )
