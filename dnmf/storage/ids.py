"""ID maps: the user's row and column IDs, stored beside the matrix.

Position ``p`` of ``ids/rows`` is the ID of row ``p`` (and likewise for
columns), so results can be reported in the user's own IDs. IDs are either
UTF-8 strings or 64-bit integers, stored as plain Zarr arrays (no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import locations, nodes
from .errors import StoreError
from .layout import IDS_GROUP

#: IDs per chunk: ID maps are read whole, but bounded chunks keep each
#: encode/decode call small.
ID_CHUNK = 2**20


def id_kind(ids: Any) -> str:
    """``"int64"`` for integer IDs, ``"string"`` for text; raise otherwise."""
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return "int64"
    if arr.dtype.kind in "UT" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr)):
        return "string"
    raise TypeError(f"IDs must be integers or strings; got dtype {arr.dtype}. Convert them, e.g. ids.astype(str).")


def _as_stored(ids: Any, kind: str) -> np.ndarray:
    if kind == "int64":
        return np.asarray(ids, dtype=np.int64)
    return np.asarray(ids, dtype=object)


def check_ids(ids: Any, length: int, axis: str) -> str:
    """Validate an ID map for an axis of ``length``; return its kind."""
    kind = id_kind(ids)
    index = pd.Index(_as_stored(ids, kind))
    if len(index) != length:
        raise ValueError(
            f"{axis} IDs must have one entry per {axis[:-1]} ({length}); got {len(index)}. Pass IDs matching X's shape."
        )
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise ValueError(f"{axis} IDs must be unique; {dup!r} appears more than once.")
    return kind


def write_ids(path: str, axis: str, ids: Any, storage_options: Mapping[str, Any] | None = None) -> str:
    """Store the ID map of ``axis`` ("rows" or "cols"); return its kind."""
    kind = id_kind(ids)
    nodes.write_1d(path, f"{IDS_GROUP}/{axis}", _as_stored(ids, kind), storage_options, chunk=ID_CHUNK)
    return kind


def read_ids(path: str, axis: str, length: int, storage_options: Mapping[str, Any] | None = None) -> pd.Index:
    """The ID map of ``axis`` as a :class:`pandas.Index` (position -> ID).

    Raises
    ------
    StoreError
        If the map is missing, damaged, of the wrong length, or not unique.
    """
    array_path = f"{IDS_GROUP}/{axis}"
    where = locations.join(path, array_path)
    arr = nodes.open_array_readonly(path, array_path, storage_options)
    fix = "The store is damaged; rewrite it with dnmf.ingest or dnmf.write_matrix."
    if arr.shape != (length,):
        raise StoreError(where, f"the ID map has shape {arr.shape}, expected ({length},)", fix)
    n_chunks = -(-length // arr.chunks[0])
    for c in range(n_chunks):
        if not nodes.chunk_exists(path, array_path, (c,), storage_options):
            raise StoreError(where, f"chunk {c} of the ID map is missing", fix)
    values = nodes.read_whole(arr, where)
    if values.dtype.kind not in "iu":
        values = values.astype(object)
    index = pd.Index(values, name=axis[:-1] + "_id")
    if not index.is_unique:
        raise StoreError(where, "the ID map holds duplicate IDs", fix)
    return index
