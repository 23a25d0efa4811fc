"""One validation pass over X for NMF: its statistics and the checks scikit-learn makes."""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from . import graph as blocked

#: Largest sum of squares of X that a fit accepts: products of X with the factors and their
#: Grams must stay finite, so X's squares get a wide margin below float64's 1.8e308.
SQ_NORM_LIMIT = 1e250


@dataclass(frozen=True)
class MatrixStats:
    """Summary of X from one validation pass."""

    min: float
    n_nonfinite: int
    sum: float
    sq_norm: float
    nnz: int
    n_entries: int

    @classmethod
    def from_vector(cls, v) -> MatrixStats:
        """From ``kernels.block_stats`` / ``blocked.stats`` output."""
        return cls(
            min=float(v[0]),
            n_nonfinite=int(v[1]),
            sum=float(v[2]),
            sq_norm=float(v[3]),
            nnz=int(v[4]),
            n_entries=int(v[5]),
        )

    @property
    def mean(self) -> float:
        return self.sum / self.n_entries if self.n_entries else 0.0


def compute_stats(X: da.Array, runner) -> MatrixStats:
    """One pass over X's blocks (placed where the runner's cluster holds its row blocks)."""
    return MatrixStats.from_vector(np.asarray(runner.compute(blocked.stats(X, runner.row_owners(X.numblocks[0])))))


def check_values(stats: MatrixStats, whom: str = "NMF (input X)") -> None:
    """Raise the errors scikit-learn raises, with the fix spelled out."""
    if stats.n_nonfinite:
        raise ValueError(
            f"Input X contains NaN or infinity: {stats.n_nonfinite} non-finite "
            f"value(s) passed to {whom}. NMF needs finite values; replace them "
            "(e.g. with 0 for unobserved entries) before fitting."
        )
    if not stats.sq_norm < SQ_NORM_LIMIT:
        raise ValueError(
            f"X passed to {whom} is too large for float64 arithmetic: its sum of squares is "
            f"{stats.sq_norm:g} (limit {SQ_NORM_LIMIT:g}). Scale it first (e.g. X / X.max()); "
            "W scales back by the same factor."
        )
    if stats.min < 0:
        raise ValueError(
            f"Negative values in data passed to {whom}: the smallest is "
            f"{stats.min:g}. NMF needs X >= 0; shift or clip the data "
            "(e.g. X - X.min(), or np.clip(X, 0, None)) before fitting."
        )
