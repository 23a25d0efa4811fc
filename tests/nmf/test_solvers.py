"""ANLS-BPP, accelerated HALS, shuffle, the stationarity measure and stopping rules."""

import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _update_coordinate_descent
from sklearn.exceptions import ConvergenceWarning

import dnmf
from tests.helpers import make_data
from tests.nmf.helpers import loop_config

CHUNKS = ((7, 13, 1, 19), (4, 11, 15))


def fit(X, W0, H0, **kw):
    kw.setdefault("tol", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(W0.shape[1], init="custom", **kw)
        W = m.fit_transform(X, W=W0.copy(), H=H0.copy())
    return m, W


def objective(X, W, H, l1=0.0, l2=0.0):
    """scikit-learn's regularised Frobenius objective with scaled weights."""
    X = X.toarray() if sp.issparse(X) else X
    return 0.5 * ((X - W @ H) ** 2).sum() + l1 * (W.sum() + H.sum()) + 0.5 * l2 * ((W**2).sum() + (H**2).sum())


# --------------------------------------------------------------------------
# ANLS with block principal pivoting
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_anls_half_steps_are_exact_nnls(sparse):
    """After one iteration W is scipy's NNLS given H0 and H is scipy's NNLS given W."""
    X, W0, H0 = make_data(40, 30, 4, density=0.4 if sparse else None)
    m, W = fit(X, W0, H0, solver="anls-bpp", max_iter=1, chunks=CHUNKS)
    Xa = X.toarray() if sparse else X
    W_ref = np.array([nnls(H0.T, x)[0] for x in Xa])
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-10)
    H_ref = np.array([nnls(W_ref, x)[0] for x in Xa.T]).T
    np.testing.assert_allclose(m.components_, H_ref, rtol=1e-8, atol=1e-10)
    assert m.reconstruction_err_ == pytest.approx(np.linalg.norm(Xa - W_ref @ H_ref), rel=1e-9)


def test_anls_with_regularisation_is_exact():
    X, W0, H0 = make_data(30, 20, 3, density=0.5)
    m, W = fit(X, W0, H0, solver="anls-bpp", max_iter=1, chunks=(8, 7), alpha_W=0.01, l1_ratio=0.5)
    l1_W, l1_H, l2_W, l2_H = dnmf.nmf.kernels.regularization(30, 20, 0.01, 0.01, 0.5)
    Xa = X.toarray()
    # The W half-step: KKT of min ½||X − W H0||² + l1·ΣW + ½ l2·||W||².
    grad = W @ (H0 @ H0.T + l2_W * np.eye(3)) - (Xa @ H0.T - l1_W)
    assert (W >= 0).all()
    assert np.abs(np.where(W > 0, grad, np.minimum(grad, 0))).max() < 1e-9 * np.abs(grad).max()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(2, 25),
    n=st.integers(2, 20),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    sparse=st.booleans(),
    alpha=st.sampled_from([0.0, 0.01]),
    l1_ratio=st.sampled_from([0.0, 0.5, 1.0]),
)
@example(m=2, n=2, k=3, seed=0, sparse=False, alpha=0.0, l1_ratio=0.0)  # k > min(m, n): an exact fit
def test_anls_objective_never_increases(m, n, k, seed, sparse, alpha, l1_ratio):
    rng = np.random.RandomState(seed)
    X = rng.rand(m, n) * (rng.rand(m, n) < 0.6)
    if sparse:
        X = sp.csr_matrix(X)
    if (X != 0).sum() == 0:
        return
    W0, H0 = rng.rand(m, k) + 0.01, rng.rand(k, n) + 0.01
    chunks = (max(1, m // 3), max(1, n // 2))
    losses = []
    l1_W, l1_H, l2_W, l2_H = dnmf.nmf.kernels.regularization(m, n, alpha, alpha, l1_ratio)
    for t in (1, 2, 3, 6):
        mdl, W = fit(X, W0, H0, solver="anls-bpp", max_iter=t, chunks=chunks, alpha_W=alpha, l1_ratio=l1_ratio)
        # Regularisation weights are equal for W and H only when m == n; use each.
        Xa = X.toarray() if sparse else X
        H = mdl.components_
        f = (
            0.5 * ((Xa - W @ H) ** 2).sum()
            + l1_W * W.sum()
            + l1_H * H.sum()
            + 0.5 * (l2_W * (W**2).sum() + l2_H * (H**2).sum())
        )
        losses.append(f)
    scale = max(losses[0], 1e-12)
    assert all(b <= a + 1e-9 * scale for a, b in itertools.pairwise(losses))
    # Without regularisation the loss history itself is monotone.
    if alpha == 0:
        hist = mdl.loss_history_
        # The loss comes from ||X||² − 2<WᵀX, H> + <WᵀW, HHᵀ>: near an exact fit its square root
        # carries rounding of about sqrt(eps)·||X||.
        assert np.all(np.diff(hist) <= 1e-9 * hist[0] + 1e-7 * np.linalg.norm(Xa))


def test_anls_converges_in_fewer_iterations_than_cd():
    rng = np.random.RandomState(0)
    X = rng.rand(80, 6) @ rng.rand(6, 60) + 0.01 * rng.rand(80, 60)
    kw = dict(n_components=6, random_state=0, max_iter=2000, tol=1e-4, chunks=(30, 25))
    cd = dnmf.NMF(solver="cd", **kw).fit(X)
    anls = dnmf.NMF(solver="anls-bpp", **kw).fit(X)
    assert anls.n_iter_ < cd.n_iter_
    assert anls.reconstruction_err_ <= cd.reconstruction_err_ * 1.01


def test_anls_same_factors_on_distributed_cluster(dist_client):
    """Fixed-order sums: the same bits wherever the blocks run."""
    X, W0, H0 = make_data(40, 30, 4, density=0.4)
    _, W_threads = fit(X, W0, H0, solver="anls-bpp", max_iter=5, chunks=CHUNKS)
    _, W_dist = fit(X, W0, H0, solver="anls-bpp", max_iter=5, chunks=CHUNKS, client=dist_client)
    np.testing.assert_array_equal(W_threads, W_dist)


# --------------------------------------------------------------------------
# Accelerated HALS and shuffle
# --------------------------------------------------------------------------


def test_inner_iter_one_is_plain_cd():
    X, W0, H0 = make_data(40, 30, 4)
    a, Wa = fit(X, W0, H0, solver="cd", max_iter=7)
    b, Wb = fit(X, W0, H0, solver="cd", max_iter=7, inner_iter=1)
    np.testing.assert_array_equal(Wa, Wb)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_accelerated_cd_monotone_and_better_per_pass(sparse):
    """More sweeps per pass over X: never a higher loss, and a lower one per pass."""
    X, W0, H0 = make_data(60, 40, 5, density=0.3 if sparse else None)
    plain, _ = fit(X, W0, H0, solver="cd", max_iter=30, chunks=(20, 40))
    fast, _ = fit(X, W0, H0, solver="cd", max_iter=30, chunks=(20, 40), inner_iter="auto")
    fixed, _ = fit(X, W0, H0, solver="cd", max_iter=30, chunks=(20, 40), inner_iter=4)
    for m in (plain, fast, fixed):
        h = m.loss_history_
        assert np.all(np.diff(h) <= 1e-12 * h[0])
    # Iteration t of each is after t passes over X.
    for t in (1, 5, 10, 29):
        assert fast.loss_history_[t] < plain.loss_history_[t]
        assert fixed.loss_history_[t] < plain.loss_history_[t]


def test_accelerated_cd_passes_to_reach_a_loss():
    X, W0, H0 = make_data(80, 50, 6)
    plain, _ = fit(X, W0, H0, solver="cd", max_iter=300)
    fast, _ = fit(X, W0, H0, solver="cd", max_iter=300, inner_iter="auto")
    target = plain.loss_history_[-1] * (1 + 1e-6)
    passes_fast = int(np.argmax(fast.loss_history_ <= target)) + 1
    assert fast.loss_history_.min() <= target
    assert passes_fast < 300 / 2


def test_hals_inner_limits():
    # Dense 1000 x 500, k = 10: rho_W = 1 + (5e5 + 5e3) / (1e3 * 11).
    iw, ih = dnmf.nmf.kernels.hals_inner_limits(1000, 500, 500_000, 10)
    assert iw == int(1 + 0.5 * (1 + 505_000 / 11_000))
    assert ih == int(1 + 0.5 * (1 + 510_000 / 5_500))
    assert dnmf.nmf.kernels.hals_inner_limits(10**6, 10, 10**6, 50) == (
        1,
        int(1 + 0.5 * (1 + (10**6 + 5 * 10**7) / 510)),
    )


def test_inner_sweeps_are_per_row():
    """The inner stopping rule is applied row by row: a block of rows gives
    the same result as each row on its own (so the blocking does not matter),
    and the extra sweeps lower each row's objective."""
    from dnmf.nmf import kernels

    rng = np.random.default_rng(0)
    Ht = np.abs(rng.standard_normal((30, 4)))
    W = np.abs(rng.standard_normal((6, 4)))
    Xb = W @ Ht.T + 0.1 * rng.random((6, 30))
    HHt, XHt = Ht.T @ Ht, Xb @ Ht
    W_start = W + rng.random(W.shape)
    W1, v1 = kernels.cd_update(W_start, HHt, XHt, 0, 0, np.arange(4), n_inner=1)
    W5, v5 = kernels.cd_update(W_start, HHt, XHt, 0, 0, np.arange(4), n_inner=5)
    assert v1 == v5  # the violation is the first sweep's
    for i in range(6):
        Wi, _ = kernels.cd_update(W_start[i : i + 1], HHt, XHt[i : i + 1], 0, 0, np.arange(4), n_inner=5)
        np.testing.assert_allclose(Wi[0], W5[i], rtol=1e-13)  # BLAS rounding only
    f = lambda w: 0.5 * np.einsum("ij,jk,ik->i", w, HHt, w) - np.einsum("ij,ij->i", XHt, w)  # noqa: E731
    assert np.all(f(W5) <= f(W1) + 1e-12) and np.any(f(W5) < f(W1) - 1e-9)


@pytest.mark.parametrize("update_H", [True, False])
def test_shuffle_matches_sklearn_for_int_random_state(update_H):
    X, W0, H0 = make_data(40, 30, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        from sklearn.decomposition import non_negative_factorization as sk_nnf

        warnings.simplefilter("ignore", RuntimeWarning)  # "initial W is not used"
        Ws, Hs, _ = sk_nnf(
            X,
            W0.copy(),
            H0.copy(),
            5,
            init="custom",
            solver="cd",
            shuffle=True,
            random_state=3,
            max_iter=6,
            tol=0,
            update_H=update_H,
        )
        Wd, Hd, _ = dnmf.non_negative_factorization(
            X,
            W0.copy(),
            H0.copy(),
            5,
            init="custom",
            solver="cd",
            shuffle=True,
            random_state=3,
            max_iter=6,
            tol=0,
            update_H=update_H,
            chunks=(13, 17),
        )
    # (With update_H=False both start W at zero, as scikit-learn does for cd.)
    np.testing.assert_allclose(Wd, Ws, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Hd, Hs, rtol=1e-9, atol=1e-12)
    _, Wu = fit(X, W0, H0, solver="cd", max_iter=6, shuffle=False)
    assert not np.allclose(Wu, Ws)


def test_shuffle_permutation_stream_matches_sklearn():
    """The coordinate orders are RandomState(seed).permutation, W then H."""
    from dnmf.nmf import step as driver

    cfg = loop_config(max_iter=1, shuffle=True)
    rng, ref = np.random.RandomState(5), np.random.RandomState(5)
    for _ in range(3):
        pw, ph = driver.permutations(cfg, 6, rng)
        assert pw == tuple(ref.permutation(6)) and ph == tuple(ref.permutation(6))
    cfg_w = driver.LoopConfig(**{**cfg.__dict__, "update_H": False})
    pw, ph = driver.permutations(cfg_w, 6, rng)
    assert pw == tuple(ref.permutation(6)) and ph == tuple(range(6))
    assert driver.permutations(cfg_w, 6, rng)[0] == tuple(ref.permutation(6))


# --------------------------------------------------------------------------
# Stationarity measure and stopping rules
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_stationarity_is_sklearn_cd_violation_ratio(sparse):
    X, W0, H0 = make_data(40, 30, 4, density=0.4 if sparse else None)
    m, _ = fit(X, W0, H0, solver="cd", max_iter=12, chunks=CHUNKS)
    W, Ht = W0.copy(), np.ascontiguousarray(H0.T)
    ratios = []
    for _ in range(12):
        v = _update_coordinate_descent(X, W, Ht, 0, 0, False, None)
        v += _update_coordinate_descent(X.T, Ht, W, 0, 0, False, None)
        ratios.append(v)
    ratios = np.array(ratios) / ratios[0]
    np.testing.assert_allclose(m.stationarity_history_, ratios, rtol=1e-8)


def naive_pg_ratio(X, W, H, solver, iters, beta=2):
    """Σ|PG| at the start of each half-step, by direct NumPy, for mu/anls."""
    from sklearn.decomposition._nmf import _multiplicative_update_h, _multiplicative_update_w

    Xa = X.toarray() if sp.issparse(X) else X
    out = []
    for _ in range(iters):
        gW = W @ (H @ H.T) - Xa @ H.T
        v = np.abs(np.where(W > 0, gW, np.minimum(gW, 0))).sum()
        if solver == "anls-bpp":
            W = np.array([nnls(H.T, x)[0] for x in Xa])
        else:
            W = _multiplicative_update_w(X, W, H, beta, 0, 0, 1.0)[0]
        gH = (W.T @ W) @ H - W.T @ Xa
        v += np.abs(np.where(H > 0, gH, np.minimum(gH, 0))).sum()
        if solver == "anls-bpp":
            H = np.array([nnls(W, x)[0] for x in Xa.T]).T
        else:
            H = _multiplicative_update_h(X, W, H, beta, 0, 0, 1.0)
        out.append(v)
    return np.array(out) / out[0]


@pytest.mark.parametrize("solver", ["mu", "anls-bpp"])
def test_stationarity_of_other_solvers(solver):
    X, W0, H0 = make_data(30, 20, 3)
    m, _ = fit(X, W0, H0, solver=solver, max_iter=6, chunks=(8, 7))
    np.testing.assert_allclose(m.stationarity_history_, naive_pg_ratio(X, W0, H0, solver, 6), rtol=1e-7)


def test_stationarity_reported_for_kl():
    X, W0, H0 = make_data(30, 20, 3)
    m, _ = fit(X, W0, H0, solver="mu", beta_loss="kullback-leibler", max_iter=40)
    h = m.stationarity_history_
    assert h.shape == (40,) and h[0] == 1.0 and h[-1] < 0.5


@pytest.mark.parametrize("solver", ["mu", "cd", "anls-bpp"])
def test_stopping_on_stationarity(solver):
    X, W0, H0 = make_data(40, 30, 3)
    tol = 1e-3 if solver != "mu" else 3e-2
    m, _ = fit(X, W0, H0, solver=solver, max_iter=3000, tol=tol, stopping="stationarity")
    h = m.stationarity_history_
    assert len(h) == m.n_iter_ == len(m.loss_history_)
    assert h[-1] <= tol and (h[:-1] > tol).all()


@pytest.mark.parametrize("solver", ["cd", "anls-bpp"])
def test_stopping_on_loss(solver):
    X, W0, H0 = make_data(40, 30, 3)
    m, _ = fit(X, W0, H0, solver=solver, max_iter=3000, tol=1e-4, stopping="loss")
    assert m.n_iter_ % 10 == 0 and m.n_iter_ < 3000
    h = m.loss_history_
    e0 = np.linalg.norm(X - W0 @ H0)
    assert (h[-11] - h[-1]) / e0 < 1e-4


def test_default_stopping_is_sklearns():
    """'auto' keeps scikit-learn's rule (and iterates) for mu and cd."""
    X, W0, H0 = make_data(60, 40, 5)
    for solver in ("mu", "cd"):
        sk = SkNMF(5, init="custom", solver=solver, tol=1e-4, max_iter=1000)
        sk.fit(X, W=W0.copy(), H=H0.copy())
        m, _ = fit(X, W0, H0, solver=solver, tol=1e-4, max_iter=1000, chunks=(13, 17))
        auto, _ = fit(X, W0, H0, solver=solver, tol=1e-4, max_iter=1000, chunks=(13, 17), stopping="auto")
        assert m.n_iter_ == sk.n_iter_ == auto.n_iter_
        np.testing.assert_array_equal(m.components_, auto.components_)


def test_parameter_errors():
    X, _, _ = make_data(20, 10, 2)
    with pytest.raises(ValueError, match="inner_iter.*solver='cd'"):
        dnmf.NMF(2, solver="mu", inner_iter=3).fit(X)
    with pytest.raises(ValueError, match="stopping"):
        dnmf.NMF(2, stopping="gradient").fit(X)
    with pytest.raises(ValueError, match="solver 'anls-bpp' does not handle"):
        dnmf.NMF(2, solver="anls-bpp", beta_loss="kullback-leibler").fit(X)


def test_transform_with_anls_is_one_exact_solve():
    X, W0, H0 = make_data(30, 20, 3, density=0.5)
    m = dnmf.NMF(3, solver="anls-bpp", random_state=0, max_iter=500).fit(X)
    W = m.transform(X[:7])
    ref = np.array([nnls(m.components_.T, x)[0] for x in X[:7].toarray()])
    np.testing.assert_allclose(W, ref, rtol=1e-8, atol=1e-12)
