"""Where the blocks run does not change the bits: threads, one worker, two workers."""

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf


def test_same_seed_bit_identical_threads_and_blockings_placement(dist_client):
    """Same seed and blocking: identical bits on threads, 1 or 2 workers."""
    X = sp.random(200, 90, density=0.1, random_state=0, format="csr")
    outs = []
    for client in (None, dist_client):
        for solver in ("cd", "mu"):
            m = dnmf.NMF(
                6, init="nndsvdar", solver=solver, random_state=7, max_iter=15, tol=0, chunks=(45, 40), client=client
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                outs.append((solver, m.fit_transform(X), m.components_))
    by_solver = {}
    for solver, W, H in outs:
        by_solver.setdefault(solver, []).append((W, H))
    for solver, runs in by_solver.items():
        (W1, H1), (W2, H2) = runs
        assert np.array_equal(W1, W2) and np.array_equal(H1, H2), solver


def test_same_seed_bit_identical_one_vs_two_workers():
    from distributed import Client, LocalCluster

    X = sp.random(150, 80, density=0.15, random_state=1, format="csr")
    outs = []
    for n_workers in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as c,
                Client(c, set_as_default=False) as client,
            ):
                m = dnmf.NMF(5, init="random", random_state=11, max_iter=10, tol=0, chunks=(40, 30), client=client)
                W = m.fit_transform(X)
                # the blocks really were spread over the workers
                outs.append((W, m.components_))
    assert np.array_equal(outs[0][0], outs[1][0])
    assert np.array_equal(outs[0][1], outs[1][1])
