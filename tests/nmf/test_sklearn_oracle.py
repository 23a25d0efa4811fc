"""scikit-learn's NMF is the oracle: same start, same iterates.

``solver="mu"`` must follow scikit-learn's multiplicative updates and
``solver="cd"`` its coordinate descent, iterate by iterate, for dense and
CSR input, on several blockings, on threads and on a distributed cluster.
"""

import warnings

import numpy as np
import pytest
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning

import dnmf
from tests.helpers import make_data

CHUNKINGS = {
    "one-block": "auto",
    "regular": (10, 10),
    "irregular": ((7, 13, 1, 19), (4, 11, 15)),
    "row-of-blocks": ((40,), (8, 8, 8, 6)),
    "column-of-blocks": ((9, 9, 9, 9, 4), (30,)),
}
CASES = [("mu", "frobenius"), ("cd", "frobenius"), ("mu", "kullback-leibler")]


def sklearn_iterates(X, W0, H0, solver, beta, iters, **kw):
    out = []
    for t in iters:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk = SkNMF(W0.shape[1], init="custom", solver=solver, beta_loss=beta, tol=0, max_iter=t, **kw)
            W = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        out.append((W, sk.components_, sk.reconstruction_err_))
    return out


def dnmf_iterates(X, W0, H0, solver, beta, iters, chunks, client=None, **kw):
    out = []
    for t in iters:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = dnmf.NMF(
                W0.shape[1],
                init="custom",
                solver=solver,
                beta_loss=beta,
                tol=0,
                max_iter=t,
                chunks=chunks,
                client=client,
                **kw,
            )
            W = m.fit_transform(X, W=W0.copy(), H=H0.copy())
        out.append((W, m.components_, m.reconstruction_err_))
    return out


def assert_same(ours, theirs):
    for (W, H, e), (Ws, Hs, es) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9 * np.abs(Ws).max())
        np.testing.assert_allclose(H, Hs, rtol=1e-6, atol=1e-9 * np.abs(Hs).max())
        assert e == pytest.approx(es, rel=1e-6)


ITERS = [1, 2, 3, 5, 8]


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("solver,beta", CASES)
def test_follows_sklearn_threads(solver, beta, sparse, chunking):
    X, W0, H0 = make_data(40, 30, 4, density=0.3 if sparse else None)
    want = sklearn_iterates(X, W0, H0, solver, beta, ITERS)
    got = dnmf_iterates(X, W0, H0, solver, beta, ITERS, CHUNKINGS[chunking])
    assert_same(got, want)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("solver,beta", CASES)
def test_follows_sklearn_distributed(dist_client, solver, beta, sparse):
    X, W0, H0 = make_data(40, 30, 4, density=0.3 if sparse else None)
    iters = [1, 4]
    want = sklearn_iterates(X, W0, H0, solver, beta, iters)
    got = dnmf_iterates(X, W0, H0, solver, beta, iters, CHUNKINGS["irregular"], client=dist_client)
    assert_same(got, want)


@pytest.mark.parametrize(
    "kw",
    [
        dict(alpha_W=0.01, l1_ratio=0.0),
        dict(alpha_W=0.01, alpha_H=0.02, l1_ratio=0.5),
        dict(alpha_W=0.02, l1_ratio=1.0),
    ],
)
@pytest.mark.parametrize("solver", ["mu", "cd"])
def test_regularization_follows_sklearn(solver, kw):
    X, W0, H0 = make_data(30, 20, 3, density=0.4)
    want = sklearn_iterates(X, W0, H0, solver, "frobenius", [1, 6], **kw)
    got = dnmf_iterates(X, W0, H0, solver, "frobenius", [1, 6], (8, 7), **kw)
    assert_same(got, want)


@pytest.mark.parametrize("beta", ["itakura-saito", 0.5, 1.5, 3.0])
def test_other_beta_losses_follow_sklearn(beta):
    X, W0, H0 = make_data(25, 20, 3)
    X = X + 0.1  # itakura-saito needs X > 0
    want = sklearn_iterates(X, W0, H0, "mu", beta, [1, 4])
    got = dnmf_iterates(X, W0, H0, "mu", beta, [1, 4], (6, 7))
    assert_same(got, want)


@pytest.mark.parametrize("solver,beta", CASES)
def test_stopping_rule_matches_sklearn(solver, beta):
    """With tol > 0 both stop at the same iteration with the same factors."""
    X, W0, H0 = make_data(60, 40, 5)
    sk = SkNMF(5, init="custom", solver=solver, beta_loss=beta, tol=1e-4, max_iter=1000)
    Ws = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    m = dnmf.NMF(5, init="custom", solver=solver, beta_loss=beta, tol=1e-4, max_iter=1000, chunks=(13, 17))
    W = m.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert m.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9)
    assert m.reconstruction_err_ == pytest.approx(sk.reconstruction_err_, rel=1e-8)
    assert len(m.loss_history_) == m.n_iter_
    assert m.loss_history_[-1] == pytest.approx(m.reconstruction_err_)


@pytest.mark.parametrize("solver", ["mu", "cd"])
def test_transform_follows_sklearn(solver):
    X, W0, H0 = make_data(30, 20, 3, density=0.5)
    sk = SkNMF(3, init="custom", solver=solver, max_iter=1000, tol=1e-5).fit(X, W=W0.copy(), H=H0.copy())
    m = dnmf.NMF(3, init="custom", solver=solver, max_iter=1000, tol=1e-5, chunks=(7, 20))
    m.fit(X, W=W0.copy(), H=H0.copy())
    Xnew = X[:11]
    np.testing.assert_allclose(m.transform(Xnew), sk.transform(Xnew), rtol=1e-6, atol=1e-9)


def test_random_init_scale_matches_sklearn():
    """Random init is drawn per fixed panel (not sklearn's stream) but scaled alike."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from dnmf.base.inputs import from_memory
    from dnmf.nmf import init as dinit

    X, _, _ = make_data(500, 300)
    Ws, Hs = _initialize_nmf(X, 6, init="random", random_state=0)
    W, Ht = dinit.random_init(from_memory(X), 6, X.mean(), 0)
    W, H = W.compute(), Ht.compute().T
    assert W.shape == Ws.shape and H.shape == Hs.shape
    # Same distribution (|N(0, 1)| * sqrt(mean / k)), different stream: moments agree.
    for ours, theirs in ((W, Ws), (H, Hs)):
        assert (ours >= 0).all()
        assert ours.mean() == pytest.approx(theirs.mean(), rel=0.05)
        assert ours.std() == pytest.approx(theirs.std(), rel=0.05)


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_close_to_sklearn(variant):
    """Randomized SVD on blocks gives NNDSVD factors close to scikit-learn's."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from dnmf.base.inputs import from_memory
    from dnmf.engine.runner import Runner
    from dnmf.nmf import init as dinit

    rng = np.random.RandomState(0)
    X = np.abs(rng.rand(120, 5) @ rng.rand(5, 80)) + 0.01 * rng.rand(120, 80)
    Ws, Hs = _initialize_nmf(X, 4, init=variant, random_state=0)
    W, Ht = dinit.nndsvd_init(from_memory(X, (30, 20)), 4, variant, X.mean(), 0, Runner())
    W, H = W.compute(), Ht.compute().T
    assert (W >= 0).all() and (H >= 0).all()
    if variant != "nndsvdar":
        np.testing.assert_allclose(W @ H, Ws @ Hs, rtol=1e-3, atol=1e-3 * np.abs(Ws @ Hs).max())
