"""The block canonicaliser: one block of X as a canonical CSR matrix or an ndarray.

Pure NumPy/SciPy (no Dask), so every layer's kernels can import it.
"""

from __future__ import annotations

import functools

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


def aligned(x):
    """``x`` with every buffer aligned for its dtype: ``x`` itself, or a copy.

    Arrays deserialized from a worker-to-worker message can start at any byte
    offset of the message. NumPy computes reductions (``@``, ``vdot``, ``sum``)
    of unaligned arrays in its own loops instead of BLAS, which round
    differently: without this, a fit on a cluster would not be bit-identical
    to the same fit on threads, and would depend on how messages were packed.
    Lists and tuples are aligned element by element; other objects pass through.
    """
    if isinstance(x, np.ndarray):
        return x if x.flags.aligned else x.copy()
    if sp.issparse(x) and x.format in ("csr", "csc"):
        if all(a.flags.aligned for a in (x.data, x.indices, x.indptr)):
            return x
        return type(x)((x.data.copy(), x.indices.copy(), x.indptr.copy()), shape=x.shape)
    if isinstance(x, list):
        return [aligned(v) for v in x]
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(aligned(v) for v in x)
    return x


def aligned_inputs(fn):
    """Decorate a task function so that its array arguments are ``aligned`` first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(aligned(a) for a in args), **{k: aligned(v) for k, v in kwargs.items()})

    return wrapper
