"""Per-block kernels of top-n recommendation and ranking evaluation.

Pure NumPy/SciPy functions on one block (never imports Dask, pandas or
scikit-learn, so workers stay lean): the tasks that ``dnmf.recommend`` and
``dnmf.recommend.evaluation`` build call them.

Order. A top-n list ranks items by decreasing score, ties broken by the
smaller item index, so every result is deterministic. A list that has fewer
than ``n`` eligible items is padded with item ``-1`` and score ``-inf``.
Because this order is total, the top-n of a union of item blocks is the
top-n of the blocks' top-n lists merged in any order.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..engine.blocks import as_block

#: Items per item block when none is given: a (rows x items) score slab of a
#: few MiB, and few enough tasks per row block.
ITEM_BLOCK = 8192
#: Largest score slab (rows x items) computed at once inside a task.
SLAB_ENTRIES = 2**22
#: Columns sampled per row to find a first threshold (see ``select``), in
#: ``SAMPLE_RUNS`` evenly spaced runs of adjacent columns (a strided sample
#: would touch every cache line of the slab).
SAMPLE = 512
SAMPLE_RUNS = 8
#: Rank float64 scores by screening them in float32 first (``select_refined``).
SCREEN_FLOAT32 = True

_LAST = np.iinfo(np.int64).max


# --------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------


def assemble(pieces):
    """One row block from parts of other blocks.

    ``pieces`` is a list of ``[blocks, r0, r1]``: ``blocks`` are the column
    blocks of one source row block (stacked side by side), of which rows
    ``r0:r1`` are kept; the pieces are stacked top to bottom.
    """
    parts = []
    for blocks, r0, r1 in pieces:
        blocks = [as_block(b) for b in blocks]
        if any(sp.issparse(b) for b in blocks):
            row = sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr") if len(blocks) > 1 else blocks[0]
        else:
            row = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
        parts.append(row[r0:r1])
    if len(parts) == 1:
        return as_block(parts[0])
    if any(sp.issparse(p) for p in parts):
        return sp.vstack([sp.csr_matrix(p) for p in parts], format="csr")
    return np.vstack(parts)


def coords(block):
    """``(rows, cols, values)`` of the stored entries of a block, row-major.

    Sparse blocks give their stored entries (whatever their value), dense
    blocks their non-zeros.
    """
    block = as_block(block)
    if sp.issparse(block):
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
        return rows, block.indices.astype(np.int64), block.data
    rows, cols = np.nonzero(block)
    return rows.astype(np.int64), cols.astype(np.int64), block[rows, cols]


def column_slice(block, c0: int, c1: int):
    """Columns ``c0:c1`` of a block (CSR stays CSR)."""
    block = as_block(block)
    if c0 == 0 and c1 == block.shape[1]:
        return block
    return block[:, c0:c1]


def beside(anchor, value):
    """``value``; ``anchor`` is a block the task takes only so that it runs where that block is."""
    return value


def item_block(H, item_bias, cols):
    """``(H[:, cols], item_bias[cols] or None, cols)`` for one item block."""
    cols = np.asarray(cols, dtype=np.int64)
    Hj = np.ascontiguousarray(np.asarray(H)[:, cols])
    ib = None if item_bias is None else np.asarray(item_bias)[cols]
    return Hj, ib, cols


def count_columns(block, n_cols: int) -> np.ndarray:
    """(n_cols,) float64: stored entries per column of a block."""
    _, cols, _ = coords(block)
    return np.bincount(cols, minlength=n_cols).astype(np.float64)


# --------------------------------------------------------------------------
# Selection and merging
# --------------------------------------------------------------------------


def empty(rows: int, n: int, dtype=np.float64):
    """A padded list: item -1, score -inf."""
    return np.full((rows, n), -1, dtype=np.int64), np.full((rows, n), -np.inf, dtype=dtype)


def _finish(idx, sc):
    idx[np.isneginf(sc)] = -1
    return idx, sc


def _sorted_rows(S, n, cols):
    """Stable full sort of each row (ties: smaller column position first)."""
    order = np.argsort(-S, axis=1, kind="stable")[:, :n]
    sc = np.take_along_axis(S, order, axis=1)
    return np.ascontiguousarray(cols[order]), np.ascontiguousarray(sc)


def _exact_positions(S, n):
    """Positions (r, n) of each row's top n, by decreasing value then position.

    One partition per row finds the n-th largest value; of the entries equal
    to it, the leftmost ones needed are kept.
    """
    r, c = S.shape
    T = np.partition(S, c - n, axis=1)[:, c - n]
    gt = T[:, None] < S
    eq = T[:, None] == S
    need = n - np.count_nonzero(gt, axis=1)
    keep = gt | (eq & (np.cumsum(eq, axis=1) <= need[:, None]))
    pos = (np.flatnonzero(keep) % c).reshape(r, n)  # exactly n per row, ascending
    vals = np.take_along_axis(S, pos, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(pos, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _exact_rows(S, n, cols):
    pos, vals = _exact_positions(S, n)
    return cols[pos], vals


def _threshold(S, n):
    """Per row, the n-th largest of a sample of columns: a lower bound of the row's n-th largest.

    Returns ``(t, stride)`` (``stride``: columns per sampled one), or None
    when the sample is too small for ``n``.
    """
    c = S.shape[1]
    run = SAMPLE // SAMPLE_RUNS
    starts = np.linspace(0, c - run, SAMPLE_RUNS).astype(np.int64)
    sample = np.concatenate([S[:, a : a + run] for a in starts], axis=1)
    width = sample.shape[1]
    if 4 * n > width:
        return None
    sample.partition(width - n, axis=1)
    return sample[:, width - n], c / width


def _candidates(S, lower, limit, mask=None):
    """The entries of each row at or above ``lower[row]``, padded.

    Returns ``(light, V, C, heavy)``: ``light`` the rows with at most
    ``limit`` candidates, ``V`` (len(light), w) their candidates' values in
    ascending column order then ``-inf`` pads, ``C`` the columns; ``heavy``
    the other rows. ``mask``: an optional (r, c) bool buffer to reuse.
    """
    r, c = S.shape
    mask = np.greater_equal(S, lower[:, None], out=mask)
    flat = np.flatnonzero(mask)  # row-major: ascending columns per row
    bounds = np.searchsorted(flat, np.arange(r + 1, dtype=np.int64) * c)
    counts = np.diff(bounds)
    is_heavy = counts > limit
    heavy = np.flatnonzero(is_heavy)
    if heavy.size:
        flat = flat[~is_heavy[flat // c]]
        light = np.flatnonzero(~is_heavy)
        counts = counts[light]
        bounds = np.zeros(light.size + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
    else:
        light = np.arange(r)
    w = int(counts.max()) if counts.size else 0
    V = np.full((light.size, w), -np.inf, dtype=S.dtype)
    C = np.zeros((light.size, w), dtype=np.int64)
    if flat.size:
        rr = np.repeat(np.arange(light.size, dtype=np.int64), counts)
        # 1-D destinations: much cheaper than 2-D fancy assignment.
        dest = np.arange(flat.size, dtype=np.int64) - bounds[rr] + rr * w
        V.ravel()[dest] = S.ravel()[flat]
        C.ravel()[dest] = flat - light[rr] * c
    return light, V, C, heavy


def _padded_top(V, C, n, cols):
    """Top n of padded candidates (ascending columns, so ties go to the smaller item)."""
    if V.shape[1] < n:
        V = np.hstack([V, np.full((V.shape[0], n - V.shape[1]), -np.inf, dtype=V.dtype)])
        C = np.hstack([C, np.zeros((C.shape[0], n - C.shape[1]), dtype=np.int64)])
    pos, vals = _exact_positions(V, n)
    return cols[np.take_along_axis(C, pos, axis=1)], vals


def select(S: np.ndarray, n: int, cols: np.ndarray, mask: np.ndarray | None = None):
    """Top ``n`` items of every row of a score slab.

    Parameters
    ----------
    S : ndarray of shape (r, c)
        Scores; excluded entries hold ``-inf``. Not modified.
    n : int
        List length.
    cols : ndarray of shape (c,), int64
        Item index of each column, ascending.

    Returns
    -------
    idx : ndarray of shape (r, n), int64
        Items by decreasing score, ties by smaller index; ``-1`` pads.
    scores : ndarray of shape (r, n)
        Their scores (``-inf`` for pads).

    Notes
    -----
    A full partition of every row costs more than the product that made the
    scores. Instead, the n-th largest score of a sample of the row is a lower
    bound of the row's n-th largest, and only the entries at or above it
    (about ``n * c / SAMPLE`` per row) are ranked. Rows where the bound
    admits too many (ties, heavy exclusion) take the exact path.
    """
    r, c = S.shape
    if r == 0 or n == 0:
        return empty(r, n, S.dtype)
    cols = np.asarray(cols, dtype=np.int64)
    found = _threshold(S, n) if c > 2 * SAMPLE else None
    if found is None:
        if c <= n or c <= 2 * SAMPLE:
            idx, sc = _sorted_rows(S, min(n, c), cols)
            if c < n:
                pad_i, pad_s = empty(r, n - c, S.dtype)
                idx, sc = np.hstack([idx, pad_i]), np.hstack([sc, pad_s])
            return _finish(idx, sc)
        return _finish(*_exact_rows(S, n, cols))
    t, stride = found
    # About n * stride entries pass on average; many more means ties or an
    # excluded sample, where one partition of the row is cheaper.
    light, V, C, heavy = _candidates(S, t, max(4 * n * stride, 64.0), mask)
    idx = np.empty((r, n), dtype=np.int64)
    sc = np.empty((r, n), dtype=S.dtype)
    if heavy.size:
        idx[heavy], sc[heavy] = _exact_rows(S[heavy], n, cols)
    if light.size:
        idx[light], sc[light] = _padded_top(V, C, n, cols)
    return _finish(idx, sc)


#: Unit roundoff of float32.
_U32 = float(np.finfo(np.float32).eps) / 2


def score_error_bound(W: np.ndarray, Hj: np.ndarray) -> np.ndarray:
    """(r,) bound of ``|W32 @ H32 - W @ Hj|`` per row, for float32 copies of float64 factors.

    Rounding the factors (2u) and the float32 product of k terms (k u / (1 -
    k u)) give at most ``(k + 3) u sum_p |W_ip| |H_pj|``; twice that, plus an
    absolute term for subnormals, is returned.
    """
    k = W.shape[1]
    hmax = np.abs(Hj).max(axis=1) if Hj.shape[1] else np.zeros(k)
    return 2.0 * (k + 3) * _U32 * (np.abs(W) @ hmax) + 1e-30


def select_refined(
    S32: np.ndarray,
    n: int,
    cols: np.ndarray,
    W: np.ndarray,
    Hj: np.ndarray,
    bound: np.ndarray,
    mask: np.ndarray | None = None,
):
    """``select`` of the float64 scores ``W @ Hj``, screened with their float32 version.

    Parameters
    ----------
    S32 : ndarray of shape (r, c), float32
        ``W32 @ H32`` with ``-inf`` at excluded entries.
    n, cols : as ``select``
    W : ndarray of shape (r, k), float64
    Hj : ndarray of shape (k, c), float64
    bound : ndarray of shape (r,)
        ``score_error_bound(W, Hj)``: ``|S32 - W @ Hj| <= bound``.

    Returns
    -------
    idx, scores : as ``select``, scores in float64 (recomputed for the n kept).

    Notes
    -----
    An item of the exact top-n has a float64 score at least the n-th largest
    T64, and ``T64 >= T32 - bound`` (the float32 top-n items score at least
    ``T32 - bound`` in float64), so its float32 score is at least
    ``T32 - 2 bound``: every such item is kept as a candidate, and only the
    candidates are scored in float64. The result equals ``select(W @ Hj)``.
    """
    r, c = S32.shape
    found = _threshold(S32, n) if c > 2 * SAMPLE else None
    if found is None or r == 0 or n == 0:
        S = W @ Hj
        S[np.isneginf(S32)] = -np.inf
        return select(S, n, cols)
    cols = np.asarray(cols, dtype=np.int64)
    t, stride = found

    def below(x):  # a float32 value <= x (x float64)
        return np.nextafter(x.astype(np.float32), np.float32(-np.inf))

    light, V, C, heavy = _candidates(S32, below(t - 2 * bound), max(4 * n * stride, 64.0), mask)
    idx = np.empty((r, n), dtype=np.int64)
    sc = np.empty((r, n), dtype=np.float64)
    if heavy.size:
        S = W[heavy] @ Hj
        S[np.isneginf(S32[heavy])] = -np.inf
        idx[heavy], sc[heavy] = _exact_rows(S, n, cols)
    if light.size:
        # The float32 n-th largest of the candidates narrows them to a few per row.
        T32 = (
            np.partition(V, V.shape[1] - n, axis=1)[:, V.shape[1] - n]
            if V.shape[1] >= n
            else np.full(light.size, -np.inf, dtype=np.float32)
        )
        keep = below(T32.astype(np.float64) - 2 * bound[light])[:, None] <= V
        rows, pos = np.nonzero(keep)
        counts = np.bincount(rows, minlength=light.size)
        w = max(int(counts.max()), n)
        bounds = np.zeros(light.size + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        slot = np.arange(rows.size) - bounds[rows]
        cc = C[rows, pos]
        exact = np.einsum("ij,ji->i", W[light[rows]], Hj[:, cc])
        exact[np.isneginf(V[rows, pos])] = -np.inf
        V64 = np.full((light.size, w), -np.inf)
        C64 = np.zeros((light.size, w), dtype=np.int64)
        V64[rows, slot] = exact
        C64[rows, slot] = cc
        idx[light], sc[light] = _padded_top(V64, C64, n, cols)
    return _finish(idx, sc)


def merge(parts, n: int):
    """Top ``n`` of several lists over disjoint item sets.

    Parameters
    ----------
    parts : list of (idx, scores), each of shape (r, n_p)
    n : int

    Returns
    -------
    idx, scores : ndarrays of shape (r, n)
    """
    idx = np.hstack([p[0] for p in parts])
    sc = np.hstack([p[1] for p in parts])
    key = np.where(idx < 0, _LAST, idx)
    order = np.lexsort((key, -sc), axis=-1)[:, :n]
    idx, sc = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sc, order, axis=1)
    if idx.shape[1] < n:
        pad_i, pad_s = empty(idx.shape[0], n - idx.shape[1], sc.dtype)
        idx, sc = np.hstack([idx, pad_i]), np.hstack([sc, pad_s])
    return _finish(np.ascontiguousarray(idx), np.ascontiguousarray(sc))


def merge_list(parts, n: int):
    """``merge`` as a task: parts in the given (fixed) order."""
    return merge(list(parts), n)


# --------------------------------------------------------------------------
# Scoring a block of rows against items
# --------------------------------------------------------------------------


def _exclude_into(S, ex_rows, ex_cols, cols):
    """Set ``S[r, p] = -inf`` where item ``cols[p]`` is excluded for row ``r``.

    ``ex_rows``/``ex_cols`` are the excluded (row, item) pairs of the slab,
    rows relative to the slab.
    """
    if ex_cols.size == 0:
        return
    pos = np.searchsorted(cols, ex_cols)
    pos_c = np.minimum(pos, cols.size - 1)
    hit = (pos < cols.size) & (cols[pos_c] == ex_cols)
    S[ex_rows[hit], pos_c[hit]] = -np.inf


def topn_block(W, user_bias, global_mean, item, exclude, n: int, slab_entries: int = SLAB_ENTRIES):
    """Top-n of a block of rows over one item block.

    Parameters
    ----------
    W : ndarray of shape (r, k)
        The rows' factors.
    user_bias : ndarray of shape (r,) or None
    global_mean : float
    item : tuple (Hj, item_bias_j, cols)
        From ``item_block``: Hj (k, c), item_bias_j (c,) or None, cols (c,)
        the (ascending) item indices.
    exclude : CSR matrix or ndarray of shape (r, n_items), or None
        Items to leave out per row: stored entries (CSR) or non-zeros.
    n : int
    slab_entries : int
        Largest score slab computed at once: the task's memory is bounded by
        it, not by r x c.

    Returns
    -------
    idx : ndarray of shape (r, n), int64
    scores : ndarray of shape (r, n)
        ``global_mean + user_bias + item_bias + W @ Hj`` of the items.
    """
    Hj, ib, cols = item
    W = np.asarray(W)
    r = W.shape[0]
    dtype = np.result_type(W.dtype, Hj.dtype, np.float32 if ib is None else ib.dtype)
    if ib is not None:
        # The item bias rides in the product as one more factor (a column of
        # ones in W): no separate pass over the slab.
        Hj = np.vstack([Hj, ib[None, :]]).astype(dtype, copy=False)
        W1 = np.empty((r, W.shape[1] + 1), dtype=dtype)
        W1[:, :-1] = W
        W1[:, -1] = 1.0
        W = W1
    if exclude is not None:
        ex_r, ex_c, _ = coords(exclude)
        ex_ptr = np.searchsorted(ex_r, np.arange(r + 1))
    step = max(1, slab_entries // max(1, cols.size))
    idx = np.empty((r, n), dtype=np.int64)
    sc = np.empty((r, n), dtype=dtype)
    screen = SCREEN_FLOAT32 and dtype == np.float64 and cols.size > 2 * SAMPLE and r > 0
    if screen:
        # Screen in float32 (half the product's cost and memory traffic), rank
        # the survivors in float64: the same lists as the float64 scores.
        W = W.astype(np.float64, copy=False)
        Hj = Hj.astype(np.float64, copy=False)
        W32, H32 = W.astype(np.float32), Hj.astype(np.float32)
        bound = score_error_bound(W, Hj)
        screen = bool(np.isfinite(W32).all() and np.isfinite(H32).all() and np.isfinite(bound).all())
    # One score buffer and one mask per task, reused by every slab.
    if not screen:
        W, Hj = W.astype(dtype, copy=False), Hj.astype(dtype, copy=False)
    rows = min(step, r)
    buf = np.empty((rows, cols.size), dtype=np.float32 if screen else dtype)
    mask = np.empty((rows, cols.size), dtype=bool)
    for r0 in range(0, r, step):
        r1 = min(r, r0 + step)
        S = buf[: r1 - r0]
        if screen:
            np.matmul(W32[r0:r1], H32, out=S)
        else:
            np.matmul(W[r0:r1], Hj, out=S)
        if exclude is not None:
            a, b = ex_ptr[r0], ex_ptr[r1]
            _exclude_into(S, ex_r[a:b] - r0, ex_c[a:b], cols)
        if screen:
            idx[r0:r1], sc[r0:r1] = select_refined(S, n, cols, W[r0:r1], Hj, bound[r0:r1], mask[: r1 - r0])
        else:
            idx[r0:r1], sc[r0:r1] = select(S, n, cols, mask[: r1 - r0])
    return _add_row_offset(idx, sc, user_bias, global_mean)


def _add_row_offset(idx, sc, user_bias, global_mean):
    """Add the terms that are constant along a row after selection (same order)."""
    if user_bias is not None or global_mean:
        offset = np.full(sc.shape[0], float(global_mean))
        if user_bias is not None:
            offset = offset + np.asarray(user_bias, dtype=np.float64)
        sc = sc + offset[:, None].astype(sc.dtype, copy=False)
    return idx, sc


def add_row_offset(pair, user_bias, global_mean):
    """``_add_row_offset`` as a task on an ``(idx, scores)`` pair."""
    return _add_row_offset(pair[0], pair[1], user_bias, global_mean)


def topn_rows(
    W, user_bias, global_mean, H, item_bias, n: int, *, exclude=None, items=None, item_block_size: int = ITEM_BLOCK
):
    """Top-n for a block of rows over all items, item block after item block.

    The in-task loop form of ``topn_block`` + ``merge`` (for few rows, or
    for one row block of an evaluation). Arguments as ``topn_block``, with
    the full ``H`` (k, n_items) and ``item_bias`` (n_items,) or None, and
    ``items`` the candidate item indices (ascending, unique) or None for all.
    """
    n_items = H.shape[1]
    cand = np.arange(n_items, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64)
    best = None
    for p0 in range(0, max(cand.size, 1), item_block_size):
        part = topn_block(W, None, 0.0, item_block(H, item_bias, cand[p0 : p0 + item_block_size]), exclude, n)
        best = part if best is None else merge([best, part], n)
    return _add_row_offset(*best, user_bias, global_mean)


def pair_scores(W, user_bias, global_mean, H, item_bias, rows, cols, chunk: int = 2**20):
    """``global_mean + user_bias[rows] + item_bias[cols] + W[rows] . H[:, cols]``.

    ``rows`` index ``W``'s rows (and ``user_bias``), ``cols`` H's columns;
    computed ``chunk`` pairs at a time (memory O(chunk * k)).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    W, H = np.asarray(W), np.asarray(H)
    out = np.empty(rows.size, dtype=np.result_type(W.dtype, H.dtype, np.float32))
    for a in range(0, rows.size, chunk):
        r, c = rows[a : a + chunk], cols[a : a + chunk]
        out[a : a + chunk] = np.einsum("ij,ji->i", W[r], H[:, c])
    if item_bias is not None:
        out += np.asarray(item_bias)[cols]
    if user_bias is not None:
        out += np.asarray(user_bias)[rows]
    if global_mean:
        out += global_mean
    return out


# --------------------------------------------------------------------------
# Evaluation kernels (one row block each)
# --------------------------------------------------------------------------

#: Layout of the sum vector of ``ranking_block``.
R_PRECISION, R_RECALL, R_NDCG, R_MAP, R_USERS = range(5)


def relevant(test, threshold=None):
    """CSR pattern (values 1.0) of the relevant test entries of a block.

    Every stored entry, or those with a value at or above ``threshold``.
    """
    test = as_block(test)
    if not sp.issparse(test):
        test = sp.csr_matrix(test)
    keep = np.ones(test.nnz, dtype=bool) if threshold is None else test.data >= threshold
    rows = np.repeat(np.arange(test.shape[0], dtype=np.int64), np.diff(test.indptr))
    out = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], test.indices[keep])), shape=test.shape)
    out.sum_duplicates()
    return out


def hits(top_idx: np.ndarray, rel: sp.csr_matrix) -> np.ndarray:
    """(u, n) bool: whether ``top_idx[u, p]`` is a relevant item of row u."""
    u, n_items = rel.shape
    rows = np.repeat(np.arange(u, dtype=np.int64), np.diff(rel.indptr))
    keys = rows * n_items + rel.indices  # ascending: canonical CSR
    q = np.arange(u, dtype=np.int64)[:, None] * n_items + np.where(top_idx < 0, 0, top_idx)
    pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
    found = (keys[pos] == q) if keys.size else np.zeros(q.shape, dtype=bool)
    return found & (top_idx >= 0)


def ranking_sums(top_idx: np.ndarray, rel: sp.csr_matrix, k: int) -> np.ndarray:
    """Per-row ranking metrics at ``k``, summed over the rows with relevant items.

    Parameters
    ----------
    top_idx : ndarray of shape (u, k), int64
        Each row's top-k list (``-1`` pads count as misses).
    rel : CSR matrix of shape (u, n_items)
        Relevant items (stored entries) per row.
    k : int

    Returns
    -------
    ndarray of shape (5,), float64
        Sums of precision@k (hits / k), recall@k (hits / |relevant|), NDCG@k
        (binary gains, ``1 / log2(rank + 1)``, ideal DCG of
        ``min(|relevant|, k)`` hits), AP@k (sum of precision at each hit /
        ``min(|relevant|, k)``), and the number of rows counted (see
        ``R_*``).
    """
    n_rel = np.diff(rel.indptr)
    users = n_rel > 0
    out = np.zeros(5)
    if not users.any():
        return out
    h = hits(top_idx[users, :k], rel[users]).astype(np.float64)
    n_rel = n_rel[users].astype(np.float64)
    n_hit = h.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k).astype(np.int64) - 1]
    prec_at = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    out[R_PRECISION] = (n_hit / k).sum()
    out[R_RECALL] = (n_hit / n_rel).sum()
    out[R_NDCG] = ((h @ discount) / ideal).sum()
    out[R_MAP] = ((prec_at * h).sum(axis=1) / np.minimum(n_rel, k)).sum()
    out[R_USERS] = users.sum()
    return out


def ranking_block(W, user_bias, global_mean, H, item_bias, test, train, k: int, threshold, item_block_size):
    """Ranking sums and recommended-item counts of one row block.

    Only the rows with relevant test items are scored. Returns
    ``(sums (5,), recommended (n_items,) bool)``.
    """
    rel = relevant(test, threshold)
    users = np.flatnonzero(np.diff(rel.indptr))
    n_items = H.shape[1]
    seen = np.zeros(n_items, dtype=bool)
    if users.size == 0:
        return np.zeros(5), seen
    ex = None if train is None else as_block(train)[users]
    ub = None if user_bias is None else np.asarray(user_bias)[users]
    top, _ = topn_rows(
        np.asarray(W)[users], ub, global_mean, H, item_bias, k, exclude=ex, item_block_size=item_block_size
    )
    seen[top[top >= 0]] = True
    return ranking_sums(top, rel[users], k), seen


def error_block(W, user_bias, global_mean, H, item_bias, test) -> np.ndarray:
    """``[sum of squared errors, sum of absolute errors, count]`` at a block's stored entries."""
    rows, cols, vals = coords(test)
    pred = pair_scores(W, user_bias, global_mean, H, item_bias, rows, cols)
    err = np.asarray(vals, dtype=np.float64) - pred
    return np.array([float(err @ err), float(np.abs(err).sum()), float(err.size)])


def sum_parts(parts):
    """Fixed-order sum of arrays, or of tuples of arrays (bool arrays: or)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(sum_parts([p[t] for p in parts]) for t in range(len(first)))
    out = np.array(first, copy=True)
    for p in parts[1:]:
        if out.dtype == bool:
            out |= p
        else:
            out += p
    return out


# --------------------------------------------------------------------------
# Splitting (one block each; decisions depend on global coordinates only)
# --------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def entry_hash(seed: int, rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, global row, global column): splitmix64.

    The same entry gets the same number whatever the blocking, which makes
    every split independent of how X is blocked.
    """
    with np.errstate(over="ignore"):
        z = (rows.astype(np.uint64) * np.uint64(n_cols) + cols.astype(np.uint64)) * _GOLDEN
        z = z + np.uint64(seed % 2**64) * _M2 + _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _split_by(block, test_mask):
    """(train, test) CSR blocks from a CSR block and a mask over its stored entries."""
    test_mask = np.asarray(test_mask, dtype=bool)

    def part(keep):
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
        out = sp.csr_matrix((block.data[keep], (rows[keep], block.indices[keep])), shape=block.shape)
        out.has_canonical_format = True
        return out

    return part(~test_mask), part(test_mask)


def _csr(block):
    block = as_block(block)
    return block if sp.issparse(block) else sp.csr_matrix(block)


def _timestamps(block, ts):
    """The timestamps of a CSR block's stored entries, from a block of the same pattern."""
    ts = _csr(ts)
    if ts.shape != block.shape or not (
        np.array_equal(ts.indptr, block.indptr) and np.array_equal(ts.indices, block.indices)
    ):
        raise ValueError(
            f"timestamps must have an entry exactly where X has one: a block of X with "
            f"{block.nnz} stored entries met a timestamp block with {ts.nnz} (shape "
            f"{ts.shape} vs {block.shape}). Build the timestamp matrix from the same "
            "(row, column) pairs as X, with no zero timestamps (shift them if needed)."
        )
    return np.asarray(ts.data, dtype=np.float64)


def split_random(block, r0: int, c0: int, n_cols: int, seed: int, test_size: float):
    """Each stored entry goes to test when its hash is below ``test_size``."""
    block = _csr(block)
    rows, cols, _ = coords(block)
    return _split_by(block, entry_hash(seed, rows + r0, cols + c0, n_cols) < test_size)


def split_leave_k_out(block, ts, r0: int, n_cols: int, seed: int, k: int):
    """Per row with more than ``k`` entries, ``k`` go to test.

    The ``k`` with the smallest hashes (random), or with ``ts`` (same pattern
    as ``block``) the ``k`` latest, ties broken by the hash. ``block`` holds
    whole rows (all columns).
    """
    block = _csr(block)
    rows, cols, _ = coords(block)
    h = entry_hash(seed, rows + r0, cols, n_cols)
    keys = (h, rows) if ts is None else (h, -_timestamps(block, ts), rows)
    order = np.lexsort(keys)
    counts = np.diff(block.indptr)
    rank = np.empty(rows.size, dtype=np.int64)
    rank[order] = np.arange(rows.size) - block.indptr[rows[order]]
    return _split_by(block, (rank < k) & (counts[rows] > k))


def split_time(block, ts, cutoff: float):
    """Stored entries with a timestamp at or after ``cutoff`` go to test."""
    block = _csr(block)
    return _split_by(block, _timestamps(block, ts) >= cutoff)


def time_counts(block, ts, edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """For a block: counts of timestamps >= each edge, then min and max of those in [lo, hi).

    One pass of the distributed selection of the time cutoff.
    """
    t = np.sort(_timestamps(_csr(block), ts))
    ge = t.size - np.searchsorted(t, edges, side="left")
    inside = t[np.searchsorted(t, lo, side="left") : np.searchsorted(t, hi, side="left")]
    lo_hi = [inside.min(), inside.max()] if inside.size else [np.inf, -np.inf]
    return np.concatenate([ge.astype(np.float64), lo_hi])


def combine_time_counts(parts):
    """Sum the counts of ``time_counts`` results; min and max of their extremes."""
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out[:-2] += p[:-2]
        out[-2] = min(out[-2], p[-2])
        out[-1] = max(out[-1], p[-1])
    return out


def time_range(block, ts) -> np.ndarray:
    """``[min, max, count]`` of a block's timestamps."""
    t = _timestamps(_csr(block), ts)
    return np.array([t.min(), t.max(), t.size]) if t.size else np.array([np.inf, -np.inf, 0.0])


def combine_time_range(parts):
    """Combine ``time_range`` results: overall min, max and count."""
    arr = np.stack(parts)
    return np.array([arr[:, 0].min(), arr[:, 1].max(), arr[:, 2].sum()])


def split_pick(pair, which: int):
    """Element ``which`` of a task's tuple result."""
    return pair[which]


def slice_cols(block, c0: int, c1: int):
    """Columns ``c0:c1`` of a block (a task)."""
    return column_slice(block, c0, c1)
