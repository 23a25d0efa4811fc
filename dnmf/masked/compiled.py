"""Compiled loops over a band's entries: the "cg" solver of masked NMF and the entries' scores.

The "cg" solver takes a few warm-started projected conjugate-gradient steps per row.

Each row minimises ``½uᵀC u − dᵀu`` over ``u`` (non-negative except the
bias) with ``C = G + Σ_Ω a φφᵀ + diag(l2)`` and ``d = Σ_Ω b φ − l1/2``
(:mod:`dnmf.masked.kernels` has the model). ``C`` is never formed: a
product ``C p`` costs ``G p`` (q², the Gram trick of Hu, Koren & Volinsky)
plus two passes over the row's entries (``φ·p``, then ``Σ a (φ·p) φ``), as
in the conjugate-gradient solver of the ``implicit`` package; here the
steps are projected so that the factors stay non-negative.

One step, per row: the coordinates held at their bound (``u_t = 0`` with a
positive gradient) are left out; the others move along a conjugate
direction (Fletcher–Reeves, restarted when it stops descending) by the
exact line search of the quadratic. Where that step would turn coordinates
negative it is projected (those coordinates set to 0; the gradient updated
by one more pass over the entries with only the clipped coordinates) and
kept if the objective is lower, else cut short at the first coordinate that
reaches 0; either way the next step restarts from the projected gradient.
Projecting matters: cutting alone lets each step zero one coordinate at
most, and at k = 64 on MovieLens ml-latest-small 10 iterations reached
NDCG@10 0.195 that way against 0.357 projected ("als": 0.355). The
objective never increases, each step costs one product ``C p`` (plus the
clipped pass), the start one more; with enough steps the result is the
exact non-negative minimiser (what "als" computes).

The loop over a band's rows is compiled by Numba (a dependency of the
``sparse`` package dnmf uses): NumPy would have to spread every product over
(entries, q) temporaries, several passes over memory where the compiled
loop reads each entry's features once per pass from cache: each row's
entries' rows of the other side are gathered once into a small contiguous
buffer (one random read of V per entry and half-step; the 4 to 8 passes
of the CG steps then read the buffer). The column half also scores the
entries with the new row in that loop (:func:`cg_rows_scored`), for the loss. Each row's
numbers depend on that row's entries only, in a fixed order, so the result
does not depend on the blocking, the threads or the processes.
"""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets the compiler vectorise the dot products (in a fixed
# order, decided at compile time); no other fast-math liberty (NaN and
# infinity keep their meaning: the step limit starts at infinity).
_FLAGS = {"reassoc", "contract"}

#: The longest row whose entries' rows of V are gathered into a buffer (8·q bytes
#: each: 34 MB at q = 33); longer rows read V in place.
BUFFER_ENTRIES = 1 << 17


@numba.njit(cache=True, nogil=True, fastmath=_FLAGS)
def _band(
    indptr, indices, a, b, V, U, G, scale, l2, l1, free, k, biases, steps, has_a, has_g, other_bias, scores, mean, cap
):  # pragma: no cover
    r, q = U.shape
    out = np.zeros((r, q))
    # The scores of the result at the entries, while the row's entries are
    # still in cache: the loss then needs no second gather of V's rows.
    # (scores: 0 none, 1 the features' dot product, 2 the explicit prediction.)
    pred = np.empty(indices.size if scores else 0)
    x = np.empty(q)
    g = np.empty(q)
    d = np.zeros(q)
    Cd = np.empty(q)
    pg = np.empty(q)
    delta = np.empty(q)
    xn = np.empty(q)
    gn = np.empty(q)
    # Each row's rows of V, gathered once into a contiguous buffer that the
    # passes below (4 to 8 of them) then read from cache: on a V of 100 MB
    # or more every pass would otherwise be a random gather from memory.
    # Rows longer than the buffer read V directly: same numbers, same order.
    longest = 0
    for i in range(r):
        longest = max(longest, indptr[i + 1] - indptr[i])
    buf = np.empty((min(longest, cap), q))
    for i in range(r):
        e0, e1 = indptr[i], indptr[i + 1]
        if e1 == e0:
            continue  # no observations: 0 is the minimiser
        buffered = e1 - e0 <= cap
        if buffered:
            for e in range(e0, e1):
                jv = indices[e]
                for t in range(q):
                    buf[e - e0, t] = V[jv, t]
            F = buf
        else:
            F = V
        for t in range(q):
            x[t] = U[i, t] if (free[t] or U[i, t] > 0.0) else 0.0
        # g = C x − d
        for t in range(q):
            g[t] = scale[i] * l2[t] * x[t] + 0.5 * (scale[i] * l1[t])
        if has_g:
            for u in range(k):
                xu = x[u]
                for t in range(k):
                    g[t] += G[u, t] * xu
        for e in range(e0, e1):
            j = e - e0 if buffered else indices[e]
            s = 0.0
            for t in range(k):
                s += F[j, t] * x[t]
            if biases:
                s += x[k]
            # b[e] − F[j, k]: the other side's bias, taken here from the row
            # this pass reads anyway (a NumPy gather would be a pass of its own).
            target = b[e] - F[j, k] if other_bias else b[e]
            w = (a[e] * s if has_a else s) - target
            for t in range(k):
                g[t] += w * F[j, t]
            if biases:
                g[k] += w
        gg_prev = 0.0
        for _ in range(steps):
            gg = 0.0
            for t in range(q):
                pg[t] = g[t] if (free[t] or x[t] > 0.0 or g[t] < 0.0) else 0.0
                gg += pg[t] * pg[t]
            if gg == 0.0:
                break  # the minimiser
            beta = gg / gg_prev if gg_prev > 0.0 else 0.0
            dg = 0.0
            for t in range(q):
                d[t] = beta * d[t] - pg[t] if pg[t] != 0.0 or free[t] or x[t] > 0.0 else 0.0
                dg += d[t] * g[t]
            if dg >= 0.0:  # not a descent direction (the free set changed): restart
                dg = 0.0
                for t in range(q):
                    d[t] = -pg[t]
                    dg += d[t] * g[t]
            # Cd = C d
            for t in range(q):
                Cd[t] = scale[i] * l2[t] * d[t]
            if has_g:
                for u in range(k):
                    du = d[u]
                    for t in range(k):
                        Cd[t] += G[u, t] * du
            for e in range(e0, e1):
                j = e - e0 if buffered else indices[e]
                s = 0.0
                for t in range(k):
                    s += F[j, t] * d[t]
                if biases:
                    s += d[k]
                w = a[e] * s if has_a else s
                for t in range(k):
                    Cd[t] += w * F[j, t]
                if biases:
                    Cd[k] += w
            dCd = 0.0
            for t in range(q):
                dCd += d[t] * Cd[t]
            step = -dg / dCd if dCd > 0.0 else 0.0
            limit = np.inf
            for t in range(q):
                if d[t] < 0.0 and not free[t]:
                    limit = min(limit, x[t] / -d[t])
            cut = limit < step
            if cut:
                # The projected step x' = max(x + step·d, 0): its gradient is
                # g + step·Cd + Cδ with δ the clipped amounts (δ ≥ 0, few).
                for t in range(q):
                    full = x[t] + step * d[t]
                    delta[t] = -full if (full < 0.0 and not free[t]) else 0.0
                    xn[t] = full + delta[t]
                    gn[t] = g[t] + step * Cd[t] + scale[i] * l2[t] * delta[t]
                if has_g:
                    for u in range(k):
                        du = delta[u]
                        if du != 0.0:
                            for t in range(k):
                                gn[t] += G[u, t] * du
                for e in range(e0, e1):
                    j = e - e0 if buffered else indices[e]
                    s = 0.0
                    for t in range(k):
                        if delta[t] != 0.0:
                            s += F[j, t] * delta[t]
                    w = a[e] * s if has_a else s
                    for t in range(k):
                        gn[t] += w * F[j, t]
                    if biases:
                        gn[k] += w
                # f(x') − f(x) = Δ·g + ½ Δ·(g' − g), Δ = x' − x: keep x' if it is lower.
                change = 0.0
                for t in range(q):
                    dx = xn[t] - x[t]
                    change += dx * (g[t] + 0.5 * (gn[t] - g[t]))
                if change <= 0.0:
                    for t in range(q):
                        x[t] = xn[t]
                        g[t] = gn[t]
                    gg_prev = 0.0
                    continue
            if cut:
                step = limit
            for t in range(q):
                hit = cut and d[t] < 0.0 and not free[t] and x[t] / -d[t] <= limit
                x[t] += step * d[t]
                g[t] += step * Cd[t]
                if hit or (x[t] < 0.0 and not free[t]):
                    x[t] = 0.0
            gg_prev = 0.0 if cut else gg
        for t in range(q):
            out[i, t] = x[t]
        if scores:
            for e in range(e0, e1):
                j = e - e0 if buffered else indices[e]
                s = 0.0
                for t in range(k):
                    s += F[j, t] * x[t]
                if scores == 2:
                    # In the order of dnmf.masked.kernels' prediction: ((s + mean) + own bias) + other bias.
                    s = s + mean
                    if biases:
                        s = s + x[k]
                        s = s + F[j, k]
                pred[e] = s
    return out, pred


def cg_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    a: np.ndarray | None,
    b: np.ndarray,
    V: np.ndarray,
    U: np.ndarray,
    G: np.ndarray | None,
    scale: np.ndarray,
    l2: np.ndarray,
    l1: np.ndarray,
    free: np.ndarray,
    k: int,
    biases: bool,
    steps: int,
    *,
    other_bias: bool = False,
) -> np.ndarray:
    """``steps`` projected conjugate-gradient steps on every row's quadratic, from ``U``.

    Parameters
    ----------
    indptr : ndarray of shape (r + 1,)
        The band's CSR row pointers.
    indices : ndarray of shape (nnz,)
        The band's column indices (rows of ``V``).
    a : ndarray of shape (nnz,) or None
        The curvature weight of each entry (None: all 1, explicit ratings).
    b : ndarray of shape (nnz,)
        The linear weight of each entry (explicit: the target).
    V : ndarray of shape (n, q)
        The other side: features in columns ``:k``, its bias in column ``k``
        (unused: the feature of a row's own bias is 1).
    U : ndarray of shape (r, q)
        The warm start (negative factor entries count as 0).
    G : ndarray of shape (k, k) or None
        The Gram of the other side (implicit feedback), else None.
    scale : ndarray of shape (r,)
        Each row's penalty multiplier.
    l2, l1 : ndarray of shape (q,)
        The penalty weights of the coordinates: row ``i`` has
        ``scale[i]·l2`` and ``scale[i]·l1``.
    free : ndarray of bool, shape (q,)
        Unconstrained coordinates (the bias).
    k : int
    biases : bool
        Whether column ``k`` is a bias (``q = k + 1``).
    steps : int
    other_bias : bool, default=False
        Whether the target of entry (i, j) is ``b[e] − V[j, k]`` (explicit
        ratings with biases: the other side's bias is taken off in the loop).

    Returns
    -------
    ndarray of shape (r, q), float64
        Rows without entries are 0.
    """
    out, _ = _run(indptr, indices, a, b, V, U, G, scale, l2, l1, free, k, biases, steps, other_bias, 0, 0.0)
    return out


def cg_rows_scored(
    indptr: np.ndarray,
    indices: np.ndarray,
    a: np.ndarray | None,
    b: np.ndarray,
    V: np.ndarray,
    U: np.ndarray,
    G: np.ndarray | None,
    scale: np.ndarray,
    l2: np.ndarray,
    l1: np.ndarray,
    free: np.ndarray,
    k: int,
    biases: bool,
    steps: int,
    *,
    other_bias: bool = False,
    mean: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cg_rows` and the new rows' scores at the band's entries, in one pass.

    Parameters are those of :func:`cg_rows`, and

    mean : float or None
        None: the scores are the dot products ``x_i[:k]·V[j, :k]``
        (what :func:`entry_scores` gives). A float: the explicit
        predictions ``x_i[:k]·V[j, :k] + mean`` plus, with ``biases``, the
        row's bias ``x_i[k]`` and the other side's ``V[j, k]``.

    Returns
    -------
    U_new : ndarray of shape (r, q), float64
    scores : ndarray of shape (nnz,), float64
    """
    mode, value = (1, 0.0) if mean is None else (2, float(mean))
    return _run(indptr, indices, a, b, V, U, G, scale, l2, l1, free, k, biases, steps, other_bias, mode, value)


def _index_array(x: np.ndarray) -> np.ndarray:
    # int32 indices stay int32 (Numba compiles for either): half the bytes per pass.
    return np.ascontiguousarray(x) if x.dtype in (np.int32, np.int64) else np.ascontiguousarray(x, dtype=np.int64)


def _run(indptr, indices, a, b, V, U, G, scale, l2, l1, free, k, biases, steps, other_bias, scores, mean):
    f64 = np.float64
    return _band(
        _index_array(indptr),
        _index_array(indices),
        np.zeros(1) if a is None else np.ascontiguousarray(a, dtype=f64),
        np.ascontiguousarray(b, dtype=f64),
        np.ascontiguousarray(V, dtype=f64),
        np.ascontiguousarray(U, dtype=f64),
        np.zeros((1, 1)) if G is None else np.ascontiguousarray(G, dtype=f64),
        np.ascontiguousarray(scale, dtype=f64),
        np.ascontiguousarray(l2, dtype=f64),
        np.ascontiguousarray(l1, dtype=f64),
        np.ascontiguousarray(free, dtype=np.bool_),
        int(k),
        bool(biases),
        int(steps),
        a is not None,
        G is not None,
        bool(other_bias),
        int(scores),
        float(mean),
        int(BUFFER_ENTRIES),
    )


@numba.njit(cache=True, nogil=True, fastmath=_FLAGS)
def _scores(indptr, indices, U, V, k):  # pragma: no cover
    s = np.empty(indices.size)
    for i in range(indptr.size - 1):
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            acc = 0.0
            for t in range(k):
                acc += U[i, t] * V[j, t]
            s[e] = acc
    return s


def entry_scores(indptr: np.ndarray, indices: np.ndarray, U: np.ndarray, V: np.ndarray, k: int) -> np.ndarray:
    """``U[i, :k] · V[j, :k]`` at every entry (i, j) of a CSR band: (nnz,) float64.

    One pass over the entries, no gathered (entries, k) copies of the factors.
    """
    return _scores(
        np.ascontiguousarray(indptr, dtype=np.int64),
        np.ascontiguousarray(indices, dtype=np.int64),
        np.ascontiguousarray(U, dtype=np.float64),
        np.ascontiguousarray(V, dtype=np.float64),
        int(k),
    )
