"""Top-n recommendation from factors (dnmf.recommend.factors): in-process and cluster paths against brute force."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from dnmf.recommend import factors as rec
from dnmf.recommend.factors import Factors, UnknownIDError
from tests.recommend.helpers import brute_force, dense_scores, problem

# --------------------------------------------------------------------------
# In-process recommend
# --------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True])
def test_recommend_matches_brute_force_with_exclusion_and_candidates(integer):
    W, H, ub, ib, gm, seen = problem(integer=integer, biases=not integer)
    f = Factors(W, H, ub, ib, gm)
    rows = np.array([5, 0, 77, 5])
    items = np.random.default_rng(0).choice(900, 400, replace=False)
    idx, sc = rec.recommend(f, rows, 8, exclude=seen[rows], items=items, item_block=150)
    ref_idx, ref_sc = brute_force(
        W[rows], H, 8, ub=None if ub is None else ub[rows], ib=ib, gm=gm, exclude=seen[rows], items=items
    )
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-12)
    assert np.isin(idx, items).all() and not seen[rows][np.arange(4)[:, None], idx].toarray().any()


def test_users_with_fewer_eligible_items_get_padded_lists():
    W, H, *_ = problem(m=3, n=10, biases=False)
    seen = sp.csr_matrix(np.array([[1] * 10, [1] * 7 + [0] * 3, [0] * 10]))
    idx, sc = rec.recommend(Factors(W, H), [0, 1, 2], 5, exclude=seen)
    assert (idx[0] == -1).all() and np.isneginf(sc[0]).all()
    assert sorted(idx[1][:3]) == [7, 8, 9] and (idx[1][3:] == -1).all() and np.isneginf(sc[1][3:]).all()
    assert (idx[2] >= 0).all()


def test_predict_and_similar_items_match_naive():
    W, H, ub, ib, gm, _ = problem(m=30, n=60, seed=4)
    H[:, 7] = 0.0  # an item without factors: similarity 0 to everything
    f = Factors(W, H, ub, ib, gm)
    rows, cols = np.array([0, 3, 3, 29]), np.array([5, 0, 59, 7])
    np.testing.assert_allclose(f.predict(rows, cols), dense_scores(W, H, ub, ib, gm)[rows, cols], rtol=1e-12)
    q = np.array([0, 7, 42])
    idx, sim = rec.similar_items(f, q, n=5)
    for t, j in enumerate(q):
        norm = np.linalg.norm(H, axis=0)
        cos = [(H[:, j] @ H[:, i]) / (norm[i] * norm[j]) if norm[i] * norm[j] > 0 else 0.0 for i in range(60)]
        order = sorted((i for i in range(60) if i != j), key=lambda i: (-cos[i], i))[:5]
        assert idx[t].tolist() == order
        np.testing.assert_allclose(sim[t], [cos[i] for i in order], atol=1e-12)
    assert (sim[1] == 0).all() and idx[1].tolist() == [0, 1, 2, 3, 4]


def test_ids_map_to_positions_and_unknown_ids_are_named():
    W, H, *_ = problem(m=5, n=4, biases=False)
    f = Factors(W, H, row_ids=pd.Index([10, 20, 30, 40, 50]), col_ids=pd.Index(list("abcd")))
    assert f.row_index([30, 10]).tolist() == [2, 0] and f.col_index("c").tolist() == [2]
    with pytest.raises(KeyError, match=r"2 of 3 user IDs are unknown.*99, 7") as err:
        f.row_index([10, 99, 7])
    assert isinstance(err.value, UnknownIDError) and err.value.unknown == [99, 7]
    assert err.value.positions.tolist() == [1, 2]
    with pytest.raises(UnknownIDError, match="strings; convert them"):
        f.row_index(["10"])
    assert f.row_index([20, 99], strict=False).tolist() == [1, -1]
    with pytest.raises(UnknownIDError, match="no item ID map"):
        Factors(W, H).col_index([4])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_factors_from_models():
    from dnmf import NMF

    X = np.random.default_rng(0).random((40, 12))
    nmf = NMF(3, random_state=0, max_iter=5).fit(X)
    f = Factors.from_model(nmf)
    W = nmf.fit_transform(X)
    np.testing.assert_allclose(f.predict([0, 39], [1, 11]), (W @ nmf.components_)[[0, 39], [1, 11]])
    W2 = np.ones((40, 3))
    assert Factors.from_model(nmf, W=W2).W is not W and (Factors.from_model(nmf, W=W2).W == 1).all()

    class Fitted:
        factors_ = f

    assert Factors.from_model(Fitted()) is f and Factors.from_model(f) is f
    bare = type("Bare", (), {})()
    bare.components_ = nmf.components_  # an NMF-like model without a kept W
    with pytest.raises(ValueError, match="Bare has no user factors W"):
        Factors.from_model(bare)
    with pytest.raises(TypeError, match="neither factors_ nor components_"):
        Factors.from_model(object())


def test_bad_arguments_are_explained():
    W, H, *_ = problem(m=5, n=4, biases=False)
    f = Factors(W, H)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        rec.recommend(f, [0], 0)
    with pytest.raises(IndexError, match=r"user positions must lie in \[0, 5\)"):
        rec.recommend(f, [5], 2)
    with pytest.raises(ValueError, match="exclude must have one row per requested user"):
        rec.recommend(f, [0, 1], 2, exclude=sp.csr_matrix((1, 4)))
    with pytest.raises(ValueError, match="exclude must have the shape of the ratings matrix"):
        rec.recommend_all(f, 2, exclude=sp.csr_matrix((5, 3)))
    with pytest.raises(ValueError, match="W must be"):
        Factors(np.ones((5, 2)), H)


def test_popularity_helpers():
    X = sp.csr_matrix(np.array([[1, 0, 2, 0], [3, 0, 0, 0], [0, 0, 1, 5], [1, 1, 0, 0]], dtype=float))
    pop = rec.item_popularity(X)
    assert pop.tolist() == [3, 1, 2, 1]
    Xd = da.from_array(X, chunks=(3, 2), asarray=False)
    assert rec.item_popularity(Xd).tolist() == [3, 1, 2, 1]
    idx, sc = rec.popular_items(pop, 3, n_rows=2, exclude=X[:2])
    assert idx.tolist() == [[1, 3, -1], [2, 1, 3]] and sc[1].tolist() == [2, 1, 1]
    base = rec.popularity_baseline(X)
    assert base.predict([0, 3], [0, 2]).tolist() == [3, 2]


# --------------------------------------------------------------------------
# Every user, on a real cluster
# --------------------------------------------------------------------------


def test_recommend_all_on_a_local_cluster_is_exact_and_blocking_independent(dist_client):
    W, H, ub, ib, gm, seen = problem(m=400, n=2300, k=5, seed=7)
    ref_idx, ref_sc = brute_force(W, H, 10, ub=ub, ib=ib, gm=gm, exclude=seen)
    Wd = da.from_array(W, chunks=(150, 5))
    seen_d = da.from_array(seen, chunks=(90, 1000), asarray=False)  # other blocking than W's
    f = Factors(Wd, H, ub, ib, gm)
    idx, sc = rec.recommend_all(f, 10, exclude=seen_d, item_block=600, client=dist_client)
    assert idx.chunks == ((150, 150, 100), (10,))
    with dask.config.set(scheduler=dist_client):
        from distributed import get_task_stream

        with get_task_stream(dist_client) as ts:
            got_idx, got_sc = dask.compute(idx, sc)
    np.testing.assert_array_equal(got_idx, ref_idx)
    np.testing.assert_allclose(got_sc, ref_sc, rtol=1e-12)
    parts = [t for t in ts.data if "-part'" in str(t["key"])]
    assert len(parts) == 3 * 4 and len({t["worker"] for t in parts}) == 2

    # Another blocking (in-memory W, its own user blocks; item blocks large
    # enough to be screened in float32): the same lists.
    f2 = Factors(W, H, ub, ib, gm)
    idx2, sc2 = rec.recommend_all(f2, 10, exclude=seen, item_block=1100, client=dist_client)
    got2 = dist_client.compute([idx2, sc2], sync=True)
    np.testing.assert_array_equal(got2[0], ref_idx)
    np.testing.assert_allclose(got2[1], got_sc, rtol=1e-12)

    # Candidate items and exact ties (integer factors), broken by item index.
    Wi, Hi, *_ = problem(m=400, n=2300, k=3, seed=8, integer=True, biases=False)
    items = np.arange(0, 2300, 3)
    idx3, sc3 = rec.recommend_all(
        Factors(da.from_array(Wi, chunks=(128, 3)), Hi),
        7,
        exclude=seen_d,
        items=items,
        item_block=256,
        client=dist_client,
    )
    got3 = dist_client.compute([idx3, sc3], sync=True)
    ref3 = brute_force(Wi, Hi, 7, exclude=seen, items=items)
    np.testing.assert_array_equal(got3[0], ref3[0])
    np.testing.assert_array_equal(got3[1], ref3[1])


def _exclude_inputs(idx) -> dict:
    """``{key: its inputs}`` of the tasks of a recommend_all graph that hold a user block's rows
    of the training matrix."""
    from dask.core import get_dependencies

    graph = dict(idx.__dask_graph__())
    return {key: get_dependencies(graph, key) for key in graph if "-exclude'" in str(key)}


def test_recommend_all_reads_a_stores_rows_where_w_is(dist_client, tmp_path):
    """With exclude read from a store, each user block's read takes W's block as an input (the
    scheduler then runs it where that block is, and the rows never travel); the lists are exact.
    With ``dnmf.placement`` off the reads stand alone."""
    import dnmf

    W, H, ub, ib, gm, seen = problem(m=400, n=900, k=5, seed=3)
    path = tmp_path / "seen.zarr"
    dnmf.write_matrix(seen, path, chunks=(90, 900))  # other blocking than W's user blocks
    store = dnmf.open_matrix(path)
    f = Factors(W, H, ub, ib, gm)
    ref_idx, _ = brute_force(W, H, 10, ub=ub, ib=ib, gm=gm, exclude=seen)
    with dask.config.set({"dnmf.placement": True}):
        idx, _ = rec.recommend_all(f, 10, exclude=store, client=dist_client)
    inputs = _exclude_inputs(idx)
    w_name = next(k for k in dict(idx.__dask_graph__()) if str(k[0]).startswith("dnmf-W-"))[0]
    assert inputs and all(deps == {(w_name, i, 0)} for (_, i), deps in inputs.items())
    np.testing.assert_array_equal(dist_client.compute(idx, sync=True), ref_idx)

    with dask.config.set({"dnmf.placement": False}):
        idx_off, _ = rec.recommend_all(f, 10, exclude=store, client=dist_client)
    assert all(not deps for deps in _exclude_inputs(idx_off).values())
    np.testing.assert_array_equal(dist_client.compute(idx_off, sync=True), ref_idx)
