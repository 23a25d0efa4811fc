"""dnmf.RatingsNMF: fits against naive references, fold-in, determinism, IDs, persistence."""

import os
import signal
import threading
import time
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf import RatingsNMF
from dnmf.recommend.factors import UnknownIDError
from tests.masked.helpers import as_csr, naive_half_step, naive_objective, ratings


def fit(X, **kw):
    kw.setdefault("random_state", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return RatingsNMF(**kw).fit(X)


def state(model):
    """The fitted (U, V) = ([W, b], [Hᵀ, c])."""
    W = np.asarray(model.user_factors_)
    U = W if model.user_bias_ is None else np.column_stack([W, model.user_bias_])
    V = model.components_.T if model.item_bias_ is None else np.column_stack([model.components_.T, model.item_bias_])
    return U, V


MODELS = {
    "explicit-als": dict(n_components=3, alpha=0.2, l1_ratio=0.2, max_iter=6, tol=0),
    "explicit-ccd": dict(n_components=3, alpha=0.2, solver="ccd", sweeps=2, max_iter=6, tol=0),
    "explicit-nobias": dict(n_components=3, alpha=0.05, biases=False, reg_scaling="none", max_iter=6, tol=0),
    "implicit": dict(n_components=3, feedback="implicit", alpha=0.5, confidence=3.0, max_iter=6, tol=0),
}


@pytest.mark.parametrize("name", MODELS)
def test_fit_objective_and_last_half_step_match_naive_references(name):
    X, mask, values = ratings(25, 17, 0.3, seed=0)
    model = fit(X, **MODELS[name])
    p = model._fitted_params()
    U, V = state(model)
    hist = model.loss_history_
    assert model.n_iter_ == 6 and hist.shape == (6,)
    assert hist[-1] == pytest.approx(naive_objective(mask, values, U, V, p), rel=1e-11)
    assert np.all(np.diff(hist) <= 1e-9 * hist[0])  # alternating minimisation never goes up
    if model.solver == "als":  # the last half-step solved every item exactly
        items = replace(p, count_power=0.0)  # user_count_power weighs the users' penalty only
        np.testing.assert_allclose(V, naive_half_step(X.T, U, items), rtol=1e-7, atol=1e-9)
    if p.biases:
        assert model.global_mean_ == pytest.approx(X.data.mean(), rel=1e-15)
    assert np.all(model.components_ >= 0) and np.all(model.user_factors_ >= 0)


def test_missing_entries_are_absent_entries_not_zeros():
    X, mask, values = ratings(20, 15, 0.3, seed=1)
    dense_nan = np.where(mask, values, np.nan)
    a = fit(X, n_components=3, max_iter=4)
    b = fit(dense_nan, n_components=3, max_iter=4)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    # Zeros stored explicitly are observed zero ratings: a different model.
    zeros = as_csr(np.ones_like(mask), np.where(mask, values, 0.0))
    c = fit(zeros, n_components=3, max_iter=4)
    assert not np.allclose(a.components_, c.components_)


@pytest.mark.parametrize("name", ["explicit-als", "implicit"])
def test_fold_in_is_the_exact_masked_regularised_nnls_of_each_row(name):
    X, _, _ = ratings(30, 17, 0.3, seed=2)
    model = fit(X, **MODELS[name])
    p = model._fitted_params()
    _, V = state(model)
    new, _, _ = ratings(6, 17, 0.25, seed=3)
    new = sp.vstack([new, sp.csr_matrix((1, 17))]).tocsr()  # and a user with no ratings
    ref = naive_half_step(new, V, p)
    np.testing.assert_allclose(model.transform(new), ref[:, : p.k], rtol=1e-7, atol=1e-9)
    f = model.fold_in(new, user_ids=[f"n{i}" for i in range(7)])
    if p.biases:
        np.testing.assert_allclose(f.user_bias, ref[:, p.k], rtol=1e-7, atol=1e-9)
    assert np.all(f.W[-1] == 0)
    # The folded-in factors score and recommend like fitted ones.
    rows = np.array([0, 0, 3])
    cols = np.array([1, 5, 2])
    expect = (ref[rows, : p.k] * V[cols, : p.k]).sum(1) + p.global_mean
    if p.biases:
        expect += ref[rows, p.k] + V[cols, p.k]
    np.testing.assert_allclose(f.predict(rows, cols), expect, rtol=1e-7)
    # One new user at a time gives the same bits as a batch (rows are independent),
    # and so do a {item: rating} dict and a Dask array of the same ratings.
    np.testing.assert_array_equal(model.transform(new[2]), model.transform(new)[2:3])
    row = new[2]
    as_dict = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
    np.testing.assert_array_equal(model.transform(as_dict), model.transform(row))
    import dask.array as da

    lazy = da.from_array(new.toarray(), chunks=(3, 17))  # zeros are ratings here: compare with NaN-free dense
    np.testing.assert_array_equal(np.asarray(model.transform(lazy)), model.transform(new.toarray()))
    rec = model.recommend_new(as_dict, n=4, user_ids=["me"])
    assert list(rec.user) == ["me"] * 4 and not set(rec.item) & set(as_dict)
    scores = f.predict(np.full(17, 2), np.arange(17))
    scores[row.indices] = -np.inf
    assert list(rec.item) == list(np.argsort(-scores, kind="stable")[:4])


def test_bit_identical_for_any_blocking_and_on_a_cluster(dist_client):
    X, _, _ = ratings(41, 23, 0.3, seed=4)
    a = fit(X, n_components=4, max_iter=5, chunks=((41,), (23,)))
    b = fit(X, n_components=4, max_iter=5, chunks=((10, 1, 30), (7, 16)), client=dist_client)
    c = fit(X, n_components=4, max_iter=5, chunks=((10, 1, 30), (7, 16)), solver="ccd")
    d = fit(X, n_components=4, max_iter=5, chunks=((20, 21), (23,)), solver="ccd", client=dist_client)
    for x, y in ((a, b), (c, d)):
        np.testing.assert_array_equal(x.components_, y.components_)
        np.testing.assert_array_equal(x.user_factors_, y.user_factors_)
        np.testing.assert_array_equal(x.user_bias_, y.user_bias_)
        np.testing.assert_array_equal(x.loss_history_, y.loss_history_)
    # Implicit: Grams are summed in a fixed order per blocking, wherever tasks run.
    kw = dict(n_components=4, feedback="implicit", max_iter=4, chunks=((10, 31), (7, 16)))
    e, f = fit(X, **kw), fit(X, client=dist_client, **kw)
    np.testing.assert_array_equal(e.components_, f.components_)
    np.testing.assert_array_equal(e.user_factors_, f.user_factors_)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small ratings CSV with string user IDs, ingested into a store."""
    X, mask, values = ratings(30, 20, 0.3, seed=5)
    rows, cols = np.nonzero(mask)
    table = pd.DataFrame({"user": [f"u{r:02d}" for r in rows], "item": cols * 10 + 7, "rating": values[rows, cols]})
    base = tmp_path_factory.mktemp("ratings")
    table.sample(frac=1.0, random_state=0).to_csv(base / "r.csv", index=False)
    st = dnmf.ingest(
        str(base / "r.csv"), str(base / "r.zarr"), user_col="user", item_col="item", value_col="rating", chunks=(12, 8)
    )
    return st, X.astype(np.float32)


def test_store_fit_equals_memory_fit_and_speaks_ids(store):
    st, X = store
    a = fit(st.path, n_components=3, max_iter=5)
    b = fit(X, n_components=3, max_iter=5)  # same ratings, another blocking
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(np.asarray(a.user_factors_), b.user_factors_)
    assert list(a.user_ids_[:2]) == ["u00", "u01"] and a.item_ids_[0] == 7
    # Scores by ID, recommendations in IDs, never an item the user rated.
    assert a.predict(["u03", "u03"], [17, 27]) == pytest.approx(b.predict([3, 3], [1, 2]), rel=1e-12)
    rec = a.recommend(["u03", "u07"], n=4)
    assert list(rec.columns) == ["user", "rank", "item", "score"]
    assert rec.groupby("user").size().to_dict() == {"u03": 4, "u07": 4}
    for user, items in rec.groupby("user")["item"]:
        seen = a.item_ids_[X[int(user[1:])].indices]
        assert not set(items) & set(seen)
        assert np.all(np.diff(rec[rec.user == user].score.to_numpy()) <= 0)
    everything = a.recommend("u03", n=20, exclude_seen=False)
    assert len(everything) == 20
    only = a.recommend("u03", n=3, exclude_seen=False, items=[7, 17])
    assert set(only.item) == {7, 17}
    # Unknown users: raise (naming them), or a documented fallback.
    with pytest.raises(UnknownIDError, match="'zz'"):
        a.recommend(["u03", "zz"])
    assert set(a.recommend(["zz", "u03"], n=2, cold_start="drop").user) == {"u03"}
    nan = a.recommend(["zz"], n=2, cold_start="nan")
    assert nan.item.isna().all() and nan.score.isna().all()
    pop = a.recommend(["zz"], n=3, cold_start="popular")
    top = a.item_ids_[np.argsort(-a.item_counts_, kind="stable")[:3]]
    assert list(pop.item) == list(top)
    np.testing.assert_array_equal(a.item_counts_, np.diff(X.tocsc().indptr))


def test_recommend_all_and_similar_items_delegate(store):
    _, X = store
    model = fit(X, n_components=3, max_iter=3, feedback="implicit")
    users, items, scores = model.recommend_all(n=3)
    assert users.equals(model.user_ids_)
    items, scores = np.asarray(items), np.asarray(scores)
    one = model.recommend(list(range(30)), n=3)
    np.testing.assert_array_equal(items, one.item.to_numpy().reshape(30, 3))
    np.testing.assert_allclose(scores, one.score.to_numpy().reshape(30, 3), rtol=1e-12)
    sim = model.similar_items(4, n=3)
    H = model.components_ / np.linalg.norm(model.components_, axis=0)
    cos = H[:, 4] @ H
    cos[4] = -np.inf
    assert list(sim.similar) == list(np.argsort(-cos, kind="stable")[:3])


def test_save_and_load_round_trip(store, tmp_path):
    st, X = store
    for model, path in (
        (fit(X, n_components=3, max_iter=3), tmp_path / "mem"),
        (fit(st, n_components=3, max_iter=3), tmp_path / "store"),
    ):
        model.save(str(path))
        for loaded in (dnmf.load(str(path)),):
            assert isinstance(loaded, RatingsNMF)
            assert loaded.get_params() == model.get_params() | {"client": None}
            users = model.user_ids_[[1, 4]]
            items = model.item_ids_[[0, 3]]
            np.testing.assert_array_equal(loaded.predict(users, items), model.predict(users, items))
            pd.testing.assert_frame_equal(loaded.recommend(users, n=3), model.recommend(users, n=3))
            np.testing.assert_array_equal(loaded.transform(X[:3]), model.transform(X[:3]))
            np.testing.assert_array_equal(loaded.loss_history_, model.loss_history_)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    X, _, _ = ratings(30, 20, 0.3, seed=6)
    full = fit(X, n_components=3, max_iter=7, tol=0)
    first = fit(X, n_components=3, max_iter=4, tol=0, checkpoint=str(tmp_path / "ck"), checkpoint_every=2)
    assert first.n_iter_ == 4
    resumed = RatingsNMF(3, max_iter=7, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        resumed.fit(X, resume=str(tmp_path / "ck"))
    np.testing.assert_array_equal(resumed.components_, full.components_)
    np.testing.assert_array_equal(resumed.user_factors_, full.user_factors_)
    np.testing.assert_array_equal(resumed.loss_history_, full.loss_history_)
    with pytest.raises(ValueError, match="alpha"):
        RatingsNMF(3, alpha=0.5, max_iter=7).fit(X, resume=str(tmp_path / "ck"))


@pytest.mark.cluster
def test_killed_worker_costs_time_not_the_job(tmp_path):
    """SIGKILL a worker mid-fit: the fit reloads its checkpoint and ends with the same bits."""
    from distributed import Client, LocalCluster

    X, _, _ = ratings(60, 40, 0.3, seed=9)
    kw = dict(n_components=3, max_iter=9, tol=0, chunks=((20, 20, 20), (20, 20)))
    ref = fit(X, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        victim = next(iter(client.run(os.getpid).values()))
        killed = threading.Event()

        def on_iteration(it, elapsed, loss):
            if it == 5 and not killed.is_set():
                killed.set()
                threading.Timer(0.02, os.kill, (victim, signal.SIGKILL)).start()
            time.sleep(0.05)

        model = RatingsNMF(random_state=0, client=client, checkpoint=str(tmp_path / "ck"), checkpoint_every=2, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, callback=on_iteration)
        assert victim not in client.run(os.getpid).values(), "the worker was not killed"
    assert killed.is_set() and model.n_iter_ == 9
    np.testing.assert_array_equal(model.components_, ref.components_)
    np.testing.assert_array_equal(model.user_factors_, ref.user_factors_)


def test_stopping_rule_and_sklearn_protocol():
    X, _, _ = ratings(20, 15, 0.3, seed=7)
    model = fit(X, n_components=2, max_iter=200, tol=1e-3)
    h = model.loss_history_
    assert model.n_iter_ < 200 and (h[-2] - h[-1]) <= 1e-3 * h[-2] and (h[-3] - h[-2]) > 1e-3 * h[-3]
    assert clone(model).get_params() == model.get_params()
    from importlib import import_module

    ev = import_module("dnmf.recommend.evaluation")
    assert model.score(X) == pytest.approx(-ev.rmse(model, X), rel=1e-12)


def test_errors_name_the_problem_and_the_fix():
    X, _, _ = ratings(10, 8, 0.4, seed=8)
    neg = X.copy()
    neg.data[0] = -1.0
    with pytest.raises(ValueError, match="Negative values.*feedback='explicit'"):
        RatingsNMF(2, feedback="implicit").fit(neg)
    fit(neg, n_components=2, max_iter=2)  # signed ratings are fine for the explicit model
    with pytest.raises(ValueError, match="biases=True needs feedback='explicit'"):
        RatingsNMF(2, feedback="implicit", biases=True).fit(X)
    bad = X.copy()
    bad.data[1] = np.nan
    with pytest.raises(ValueError, match="1 infinite or NaN"):
        RatingsNMF(2).fit(bad)
    with pytest.raises(ValueError, match="no observed entries"):
        RatingsNMF(2).fit(sp.csr_matrix((5, 4)))
    model = fit(X, n_components=2, max_iter=2)
    with pytest.raises(ValueError, match="fitted on 8"):
        model.transform(sp.csr_matrix((1, 9)))
    with pytest.raises(ValueError, match="cold_start"):
        model.recommend([0], cold_start="ignore")
