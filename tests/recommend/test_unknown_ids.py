"""Pairs of users or items a RatingsNMF does not know: predict(unknown=), evaluate(unknown=), --unknown."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf import RatingsNMF
from dnmf.recommend.factors import Factors, UnknownIDError

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")

MODELS = {
    "biases": dict(),
    "no-biases": dict(biases=False),
    "implicit": dict(feedback="implicit"),
}


def tiny_ratings(m=8, n=6, seed=0):
    """A small ratings CSR (0.5..5 stars) with every user and item rated at least once."""
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < 0.5
    mask[np.arange(m), rng.integers(0, n, m)] = True
    mask[rng.integers(0, m, n), np.arange(n)] = True
    values = np.round(rng.uniform(0.5, 5.0, (m, n)) * 2) / 2
    rows, cols = np.nonzero(mask)
    return sp.csr_matrix((values[rows, cols], (rows, cols)), shape=(m, n))


def fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return RatingsNMF(2, max_iter=4, random_state=0, **kw).fit(X)


# --------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------


def test_predict_raises_by_default_naming_the_id_and_the_fix():
    model = fit(tiny_ratings())
    with pytest.raises(UnknownIDError, match=r"1 of 2 user IDs .*: 99\..*unknown='baseline'.*unknown='nan'") as exc:
        model.predict([0, 99], [1, 2])
    assert exc.value.unknown == [99]
    with pytest.raises(KeyError, match=r"item IDs .*: 42\..*unknown='baseline'"):
        model.predict([0, 1], [1, 42], unknown="raise")
    with pytest.raises(ValueError, match="unknown must be 'raise', 'baseline' or 'nan'; got 'zero'"):
        model.predict([0], [1], unknown="zero")


@pytest.mark.parametrize("name", MODELS)
def test_baseline_is_the_mean_plus_the_known_sides_bias(name):
    X = tiny_ratings()
    m, n = X.shape
    model = fit(X, **MODELS[name])
    users = np.array([2, 99, 5, 99, 0])
    items = np.array([1, 3, 77, 77, 4])
    got = model.predict(users, items, unknown="baseline")
    # By hand: the mean of what the model fits, plus the bias of the side that is known.
    if name == "biases":
        mean = X.data.mean()
        expect = [None, mean + model.item_bias_[3], mean + model.user_bias_[5], mean, None]
    elif name == "no-biases":
        mean = X.data.mean()  # no biases: the mean training rating, recorded at fit
        assert model.global_mean_ == 0.0 and model.rating_mean_ == pytest.approx(mean, rel=1e-15)
        expect = [None, mean, mean, mean, None]
    else:
        mean = X.nnz / (m * n)  # implicit: the mean 0/1 preference over all pairs
        expect = [None, mean, mean, mean, None]
    known = model.predict(users[[0, 4]], items[[0, 4]])
    np.testing.assert_array_equal(got[[0, 4]], known)
    np.testing.assert_allclose(got[1:4], np.array(expect[1:4], dtype=float), rtol=1e-14)


def test_nan_marks_exactly_the_unknown_pairs():
    model = fit(tiny_ratings())
    users = np.array([0, 99, 1, 2, 98])
    items = np.array([1, 2, 50, 3, 51])
    got = model.predict(users, items, unknown="nan")
    np.testing.assert_array_equal(np.isnan(got), [False, True, True, False, True])
    np.testing.assert_array_equal(got[[0, 3]], model.predict([0, 2], [1, 3]))
    # A scalar user broadcasts over items, as without unknown IDs.
    np.testing.assert_array_equal(np.isnan(model.predict(1, [0, 50], unknown="nan")), [False, True])


def test_saved_model_keeps_the_mean_and_old_models_fall_back(tmp_path):
    from dnmf.masked.estimator import load_model
    from dnmf.storage.arrays import load_factors

    X = tiny_ratings()
    for kw, path in ((dict(biases=False), tmp_path / "plain"), (dict(), tmp_path / "biased")):
        model = fit(X, **kw)
        model.save(str(path))
        loaded = dnmf.load(str(path))
        assert loaded.rating_mean_ == model.rating_mean_
        np.testing.assert_array_equal(
            loaded.predict([0, 99], [99, 1], unknown="baseline"), model.predict([0, 99], [99, 1], unknown="baseline")
        )
        # A model saved before rating_mean was recorded still loads and predicts.
        arrays, attrs = load_factors(str(path))
        del attrs["rating_mean"]
        old = load_model(arrays, attrs, str(path))
        np.testing.assert_array_equal(old.predict([0, 2], [1, 3]), model.predict([0, 2], [1, 3]))
        assert np.isnan(old.predict([99], [1], unknown="nan")).all()
        if model.item_bias_ is not None:  # the global mean is the mean rating
            assert old.rating_mean_ == model.global_mean_
            np.testing.assert_array_equal(
                old.predict([0, 99], [99, 1], unknown="baseline"),
                model.predict([0, 99], [99, 1], unknown="baseline"),
            )
        else:  # nothing recorded: NaN, and baseline says how to get one
            assert math.isnan(old.rating_mean_)
            with pytest.raises(ValueError, match="Refit the model.*unknown='nan'"):
                old.predict([99], [1], unknown="baseline")
            # Re-saving writes no NaN into the JSON attributes.
            old.save(str(tmp_path / "resaved"))
            assert math.isnan(dnmf.load(str(tmp_path / "resaved")).rating_mean_)


def test_factors_without_a_baseline_mean_use_the_global_mean():
    f = Factors(np.ones((2, 1)), np.ones((1, 3)), user_bias=[0.5, -0.5], global_mean=3.0)
    np.testing.assert_array_equal(f.predict([0, -1, 1], [-1, 2, 0], unknown="baseline"), [3.5, 3.0, 3.5])
    with pytest.raises(IndexError, match="user positions must lie in"):
        f.predict([-1], [0])


# --------------------------------------------------------------------------
# evaluate: a test set with one new user and one new item
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Train and test stores (string users, integer items); test adds user 'new' and item 999."""
    rng = np.random.default_rng(3)
    X = tiny_ratings(20, 10, seed=3)
    coo = X.tocoo()
    frame = pd.DataFrame({"user": [f"u{r:02d}" for r in coo.row], "item": coo.col + 100, "rating": coo.data})
    is_test = rng.random(len(frame)) < 0.25
    # every user and item stays in train
    is_test[~frame.duplicated("user", keep="first").to_numpy() | ~frame.duplicated("item").to_numpy()] = False
    train, test = frame[~is_test], frame[is_test]
    extra = pd.DataFrame({"user": ["new", "u03"], "item": [101, 999], "rating": [4.0, 2.0]})
    test = pd.concat([test, extra], ignore_index=True)
    base = tmp_path_factory.mktemp("unknown")
    train.to_csv(base / "train.csv", index=False)
    test.to_csv(base / "test.csv", index=False)
    dnmf.ingest(str(base / "train.csv"), str(base / "train.zarr"))
    dnmf.ingest(str(base / "test.csv"), str(base / "test.zarr"))
    model = fit(str(base / "train.zarr"))
    model.save(str(base / "model"))
    return base, model, test


def test_evaluate_baseline_scores_every_test_pair_and_counts_the_unknown(split):
    base, model, test = split
    pred = model.predict(test.user.to_numpy(dtype=object), test.item.to_numpy(), unknown="baseline")
    err = test.rating.to_numpy() - pred
    got = dnmf.evaluate(model, str(base / "test.zarr"), metrics=["rmse", "mae"], unknown="baseline")
    assert got["n_unknown"] == 2
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-12)
    # The new user's rating is scored with the mean plus the item's bias, the new item's with the user's.
    assert pred[-2] == pytest.approx(model.global_mean_ + model.item_bias_[model.item_ids_.get_loc(101)])
    assert pred[-1] == pytest.approx(model.global_mean_ + model.user_bias_[model.user_ids_.get_loc("u03")])


def test_evaluate_nan_scores_the_known_pairs_and_raise_names_the_new_ids(split):
    base, model, test = split
    known = test.iloc[:-2]
    err = known.rating.to_numpy() - model.predict(known.user.to_numpy(dtype=object), known.item.to_numpy())
    got = dnmf.evaluate(model, dnmf.open_matrix(str(base / "test.zarr")), train=str(base / "train.zarr"), unknown="nan")
    assert got["n_unknown"] == 2 and got["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-12)
    assert {"precision", "ndcg", "n_users"} <= set(got)
    with pytest.raises(ValueError, match=r"2 of \d+ test entries .*new user \('new'\) and 1 new item \(999\)"):
        dnmf.evaluate(model, str(base / "test.zarr"))
    with pytest.raises(ValueError, match="unknown='baseline'"):
        dnmf.evaluate(model, str(base / "test.zarr"), metrics=["precision"])
    with pytest.raises(ValueError, match="dnmf.evaluate"):
        dnmf.recommend.evaluation.rmse(model, str(base / "test.zarr"))
    with pytest.raises(ValueError, match="unknown must be"):
        dnmf.evaluate(model, str(base / "test.zarr"), unknown="drop")


def test_evaluate_by_position_reports_no_unknown_pairs():
    X = tiny_ratings()
    model = fit(X)
    assert dnmf.evaluate(model, X, metrics=["rmse"], unknown="baseline") == {
        "rmse": pytest.approx(-model.score(X), rel=1e-12),
        "n_unknown": 0,
    }
    assert set(dnmf.evaluate(model, X, metrics=["rmse"])) == {"rmse"}  # the default result is unchanged


# --------------------------------------------------------------------------
# dnmf evaluate --unknown
# --------------------------------------------------------------------------


def run_cli(*args):
    from dnmf.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_unknown_baseline_prints_the_count(split):
    base, model, _ = split
    api = dnmf.evaluate(model, str(base / "test.zarr"), metrics=["rmse", "mae"], unknown="baseline")
    res = run_cli(
        "evaluate",
        base / "model",
        "--test",
        base / "test.csv",
        "--metrics",
        "rmse,mae",
        "--unknown",
        "baseline",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_unknown"] == 2 and out["dropped_test_entries"] == 0
    assert out["rmse"] == pytest.approx(api["rmse"], rel=1e-12)
    text = run_cli("evaluate", base / "model", "--test", base / "test.zarr", "--unknown", "nan")
    assert text.exit_code == 0, text.output
    assert "n_unknown  2" in text.stdout and "dropped_test_entries  2" in text.stdout


def test_cli_default_leaves_unknown_out_and_raise_fails_in_one_line_naming_the_option(split):
    base, _, _ = split
    default = run_cli("evaluate", base / "model", "--test", base / "test.zarr", "--json")
    assert default.exit_code == 0 and json.loads(default.stdout)["n_unknown"] > 0, default.output
    res = run_cli("evaluate", base / "model", "--test", base / "test.zarr", "--unknown", "raise")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--unknown baseline" in lines[0] and "'new'" in lines[0], res.stderr
    bad = run_cli("evaluate", base / "model", "--test", base / "test.zarr", "--unknown", "zero")
    assert bad.exit_code == 2 and "--unknown" in bad.stderr
