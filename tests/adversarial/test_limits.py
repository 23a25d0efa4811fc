"""Item 2: a list length ``n`` is capped at the number of items (no memory blow-up from one argument)."""

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf.recommend import factors as rec

from .helpers import invoke, ratings_csv

pytestmark = pytest.mark.adversarial

HUGE = 10**9


@pytest.fixture(scope="module")
def small():
    X = sp.random(30, 20, density=0.3, format="csr", random_state=0) * 5
    with pytest.warns(Warning):
        return dnmf.RatingsNMF(3, max_iter=5, random_state=0).fit(X)


def test_recommend_huge_n_is_capped_at_n_items(small):
    frame = small.recommend([0, 1], n=HUGE, exclude_seen=False)
    assert len(frame) == 2 * 20 and frame["rank"].max() == 20
    f = rec.Factors(W=np.ones((3, 2)), H=np.ones((2, 5)))
    idx, scores = rec.recommend(f, [0, 1, 2], n=HUGE)
    assert idx.shape == (3, 5)
    idx, _ = rec.recommend(f, [0], n=HUGE, items=[1, 3])
    assert idx.shape == (1, 2)
    idx, _ = rec.similar_items(f, [0], n=HUGE)
    assert idx.shape == (1, 4)


def test_recommend_all_huge_n_is_capped(small):
    _, items, scores = small.recommend_all(HUGE, exclude_seen=False)
    assert items.shape == (30, 20) and scores.shape == (30, 20)


def test_cli_recommend_and_recommend_all_huge_n(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    assert invoke("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr").exit_code == 0
    fit = invoke("fit-ratings", tmp_path / "r.zarr", "-k", 2, "-o", tmp_path / "m", "--max-iter", 3, "-q")
    assert fit.exit_code == 0, fit.stderr
    res = invoke("recommend", tmp_path / "m", "--user", 0, "-n", HUGE, "--json")
    assert res.exit_code == 0, res.stderr
    assert 0 < len(res.stdout.splitlines()) <= 9
    res = invoke("recommend-all", tmp_path / "m", "-n", HUGE, "-o", tmp_path / "all.csv", "-q")
    assert res.exit_code == 0, res.stderr
    assert len((tmp_path / "all.csv").read_text().splitlines()) <= 1 + 12 * 9
