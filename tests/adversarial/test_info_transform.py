"""Item 3 (`dnmf info` on RatingsNMF models) and item 5 (`dnmf transform` options, the README line)."""

import json
import re
import warnings

import pytest

from dnmf.storage import arrays as io
from tests.helpers import REPO_ROOT

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


def test_transform_declares_each_option_once_and_output_format_works(store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # click warns about a parameter declared twice
        res = invoke("transform", "--help")
    assert res.exit_code == 0 and "--output-format" in res.stdout
    assert invoke("fit", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 3, "-q").exit_code == 0
    res = invoke(
        "transform", tmp_path / "m", tmp_path / "r.csv", "-o", tmp_path / "W.out", "--output-format", "csv", "-q"
    )
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "W.out").read_text().replace('"', "").startswith("id,c0,c1")


def test_readme_command_lines_run_as_written(tmp_path, monkeypatch):
    """The README's ingest/fit/transform lines, on a CSV with the README's column names."""
    import shlex

    import pandas as pd

    readme = (REPO_ROOT / "README.md").read_text()
    lines = {}
    for name in ("ingest", "transform"):
        m = re.search(rf"^dnmf {name} (ratings|model)\.\S+ .*$", readme, flags=re.M)
        lines[name] = shlex.split(m.group(0).split("  #")[0])[1:]
    df = ratings_csv(tmp_path / "plain.csv", n_users=20, n_items=10, n=150)
    df = df.rename(columns={"user": "userId", "item": "movieId"})
    df.to_csv(tmp_path / "ratings.csv", index=False)
    df[df.userId < 3].to_csv(tmp_path / "new_users.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert invoke(*lines["ingest"]).exit_code == 0
    assert invoke("fit", "ratings.zarr", "-k", 2, "-o", "model.zarr", "--max-iter", 3, "-q").exit_code == 0
    res = invoke(*lines["transform"])
    assert res.exit_code == 0, res.stderr
    assert len(pd.read_csv(tmp_path / "W_new.csv")) == df[df.userId < 3].userId.nunique()
