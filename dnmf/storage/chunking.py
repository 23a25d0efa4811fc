"""How matrices are cut into blocks when the caller does not say.

Blocks are regular (all equal but the last along each axis) so the same
sizes can chunk a dense Zarr array, a sparse store, and the factor W. The
choice depends only on the matrix and, for ingested stores, on a number of
cores fixed when the store is written (:func:`sparse_row_blocks`); a store
keeps its blocks, so a fit of it is always blocked the same way and results
are reproducible.

The rule for sparse stores (:func:`sparse_row_blocks`): as many row blocks
as it takes to keep each block under ``TARGET_BLOCK_BYTES``, and at least
``ROW_BLOCKS_PER_CORE`` per core of the cluster expected to fit it, so that
every thread has work and a lost or slow block is a small share, but never
blocks of fewer than ``MIN_BLOCK_NNZ`` entries per column block, below which
per-task overhead (scheduling, a k-wide partial result per block) outweighs
the work. On a large cluster the byte target and the minimum block size
bound the count, not the cores.
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
#: Row blocks per core that ingestion aims at (see the module docstring).
ROW_BLOCKS_PER_CORE = 4
#: Fewest stored entries per block worth a task of its own.
MIN_BLOCK_NNZ = 2**18

ChunksLike = Union[None, str, int, Sequence[int], Sequence[Sequence[int]]]  # noqa: UP007
Chunks = tuple[tuple[int, ...], tuple[int, ...]]


def regular(size: int, block: int) -> tuple[int, ...]:
    """Blocks of ``block`` along an axis of ``size``, the last one possibly shorter."""
    block = max(1, min(int(block), size))
    full, rest = divmod(size, block)
    return (block,) * full + ((rest,) if rest else ())


def default_cores() -> int:
    """Cores of the cluster ``dnmf fit`` starts when given no scheduler: this machine's."""
    import os

    return max(1, os.cpu_count() or 1)  # as the command line sizes its embedded worker


def sparse_row_blocks(nnz: int, n_col_blocks: int, itemsize: int, cores: int | None = None) -> int:
    """Row blocks of a sparse matrix with ``nnz`` entries (the rule of the module docstring).

    ``max(ceil(nnz / (B * n_col_blocks)), min(ROW_BLOCKS_PER_CORE * cores,
    nnz // (MIN_BLOCK_NNZ * n_col_blocks)))`` where ``B`` is the entries that
    fit ``TARGET_BLOCK_BYTES`` (value plus a 32-bit index each). ``cores``
    None: one core, which gives the byte rule alone.

    Raises
    ------
    ValueError
        If ``cores`` is not a positive integer.
    """
    if cores is not None and (not isinstance(cores, (int, np.integer)) or cores < 1):
        raise ValueError(f"cores must be a positive integer (the cores of the cluster that will fit); got {cores!r}.")
    per_block_nnz = TARGET_BLOCK_BYTES // (itemsize + 4)
    by_bytes = max(1, math.ceil(nnz / (per_block_nnz * n_col_blocks)))
    if cores is None:
        return by_bytes
    by_cores = min(ROW_BLOCKS_PER_CORE * int(cores), nnz // (MIN_BLOCK_NNZ * n_col_blocks))
    return max(by_bytes, by_cores)


def auto_chunks(shape: tuple[int, int], dtype: np.dtype, nnz: int | None = None, cores: int | None = None) -> Chunks:
    """Default blocks for a matrix of ``shape``; ``nnz`` given means sparse (CSR).

    Sparse blocks hold about ``TARGET_BLOCK_BYTES`` of values and 32-bit
    column indices, and with ``cores`` given there are enough of them for
    that many cores (:func:`sparse_row_blocks`); dense ones hold about
    ``TARGET_BLOCK_BYTES`` of values.
    """
    m, n = shape
    itemsize = np.dtype(dtype).itemsize
    col_block = min(n, MAX_BLOCK_COLS)
    n_col_blocks = math.ceil(n / col_block)
    if nnz is None:
        rows = TARGET_BLOCK_BYTES // max(1, col_block * itemsize)
    else:
        n_row_blocks = min(m, sparse_row_blocks(nnz, n_col_blocks, itemsize, cores))
        rows = math.ceil(m / n_row_blocks)
    return regular(m, max(1, rows)), regular(n, col_block)


def normalize_chunks(
    chunks: ChunksLike, shape: tuple[int, int], dtype: np.dtype, nnz: int | None = None, cores: int | None = None
) -> Chunks:
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
    cores : int, optional
        Sparse matrices with ``chunks`` None/"auto": the cores of the
        cluster expected to fit them (:func:`sparse_row_blocks`).

    Raises
    ------
    ValueError
        If the sizes are not positive or do not add up to ``shape``.
    """
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return auto_chunks(shape, dtype, nnz, cores)
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


def refined_row_chunks(
    row_chunks: Sequence[int], nnz: int, n_col_blocks: int, itemsize: int, threads: int
) -> tuple[int, ...] | None:
    """Finer row blocks for a sparse store fitted on ``threads`` threads, or None if it has enough.

    The target count is :func:`sparse_row_blocks` for ``threads`` cores, the
    rule ingestion follows; a store with fewer row blocks gets each block cut
    into ``ceil(target / blocks)`` nearly equal parts (never below one row).
    Only the stored blocks and ``threads`` decide the result, so the same
    store fitted on a cluster of the same size is always blocked the same way.
    """
    target = sparse_row_blocks(nnz, n_col_blocks, itemsize, threads)
    if len(row_chunks) >= target:
        return None
    parts = math.ceil(target / len(row_chunks))
    out: list[int] = []
    for size in row_chunks:
        p = max(1, min(parts, size))
        base, extra = divmod(size, p)
        out.extend([base + 1] * extra + [base] * (p - extra))
    return tuple(out)
