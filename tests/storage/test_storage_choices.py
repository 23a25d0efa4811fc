"""Storage choices (codec, index width, value dtype), the default blocking rule, and re-blocking at fit time."""

from __future__ import annotations

import hashlib
import math
import re

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

import dnmf
from dnmf.storage import arrays as io
from dnmf.storage.chunking import (
    MIN_BLOCK_NNZ,
    ROW_BLOCKS_PER_CORE,
    TARGET_BLOCK_BYTES,
    auto_chunks,
    default_cores,
    refined_row_chunks,
    sparse_row_blocks,
)
from dnmf.storage.codecs import Codec, parse_codec
from dnmf.storage.reblock import reblock_for, reblock_rows
from tests.cli.helpers import dnmf as run_dnmf

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")


def _ratings(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"user": rng.integers(0, 400, n), "item": rng.integers(0, 90, n), "rating": rng.integers(1, 11, n) / 2}
    )
    df.to_csv(path, index=False)
    ref = df.groupby(["user", "item"])["rating"].sum()
    rows = pd.Index(sorted(df.user.unique()))
    cols = pd.Index(sorted(df.item.unique()))
    dense = np.zeros((len(rows), len(cols)))
    dense[rows.get_indexer(ref.index.get_level_values(0)), cols.get_indexer(ref.index.get_level_values(1))] = ref
    return dense


def _stored_arrays(path):
    return [zarr.open_array(f"{path}/blocks/0_0/{name}") for name in ("indptr", "indices", "data")]


# ------------------------------------------------------------------ codecs, index width, dtype


@pytest.mark.parametrize("codec", ["zstd:1", "zstd:9", "lz4", "lz4:1", "none"])
@pytest.mark.parametrize("index_dtype", ["auto", "int32", "int64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_storage_choices_round_trip(tmp_path, codec, index_dtype, dtype):
    dense = _ratings(tmp_path / "r.csv")
    store = io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr", codec=codec, index_dtype=index_dtype, dtype=dtype)
    np.testing.assert_array_equal(store.data.compute().toarray(), dense.astype(dtype))
    indptr, indices, data = _stored_arrays(store.path)
    want = np.int64 if index_dtype == "int64" else np.int32
    assert indptr.dtype == want and indices.dtype == want and data.dtype == np.dtype(dtype)
    names = [type(c).__name__ for c in data.metadata.codecs]
    if codec == "none":
        assert names == ["BytesCodec", "Crc32cCodec"]
    else:
        blosc = data.metadata.codecs[1]
        assert str(blosc.cname.value) == parse_codec(codec).name and blosc.clevel == parse_codec(codec).level
    assert store.info.provenance["codec"] == str(parse_codec(codec))
    assert store.info.provenance["index_dtype"] == index_dtype


def test_default_codec_is_blosc_lz4(tmp_path):
    """No option: Blosc-LZ4 level 5, shuffled, checksummed (the fastest to read of the choices)."""
    _ratings(tmp_path / "r.csv")
    store = io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    codecs = _stored_arrays(store.path)[2].metadata.codecs
    blosc = codecs[1]
    assert (str(blosc.cname.value), blosc.clevel, str(blosc.shuffle.value)) == ("lz4", 5, "shuffle")
    assert type(codecs[-1]).__name__ == "Crc32cCodec"
    assert store.info.provenance["codec"] == "lz4:5"


def test_stores_of_the_former_default_codec_read_as_before(tmp_path):
    """Stores written with Blosc-Zstandard level 3 (the default before Blosc-LZ4) read back the same."""
    X = sp.random(40, 30, density=0.3, format="csr", random_state=4)
    store = dnmf.write_matrix(X, tmp_path / "s.zarr", chunks=(20, 30), codec="zstd:3")
    assert str(_stored_arrays(store.path)[2].metadata.codecs[1].cname.value) == "zstd"
    np.testing.assert_array_equal(dnmf.open_matrix(store.path).data.compute().toarray(), X.toarray())


def test_codecs_from_a_npz(tmp_path):
    X = sp.random(50, 40, density=0.2, format="csr", random_state=1)
    sp.save_npz(tmp_path / "x.npz", X)
    store = io.ingest(tmp_path / "x.npz", tmp_path / "s.zarr", codec="lz4", index_dtype="int64")
    np.testing.assert_array_equal(store.data.compute().toarray(), X.toarray())
    assert _stored_arrays(store.path)[1].dtype == np.int64


@pytest.mark.parametrize("codec", ["lz4", "zstd:9", "none"])
def test_write_matrix_takes_the_same_storage_choices(tmp_path, codec):
    X = sp.random(60, 40, density=0.2, format="csr", random_state=2)
    store = dnmf.write_matrix(X, tmp_path / "s.zarr", chunks=(20, 40), codec=codec, index_dtype="int64")
    np.testing.assert_array_equal(store.data.compute().toarray(), X.toarray())
    indptr, indices, data = _stored_arrays(store.path)
    assert indptr.dtype == indices.dtype == np.int64
    names = [type(c).__name__ for c in data.metadata.codecs]
    if codec == "none":
        assert names == ["BytesCodec", "Crc32cCodec"]
    else:
        assert str(data.metadata.codecs[1].cname.value) == parse_codec(codec).name
    dense = dnmf.write_matrix(X.toarray(), tmp_path / "d.zarr", chunks=(20, 40), codec=codec)
    np.testing.assert_array_equal(dense.data.compute(), X.toarray())
    stored = zarr.open_array(f"{dense.path}/{dense.info.array_path}")
    assert (type(stored.metadata.codecs[1]).__name__ == "Crc32cCodec") == (codec == "none")


def test_models_keep_blosc_zstandard(tmp_path):
    """A model is written once and read rarely: its arrays stay Blosc-Zstandard level 3, not the stores' LZ4."""
    X = np.random.default_rng(0).random((40, 12))
    model = dnmf.NMF(3, init="random", max_iter=2, random_state=0).fit(X)
    model.save(tmp_path / "m")
    for name in ("W", "H"):
        blosc = zarr.open_array(str(tmp_path / "m" / name), mode="r").metadata.codecs[1]
        assert (str(blosc.cname.value), blosc.clevel) == ("zstd", 3)


def test_write_matrix_default_codec_is_blosc_lz4(tmp_path):
    store = dnmf.write_matrix(sp.random(30, 20, density=0.3, format="csr", random_state=0), tmp_path / "s.zarr")
    blosc = _stored_arrays(store.path)[2].metadata.codecs[1]
    assert (str(blosc.cname.value), blosc.clevel, str(blosc.shuffle.value)) == ("lz4", 5, "shuffle")
    assert _stored_arrays(store.path)[1].dtype == np.int32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "gzip"}, "codec must be one of 'zstd[:LEVEL]', 'lz4[:LEVEL]' or 'none'; got 'gzip'"),
        ({"index_dtype": "int16"}, "index_dtype must be one of 'auto', 'int32', 'int64'; got 'int16'"),
        ({"index_dtype": "int64", "format": "dense"}, "index_dtype='int64' applies to sparse stores"),
    ],
)
def test_write_matrix_bad_storage_choices_fail_before_writing(tmp_path, kwargs, message):
    X = sp.random(30, 20, density=0.3, format="csr", random_state=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        dnmf.write_matrix(X, tmp_path / "s.zarr", **kwargs)
    assert not (tmp_path / "s.zarr").exists()


def test_parse_codec():
    assert parse_codec(None) == Codec("lz4", 5)
    assert parse_codec("zstd") == Codec("zstd", 3)
    assert parse_codec("ZSTD:9") == Codec("zstd", 9)
    assert parse_codec("lz4") == Codec("lz4", 5)
    assert str(parse_codec("none")) == "none"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "gzip"}, "codec must be one of 'zstd[:LEVEL]', 'lz4[:LEVEL]' or 'none'; got 'gzip'"),
        ({"codec": "zstd:0"}, "codec 'zstd' takes a level from 1 to 22; got 'zstd:0'"),
        ({"codec": "lz4:x"}, "codec 'lz4' takes a level from 1 to 9; got 'lz4:x'"),
        ({"codec": "none:1"}, "codec 'none' takes no level"),
        ({"index_dtype": "int16"}, "index_dtype must be one of 'auto', 'int32', 'int64'; got 'int16'"),
        ({"cores": 0}, "cores must be a positive integer"),
    ],
)
def test_bad_storage_choices_fail_before_writing(tmp_path, kwargs, message):
    _ratings(tmp_path / "r.csv")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr", **kwargs)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.subprocess
def test_cli_codec_and_index_options(tmp_path):
    dense = _ratings(tmp_path / "r.csv")
    run_dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "s.zarr", "--codec", "zstd:9", "--index-dtype", "int64")
    store = dnmf.open_matrix(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(store.data.compute().toarray(), dense.astype(np.float32))
    assert store.info.provenance["codec"] == "zstd:9" and _stored_arrays(store.path)[1].dtype == np.int64
    bad = run_dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "t.zarr", "--codec", "brotli", check=False)
    assert bad.returncode == 2
    assert "--codec must be one of 'zstd[:LEVEL]', 'lz4[:LEVEL]' or 'none'; got 'brotli'" in bad.stderr


# ------------------------------------------------------------------ the blocking rule


def _rule(nnz, n_col_blocks, itemsize, cores):
    """The rule as the chunking module's docstring states it."""
    per_block = TARGET_BLOCK_BYTES // (itemsize + 4)
    by_bytes = max(1, math.ceil(nnz / (per_block * n_col_blocks)))
    return max(by_bytes, min(ROW_BLOCKS_PER_CORE * cores, nnz // (MIN_BLOCK_NNZ * n_col_blocks)))


@pytest.mark.parametrize(
    ("nnz", "n_col_blocks", "itemsize", "cores", "expected"),
    [
        (50_000_000, 3, 4, 2, 8),  # the 50M ratings on 2 cores: 4 per core (was 2)
        (50_000_000, 3, 4, 16, 63),  # 16 cores: capped by the smallest block (2**18 entries per column block)
        (50_000_000, 3, 4, 1000, 63),  # a large cluster: the same cap
        (2_000_000_000, 1, 4, 2, 239),  # bytes decide: 64 MiB blocks
        (100_000, 1, 4, 64, 1),  # small: one block whatever the cores
        (600_000, 1, 8, 8, 2),
    ],
)
def test_sparse_row_blocks(nnz, n_col_blocks, itemsize, cores, expected):
    assert (
        sparse_row_blocks(nnz, n_col_blocks, itemsize, cores) == expected == _rule(nnz, n_col_blocks, itemsize, cores)
    )
    assert expected >= min(ROW_BLOCKS_PER_CORE * cores, nnz // (MIN_BLOCK_NNZ * n_col_blocks))


def test_auto_chunks_of_the_50m_case():
    rows, cols = auto_chunks((3_000_000, 300_000), np.float32, nnz=50_000_000, cores=2)
    assert len(rows) == 8 and set(rows) == {375_000} and len(cols) == 3
    # Without cores (write_matrix, older callers): the byte rule alone, as before.
    assert len(auto_chunks((3_000_000, 300_000), np.float32, nnz=50_000_000)[0]) == 2


def test_ingest_blocks_for_the_given_cores(tmp_path):
    n = 4 * MIN_BLOCK_NNZ + 1000
    rng = np.random.default_rng(0)
    keys = np.sort(rng.choice(4000 * 400, size=n, replace=False))
    X = sp.csr_matrix((np.ones(n), (keys // 400, keys % 400)), shape=(4000, 400))
    sp.save_npz(tmp_path / "x.npz", X)
    one = io.ingest(tmp_path / "x.npz", tmp_path / "a.zarr", cores=1)
    two = io.ingest(tmp_path / "x.npz", tmp_path / "b.zarr", cores=2)
    assert len(one.chunks[0]) == 4  # 4 per core
    assert len(two.chunks[0]) == 4  # 8 wanted, but no block below 2**18 entries
    assert one.chunks[0] == (1000,) * 4


# ------------------------------------------------------------------ re-blocking at fit time


def test_refined_row_chunks():
    assert refined_row_chunks((1_500_000, 1_500_000), 50_000_000, 3, 4, threads=2) == (375_000,) * 8
    assert refined_row_chunks((375_000,) * 8, 50_000_000, 3, 4, threads=2) is None  # enough already
    assert refined_row_chunks((10, 3), 10 * MIN_BLOCK_NNZ, 1, 4, threads=2) == (3, 3, 2, 2, 1, 1, 1)


def _digest(model):
    return hashlib.sha256(model.components_.tobytes()).hexdigest()


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_reblocked_fit_is_bit_identical_to_a_finer_store(tmp_path, init):
    X = sp.random(300, 80, density=0.15, format="csr", random_state=3, dtype=np.float32)
    coarse = dnmf.write_matrix(X, str(tmp_path / "coarse.zarr"), chunks=(150, -1))
    chunks = refined_row_chunks(coarse.chunks[0], 8 * MIN_BLOCK_NNZ, 1, 4, threads=2)
    assert chunks is not None and len(chunks) == 8
    fine = dnmf.write_matrix(X, str(tmp_path / "fine.zarr"), chunks=(chunks, (80,)))
    sliced = reblock_rows(coarse.data, chunks)
    assert sliced.chunks == fine.data.chunks
    for a, b in zip(sliced.blocks, fine.data.blocks, strict=True):
        a, b = a.compute(), b.compute()
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.data, b.data)
    with dask.config.set(scheduler="threads"):
        got = dnmf.NMF(4, init=init, max_iter=15, random_state=0).fit(sliced)
        want = dnmf.NMF(4, init=init, max_iter=15, random_state=0).fit(fine.path)
    assert _digest(got) == _digest(want)
    assert got.loss_history_.tolist() == want.loss_history_.tolist()


def test_reblock_keeps_a_store_with_enough_blocks():
    arr = da.from_array(np.zeros((10, 4)), chunks=(5, 4))
    assert reblock_for(arr, nnz=100, threads=64) is arr  # too few entries to split


def test_reblock_rows_rejects_straddling_blocks(tmp_path):
    X = sp.random(20, 5, density=0.5, format="csr", random_state=0)
    store = dnmf.write_matrix(X, str(tmp_path / "s.zarr"), chunks=(10, -1))
    with pytest.raises(ValueError, match=r"must split each of X's row blocks \(10, 10\)"):
        reblock_rows(store.data, (5, 10, 5))


def test_fit_of_a_store_with_too_few_blocks_reblocks_it(tmp_path):
    """The estimator's own path: a one-block store is sliced for this machine's threads, with the bits of a finer store."""
    n = 4 * MIN_BLOCK_NNZ + 1000
    rng = np.random.default_rng(1)
    keys = np.sort(rng.choice(3000 * 500, size=n, replace=False))
    X = sp.csr_matrix((rng.random(n).astype(np.float32), (keys // 500, keys % 500)), shape=(3000, 500))
    coarse = dnmf.write_matrix(X, str(tmp_path / "coarse.zarr"), chunks=(3000, -1))
    chunks = refined_row_chunks(coarse.chunks[0], n, 1, 4, threads=default_cores())
    assert chunks is not None and len(chunks) >= 4
    fine = dnmf.write_matrix(X, str(tmp_path / "fine.zarr"), chunks=(chunks, (500,)))
    with dask.config.set(scheduler="threads"):
        got = dnmf.NMF(3, init="random", max_iter=3, random_state=0).fit(coarse.path)
        want = dnmf.NMF(3, init="random", max_iter=3, random_state=0).fit(fine.path)
    assert _digest(got) == _digest(want)
