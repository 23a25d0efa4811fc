"""Dense matrices: a 2-D Zarr array whose chunks are the blocks.

A dense dnmf store is a group holding the array ``X``; any bare 2-D Zarr
array (written by other tools) can be read too. Dask block (i, j) is Zarr
chunk (i, j), so a task reads exactly one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from .. import caller
from . import locations, nodes
from .codecs import ARRAY_CONFIG, numeric_compressors
from .errors import StoreError

#: Chunks outside this range (bytes) make a poor fit for block-wise NMF.
MIN_CHUNK_BYTES = 2**20
MAX_CHUNK_BYTES = 512 * 2**20


def create_dense_array(
    path: str,
    name: str,
    shape: tuple[int, int],
    dtype: np.dtype,
    chunk_shape: tuple[int, int],
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
) -> None:
    """Create the empty array ``name`` in the store at ``path``; blocks come later.

    ``codec``: see :func:`~dnmf.storage.codecs.parse_codec` (default ``"lz4:5"``).
    """
    dtype = np.dtype(dtype)
    zarr.create_array(
        store=path,
        name=name,
        shape=tuple(shape),
        chunks=tuple(chunk_shape),
        dtype=dtype,
        compressors=numeric_compressors(dtype, int(np.prod(chunk_shape)), codec),
        fill_value=0,
        config=ARRAY_CONFIG,
        overwrite=True,
        **nodes.zarr_kwargs(path, storage_options),
    )


def write_dense_block(
    path: str,
    array_path: str,
    bounds: tuple[int, int, int, int],
    block: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``block`` into rows ``bounds[0]:bounds[1]``, columns ``bounds[2]:bounds[3]``.

    ``bounds`` must cover whole Zarr chunks so that concurrent tasks never
    write the same chunk. Idempotent.
    """
    if sp.issparse(block):  # a sparse input written densely
        block = block.toarray()
    elif hasattr(block, "todense"):  # pydata sparse
        block = block.todense()
    block = np.asarray(block)
    r0, r1, c0, c1 = bounds
    if block.shape != (r1 - r0, c1 - c0):
        raise ValueError(
            f"the block for rows {r0}:{r1}, columns {c0}:{c1} must have shape "
            f"{(r1 - r0, c1 - c0)}; got {block.shape}. Rechunk X to match the chunks."
        )
    arr = nodes.open_for_writing(path, array_path, storage_options)
    arr[r0:r1, c0:c1] = block.astype(arr.dtype, copy=False)


def read_dense_block(
    path: str,
    array_path: str,
    bounds: tuple[int, int, int, int],
    *,
    chunk: tuple[int, int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Read rows ``bounds[0]:bounds[1]`` and columns ``bounds[2]:bounds[3]``.

    Parameters
    ----------
    chunk : (int, int), optional
        Coordinates of the Zarr chunk the block is. Given for stores dnmf
        wrote (which hold every chunk), a missing chunk is an error rather
        than Zarr's silent fill value; bare arrays follow Zarr's rules.
    """
    where = locations.join(path, array_path) if array_path else path
    if array_path:
        arr = nodes.open_array_readonly(path, array_path, storage_options)
    else:
        arr = nodes.open_readonly(path, storage_options)
    if chunk is not None and not nodes.chunk_exists(path, array_path, chunk, storage_options):
        raise StoreError(
            where,
            f"chunk {chunk} is missing",
            "The store is damaged; rewrite it with dnmf.write_matrix.",
        )
    r0, r1, c0, c1 = bounds
    return nodes.read_region(arr, (slice(r0, r1), slice(c0, c1)), where)


def warn_chunk_fit(
    path: str,
    shape: tuple[int, int],
    chunk_shape: tuple[int, int],
    dtype: np.dtype,
) -> None:
    """Warn when a dense array's chunks are too small or too large for block-wise work.

    Tiny chunks make one task per few KiB (scheduler overhead dominates);
    huge ones make a worker hold hundreds of MiB per task. Chunks smaller
    than 1 MiB are fine when the whole array fits in one chunk.
    """
    itemsize = np.dtype(dtype).itemsize
    chunk_bytes = int(np.prod(chunk_shape)) * itemsize
    total_bytes = int(np.prod(shape)) * itemsize
    if chunk_bytes < MIN_CHUNK_BYTES and total_bytes > chunk_bytes:
        problem = f"{chunk_bytes / 2**10:.0f} KiB, below 1 MiB: scheduling overhead will dominate"
    elif chunk_bytes > MAX_CHUNK_BYTES:
        problem = f"{chunk_bytes / 2**20:.0f} MiB, above 512 MiB: workers may run out of memory"
    else:
        return
    caller.warn(
        f"The Zarr array at {path!r} has chunks of shape {tuple(chunk_shape)} "
        f"({np.dtype(dtype)}), i.e. {problem}. Rewrite it with better chunks, e.g. "
        f'dnmf.write_matrix(dnmf.open_matrix(path).data, new_path, chunks="auto") '
        f"(about 64 MiB per block).",
        UserWarning,
    )
