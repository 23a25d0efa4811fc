"""NMF's plug-in for the engine loop: one blocked step per iteration and scikit-learn's stopping rules.

The state on the cluster is ``(W, Ht, HHt)``; each iteration builds one step
graph (:func:`dnmf.nmf.graph.step`) and the loop fetches only its scalar
vector. Stopping rules follow scikit-learn for each solver, so ``n_iter_``
agrees (``stopping="auto"``):

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
says the fit converged at iteration ``t``, the loop continues from the
state of iteration ``t``, so the result is exactly scikit-learn's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from ..engine import blocks as engine_blocks
from ..engine import loop
from ..engine.checkpoint import Checkpointer, LoopState
from ..engine.graph import column_counts, group_columns, is_store_backed
from ..engine.loop import Callback, Report, Verdict
from ..engine.runner import REBASE_EVERY, REBASE_MAX_BYTES, FitFailed, Runner  # noqa: F401 (re-exported)
from ..storage.placement import row_ranges
from . import graph as blocked
from . import kernels


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
    lineage_cuts: int = 0


@dataclass(frozen=True)
class LoopConfig:
    """What the NMF step needs to know: solver, loss, stopping rule, penalties (already scaled)."""

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


def permutations(config: LoopConfig, k: int, rng: np.random.RandomState | None):
    """The coordinate orders of one cd iteration (drawn as scikit-learn draws them)."""
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


#: Called after lost workers: ``(X, W, Ht, loop_state)`` to continue from.
Recover = Callable[[], tuple]


class NMFStep:
    """The :class:`dnmf.engine.loop.Step` of NMF (all solvers and beta-losses, optional holdout)."""

    not_converged_hint = " Increase it (max_iter) to improve convergence."

    def __init__(
        self,
        X: da.Array,
        config: LoopConfig,
        rng: np.random.RandomState | None = None,
        holdout: da.Array | None = None,
        recover: Recover | None = None,
    ) -> None:
        self.X = X
        self.config = config
        self.rng = rng
        self.holdout = holdout
        self._recover = recover
        self.rule = stopping_rule(config)
        self.runner: Runner | None = None
        self.columns: da.Array | None = None
        self.owners: tuple[str, ...] | None = None
        self.whole: frozenset = frozenset()

    @property
    def rolls_back(self) -> bool:
        """Whether :meth:`observe` may go back to the state an iteration started from.

        Only the lagged loss check (beta-loss other than 2, rule "loss") does;
        a subclass that overrides :meth:`observe` may too. Otherwise the loop
        keeps no reference to that state while the iteration runs.
        """
        if type(self).observe is not NMFStep.observe:
            return True
        return self.config.beta != 2 and self.rule == "loss"

    def settle(self, runner, factors):
        self.runner = runner
        (W,) = runner.persist_rows(factors[0])
        (Ht,) = runner.persist(factors[1])
        (HHt,) = runner.persist(blocked.gram(Ht))
        self.owners = None
        self.columns = self._columns(runner)
        return (W, Ht, HHt)

    def _columns(self, runner) -> da.Array | None:
        """On a cluster, for a sparse X: which rows of Hᵀ each worker's row blocks need.

        Sets ``self.owners`` (the worker of each row block: contiguous ranges,
        where :meth:`Runner.persist_rows` and the scatter of an in-memory X put
        them). Row tasks then run there and receive only the touched rows (see
        :func:`dnmf.nmf.graph.step`); the threaded scheduler and a cluster of
        one worker move no bytes, so they keep the whole blocks. The Dask config key ``dnmf.placement``
        (default True) turns this off.
        """
        if runner.client is None or self.holdout is not None or self.config.beta != 2:
            return None
        if not dask.config.get("dnmf.placement", True):
            return None
        if not sp.issparse(getattr(self.X, "_meta", None)):
            return None
        self.owners, sizes = row_ranges(runner.client, self.X.numblocks[0])
        if len(sizes) < 2:
            # One worker holds every row block: no row of Hᵀ crosses a process, and finding the
            # touched rows would be one more pass over X (0.5 s of the 50M-rating case's setup).
            return None
        (columns,) = runner.persist(group_columns(self.X, sizes))
        counts = np.asarray(runner.compute(column_counts(columns)))
        widths = self.X.chunks[1]
        self.whole = frozenset(
            (g, j) for g, j in np.ndindex(*counts.shape) if counts[g, j] > engine_blocks.SUBSET_MAX_FRACTION * widths[j]
        )
        return columns

    def _read_ahead(self) -> bool:
        """Whether row tasks read their worker's next row block ahead (see :func:`dnmf.nmf.graph.step`).

        Where :meth:`Runner.read_ahead` says so, on the threads (one process,
        whose threads share what is read ahead) or where the row blocks are
        placed (:meth:`_columns`); not on a cluster without placement, where
        a block read ahead may be computed by another worker.
        """
        if self.runner is None or not is_store_backed(self.X):
            return False
        if self.runner.client is not None and self.owners is None:
            return False
        return self.runner.read_ahead()

    def build(self, state, iteration):
        c = self.config
        W, Ht, HHt = state
        perm_W, perm_H = permutations(c, W.shape[1], self.rng)
        params = blocked.StepParams(
            solver=c.solver,
            beta=c.beta,
            l1_reg_W=c.l1_reg_W,
            l1_reg_H=c.l1_reg_H,
            l2_reg_W=c.l2_reg_W,
            l2_reg_H=c.l2_reg_H,
            update_H=c.update_H,
            incoming_loss=(iteration == 1),
            perm_W=perm_W,
            perm_H=perm_H,
            inner_W=c.inner_W,
            inner_H=c.inner_H,
            inner_tol=c.inner_tol,
        )
        W_new, Ht_new, HHt_new, scalars = blocked.step(
            self.X,
            W,
            Ht,
            HHt,
            params,
            holdout=self.holdout,
            columns=self.columns,
            owners=self.owners,
            whole=self.whole,
            read_ahead=self._read_ahead(),
        )
        return (W_new, Ht_new, HHt_new), scalars

    def observe(self, st: LoopState, iteration: int, s: np.ndarray, report: Report) -> Verdict:
        c = self.config
        stop = False
        if c.beta == 2:
            if iteration == 1:
                st.error_at_init = st.previous_error = kernels.frobenius_from_terms(
                    c.sq_norm_x + s[blocked.S_IMPUTED_IN], s[blocked.S_IN_A], s[blocked.S_IN_B]
                )
            if c.update_H:
                error = kernels.frobenius_from_terms(
                    c.sq_norm_x + s[blocked.S_IMPUTED], s[blocked.S_CROSS_H], s[blocked.S_GRAMDOT_H]
                )
            else:
                error = kernels.frobenius_from_terms(c.sq_norm_x, s[blocked.S_CROSS_W], s[blocked.S_GRAMDOT_W])
            stop = not report(iteration, error)
        else:
            # s[S_IN_A] is the divergence of the state this iteration started from.
            lagged = math.sqrt(2 * max(s[blocked.S_IN_A], 0.0))
            if iteration == 1:
                st.error_at_init = st.previous_error = lagged
            else:
                t = iteration - 1
                # A resumed run may already hold loss(t) from the final pass before its checkpoint.
                if len(st.history) < t and not report(t, lagged):
                    stop = True
                if self.rule == "loss" and c.tol > 0 and t % 10 == 0:
                    # A zero initial loss (all-zero X) has nothing left to decrease.
                    if not st.error_at_init or (st.previous_error - lagged) / st.error_at_init < c.tol:
                        st.iteration = t
                        return Verdict(converged=True, rollback=True, stop=stop)
                    st.previous_error = lagged

        violation = s[blocked.S_VIOLATION]
        if iteration == 1:
            st.violation_init = violation
        st.stationarity.append(violation / st.violation_init if st.violation_init else 0.0)
        if self.rule == "stationarity":
            if st.violation_init == 0 or violation / st.violation_init <= c.tol:
                return Verdict(converged=True, stop=stop)
        elif c.beta == 2 and self.rule == "loss" and c.tol > 0 and iteration % 10 == 0:
            if not st.error_at_init or (st.previous_error - error) / st.error_at_init < c.tol:
                return Verdict(converged=True, stop=stop)
            st.previous_error = error
        return Verdict(stop=stop)

    def finish(self, runner, state, st: LoopState, converged: bool, report: Report) -> float:
        if self.config.beta == 2 or converged:
            return st.history[-1] if st.history else math.nan
        W, Ht, _ = state
        HHt = runner.persist(blocked.gram(Ht))[0]
        terms = np.asarray(runner.compute(blocked.objective_terms(self.X, W, Ht, HHt, self.config.beta)))
        final = math.sqrt(2 * max(terms[0], 0.0))
        report(st.iteration, final)
        return final

    def recover(self):
        assert self._recover is not None
        self.X, W, Ht, st = self._recover()
        return W, Ht, st


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
    """Run the NMF solver from (W, Ht) on the engine loop until a stopping rule holds.

    The caller's references keep ``W`` and ``Ht`` alive for the whole fit;
    :func:`run_from` takes them over instead.

    Parameters
    ----------
    X : dask array (m, n) with NumPy or CSR blocks
    W : dask array (m, k), chunked like X's rows, one column chunk
    Ht : dask array (n, k), chunked like X's columns, one column chunk
    config : LoopConfig
    runner, callback, rng, holdout, state, checkpointer, recover, max_retries
        See :func:`run_from`.

    Returns
    -------
    FitResult
    """
    factors = [W, Ht]
    del W, Ht
    return run_from(
        X,
        factors,
        config,
        runner=runner,
        callback=callback,
        rng=rng,
        holdout=holdout,
        state=state,
        checkpointer=checkpointer,
        recover=recover,
        max_retries=max_retries,
    )


def run_from(
    X: da.Array,
    factors: list[da.Array],
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
    step: NMFStep | None = None,
) -> FitResult:
    """Run the NMF solver from ``factors = [W, Ht]``, which it takes over, until a stopping rule holds.

    As :func:`run`, except that the list is emptied once the loop has
    settled the factors: a caller that keeps no other reference to the
    starting factors (persisted, as large as the state) lets the cluster
    release them during the first iteration instead of at the end of the fit.

    Parameters
    ----------
    X : dask array (m, n) with NumPy or CSR blocks
    factors : list [W, Ht]
        ``W`` dask array (m, k), chunked like X's rows, one column chunk;
        ``Ht`` dask array (n, k), chunked like X's columns, one column chunk.
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
        them only (Frobenius; see :func:`dnmf.nmf.graph.step`). The loss
        reported is then the imputation majoriser of the loss on the kept
        entries.
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
    step : NMFStep, optional
        The step to run, built on the same ``X``, ``config``, ``rng``,
        ``holdout`` and ``recover``: e.g. :class:`dnmf.nmf.stored.StoredNMFStep`
        (W, Ht and HHt in a factor store). ``NMFStep`` by default.

    Returns
    -------
    FitResult
    """
    if step is None:
        step = NMFStep(X, config, rng=rng, holdout=holdout, recover=recover)
    out = loop.run(
        step,
        factors,
        max_iter=config.max_iter,
        tol=config.tol,
        max_time=config.max_time,
        verbose=config.verbose,
        runner=runner,
        callback=callback,
        rng=rng,
        state=state,
        checkpointer=checkpointer,
        recover=recover is not None,
        max_retries=max_retries,
    )
    W_out, Ht_out, _ = out.state
    return FitResult(
        W=W_out,
        Ht=Ht_out,
        n_iter=out.n_iter,
        loss_history=out.history,
        reconstruction_err=out.final_loss,
        converged=out.converged,
        elapsed=out.elapsed,
        stationarity_history=out.loop_state.stationarity[: out.n_iter],
        lineage_cuts=out.lineage_cuts,
    )
