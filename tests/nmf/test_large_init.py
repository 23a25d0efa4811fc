"""The initialisation of large inputs: fewer power iterations, same answer up to the sketch's accuracy."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import scipy.sparse as sp

from dnmf.base import inputs
from dnmf.engine.runner import Runner
from dnmf.nmf import init


def test_power_iterations_and_sketch_type_switch_at_large_nnz():
    assert not init.lean_basis(init.LARGE_NNZ - 1) and init.lean_basis(init.LARGE_NNZ)
    assert init.power_iterations(init.LARGE_NNZ - 1) == init.POWER_ITERATIONS == 4
    assert init.power_iterations(init.LARGE_NNZ) == init.LARGE_POWER_ITERATIONS == 0
    assert init.sketch_dtype(init.LARGE_NNZ - 1, np.float32) == np.float64
    assert init.sketch_dtype(init.LARGE_NNZ, np.float32) == np.float32
    assert init.sketch_dtype(init.LARGE_NNZ, np.float64) == np.float64


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize(
    ("n_iter", "dtype"), [(0, np.float64), (1, np.float64), (4, np.float64), (1, np.float32), (0, np.float32)]
)
def test_randomized_svd_matches_numpy(n_iter, dtype, lean):
    """On a matrix of rank 5 plus a little noise every sketch finds the leading values (NumPy's SVD as
    reference), with its basis formed or not (``lean``)."""
    rng = np.random.default_rng(0)
    dense = rng.random((400, 5)) @ rng.random((5, 120)) + 0.01 * rng.random((400, 120))
    X = inputs.from_memory(sp.csr_matrix(dense), chunks=100)
    with dask.config.set(scheduler="sync"):
        U, S, V = init.randomized_svd(X, 5, 0, Runner(None), n_iter=n_iter, dtype=dtype, lean=lean)
        U, V = np.asarray(U.compute()), np.asarray(V.compute())
    assert U.dtype == V.dtype == dtype
    ref = np.linalg.svd(dense, compute_uv=False)[:5]
    np.testing.assert_allclose(S, ref, rtol=1e-3)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(U.T.astype(np.float64) @ U, np.eye(5), atol=tol)  # orthonormal
    np.testing.assert_allclose((U * S) @ V.T, dense, atol=0.05 * np.abs(dense).max())


def test_a_lean_float32_sketch_drops_the_gram_s_rounding_noise():
    """An exactly rank-5 matrix in float32: the sketch's 10 extra directions are float32 rounding
    noise, which the lean basis must treat as zero (float32's floor, not float64's). Kept, they
    were scaled up by 1/sqrt(noise) and cost U its orthonormality (up to 1.6e-5 off)."""
    worst = 0.0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        dense = rng.random((400, 5)) @ rng.random((5, 120))
        X = inputs.from_memory(sp.csr_matrix(dense.astype(np.float32)), chunks=100)
        with dask.config.set(scheduler="sync"):
            U, S, _ = init.randomized_svd(X, 5, 0, Runner(None), n_iter=0, dtype=np.float32, lean=True)
            U = np.asarray(U.compute()).astype(np.float64)
        worst = max(worst, float(np.abs(U.T @ U - np.eye(5)).max()))
        np.testing.assert_allclose(S, np.linalg.svd(dense, compute_uv=False)[:5], rtol=5e-6)
    assert worst < 8e-6


def test_a_large_input_fit_starts_lean_and_lands_where_the_full_basis_does(monkeypatch, dist_client):
    """With the large-input plan forced on a small X: the lean start is the same bits on threads and
    on worker processes, and 5 iterations from it reach the loss of the start with its basis formed."""
    import dnmf

    monkeypatch.setattr(init, "LARGE_NNZ", 1)
    X = sp.random(3_000, 400, density=0.05, format="csr", random_state=0, dtype=np.float32)

    def fit(**kwargs):
        model = dnmf.NMF(8, init="nndsvda", max_iter=5, tol=0, random_state=0, chunks=(750, 400), **kwargs)
        W = model.fit_transform(X)
        return W, model.components_, model.reconstruction_err_

    assert init.lean_basis(X.nnz)
    W, H, err = fit()
    W_p, H_p, _ = fit(client=dist_client)
    np.testing.assert_array_equal(W, W_p)
    np.testing.assert_array_equal(H, H_p)
    monkeypatch.setattr(init, "lean_basis", lambda nnz: False)
    W_full, _, err_full = fit()
    assert not np.array_equal(W, W_full)  # the lean path ran
    assert err == pytest.approx(err_full, rel=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_norms_and_fold_give_numpy_s_bits(dtype):
    """The NNDSVD's column norms and factor blocks, compiled, equal the NumPy expressions bit for bit."""
    import dask.array as da

    rng = np.random.default_rng(3)
    values = rng.standard_normal((4_000, 6)).astype(dtype)
    values[:50] = 0.0
    values[50:60] = -0.0
    U = da.from_array(values, chunks=(500, 6))  # 8 blocks: a two-level tree of partial sums
    want = da.stack([da.sqrt((da.maximum(U, 0) ** 2).sum(axis=0)), da.sqrt((da.maximum(-U, 0) ** 2).sum(axis=0))])
    got = da.stack([init._part_norm(U, False), init._part_norm(U, True)])
    assert got.compute(scheduler="sync").tobytes() == want.compute(scheduler="sync").tobytes()

    coef_pos, coef_neg = rng.random(6), rng.random(6)
    for fill in (None, 0.25):
        out = np.maximum(values, 0) * coef_pos + np.maximum(-values, 0) * coef_neg
        out[out < 1e-3] = 0
        if fill is not None:
            out[out == 0] = fill
        block = init._nndsvd_block(values, coef_pos, coef_neg, 1e-3, fill, 0, None, dtype)
        assert block.dtype == dtype and block.tobytes() == out.astype(dtype).tobytes()
