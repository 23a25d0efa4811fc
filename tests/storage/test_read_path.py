"""dnmf's own decoding of one-chunk arrays (:func:`dnmf.storage.nodes.read_single_chunk`) against Zarr's."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import Crc32cCodec, GzipCodec, ZstdCodec

from dnmf.storage import nodes
from dnmf.storage.errors import StoreError

CODECS = ["zstd", "zstd:9", "lz4", "lz4:1", "none"]
DTYPES = [np.float64, np.float32, np.int32, np.int64, np.uint8]


def _zarr_read(root, name):
    return np.asarray(zarr.open_array(store=root, path=name, mode="r")[...])


@settings(max_examples=40, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    dtype=st.sampled_from(DTYPES),
    n=st.integers(0, 5000),
    seed=st.integers(0, 2**16),
)
def test_direct_read_equals_zarr(tmp_path_factory, codec, dtype, n, seed):
    root = str(tmp_path_factory.mktemp("direct"))
    rng = np.random.default_rng(seed)
    values = (rng.random(n) * 1000).astype(dtype)
    nodes.write_1d(root, "a", values, None, codec=codec)
    want = _zarr_read(root, "a")
    for arr in (nodes.open_array_readonly(root, "a"), nodes.open_array_meta_readonly(root, "a")):
        assert arr.shape == want.shape and arr.dtype == want.dtype
        got = nodes.read_single_chunk(root, "a", arr)
        assert got.dtype == want.dtype == values.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, values)
        assert got.flags.writeable and got.flags.c_contiguous


@pytest.mark.parametrize(
    "compressors", [(ZstdCodec(level=3), Crc32cCodec()), (ZstdCodec(level=1),), (GzipCodec(level=1), Crc32cCodec())]
)
def test_other_codec_chains_read_the_same(tmp_path, compressors):
    """Plain Zstandard (used above Blosc's 2 GiB limit), no checksum, and a codec dnmf does not decode itself."""
    root = str(tmp_path)
    values = np.random.default_rng(0).random(3000)
    arr = zarr.create_array(
        store=root, name="a", shape=values.shape, chunks=values.shape, dtype=values.dtype, compressors=compressors
    )
    arr[...] = values
    for arr in (nodes.open_array_readonly(root, "a"), nodes.open_array_meta_readonly(root, "a")):
        np.testing.assert_array_equal(nodes.read_single_chunk(root, "a", arr), values)


def test_several_chunks_go_through_zarr(tmp_path):
    root = str(tmp_path)
    values = np.arange(1000, dtype=np.int64)
    nodes.write_1d(root, "a", values, None, chunk=300)
    arr = nodes.open_array_meta_readonly(root, "a")
    assert not nodes.decodes_directly(root, arr)
    np.testing.assert_array_equal(nodes.read_single_chunk(root, "a", arr), values)


#: Values whose chunk file is larger than ``nodes._MAP_MIN_BYTES`` (random doubles hardly compress).
MAPPED = 2 * nodes._MAP_MIN_BYTES // 8


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("n", [2000, MAPPED], ids=["read", "mapped"])
def test_damaged_chunk_is_a_store_error(tmp_path, codec, damage, n):
    root = str(tmp_path)
    nodes.write_1d(root, "a", np.random.default_rng(1).random(n), None, codec=codec)
    chunk = tmp_path / "a" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    else:
        del raw[len(raw) // 2 :]
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="cannot be decoded"):
        nodes.read_single_chunk(root, "a", nodes.open_array_meta_readonly(root, "a"))


def _mappings_of(path) -> list[str]:
    with open("/proc/self/maps") as fh:
        return [line for line in fh if line.rstrip().endswith(str(path))]


@pytest.mark.skipif(
    nodes._POPULATE is None or not os.path.exists("/proc/self/maps"),
    reason="chunk files are mapped only where mmap has MAP_POPULATE (Linux), and /proc shows the mappings",
)
@pytest.mark.parametrize("codec", CODECS)
def test_large_chunks_are_mapped_read_as_zarr_reads_them_and_unmapped(tmp_path, codec, monkeypatch):
    root = str(tmp_path)
    values = np.random.default_rng(2).random(MAPPED)
    nodes.write_1d(root, "a", values, None, codec=codec)
    chunk = tmp_path / "a" / "c" / "0"
    assert chunk.stat().st_size >= nodes._MAP_MIN_BYTES
    seen = []
    real = nodes._decode_into

    def decode_into(out, payload, compressor, checked):
        seen.append(_mappings_of(chunk))
        real(out, payload, compressor, checked)

    monkeypatch.setattr(nodes, "_decode_into", decode_into)
    got = nodes.read_single_chunk(root, "a", nodes.open_array_meta_readonly(root, "a"))
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(got, _zarr_read(root, "a"))
    assert len(seen) == 1 and len(seen[0]) == 1, "the chunk was decoded from one mapping of its file"
    assert _mappings_of(chunk) == [], "the mapping is gone once the array is decoded"
    assert got.flags.writeable, "the values are a copy in memory, not the read-only mapping"


@pytest.mark.parametrize("codec", CODECS)
def test_dnmf_arrays_are_decoded_directly(tmp_path, codec):
    root = str(tmp_path)
    nodes.write_1d(root, "a", np.arange(100.0), None, codec=codec)
    assert nodes.decodes_directly(root, nodes.open_array_readonly(root, "a"))
    assert nodes.decodes_directly(root, nodes.open_array_meta_readonly(root, "a"))


@pytest.mark.parametrize("codec", CODECS)
def test_parse_array_metadata_is_what_zarr_holds(tmp_path, codec):
    """nodes.parse_array_metadata reaches into a private Zarr module: this fails loudly if a Zarr
    release moves it or parses zarr.json differently from zarr.open_array."""
    import json

    root = str(tmp_path)
    nodes.write_1d(root, "a", np.arange(100, dtype=np.int32), None, codec=codec)
    doc = json.loads((tmp_path / "a" / "zarr.json").read_text())
    parsed = nodes.parse_array_metadata(doc)
    held = zarr.open_array(store=root, path="a", mode="r").metadata
    assert type(parsed) is type(held)
    assert parsed == held
    assert isinstance(nodes.open_array_meta_readonly(root, "a"), nodes.LocalArray)


def test_metadata_that_is_not_an_array_is_a_store_error(tmp_path):
    root = str(tmp_path)
    nodes.write_1d(root, "a", np.arange(10.0), None)
    (tmp_path / "a" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(StoreError, match="metadata cannot be read"):
        nodes.open_array_meta_readonly(root, "a")
    with pytest.raises(StoreError, match="missing"):
        nodes.open_array_meta_readonly(root, "b")


def test_metadata_parsed_once_per_document_and_never_stale(tmp_path):
    """A second open of the same array reuses its parse; an array rewritten with another
    shape (a factor store's block written over a given-up generation's file) is parsed anew."""
    root = str(tmp_path)
    nodes.write_1d(root, "a", np.arange(10.0), None)
    first = nodes.open_array_meta_readonly(root, "a")
    again = nodes.open_array_meta_readonly(root, "a")
    assert again.metadata is first.metadata and again.shape == (10,)
    nodes.write_1d(root, "a", np.arange(25.0), None)
    rewritten = nodes.open_array_meta_readonly(root, "a")
    assert rewritten.shape == (25,) and rewritten.metadata is not first.metadata
    np.testing.assert_array_equal(nodes.read_single_chunk(root, "a", rewritten), np.arange(25.0))


def test_blocks_do_not_share_the_read_buffer(tmp_path):
    """Each read returns its own array, although the file bytes go through one reused buffer."""
    root = str(tmp_path)
    a, b = np.arange(3000.0), np.arange(3000.0)[::-1].copy()
    nodes.write_1d(root, "a", a, None, codec="none")
    nodes.write_1d(root, "b", b, None, codec="none")
    got_a = nodes.read_single_chunk(root, "a", nodes.open_array_readonly(root, "a"))
    got_b = nodes.read_single_chunk(root, "b", nodes.open_array_readonly(root, "b"))
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_b, b)


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_sparse_blocks_read_as_zarr_reads_them(tmp_path, codec, index_dtype):
    """Every block of a store equals the CSR matrix assembled from Zarr's reads of its three arrays."""
    import scipy.sparse as sp

    import dnmf
    from dnmf.storage import read_sparse_block

    X = sp.random(70, 50, density=0.2, format="csr", random_state=3, dtype=np.float32)
    X[5] = 0  # an empty row
    sp.save_npz(tmp_path / "x.npz", X)
    path = str(tmp_path / "s.zarr")
    info = dnmf.ingest(tmp_path / "x.npz", path, codec=codec, index_dtype=index_dtype, dtype="float32").info
    for i, h in enumerate(info.row_chunks):
        for j, w in enumerate(info.col_chunks):
            got = read_sparse_block(path, i, j, shape=(h, w), dtype=info.dtype, nnz=info.nnz_per_block[i][j])
            parts = [_zarr_read(path, f"blocks/{i}_{j}/{n}") for n in ("data", "indices", "indptr")]
            want = sp.csr_matrix(tuple(parts), shape=(h, w))
            assert parts[1].dtype == np.dtype(index_dtype) and got.dtype == np.float32
            np.testing.assert_array_equal(got.indptr, want.indptr)
            np.testing.assert_array_equal(got.indices, want.indices)
            np.testing.assert_array_equal(got.data, want.data)
            r0, c0 = sum(info.row_chunks[:i]), sum(info.col_chunks[:j])
            np.testing.assert_array_equal(got.toarray(), X[r0 : r0 + h, c0 : c0 + w].toarray())


def test_reads_into_reused_memory_return_each_arrays_values(tmp_path):
    """Large arrays decode into pooled memory (dnmf.storage.buffers): a read after another's release
    reuses its memory and must hold its own values only."""
    from dnmf.storage import buffers

    root = str(tmp_path)
    n = buffers.MIN_POOLED_BYTES // 8 + 5000
    rng = np.random.default_rng(2)
    values = {name: rng.random(n) for name in "abc"}
    for name, v in values.items():
        nodes.write_1d(root, name, v, None)
    buffers.clear_pool()
    first = nodes.read_single_chunk(root, "a", nodes.open_array_meta_readonly(root, "a"))
    start = first.ctypes.data
    np.testing.assert_array_equal(first, values["a"])
    del first
    second = nodes.read_single_chunk(root, "b", nodes.open_array_meta_readonly(root, "b"))
    assert second.ctypes.data == start  # the same memory, now b's
    np.testing.assert_array_equal(second, values["b"])
    third = nodes.read_single_chunk(root, "c", nodes.open_array_meta_readonly(root, "c"))
    np.testing.assert_array_equal(third, values["c"])
    np.testing.assert_array_equal(second, values["b"])


@pytest.mark.parametrize("compressors", [None, (ZstdCodec(level=3), Crc32cCodec())])
def test_a_chunk_shorter_than_its_metadata_is_a_store_error(tmp_path, compressors):
    """The decoders fill a larger output only partly: the rest would be whatever the memory held."""
    import json

    root = str(tmp_path)
    values = np.arange(5000.0)
    if compressors is None:
        nodes.write_1d(root, "a", values, None)
    else:
        arr = zarr.create_array(
            store=root, name="a", shape=values.shape, chunks=values.shape, dtype=values.dtype, compressors=compressors
        )
        arr[...] = values
    meta = tmp_path / "a" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [5008]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [5008]
    meta.write_text(json.dumps(doc))
    arr = nodes.open_array_meta_readonly(root, "a")
    assert nodes.decodes_directly(root, arr)
    with pytest.raises(StoreError, match="40000 bytes decoded, expected 40064"):
        nodes.read_single_chunk(root, "a", arr)
