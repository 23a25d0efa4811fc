"""Masked NMF kernels and graphs against naive references that loop over observed entries."""

import math
from fractions import Fraction

import dask
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear

from dnmf.masked import graph as masked_graph
from dnmf.masked import kernels as masked
from dnmf.nmf import nnls

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Naive references
# --------------------------------------------------------------------------


def ratings(m, n, density, seed):
    """A ratings-like CSR (values 0.5..5) with every row and column observed at least once."""
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True
    mask[rng.integers(0, m, n), np.arange(n)] = True
    values = np.round(rng.uniform(0.5, 5.0, (m, n)) * 2) / 2
    return as_csr(mask, values), mask, values


def as_csr(mask, values):
    rows, cols = np.nonzero(mask)
    return sp.csr_matrix((values[rows, cols], (rows, cols)), shape=mask.shape)


def naive_row(cols, x, V, p, n_items):
    """argmin over u = [w, b] of the row objective, by bounded least squares on an
    explicitly assembled system (one equation per observed entry, or per item for
    the implicit model), L1 folded into the right-hand side."""
    k, q = p.k, p.q
    if len(cols) == 0 and p.feedback == "explicit":
        return np.zeros(q)  # no data: 0 is the (penalised) minimiser, by convention without penalty
    s = len(cols) if p.count_scaled else 1.0
    rows, rhs = [], []
    if p.feedback == "implicit":
        conf = np.ones(n_items)
        pref = np.zeros(n_items)
        for j, v in zip(cols, x, strict=True):
            conf[j] = 1.0 + p.confidence * v
            pref[j] = 1.0
        for j in range(n_items):
            rows.append(math.sqrt(conf[j]) * V[j, :k])
            rhs.append(math.sqrt(conf[j]) * pref[j])
    else:
        for j, v in zip(cols, x, strict=True):
            phi = np.append(V[j, :k], 1.0) if p.biases else V[j, :k]
            rows.append(phi)
            rhs.append(v - p.global_mean - (V[j, k] if p.biases else 0.0))
    reg = np.zeros((q, q))
    reg[np.arange(k), np.arange(k)] = math.sqrt(s * p.l2)
    if p.biases:
        reg[k, k] = math.sqrt(s * p.l2_bias)
    A = np.vstack([np.array(rows).reshape(-1, q), reg])
    b = np.concatenate([rhs, np.zeros(q)])
    l1 = np.zeros(q)
    l1[:k] = s * p.l1
    # ||A u − b||² + l1·u = ||A u − b'||² + const with Aᵀb' = Aᵀb − l1/2.
    b = b - A @ np.linalg.solve(A.T @ A, l1 / 2)
    lower = np.zeros(q)
    if p.biases:
        lower[k] = -np.inf
    return lsq_linear(A, b, bounds=(lower, np.inf), method="bvls", tol=1e-15).x


def naive_half_step(band, V, p):
    band = sp.csr_matrix(band)
    return np.array(
        [
            naive_row(
                band.indices[band.indptr[i] : band.indptr[i + 1]],
                band.data[band.indptr[i] : band.indptr[i + 1]],
                V,
                p,
                band.shape[1],
            )
            for i in range(band.shape[0])
        ]
    )


def naive_objective(mask, values, U, V, p):
    """Loop over every entry; missing entries contribute only to the implicit loss."""
    m, n = mask.shape
    k = p.k
    total = 0.0
    for i in range(m):
        for j in range(n):
            s = U[i, :k] @ V[j, :k]
            if p.feedback == "implicit":
                c = 1.0 + p.confidence * values[i, j] if mask[i, j] else 1.0
                total += c * ((1.0 if mask[i, j] else 0.0) - s) ** 2
            elif mask[i, j]:
                pred = s + p.global_mean + (U[i, k] + V[j, k] if p.biases else 0.0)
                total += (values[i, j] - pred) ** 2
    for A, counts in ((U, mask.sum(axis=1)), (V, mask.sum(axis=0))):
        for a, c in zip(A, counts, strict=True):
            scale = c if p.count_scaled else 1.0
            total += scale * (
                p.l2 * (a[:k] @ a[:k]) + p.l1 * a[:k].sum() + (p.l2_bias * a[k] ** 2 if p.biases else 0.0)
            )
    return total


PARAMS = {
    "explicit-biases-l1": masked.MaskedParams(
        k=3, biases=True, l2=0.3, l1=0.05, l2_bias=0.2, count_scaled=True, global_mean=3.1
    ),
    "explicit-plain": masked.MaskedParams(k=3, l2=0.1),
    "implicit": masked.MaskedParams(k=3, feedback="implicit", l2=0.5, confidence=2.0),
}


def random_state(rows, p, seed):
    rng = np.random.default_rng(seed)
    U = np.abs(rng.standard_normal((rows, p.q)))
    if p.biases:
        U[:, p.k] = rng.standard_normal(rows) * 0.3
    return U


# --------------------------------------------------------------------------
# Half-steps, solvers, objective
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMS)
def test_als_half_steps_equal_naive_row_solutions(name):
    """W given H and H given W (by transposition): the exact per-row minimisers."""
    p = PARAMS[name]
    X, mask, values = ratings(14, 11, 0.35, seed=1)
    U = random_state(14, p, 2)
    V = random_state(11, p, 3)
    G = V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None
    U1 = masked.update(X, U, V, p, G)
    np.testing.assert_allclose(U1, naive_half_step(X, V, p), rtol=1e-7, atol=1e-9)
    Xt = masked.col_band([X[:6], X[6:]])
    G = U1[:, : p.k].T @ U1[:, : p.k] if p.feedback == "implicit" else None
    V1 = masked.update(Xt, V, U1, p, G)
    np.testing.assert_allclose(V1, naive_half_step(X.T, U1, p), rtol=1e-7, atol=1e-9)
    # Each half-step lowers the naive objective (it minimises it exactly).
    before = naive_objective(mask, values, U, V, p)
    assert naive_objective(mask, values, U1, V, p) <= before
    assert naive_objective(mask, values, U1, V1, p) <= naive_objective(mask, values, U1, V, p)


@pytest.mark.parametrize("name", PARAMS)
def test_ccd_sweeps_converge_to_the_exact_minimiser(name):
    p = PARAMS[name]
    X, _, _ = ratings(12, 9, 0.4, seed=4)
    U = random_state(12, p, 5)
    V = random_state(9, p, 6)
    G = V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None
    exact = masked.update(X, U, V, p, G, solver="als")
    one = masked.update(X, U, V, p, G, solver="ccd")
    many = masked.update(X, U, V, p.__class__(**{**p.__dict__, "sweeps": 400}), G, solver="ccd")
    np.testing.assert_allclose(many, exact, rtol=1e-6, atol=1e-8)
    assert not np.allclose(one, exact, atol=1e-6)  # one sweep is not the minimiser


@pytest.mark.parametrize("name", PARAMS)
def test_loss_terms_equal_the_naive_objective(name):
    p = PARAMS[name]
    X, mask, values = ratings(10, 8, 0.4, seed=7)
    U, V = random_state(10, p, 8), random_state(8, p, 9)
    data = masked.exact_value(masked.band_loss(X, U, V, p))
    if p.feedback == "implicit":
        data += float(np.vdot(U[:, : p.k].T @ U[:, : p.k], V[:, : p.k].T @ V[:, : p.k]))
    pen = masked.exact_value(
        masked.exact_add(masked.penalty(U, mask.sum(axis=1), p), masked.penalty(V, mask.sum(axis=0), p))
    )
    assert data + pen == pytest.approx(naive_objective(mask, values, U, V, p), rel=1e-12)
    # The column orientation gives the same data term.
    Xt = masked.col_band([X])
    assert masked.exact_value(masked.band_loss(Xt, V, U, p)) == pytest.approx(
        masked.exact_value(masked.band_loss(X, U, V, p)), rel=1e-13
    )


@st.composite
def masked_problem(draw):
    m = draw(st.integers(2, 7))
    n = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < draw(st.floats(0.2, 0.9))
    mask[0, 0] = True
    values = rng.uniform(0.5, 5, (m, n))
    garbage = rng.uniform(-1e3, 1e3, (m, n))
    biases = draw(st.booleans())
    p = masked.MaskedParams(
        k=2, biases=biases, l2=0.1, l2_bias=0.05, count_scaled=draw(st.booleans()), global_mean=3.0 if biases else 0.0
    )
    return mask, values, garbage, p, seed


@SETTINGS
@given(masked_problem())
def test_missing_entries_have_no_effect_on_the_loss_or_the_step(problem):
    """Whatever the values at unobserved positions, loss and updates are those of the
    observed entries alone (sparse input: absent; dense input: NaN)."""
    mask, values, garbage, p, seed = problem
    U = random_state(mask.shape[0], p, seed)
    V = random_state(mask.shape[1], p, seed + 1)
    X = as_csr(mask, values)
    polluted = np.where(mask, values, garbage)  # what a missing-as-value model would see
    dense_nan = np.where(mask, values, np.nan)
    loss = masked.exact_value(masked.band_loss(X, U, V, p))
    pen = masked.exact_value(masked.exact_add(masked.penalty(U, mask.sum(1), p), masked.penalty(V, mask.sum(0), p)))
    assert loss + pen == pytest.approx(naive_objective(mask, polluted, U, V, p), rel=1e-10, abs=1e-9)
    band = masked.observed(dense_nan)
    assert masked.band_loss(band, U, V, p) == masked.band_loss(X, U, V, p)
    np.testing.assert_array_equal(masked.update(band, U, V, p), masked.update(X, U, V, p))


# --------------------------------------------------------------------------
# NNLS with one Gram per row
# --------------------------------------------------------------------------


def test_nnls_rows_matches_active_set_and_handles_free_and_singular_rows():
    rng = np.random.default_rng(0)
    r, q = 60, 6
    A = rng.standard_normal((r, 9, q))
    C = np.einsum("rij,rik->rjk", A, A)
    C[:5, :, 0] = C[:5, 0, :] = 0.0  # singular rows (a coordinate with no data)
    D = rng.standard_normal((r, q)) * 3
    D[:5, 0] = 0.0  # ...and no pull on it: bounded, with many minimisers
    X = masked.nnls_rows(C, D)

    def f(x, t):
        return 0.5 * x @ C[t] @ x - D[t] @ x

    for t in range(r):
        ref = nnls.nnls_active_set(C[t], D[t])
        # Same objective (the minimiser may not be unique for singular rows).
        assert f(X[t], t) == pytest.approx(f(ref, t), rel=1e-9, abs=1e-9)
        assert (X[t] >= 0).all()
    free = np.zeros(q, bool)
    free[-1] = True
    C[:5] += np.eye(q)
    Xf = masked.nnls_rows(C, D, free=free)
    assert (Xf[:, :-1] >= 0).all() and (Xf[:, -1] < 0).any()
    for t in range(r):
        grad = C[t] @ Xf[t] - D[t]
        assert abs(grad[-1]) < 1e-8  # stationary in the free coordinate
        assert (grad[:-1] >= -1e-8).all()  # KKT on the constrained ones
        assert np.abs(grad[:-1] * Xf[t, :-1]).max() < 1e-8
        np.testing.assert_allclose(Xf[t], masked._nnls_one(C[t], D[t], free), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------
# Exact sums
# --------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
        | st.floats(min_value=-1e-300, max_value=1e-300),
        min_size=0,
        max_size=40,
    ),
    st.integers(0, 40),
)
def test_exact_sum_is_the_correctly_rounded_total_of_any_split(values, cut):
    exact = sum((Fraction(v) for v in values), Fraction(0))
    whole = masked.exact_sum(np.array(values))
    parts = masked.exact_add(masked.exact_sum(np.array(values[:cut])), masked.exact_sum(np.array(values[cut:])))
    assert masked.exact_value(whole) == float(exact)
    assert masked.exact_value(parts) == float(exact)
    assert masked.exact_value(whole, 3) == float(exact / 3)


# --------------------------------------------------------------------------
# The blocked step
# --------------------------------------------------------------------------


def _step_on(X, chunks, U, V, p, runner):
    import dask.array as da

    bands, _, _ = masked_graph.bands_from_memory(X, *chunks)
    Ud = da.from_array(U, chunks=(chunks[0], p.q))
    Vd = da.from_array(V, chunks=(chunks[1], p.q))
    G = masked_graph.factor_gram(Vd, p) if p.feedback == "implicit" else None
    out = masked_graph.step(bands, Ud, Vd, G, p)
    return dask.compute(*[a for a in out if a is not None], scheduler=runner)


@pytest.mark.parametrize("name", PARAMS)
def test_blocked_step_is_the_two_half_steps(name):
    """One graph step on 3 × 2 bands: U from the row bands, then V from the column bands,
    and its loss scalar is the naive objective of the new state."""
    p = PARAMS[name]
    X, mask, values = ratings(13, 9, 0.4, seed=11)
    U, V = random_state(13, p, 12), random_state(9, p, 13)
    res = _step_on(X, ((4, 5, 4), (2, 7)), U, V, p, "threads")
    U1, V1, s = res[0], res[1], res[-1]
    G = V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None
    U_ref = masked.update(X, U, V, p, G)
    G = U_ref[:, : p.k].T @ U_ref[:, : p.k] if p.feedback == "implicit" else None
    V_ref = masked.update(masked.col_band([X]), V, U_ref, p, G)
    if p.feedback == "explicit":  # every row from its own entries only: same bits
        np.testing.assert_array_equal(U1, U_ref)
        np.testing.assert_array_equal(V1, V_ref)
    np.testing.assert_allclose(U1, U_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(V1, V_ref, rtol=1e-12, atol=1e-14)
    assert s[masked_graph.S_LOSS] == pytest.approx(naive_objective(mask, values, U1, V1, p), rel=1e-11)


def test_explicit_step_is_bit_identical_for_any_blocking_and_batching(monkeypatch):
    p = PARAMS["explicit-biases-l1"]
    X, _, _ = ratings(40, 23, 0.3, seed=21)
    U, V = random_state(40, p, 22), random_state(23, p, 23)
    a = _step_on(X, ((40,), (23,)), U, V, p, "sync")
    # Tiny batches (rows longer than 3 entries summed in pieces), 3 rows per batch,
    # no product table: every row still adds the same numbers in the same order.
    monkeypatch.setattr(masked, "BATCH_BYTES", 8 * p.q * (p.q + 1) // 2 * 3)
    monkeypatch.setattr(masked, "BATCH_ROWS", 3)
    monkeypatch.setattr(masked, "TABLE_BYTES", 0)
    b = _step_on(X, ((3, 17, 1, 19), (5, 1, 17)), U, V, p, "threads")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
