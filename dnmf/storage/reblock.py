"""Finer row blocks for a sparse store at fit time, without rewriting it.

A store written with too few row blocks for the cluster that fits it (e.g.
by an older dnmf, or on a smaller machine) leaves threads idle. The fit can
cut each stored block into row slices (:func:`reblock_rows`): one task reads
and decodes the stored block, and one task per slice takes its rows. The
slices are exactly the blocks a store written with the finer blocking would
hold (canonical CSR of the same dtype), so the factors are bit-identical to
a fit of such a store. The arrays keep the ``dnmf-store`` key prefix: they
are re-read from storage on every pass, never persisted.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .chunking import refined_row_chunks

#: Key prefix of the sliced blocks (starts like every store-backed key).
REBLOCK_PREFIX = "dnmf-store-rows-"


def row_slice(block: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows [start, stop) of a canonical CSR block, as canonical CSR."""
    out = block[start:stop]
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def reblock_rows(X: da.Array, row_chunks: tuple[int, ...]) -> da.Array:
    """X with rows in ``row_chunks``, each a slice of one of X's row blocks.

    Parameters
    ----------
    X : dask.array.Array
        A sparse store's array (CSR blocks).
    row_chunks : tuple of int
        New row block sizes; every stored row block must be a union of
        consecutive new ones.

    Raises
    ------
    ValueError
        If a new block would straddle two stored blocks.
    """
    old = np.cumsum((0,) + tuple(X.chunks[0]))
    new = np.cumsum((0,) + tuple(row_chunks))
    if new[-1] != old[-1] or not np.isin(old, new).all():
        raise ValueError(
            f"row_chunks {row_chunks} must split each of X's row blocks {X.chunks[0]} into consecutive parts."
        )
    name = REBLOCK_PREFIX + tokenize(X.name, row_chunks)
    layer = {}
    for i, (r0, r1) in enumerate(zip(new[:-1], new[1:], strict=True)):
        src = int(np.searchsorted(old, r0, side="right") - 1)
        start, stop = int(r0 - old[src]), int(r1 - old[src])
        for j in range(len(X.chunks[1])):
            layer[(name, i, j)] = (row_slice, (X.name, src, j), start, stop)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[X])
    return da.Array(graph, name, chunks=(tuple(int(c) for c in row_chunks), X.chunks[1]), meta=X._meta)


def reblock_for(X: da.Array, nnz: int, threads: int) -> da.Array:
    """X re-blocked by :func:`~dnmf.storage.chunking.refined_row_chunks` for ``threads``, or X itself."""
    chunks = refined_row_chunks(X.chunks[0], nnz, len(X.chunks[1]), np.dtype(X.dtype).itemsize, threads)
    return X if chunks is None else reblock_rows(X, chunks)
