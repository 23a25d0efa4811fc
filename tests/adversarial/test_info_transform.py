"""Item 3 (`dnmf info` on RatingsNMF models) and item 5 (`dnmf transform` options, the README line)."""

import json
import re
import warnings

import pytest

from dnmf.storage import arrays as io

from .helpers import invoke, ratings_csv

pytestmark = pytest.mark.adversarial


@pytest.fixture
def store(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_info_of_a_ratings_model(store, tmp_path, feedback):
    fit = invoke("fit-ratings", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 3, "--feedback", feedback, "-q")
    assert fit.exit_code == 0, fit.stderr
    res = invoke("info", tmp_path / "m")
    assert res.exit_code == 0, res.stderr
    assert "RatingsNMF" in res.stdout and "iterations: 3" in res.stdout
    out = json.loads(invoke("info", tmp_path / "m", "--json").stdout)
    assert out["estimator"] == "RatingsNMF" and out["n_components"] == 2 and out["n_samples"] == 12


def test_info_of_an_nmf_model_still_shows_the_error(store, tmp_path):
    assert invoke("fit", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 3, "-q").exit_code == 0
    res = invoke("info", tmp_path / "m")
    assert res.exit_code == 0 and "reconstruction error" in res.stdout and "solver cd" in res.stdout
