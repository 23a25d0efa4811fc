"""The initialisation of large inputs: fewer power iterations, same answer up to the sketch's accuracy."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import scipy.sparse as sp

from dnmf.base import inputs
from dnmf.engine.runner import Runner
from dnmf.nmf import init


def test_power_iterations_switch_at_large_nnz():
    assert init.power_iterations(init.LARGE_NNZ - 1) == init.POWER_ITERATIONS == 4
    assert init.power_iterations(init.LARGE_NNZ) == init.LARGE_POWER_ITERATIONS == 1


@pytest.mark.parametrize("n_iter", [0, 1, 4])
def test_randomized_svd_matches_numpy(n_iter):
    """On a matrix of rank 5 plus a little noise every sketch finds the leading values (NumPy's SVD as reference)."""
    rng = np.random.default_rng(0)
    dense = rng.random((400, 5)) @ rng.random((5, 120)) + 0.01 * rng.random((400, 120))
    X = inputs.from_memory(sp.csr_matrix(dense), chunks=100)
    with dask.config.set(scheduler="sync"):
        U, S, V = init.randomized_svd(X, 5, 0, Runner(None), n_iter=n_iter)
        U, V = np.asarray(U.compute()), np.asarray(V.compute())
    ref = np.linalg.svd(dense, compute_uv=False)[:5]
    np.testing.assert_allclose(S, ref, rtol=1e-3)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-8)  # still orthonormal after one Gram pass fewer kept
    np.testing.assert_allclose((U * S) @ V.T, dense, atol=0.05 * np.abs(dense).max())
