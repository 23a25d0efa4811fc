"""Matrix stores as a whole: inspecting, starting and committing them.

Writing a store is three steps, so that a half-written store is never
taken for a valid one:

1. :func:`begin_matrix_store` makes an empty root group (no dnmf metadata);
2. blocks are written independently (:func:`~dnmf.storage.sparse.write_sparse_block`,
   :func:`~dnmf.storage.dense.write_dense_block`), typically by Dask tasks;
3. :func:`commit_matrix_store` writes the root attributes, which readers
   require, last.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import zarr

from .._version import __version__
from . import dense, locations, nodes, sparse
from .chunking import regular
from .errors import StoreError
from .layout import (
    BLOCKS_GROUP,
    DENSE_ARRAY,
    MatrixInfo,
    matrix_attrs,
    parse_matrix_attrs,
)

_WRITE_FIX = "Pass overwrite=True to replace it, or choose another path."


class OutputExistsError(FileExistsError):
    """Something exists at an output path and overwriting was not asked for.

    ``path`` names it; the message gives the Python fix (``overwrite=True``),
    the command line says ``--overwrite`` instead.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"Cannot write to {path!r}: it already exists. {_WRITE_FIX}")

    def __reduce__(self):
        return (type(self), (self.path,))


def new_write_id() -> str:
    """A fresh identifier for one write of a store."""
    return uuid.uuid4().hex


def read_matrix_info(path: str, storage_options: Mapping[str, Any] | None = None, *, warn: bool = True) -> MatrixInfo:
    """Describe the matrix store (or bare 2-D Zarr array) at ``path``.

    Reads only metadata. Blocks are checked when read.

    Parameters
    ----------
    path : str
        Absolute local path or fsspec URL.
    storage_options : dict, optional
        fsspec options for URLs.
    warn : bool
        Warn (UserWarning) when a dense array's chunks are a poor fit.

    Raises
    ------
    StoreError
        If the path holds no store, a foreign or unfinished one, an unknown
        layout version, or inconsistent metadata.
    """
    node = nodes.open_readonly(path, storage_options)
    if isinstance(node, zarr.Array):
        info = _bare_array_info(path, node, storage_options)
    else:
        info = parse_matrix_attrs(path, node.attrs.asdict(), storage_options)
        if info.kind == "dense":
            _check_dense_array(info, storage_options)
        elif BLOCKS_GROUP not in node:
            raise StoreError(
                path,
                f"the {BLOCKS_GROUP!r} group is missing",
                "The store is damaged; rewrite it with dnmf.write_matrix or dnmf.ingest.",
            )
    if warn and info.kind == "dense":
        dense.warn_chunk_fit(path, info.shape, (info.row_chunks[0], info.col_chunks[0]), info.dtype)
    return info


def _bare_array_info(path: str, arr: zarr.Array, storage_options) -> MatrixInfo:
    if arr.ndim != 2 or np.dtype(arr.dtype).kind not in "biuf" or min(arr.shape) < 1:
        raise StoreError(
            path,
            f"the Zarr array has shape {arr.shape} and dtype {arr.dtype}; dnmf needs a non-empty 2-D numeric array",
            "Point at a 2-D numeric array, or reshape/convert it and write it with dnmf.write_matrix.",
        )
    # A shard is one object in the store: reading whole shards avoids
    # re-reading the shard index for every inner chunk.
    block = arr.shards or arr.chunks
    m, n = arr.shape
    return MatrixInfo(
        path=path,
        kind="dense",
        shape=(m, n),
        dtype=np.dtype(arr.dtype),
        row_chunks=regular(m, block[0]),
        col_chunks=regular(n, block[1]),
        array_path="",
        storage_options=storage_options,
    )


def _check_dense_array(info: MatrixInfo, storage_options) -> None:
    arr = nodes.open_array_readonly(info.path, info.array_path, storage_options)
    chunk = (info.row_chunks[0], info.col_chunks[0])
    if arr.shape != info.shape or np.dtype(arr.dtype) != info.dtype or tuple(arr.chunks) != chunk:
        raise StoreError(
            locations.join(info.path, info.array_path),
            f"the array has shape {arr.shape}, dtype {arr.dtype} and chunks {arr.chunks}, but "
            f"the metadata says {info.shape}, {info.dtype} and {chunk}",
            "The store was modified by another program; rewrite it with dnmf.write_matrix.",
        )


def begin_matrix_store(
    info: MatrixInfo,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
) -> None:
    """Create the empty skeleton of a store described by ``info`` (not yet valid).

    ``codec`` compresses a dense store's array (:func:`~dnmf.storage.codecs.parse_codec`;
    sparse blocks are compressed as each is written).

    Raises
    ------
    FileExistsError
        If something exists at ``info.path`` and ``overwrite`` is False.
    ValueError
        If ``overwrite`` is True but the path holds something other than a
        Zarr store or an empty directory (dnmf never deletes foreign data).
    """
    prepare_output(info.path, overwrite=overwrite, storage_options=storage_options)
    nodes.create_root(info.path, storage_options)
    if info.kind == "sparse":
        zarr.open_group(
            store=info.path,
            path=BLOCKS_GROUP,
            mode="w",
            zarr_format=3,
            **nodes.zarr_kwargs(info.path, storage_options),
        )
    else:
        dense.create_dense_array(
            info.path,
            DENSE_ARRAY,
            info.shape,
            info.dtype,
            (info.row_chunks[0], info.col_chunks[0]),
            storage_options,
            codec=codec,
        )


@contextmanager
def writing_store(
    info: MatrixInfo,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
) -> Iterator[MatrixInfo]:
    """Begin the store of ``info`` (``codec``: see :func:`begin_matrix_store`); if the body fails, remove what was written.

    Yields the :class:`MatrixInfo` to write with: ``info`` itself for a new
    store, or, when a local store is overwritten, the same with the path of a
    fresh hidden sibling. The body writes there and ends with
    :func:`commit_matrix_store`; the sibling then replaces the old store in
    one rename, so a failed or interrupted overwrite leaves the old store
    intact (on object stores, which have no rename, the old store is removed
    first). The store was created from nothing and never committed, so
    removing it on failure loses nothing.
    """
    final = info.path
    target = info
    replacing = False
    if locations.exists(final, storage_options):
        check_replaceable(final, overwrite=overwrite, storage_options=storage_options)
        if locations.is_url(final):
            locations.remove(final, storage_options)
        else:
            replacing = True
            target = replace(info, path=locations.sibling(final, "dnmf-new"))
    begin_matrix_store(target, overwrite=False, storage_options=storage_options, codec=codec)
    try:
        yield target
        if replacing:
            locations.swap_in(target.path, final)
    except BaseException:
        locations.remove(target.path, storage_options)
        raise


def check_replaceable(path: str, *, overwrite: bool, storage_options: Mapping[str, Any] | None = None) -> None:
    """Check that an existing ``path`` may be replaced by a new store (nothing is removed).

    Raises
    ------
    OutputExistsError
        ``overwrite`` is False.
    ValueError
        The path holds a file or a non-empty directory that is not a Zarr store.
    """
    if not overwrite:
        raise OutputExistsError(path)
    if locations.is_file(path, storage_options):
        raise ValueError(
            f"Cannot overwrite {path!r}: it is a file, not a Zarr store. Remove it yourself or choose another path."
        )
    names = locations.list_names(path, storage_options)
    if names and "zarr.json" not in names and ".zgroup" not in names and ".zarray" not in names:
        raise ValueError(
            f"Cannot overwrite {path!r}: it is a non-empty directory that is not a Zarr "
            f"store (it holds {names[:3]}...), and dnmf never deletes foreign data. "
            "Remove it yourself or choose another path."
        )


def check_output(path: str, *, overwrite: bool, storage_options: Mapping[str, Any] | None = None) -> None:
    """Validate a store output before any work: replaceable if it exists, its directory writable."""
    if locations.exists(path, storage_options):
        check_replaceable(path, overwrite=overwrite, storage_options=storage_options)
    if not locations.is_url(path):
        locations.check_writable_parent(path)


def prepare_output(path: str, *, overwrite: bool, storage_options: Mapping[str, Any] | None = None) -> None:
    """Check that ``path`` may be written, removing an old store if allowed."""
    if not locations.exists(path, storage_options):
        return
    check_replaceable(path, overwrite=overwrite, storage_options=storage_options)
    locations.remove(path, storage_options)


def commit_matrix_store(info: MatrixInfo, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write the root metadata that makes the store at ``info.path`` valid."""
    nodes.set_root_attrs(info.path, matrix_attrs(info, f"dnmf {__version__}"), storage_options)


def read_block(info: MatrixInfo, i: int, j: int):
    """Block (i, j) of a store: CSR for sparse stores, ndarray for dense ones."""
    r0, r1, c0, c1 = info.block_bounds(i, j)
    if info.kind == "sparse":
        assert info.nnz_per_block is not None
        return sparse.read_sparse_block(
            info.path,
            i,
            j,
            shape=(r1 - r0, c1 - c0),
            dtype=info.dtype,
            nnz=info.nnz_per_block[i][j],
            storage_options=info.storage_options,
        )
    return dense.read_dense_block(
        info.path,
        info.array_path,
        (r0, r1, c0, c1),
        chunk=(i, j) if info.array_path else None,
        storage_options=info.storage_options,
    )


def verify_matrix(path: str, storage_options: Mapping[str, Any] | None = None) -> MatrixInfo:
    """Read every block of a store once, raising :class:`StoreError` on any damage.

    Holds one block in memory at a time.
    """
    info = read_matrix_info(path, storage_options, warn=False)
    for i in range(len(info.row_chunks)):
        for j in range(len(info.col_chunks)):
            read_block(info, i, j)
    from .ids import read_ids  # pandas: only when ID maps are checked

    if info.row_ids:
        read_ids(path, "rows", info.shape[0], storage_options)
    if info.col_ids:
        read_ids(path, "cols", info.shape[1], storage_options)
    return info


def fspath(path: str | os.PathLike[str]) -> str:
    """Normalize a user's path or URL (absolute for local paths)."""
    return locations.normalize(path)
