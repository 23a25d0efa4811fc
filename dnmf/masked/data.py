"""RatingsNMF's input: the observed ratings as bands, their blocking, ID maps and summary."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import caller
from ..base import inputs
from ..engine.graph import is_store_backed
from . import graph as masked_graph
from . import kernels as masked

#: With chunks="auto", in-memory inputs get one band per this many ratings (up to 4).
AUTO_BAND_NNZ = 16384


class RatingsData:
    """X in the form the fit needs: its bands, blocking, IDs and summary."""

    def __init__(self):
        self.csr = None  # in-memory observed entries
        self.dask = None  # a Dask X
        self.store_path = None
        self.client = None
        self.row_ids = self.col_ids = None
        self._bands = None

    @classmethod
    def prepare(cls, X, chunks, client, storage_options=None) -> RatingsData:
        self = cls()
        self.client = client
        source = inputs.resolve_input(X, storage_options)
        X = source.data
        self.store_path, self.row_ids, self.col_ids = source.store, source.row_ids, source.col_ids
        if isinstance(X, da.Array):
            if X.ndim != 2 or any(math.isnan(s) for s in X.shape):
                raise ValueError(
                    f"X must be a 2-D Dask array with known chunk sizes; got shape {X.shape}. "
                    "Call X.compute_chunk_sizes() first."
                )
            self.dask = X
            self.shape = tuple(int(s) for s in X.shape)
            self.row_chunks, self.col_chunks = X.chunks
        else:
            self.csr = masked.observed(as_2d(X))
            self.shape = self.csr.shape
            nbytes = self.csr.data.nbytes + self.csr.indices.nbytes
            if isinstance(chunks, str) and chunks == "auto":
                # A masked step costs O(q²) per rating, far more than a plain
                # product: split even small inputs (up to 4 bands, a function
                # of X alone, so results do not depend on the machine).
                parts = max(1, math.ceil(nbytes / inputs.BLOCK_BYTES), min(4, math.ceil(self.csr.nnz / AUTO_BAND_NNZ)))
                self.row_chunks = inputs.even_split(self.shape[0], min(parts, self.shape[0]))
                self.col_chunks = inputs.even_split(self.shape[1], min(parts, self.shape[1]))
            else:
                self.row_chunks, self.col_chunks = inputs.memory_chunks(chunks, self.shape, nbytes)
        if 0 in self.shape:
            raise ValueError(
                f"Found a ratings matrix of shape {self.shape}; RatingsNMF needs at least one user "
                "and one item. Check how X was built or filtered."
            )
        m, n = self.shape
        self.row_ids = pd.RangeIndex(m) if self.row_ids is None else self.row_ids
        self.col_ids = pd.RangeIndex(n) if self.col_ids is None else self.col_ids
        return self

    @property
    def in_memory(self) -> bool:
        return self.csr is not None

    @property
    def single_block(self) -> bool:
        return len(self.row_chunks) == 1 and len(self.col_chunks) == 1

    @property
    def seen(self):
        return self.csr if self.csr is not None else (None if self.store_path else self.dask)

    def summary(self, runner):
        if self.csr is not None:
            return masked.block_summary(self.csr)
        return np.asarray(runner.compute(masked_graph.summary(self.dask, runner.row_owners(self.dask.numblocks[0]))))[0]

    def confidence_total(self, runner, p: masked.MaskedParams) -> masked.ExactSum:
        """The exact sum of the implicit confidences at the observed entries (one pass over X)."""
        if self.csr is not None:
            return masked.block_confidence(self.csr, p)
        owners = runner.row_owners(self.dask.numblocks[0])
        return np.asarray(runner.compute(masked_graph.confidence_total(self.dask, p, owners)))[0]

    def bands(self, runner, reload: bool = False):
        if self._bands is not None and not reload:
            return self._bands
        if self.csr is not None:
            self._bands, self._R, self._C = masked_graph.bands_from_memory(
                self.csr, self.row_chunks, self.col_chunks, client=runner.client
            )
        elif self.store_path is not None or is_store_backed(self.dask):
            self._bands, self._R, self._C = (
                masked_graph.bands_from_store(self.dask, read_ahead=runner.read_ahead()),
                None,
                None,
            )
        else:
            self._bands, self._R, self._C = masked_graph.persist_bands(self.dask, runner)
        return self._bands

    def item_counts(self, runner) -> np.ndarray:
        if self.csr is not None:
            return np.bincount(self.csr.indices, minlength=self.shape[1]).astype(np.int64)
        return np.asarray(runner.compute(masked_graph.col_counts(self._bands)))


def as_2d(X):
    X = inputs.resolve_input(X).data
    if sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (users × items); got shape {X.shape}.")
        return X
    if isinstance(X, pd.DataFrame):
        inputs.check_frame_columns(X, "RatingsNMF")
        X = X.to_numpy(dtype=np.float64, na_value=np.nan)
    a = np.asarray(X)
    if a.dtype == np.float16:
        caller.warn("RatingsNMF computes in float32 or float64; float16 X is upcast to float32.")
        a = a.astype(np.float32)
    if a.ndim != 2:
        raise ValueError(
            f"X must be 2-D (users × items); got shape {a.shape}. For one user's ratings use X.reshape(1, -1)."
        )
    return a


#: Largest |rating| accepted: squares and sums of ratings must stay far from float64's 1.8e308.
VALUE_LIMIT = 1e120


def check_summary(summ, feedback: str, allow_empty: bool = False) -> None:
    _, nnz, vmin, vmax, n_bad = summ
    if n_bad:
        raise ValueError(
            f"X holds {n_bad} infinite or NaN stored value(s). Observed ratings must be finite; "
            "drop those entries (for a dense X, NaN marks a missing rating, infinity is an error)."
        )
    largest = max(abs(vmin), abs(vmax)) if nnz else 0.0
    if largest > VALUE_LIMIT:
        raise ValueError(
            f"X holds values as large as {largest:g}, too large for float64 arithmetic (limit "
            f"{VALUE_LIMIT:g}). Scale the ratings first (e.g. X / abs(X).max())."
        )
    if nnz == 0 and not allow_empty:
        raise ValueError(
            "X has no observed entries (a sparse X with no stored values, or an all-NaN dense X); "
            "there is nothing to fit."
        )
    if feedback == "implicit" and vmin < 0:
        raise ValueError(
            f"Negative values in X with feedback='implicit': the smallest is {vmin:g}. Implicit "
            "feedback is a count or strength >= 0 (confidence 1 + confidence·x); use "
            "feedback='explicit' for signed ratings."
        )


def dask_rows(X: da.Array, rows: np.ndarray) -> sp.csr_matrix:
    """The given rows of a Dask X of CSR/NumPy blocks as one CSR matrix (reads their row bands)."""
    import dask

    off = np.concatenate([[0], np.cumsum(X.chunks[0])])
    block_of = np.searchsorted(off, rows, side="right") - 1
    if rows.size == 0:
        return sp.csr_matrix((0, X.shape[1]))
    bands = {}
    for b in np.unique(block_of):
        blocks = dask.compute(*[X.blocks[int(b), j] for j in range(X.numblocks[1])])
        bands[int(b)] = masked.row_band(blocks)
    return sp.vstack([bands[int(b)][int(r - off[b])] for r, b in zip(rows, block_of, strict=True)], format="csr")


def map_ids(block, ids, fill):
    out = np.empty(block.shape, dtype=ids.dtype if fill == -1 else object)
    valid = block >= 0
    out[valid] = ids[block[valid]]
    out[~valid] = fill
    return out


def is_str(x) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and any(isinstance(v, str) for v in x))
