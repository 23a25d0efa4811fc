"""Naive references for top-n recommendation: full score matrices sorted row by row."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def naive_topn(S, n, cols=None):
    """Per row: items by (-score, index), excluded (-inf) left out, padded with (-1, -inf)."""
    r, c = S.shape
    cols = np.arange(c) if cols is None else np.asarray(cols)
    idx = np.full((r, n), -1, dtype=np.int64)
    sc = np.full((r, n), -np.inf)
    for i in range(r):
        order = sorted((p for p in range(c) if S[i, p] != -np.inf), key=lambda p: (-S[i, p], cols[p]))[:n]
        idx[i, : len(order)] = cols[order]
        sc[i, : len(order)] = S[i, order]
    return idx, sc


def dense_scores(W, H, ub=None, ib=None, gm=0.0):
    S = np.asarray(W) @ H + gm
    if ub is not None:
        S = S + np.asarray(ub)[:, None]
    if ib is not None:
        S = S + ib[None, :]
    return S


def brute_force(W, H, n, *, ub=None, ib=None, gm=0.0, exclude=None, items=None):
    S = dense_scores(W, H, ub, ib, gm)
    if exclude is not None:
        S[sp.csr_matrix(exclude).nonzero()] = -np.inf
    if items is not None:
        keep = np.zeros(S.shape[1], dtype=bool)
        keep[items] = True
        S[:, ~keep] = -np.inf
    return naive_topn(S, n)


def problem(m=120, n=900, k=4, seed=0, integer=False, biases=True):
    rng = np.random.default_rng(seed)
    if integer:  # exact products: many exact ties
        W, H = rng.integers(0, 3, (m, k)).astype(float), rng.integers(0, 3, (k, n)).astype(float)
    else:
        W, H = rng.random((m, k)), rng.random((k, n))
    ub = rng.normal(size=m) if biases else None
    ib = rng.normal(size=n) if biases else None
    gm = 3.5 if biases else 0.0
    seen = sp.random(m, n, density=0.05, format="csr", random_state=seed + 1)
    return W, H, ub, ib, gm, seen
