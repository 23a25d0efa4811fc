"""How matrices are cut into blocks when the caller does not say.

Blocks are regular (all equal but the last along each axis) so the same
sizes can chunk a dense Zarr array, a sparse store, and the factor W. The
choice depends only on the matrix, never on the cluster, so an input is
always blocked the same way and results are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from .layout import chunks_problem

#: Target bytes per block: big enough that per-task overhead is small, small
#: enough that a worker holds a few blocks at once with room to spare.
TARGET_BLOCK_BYTES = 64 * 2**20
#: Widest column block; wider matrices are split along columns as well.
MAX_BLOCK_COLS = 2**17

ChunksLike = Union[None, str, int, Sequence[int], Sequence[Sequence[int]]]  # noqa: UP007
Chunks = tuple[tuple[int, ...], tuple[int, ...]]


def regular(size: int, block: int) -> tuple[int, ...]:
    """Blocks of ``block`` along an axis of ``size``, the last one possibly shorter."""
    block = max(1, min(int(block), size))
    full, rest = divmod(size, block)
    return (block,) * full + ((rest,) if rest else ())


def auto_chunks(shape: tuple[int, int], dtype: np.dtype, nnz: int | None = None) -> Chunks:
    """Default blocks for a matrix of ``shape``; ``nnz`` given means sparse (CSR).

    Sparse blocks hold about ``TARGET_BLOCK_BYTES`` of values and 32-bit
    column indices; dense ones about ``TARGET_BLOCK_BYTES`` of values.
    """
    m, n = shape
    itemsize = np.dtype(dtype).itemsize
    col_block = min(n, MAX_BLOCK_COLS)
    n_col_blocks = math.ceil(n / col_block)
    if nnz is None:
        rows = TARGET_BLOCK_BYTES // max(1, col_block * itemsize)
    else:
        per_block_nnz = TARGET_BLOCK_BYTES // (itemsize + 4)
        n_row_blocks = max(1, math.ceil(nnz / (per_block_nnz * n_col_blocks)))
        rows = math.ceil(m / n_row_blocks)
    return regular(m, max(1, rows)), regular(n, col_block)


def normalize_chunks(chunks: ChunksLike, shape: tuple[int, int], dtype: np.dtype, nnz: int | None = None) -> Chunks:
    """Explicit block sizes from what a user may pass as ``chunks``.

    Parameters
    ----------
    chunks : None, "auto", int, (int, int) or (tuple, tuple)
        None/"auto": :func:`auto_chunks`. An int: rows per block, all
        columns in one block. A pair of ints: rows and columns per block
        (-1 meaning the whole axis). A pair of tuples: explicit sizes.
    shape : (int, int)
    dtype : numpy.dtype
    nnz : int, optional
        Stored entries, for sparse matrices.

    Raises
    ------
    ValueError
        If the sizes are not positive or do not add up to ``shape``.
    """
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return auto_chunks(shape, dtype, nnz)
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks), -1)
    if isinstance(chunks, str) or len(chunks) != 2:
        raise ValueError(
            f"chunks must be None, 'auto', an int (rows per block), a pair of ints or a "
            f"pair of tuples of block sizes; got {chunks!r}."
        )
    out = []
    axes: Sequence[Any] = chunks  # per axis: a block size or the block sizes
    for c, size in zip(axes, shape, strict=True):
        if isinstance(c, (int, np.integer)):
            c = int(c)
            if c == -1:
                c = size
            if c <= 0:
                raise ValueError(f"chunks must be positive block sizes (or -1 for a whole axis); got {chunks!r}.")
            out.append(regular(size, c))
        else:
            out.append(tuple(int(v) for v in c))
    result = (out[0], out[1])
    problem = chunks_problem(result, shape)
    if problem:
        raise ValueError(f"{problem} for a matrix of shape {tuple(shape)}. Fix the chunks or pass chunks=None.")
    return result


def is_regular(sizes: Sequence[int]) -> bool:
    """Whether all blocks but the last have the same size and the last is not larger."""
    return all(s == sizes[0] for s in sizes[:-1]) and sizes[-1] <= sizes[0]
