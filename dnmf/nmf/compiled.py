"""NMF's compiled loops: the coordinate-descent (HALS) sweep, and NNDSVD's initial factors.

The sweep, :func:`hals_rows`:

Each row ``w`` of the block solves its own NNLS problem
``min ½ wᵀG w − bᵀw, w ≥ 0`` (``G`` the other factor's Gram plus ``l2`` on
its diagonal, ``b`` the row of ``X Hᵀ`` minus ``l1``) by cyclic coordinate
descent, one coordinate at a time in the order ``perm``: scikit-learn's
``_update_cdnmf_fast``, with one difference in how the gradient is found.
scikit-learn recomputes ``(G w)_t`` from scratch for every coordinate, a
k-long dot product whose additions form one dependency chain. Here the
row's gradient ``g = G w − b`` is formed once per row and kept current:
when ``w_t`` moves by ``d``, ``g += d · G[:, t]``, a k-long update with
independent lanes that the compiler vectorises. The per-row work is the
same (about ``2k²`` multiply-adds), but it runs several times faster. The
loop avoids branches that the data decides, because most of W sits at the
bound (57–74% zeros in the benchmarks' fits) and such a test was
mispredicted about every other time, half the sweep's time: a row's
gradient is formed from a list of its non-zeros made without a branch, and
the update is made even when ``d = 0``, since adding ``0 · G[:, t]``
(G ≥ 0) leaves ``g`` as it was. The only trace of the latter is the sign
of a zero: a ``-0.0`` given in W may come out as ``+0.0`` (dnmf's
initialisations never make ``-0.0``). The iterates agree with
scikit-learn's to rounding (tests compare them with a transcription of its
loop) but not bit for bit.

The loop runs in plain IEEE arithmetic (no fast-math): vectorising the
elementwise update does not change its results, so they are the same on any
CPU and for any SIMD width. Each row's numbers depend only on that row and
on ``G``, so the result does not depend on the blocking, the threads or the
processes; the GIL is released (two threads sweep two blocks at once).

:func:`nndsvd_fold` makes a block of NNDSVD's initial factor from the
singular vectors in one pass (NumPy took six, with float64 temporaries:
0.9 s of the 50M-rating case's setup, 0.05 s this way), and
:func:`column_squares` sums a block's squared positive or negative parts
per column, for the norms that scale them, in one pass too. Both give
NumPy's bits.

Numba is a dependency of ``sparse``, which dnmf already uses; this module is
imported only when a coordinate-descent sweep or an NNDSVD initialisation
runs.
"""

from __future__ import annotations

import numba
import numpy as np

#: Rows swept together, coordinate by coordinate. A row's sweep is one chain of
#: dependent steps (each coordinate's gradient waits for the previous update);
#: interleaving a few rows' chains keeps the CPU busy while each waits. The
#: rows' numbers do not depend on it; the violation's order of summation does.
GROUP_ROWS = 8


@numba.njit(cache=True, nogil=True)
def hals_rows(W, G, Gt, B, l1, perm, n_inner, inner_tol2):  # pragma: no cover (compiled)
    """Sweep every row of ``W`` in place; return the first sweep's violation.

    Parameters
    ----------
    W : ndarray of shape (r, k), C-contiguous
        The block, updated in place.
    G : ndarray of shape (k, k)
        The Gram with ``l2`` added to its diagonal.
    Gt : ndarray of shape (k, k), C-contiguous
        ``G.T`` (its rows are ``G``'s columns, read contiguously).
    B : ndarray of shape (r, k)
        ``X Hᵀ`` for these rows, float32 or float64: each entry is widened
        where it is read, so a float32 block needs no float64 copy (twice
        its size, per task).
    l1 : float
        The L1 weight, subtracted from ``B`` in float64.
    perm : ndarray of int, shape (k,)
        The order of the coordinates, the same in every sweep.
    n_inner : int
        Largest number of sweeps per row.
    inner_tol2 : float
        A row stops sweeping once a sweep's squared change is at most
        ``inner_tol2`` times its first sweep's (Gillis & Glineur's rule).

    Returns
    -------
    violation : float
        ``Σ |projected gradient|`` met during the first sweep, scikit-learn's measure.
    """
    r, k = W.shape
    g = np.empty((GROUP_ROWS, k))  # the rows' gradients, float64 whatever W's dtype
    d = np.zeros(GROUP_ROWS, dtype=W.dtype)  # each row's move along the current coordinate
    nonzero = np.zeros(k, dtype=np.intp)  # a row's non-zero coordinates
    first = np.zeros(GROUP_ROWS)
    change = np.zeros(GROUP_ROWS)
    active = np.zeros(GROUP_ROWS, dtype=np.bool_)
    violation = 0.0
    for i0 in range(0, r, GROUP_ROWS):
        nr = min(GROUP_ROWS, r - i0)
        for a in range(nr):
            i = i0 + a
            for j in range(k):
                g[a, j] = -(B[i, j] - l1)  # B[i, j] - 0.0 is B[i, j], sign of zero included
            # Most of W is 0, so a test per coordinate was mispredicted about every other time:
            # the non-zeros are listed first without a branch, then only they are added.
            c = 0
            for q in range(k):
                nonzero[c] = q
                c += W[i, q] != 0
            for p in range(c):
                q = nonzero[p]
                wq = W[i, q]
                for j in range(k):
                    g[a, j] += wq * Gt[q, j]
            active[a] = True
        for sweep in range(n_inner):
            for a in range(nr):
                change[a] = 0.0
            for s in range(k):
                t = perm[s]
                h = G[t, t]
                if sweep == 0:
                    for a in range(nr):
                        grad = g[a, t]
                        violation += abs(min(grad, 0.0) if W[i0 + a, t] == 0 else grad)
                if h == 0:
                    continue
                for a in range(nr):
                    i = i0 + a
                    old = W[i, t]
                    if active[a]:
                        W[i, t] = max(old - g[a, t] / h, 0.0)
                    d[a] = W[i, t] - old  # what was stored (W may be float32)
                # No test for d = 0 (same reason): adding 0·G[:, t] (G ≥ 0) leaves g as it is.
                for a in range(nr):
                    da = d[a]
                    for j in range(k):
                        g[a, j] += da * Gt[t, j]
                    change[a] += da * da
            more = False
            for a in range(nr):
                if active[a]:
                    if sweep == 0:
                        first[a] = change[a]
                        active[a] = first[a] != 0
                    else:
                        active[a] = change[a] > inner_tol2 * first[a]
                    more = more or active[a]
            if not more:
                break
    return violation


@numba.njit(cache=True, nogil=True)
def nndsvd_fold(U, coef_pos, coef_neg, eps, fill, has_fill, out):  # pragma: no cover (compiled)
    """``out = max(U, 0)·coef_pos + max(−U, 0)·coef_neg``, below ``eps`` set to 0, zeros to ``fill``.

    Column ``j`` takes ``coef_pos[j]`` and ``coef_neg[j]``. The arithmetic is
    float64 whatever ``U``'s and ``out``'s types, in NumPy's order, so the
    result is bit for bit that of ``np.maximum(U, 0) * coef_pos +
    np.maximum(-U, 0) * coef_neg`` thresholded, filled and cast to ``out``'s
    type (a NaN passes through as NumPy's maximum passes it).

    Parameters
    ----------
    U : ndarray of shape (r, k)
    coef_pos, coef_neg : ndarray of shape (k,), float64
    eps : float
    fill : float
        Used where the result is 0 if ``has_fill``.
    has_fill : bool
    out : ndarray of shape (r, k)
        Written; its dtype is the result's.
    """
    r, k = U.shape
    for i in range(r):
        for j in range(k):
            u = np.float64(U[i, j])
            pos = u if not u < 0.0 else 0.0  # np.maximum(u, 0): NaN and -0.0 stay
            neg = -u
            neg = neg if not neg < 0.0 else 0.0
            v = pos * coef_pos[j] + neg * coef_neg[j]
            if v < eps:
                v = 0.0
            if has_fill and v == 0.0:
                v = fill
            out[i, j] = v


@numba.njit(cache=True, nogil=True)
def column_squares(U, negative, out):  # pragma: no cover (compiled)
    """``out[j] += Σ_i max(±U[i, j], 0)²``, rows in order, in ``U``'s own type.

    The same bits as NumPy's ``np.sum(np.maximum(±U, 0) ** 2, axis=0)``: a sum
    over the rows of a C-ordered block adds row after row, and ``out`` (of
    ``U``'s dtype, zeros) accumulates in that type as NumPy does.
    """
    r, k = U.shape
    for i in range(r):
        for j in range(k):
            v = -U[i, j] if negative else U[i, j]
            p = v if not v < 0 else v - v  # np.maximum(v, 0) in v's type (v - v: a zero of it)
            out[j] += p * p
