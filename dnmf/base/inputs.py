"""Turning user inputs into the blocked layout the solvers work on: `resolve_input` and the in-memory blocking.

:func:`resolve_input` is the one place that knows the kinds of input dnmf
accepts (arrays, SciPy and pydata sparse matrices, DataFrames, Dask arrays,
store paths and URLs, opened stores).

Every input becomes a Dask array whose blocks are ``numpy.ndarray`` (dense)
or ``scipy.sparse.csr_matrix`` (sparse): SciPy's CSR products are several
times faster than pydata-sparse's, and Dask's own ``@`` does not accept SciPy
chunks, which is why the solvers build their graphs by hand.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize

from ..engine.blocks import as_block
from ..engine.graph import is_store_backed

#: Target size of one block of an in-memory input, in bytes of data.
BLOCK_BYTES = 16 * 2**20
#: Largest number of columns in one column block of an in-memory input.
MAX_BLOCK_COLS = 2**17


def is_pydata_sparse(X) -> bool:
    """Whether X is a pydata ``sparse`` array (COO, GCXS, ...)."""
    return type(X).__module__.split(".")[0] == "sparse" and hasattr(X, "nnz")


@dataclass(frozen=True)
class ResolvedInput:
    """An accepted input, resolved.

    Attributes
    ----------
    data : dask array, ndarray, SciPy sparse matrix or DataFrame
        A Dask array for Dask and store inputs (a store's blocks are read
        where they are used); the in-memory input otherwise (pydata sparse
        converted to SciPy), for the estimator to validate and block.
    row_ids, col_ids : pandas.Index or None
        The store's ID maps (None for other inputs).
    store : str or None
        The store's location when X is a store.
    """

    data: Any
    row_ids: Any = None
    col_ids: Any = None
    store: str | None = None

    @property
    def is_dask(self) -> bool:
        return isinstance(self.data, da.Array)


def check_frame_columns(X, whom: str) -> None:
    """Refuse a DataFrame with non-numeric columns, naming them (before NumPy's cryptic error)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(X, "columns"):
        return
    import pandas as pd

    bad = [
        str(c)
        for c, t in zip(X.columns, dtypes, strict=True)
        if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))
    ]
    if bad:
        listed = ", ".join(repr(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{whom} needs numbers, but the DataFrame's column(s) {listed} hold text or other non-numeric "
            "values. Drop them, or map them to numbers, before fitting."
        )


def resolve_input(X, storage_options: dict | None = None) -> ResolvedInput:
    """Resolve any input dnmf accepts; see :class:`ResolvedInput`.

    Parameters
    ----------
    X : array-like, sparse matrix, DataFrame, dask array, str, os.PathLike or MatrixStore
        A store path or URL is opened (with ``storage_options`` for fsspec).
    storage_options : dict, optional
        Passed to fsspec when X is a path or URL.
    """
    from ..storage.arrays import MatrixStore, open_matrix

    if isinstance(X, (str, os.PathLike)):
        X = open_matrix(X, storage_options=storage_options)
    if isinstance(X, MatrixStore):
        return ResolvedInput(X.data, X.row_ids, X.col_ids, X.path)
    if isinstance(X, da.Array):
        return ResolvedInput(X)
    if is_pydata_sparse(X):
        X = X.to_scipy_sparse()
    return ResolvedInput(X)


def to_block(x, dtype=None):
    """One block as an ndarray or a canonical CSR matrix."""
    x = as_block(x)
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    return x


def float_dtype(dtype) -> np.dtype:
    """float32 and float64 are kept; every other numeric dtype becomes float64."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"X must hold numbers; got dtype {dtype}. Convert it with "
            "X.astype(float) after mapping any categories to numbers."
        )
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def memory_auto_chunks(shape: tuple[int, int], nbytes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default blocking of an in-memory matrix (stores have their own: ``dnmf.storage.auto_chunks``).

    In-memory blocks are smaller (``BLOCK_BYTES``, even sizes) than a
    store's (64 MiB, regular sizes a Zarr array can hold): they are scattered
    from the client, and more of them give the workers more to do in
    parallel; a store's block is one read. Depends only on the matrix (never on the cluster), so a given input is
    always blocked the same way and results are reproducible across
    clusters. Rows are split into blocks of about ``BLOCK_BYTES``; columns
    only when wider than ``MAX_BLOCK_COLS``.
    """
    m, n = shape
    n_row = max(1, min(m, math.ceil(nbytes / BLOCK_BYTES)))
    n_col = max(1, math.ceil(n / MAX_BLOCK_COLS))
    return even_split(m, n_row), even_split(n, n_col)


def even_split(size: int, parts: int) -> tuple[int, ...]:
    """``size`` cut into ``parts`` consecutive chunks whose lengths differ by at most one."""
    base, extra = divmod(size, parts)
    return tuple(base + (1 if p < extra else 0) for p in range(parts))


def memory_chunks(chunks, shape, nbytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Blocks of an in-memory input from ``chunks``: ``"auto"`` (:func:`memory_auto_chunks`), an int
    (rows per block), a pair, or explicit chunk tuples."""
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return memory_auto_chunks(shape, nbytes)
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks), shape[1])
    try:
        normal = da.core.normalize_chunks(chunks, shape=shape)
    except Exception as exc:
        raise ValueError(
            f"The 'chunks' parameter must be 'auto', an int (rows per block), a "
            f"(rows, cols) pair or explicit chunk tuples for shape {shape}; got "
            f"{chunks!r} ({exc})."
        ) from None
    rows, cols = (tuple(int(c) for c in axis) for axis in normal)
    return rows, cols


def from_memory(X, chunks="auto", client=None) -> da.Array:
    """Block an in-memory NumPy or SciPy matrix into a Dask array.

    On a distributed ``client`` the blocks are scattered to the workers
    first, which keeps them out of the task graph.
    """
    X = to_block(X)
    nbytes = X.data.nbytes + X.indices.nbytes if sp.issparse(X) else X.nbytes
    rows, cols = memory_chunks(chunks, X.shape, nbytes)
    r_off = np.concatenate([[0], np.cumsum(rows)])
    c_off = np.concatenate([[0], np.cumsum(cols)])
    blocks = {}
    for i in range(len(rows)):
        band = X[r_off[i] : r_off[i + 1]]
        for j in range(len(cols)):
            blk = band[:, c_off[j] : c_off[j + 1]] if len(cols) > 1 else band
            blocks[(i, j)] = to_block(blk)
    # Imported here: workers import this module for to_block and should not load pandas.
    from ..storage.arrays import blocks_array

    return blocks_array(blocks, (rows, cols), _meta_of(X), client, prefix="dnmf-X", token=tokenize(X, rows, cols))


def _meta_of(x):
    if sp.issparse(x):
        return sp.csr_matrix((0, 0), dtype=x.dtype)
    return np.empty((0, 0), dtype=x.dtype)


def from_dask(X: da.Array) -> da.Array:
    """Make every block of a Dask array an ndarray or CSR of a float dtype."""
    if X.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array (n_samples, n_features); got a {X.ndim}-D "
            f"Dask array of shape {X.shape}. Reshape it, e.g. X.reshape(-1, 1) "
            "for a single feature."
        )
    if any(math.isnan(s) for s in X.shape):
        raise ValueError(
            "X has unknown chunk sizes (NaN in its shape). Compute them first with X.compute_chunk_sizes()."
        )
    dtype = float_dtype(X.dtype)
    meta = X._meta
    if is_store_backed(X) and dtype == X.dtype:
        return X  # dnmf stores already hold float NumPy or CSR blocks
    sparse_meta = sp.issparse(meta) or is_pydata_sparse(meta)
    out_meta = sp.csr_matrix((0, 0), dtype=dtype) if sparse_meta else np.empty((0, 0), dtype=dtype)
    return X.map_blocks(to_block, dtype=dtype, meta=out_meta, name="dnmf-asblock-" + tokenize(X.name, dtype))


def _store_backed(X: da.Array) -> bool:
    return all(str(name).startswith("dnmf-store") for name in X.__dask_graph__().layers)
