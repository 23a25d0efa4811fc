"""Item 9: a model's recorded training store is followed only when it is the store it was fitted on."""

import json

import pytest

import dnmf
from dnmf.storage import arrays as io

from .helpers import invoke, one_error_line, ratings_csv

pytestmark = pytest.mark.adversarial


def _set_train_store(model, value):
    meta_path = model / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["attrs"]["train_store"] = value
    meta_path.write_text(json.dumps(meta))


@pytest.fixture
def fitted(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    ratings_csv(tmp_path / "other.csv", seed=5, n=60)
    io.ingest(tmp_path / "other.csv", tmp_path / "other.zarr")
    res = invoke("fit-ratings", tmp_path / "s.zarr", "-k", 2, "-o", tmp_path / "m", "--max-iter", 3, "-q")
    assert res.exit_code == 0, res.stderr
    return tmp_path


def _user(tmp_path):
    return str(dnmf.open_matrix(tmp_path / "s.zarr").row_ids[0])


def test_recorded_store_is_used_when_it_matches(fitted):
    res = invoke("recommend", fitted / "m", "--user", _user(fitted), "-n", 100, "--json")
    assert res.exit_code == 0, res.stderr
    X = dnmf.open_matrix(fitted / "s.zarr").data.compute().tocsr()
    assert len(res.stdout.splitlines()) == X.shape[1] - X[0].nnz  # the seen items are left out


@pytest.mark.parametrize("target", ["other", "url", "missing"])
def test_edited_train_store_is_refused(fitted, target):
    value = {
        "other": str(fitted / "other.zarr"),
        "url": "http://127.0.0.1:9/x.zarr",
        "missing": str(fitted / "gone.zarr"),
    }[target]
    _set_train_store(fitted / "m", value)
    for cmd in (
        ["recommend", fitted / "m", "--user", _user(fitted)],
        ["recommend-all", fitted / "m", "-o", fitted / "all.csv", "-q"],
    ):
        res = invoke(*cmd)
        assert res.exit_code == 2, res.stderr
        line = one_error_line(res.stderr)
        assert "--exclude-seen" in line and "--include-seen" in line
    # Naming the store, or not excluding, still works.
    ok = invoke("recommend", fitted / "m", "--user", _user(fitted), "--exclude-seen", fitted / "s.zarr")
    assert ok.exit_code == 0, ok.stderr
    assert invoke("recommend", fitted / "m", "--user", _user(fitted), "--include-seen").exit_code == 0


def test_python_api_refuses_an_edited_train_store(fitted):
    _set_train_store(fitted / "m", str(fitted / "other.zarr"))
    model = dnmf.load(fitted / "m")
    with pytest.raises(ValueError, match="not the one it was fitted on"):
        model.recommend([model.user_ids_[0]], n=3)
