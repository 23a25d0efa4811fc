"""What a RatingsNMF fit keeps alive on the cluster: one U while an iteration is observed.

As tests/nmf/test_memory_release.py does for NMF: an in-process cluster (one
worker of threads), whose data the test reads directly. MaskedStep never rolls
back, so the loop holds no reference to the state an iteration started from:
once the iteration ran, its blocks of U are released, and the worker holds the
new U only.
"""

from __future__ import annotations

import time
import warnings
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.masked.kernels import MaskedParams
from dnmf.masked.step import MaskedStep
from tests.helpers import alive_after

ROWS = 60  # users per row band: U's blocks are (ROWS, q), V's (90, q)
BANDS = 4


def _u_blocks(client) -> list[np.ndarray]:
    """The 2-D NumPy arrays of ROWS rows on the worker: blocks of U (V's have 90 rows)."""
    (worker,) = client.cluster.workers.values()
    return [v for v in list(worker.data.values()) if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == ROWS]


def _settled_count(client, want: int, seconds: float = 5.0) -> int:
    """How many blocks of U the worker holds once it had up to ``seconds`` to act on releases."""
    deadline = time.monotonic() + seconds
    while True:
        count = len(_u_blocks(client))
        if count <= want or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@pytest.mark.cluster
@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_no_block_of_u_outlives_its_iteration(threads_client, feedback):
    rng = np.random.default_rng(5)
    X = sp.random(ROWS * BANDS, 90, density=0.15, random_state=rng, format="csr")
    X.data = np.ceil(X.data * 5)
    seen: dict[int, list] = {}
    held: dict[int, int] = {}

    def callback(iteration, elapsed, loss):
        held[iteration] = _settled_count(threads_client, BANDS)
        if iteration == 1:
            seen[1] = [weakref.ref(b) for b in _u_blocks(threads_client)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = dnmf.RatingsNMF(
            3, feedback=feedback, max_iter=4, tol=0, random_state=0, chunks=(ROWS, 90), client=threads_client
        )
        model.fit(X, callback=callback)
    assert model.n_iter_ == 4 and seen[1]
    # While an iteration is observed the worker holds its U only: not the U it started from.
    assert held == {1: BANDS, 2: BANDS, 3: BANDS, 4: BANDS}, held
    assert not alive_after(seen[1]), "blocks of U from iteration 1 outlived the fit"


def test_masked_step_never_rolls_back_unless_observe_is_overridden():
    params = MaskedParams(k=3, feedback="implicit")
    assert MaskedStep(None, params, tol=1e-4).rolls_back is False

    class Overrides(MaskedStep):
        def observe(self, st, iteration, s, report):
            return super().observe(st, iteration, s, report)

    assert Overrides(None, params, tol=1e-4).rolls_back is True
