"""Block principal pivoting against scipy.optimize.nnls, row by row.

Every problem is built in least-squares form ``min ||A x - b||`` with A and b
explicit, handed to SciPy row by row, and to ``nnls_bpp`` in normal-equation
form ``C = AᵀA``, ``d = Aᵀb``, which is all the solver sees in a step.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from dnmf.nmf import nnls as bpp


def reference(A, B):
    """scipy's NNLS for every row b of B: min ||A x - b||, x >= 0."""
    return np.array([nnls(A, b, maxiter=50 * A.shape[1])[0] for b in B])


def objective(C, D, X):
    """Σ_rows ½ xᵀCx − dᵀx."""
    return 0.5 * np.einsum("ij,jk,ik->", X, C, X) - np.einsum("ij,ij->", D, X)


def assert_kkt(C, D, X, rtol=1e-9):
    """x >= 0, y = Cx - d >= 0 and x·y = 0, to round-off."""
    scale = np.abs(D).max() + np.abs(C).max() * np.abs(X).max() + 1e-300
    Y = X @ C - D
    assert (X >= 0).all()
    assert Y.min() >= -rtol * scale
    assert np.abs(X * Y).max() <= rtol * scale * max(np.abs(X).max(), 1.0)


def problem(rng, r, k, p, sparse_A=0.0, sparse_B=0.0):
    A = np.abs(rng.standard_normal((p, k)))
    if sparse_A:
        A *= rng.random((p, k)) >= sparse_A
    B = rng.standard_normal((r, p)) + 0.3
    if sparse_B:
        B *= rng.random((r, p)) >= sparse_B
    return A, B


@pytest.mark.parametrize("k", [1, 2, 5, 12, 40, 70])
def test_matches_scipy_nnls(k):
    rng = np.random.default_rng(k)
    A, B = problem(rng, 300, k, 2 * k + 30, sparse_A=0.4)
    C, D = A.T @ A, B @ A
    X, info = bpp.nnls_bpp(C, D, return_info=True)
    ref = reference(A, B)
    np.testing.assert_allclose(X, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    assert_kkt(C, D, X)
    assert info["n_fallback"] == 0


def test_warm_start_gives_the_same_solution():
    rng = np.random.default_rng(3)
    A, B = problem(rng, 500, 16, 60, sparse_A=0.5)
    C, D = A.T @ A, B @ A
    cold = bpp.nnls_bpp(C, D)
    for passive in (cold > 0, rng.random(cold.shape) < 0.5, np.ones(cold.shape, bool)):
        warm = bpp.nnls_bpp(C, D, passive=passive)
        np.testing.assert_allclose(warm, cold, rtol=1e-9, atol=1e-12)
    # From the exact passive sets, no pivoting is needed at all.
    _, info = bpp.nnls_bpp(C, D, passive=cold > 0, return_info=True)
    assert info["n_iter"] == 0


def test_rows_with_a_shared_passive_set_are_grouped(monkeypatch):
    """Many identical right-hand sides: one factorisation per passive set."""
    rng = np.random.default_rng(5)
    A, B = problem(rng, 8, 6, 20)
    B = np.repeat(B, 50, axis=0)  # 8 distinct rows, 50 copies each
    C, D = A.T @ A, B @ A
    X, info = bpp.nnls_bpp(C, D, return_info=True)
    np.testing.assert_allclose(X, np.repeat(reference(A, B[::50]), 50, axis=0), rtol=1e-8, atol=1e-12)
    assert 1 <= info["n_groups"] <= 8 * (info["n_iter"] + 1)
    # The ungrouped (batched) path gives the same numbers.
    monkeypatch.setattr(bpp, "_GROUP_MIN_ROWS", 10**9)
    X2, info2 = bpp.nnls_bpp(C, D, return_info=True)
    assert info2["n_groups"] == 0
    np.testing.assert_allclose(X2, X, rtol=1e-10, atol=1e-13)


def test_complement_route_equals_direct(monkeypatch):
    """Large passive sets go through C⁻¹ (Schur complement); same answer."""
    rng = np.random.default_rng(11)
    A, B = problem(rng, 400, 20, 80)
    B = np.abs(B) + 1.0  # mostly positive solutions: large passive sets
    C, D = A.T @ A, B @ A
    X = bpp.nnls_bpp(C, D)
    monkeypatch.setattr(bpp, "_MAX_COND_COMPLEMENT", 0.0)  # never use C⁻¹
    np.testing.assert_allclose(bpp.nnls_bpp(C, D), X, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(X, reference(A, B), rtol=1e-8, atol=1e-12)


def test_zero_rows_and_k1():
    rng = np.random.default_rng(2)
    A, B = problem(rng, 10, 1, 7)
    B[3] = 0
    C, D = A.T @ A, B @ A
    X = bpp.nnls_bpp(C, D)
    np.testing.assert_allclose(X, reference(A, B), rtol=1e-10, atol=1e-14)
    assert (X[3] == 0).all()
    # k = 1 is a clipped division.
    np.testing.assert_allclose(X[:, 0], np.maximum(D[:, 0] / C[0, 0], 0), rtol=1e-12)
    # No rows at all.
    assert bpp.nnls_bpp(C, D[:0]).shape == (0, 1)


def test_rank_deficient_gram_without_l2():
    """A zero component and two identical ones: C is singular, no L2 term.

    The minimiser is not unique; any one must satisfy the KKT conditions and
    reach scipy's objective value.
    """
    rng = np.random.default_rng(7)
    A, B = problem(rng, 200, 6, 30)
    A[:, 2] = 0.0  # a dead component
    A[:, 4] = A[:, 1]  # two identical components
    C, D = A.T @ A, B @ A
    X, info = bpp.nnls_bpp(C, D, return_info=True)
    ref = reference(A, B)
    assert_kkt(C, D, X, rtol=1e-8)
    np.testing.assert_allclose(
        np.linalg.norm(X @ A.T - B, axis=1), np.linalg.norm(ref @ A.T - B, axis=1), rtol=1e-8, atol=1e-10
    )
    # Fully zero Gram (k = 1 with a zero column): x = 0 is a solution.
    X0 = bpp.nnls_bpp(np.zeros((1, 1)), np.zeros((4, 1)))
    assert (X0 == 0).all()


def test_lawson_hanson_fallback_matches():
    rng = np.random.default_rng(9)
    A, B = problem(rng, 30, 10, 25, sparse_A=0.3)
    C, D = A.T @ A, B @ A
    ref = reference(A, B)
    got = np.array([bpp.nnls_active_set(C, d) for d in D])
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    # Forcing the fallback after 0 pivoting rounds still gives the solution.
    X, info = bpp.nnls_bpp(C, D, max_iter=0, return_info=True)
    assert info["n_fallback"] > 0
    np.testing.assert_allclose(X, ref, rtol=1e-8, atol=1e-12)


def test_anls_update_is_the_regularised_half_step():
    """anls_update solves min ½||x − Hᵀw||² + l1·Σw + ½·l2·||w||² per row."""
    rng = np.random.default_rng(4)
    k, n, r = 5, 40, 30
    Ht = np.abs(rng.standard_normal((n, k)))
    Xb = np.abs(rng.standard_normal((r, n)))
    W = np.abs(rng.standard_normal((r, k)))
    l1, l2 = 0.7, 0.3
    W_new, violation = bpp.anls_update(W, Ht.T @ Ht, Xb @ Ht, l1, l2)
    # Least-squares form: A = [Hᵀ; sqrt(l2)·I], b = [x − l1·(H⁺)ᵀ1; 0] has
    # AᵀA = HHᵀ + l2·I and Aᵀb = X Hᵀ − l1 (H has full row rank here).
    C = Ht.T @ Ht + l2 * np.eye(k)
    D = Xb @ Ht - l1
    A = np.vstack([Ht, np.sqrt(l2) * np.eye(k)])
    shift = l1 * np.linalg.pinv(Ht.T) @ np.ones(k)  # Htᵀ·shift = l1·1
    Bls = np.hstack([Xb - shift, np.zeros((r, k))])
    np.testing.assert_allclose(Bls @ A, D, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(W_new, reference(A, Bls), rtol=1e-8, atol=1e-12)
    assert_kkt(C, D, W_new)
    # The stationarity measure is the projected gradient at the incoming W.
    grad = W @ C - D
    assert violation == pytest.approx(np.abs(np.where(W > 0, grad, np.minimum(grad, 0))).sum())
    # float32 in, float32 out.
    W32, _ = bpp.anls_update(
        W.astype(np.float32), (Ht.T @ Ht).astype(np.float32), (Xb @ Ht).astype(np.float32), 0.0, 0.0
    )
    assert W32.dtype == np.float32


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    r=st.integers(1, 40),
    k=st.integers(1, 9),
    p=st.integers(1, 25),
    seed=st.integers(0, 2**16),
    sparsity=st.sampled_from([0.0, 0.5, 0.8]),
)
def test_property_equals_scipy(r, k, p, seed, sparsity):
    """Any shape, including p < k (singular C), zero columns and zero rows."""
    rng = np.random.default_rng(seed)
    A, B = problem(rng, r, k, p, sparse_A=sparsity, sparse_B=sparsity)
    C, D = A.T @ A, B @ A
    X = bpp.nnls_bpp(C, D)
    ref = reference(A, B)
    # Residuals always agree; the solution itself when it is unique.
    res_got = np.linalg.norm(X @ A.T - B, axis=1)
    res_ref = np.linalg.norm(ref @ A.T - B, axis=1)
    np.testing.assert_allclose(res_got, res_ref, rtol=1e-7, atol=1e-9 * (1 + np.abs(B).max()))
    assert_kkt(C, D, X, rtol=1e-7)
    if np.linalg.matrix_rank(A) == k and np.linalg.cond(C) < 1e8:
        np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-8 * (1 + np.abs(ref).max()))
