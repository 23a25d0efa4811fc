"""The one iteration loop every dnmf model runs on: state on the cluster, scalars on the driver.

A model plugs in a :class:`Step` (how to settle its state on the cluster,
build one iteration's graph, judge the iteration's scalars, and finish); the
loop owns everything else, the same way for every model:

- iterations, ``max_iter`` and ``max_time``, the callback and logging;
- one round trip per iteration: the new state and the step's scalar vector
  are persisted together, then only the scalars are fetched. On a Client the
  next iteration may be submitted before they are (``dnmf.pipeline``, see
  :meth:`dnmf.engine.runner.Runner.pipelines`): the workers go from one iteration's
  last task to the next one's first without waiting for the driver. It is
  not submitted after the last iteration nor where a checkpoint or lineage
  cut replaces the state, and it is dropped, with the random generator put
  back, when the iteration's scalars end the fit;
- checkpoints when due (the first two state arrays, the loop state and the
  random generator's state) and once at the end;
- recovery after lost workers or lost data (retry from the last checkpoint
  or the initial factors, at most ``max_retries`` times);
- lineage cuts with one size policy (:func:`dnmf.engine.runner.lineage_policy`):
  after a checkpoint the state continues from the checkpoint's blocks;
  without one it passes through the client every ``every`` iterations when
  it is at most ``max_bytes``;
- the :class:`~sklearn.exceptions.ConvergenceWarning` of a fit that ran out
  of iterations;
- memory: the loop holds one state between iterations. During a step it
  keeps no reference to the state the step reads (unless the step says it
  may roll back to it, ``rolls_back``), so the cluster drops each of its
  blocks once the tasks that read it have run, and the old and new factors
  are not both held whole (submitted ahead, iteration t + 1 reads state t
  while the loop still holds it: until t's scalars are back). Starting
  factors handed over in a ``list`` are released once settled (see
  :func:`run`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dask.array as da
import numpy as np

from .. import caller
from .checkpoint import Checkpointer, LoopState, rng_from_json, rng_to_json
from .checkpoint import load as load_checkpoint
from .runner import FitFailed, Runner, lineage_policy, nbytes, recoverable_errors

logger = logging.getLogger("dnmf")

#: ``callback(iteration, elapsed_seconds, loss)``; returning ``False`` stops the fit.
Callback = Callable[[int, float, float], object]
#: ``report(iteration, loss, detail="")`` records a loss, logs it and calls the callback;
#: returns False when the callback asked to stop.
Report = Callable[..., bool]
#: The persisted state of a model: a tuple of Dask arrays (None where unused); the
#: first two are the factors that checkpoints hold.
State = tuple


@dataclass(frozen=True)
class Verdict:
    """What a step's scalars mean for the loop."""

    converged: bool = False
    #: Continue from the state the iteration started from (a lagged convergence test).
    rollback: bool = False
    #: The callback asked to stop.
    stop: bool = False


class Step(Protocol):
    """What a model plugs into :func:`run`."""

    #: Appended to the ConvergenceWarning's "Maximum number of iterations N reached." message.
    not_converged_hint: str

    # Optional: ``rolls_back`` (bool, default True): whether ``observe`` may return
    # ``Verdict(rollback=True)``. A step that says False lets the loop release the
    # state each iteration started from while the iteration runs (see the module doc).
    # Optional: ``persist(runner, state, scalars) -> (state, (scalars,))``: what the loop
    # keeps of an iteration (default: persist the whole state with the scalars). A step
    # whose state lives in storage persists only the scalars (whose graph writes it)
    # and says ``lineage_free = True``: its state has no lineage to cut.

    def settle(self, runner: Runner, factors: tuple[da.Array, da.Array]) -> State:
        """Persist the two factors and return the whole state (with what is derived from them)."""
        ...

    def build(self, state: State, iteration: int) -> tuple[State, da.Array]:
        """The lazy graph of one iteration: the new state and its scalar vector."""
        ...

    def observe(self, st: LoopState, iteration: int, scalars: np.ndarray, report: Report) -> Verdict:
        """Record the iteration's scalars in ``st`` (losses through ``report``) and judge convergence."""
        ...

    def finish(self, runner: Runner, state: State, st: LoopState, converged: bool, report: Report) -> float:
        """The final loss of ``state`` (reporting it if it was not yet known)."""
        ...

    def recover(self) -> tuple[da.Array, da.Array, LoopState]:
        """Reload lost data and return the factors and loop state to continue from."""
        ...


@dataclass
class LoopResult:
    """The end of a loop: the persisted state and what the loop recorded."""

    state: State
    loop_state: LoopState
    converged: bool
    stopped: bool
    final_loss: float
    elapsed: float
    lineage_cuts: int = 0

    @property
    def n_iter(self) -> int:
        return self.loop_state.iteration

    @property
    def history(self) -> list[float]:
        return list(self.loop_state.history)


def _restore(rng: np.random.RandomState, saved: list | None) -> None:
    """Put ``rng`` back in the state ``rng_to_json`` recorded."""
    restored = rng_from_json(saved)
    if restored is not None:
        rng.set_state(restored.get_state())


def _present(state: State) -> list[da.Array]:
    return [a for a in state if a is not None]


def _persist_state(runner: Runner, state: State, *extra: da.Array) -> tuple[State, tuple]:
    """Persist the arrays of ``state`` and ``extra`` in one call; the same shapes back."""
    arrays = _present(state)
    done = list(runner.persist(*arrays, *extra))
    out = tuple(done.pop(0) if a is not None else None for a in state)
    return out, tuple(done)


def run(
    step: Step,
    factors: tuple[da.Array, da.Array] | list[da.Array],
    *,
    max_iter: int,
    tol: float,
    max_time: float | None = None,
    verbose: int = 0,
    runner: Runner | None = None,
    callback: Callback | None = None,
    rng: np.random.RandomState | None = None,
    state: LoopState | None = None,
    checkpointer: Checkpointer | None = None,
    recover: bool = False,
    max_retries: int = 3,
) -> LoopResult:
    """Iterate ``step`` from ``factors`` until it converges, stops, or runs out of iterations or time.

    Parameters
    ----------
    step : Step
        The model's plug-in.
    factors : (dask array, dask array) or list of them
        The starting factors (e.g. ``W`` (m, k) and ``Ht`` (n, k)), the pair
        checkpoints hold. A list is emptied once the step has settled them:
        a caller that hands its only references over that way does not keep
        the starting factors (as large as the state) alive for the whole fit.
    max_iter, tol, max_time, verbose
        As the estimators' parameters of the same names; ``tol`` only decides
        whether running out of iterations warns.
    runner : Runner, optional
        Where to run; the current Dask scheduler by default.
    callback : callable, optional
        ``callback(iteration, elapsed_seconds, loss)`` after every iteration
        whose loss is known; returning ``False`` stops the fit.
    rng : RandomState, optional
        The model's random generator (e.g. coordinate orders); restored from a
        resumed state and recorded in checkpoints.
    state : LoopState, optional
        Where to continue from (a resumed checkpoint); a fresh start if None.
    checkpointer : Checkpointer, optional
        Writes checkpoints when due and once at the end.
    recover : bool
        Retry iterations that failed because workers or their data were lost,
        from ``step.recover()``; without it such errors propagate.
    max_retries : int
        Recoveries allowed in one fit before :class:`FitFailed` is raised.

    Returns
    -------
    LoopResult
    """
    runner = runner or Runner()
    # Handed over in a list that _iterate empties: this frame must not keep the starting factors alive.
    held = [factors]
    del factors
    with runner.fit_memory():
        return _iterate(
            step,
            held,
            runner,
            max_iter=max_iter,
            tol=tol,
            max_time=max_time,
            verbose=verbose,
            callback=callback,
            rng=rng,
            state=state,
            checkpointer=checkpointer,
            recover=recover,
            max_retries=max_retries,
        )


def _iterate(
    step: Step,
    held: list,
    runner: Runner,
    *,
    max_iter: int,
    tol: float,
    max_time: float | None,
    verbose: int,
    callback: Callback | None,
    rng: np.random.RandomState | None,
    state: LoopState | None,
    checkpointer: Checkpointer | None,
    recover: bool,
    max_retries: int,
) -> LoopResult:
    """:func:`run`'s loop, with its runner; ``held`` is ``[factors]``, emptied here."""
    (factors,) = held
    held.clear()
    st = state if state is not None else LoopState()
    if rng is not None and st.rng_state is not None:
        _restore(rng, st.rng_state)
    initial_rng = rng_to_json(rng)
    start = time.perf_counter() - st.elapsed
    cut_every, cut_max_bytes = lineage_policy()
    cuts = 0
    retries = 0
    recoverable = recoverable_errors() if runner.client is not None else ()
    converged = stopped = False

    def report(iteration: int, loss: float, detail: str = "") -> bool:
        st.history.append(loss)
        elapsed = time.perf_counter() - start
        hist = st.history
        rel = (hist[-2] - loss) / hist[-2] if len(hist) > 1 and hist[-2] else math.nan
        msg = "iteration %d: loss %.8g (relative change %.3g%s), %.2f s"
        (logger.info if verbose else logger.debug)(msg, iteration, loss, rel, detail, elapsed)
        if callback is not None:
            return callback(iteration, elapsed, loss) is not False
        return True

    def save_checkpoint(state: State) -> None:
        assert checkpointer is not None
        st.elapsed = time.perf_counter() - start
        st.rng_state = rng_to_json(rng)
        checkpointer.save(runner, state[0], state[1], st)

    current = step.settle(runner, (factors[0], factors[1]))
    if isinstance(factors, list):
        factors.clear()
    del factors
    rolls_back = bool(getattr(step, "rolls_back", True))
    custom_keep = getattr(step, "persist", None)
    keep = custom_keep or _persist_state
    lineage_free = bool(getattr(step, "lineage_free", False))
    # A step whose state lives in storage commits it in observe: nothing may be built on
    # an iteration before that.
    pipeline = custom_keep is None and runner.pipelines()
    ahead: tuple | None = None  # iteration n_iter + 1, submitted before n_iter's scalars came back
    rng_before_ahead = None
    while st.iteration < max_iter:
        n_iter = st.iteration + 1
        previous = current if rolls_back else None
        checkpoint_due = checkpointer is not None and checkpointer.due(n_iter)
        cut_due = runner.client is not None and not lineage_free and n_iter % cut_every == 0
        try:
            if ahead is None:
                lazy, lazy_scalars = step.build(current, n_iter)
                # From here only the submitted graph holds the state it reads: each of its
                # blocks is released as soon as its tasks ran, not when the step ends.
                current = ()
                # The last iteration's scalars are released only now, after the graph has gone.
                # Released before it, they went first, and the Client held the graph back for
                # its batching interval (10 ms at the scheduler, every iteration).
                new, (scalars,) = keep(runner, lazy, lazy_scalars)
                del lazy, lazy_scalars
            else:
                current = ()
                (new, (scalars,)), ahead = ahead, None
            if pipeline and n_iter < max_iter and not (checkpoint_due or cut_due):
                # The next iteration's graph goes to the scheduler now: its first tasks start
                # as soon as this iteration's factors exist, not after this iteration's scalars
                # have reached the driver and a new graph has reached the scheduler. It is
                # dropped (and the random generator put back) if this iteration ends the fit.
                rng_before_ahead = None if rng is None else rng.get_state()
                lazy, following = step.build(new, n_iter + 1)
                ahead = keep(runner, lazy, following)
                del lazy, following
            s = runner.fetch(scalars)
        except recoverable as exc:
            ahead = None
            retries += 1
            where = checkpointer.last.path if checkpointer and checkpointer.last else None
            if not recover or retries > max_retries:
                hint = (
                    f" Resume from the checkpoint {where}."
                    if where
                    else " Fit with checkpoint=PATH to keep progress across failures."
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
            A, B, st = step.recover()
            if rng is not None:
                _restore(rng, st.rng_state or initial_rng)
            start = time.perf_counter() - st.elapsed
            current = step.settle(runner, (A, B))
            del A, B  # or they would keep the recovered factors for the rest of the fit
            continue
        current = new
        st.iteration = n_iter
        verdict = step.observe(st, n_iter, s, report)
        timed_out = max_time is not None and time.perf_counter() - start >= max_time
        if ahead is not None and (verdict.rollback or verdict.stop or verdict.converged or timed_out):
            ahead = None  # built on a state the fit does not continue from
            if rng is not None and rng_before_ahead is not None:
                rng.set_state(rng_before_ahead)
        if verdict.rollback:
            if previous is None:
                raise RuntimeError(f"{type(step).__name__} rolled back with rolls_back False: it must say True.")
            current = previous
        previous = None  # not through a checkpoint or a lineage cut: a third copy of the state
        stopped = verdict.stop
        if verdict.converged:
            converged = True
            break
        if stopped:
            break
        if timed_out:
            logger.info("stopping after %d iterations: max_time=%s s reached", n_iter, max_time)
            break
        if checkpointer is not None and checkpoint_due and n_iter < max_iter:
            save_checkpoint(current)
            if runner.client is None or lineage_free:
                continue  # local schedulers keep values in the graph: no lineage to cut
            # Continue from the checkpoint's blocks: cuts the lineage of the factors.
            _, _, A, B = load_checkpoint(checkpointer.path, checkpointer.storage_options)
            (A, B), _ = _persist_state(runner, (A, B))
            rest = _present(current[2:])
            rebased = iter(runner.rebase(*rest))
            current = (A, B, *(next(rebased) if a is not None else None for a in current[2:]))
            del A, B  # or they would hold this state's factors until the next checkpoint
            cuts += 1
        elif not cut_due or n_iter == max_iter:
            continue
        elif nbytes(*_present(current)) <= cut_max_bytes:
            rebased = iter(runner.rebase(*_present(current)))
            current = tuple(next(rebased) if a is not None else None for a in current)
            cuts += 1
        else:
            logger.debug(
                "iteration %d: state above %d bytes, lineage kept (checkpoint to cut it)", n_iter, cut_max_bytes
            )
    final = step.finish(runner, current, st, converged, report)
    if checkpointer is not None:
        save_checkpoint(current)
    if not converged and not stopped and st.iteration == max_iter and tol > 0:
        # Imported here: Dask workers import this module (a factor store's tasks live beside it), and
        # scikit-learn with pandas and pyarrow would add about 110 MiB to every worker process.
        from sklearn.exceptions import ConvergenceWarning

        caller.warn(f"Maximum number of iterations {max_iter} reached.{step.not_converged_hint}", ConvergenceWarning)
    return LoopResult(
        state=current,
        loop_state=st,
        converged=converged,
        stopped=stopped,
        final_loss=final,
        elapsed=time.perf_counter() - start,
        lineage_cuts=cuts,
    )
