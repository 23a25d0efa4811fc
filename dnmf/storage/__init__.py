"""Storage: the only part of dnmf that touches Zarr and files.

Everything here works one block at a time and never builds Dask graphs, so
any worker process can call it on its own; :mod:`dnmf.storage.arrays` assembles these
calls into Dask arrays and graphs. Layouts are described in
``docs/storage-format.md``.
"""

from .chunking import auto_chunks, normalize_chunks
from .dense import read_dense_block, write_dense_block
from .errors import StoreError
from .layout import DENSE_FORMAT, MATRIX_VERSION, SPARSE_FORMAT, MatrixInfo
from .matrix import (
    begin_matrix_store,
    commit_matrix_store,
    read_block,
    read_matrix_info,
    verify_matrix,
)
from .models import (
    MODEL_FORMAT,
    MODEL_VERSION,
    DeferredArray,
    ModelInfo,
    read_model,
    read_model_block,
    read_model_info,
    write_model,
    write_model_block,
)
from .sparse import read_sparse_block, to_csr, write_sparse_block


def __getattr__(name: str):
    # ingestion and ID maps need pandas/pyarrow; workers reading blocks do not.
    if name == "ingest":
        from .ingestion import ingest

        return ingest
    if name in ("read_ids", "write_ids"):
        from . import ids

        return getattr(ids, name)
    raise AttributeError(f"module 'dnmf.storage' has no attribute {name!r}")


__all__ = [
    "DENSE_FORMAT",
    "MATRIX_VERSION",
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "SPARSE_FORMAT",
    "DeferredArray",
    "MatrixInfo",
    "ModelInfo",
    "StoreError",
    "auto_chunks",
    "begin_matrix_store",
    "commit_matrix_store",
    "ingest",
    "normalize_chunks",
    "read_block",
    "read_dense_block",
    "read_ids",
    "read_matrix_info",
    "read_model",
    "read_model_block",
    "read_model_info",
    "read_sparse_block",
    "to_csr",
    "verify_matrix",
    "write_dense_block",
    "write_ids",
    "write_model",
    "write_model_block",
    "write_sparse_block",
]
