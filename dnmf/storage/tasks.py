"""Block tasks: what the workers run to read and write matrix stores.

Kept apart from :mod:`dnmf.storage.arrays` so that a worker unpickling them imports only
Zarr, NumPy and SciPy, not pandas or pyarrow (which ingestion needs).
"""

from __future__ import annotations

from .dense import read_dense_block, write_dense_block
from .layout import DENSE_ARRAY
from .sparse import read_sparse_block, write_sparse_block


def read_sparse_task(path, i, j, shape, dtype, nnz, storage_options):
    return read_sparse_block(path, i, j, shape=shape, dtype=dtype, nnz=nnz, storage_options=storage_options)


def read_dense_task(path, array_path, bounds, chunk, storage_options):
    return read_dense_block(path, array_path, bounds, chunk=chunk, storage_options=storage_options)


def write_sparse_task(path, i, j, block, shape, dtype, storage_options, codec=None, index_dtype="auto") -> int:
    return write_sparse_block(
        path,
        i,
        j,
        block,
        shape=shape,
        dtype=dtype,
        storage_options=storage_options,
        codec=codec,
        index_dtype=index_dtype,
    )


def write_dense_task(path, bounds, block, storage_options) -> int:
    write_dense_block(path, DENSE_ARRAY, bounds, block, storage_options=storage_options)
    return 0
