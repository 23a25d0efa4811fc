"""Generated data for ``dnmf demo`` (the README's first command) and for examples.

:func:`planted_sparse` makes a sparse non-negative matrix with a planted
rank-k structure and power-law row/column popularity, so that a fit has a
known answer: the relative error ``||X - W H||_F / ||X||_F`` of a good rank-k
fit is about the planted noise (0.05).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def planted_sparse(m: int, n: int, density: float, k: int, seed: int = 0) -> sp.csr_matrix:
    """Sparse X ≈ W H of rank k plus 5% noise: each row mixes two of k
    "topics", each topic covers a Zipf-popular set of about density*n/2
    columns (like ratings or word counts)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(m), 2)
    # two distinct topics per row (k >= 2); with k == 1 both entries add up
    first = rng.integers(0, k, size=m)
    second = (first + rng.integers(1, max(k, 2), size=m)) % k
    comps = np.stack([first, second], axis=1).ravel()
    W = sp.csr_matrix((rng.gamma(2.0, 1.0, size=2 * m), (rows, comps)), shape=(m, k))
    per_topic = max(1, int(density * n / 2))
    pop = 1.0 / np.arange(1, n + 1) ** 0.8
    pop /= pop.sum()
    h_rows, h_cols = [], []
    for t in range(k):
        cols = np.unique(rng.choice(n, size=per_topic, p=pop))
        h_rows.append(np.full(cols.shape[0], t))
        h_cols.append(cols)
    h_rows, h_cols = np.concatenate(h_rows), np.concatenate(h_cols)
    H = sp.csr_matrix((rng.gamma(2.0, 1.0, size=h_rows.shape[0]), (h_rows, h_cols)), shape=(k, n))
    X = (W @ H).tocsr()
    X.data *= np.abs(1 + 0.05 * rng.standard_normal(X.data.shape[0]))
    return X
