"""Masked NMF kernels against naive references that loop over observed entries."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnmf.masked import kernels as masked
from dnmf.nmf import nnls
from tests.masked.helpers import PARAMS, as_csr, naive_ccd_row, naive_half_step, naive_objective, random_state, ratings

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


@pytest.mark.parametrize("sweeps", [1, 3])
@pytest.mark.parametrize("name", PARAMS)
def test_ccd_sweeps_equal_naive_coordinate_descent(name, sweeps):
    """The "ccd" solver is exact coordinate minimisation in order 0..q-1 from U, sweep after sweep."""
    p = masked.MaskedParams(**{**PARAMS[name].__dict__, "sweeps": sweeps})
    X, _, _ = ratings(13, 10, 0.4, seed=11)
    U = random_state(13, p, 12)
    V = random_state(10, p, 13)
    G = V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None
    got = masked.update(X, U, V, p, G, solver="ccd")
    rows = [
        naive_ccd_row(
            X.indices[X.indptr[i] : X.indptr[i + 1]], X.data[X.indptr[i] : X.indptr[i + 1]], U[i], V, p, 10, sweeps
        )
        for i in range(13)
    ]
    np.testing.assert_allclose(got, np.array(rows), rtol=1e-9, atol=1e-12)


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
