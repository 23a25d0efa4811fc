"""`dnmf split / fit-ratings / evaluate / recommend / recommend-all`, run as the real executable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.cli.helpers import dnmf, write_ratings

pytestmark = pytest.mark.subprocess


def test_ratings_flow_from_csv_to_recommendations(tmp_path):
    df = write_ratings(tmp_path / "r.csv", n_users=200, n_items=50, n=5000, seed=2)
    dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr")
    out = dnmf(
        "split", tmp_path / "r.zarr", "--train", tmp_path / "train.zarr", "--test", tmp_path / "test.zarr", "--seed", 1
    ).stdout
    n_train, n_test = map(int, __import__("re").findall(r"(\d+) ratings", out))
    assert n_train + n_test == df.groupby(["user", "item"]).ngroups and 0.1 < n_test / (n_train + n_test) < 0.3

    fit = dnmf("fit-ratings", tmp_path / "train.zarr", "-k", 3, "-o", tmp_path / "m", "--max-iter", 5, "-q")
    assert "model saved to" in fit.stdout
    ev = json.loads(
        dnmf(
            "evaluate", tmp_path / "m", "--test", tmp_path / "test.zarr", "--train", tmp_path / "train.zarr", "--json"
        ).stdout
    )
    assert ev["test_entries"] == n_test and ev["dropped_test_entries"] == 0
    assert 0 < ev["rmse"] < 4 and 0 <= ev["precision"] <= 1 and set(ev) >= {"mae", "ndcg", "map", "coverage"}

    # recommend for two users: n items each, none of them rated in the training store
    recs = [
        json.loads(line)
        for line in dnmf(
            "recommend", tmp_path / "m", "--user", "u1", "--user", "u7", "-n", 4, "--json"
        ).stdout.splitlines()
    ]
    assert [r["user"] for r in recs] == ["u1"] * 4 + ["u7"] * 4
    from dnmf import open_matrix

    train = open_matrix(tmp_path / "train.zarr")
    X = train.data.compute().tocsr() if hasattr(train.data.compute(), "tocsr") else None
    for r in recs:
        i, j = train.row_ids.get_loc(r["user"]), train.col_ids.get_loc(r["item"])
        assert X[i, j] == 0
    unknown = dnmf("recommend", tmp_path / "m", "--user", "nobody", check=False)
    assert unknown.returncode == 2 and "nobody" in unknown.stderr

    dnmf("recommend-all", tmp_path / "m", "-o", tmp_path / "all.parquet", "-n", 4)
    table = pd.read_parquet(tmp_path / "all.parquet")
    assert list(table.columns) == ["user", "rank", "item", "score"]
    assert table.user.nunique() == train.shape[0]
    first = table[table.user.isin(["u1", "u7"])].reset_index(drop=True)
    assert first.item.tolist() == [r["item"] for r in recs]
    np.testing.assert_allclose(first.score, [r["score"] for r in recs], rtol=1e-9)


def test_fit_ratings_user_count_power_option(tmp_path):
    """--user-count-power sets the implicit model's per-user penalty power (0: the model before)."""
    from dnmf import load

    write_ratings(tmp_path / "r.csv", n_users=60, n_items=30, n=900, seed=3)
    dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr")
    dnmf(
        "fit-ratings",
        tmp_path / "r.zarr",
        "-k",
        2,
        "--feedback",
        "implicit",
        "--user-count-power",
        "0",
        "-o",
        tmp_path / "m",
        "--max-iter",
        2,
        "-q",
    )
    assert load(tmp_path / "m").user_count_power == 0
