"""The block canonicaliser: one block of X as a canonical CSR matrix or an ndarray.

Pure NumPy/SciPy (no Dask), so every layer's kernels can import it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def as_block(x):
    """One block as a canonical CSR matrix (SciPy or pydata ``sparse`` input) or an ndarray."""
    if type(x).__module__.split(".")[0] == "sparse" and hasattr(x, "to_scipy_sparse"):
        x = x.to_scipy_sparse()
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        return x
    return np.asarray(x)
