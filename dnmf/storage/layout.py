"""The on-disk layout of matrix stores: names, versions, and the root metadata.

A matrix store is a Zarr v3 group whose attributes describe the matrix (see
``docs/storage-format.md``). This module turns those attributes into a
:class:`MatrixInfo` and back, checking every field, and never touches Zarr
itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import StoreError

#: Attribute naming the layout of a dnmf node; present only once a write finished.
FORMAT_KEY = "dnmf_format"
#: Attribute holding the layout's version (an int).
VERSION_KEY = "version"
SPARSE_FORMAT = "sparse-csr-blocks"
DENSE_FORMAT = "dense"
#: The versions of each matrix layout this code reads and writes.
MATRIX_VERSIONS: dict[str, tuple[int, ...]] = {SPARSE_FORMAT: (1,), DENSE_FORMAT: (1,)}
MATRIX_VERSION = 1
#: Name of the dense array inside a dense dnmf store.
DENSE_ARRAY = "X"
#: Group holding the sparse blocks; block (i, j) lives in ``blocks/{i}_{j}``.
BLOCKS_GROUP = "blocks"
#: Group holding the ID maps: ``ids/rows`` and ``ids/cols``.
IDS_GROUP = "ids"
ID_KINDS = ("string", "int64")

_REWRITE = "Rewrite the store with dnmf.write_matrix or dnmf.ingest; dnmf never repairs a store in place."


def block_path(i: int, j: int) -> str:
    """Path of block (i, j)'s group inside a sparse store."""
    return f"{BLOCKS_GROUP}/{i}_{j}"


@dataclass(frozen=True)
class MatrixInfo:
    """What a matrix store holds, read from its metadata alone.

    Attributes
    ----------
    path : str
        Absolute local path or URL of the store.
    kind : {"sparse", "dense"}
        Sparse stores hold CSR blocks; dense ones a 2-D Zarr array.
    shape : tuple of int
        ``(n_rows, n_cols)``.
    dtype : numpy.dtype
        Type of the values.
    row_chunks, col_chunks : tuple of int
        Block sizes along each axis (Dask's ``chunks`` convention).
    nnz_per_block : tuple of tuple of int or None
        Stored entries of each block (sparse stores only).
    array_path : str
        Dense stores: path of the array inside the store ("" when the store
        *is* a bare Zarr array not written by dnmf).
    row_ids, col_ids : {"string", "int64"} or None
        Kind of the stored ID map of each axis; None when there is none.
    write_id : str
        Changes on every write; part of the Dask key names so a rewritten
        store never reuses results computed from its previous content.
    version : int or None
        Layout version; None for a bare Zarr array.
    provenance : dict
        Free-form record of how the store was made (e.g. ingestion counts).
    storage_options : dict or None
        fsspec options for URLs.
    """

    path: str
    kind: Literal["sparse", "dense"]
    shape: tuple[int, int]
    dtype: np.dtype
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]
    nnz_per_block: tuple[tuple[int, ...], ...] | None = None
    array_path: str = ""
    row_ids: str | None = None
    col_ids: str | None = None
    write_id: str = ""
    version: int | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] | None = None

    @property
    def nnz(self) -> int | None:
        """Stored entries (sparse stores), or None for dense stores."""
        if self.nnz_per_block is None:
            return None
        return int(sum(map(sum, self.nnz_per_block)))

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (self.row_chunks, self.col_chunks)

    @property
    def numblocks(self) -> tuple[int, int]:
        return (len(self.row_chunks), len(self.col_chunks))

    def block_bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(row_start, row_stop, col_start, col_stop)`` of block (i, j)."""
        r0 = sum(self.row_chunks[:i])
        c0 = sum(self.col_chunks[:j])
        return r0, r0 + self.row_chunks[i], c0, c0 + self.col_chunks[j]


def chunks_problem(chunks: tuple[tuple[int, ...], tuple[int, ...]], shape: tuple[int, ...]) -> str | None:
    """Why ``chunks`` do not tile ``shape`` with positive blocks, or None if they do."""
    for axis, (sizes, size) in enumerate(zip(chunks, shape, strict=True)):
        if not sizes or any(int(c) <= 0 for c in sizes) or sum(sizes) != size:
            return f"chunks along axis {axis} must be positive block sizes summing to {size}; got {tuple(sizes)}"
    return None


def matrix_attrs(info: MatrixInfo, created_by: str) -> dict[str, Any]:
    """The root attributes of a finished store (the commit record)."""
    attrs: dict[str, Any] = {
        FORMAT_KEY: SPARSE_FORMAT if info.kind == "sparse" else DENSE_FORMAT,
        VERSION_KEY: MATRIX_VERSION,
        "shape": [int(s) for s in info.shape],
        "dtype": np.dtype(info.dtype).name,
        "row_chunks": [int(c) for c in info.row_chunks],
        "col_chunks": [int(c) for c in info.col_chunks],
        "ids": {"rows": info.row_ids, "cols": info.col_ids},
        "write_id": info.write_id,
        "created_by": created_by,
        "provenance": dict(info.provenance),
    }
    if info.kind == "sparse":
        assert info.nnz_per_block is not None
        attrs["nnz_per_block"] = [[int(v) for v in row] for row in info.nnz_per_block]
        attrs["nnz"] = info.nnz
    else:
        attrs["array"] = info.array_path
    return attrs


def parse_matrix_attrs(
    path: str, attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> MatrixInfo:
    """Check a store's root attributes and return its :class:`MatrixInfo`.

    Raises
    ------
    StoreError
        If the attributes are missing (a foreign group, or a write that did
        not finish), name an unknown layout or version, or are inconsistent.
    """
    fmt = attrs.get(FORMAT_KEY)
    if fmt is None:
        raise StoreError(
            path,
            f"the Zarr group has no {FORMAT_KEY!r} attribute, so it was not written by "
            "dnmf or its write did not finish (dnmf writes this attribute last)",
            "Write it with dnmf.write_matrix or dnmf.ingest; to read a plain Zarr "
            "array inside this group, pass the array's own path.",
        )
    if fmt not in MATRIX_VERSIONS:
        raise StoreError(
            path,
            f"{FORMAT_KEY}={fmt!r} is not a matrix layout (expected one of {sorted(MATRIX_VERSIONS)})",
            "Open models with dnmf.storage.read_model and matrices with dnmf.open_matrix.",
        )
    version = attrs.get(VERSION_KEY)
    if version not in MATRIX_VERSIONS[fmt]:
        raise StoreError(
            path,
            f"{fmt!r} layout version {version!r} is not supported (this dnmf reads "
            f"versions {list(MATRIX_VERSIONS[fmt])})",
            "Upgrade dnmf if the store was written by a newer version; otherwise " + _REWRITE,
        )

    def bad(problem: str) -> StoreError:
        return StoreError(path, f"inconsistent metadata: {problem}", _REWRITE)

    try:
        shape = tuple(int(s) for s in attrs["shape"])
        dtype = np.dtype(attrs["dtype"])
        row_chunks = tuple(int(c) for c in attrs["row_chunks"])
        col_chunks = tuple(int(c) for c in attrs["col_chunks"])
        ids = attrs.get("ids") or {}
        row_ids, col_ids = ids.get("rows"), ids.get("cols")
        write_id = str(attrs["write_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"missing or malformed field ({type(exc).__name__}: {exc})") from None
    if len(shape) != 2 or min(shape) < 1:
        raise bad(f"shape {shape} is not a 2-D shape with at least one row and column")
    if dtype.kind not in "biuf":
        raise bad(f"dtype {dtype} is not numeric")
    problem = chunks_problem((row_chunks, col_chunks), shape)
    if problem:
        raise bad(problem)
    for kind in (row_ids, col_ids):
        if kind not in (None, *ID_KINDS):
            raise bad(f"unknown ID map kind {kind!r}")

    nnz_per_block = None
    array_path = ""
    if fmt == SPARSE_FORMAT:
        try:
            nnz_per_block = tuple(tuple(int(v) for v in row) for row in attrs["nnz_per_block"])
            total = int(attrs["nnz"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"missing or malformed nnz fields ({type(exc).__name__}: {exc})") from None
        grid = (len(row_chunks), len(col_chunks))
        if len(nnz_per_block) != grid[0] or any(len(r) != grid[1] for r in nnz_per_block):
            raise bad(f"nnz_per_block is not a {grid[0]}x{grid[1]} grid")
        for i, row in enumerate(nnz_per_block):
            for j, v in enumerate(row):
                if not 0 <= v <= row_chunks[i] * col_chunks[j]:
                    raise bad(f"block ({i}, {j}) claims {v} entries, outside 0..{row_chunks[i] * col_chunks[j]}")
        if sum(map(sum, nnz_per_block)) != total:
            raise bad(f"nnz={total} but the blocks hold {sum(map(sum, nnz_per_block))}")
    else:
        array_path = str(attrs.get("array", DENSE_ARRAY))
    return MatrixInfo(
        path=path,
        kind="sparse" if fmt == SPARSE_FORMAT else "dense",
        shape=shape,
        dtype=dtype,
        row_chunks=row_chunks,
        col_chunks=col_chunks,
        nnz_per_block=nnz_per_block,
        array_path=array_path,
        row_ids=row_ids,
        col_ids=col_ids,
        write_id=write_id,
        version=int(version),
        provenance=dict(attrs.get("provenance") or {}),
        storage_options=storage_options,
    )
