"""dnmf.tune: the validation split, the choice, the refit, reproducibility and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf.recommend.tuning import parse_metric, validation_split


def planted_clicks(m=160, n=120, k=4, seed=0):
    """Clicks from k disjoint taste groups: users click mostly inside their group's items."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, k, m)
    item_group = rng.integers(0, k, n)
    p = np.where(user_group[:, None] == item_group[None, :], 0.35, 0.02)
    X = sp.csr_matrix((rng.random((m, n)) < p).astype(np.float64))
    X.eliminate_zeros()
    return X


@pytest.fixture(scope="module")
def X():
    return planted_clicks()


def quiet_tune(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        return dnmf.tune(*args, **kwargs)


def implicit(**params):
    return dnmf.RatingsNMF(4, feedback="implicit", max_iter=15, random_state=0, **params)


def test_picks_the_planted_rank_and_refits_on_all_of_X(X):
    # Rank 1 is a popularity model: it cannot separate the four taste groups.
    result = quiet_tune(implicit(), X, {"n_components": [1, 4]}, metric="ndcg@10", random_state=0)
    assert result.best_params_ == {"n_components": 4}
    table = result.results_
    assert list(table["param_n_components"]) == [1, 4]
    assert list(table["rank"]) == [2, 1]
    assert table["score"][1] > table["score"][0] + 0.1
    assert result.best_score_ == table["score"][1]
    best = result.best_estimator_
    assert best.n_components_ == 4
    # Refitted on all of X, not on the training part of the split.
    assert int(best.item_counts_.sum()) == X.nnz


def test_score_is_evaluate_on_the_seeded_split(X):
    # The reference: the split and the metric computed by hand with dnmf's own functions.
    result = quiet_tune(
        implicit(), X, {"alpha": [0.1, 1.0]}, metric="precision@5", validation_size=0.25, random_state=7
    )
    train, valid = validation_split(X, 0.25, random_state=7)
    for row in result.results_.itertuples():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = implicit(alpha=row.param_alpha).fit(train)
        expected = dnmf.evaluate(model, valid, train=train, k=5, metrics=["precision"])["precision"]
        assert row.score == expected


def test_a_training_set_splits_again_with_the_seed_that_made_it(X):
    # train_test_split decides each entry from the seed and its (user, item): splitting train again
    # with the same seed would hold out nothing; the validation split derives its own seed.
    train, _ = dnmf.train_test_split(X, test_size=0.2, random_state=0)
    assert dnmf.train_test_split(train, test_size=0.2, random_state=0)[1].nnz == 0
    fit_part, valid = validation_split(train, 0.2, random_state=0)
    assert 0.1 * train.nnz < valid.nnz < 0.3 * train.nnz
    assert (fit_part + valid != train).nnz == 0 and fit_part.multiply(valid).nnz == 0
    result = quiet_tune(implicit(), train, {"alpha": [0.3]}, random_state=0, refit=False)
    assert np.isfinite(result.best_score_)


def test_seeded_calls_agree_and_the_seed_reaches_unseeded_estimators(X):
    est = dnmf.RatingsNMF(3, feedback="implicit", max_iter=10)  # random_state=None
    grid = {"alpha": [0.05, 0.5], "confidence": [1.0, 3.0]}
    a = quiet_tune(est, X, grid, random_state=3)
    b = quiet_tune(est, X, grid, random_state=3)
    assert len(a.results_) == 4
    np.testing.assert_array_equal(a.results_["score"], b.results_["score"])
    assert a.best_params_ == b.best_params_
    np.testing.assert_array_equal(a.best_estimator_.components_, b.best_estimator_.components_)
    assert est.random_state is None  # the estimator given is never changed
    c = quiet_tune(est, X, grid, random_state=4)
    assert not np.array_equal(a.results_["score"], c.results_["score"])


def test_rating_metrics_pick_the_lowest_error():
    rng = np.random.default_rng(1)
    W, H = rng.random((80, 2)), rng.random((2, 60))
    X = sp.random(80, 60, density=0.3, random_state=2, format="csr")
    X.data = (W @ H)[X.nonzero()] * 2 + 1
    est = dnmf.RatingsNMF(2, max_iter=20, random_state=0)
    # A huge penalty flattens the factors to the biases: a clearly larger RMSE.
    result = quiet_tune(est, X, {"alpha": [1e4, 0.01]}, metric="rmse", random_state=0)
    assert not result.greater_is_better
    assert result.best_params_ == {"alpha": 0.01}
    assert result.best_score_ == result.results_["score"].min()


def test_refit_false_and_a_list_of_grids(X):
    grids = [{"n_components": [2]}, {"n_components": [4], "alpha": [0.3, 3.0]}]
    result = quiet_tune(implicit(), X, grids, refit=False, random_state=0)
    assert result.best_estimator_ is None
    assert len(result.results_) == 3
    assert result.results_["param_alpha"].isna().sum() == 1
    assert set(result.results_["rank"]) == {1, 2, 3}


def test_plain_nmf_is_tuned_the_same_way(X):
    result = quiet_tune(dnmf.NMF(random_state=0, max_iter=30), X, {"n_components": [1, 4]}, random_state=0)
    assert result.best_params_ == {"n_components": 4}
    assert result.best_estimator_.components_.shape == (4, X.shape[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"param_grid": {"nope": [1]}}, "'nope', which is not a parameter of RatingsNMF"),
        ({"param_grid": {}}, "non-empty dict"),
        ({"param_grid": []}, "non-empty dict"),
        ({"param_grid": {"alpha": []}}, r"param_grid\['alpha'\] must be a non-empty list"),
        ({"param_grid": {"alpha": 0.3}}, r"Write \{'alpha': \[0.3\]\}"),
        ({"param_grid": {"alpha": [-1.0]}}, "alpha"),
        ({"metric": "ndgc@10"}, "metric='ndgc@10' is not known"),
        ({"metric": "ndcg@0"}, "positive integer"),
        ({"metric": "rmse@5"}, "rmse has no cutoff"),
        ({"validation_size": 1.5}, r"validation_size must be a fraction in \(0, 1\)"),
        ({"n_jobs": 0}, "n_jobs must be a positive int"),
        ({"X": sp.csr_matrix(([1.0], ([0], [0])), shape=(3, 3)), "random_state": 0}, "holds no entries"),
    ],
)
def test_bad_input_is_one_clear_error_before_any_fit(X, kwargs, message):
    args = {"param_grid": {"alpha": [0.3]}, "X": X, **kwargs}
    grid, data = args.pop("param_grid"), args.pop("X")
    with pytest.raises(ValueError, match=message):
        dnmf.tune(implicit(), data, grid, **args)


def test_parse_metric():
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    assert parse_metric("Recall@3") == ("recall", 3)
    assert parse_metric("map") == ("map", 10)
    assert parse_metric("mae") == ("mae", 10)


def test_candidates_run_side_by_side_on_a_cluster(X, dist_client):
    grid = {"alpha": [0.1, 1.0], "n_components": [2, 4]}
    serial = quiet_tune(implicit(), X, grid, random_state=0, refit=False)
    parallel = quiet_tune(implicit(), X, grid, random_state=0, refit=False, client=dist_client)
    # Same fits, wherever their tasks ran (the implicit model is bit-identical for a given blocking).
    np.testing.assert_allclose(parallel.results_["score"], serial.results_["score"], rtol=0, atol=1e-12)
    assert parallel.best_params_ == serial.best_params_


def test_dask_input_is_split_and_scored_block_wise(X):
    import dask.array as da

    blocked = da.from_array(X, chunks=(40, 60), asarray=False)
    grid = {"alpha": [0.1, 1.0], "n_components": [2, 4]}
    lazy = quiet_tune(implicit(), blocked, grid, random_state=0, refit=False)
    eager = quiet_tune(implicit(), X, grid, random_state=0, refit=False)
    # The same split whatever the blocking; the implicit Grams are summed in another order.
    np.testing.assert_allclose(lazy.results_["score"], eager.results_["score"], rtol=1e-6)
    assert lazy.best_params_ == eager.best_params_
