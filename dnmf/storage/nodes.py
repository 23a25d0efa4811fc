"""Opening and creating Zarr nodes, with dnmf's error messages.

Every read goes through :func:`open_readonly` / :func:`open_array_readonly`,
which open stores in Zarr's read-only mode: a reader cannot write to a store
even by mistake.
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from . import buffers, locations
from .codecs import ARRAY_CONFIG, Codec, numeric_compressors, string_compressors
from .errors import StoreError

# Blosc and Zstandard frames describe themselves: one decoder reads any level.
_BLOSC = numcodecs.Blosc()
#: Chunk files up to this size are read into a per-thread buffer kept between reads.
_BUFFER_MAX_BYTES = 64 * 2**20
#: Distinct ``zarr.json`` documents whose parse a process keeps (see ``_parsed_metadata``): a
#: few KB each; three per block of a sparse store.
METADATA_CACHE_SIZE = 8192
_THREAD = threading.local()
_ZSTD = numcodecs.Zstd()
#: Chunk files from this size on are mapped, not copied (see ``_file_bytes``).
_MAP_MIN_BYTES = 2**20
# Linux only: where the mapping cannot be filled at once, the copy is cheaper than a fault per page.
_POPULATE = getattr(mmap, "MAP_POPULATE", None)

_NOT_ZARR_FIX = "Point at a store written by dnmf.write_matrix or dnmf.ingest, or at a 2-D Zarr array."
_CORRUPT_FIX = (
    "The store is damaged; rewrite it with dnmf.write_matrix or dnmf.ingest (dnmf never repairs a store in place)."
)


def zarr_kwargs(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` for Zarr, which accepts them only with URLs."""
    if storage_options and locations.is_url(path):
        return {"storage_options": dict(storage_options)}
    return {}


def open_readonly(path: str, storage_options: Mapping[str, Any] | None = None):
    """The Zarr group or array at ``path``, opened read-only.

    Raises
    ------
    StoreError
        If nothing exists there, it is not a Zarr node, or its metadata is
        unreadable.
    """
    if not locations.exists(path, storage_options):
        raise StoreError(path, "nothing exists at this path", "Check the path. " + _NOT_ZARR_FIX)
    try:
        return zarr.open(store=path, mode="r", **zarr_kwargs(path, storage_options))
    except FileNotFoundError:  # Zarr's NodeNotFoundError is one
        raise StoreError(
            path,
            "no Zarr metadata (zarr.json) found, so this is not a Zarr store",
            _NOT_ZARR_FIX,
        ) from None
    except Exception as exc:
        raise StoreError(
            path, f"its Zarr metadata cannot be read ({type(exc).__name__}: {exc})", _CORRUPT_FIX
        ) from None


def open_array_readonly(root: str, subpath: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Array:
    """The Zarr v3 array ``subpath`` inside the store ``root``, read-only."""
    where = locations.join(root, subpath)
    try:
        return zarr.open_array(store=root, path=subpath, mode="r", zarr_format=3, **zarr_kwargs(root, storage_options))
    except Exception as exc:
        problem = (
            "the array is missing"
            if isinstance(exc, FileNotFoundError)
            else f"the array's metadata cannot be read ({type(exc).__name__}: {exc})"
        )
        raise StoreError(where, problem, _CORRUPT_FIX) from None


@functools.lru_cache(maxsize=METADATA_CACHE_SIZE)
def _parsed_metadata(doc: bytes) -> Any:
    """The parsed metadata of a local array's ``zarr.json`` bytes, parsed once per distinct document.

    A pass over a store opens three arrays per block, every iteration;
    parsing their JSON into Zarr's metadata objects was 18% of reading a
    3 MB block in a worker. Keyed by the document itself, so a rewritten
    file can never be answered from an older parse. The objects are
    immutable (frozen dataclasses), so threads may share them.
    """
    parsed = json.loads(doc)
    if not isinstance(parsed, dict) or parsed.get("node_type") != "array" or parsed.get("zarr_format") != 3:
        raise ValueError("not a Zarr v3 array")
    return parse_array_metadata(parsed)


class LocalArray:
    """A 1-D array of a local store, known by its parsed metadata only (no Zarr array object).

    Opening a Zarr array runs a round trip through Zarr's event-loop thread;
    a sparse block has three arrays, so in a busy worker process those hops
    cost as much as a quarter of a block's read. ``shape``, ``chunks``,
    ``dtype``, ``ndim`` and ``metadata`` mirror :class:`zarr.Array`'s.
    """

    def __init__(self, root: str, path: str, metadata: Any) -> None:
        self.root, self.path, self.metadata = root, path, metadata
        self.shape: tuple[int, ...] = tuple(metadata.shape)
        self.chunks: tuple[int, ...] = tuple(metadata.chunks)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(metadata.dtype.to_native_dtype())

    def open(self) -> zarr.Array:
        """The same array through Zarr."""
        return open_array_readonly(self.root, self.path)


def parse_array_metadata(doc: dict[str, Any]) -> Any:
    """Zarr's own parse of an array's ``zarr.json`` document: what ``zarr.Array.metadata`` holds.

    The one use of a private Zarr module in dnmf. Zarr (3.1) exports no
    public way to parse array metadata without opening the array, and
    opening one costs the event-loop round trips :class:`LocalArray` avoids;
    a parse of dnmf's own, on the other hand, would drift from what Zarr
    accepts. ``tests/storage/test_read_path.py`` checks that this returns
    the object Zarr's ``open_array`` holds, so a Zarr release that moves or
    changes it fails there rather than in a fit.

    Parameters
    ----------
    doc : dict
        The parsed JSON of a Zarr v3 array's ``zarr.json``.

    Returns
    -------
    zarr.core.metadata.v3.ArrayV3Metadata

    Raises
    ------
    ImportError
        If this Zarr has no such module (callers then open the array through Zarr).
    """
    from zarr.core.metadata.v3 import ArrayV3Metadata

    return ArrayV3Metadata.from_dict(doc)


def open_array_meta_readonly(
    root: str, subpath: str, storage_options: Mapping[str, Any] | None = None
) -> zarr.Array | LocalArray:
    """The array ``subpath`` of ``root``: a :class:`LocalArray` for a local store, else a Zarr array.

    Raises
    ------
    StoreError
        As :func:`open_array_readonly` does: the array is missing or its metadata unreadable.
    """
    if locations.is_url(root):
        return open_array_readonly(root, subpath, storage_options)
    where = locations.join(root, subpath)
    try:
        with open(os.path.join(root, subpath, "zarr.json"), "rb") as fh:
            return LocalArray(root, subpath, _parsed_metadata(fh.read()))
    except ImportError:
        # A Zarr without the private metadata module: slower, through Zarr, but the same array.
        return open_array_readonly(root, subpath, storage_options)
    except FileNotFoundError:
        raise StoreError(where, "the array is missing", _CORRUPT_FIX) from None
    except Exception as exc:
        raise StoreError(
            where, f"the array's metadata cannot be read ({type(exc).__name__}: {exc})", _CORRUPT_FIX
        ) from None


def chunk_exists(
    root: str, array_path: str, coords: tuple[int, ...], storage_options: Mapping[str, Any] | None
) -> bool:
    """Whether chunk ``coords`` of an array dnmf wrote is present.

    Zarr reads a missing chunk as the fill value, which would turn a deleted
    file into silent zeros; dnmf writes every chunk (``write_empty_chunks``)
    so absence always means damage. Assumes Zarr's default ``c/i/j`` keys,
    which dnmf always uses.
    """
    key = "/".join(["c", *map(str, coords)])
    return locations.exists(locations.join(root, array_path, key), storage_options)


def _undecodable(where: str, exc: Exception) -> StoreError:
    """The error for a chunk of the array at ``where`` that failed to decode with ``exc``."""
    return StoreError(
        where, f"a chunk cannot be decoded (truncated or corrupted: {type(exc).__name__}: {exc})", _CORRUPT_FIX
    )


def read_whole(array: zarr.Array, where: str) -> np.ndarray:
    """All of ``array``, turning decode failures into :class:`StoreError`."""
    try:
        return np.asarray(array[...])
    except Exception as exc:
        raise _undecodable(where, exc) from None


def read_single_chunk(root: str, array_path: str, array: zarr.Array | LocalArray) -> np.ndarray:
    """All of a 1-D, one-chunk ``array`` of a store, decoded in the calling thread.

    dnmf's sparse blocks are three such arrays. For a local store whose
    codecs dnmf writes (bytes, then Blosc or Zstandard, then CRC32C) the
    chunk file is read and decoded here, straight into the returned array:
    Zarr's own path hands each chunk to its event-loop thread and a thread
    pool and copies it on the way, which costs most in Dask worker
    processes (see the out-of-core benchmark). Anything else (URLs, other
    codecs, several chunks) goes through Zarr.

    Raises
    ------
    StoreError
        If the chunk is truncated, corrupted or its checksum does not match.
    """
    where = locations.join(root, array_path)
    plan = _direct_plan(root, array)
    if plan is None:
        return read_whole(array.open() if isinstance(array, LocalArray) else array, where)
    dtype, compressor, checked = plan
    n = array.shape[0]
    if n == 0:
        return np.empty(n, dtype=dtype)
    # Reused memory (see dnmf.storage.buffers): a worker otherwise faults in fresh pages for every block.
    out = buffers.empty(n, dtype)
    try:
        with _file_bytes(os.path.join(root, array_path, "c", "0")) as payload:
            _decode_into(out, payload, compressor, checked)
    except Exception as exc:
        raise _undecodable(where, exc) from None
    return out


def _decode_into(out: np.ndarray, payload: np.ndarray, compressor: Any, checked: bool) -> None:
    """Check ``payload``'s CRC32C (if ``checked``) and decode it into ``out``, which it must fill exactly."""
    if checked:
        if payload.size < 4 or np.uint32(google_crc32c.value(payload[:-4])).tobytes() != payload[-4:].tobytes():
            raise ValueError("the CRC32C checksum does not match")
        payload = payload[:-4]
    if compressor is None:
        if len(payload) != out.nbytes:
            raise ValueError(f"{len(payload)} bytes, expected {out.nbytes}")
        out.view(np.uint8)[:] = payload
    else:
        # The decoders accept a larger ``out`` and leave its tail as it was: in reused memory, another block's.
        size = _decoded_size(payload, compressor)
        if size is not None and size != out.nbytes:
            raise ValueError(f"{size} bytes decoded, expected {out.nbytes}")
        compressor.decode(payload, out=out)


def _decoded_size(payload: np.ndarray, compressor: Any) -> int | None:
    """The decoded size a Blosc or Zstandard frame declares in its header (None if it declares none)."""
    head = payload[:18].tobytes()
    if compressor is _BLOSC:
        # Blosc 1 header: version, versionlz, flags, typesize, then nbytes (uint32 little-endian).
        return int.from_bytes(head[4:8], "little") if len(head) >= 16 else None
    # Zstandard frame header (RFC 8878): magic, descriptor, [window], [dictionary ID], [content size].
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = head[4]
    fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    fcs_len = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
    if fcs_len == 0:
        return None
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    field = head[start : start + fcs_len]
    if len(field) != fcs_len:
        return None
    return int.from_bytes(field, "little") + (256 if fcs_len == 2 else 0)


@contextlib.contextmanager
def _file_bytes(path: str) -> Iterator[np.ndarray]:
    """The bytes of the file at ``path``, valid inside the ``with`` block.

    A chunk file of a megabyte or more is mapped with ``MAP_POPULATE`` (one
    call fills the mapping from the page cache) and decoded from there: a
    read would first copy it, which cost a quarter of a block's read and
    decode (12 MB blocks, files in the page cache). The mapping is safe
    because dnmf never rewrites a store's files in place: a new write is
    renamed over the old one, whose mapped pages stay readable until unmapped.
    (Another program truncating a chunk file in place while it is mapped
    would end the process with SIGBUS, where a read would raise.) Smaller
    files, and systems without ``MAP_POPULATE``, go through :func:`_read_file`.
    """
    if _POPULATE is None or os.stat(path).st_size < _MAP_MIN_BYTES:
        yield _read_file(path)
        return
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    view = np.frombuffer(mapped, dtype=np.uint8)
    try:
        yield view
    finally:
        del view
        # A view that outlived the block (in an exception's traceback) keeps the mapping until it goes.
        with contextlib.suppress(BufferError):
            mapped.close()


def _read_file(path: str) -> np.ndarray:
    """The bytes of the file at ``path``, in this thread's reusable buffer (valid until its next call).

    Reusing the buffer matters in Dask workers: distributed sets
    ``MALLOC_TRIM_THRESHOLD_``, which pins glibc's mmap threshold, so every
    fresh multi-megabyte buffer is new memory from the kernel, page-faulted
    in and zeroed on each block.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > _BUFFER_MAX_BYTES:
            return np.frombuffer(fh.read(), dtype=np.uint8)
        buf = getattr(_THREAD, "buffer", None)
        if buf is None or buf.size < size:
            buf = _THREAD.buffer = np.empty(max(size, 1 << 20), dtype=np.uint8)
        n = fh.readinto(buf[:size].data)
    return buf[:n]


def decodes_directly(root: str, array: zarr.Array | LocalArray) -> bool:
    """Whether :func:`read_single_chunk` decodes ``array`` itself (else Zarr does)."""
    return _direct_plan(root, array) is not None


def _direct_plan(root: str, array: zarr.Array | LocalArray):
    """``(dtype, numcodecs compressor or None, checksummed)`` if dnmf can decode ``array`` itself, else None."""
    if locations.is_url(root) or array.ndim != 1 or array.chunks != array.shape:
        return None
    codecs = list(array.metadata.codecs)  # type: ignore[union-attr]
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "iuf" or (
        dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != "little")
    ):
        return None
    dtype = dtype.newbyteorder("<")
    checked = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    middle = codecs[1 : len(codecs) - checked]
    compressor: Any = None
    if len(middle) > 1:
        return None
    if middle:
        if isinstance(middle[0], BloscCodec):
            compressor = _BLOSC
        elif isinstance(middle[0], ZstdCodec):
            compressor = _ZSTD
        else:
            return None
    return dtype, compressor, checked


def read_region(array: zarr.Array, region: tuple[slice, ...], where: str) -> np.ndarray:
    """``array[region]``, turning decode failures into :class:`StoreError`."""
    try:
        return np.asarray(array[region])
    except Exception as exc:
        raise _undecodable(where, exc) from None


def write_1d(
    root: str,
    name: str,
    values: np.ndarray,
    storage_options: Mapping[str, Any] | None,
    chunk: int | None = None,
    codec: str | Codec | None = None,
) -> None:
    """Create (or replace) the 1-D array ``name`` in ``root`` holding ``values``.

    One chunk by default: a block's arrays are read whole, and a single
    compressed chunk wastes no space whatever its length. ``codec``: see
    :func:`~dnmf.storage.codecs.parse_codec` (numeric arrays only).
    """
    n = len(values)
    chunk = max(1, n if chunk is None else min(chunk, n))
    if values.dtype.kind in "OUT":
        dtype: Any = str
        compressors = string_compressors()
    else:
        dtype = values.dtype
        compressors = numeric_compressors(values.dtype, chunk, codec)
    arr = zarr.create_array(
        store=root,
        name=name,
        shape=(n,),
        chunks=(chunk,),
        dtype=dtype,
        compressors=compressors,
        fill_value="" if dtype is str else 0,
        config=ARRAY_CONFIG,
        overwrite=True,
        **zarr_kwargs(root, storage_options),
    )
    if n:
        arr[...] = values


def open_for_writing(root: str, subpath: str = "", storage_options: Mapping[str, Any] | None = None) -> zarr.Array:
    """An existing array opened to write blocks into, writing every chunk.

    ``write_empty_chunks`` is runtime configuration, not stored metadata,
    so it must be set again on every opening.
    """
    arr = zarr.open_array(store=root, path=subpath, mode="r+", zarr_format=3, **zarr_kwargs(root, storage_options))
    return arr.with_config(ARRAY_CONFIG)


def create_root(path: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """A fresh, empty group at ``path`` (whatever was there is removed)."""
    return zarr.open_group(store=path, mode="w", zarr_format=3, **zarr_kwargs(path, storage_options))


def set_root_attrs(path: str, attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None) -> None:
    """Replace the root group's attributes: the commit of a store."""
    group = zarr.open_group(store=path, mode="r+", zarr_format=3, **zarr_kwargs(path, storage_options))
    group.attrs.put(dict(attrs))
