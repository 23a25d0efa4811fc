"""Reading and writing matrices and factors as Dask arrays.

The public face of :mod:`dnmf.storage`: this module turns the storage
layer's per-block functions into Dask graphs, one task per block, so that
workers read and write blocks themselves and the client never holds the
data.

- :func:`open_matrix` opens a store lazily: ``X, ids = open_matrix(path)``.
- :func:`write_matrix` writes NumPy, SciPy, pydata-sparse or Dask matrices.
- :func:`ingest` turns ratings tables and matrix files into stores, out of core.
- :func:`save_factors` / :func:`load_factors` save and load models whose
  arrays (e.g. a row-chunked W) are written block by block on the workers.

Every store read or written here is laid out as ``docs/storage-format.md``
describes.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from . import chunking, locations
from . import ids as _ids
from . import tasks as _tasks
from .codecs import check_index_dtype, parse_codec
from .dense import warn_chunk_fit
from .errors import StoreError
from .ingestion import ingest as _ingest_impl
from .layout import DENSE_ARRAY, MatrixInfo
from .matrix import (
    check_output,
    commit_matrix_store,
    new_write_id,
    read_matrix_info,
    verify_matrix,
    writing_store,
)
from .models import (
    DeferredArray,
    ModelInfo,
    read_model_block,
    read_model_info,
    write_model,
    write_model_block,
)
from .placement import scatter_rows

__all__ = [
    "IdMaps",
    "MatrixStore",
    "StoreError",
    "ingest",
    "load_factors",
    "open_matrix",
    "save_factors",
    "write_matrix",
]

#: Prefix of the Dask key names of arrays read from stores. Graphs built on
#: such arrays can recompute a block from disk instead of persisting it.
STORE_KEY_PREFIX = "dnmf-store"


class IdMaps(NamedTuple):
    """Row and column IDs of a matrix: ``rows[p]`` is the ID of row ``p``.

    Both are :class:`pandas.Index` es, so ``ids.rows.get_indexer(user_ids)``
    maps IDs to positions. Stores without ID maps give ``RangeIndex`` es
    (the ID of a position is the position).
    """

    rows: pd.Index
    cols: pd.Index


class MatrixStore:
    """A matrix store opened lazily: a Dask array plus its IDs and metadata.

    Unpacks as ``(data, ids)``::

        X, ids = dnmf.open_matrix("ratings.zarr")
        m = dnmf.open_matrix("ratings.zarr"); m.data, m.row_ids, m.col_ids

    Attributes
    ----------
    data : dask.array.Array
        One task per block, each reading only its block: chunks are
        ``scipy.sparse.csr_matrix`` (sparse stores) or ``numpy.ndarray``
        (dense). Key names are deterministic for a given store content.
    info : dnmf.storage.MatrixInfo
        Metadata read from the store.
    """

    def __init__(self, data: da.Array, info: MatrixInfo) -> None:
        self.data = data
        self.info = info

    def __iter__(self):
        return iter((self.data, self.ids))

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        nnz = "" if self.nnz is None else f", nnz={self.nnz}"
        return (
            f"MatrixStore({self.path!r}, format={self.format!r}, shape={self.shape}, "
            f"dtype={self.dtype}{nnz}, blocks={self.info.numblocks})"
        )

    @cached_property
    def ids(self) -> IdMaps:
        """Row and column ID maps (read from the store on first access)."""
        info = self.info
        so = info.storage_options
        rows = (
            _ids.read_ids(info.path, "rows", info.shape[0], so)
            if info.row_ids
            else pd.RangeIndex(info.shape[0], name="row_id")
        )
        cols = (
            _ids.read_ids(info.path, "cols", info.shape[1], so)
            if info.col_ids
            else pd.RangeIndex(info.shape[1], name="col_id")
        )
        return IdMaps(rows, cols)

    @property
    def row_ids(self) -> pd.Index:
        """Row (user) IDs: a pandas Index, or a RangeIndex of positions when the store has none."""
        return self.ids.rows

    @property
    def col_ids(self) -> pd.Index:
        """Column (item) IDs: a pandas Index, or a RangeIndex of positions when the store has none."""
        return self.ids.cols

    @property
    def path(self) -> str:
        """The store's location (absolute local path or URL)."""
        return self.info.path

    @property
    def format(self) -> str:
        """``"sparse"`` or ``"dense"``."""
        return self.info.kind

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the matrix."""
        return self.info.shape

    @property
    def dtype(self) -> np.dtype:
        """The value type of the stored matrix."""
        return self.info.dtype

    @property
    def nnz(self) -> int | None:
        """Stored entries of a sparse store; None for dense stores."""
        return self.info.nnz

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The blocking: (row block sizes, column block sizes)."""
        return self.info.chunks


# --------------------------------------------------------------------------- tasks
# Module-level functions with positional arguments: what Dask tasks call.


def _collect(*values):
    return list(values)


def _block_nnz(block) -> int:
    return int(block.nnz) if hasattr(block, "nnz") else int(np.count_nonzero(block))


# --------------------------------------------------------------------------- reading


def open_matrix(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    verify: bool = False,
) -> MatrixStore:
    """Open a matrix store (or a bare 2-D Zarr array) lazily.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL of a store written by :func:`write_matrix`
        or :func:`ingest`, or of any 2-D Zarr array.
    storage_options : dict, optional
        fsspec options for URLs (credentials, endpoints...).
    verify : bool, default False
        Read every block once now (one at a time) to detect damage early;
        otherwise each block is checked when a task reads it.

    Returns
    -------
    MatrixStore
        Unpacks as ``(data, ids)``; see :class:`MatrixStore`.

    Raises
    ------
    StoreError
        If the path holds no store, a foreign or unfinished one, an unknown
        layout version, or inconsistent metadata (and, with ``verify``, any
        damaged block). Nothing is ever written to the store.

    Warns
    -----
    UserWarning
        When a dense array's chunks are under 1 MiB or over 512 MiB.
    """
    return _open(locations.normalize(path), storage_options, verify=verify, warn=True)


def _open(path: str, storage_options, *, verify: bool, warn: bool) -> MatrixStore:
    info = read_matrix_info(path, storage_options, warn=warn)
    if verify:
        verify_matrix(path, storage_options)
    so = dict(storage_options) if storage_options else None
    token = tokenize(
        path,
        info.kind,
        info.write_id,
        info.shape,
        info.dtype.str,
        info.chunks,
        info.nnz_per_block,
        info.array_path,
    )
    name = f"{STORE_KEY_PREFIX}-{token}"
    dsk: dict = {}
    row_starts = np.cumsum((0,) + info.row_chunks)
    col_starts = np.cumsum((0,) + info.col_chunks)
    for i, h in enumerate(info.row_chunks):
        for j, w in enumerate(info.col_chunks):
            if info.kind == "sparse":
                assert info.nnz_per_block is not None
                task: tuple[Any, ...] = (
                    _tasks.read_sparse_task,
                    path,
                    i,
                    j,
                    (h, w),
                    info.dtype.str,
                    info.nnz_per_block[i][j],
                    so,
                )
            else:
                bounds = (
                    int(row_starts[i]),
                    int(row_starts[i + 1]),
                    int(col_starts[j]),
                    int(col_starts[j + 1]),
                )
                chunk = (i, j) if info.array_path else None
                task = (_tasks.read_dense_task, path, info.array_path, bounds, chunk, so)
            dsk[(name, i, j)] = task
    meta = sp.csr_matrix((0, 0), dtype=info.dtype) if info.kind == "sparse" else np.empty((0, 0), dtype=info.dtype)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    data = da.Array(graph, name, info.chunks, meta=meta)
    return MatrixStore(data, info)


# --------------------------------------------------------------------------- writing


def _is_pydata_sparse(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "sparse" and hasattr(x, "nnz")


def _is_sparse(x: Any) -> bool:
    return sp.issparse(x) or _is_pydata_sparse(x)


def _default_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _run(delayed: Delayed, client, scheduler):
    """Compute ``delayed`` on ``client``, ``scheduler`` or Dask's default."""
    if client is not None:
        return client.compute(delayed, sync=True)
    return delayed.compute(scheduler=scheduler)


def blocks_array(
    blocks: Mapping[tuple, Any], chunks: tuple, meta: Any, client=None, *, prefix: str, token=None
) -> da.Array:
    """A Dask array over in-memory blocks (``{block index: block}``).

    With a distributed client the blocks are scattered first (each worker
    receiving a contiguous range of row blocks, see
    :mod:`dnmf.storage.placement`): embedding them in the graph would ship the
    whole matrix inside it. Scattered keys get a
    fresh name, so that they never collide with the released keys of an
    earlier scatter; without a client the name is ``prefix`` plus ``token``
    (deterministic) when one is given.
    """
    if client is not None:
        name = f"{prefix}-{uuid.uuid4().hex}"
        graph = scatter_rows(client, {(name, *k): b for k, b in blocks.items()})
    else:
        name = f"{prefix}-{token if token is not None else uuid.uuid4().hex}"
        graph = {(name, *k): b for k, b in blocks.items()}
    return da.Array(graph, name, chunks=chunks, meta=meta)


def _in_memory_blocks(X, chunks, client) -> da.Array:
    """A Dask array over the blocks of an in-memory matrix (see :func:`blocks_array`)."""
    row_starts = np.cumsum((0,) + chunks[0])
    col_starts = np.cumsum((0,) + chunks[1])
    sparse_in = _is_sparse(X)
    if _is_pydata_sparse(X):
        X = X.to_scipy_sparse()
    if sparse_in:
        X = sp.csr_matrix(X)
    blocks = {}
    for i in range(len(chunks[0])):
        band = X[row_starts[i] : row_starts[i + 1]]
        for j in range(len(chunks[1])):
            blocks[(i, j)] = band[:, col_starts[j] : col_starts[j + 1]]
    meta = sp.csr_matrix((0, 0), dtype=X.dtype) if sparse_in else np.empty((0, 0), dtype=X.dtype)
    return blocks_array(blocks, chunks, meta, client, prefix="dnmf-input")


def write_matrix(
    X: Any,
    path: str | os.PathLike[str],
    *,
    chunks: chunking.ChunksLike = None,
    format: Literal["auto", "dense", "sparse"] = "auto",
    row_ids: Any = None,
    col_ids: Any = None,
    overwrite: bool = False,
    client: Any = None,
    scheduler: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
    index_dtype: str = "auto",
) -> MatrixStore:
    """Write a matrix to a store, one task per block, metadata last.

    Parameters
    ----------
    X : array-like, SciPy sparse, pydata sparse or dask.array.Array
        A 2-D numeric matrix. Dask arrays may have NumPy, SciPy-sparse or
        pydata-sparse chunks.
    path : str or path-like
        Local path or fsspec URL of the store to create.
    chunks : None, "auto", int, (int, int) or (tuple, tuple)
        Blocks of the store. None keeps a Dask array's chunks (dense stores
        need regular chunks: all equal but the last, rechunked if not) and
        means "auto" for in-memory inputs: blocks of about 64 MiB. An int
        gives rows per block with all columns in one block.
    format : {"auto", "dense", "sparse"}
        Layout. "auto": sparse for sparse inputs (SciPy, pydata, or Dask
        arrays with such chunks), dense otherwise.
    row_ids, col_ids : array-like of int or str, optional
        IDs of the rows/columns, stored as the store's ID maps.
    overwrite : bool, default False
        Replace an existing store (only a Zarr store or an empty directory;
        dnmf never deletes other data). Atomic for local paths: the new store
        is written beside the old one and renamed over it, so a failed write
        leaves the old store intact. ``path`` may not be (or lie inside, or
        contain) a store that X is read from.
    client : distributed.Client, optional
        Cluster that writes the blocks. Default: for Dask inputs, Dask's
        default scheduler; for in-memory inputs, the default distributed
        client if there is one (blocks are scattered to it), else threads
        in this process. Workers must see ``path`` (shared filesystem or URL).
    scheduler : str, optional
        Dask scheduler name ("threads", "processes", "synchronous") when no
        client is used.
    storage_options : dict, optional
        fsspec options for URLs.
    codec : str, optional
        Compression: ``"lz4[:LEVEL]"`` (default ``"lz4:5"``), ``"zstd[:LEVEL]"`` or
        ``"none"``, as ``dnmf ingest --codec`` (the README's "Storage choices"
        compares them). Readers need not know it.
    index_dtype : {"auto", "int32", "int64"}
        Width of a sparse store's ``indptr`` and ``indices``: "auto" is 32-bit
        unless a block has 2**31 or more columns or entries.

    Returns
    -------
    MatrixStore
        The new store, opened.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        For a non-2-D, empty or non-numeric X, bad chunks, or IDs of the
        wrong length or with duplicates.
    """
    _check_format(format)
    codec = str(parse_codec(codec))
    check_index_dtype(index_dtype)
    path = locations.normalize(path)
    is_dask = isinstance(X, da.Array)
    if not is_dask and not _is_sparse(X):
        X = np.asarray(X)
    sparse_in = _is_sparse(X._meta if is_dask else X)
    sparse_out = sparse_in if format == "auto" else format == "sparse"
    if not sparse_out and index_dtype != "auto":
        raise ValueError(
            f"index_dtype={index_dtype!r} applies to sparse stores; this store is dense. "
            "Leave index_dtype='auto', or pass format='sparse'."
        )
    shape = tuple(int(s) for s in X.shape)
    dtype = np.dtype(X.dtype)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(
            f"X must be a 2-D matrix with at least one row and one column; got shape "
            f"{shape}. Reshape it, e.g. X.reshape(-1, 1)."
        )
    if dtype.kind not in "biuf":
        raise ValueError(f"X must hold numbers; got dtype {dtype}. Convert it with X.astype(float).")
    if row_ids is not None:
        _ids.check_ids(row_ids, shape[0], "rows")
    if col_ids is not None:
        _ids.check_ids(col_ids, shape[1], "cols")
    if is_dask:
        locations.check_disjoint([("path", path)], [("the store X reads", p) for p in _source_stores(X)])
    check_output(path, overwrite=overwrite, storage_options=storage_options)

    target: tuple[tuple[int, ...], ...]
    if is_dask and chunks is None:
        target = (tuple(X.chunks[0]), tuple(X.chunks[1]))
    else:
        nnz = None
        if sparse_out and (chunks is None or isinstance(chunks, str)):
            # Automatic sparse blocks are sized by their entries.
            if is_dask:
                nnz = _count_nnz(X, client, scheduler)
            else:
                nnz = int(X.nnz) if sparse_in else int(np.count_nonzero(X))
        target = chunking.normalize_chunks(chunks, shape, dtype, nnz=nnz)
    if not sparse_out and not all(map(chunking.is_regular, target)):
        if is_dask and chunks is None:
            target = tuple(chunking.regular(s, max(c)) for s, c in zip(shape, target, strict=True))
        else:
            raise ValueError(
                f"Dense stores need regular chunks (all equal but a shorter last one); got "
                f"{target}. Pass chunks=(rows, cols)."
            )
    target = (tuple(target[0]), tuple(target[1]))

    if client is None and not is_dask and scheduler is None:
        client = _default_client()
    Xd = X.rechunk(target) if is_dask else _in_memory_blocks(X, target, client)

    info = MatrixInfo(
        path=path,
        kind="sparse" if sparse_out else "dense",
        shape=shape,
        dtype=dtype,
        row_chunks=target[0],
        col_chunks=target[1],
        nnz_per_block=tuple((0,) * len(target[1]) for _ in target[0]) if sparse_out else None,
        array_path="" if sparse_out else DENSE_ARRAY,
        write_id=new_write_id(),
        storage_options=storage_options,
    )
    if not sparse_out:
        warn_chunk_fit(path, shape, (target[0][0], target[1][0]), dtype)
    with writing_store(info, overwrite=overwrite, storage_options=storage_options, codec=codec) as info:
        results = _write_blocks(Xd, info, client, scheduler, codec, index_dtype)
        if row_ids is not None:
            info = replace(info, row_ids=_ids.write_ids(info.path, "rows", row_ids, storage_options))
        if col_ids is not None:
            info = replace(info, col_ids=_ids.write_ids(info.path, "cols", col_ids, storage_options))
        if sparse_out:
            n_cols = len(target[1])
            grid = tuple(tuple(results[i * n_cols : (i + 1) * n_cols]) for i in range(len(target[0])))
            info = replace(info, nnz_per_block=grid)
        commit_matrix_store(info, storage_options)
    return _open(path, storage_options, verify=False, warn=False)


def _source_stores(X: da.Array) -> list[str]:
    """Paths of the stores a Dask array made by :func:`open_matrix` reads (through any graph)."""
    paths = []
    for name, layer in X.__dask_graph__().layers.items():
        if not str(name).startswith(STORE_KEY_PREFIX):
            continue
        for task in layer.values():
            args = task[1:] if isinstance(task, tuple) else tuple(getattr(task, "args", ()))
            if args and isinstance(args[0], str):
                paths.append(args[0])
            break
    return paths


def _check_format(format: str) -> None:
    if format not in ("auto", "dense", "sparse"):
        raise ValueError(f"format must be 'auto', 'dense' or 'sparse'; got {format!r}.")


def _count_nnz(X: da.Array, client, scheduler) -> int:
    counts = X.map_blocks(
        lambda b: np.array([[_block_nnz(b)]]),
        dtype=np.int64,
        chunks=(1, 1),
        meta=np.empty((0, 0), dtype=np.int64),
    )
    total = counts.sum()
    if client is not None:
        return int(client.compute(total, sync=True))
    return int(total.compute(scheduler=scheduler))


def _write_blocks(Xd: da.Array, info: MatrixInfo, client, scheduler, codec: str, index_dtype: str) -> list[int]:
    """Run one write task per block; return the blocks' nnz (row-major)."""
    name = "dnmf-write-" + tokenize(Xd.name, info.path, info.write_id)
    so = dict(info.storage_options) if info.storage_options else None
    dsk: dict = {}
    keys = []
    row_starts = np.cumsum((0,) + info.row_chunks)
    col_starts = np.cumsum((0,) + info.col_chunks)
    for i, h in enumerate(info.row_chunks):
        for j, w in enumerate(info.col_chunks):
            key = (name, i, j)
            if info.kind == "sparse":
                dsk[key] = (
                    _tasks.write_sparse_task,
                    info.path,
                    i,
                    j,
                    (Xd.name, i, j),
                    (h, w),
                    info.dtype.str,
                    so,
                    codec,
                    index_dtype,
                )
            else:
                bounds = (
                    int(row_starts[i]),
                    int(row_starts[i + 1]),
                    int(col_starts[j]),
                    int(col_starts[j + 1]),
                )
                dsk[key] = (_tasks.write_dense_task, info.path, bounds, (Xd.name, i, j), so)
            keys.append(key)
    final = ("dnmf-written-" + tokenize(name),)
    dsk[final] = (_collect, *keys)
    graph = HighLevelGraph.from_collections(final[0], dsk, dependencies=[Xd])
    return _run(Delayed(final, graph, layer=final[0]), client, scheduler)


# --------------------------------------------------------------------------- ingestion


def ingest(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: Literal["auto", "csv", "parquet", "mtx", "npz", "npy"] = "auto",
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = "rating",
    duplicates: Literal["sum", "last"] = "sum",
    on_invalid: Literal["raise", "drop"] = "raise",
    chunks: chunking.ChunksLike = None,
    dtype: Any = None,
    overwrite: bool = False,
    tmp_dir: str | None = None,
    read_options: Mapping[str, Any] | None = None,
    batch_records: int = 1_000_000,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
    index_dtype: Literal["auto", "int32", "int64"] = "auto",
    cores: int | None = None,
) -> MatrixStore:
    """Build a matrix store from a ratings table or a matrix file, out of core.

    Ratings tables (CSV, Parquet) become a sparse users x items matrix with
    ID maps; files are streamed in batches and never loaded whole.

    Parameters
    ----------
    input : str or path-like
        The file (a directory means a Parquet dataset).
    output : str or path-like
        Local path or fsspec URL of the store to create.
    format : {"auto", "csv", "parquet", "mtx", "npz", "npy"}
        "auto" goes by the file name (``.csv``/``.tsv``/``.txt``, ``.parquet``,
        ``.mtx``, ``.npz``, ``.npy``; ``.gz`` allowed for text).

        - csv: streamed with pyarrow's CSV reader; ``.tsv`` implies
          ``sep="\\t"``, ``.gz`` is decompressed on the fly.
        - parquet: read with pyarrow batch by batch.
        - mtx: MatrixMarket. Coordinate files are streamed (pattern,
          integer, real; general or symmetric); dense "array" files are
          read in memory with :func:`scipy.io.mmread`. Positions are the IDs.
        - npz: a SciPy sparse matrix from :func:`scipy.sparse.save_npz`,
          loaded whole in memory (the format cannot be streamed).
        - npy: a 2-D NumPy array, memory-mapped and written block by block
          into a dense store.
    user_col, item_col : str
        Columns holding the row (user) and column (item) IDs: integers or
        strings, any values. Row/column positions follow the IDs' sorted
        order (numeric for integer IDs, code point for strings), so the
        result does not depend on the order of the file's rows. CSV IDs
        are text ("007" and "7" differ) and become integers when every ID of
        the column is a canonical integer; Parquet IDs keep their type.
    value_col : str or None
        Column of values; None for implicit feedback (each pair counts 1.0).
    duplicates : {"sum", "last"}
        Repeated (user, item) pairs: add their values, or keep the last in
        file order.
    on_invalid : {"raise", "drop"}
        Records with a negative, non-finite or non-numeric value or a
        missing ID (for npy/npz/mtx: such entries) are counted; "raise"
        raises ValueError with the counts and the first offending record
        before anything is written, "drop" skips them (zeroes them for
        dense inputs) and logs a warning with the counts.
    chunks : None, int, (int, int) or (tuple, tuple)
        Blocks of the store. None (sparse stores): row blocks of at most
        about 64 MiB, and at least 4 per core of ``cores`` as long as each
        holds at least 2**18 entries per column block
        (:func:`dnmf.storage.chunking.sparse_row_blocks`); columns in blocks
        of up to 131072.
    dtype : numpy dtype, optional
        Value type; default float32 for tables (ratings and counts are
        exact), float64 for mtx, the file's float type for npz/npy.
    overwrite : bool
        Replace an existing store at ``output``.
    tmp_dir : str, optional
        Where temporary spill files go (about 24 bytes per record; default:
        the system temporary directory).
    read_options : dict, optional
        CSV only, in pandas' spelling: ``sep``, ``header`` (0 or None),
        ``names``, ``skiprows``, ``quotechar``, ``encoding``.
    batch_records : int
        Records read per batch.
    storage_options : dict, optional
        fsspec options for an ``output`` URL.
    codec : str, optional
        Sparse stores: compression of the blocks, ``"lz4[:LEVEL]"``
        (default ``"lz4:5"``, Blosc-LZ4 with byte shuffling),
        ``"zstd[:LEVEL]"`` (smaller, slower to read) or ``"none"``. Readers need no option. The
        README's storage table measures them.
    index_dtype : {"auto", "int32", "int64"}
        Sparse stores: width of the stored row pointers and column indices;
        "auto" is 32-bit unless a block needs 64.
    cores : int, optional
        Cores of the cluster that will fit the store, for the default
        blocking (``chunks=None``); default this machine's, which is what
        ``dnmf fit`` uses when given no scheduler.

    Returns
    -------
    MatrixStore
        The new store, opened; ``.info.provenance`` records the counts of
        records read, dropped and merged.

    Notes
    -----
    Peak memory is about 80 bytes per entry of the largest row block plus
    the ID maps (about 100 bytes per distinct ID), whatever the file size.
    """
    info = _ingest_impl(
        input,
        output,
        format=format,
        user_col=user_col,
        item_col=item_col,
        value_col=value_col,
        duplicates=duplicates,
        on_invalid=on_invalid,
        chunks=chunks,
        dtype=dtype,
        overwrite=overwrite,
        tmp_dir=tmp_dir,
        read_options=read_options,
        batch_records=batch_records,
        storage_options=storage_options,
        codec=codec,
        index_dtype=index_dtype,
        cores=cores,
    )
    return open_matrix(info.path, storage_options=storage_options)


# --------------------------------------------------------------------------- models


def _regular_chunks(a: da.Array) -> da.Array:
    if all(chunking.is_regular(c) for c in a.chunks):
        return a
    return a.rechunk(tuple(max(c) for c in a.chunks))


def _fill_from_dask(a: da.Array, client, scheduler, location: str) -> None:
    name = "dnmf-save-" + tokenize(a.name, location)
    dsk: dict = {}
    keys = []
    for ix in np.ndindex(*a.numblocks):
        key = (name, *ix)
        dsk[key] = (write_model_block, location, tuple(int(v) for v in ix), (a.name, *ix))
        keys.append(key)
    final = ("dnmf-saved-" + tokenize(name),)
    dsk[final] = (_collect, *keys)
    graph = HighLevelGraph.from_collections(final[0], dsk, dependencies=[a])
    _run(Delayed(final, graph, layer=final[0]), client, scheduler)


def save_factors(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
) -> None:
    """Save a model's arrays and attributes atomically, Dask arrays block by block.

    Each Dask array (e.g. a row-chunked W, m x k) is written by tasks on
    the workers, one per block, into the new model's temporary directory;
    the model then replaces any previous one at ``path`` with renames (see
    :mod:`dnmf.storage.models`), so a crash at any moment leaves the old or
    the new model loadable.

    Parameters
    ----------
    path : str or path-like
        Local directory of the model (workers must see the same filesystem).
    arrays : dict of str to numpy.ndarray or dask.array.Array
        Dask arrays with irregular chunks are rechunked to regular ones.
    attrs : dict, optional
        JSON-serialisable attributes (hyper-parameters, iteration, loss...).
    client : distributed.Client, optional
        Cluster that writes Dask arrays' blocks (default: Dask's default).
    scheduler : str, optional
        Dask scheduler name when no client is given.
    """
    specs: dict[str, Any] = {}
    for name, a in arrays.items():
        if isinstance(a, da.Array):
            a = _regular_chunks(a)
            specs[name] = DeferredArray(
                shape=tuple(a.shape),
                dtype=a.dtype,
                chunks=tuple(c[0] for c in a.chunks),
                fill=functools.partial(_fill_from_dask, a, client, scheduler),
            )
        else:
            specs[name] = np.asarray(a)
    write_model(path, specs, attrs)


def load_factors(path: str | os.PathLike[str]) -> tuple[dict[str, da.Array], dict[str, Any]]:
    """Open a saved model lazily: one Dask task per stored block.

    Returns
    -------
    arrays : dict of str to dask.array.Array
        Chunked as stored. Compute or persist them before saving a new
        model at the same path: a save replaces the files they read.
    attrs : dict

    Raises
    ------
    StoreError
        If ``path`` holds no model, a foreign, unfinished or newer one.
    """
    info: ModelInfo = read_model_info(path)
    out = {}
    for name, spec in info.arrays.items():
        shape, chunks = spec["shape"], spec["chunks"]
        key = "dnmf-model-" + tokenize(info.location, info.write_id, name)
        block_chunks = tuple(chunking.regular(s, c) if s else (0,) for s, c in zip(shape, chunks, strict=True))
        dsk = {
            (key, *ix): (read_model_block, info, name, tuple(int(v) for v in ix))
            for ix in np.ndindex(*(len(c) for c in block_chunks))
        }
        graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
        out[name] = da.Array(
            graph,
            key,
            block_chunks,
            dtype=spec["dtype"],
            meta=np.empty((0,) * len(shape), dtype=spec["dtype"]),
        )
    return out, dict(info.attrs)


# --------------------------------------------------------------------------- what a path holds


def identify(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> str:
    """What dnmf keeps at ``path``: ``"job"``, ``"model"`` or ``"matrix"``.

    Reads metadata only.

    Raises
    ------
    StoreError
        If ``path`` holds none of them (naming what is there instead).
    """
    from . import jobs as _jobs

    path = locations.normalize(path)
    if not locations.exists(path, storage_options):
        raise StoreError(path, "nothing exists at this path", "Check the path.")
    if _jobs.is_job_dir(path, storage_options):
        return "job"
    if not locations.is_url(path):
        try:
            read_model_info(path)
            return "model"
        except StoreError:
            pass
    try:
        read_matrix_info(path, storage_options, warn=False)
        return "matrix"
    except StoreError as exc:
        raise StoreError(
            path,
            f"it is neither a dnmf matrix store, a model nor a job directory ({exc.problem})",
            "Give a store made by `dnmf ingest`, a model saved by `dnmf fit`, or a job directory.",
        ) from None


def align_columns(store: MatrixStore, col_ids: pd.Index) -> tuple[sp.csr_matrix, int, int]:
    """The rows of a (small) store as CSR with columns in ``col_ids``' order.

    For new rows to be transformed with a fitted model: the store's columns
    are matched to the model's by ID; entries of columns the model does not
    know are dropped and counted.

    Returns
    -------
    X : csr_matrix of shape (store rows, len(col_ids))
    dropped_entries : int
        Non-zeros in columns unknown to the model.
    unknown_columns : int
    """
    import dask

    grid = store.data.to_delayed()
    blocks = dask.compute(*grid.ravel().tolist())
    X = sp.bmat(np.array([sp.csr_matrix(b) for b in blocks], dtype=object).reshape(grid.shape), format="csr")
    src = store.col_ids
    pos = pd.Index(col_ids).get_indexer(src)
    known = pos >= 0
    X = X.tocoo()
    keep = known[X.col]
    out = sp.csr_matrix((X.data[keep], (X.row[keep], pos[X.col[keep]])), shape=(X.shape[0], len(col_ids)))
    return out, int((~keep).sum()), int((~known).sum())
