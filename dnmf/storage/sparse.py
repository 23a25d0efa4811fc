"""One block of a sparse store: a CSR matrix in three 1-D Zarr arrays.

Block (i, j) of a ``sparse-csr-blocks`` store lives in the group
``blocks/{i}_{j}`` as ``indptr`` (rows + 1 entries), ``indices`` (column
within the block) and ``data``, each a single compressed chunk. A worker
reads or writes one block without touching any other, so these functions
are what the Dask tasks of :mod:`dnmf.storage.arrays` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import locations, nodes
from .codecs import Codec, check_index_dtype, parse_codec
from .errors import StoreError
from .layout import block_path

_INT32_MAX = np.iinfo(np.int32).max


def to_csr(block: Any, dtype: np.dtype | None = None) -> sp.csr_matrix:
    """``block`` (SciPy sparse, pydata ``sparse``, or dense) as canonical CSR.

    Canonical means sorted column indices and no duplicates (summed).
    Explicit zeros are kept: in ratings data a stored 0 is an observation.
    """
    if hasattr(block, "to_scipy_sparse"):  # pydata sparse
        block = block.to_scipy_sparse()
    if sp.issparse(block):
        csr = sp.csr_matrix(block, copy=False)
    else:
        arr = np.asarray(block)
        if arr.ndim != 2:
            raise ValueError(f"a block must be 2-D; got an array of shape {arr.shape}.")
        csr = sp.csr_matrix(arr)
    if dtype is not None and csr.dtype != dtype:
        csr = csr.astype(dtype)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def _index_dtype(n_cols: int, nnz: int, index_dtype: str = "auto") -> np.dtype:
    # 32-bit indices halve the index bytes; 64-bit only when values need it.
    fits32 = max(n_cols, nnz) <= _INT32_MAX
    if index_dtype == "int64":
        return np.dtype(np.int64)
    if index_dtype == "int32" and not fits32:
        raise ValueError(
            f"index_dtype='int32' cannot hold a block of {n_cols} columns and {nnz} entries "
            "(more than 2**31 - 1). Pass index_dtype='auto' or 'int64', or smaller blocks."
        )
    return np.dtype(np.int32 if fits32 else np.int64)


def write_sparse_block(
    path: str,
    i: int,
    j: int,
    block: Any,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | Codec | None = None,
    index_dtype: str = "auto",
) -> int:
    """Write block (i, j) of the sparse store at ``path``; return its nnz.

    Idempotent: a retried task overwrites the block it half-wrote.

    Parameters
    ----------
    path : str
        Store root (absolute path or URL).
    i, j : int
        Block coordinates.
    block : SciPy sparse, pydata sparse or numpy array
        The block's values.
    shape : (int, int)
        Expected shape of the block.
    dtype : numpy.dtype
        The store's value type; ``block`` is cast to it.
    storage_options : dict, optional
        fsspec options for URLs.
    codec : str, optional
        Compression of the three arrays (:func:`~dnmf.storage.codecs.parse_codec`;
        default ``"lz4:5"``). Readers need not know it.
    index_dtype : {"auto", "int32", "int64"}
        Width of ``indptr`` and ``indices``: "auto" is 32-bit unless the
        block has 2**31 or more columns or entries.
    """
    check_index_dtype(index_dtype)
    codec = parse_codec(codec)
    csr = to_csr(block, np.dtype(dtype))
    if csr.shape != tuple(shape):
        raise ValueError(
            f"block ({i}, {j}) must have shape {tuple(shape)} to match the chunks; got "
            f"{csr.shape}. Rechunk X so its blocks match the chunks passed to write_matrix."
        )
    idx = _index_dtype(csr.shape[1], csr.nnz, index_dtype)
    base = block_path(i, j)
    nodes.write_1d(path, f"{base}/indptr", csr.indptr.astype(idx, copy=False), storage_options, codec=codec)
    nodes.write_1d(path, f"{base}/indices", csr.indices.astype(idx, copy=False), storage_options, codec=codec)
    nodes.write_1d(path, f"{base}/data", np.ascontiguousarray(csr.data), storage_options, codec=codec)
    return int(csr.nnz)


def read_sparse_block(
    path: str,
    i: int,
    j: int,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    nnz: int,
    storage_options: Mapping[str, Any] | None = None,
) -> sp.csr_matrix:
    """Read block (i, j) of the sparse store at ``path`` as a CSR matrix.

    Reads only this block's three arrays, and checks them against the
    store's metadata (``shape``, ``dtype``, ``nnz``) and CSR's invariants.

    Raises
    ------
    StoreError
        If an array is missing, undecodable, or inconsistent with the metadata.
    """
    base = block_path(i, j)
    where = locations.join(path, base)
    n_rows, n_cols = shape
    expected = {"indptr": n_rows + 1, "indices": nnz, "data": nnz}
    parts: dict[str, np.ndarray] = {}
    for name, length in expected.items():
        array_path = f"{base}/{name}"
        arr = nodes.open_array_meta_readonly(path, array_path, storage_options)
        if arr.shape != (length,):
            raise _corrupt(where, f"{name} has shape {arr.shape}, expected ({length},) from the metadata")
        if length and not nodes.chunk_exists(path, array_path, (0,), storage_options):
            raise _corrupt(where, f"the chunk of {name} is missing")
        parts[name] = nodes.read_single_chunk(path, array_path, arr)
    indptr, indices, data = parts["indptr"], parts["indices"], parts["data"]
    if indptr.dtype.kind != "i" or indices.dtype.kind != "i":
        raise _corrupt(where, f"index arrays have dtypes {indptr.dtype}/{indices.dtype}, not integers")
    if data.dtype != np.dtype(dtype):
        raise _corrupt(where, f"data has dtype {data.dtype}, the metadata says {np.dtype(dtype)}")
    if indptr[0] != 0 or indptr[-1] != nnz or (n_rows and np.any(np.diff(indptr) < 0)):
        raise _corrupt(where, f"indptr is not a valid CSR row pointer for {nnz} entries")
    if nnz and (indices.min() < 0 or indices.max() >= n_cols):
        raise _corrupt(where, f"column indices fall outside 0..{n_cols - 1}")
    csr = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
    # The writer stored canonical CSR and checksums guard the bytes, so
    # SciPy need not sort or deduplicate again.
    csr.has_sorted_indices = True
    csr.has_canonical_format = True
    return csr


def _corrupt(where: str, problem: str) -> StoreError:
    return StoreError(
        where,
        problem,
        "The store is damaged or was modified by another program; rewrite it with dnmf.write_matrix or dnmf.ingest.",
    )
