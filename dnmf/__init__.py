"""dnmf: distributed non-negative matrix factorization on Dask.

``dnmf.NMF`` is a scikit-learn compatible estimator that factorizes a
non-negative matrix X (n_samples, n_features), dense or sparse, in memory or
as a chunked Dask array, into ``W @ H`` block by block on any Dask
scheduler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._moved import install as _install_moved_modules
from ._version import __version__

# Public names are imported on first use (PEP 562): Dask workers unpickle
# functions from dnmf.nmf.kernels, dnmf.nmf.graph and dnmf.storage, which import
# this package; importing scikit-learn, pandas and pyarrow there would add about
# 150 MiB to every worker process for nothing.
_LAZY = {
    "NMF": "nmf.estimator",
    "non_negative_factorization": "nmf.estimator",
    "load": "base.estimator",
    "MatrixStore": "storage.arrays",
    "ingest": "storage.arrays",
    "open_matrix": "storage.arrays",
    "write_matrix": "storage.arrays",
    "RankSelection": "nmf.selection",
    "select_rank": "nmf.selection",
    "RatingsNMF": "masked.estimator",
    "evaluate": "recommend.evaluation",
    "train_test_split": "recommend.evaluation",
    "tune": "recommend.tuning",
}

# Modules that moved when the package was split into layers stay importable
# under their old paths (dnmf.estimator, dnmf.blocked, ...).
_install_moved_modules()

if TYPE_CHECKING:  # pragma: no cover
    from .base.estimator import load
    from .masked.estimator import RatingsNMF
    from .nmf.estimator import NMF, non_negative_factorization
    from .nmf.selection import RankSelection, select_rank
    from .recommend.evaluation import evaluate, train_test_split
    from .recommend.tuning import tune
    from .storage.arrays import MatrixStore, ingest, open_matrix, write_matrix


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
    "tune",
    "write_matrix",
]
