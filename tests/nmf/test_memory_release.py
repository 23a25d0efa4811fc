"""What a fit keeps alive on the cluster: no factor block outlives the iteration after it was made.

The fit runs as ``dnmf fit`` runs it by default: an in-process cluster (one
worker of threads), so the test reads the worker's data directly and holds
weak references to the NumPy blocks it finds there. Before the fix the
initial W (persisted by NNDSVD) stayed referenced by the estimator, the
step driver and the loop for the whole fit: a third copy of W next to the
current and the new one.
"""

from __future__ import annotations

import warnings
import weakref

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.engine import loop
from dnmf.engine.checkpoint import LoopState
from dnmf.engine.runner import Runner
from dnmf.nmf import init
from dnmf.nmf import step as nmf_step
from tests.helpers import alive_after, planted, worker_arrays
from tests.nmf.helpers import loop_config

ROWS = 60  # rows per block of X: W's blocks are (ROWS, K), Ht's (90, K)
K = 4


def _factor_blocks(client) -> list[np.ndarray]:
    """The (ROWS, K) arrays (blocks of W, of its initial value or of the SVD's U) held by the worker."""
    return worker_arrays(client, (ROWS, K))


@pytest.mark.cluster
@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_no_block_of_w_outlives_the_next_iteration(threads_client, init):
    X = planted(240, 90, K, seed=1)
    seen: dict[int, list] = {}
    alive_at: dict[int, int] = {}

    def callback(iteration, elapsed, loss):
        if iteration == 1:
            # Blocks of the initial W (or of a copy of it) that are still held show up here.
            seen[1] = [weakref.ref(b) for b in _factor_blocks(threads_client)]
        if iteration == 3:
            alive_at[3] = len(alive_after(seen[1]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = dnmf.NMF(K, init=init, max_iter=4, tol=0, random_state=0, chunks=ROWS, client=threads_client)
        model.fit(X, callback=callback)
    assert seen[1], "no block of W was found on the worker"
    # At iteration 3 the worker holds W_3 only: W_1 and anything older (the initial W) are gone.
    assert alive_at[3] == 0, f"{alive_at[3]} of {len(seen[1])} factor blocks of iteration 1 still alive at 3"


@pytest.mark.cluster
def test_the_loop_empties_a_handed_over_list_and_frees_the_initial_factors(threads_client):
    A = planted(240, 90, K, seed=2).toarray()
    (Xd,) = threads_client.persist([da.from_array(A, chunks=(ROWS, 90))])
    from distributed import futures_of

    W0, Ht0 = threads_client.persist(list(init.random_init(Xd, K, 1.0, seed=0)))
    threads_client.gather(futures_of(W0))  # wait for the blocks (the result is dropped)
    blocks = [weakref.ref(b) for b in _factor_blocks(threads_client)]
    assert len(blocks) == 4
    config = loop_config(max_iter=2, sq_norm_x=float((A**2).sum()))
    start = [W0, Ht0]
    del W0, Ht0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = nmf_step.run_from(Xd, start, config, runner=Runner(threads_client))
    assert start == []
    assert result.n_iter == 2
    assert not alive_after(blocks), "the initial W outlived the fit"


class _RollsBackAnyway(nmf_step.NMFStep):
    """A step that says it never rolls back, and does."""

    @property
    def rolls_back(self) -> bool:
        return False

    def observe(self, st: LoopState, iteration, s, report):
        super().observe(st, iteration, s, report)
        return loop.Verdict(converged=True, rollback=True)


def test_rolls_back_is_true_where_observe_may_roll_back():
    frobenius = nmf_step.NMFStep(None, loop_config(tol=1e-4, max_iter=10))
    lagged = nmf_step.NMFStep(None, loop_config(solver="mu", beta=1.0, tol=1e-4, max_iter=10))
    stationarity = nmf_step.NMFStep(
        None, loop_config(solver="mu", beta=1.0, stopping="stationarity", tol=1e-4, max_iter=10)
    )
    assert (frobenius.rolls_back, lagged.rolls_back, stationarity.rolls_back) == (False, True, False)

    class Overrides(nmf_step.NMFStep):
        def observe(self, st, iteration, s, report):
            return super().observe(st, iteration, s, report)

    assert Overrides(None, loop_config(tol=1e-4, max_iter=10)).rolls_back


def test_a_step_that_rolls_back_against_its_word_is_an_error():
    Xd = da.from_array(planted(240, 90, K, seed=3).toarray(), chunks=(ROWS, 90))
    config = loop_config()
    with pytest.raises(RuntimeError, match="rolled back with rolls_back False"):
        loop.run(_RollsBackAnyway(Xd, config), init.random_init(Xd, K, 1.0, seed=0), max_iter=3, tol=0.0)
