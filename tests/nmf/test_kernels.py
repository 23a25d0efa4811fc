"""Every kernel against a naive NumPy reference."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition._nmf import _beta_divergence

from dnmf.nmf import kernels


def naive_cd_sweep(W, HHt, XHt, l1, l2, perm):
    """A literal transcription of scikit-learn's Cython coordinate-descent loop."""
    W = W.copy()
    HHt = HHt.copy()
    HHt.flat[:: HHt.shape[0] + 1] += l2
    XHt = XHt - l1
    violation = 0.0
    for t in perm:
        for i in range(W.shape[0]):
            grad = -XHt[i, t]
            for r in range(W.shape[1]):
                grad += HHt[t, r] * W[i, r]
            pg = min(0.0, grad) if W[i, t] == 0 else grad
            violation += abs(pg)
            if HHt[t, t] != 0:
                W[i, t] = max(W[i, t] - grad / HHt[t, t], 0.0)
    return W, violation


@pytest.fixture
def data():
    rng = np.random.RandomState(1)
    X = np.abs(rng.randn(9, 7))
    X[X < 0.7] = 0
    return X, np.abs(rng.randn(9, 3)), np.abs(rng.randn(7, 3))


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_products(data, fmt):
    X, W, Ht = data
    Xb = X if fmt == "dense" else getattr(sp, f"{fmt}_matrix")(X)
    np.testing.assert_allclose(kernels.xdot(Xb, Ht), X @ Ht)
    np.testing.assert_allclose(kernels.xtdot(Xb, W), X.T @ W)
    np.testing.assert_allclose(kernels.gram(W), W.T @ W)
    assert kernels.squared_norm(Xb) == pytest.approx((X**2).sum())


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["dense", "csr", "csc"]),
    st.sampled_from([np.float64, np.float32]),
    st.integers(0, 40),
    st.integers(0, 30),
    st.integers(1, 9),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_products_into_an_array_are_the_bits_of_the_plain_product(fmt, dtype, r, c, k, density, seed):
    """``out=`` runs SciPy's own loop (or BLAS) into the given array: the bits of ``X @ B``, whatever it held.

    ``got is out`` also fails if SciPy stops offering that loop (``kernels.xdot`` would then
    allocate as SciPy does: the same numbers, each product fresh memory on a worker).
    """
    rng = np.random.default_rng(seed)
    X = sp.random(r, c, density=density, format="csr", random_state=rng, dtype=dtype)
    Xb = X.toarray() if fmt == "dense" else X.asformat(fmt)
    B = rng.random((c, k)).astype(dtype)
    A = rng.random((r, k)).astype(dtype)
    out = np.full((r, k), np.nan, dtype=dtype)
    got = kernels.xdot(Xb, B, out=out)
    assert got is out
    np.testing.assert_array_equal(got, Xb @ B)
    out_t = np.full((c, k), 7.0, dtype=dtype)
    assert kernels.xtdot(Xb, A, out=out_t) is out_t
    np.testing.assert_array_equal(out_t, Xb.T @ A)


def test_a_product_that_can_not_go_into_out_is_a_new_array(data):
    X, _, Ht = data
    Xs = sp.csr_matrix(X.astype(np.float32))
    out = np.zeros((9, 3))
    got = kernels.xdot(Xs, Ht, out=out)  # float32 block, float64 factor: SciPy's own product
    assert got is not out
    np.testing.assert_array_equal(got, Xs @ Ht)
    got = kernels.xdot(sp.csr_matrix(X), np.asfortranarray(Ht), out=out)
    assert got is not out
    np.testing.assert_array_equal(got, sp.csr_matrix(X) @ Ht)


def test_sampled_dot(data):
    X, W, Ht = data
    for Xb in (sp.csr_matrix(X), sp.csc_matrix(X)):
        rows, cols = Xb.nonzero()  # CSR/CSC order differs: compare via a matrix
        got = type(Xb)((kernels.sampled_dot(Xb, W, Ht), Xb.indices, Xb.indptr), shape=X.shape)
        want = (W @ Ht.T) * (X != 0)
        np.testing.assert_allclose(got.toarray(), want)


def test_block_stats():
    X = np.array([[0.0, 2.0], [3.0, np.nan]])
    s = kernels.block_stats(X)
    assert s[0] == 0 and s[1] == 1 and s[2] == 5 and s[3] == 13 and s[4] == 2 and s[5] == 4
    s = kernels.block_stats(sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]])))
    assert s[0] == 0  # implicit zeros count toward the minimum
    assert s[4] == 2


@pytest.mark.parametrize("l1,l2", [(0, 0), (0.3, 0), (0, 0.5), (0.2, 0.4)])
def test_cd_update_matches_naive(data, l1, l2):
    X, W, Ht = data
    HHt = Ht.T @ Ht
    XHt = X @ Ht
    perm = np.array([2, 0, 1])
    got, v = kernels.cd_update(W, HHt, XHt, l1, l2, perm)
    want, vw = naive_cd_sweep(W, HHt, XHt, l1, l2, perm)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert v == pytest.approx(vw, rel=1e-12)
    assert (got >= 0).all()


@pytest.mark.parametrize("n_inner", [1, 4])
def test_cd_update_rows_independent(data, n_inner):
    """Each row is swept on its own: any split of the rows gives the same bits."""
    X, W, Ht = data
    args = (Ht.T @ Ht, X @ Ht, 0.1, 0.1, np.arange(3))
    full, _ = kernels.cd_update(W, *args[:1], args[1], *args[2:], n_inner=n_inner)
    parts = [
        kernels.cd_update(W[s], args[0], args[1][s], *args[2:], n_inner=n_inner)[0]
        for s in (slice(0, 4), slice(4, None))
    ]
    np.testing.assert_array_equal(np.vstack(parts), full)


def test_cd_update_float32_keeps_dtype(data):
    X, W, Ht = data
    got, _ = kernels.cd_update(W.astype(np.float32), Ht.T @ Ht, X @ Ht, 0.0, 0.0, np.arange(3))
    want, _ = naive_cd_sweep(W, Ht.T @ Ht, X @ Ht, 0.0, 0.0, np.arange(3))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("l1", [0.0, 0.3])
def test_cd_update_float32_product_is_widened_exactly(data, l1):
    """A float32 ``X Hᵀ`` is read as is: the same bits as its float64 copy, zeros' signs included."""
    X, W, Ht = data
    XHt = (X @ Ht).astype(np.float32)
    XHt[0] = 0.0
    XHt[1, 0] = -0.0
    args = (Ht.T @ Ht, l1, 0.1, np.arange(3))
    for w in (W, W.astype(np.float32)):
        narrow, v32 = kernels.cd_update(w, args[0], XHt, *args[1:], n_inner=3)
        wide, v64 = kernels.cd_update(w, args[0], XHt.astype(np.float64), *args[1:], n_inner=3)
        assert narrow.tobytes() == wide.tobytes() and v32 == v64


@pytest.mark.parametrize("l1,l2", [(0, 0), (0.3, 0.2)])
def test_mu_frobenius_step(data, l1, l2):
    X, W, Ht = data
    num = X @ Ht
    den = W @ (Ht.T @ Ht) + l1 + l2 * W
    want = W * num / den
    got = kernels.mu_apply(W, X @ Ht, kernels.mu_frobenius_denominator(W, Ht.T @ Ht), l1, l2)
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("beta", [1.0, 0.5, 1.5, 3.0])
@pytest.mark.parametrize("sparse", [False, True])
def test_mu_beta_terms(data, beta, sparse):
    X, W, Ht = data
    X = X + (0.0 if sparse else 0.1)
    Xb = sp.csr_matrix(X) if sparse else X
    num, den, loss = kernels.mu_beta_terms(Xb, W, Ht, beta, with_loss=True)
    WH = W @ Ht.T
    eps = kernels.EPSILON
    WHs = np.maximum(WH, eps) if beta < 2 else WH
    want_num = (X * WHs ** (beta - 2)) @ Ht
    np.testing.assert_allclose(num, want_num, rtol=1e-12)
    if beta == 1:
        np.testing.assert_allclose(den, Ht.sum(0)[None, :])
    else:
        WHd = np.maximum(WH, eps) if beta < 1 else WH
        np.testing.assert_allclose(den, WHd ** (beta - 1) @ Ht, rtol=1e-12)
    ref = _beta_divergence(Xb, W, Ht.T, beta)
    assert loss == pytest.approx(ref, rel=1e-10)
    assert kernels.beta_divergence_block(Xb, W, Ht, beta) == pytest.approx(ref, rel=1e-10)


def test_beta_divergence_is_additive_over_blocks(data):
    X, W, Ht = data
    total = sum(
        kernels.beta_divergence_block(X[r, c], W[r], Ht[c], 1.0)
        for r in (slice(0, 4), slice(4, 9))
        for c in (slice(0, 3), slice(3, 7))
    )
    assert total == pytest.approx(_beta_divergence(X, W, Ht.T, 1.0), rel=1e-12)


def test_frobenius_from_terms(data):
    X, W, Ht = data
    cross = np.vdot(X @ Ht, W)
    gd = np.vdot(W.T @ W, Ht.T @ Ht)
    got = kernels.frobenius_from_terms((X**2).sum(), cross, gd)
    assert got == pytest.approx(np.linalg.norm(X - W @ Ht.T), rel=1e-10)


def test_regularization_scaling():
    assert kernels.regularization(10, 20, 0.5, 0.25, 0.2) == pytest.approx(
        (20 * 0.5 * 0.2, 10 * 0.25 * 0.2, 20 * 0.5 * 0.8, 10 * 0.25 * 0.8)
    )
