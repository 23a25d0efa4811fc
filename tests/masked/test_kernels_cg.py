"""The "cg" solver (dnmf.masked.compiled) against a naive NumPy projected conjugate gradient per row."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnmf.masked import compiled
from dnmf.masked import kernels as masked
from tests.masked.helpers import PARAMS, naive_objective, random_state, ratings, row_terms

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def naive_system(cols, x, V, p, n_items):
    """The row's ``(C, d)`` of ``½uᵀCu − dᵀu`` written out over every term: every item for
    the implicit model (no Gram trick), the observed ones for explicit ratings."""
    weight, target, Phi, l2, l1 = row_terms(cols, x, V, p, n_items)
    C = sum(w * np.outer(phi, phi) for w, phi in zip(weight, Phi, strict=True)) + np.diag(l2)
    d = sum(w * y * phi for w, y, phi in zip(weight, target, Phi, strict=True)) - l1 / 2
    return C, d


def objective(C, d, u):
    return 0.5 * u @ C @ u - d @ u


def naive_cg_row(C, d, u, free, steps):
    """``steps`` projected conjugate-gradient steps on ``½uᵀCu − dᵀu`` from ``u``, one row at a time:
    bound coordinates with a positive gradient left out, Fletcher–Reeves directions restarted when
    not descending, exact line search; a step that would turn coordinates negative is projected
    (clipped at 0) if that lowers the objective, else cut at the first such coordinate (set to 0);
    either restarts the next step."""
    bound = ~free
    x = np.where(bound, np.maximum(u, 0.0), u).astype(float)
    g = C @ x - d
    direction = np.zeros_like(x)
    gg_prev = 0.0
    for _ in range(steps):
        F = free | (x > 0) | (g < 0)
        pg = np.where(F, g, 0.0)
        gg = pg @ pg
        if gg == 0:
            break
        beta = gg / gg_prev if gg_prev > 0 else 0.0
        direction = np.where(F, beta * direction - pg, 0.0)
        if direction @ g >= 0:
            direction = -pg
        Cd = C @ direction
        dCd = direction @ Cd
        step = -(direction @ g) / dCd if dCd > 0 else 0.0
        shrink = bound & (direction < 0)
        ratios = np.where(shrink, x / np.where(shrink, -direction, 1.0), np.inf)
        limit = ratios.min()
        cut = limit < step
        if cut:
            # The projected step, kept when it lowers the objective.
            projected = x + step * direction
            projected[bound] = np.maximum(projected[bound], 0.0)
            if objective(C, d, projected) <= objective(C, d, x):
                x, g, gg_prev = projected, C @ projected - d, 0.0
                continue
            step = limit
        hit = cut & shrink & (ratios <= limit)
        x = x + step * direction
        g = g + step * Cd
        x[hit | (bound & (x < 0))] = 0.0
        gg_prev = 0.0 if cut else gg
    return x


def naive_cg_half_step(band, U, V, p, steps):
    band = sp.csr_matrix(band)
    free = np.zeros(p.q, dtype=bool)
    free[p.k :] = p.biases
    out = np.zeros_like(U)
    for i in range(band.shape[0]):
        cols = band.indices[band.indptr[i] : band.indptr[i + 1]]
        if cols.size:
            C, d = naive_system(cols, band.data[band.indptr[i] : band.indptr[i + 1]], V, p, band.shape[1])
            out[i] = naive_cg_row(C, d, U[i], free, steps)
    return out


def with_steps(p, steps):
    return replace(p, solver="cg", cg_steps=steps)


def gram_of(V, p):
    return V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
@pytest.mark.parametrize("name", PARAMS)
def test_cg_steps_equal_naive_projected_cg(name, steps):
    p = with_steps(PARAMS[name], steps)
    X, _, _ = ratings(13, 10, 0.4, seed=11)
    U = random_state(13, p, 12)
    V = random_state(10, p, 13)
    got = masked.update(X, U, V, p, gram_of(V, p))
    np.testing.assert_allclose(got, naive_cg_half_step(X, U, V, p, steps), rtol=1e-9, atol=1e-12)
    assert (got[:, : p.k] >= 0).all()


@pytest.mark.parametrize("name", PARAMS)
def test_cg_converges_to_the_exact_minimiser(name):
    p = PARAMS[name]
    X, _, _ = ratings(12, 9, 0.4, seed=4)
    U = random_state(12, p, 5)
    V = random_state(9, p, 6)
    G = gram_of(V, p)
    exact = masked.update(X, U, V, p, G, solver="als")
    many = masked.update(X, U, V, with_steps(p, 60), G)
    np.testing.assert_allclose(many, exact, rtol=1e-7, atol=1e-9)
    few = masked.update(X, U, V, with_steps(p, 1), G)
    assert not np.allclose(few, exact, atol=1e-6)  # one step is not the minimiser


@SETTINGS
@given(seed=st.integers(0, 2**16), name=st.sampled_from(sorted(PARAMS)), k=st.integers(1, 6))
def test_each_cg_step_lowers_the_objective(seed, name, k):
    """Monotone descent from any non-negative start: more steps, lower (or equal) objective."""
    p = replace(PARAMS[name], k=k)
    X, mask, values = ratings(9, 8, 0.35, seed=seed)
    U = random_state(9, p, seed + 1)
    V = random_state(8, p, seed + 2)
    G = gram_of(V, p)
    previous = naive_objective(mask, values, U, V, p)
    for steps in range(1, 6):
        got = masked.update(X, U, V, with_steps(p, steps), G)
        assert (got[:, :k] >= 0).all()
        now = naive_objective(mask, values, got, V, p)
        assert now <= previous + 1e-9 * abs(previous)
        previous = now


@pytest.mark.parametrize("name", PARAMS)
def test_cg_rows_do_not_depend_on_the_band(name):
    """A row's bits come from its own entries: any split of the band gives the same result."""
    p = with_steps(PARAMS[name], 3)
    X, _, _ = ratings(20, 11, 0.4, seed=21)
    U, V = random_state(20, p, 22), random_state(11, p, 23)
    G = gram_of(V, p)
    whole = masked.update(X, U, V, p, G)
    parts = [masked.update(X[a:b], U[a:b], V, p, G) for a, b in ((0, 1), (1, 9), (9, 20))]
    np.testing.assert_array_equal(np.vstack(parts), whole)


def test_rows_without_entries_get_zero_and_int32_or_int64_indices_agree():
    p = with_steps(PARAMS["implicit"], 3)
    X, _, _ = ratings(6, 7, 0.5, seed=3)
    X = sp.vstack([X[:2], sp.csr_matrix((1, 7)), X[2:]], format="csr")
    U, V = random_state(7, p, 4), random_state(7, p, 5)
    got = masked.update(X, U, V, p, gram_of(V, p))
    np.testing.assert_array_equal(got[2], 0.0)
    X64 = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape)
    np.testing.assert_array_equal(masked.update(X64, U, V, p, gram_of(V, p)), got)


@SETTINGS
@given(seed=st.integers(0, 2**16), k=st.integers(1, 9))
def test_entry_scores_equal_naive_dot_products(seed, k):
    X, _, _ = ratings(7, 6, 0.4, seed=seed)
    rng = np.random.default_rng(seed)
    U, V = rng.standard_normal((7, k + 1)), rng.standard_normal((6, k + 1))
    got = compiled.entry_scores(X.indptr, X.indices, U, V, k)
    want = [U[i, :k] @ V[j, :k] for i in range(7) for j in X.indices[X.indptr[i] : X.indptr[i + 1]]]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PARAMS)
def test_cg_loss_terms_equal_the_naive_objective(name):
    p = with_steps(PARAMS[name], 3)
    X, mask, values = ratings(10, 8, 0.4, seed=7)
    U, V = random_state(10, p, 8), random_state(8, p, 9)
    data = masked.exact_value(masked.band_loss(X, U, V, p))
    als = masked.exact_value(masked.band_loss(X, U, V, replace(p, solver="als")))
    assert data == pytest.approx(als, rel=1e-12)
    pen = masked.exact_value(masked.penalty(U, np.diff(X.indptr), p))
    pen += masked.exact_value(masked.penalty(V, np.diff(X.tocsc().indptr), replace(p, count_power=0.0)))
    if p.feedback == "implicit":
        data += float(np.vdot(U[:, : p.k].T @ U[:, : p.k], V[:, : p.k].T @ V[:, : p.k]))
    assert data + pen == pytest.approx(naive_objective(mask, values, U, V, p), rel=1e-10)


@pytest.mark.parametrize("name", PARAMS)
def test_rows_read_from_the_buffer_or_in_place_give_the_same_bits(name, monkeypatch):
    """Rows longer than compiled.BUFFER_ENTRIES read V in place: the same numbers in the same order."""
    p = with_steps(PARAMS[name], 3)
    X, _, _ = ratings(15, 12, 0.6, seed=31)
    U, V = random_state(15, p, 32), random_state(12, p, 33)
    G = gram_of(V, p)
    buffered = masked.update(X, U, V, p, G)
    assert np.diff(X.indptr).max() > 3
    monkeypatch.setattr(compiled, "BUFFER_ENTRIES", 3)  # most rows now longer than the buffer
    np.testing.assert_array_equal(masked.update(X, U, V, p, G), buffered)
    monkeypatch.setattr(compiled, "BUFFER_ENTRIES", 0)
    np.testing.assert_array_equal(masked.update(X, U, V, p, G), buffered)


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("solver", ["als", "ccd", "cg"])
def test_update_with_loss_equals_update_then_band_loss(name, solver):
    """The column half-step's fused update and loss: the bits of the two calls it replaces."""
    p = replace(with_steps(PARAMS[name], 3), solver=solver)
    X, _, _ = ratings(12, 9, 0.5, seed=41)
    X = sp.vstack([X[:3], sp.csr_matrix((1, 9)), X[3:]], format="csr")  # a row without entries
    U, V = random_state(13, p, 42), random_state(9, p, 43)
    G = gram_of(V, p)
    U_new, loss = masked.update_with_loss(X, U, V, p, G)
    want = masked.update(X, U, V, p, G)
    np.testing.assert_array_equal(U_new, want)
    assert loss == masked.band_loss(X, want, V, p)


def test_cg_rows_scored_scores_are_the_naive_predictions():
    p = with_steps(PARAMS["explicit-biases-l1"], 2)
    X, _, _ = ratings(9, 7, 0.5, seed=51)
    U, V = random_state(9, p, 52), random_state(7, p, 53)
    free = np.zeros(p.q, dtype=bool)
    free[p.k] = True
    args = (X.indptr, X.indices, None, X.data - 3.0, V, U, None, np.ones(9), np.zeros(p.q), np.zeros(p.q), free)
    U_new, s = compiled.cg_rows_scored(*args, p.k, True, 2, other_bias=True, mean=3.0)
    np.testing.assert_array_equal(U_new, compiled.cg_rows(*args, p.k, True, 2, other_bias=True))
    rows = np.repeat(np.arange(9), np.diff(X.indptr))
    want = [
        U_new[i, : p.k] @ V[j, : p.k] + 3.0 + U_new[i, p.k] + V[j, p.k] for i, j in zip(rows, X.indices, strict=True)
    ]
    np.testing.assert_allclose(s, want, rtol=1e-12)
    _, dots = compiled.cg_rows_scored(*args, p.k, True, 2, other_bias=True)
    np.testing.assert_allclose(
        dots, [U_new[i, : p.k] @ V[j, : p.k] for i, j in zip(rows, X.indices, strict=True)], rtol=1e-12
    )
