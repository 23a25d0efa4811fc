"""dnmf: distributed non-negative matrix factorization on Dask.

``dnmf.NMF`` is a scikit-learn compatible estimator that factorizes a
non-negative matrix X (n_samples, n_features), dense or sparse, in memory or
as a chunked Dask array, into ``W @ H`` block by block on any Dask
scheduler.
"""

from ._version import __version__
from .estimator import NMF, load, non_negative_factorization
from .io import MatrixStore, ingest, open_matrix, write_matrix

__all__ = [
    "NMF",
    "MatrixStore",
    "__version__",
    "ingest",
    "load",
    "non_negative_factorization",
    "open_matrix",
    "write_matrix",
]
