"""n_init: several starting points, the lowest final loss kept."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf


def _X(seed=0):
    rng = np.random.RandomState(seed)
    return sp.csr_matrix(np.abs(rng.randn(80, 6)) @ np.abs(rng.randn(6, 50)) * (rng.rand(80, 50) < 0.5))


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = dnmf.NMF(**{"n_components": 5, "tol": 0, "max_iter": 30, "chunks": (40, 50), **kw})
        W = model.fit_transform(X)
    return model, W


@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("init", [None, "random", "nndsvdar"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_inits_never_end_with_a_higher_loss(solver, init, seed):
    X = _X(seed)
    one, W1 = _fit(X, solver=solver, init=init, random_state=seed)
    five, W5 = _fit(X, solver=solver, init=init, random_state=seed, n_init=5)
    assert five.reconstruction_err_ <= one.reconstruction_err_
    # the first restart is exactly the n_init=1 fit; the kept one is the lowest
    assert five.init_errors_.shape == (5,) and five.init_errors_[0] == one.reconstruction_err_
    assert five.reconstruction_err_ == five.init_errors_.min()
    assert len(set(five.init_errors_.tolist())) > 1, "the restarts did not start from different points"
    if five.init_errors_.argmin() == 0:
        np.testing.assert_array_equal(W5, W1)


@pytest.mark.cluster
def test_restarts_side_by_side_on_a_cluster_give_the_threaded_result(dist_client):
    X = _X(4)
    local, W_local = _fit(X, random_state=4, n_init=3)
    dist, W_dist = _fit(X, random_state=4, n_init=3, client=dist_client)
    np.testing.assert_array_equal(dist.init_errors_, local.init_errors_)
    np.testing.assert_array_equal(np.asarray(W_dist), W_local)
    np.testing.assert_array_equal(dist.components_, local.components_)


def test_checkpointed_restarts_resume_bit_identically(tmp_path):
    X = _X(5)
    full, W_full = _fit(X, random_state=5, n_init=3, max_iter=8)
    ck = tmp_path / "ck"
    _fit(X, random_state=5, n_init=3, max_iter=4, checkpoint=str(ck), checkpoint_every=2)
    assert sorted(p.name for p in ck.iterdir()) == ["init-0", "init-1", "init-2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        resumed = dnmf.NMF(n_components=5, tol=0, max_iter=8, chunks=(40, 50), random_state=5, n_init=3)
        W_res = resumed.fit_transform(X, resume=str(ck))
    np.testing.assert_array_equal(resumed.init_errors_, full.init_errors_)
    np.testing.assert_array_equal(W_res, W_full)


def test_custom_init_has_one_starting_point():
    X = _X()
    W0, H0 = np.ones((80, 5)), np.ones((5, 50))
    with pytest.raises(ValueError, match="n_init=2 needs starting points that differ"):
        dnmf.NMF(5, init="custom", n_init=2).fit(X, W=W0, H=H0)


def test_init_errors_are_saved_with_the_model(tmp_path):
    model, _ = _fit(_X(), random_state=0, n_init=2)
    model.save(tmp_path / "m")
    loaded = dnmf.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.init_errors_, model.init_errors_)
    assert loaded.n_init == 2
