"""dnmf: distributed non-negative matrix factorization on Dask.

``dnmf.NMF`` is a scikit-learn compatible estimator that factorizes a
non-negative matrix X (n_samples, n_features), dense or sparse, in memory or
as a chunked Dask array, into ``W @ H`` block by block on any Dask
scheduler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# Public names are imported on first use (PEP 562): Dask workers unpickle
# functions from dnmf.kernels, dnmf.blocked and dnmf.storage, which imports this
# package; importing scikit-learn, pandas and pyarrow there would add about
# 150 MiB to every worker process for nothing.
_LAZY = {
    "NMF": "estimator",
    "load": "estimator",
    "non_negative_factorization": "estimator",
    "MatrixStore": "io",
    "ingest": "io",
    "open_matrix": "io",
    "write_matrix": "io",
    "RankSelection": "rank",
    "select_rank": "rank",
    "RatingsNMF": "ratings",
    "evaluate": "evaluation",
    "train_test_split": "evaluation",
}

if TYPE_CHECKING:  # pragma: no cover
    from .estimator import NMF, load, non_negative_factorization
    from .io import MatrixStore, ingest, open_matrix, write_matrix
    from .rank import RankSelection, select_rank
    from .ratings import RatingsNMF
    from .evaluation import evaluate, train_test_split


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dnmf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "NMF",
    "MatrixStore",
    "RankSelection",
    "RatingsNMF",
    "__version__",
    "evaluate",
    "ingest",
    "load",
    "non_negative_factorization",
    "open_matrix",
    "select_rank",
    "train_test_split",
    "write_matrix",
]
