"""Foreign, unfinished and damaged stores are refused clearly, and never modified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from dnmf.storage import StoreError, read_matrix_info, verify_matrix
from dnmf.storage import arrays as io
from dnmf.storage.layout import MatrixInfo
from dnmf.storage.matrix import begin_matrix_store

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")


def snapshot(root) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


@pytest.fixture
def sparse_store(tmp_path):
    X = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype="float32")
    path = str(tmp_path / "s.zarr")
    io.write_matrix(X, path, chunks=(10, 8), row_ids=[f"u{i}" for i in range(30)], scheduler="synchronous")
    return path


@pytest.fixture
def dense_store(tmp_path):
    path = str(tmp_path / "d.zarr")
    io.write_matrix(np.arange(60.0).reshape(10, 6), path, chunks=(4, 3), scheduler="synchronous")
    return path


def _edit_attrs(path, **changes):
    meta_path = os.path.join(path, "zarr.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["attributes"].update(changes)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def _open_and_read(path, **kw):
    m = io.open_matrix(path, **kw)
    m.data.compute(scheduler="synchronous")
    return m


def _expect(path_fragment, *words, verify=False, target=None):
    """Open and read ``target``; the StoreError names the path and each word."""
    with pytest.raises(StoreError) as err:
        _open_and_read(target, verify=verify)
    message = str(err.value)
    assert path_fragment in message
    for w in words:
        assert w in message, message
    assert isinstance(err.value, ValueError)
    return message


def test_nothing_there(tmp_path):
    _expect("nope.zarr", "nothing exists", target=str(tmp_path / "nope.zarr"))
    assert not (tmp_path / "nope.zarr").exists()


def test_plain_directory(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    before = snapshot(d)
    _expect("plain", "not a Zarr store", target=str(d))
    assert snapshot(d) == before


def test_foreign_zarr_group(tmp_path):
    path = str(tmp_path / "foreign.zarr")
    g = zarr.open_group(path, mode="w")
    g.create_array("x", shape=(3, 3), dtype="f8")
    _expect("foreign.zarr", "dnmf_format", "pass the array's own path", target=path)
    # ...whose 2-D array can be opened directly as a dense matrix.
    m = io.open_matrix(os.path.join(path, "x"))
    assert m.format == "dense" and m.shape == (3, 3)


def test_other_dnmf_layout_and_version(sparse_store):
    _edit_attrs(sparse_store, version=99)
    _expect("s.zarr", "version 99", "Upgrade dnmf", target=sparse_store)
    _edit_attrs(sparse_store, version=1, dnmf_format="dnmf-model")
    _expect("s.zarr", "not a matrix layout", target=sparse_store)


def test_unfinished_write_is_not_valid(tmp_path):
    info = MatrixInfo(
        path=str(tmp_path / "half.zarr"),
        kind="sparse",
        shape=(4, 4),
        dtype=np.dtype("f8"),
        row_chunks=(4,),
        col_chunks=(4,),
        nnz_per_block=((0,),),
    )
    begin_matrix_store(info)
    _expect("half.zarr", "did not finish", target=info.path)


def test_inconsistent_nnz(sparse_store):
    with open(os.path.join(sparse_store, "zarr.json")) as f:
        attrs = json.load(f)["attributes"]
    grid = attrs["nnz_per_block"]
    grid[0][0] += 1
    _edit_attrs(sparse_store, nnz_per_block=grid)
    _expect("s.zarr", "nnz=", target=sparse_store)  # total no longer matches
    _edit_attrs(sparse_store, nnz=attrs["nnz"] + 1)
    # The metadata is now self-consistent but block (0, 0) disagrees with it.
    _expect("blocks/0_0", "expected", target=sparse_store)


def test_bad_chunks_metadata(sparse_store):
    _edit_attrs(sparse_store, row_chunks=[10, 10, 11])
    _expect("s.zarr", "summing to 30", target=sparse_store)


def test_missing_block_array(sparse_store):
    shutil.rmtree(os.path.join(sparse_store, "blocks", "1_2", "indices"))
    m = io.open_matrix(sparse_store)  # metadata only: fine
    with pytest.raises(StoreError, match=r"blocks/1_2/indices.*missing"):
        m.data.compute(scheduler="synchronous")
    # Other blocks are unaffected: a task reads only its own block.
    m.data.blocks[0, 0].compute(scheduler="synchronous")
    _expect("blocks/1_2", "missing", target=sparse_store, verify=True)


def test_missing_chunk_file(sparse_store):
    os.remove(os.path.join(sparse_store, "blocks", "0_1", "data", "c", "0"))
    _expect("blocks/0_1", "chunk of data is missing", target=sparse_store)


def test_truncated_chunk(sparse_store):
    chunk = os.path.join(sparse_store, "blocks", "2_0", "indices", "c", "0")
    with open(chunk, "rb") as f:
        raw = f.read()
    with open(chunk, "wb") as f:
        f.write(raw[: len(raw) // 2])
    _expect("blocks/2_0/indices", "cannot be decoded", target=sparse_store)


def test_flipped_byte(sparse_store):
    chunk = os.path.join(sparse_store, "blocks", "1_1", "data", "c", "0")
    with open(chunk, "rb") as f:
        raw = bytearray(f.read())
    raw[len(raw) // 2] ^= 0xFF
    with open(chunk, "wb") as f:
        f.write(bytes(raw))
    _expect("blocks/1_1/data", "cannot be decoded", target=sparse_store)


def test_garbage_metadata(sparse_store):
    with open(os.path.join(sparse_store, "blocks", "0_0", "indptr", "zarr.json"), "w") as f:
        f.write("{not json")
    _expect("blocks/0_0/indptr", "metadata cannot be read", target=sparse_store)
    with open(os.path.join(sparse_store, "zarr.json"), "w") as f:
        f.write("")
    _expect("s.zarr", "metadata cannot be read", target=sparse_store)


def test_damaged_id_map(sparse_store):
    os.remove(os.path.join(sparse_store, "ids", "rows", "c", "0"))
    m = io.open_matrix(sparse_store)
    with pytest.raises(StoreError, match=r"ids/rows.*missing"):
        _ = m.row_ids


def test_dense_damage(dense_store):
    os.remove(os.path.join(dense_store, "X", "c", "1", "0"))
    _expect("d.zarr/X", "chunk (1, 0) is missing", target=dense_store)
    _edit_attrs(dense_store, row_chunks=[5, 5])
    _expect("d.zarr/X", "metadata says", target=dense_store)


@pytest.mark.parametrize("damage", ["none", "missing_chunk", "truncated", "version"])
def test_reading_never_writes(sparse_store, damage):
    chunk = os.path.join(sparse_store, "blocks", "0_0", "data", "c", "0")
    if damage == "missing_chunk":
        os.remove(chunk)
    elif damage == "truncated":
        with open(chunk, "r+b") as f:
            f.truncate(5)
    elif damage == "version":
        _edit_attrs(sparse_store, version=2)
    before = snapshot(sparse_store)
    try:
        m = io.open_matrix(sparse_store, verify=True)
        m.data.compute(scheduler="synchronous")
        _ = m.row_ids, m.col_ids
        read_matrix_info(sparse_store)
        verify_matrix(sparse_store)
    except StoreError:
        assert damage != "none"
    assert snapshot(sparse_store) == before
