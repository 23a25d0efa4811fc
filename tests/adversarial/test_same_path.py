"""Item 1: an output equal to (or inside) an input never destroys the input; overwrites are atomic."""

import os

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf.storage import arrays as io

from .helpers import invoke, one_error_line, ratings_csv, tree_hashes

pytestmark = pytest.mark.adversarial


@pytest.fixture
def store(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


def test_split_train_onto_input_with_overwrite_refused_before_work(store, tmp_path):
    before = tree_hashes(store)
    res = invoke("split", store, "--train", store, "--test", tmp_path / "t.zarr", "--overwrite")
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert "--train" in line and "INPUT" in line
    assert tree_hashes(store) == before and not (tmp_path / "t.zarr").exists()


def test_split_train_equal_test_refused_before_work(store, tmp_path):
    res = invoke("split", store, "--train", tmp_path / "x.zarr", "--test", tmp_path / "x.zarr")
    assert res.exit_code == 2 and "--train" in one_error_line(res.stderr)
    assert not (tmp_path / "x.zarr").exists()


def test_split_existing_output_without_overwrite_says_overwrite_option(store, tmp_path):
    (tmp_path / "t.zarr").mkdir()
    (tmp_path / "t.zarr" / "keep.txt").write_text("x")
    res = invoke("split", store, "--train", tmp_path / "a.zarr", "--test", tmp_path / "t.zarr")
    assert res.exit_code == 2 and "--overwrite" in one_error_line(res.stderr)
    assert not (tmp_path / "a.zarr").exists()  # train was not written first


def test_write_matrix_onto_its_own_source_refused(store):
    before = tree_hashes(store)
    X, _ = dnmf.open_matrix(store)
    with pytest.raises(ValueError, match="same location"):
        dnmf.write_matrix(X, store, overwrite=True)
    with pytest.raises(ValueError, match="same location"):
        dnmf.write_matrix(X[:5] * 2, store.parent, overwrite=True)  # a directory holding the source
    assert tree_hashes(store) == before
    assert dnmf.open_matrix(store).nnz > 0


def test_ingest_output_onto_input_refused(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match="same location"):
        dnmf.ingest(tmp_path / "r.csv", tmp_path / "r.csv", overwrite=True)
    res = invoke("ingest", tmp_path / "r.csv", "-o", tmp_path, "--overwrite")
    assert res.exit_code == 2 and "same location" in one_error_line(res.stderr)
    assert tree_hashes(tmp_path) == before


def test_failed_overwrite_leaves_the_old_store_intact(store, tmp_path, monkeypatch):
    before = tree_hashes(store)
    monkeypatch.setattr(io, "_write_blocks", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full (simulated)")))
    with pytest.raises(OSError, match="disk full"):
        dnmf.write_matrix(sp.random(30, 20, density=0.3, format="csr", random_state=1), store, overwrite=True)
    assert tree_hashes(store) == before
    assert [p for p in os.listdir(store.parent) if p.startswith(".")] == []  # no sibling left behind


def test_overwrite_replaces_a_store(store):
    Y = sp.random(7, 5, density=0.5, format="csr", random_state=2)
    dnmf.write_matrix(Y, store, overwrite=True)
    got = dnmf.open_matrix(store).data.compute()
    np.testing.assert_allclose(got.toarray(), Y.toarray())
    assert [p for p in os.listdir(store.parent) if p.startswith(".")] == []
