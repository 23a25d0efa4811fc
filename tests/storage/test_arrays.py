"""The public reading/writing API: return types, options, IDs, URLs, warnings."""

from __future__ import annotations

import os
import shutil
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sparse
import zarr

from dnmf.storage import StoreError
from dnmf.storage import arrays as io

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")


@pytest.fixture
def X():
    return sp.random(40, 25, density=0.2, format="csr", random_state=0, dtype="float32")


def test_unpacking_attributes_and_graph(tmp_path, X):
    rows = [f"user{i}" for i in range(40)]
    m = io.write_matrix(X, tmp_path / "x.zarr", chunks=(16, 10), row_ids=rows, col_ids=np.arange(100, 125))
    data, ids = m
    assert data is m.data and ids is m.ids
    assert isinstance(ids.rows, pd.Index) and list(m.row_ids) == rows
    assert m.col_ids.tolist() == list(range(100, 125)) and m.col_ids.dtype == np.int64
    assert (m.shape, m.dtype, m.nnz, m.format) == ((40, 25), np.float32, X.nnz, "sparse")
    assert m.chunks == ((16, 16, 8), (10, 10, 5))
    assert "nnz=" in repr(m)
    # One task per block, reading only that block; names the engine recognises.
    graph = dict(data.__dask_graph__())
    assert len(graph) == 9 and data.name.startswith("dnmf-store-")
    assert isinstance(data._meta, sp.csr_matrix)


def test_blocks_are_read_independently(tmp_path, X):
    path = tmp_path / "x.zarr"
    m = io.write_matrix(X, path, chunks=(20, 25))
    shutil.rmtree(path / "blocks" / "1_0")  # damage block (1, 0) only
    block = m.data.blocks[0, 0].compute()
    assert (block != X[:20]).nnz == 0


def test_key_names_are_deterministic(tmp_path, X):
    path = tmp_path / "x.zarr"
    io.write_matrix(X, path)
    a, b = io.open_matrix(path), io.open_matrix(str(path))
    assert a.data.name == b.data.name
    io.write_matrix(X, path, overwrite=True)  # same content, new write
    assert io.open_matrix(path).data.name != a.data.name


def test_input_kinds(tmp_path, X):
    for i, inp in enumerate(
        [
            X.tocoo(),
            X.tocsc(),
            sp.csr_array(X),
            sparse.COO.from_scipy_sparse(X),
            sparse.GCXS.from_scipy_sparse(X),
        ]
    ):
        m = io.write_matrix(inp, tmp_path / f"{i}.zarr", scheduler="synchronous")
        assert m.format == "sparse" and (m.data.compute() != X).nnz == 0
    dense = io.write_matrix(X.toarray().tolist(), tmp_path / "list.zarr")
    assert dense.format == "dense" and dense.dtype == np.float64
    forced = io.write_matrix(X.toarray(), tmp_path / "forced.zarr", format="sparse")
    assert forced.format == "sparse" and forced.nnz == X.nnz


def test_dask_chunks_kept_or_regularised(tmp_path, X):
    Xd = da.from_array(X, chunks=((10, 30), (25,)), asarray=False)
    m = io.write_matrix(Xd, tmp_path / "s.zarr")
    assert m.chunks == ((10, 30), (25,))  # sparse stores keep any chunks
    d = io.write_matrix(Xd, tmp_path / "d.zarr", format="dense")
    assert d.chunks == ((30, 10), (25,))  # Zarr needs regular chunks
    np.testing.assert_array_equal(d.data.compute(), X.toarray())
    r = io.write_matrix(Xd, tmp_path / "r.zarr", chunks=(7, 5))
    assert r.chunks == ((7,) * 5 + (5,), (5,) * 5)
    auto = io.write_matrix(Xd, tmp_path / "a.zarr", chunks="auto")
    assert auto.chunks == ((40,), (25,))


def test_bad_arguments(tmp_path, X):
    with pytest.raises(ValueError, match="2-D matrix"):
        io.write_matrix(np.ones(3), tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="must hold numbers"):
        io.write_matrix(np.array([["a"]]), tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="format must be"):
        io.write_matrix(X, tmp_path / "a.zarr", format="csr")
    with pytest.raises(ValueError, match=r"summing to 40"):
        io.write_matrix(X, tmp_path / "a.zarr", chunks=((10, 10), (25,)))
    with pytest.raises(ValueError, match="regular chunks"):
        io.write_matrix(X.toarray(), tmp_path / "a.zarr", chunks=((10, 30), (25,)))
    with pytest.raises(ValueError, match=r"one entry per row \(40\); got 3"):
        io.write_matrix(X, tmp_path / "a.zarr", row_ids=["a", "b", "c"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        io.write_matrix(X, tmp_path / "a.zarr", col_ids=["a"] * 25)
    assert not (tmp_path / "a.zarr").exists()


def test_overwrite_rules(tmp_path, X):
    path = tmp_path / "x.zarr"
    io.write_matrix(X, path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        io.write_matrix(X, path)
    io.write_matrix(2 * X, path, overwrite=True)
    assert (io.open_matrix(path).data.compute() != 2 * X).nnz == 0
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="never deletes foreign data"):
        io.write_matrix(X, precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_fsspec_url(X):
    url = "memory://dnmf-test/x.zarr"
    m = io.write_matrix(X, url, chunks=(16, 25), row_ids=np.arange(40) * 3)
    assert m.path == url
    again = io.open_matrix(url)
    assert (again.data.compute() != X).nnz == 0 and again.row_ids[-1] == 117
    D = np.arange(12.0).reshape(4, 3)
    d = io.write_matrix(D, "memory://dnmf-test/d.zarr", chunks=(2, 3))
    np.testing.assert_array_equal(io.open_matrix("memory://dnmf-test/d.zarr").data.compute(), D)
    with pytest.raises(StoreError, match="nothing exists"):
        io.open_matrix("memory://dnmf-test/none.zarr")
    assert d.format == "dense"


def test_bare_zarr_array_and_chunk_warnings(tmp_path):
    A = np.random.default_rng(0).random((1000, 300))
    z = zarr.create_array(tmp_path / "small.zarr", shape=A.shape, chunks=(100, 100), dtype="f8")
    z[...] = A
    with pytest.warns(UserWarning, match=r"below 1 MiB.*chunks=\"auto\""):
        m = io.open_matrix(tmp_path / "small.zarr")
    assert m.format == "dense" and m.chunks == ((100,) * 10, (100,) * 3)
    assert m.row_ids.equals(pd.RangeIndex(1000))
    np.testing.assert_array_equal(m.data.compute(), A)
    # Huge chunks: only metadata is created, no data written.
    zarr.create_array(tmp_path / "big.zarr", shape=(200_000, 1000), chunks=(100_000, 1000), dtype="f8")
    with pytest.warns(UserWarning, match="above 512 MiB"):
        io.open_matrix(tmp_path / "big.zarr")
    # A good fit, or a matrix that is one small chunk, does not warn.
    zarr.create_array(tmp_path / "ok.zarr", shape=(4000, 1000), chunks=(1000, 1000), dtype="f8")
    zarr.create_array(tmp_path / "tiny.zarr", shape=(10, 10), chunks=(10, 10), dtype="f8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.open_matrix(tmp_path / "ok.zarr")
        io.open_matrix(tmp_path / "tiny.zarr")
    with pytest.warns(UserWarning, match="below 1 MiB"):
        io.write_matrix(A, tmp_path / "w.zarr", chunks=(10, 300))


def test_verify_reads_everything(tmp_path, X):
    path = tmp_path / "x.zarr"
    io.write_matrix(X, path, chunks=(10, 25))
    assert io.open_matrix(path, verify=True).nnz == X.nnz
    os.remove(path / "blocks" / "3_0" / "indptr" / "c" / "0")
    with pytest.raises(StoreError, match="blocks/3_0"):
        io.open_matrix(path, verify=True)
