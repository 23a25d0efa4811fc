"""dnmf: distributed non-negative matrix factorization on Dask.

``dnmf.NMF`` is a scikit-learn compatible estimator that factorizes a
non-negative matrix X (n_samples, n_features), dense or sparse, in memory or
as a chunked Dask array, into ``W @ H`` block by block on any Dask
scheduler.
"""

from ._version import __version__
from .estimator import NMF, non_negative_factorization

__all__ = ["NMF", "non_negative_factorization", "__version__"]
