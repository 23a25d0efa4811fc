"""Evaluating recommenders: seeded train/test splits and accuracy metrics.

- :func:`train_test_split`: random entries, per-user leave-k-out (random or
  latest), or a global time cutoff. Every decision depends only on the
  seed and an entry's (row, column) or timestamp, so the same seed gives the
  same split for a SciPy matrix and for a Dask array of any blocking.
- :func:`rmse`, :func:`mae`: errors of the predicted scores at the test
  entries.
- :func:`ranking_metrics`: precision@k, recall@k, NDCG@k, MAP@k (binary
  relevance, averaged over the users with relevant test items) and catalog
  coverage, from each user's top-k with the training items left out.
- :func:`evaluate`: any of these for a fitted model or :class:`Factors`.

Everything runs block-wise over row blocks of users (one task per block,
fixed-order sums), on the active Dask scheduler or client; only per-block
sums and an item bitmap travel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed

from ..base.estimator import current_client
from ..base.inputs import resolve_input
from ..base.seeds import seed_from
from ..engine.graph import assemble, tree_reduce
from . import kernels as topn
from .factors import (
    USER_BLOCK,
    Factors,
    even_chunks,
    placed_factors,
    row_parts,
    tall,
    unwrap,
)

__all__ = ["evaluate", "mae", "ranking_metrics", "rmse", "train_test_split"]

METHODS = ("random", "leave_k_out", "time")
RATING_METRICS = ("rmse", "mae")
RANKING_METRICS = ("precision", "recall", "ndcg", "map", "coverage")
#: Candidate cutoffs per pass of the distributed time-cutoff search.
TIME_BINS = 1024


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def _check_split_params(method, test_size, k, timestamps):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if method in ("random", "time") and (not isinstance(test_size, Real) or not 0 < test_size < 1):
        raise ValueError(
            f"test_size must be a fraction in (0, 1) for method={method!r}; got {test_size!r} "
            "(e.g. 0.2 for an 80/20 split)."
        )
    if method == "leave_k_out" and (not isinstance(k, Integral) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive integer for method='leave_k_out'; got {k!r}.")
    if method == "time" and timestamps is None:
        raise ValueError(
            "method='time' needs timestamps: a sparse matrix with X's pattern, or for a CSR X a "
            "1-D array aligned with X.data. Pass timestamps=..., or use method='random'."
        )


def _canonical_with_times(X, timestamps):
    """X as canonical CSR, and timestamps as a CSR matrix of the same pattern (or None)."""
    if timestamps is not None and not sp.issparse(timestamps):
        ts = np.asarray(timestamps)
        if ts.ndim != 1:
            raise ValueError(
                f"timestamps must be a sparse matrix shaped like X or a 1-D array aligned with X's CSR "
                f"data; got an array of shape {ts.shape}."
            )
        if not (sp.issparse(X) and X.format == "csr"):
            raise ValueError(
                "A 1-D timestamps array must be aligned with the data of a CSR matrix; X is "
                f"{type(X).__name__}. Pass X.tocsr() and its timestamps in the same order, or "
                "timestamps as a sparse matrix with X's pattern."
            )
        if ts.size != X.nnz:
            raise ValueError(
                f"timestamps has {ts.size} values but X stores {X.nnz} entries; pass one timestamp per entry of X.data."
            )
        X = X.copy()
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        order = np.lexsort((X.indices, rows))
        rows, cols = rows[order], X.indices[order]
        if rows.size > 1 and np.any((rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])):
            raise ValueError(
                "X has duplicate (row, column) entries, which a per-entry timestamp cannot describe; "
                "combine them first (X.sum_duplicates()) and keep one timestamp per entry."
            )
        data, ts = X.data[order], ts[order]
        X = sp.csr_matrix((data, cols, X.indptr), shape=X.shape)
        X.has_canonical_format = True
        return X, sp.csr_matrix((ts.astype(np.float64), cols, X.indptr), shape=X.shape)
    X = topn.as_block(sp.csr_matrix(X) if not sp.issparse(X) else X)
    X = X if sp.issparse(X) else sp.csr_matrix(X)
    if timestamps is None:
        return X, None
    ts = topn.as_block(timestamps)
    if ts.shape != X.shape:
        raise ValueError(f"timestamps has shape {ts.shape} but X has {X.shape}; they must match.")
    return X, ts


def train_test_split(
    X: Any,
    *,
    method: str = "random",
    test_size: float = 0.2,
    k: int = 1,
    timestamps: Any = None,
    random_state: Any = None,
) -> tuple[Any, Any]:
    """Split the stored entries of a ratings matrix into train and test.

    Parameters
    ----------
    X : sparse matrix, ndarray, dask array of sparse blocks, matrix store or its path
        Shape (n_users, n_items); its stored entries (non-zeros of dense
        input) are the ratings.
    method : {"random", "leave_k_out", "time"}, default="random"
        "random": each entry goes to test with probability ``test_size``
        (the test share is ``test_size`` up to sampling noise).
        "leave_k_out": ``k`` entries of every user with more than ``k`` go to
        test: random ones, or with ``timestamps`` the ``k`` latest (ties
        random); users with at most ``k`` stay in train.
        "time": the entries at or after the cutoff time go to test, the
        cutoff being the latest time that leaves at least ``test_size`` of
        the entries in test (more when several share the cutoff time).
    test_size : float in (0, 1), default=0.2
        For "random" and "time".
    k : int, default=1
        For "leave_k_out".
    timestamps : sparse matrix of X's shape and pattern, 1-D array, or dask array, optional
        One time per entry (any numbers that order in time), needed by
        "time". A 1-D array must follow ``X.data`` of a CSR ``X``; a Dask
        ``X`` needs a Dask array of the same chunks (or an in-memory sparse
        matrix, blocked like X).
    random_state : int, RandomState, Generator or None
        The same int gives the same split, whatever the blocking of X.

    Returns
    -------
    train, test : CSR matrices (Dask arrays of CSR blocks, chunked like X, for Dask input)
        Same shape as X; disjoint; together they hold X's entries. For Dask
        input they are lazy, except that "time" finds its cutoff at once
        (a few passes that count timestamps per block; only counts travel).
    """
    _check_split_params(method, test_size, k, timestamps)
    seed = seed_from(random_state)
    X = resolve_input(X).data
    if not isinstance(X, da.Array):
        X, ts = _canonical_with_times(X, timestamps)
        n = X.shape[1]
        if method == "random":
            return topn.split_random(X, 0, 0, n, seed, float(test_size))
        if method == "leave_k_out":
            return topn.split_leave_k_out(X, ts, 0, n, seed, int(k))
        t = np.asarray(ts.data)
        return topn.split_time(X, ts, _kth_largest(t, _quota(test_size, t.size)))
    ts = None
    if timestamps is not None:
        ts = _dask_times(X, timestamps)
    return _split_dask(X, ts, method, float(test_size), int(k), seed)


def _dask_times(X: da.Array, timestamps: Any) -> da.Array:
    if isinstance(timestamps, da.Array):
        if timestamps.chunks != X.chunks:
            raise ValueError(
                f"timestamps must be chunked like X; got chunks {timestamps.chunks} for X's {X.chunks}. "
                "Build both from the same store layout (or rechunk them alike)."
            )
        return timestamps
    if not sp.issparse(timestamps) or timestamps.shape != X.shape:
        raise ValueError(
            "For a Dask X, timestamps must be a Dask array chunked like X or an in-memory sparse "
            f"matrix of X's shape {X.shape}; got {type(timestamps).__name__}."
        )
    ts = sp.csr_matrix(timestamps)
    return da.from_array(ts, chunks=X.chunks, asarray=False, name="dnmf-times-" + tokenize(ts, X.chunks))


def _quota(test_size: float, total: int) -> int:
    return round(test_size * total)


def _kth_largest(t: np.ndarray, q: int) -> float:
    """The q-th largest value (the cutoff); +inf when q is 0."""
    if q <= 0 or t.size == 0:
        return math.inf
    return float(np.partition(t, t.size - q)[t.size - q])


def _delayed(core: str, layer: dict, deps: list, key) -> Delayed:
    """A Delayed of ``key`` of a layer (an alias layer names the result)."""
    out = f"{core}-out"
    return Delayed(out, assemble(core, layer, deps, {out: {out: key}}))


def _split_dask(X: da.Array, ts: da.Array | None, method: str, test_size: float, k: int, seed: int):
    nI, nJ = X.numblocks
    r_off = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)
    c_off = np.concatenate([[0], np.cumsum(X.chunks[1])]).astype(int)
    n = X.shape[1]
    deps = [X] + ([ts] if ts is not None else [])
    cutoff = None
    if method == "time":
        cutoff = _time_cutoff(X, ts, test_size)
    token = tokenize("dnmf-split", X.name, None if ts is None else ts.name, method, test_size, k, seed, cutoff)
    core = f"dnmf-split-{token}"
    train_name, test_name = f"dnmf-train-{token}", f"dnmf-test-{token}"
    layer: dict = {}
    outs: dict = {train_name: {}, test_name: {}}
    if method == "leave_k_out":
        rows = tuple(X.chunks[0])
        x_refs = row_parts(X, rows, layer, f"{core}-rows")
        t_refs = [None] * nI if ts is None else row_parts(ts, rows, layer, f"{core}-times")
        for i in range(nI):
            layer[(core, i)] = (topn.split_leave_k_out, x_refs[i], t_refs[i], int(r_off[i]), n, seed, k)
            for w, name in enumerate((train_name, test_name)):
                for j in range(nJ):
                    pick = (topn.split_pick, (core, i), w)
                    outs[name][(name, i, j)] = (
                        pick if nJ == 1 else (topn.slice_cols, pick, int(c_off[j]), int(c_off[j + 1]))
                    )
    else:
        for i in range(nI):
            for j in range(nJ):
                if method == "random":
                    layer[(core, i, j)] = (
                        topn.split_random,
                        (X.name, i, j),
                        int(r_off[i]),
                        int(c_off[j]),
                        n,
                        seed,
                        test_size,
                    )
                else:
                    layer[(core, i, j)] = (topn.split_time, (X.name, i, j), (ts.name, i, j), cutoff)
                for w, name in enumerate((train_name, test_name)):
                    outs[name][(name, i, j)] = (topn.split_pick, (core, i, j), w)
    graph = assemble(core, layer, deps, outs)
    meta = sp.csr_matrix((0, 0), dtype=X.dtype)
    return (
        da.Array(graph, train_name, chunks=X.chunks, meta=meta),
        da.Array(graph, test_name, chunks=X.chunks, meta=meta),
    )


def _reduce_blocks(X: da.Array, ts: da.Array, func, combine, *args) -> np.ndarray:
    """``combine`` over ``func(X_ij, ts_ij, *args)`` of every block, computed now."""
    token = tokenize("dnmf-times", X.name, ts.name, func.__name__, args)
    core = f"dnmf-times-{token}"
    layer: dict = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            layer[(core, i, j)] = (func, (X.name, i, j), (ts.name, i, j), *args)
            keys.append((core, i, j))
    (top,) = tree_reduce(layer, f"{core}-sum", keys, combine)
    return np.asarray(dask.compute(_delayed(core, layer, [X, ts], top))[0])


def _time_cutoff(X: da.Array, ts: da.Array, test_size: float) -> float:
    """The q-th largest timestamp of a Dask array, exactly, in a few passes.

    Each pass counts, per block, the timestamps at or above ``TIME_BINS``
    candidate cutoffs in the interval known to hold the answer, and narrows
    the interval to one bin; it ends when the interval holds a single
    distinct time. Only counts travel.
    """
    lo, hi, total = _reduce_blocks(X, ts, topn.time_range, topn.combine_time_range)
    q = _quota(test_size, int(total))
    if q <= 0:
        return math.inf
    hi_excl = float(np.nextafter(hi, np.inf))
    lo = float(lo)
    for _ in range(64):
        edges = np.linspace(lo, hi_excl, TIME_BINS + 1)[:-1]
        res = _reduce_blocks(X, ts, topn.time_counts, topn.combine_time_counts, edges, lo, hi_excl)
        counts, mn, mx = res[:-2], res[-2], res[-1]
        if mn == mx:
            return float(mn)
        b = int(np.flatnonzero(counts >= q)[-1])
        lo, hi_excl = float(edges[b]), float(edges[b + 1]) if b + 1 < edges.size else hi_excl
    raise RuntimeError("the time cutoff search did not converge")  # pragma: no cover


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def _as_factors(model: Any) -> Factors:
    return model if isinstance(model, Factors) else Factors.from_model(model)


def _row_blocks(factors: Factors, test: Any) -> tuple[int, ...]:
    if isinstance(factors.W, da.Array):
        return tuple(factors.W.chunks[0])
    if isinstance(test, da.Array):
        return tuple(test.chunks[0])
    return even_chunks(factors.n_users, USER_BLOCK)


def _matrix_refs(A: Any, rows: tuple[int, ...], shape, client, layer: dict, prefix: str, what: str):
    """References to A's row blocks (all columns in one block) and A's dependencies."""
    A = unwrap(A)
    if tuple(A.shape) != tuple(shape):
        raise ValueError(
            f"{what} has shape {tuple(A.shape)} but the model scores {shape[0]} users x {shape[1]} "
            f"items; pass the {what} matrix of the data the model was fitted on (same ID maps)."
        )
    if not isinstance(A, da.Array):
        A = tall(A if sp.issparse(A) else sp.csr_matrix(A), rows, client, what)
    return row_parts(A, rows, layer, prefix), [A]


def _metrics_graph(
    factors: Factors, test: Any, train: Any, k: int, threshold, want_errors: bool, want_ranking: bool, item_block: int
):
    """Delayed results (or None) of the summed ``[sse, sae, count]`` and of ``(ranking sums, item bitmap)``."""
    client = current_client()
    rows = _row_blocks(factors, test)
    W, ub, H_ref, ib_ref, deps = placed_factors(factors, rows, client)
    shape = (factors.n_users, factors.n_items)
    layer: dict = {}
    token = tokenize(
        "dnmf-eval",
        W.name,
        H_ref,
        ib_ref,
        None if ub is None else ub.name,
        factors.global_mean,
        getattr(test, "name", None) or tokenize(test),
        None if train is None else (getattr(train, "name", None) or tokenize(train)),
        k,
        threshold,
        want_errors,
        want_ranking,
        item_block,
    )
    core = f"dnmf-eval-{token}"
    test_refs, d = _matrix_refs(test, rows, shape, client, layer, f"{core}-test", "test")
    deps += d
    train_refs = [None] * len(rows)
    if train is not None and want_ranking:
        train_refs, d = _matrix_refs(train, rows, shape, client, layer, f"{core}-train", "train")
        deps += d
    err_keys, rank_keys = [], []
    for i in range(len(rows)):
        w, u = (W.name, i, 0), None if ub is None else (ub.name, i)
        if want_errors:
            layer[(f"{core}-err", i)] = (topn.error_block, w, u, factors.global_mean, H_ref, ib_ref, test_refs[i])
            err_keys.append((f"{core}-err", i))
        if want_ranking:
            layer[(f"{core}-rank", i)] = (
                topn.ranking_block,
                w,
                u,
                factors.global_mean,
                H_ref,
                ib_ref,
                test_refs[i],
                train_refs[i],
                k,
                threshold,
                item_block,
            )
            rank_keys.append((f"{core}-rank", i))
    err = tree_reduce(layer, f"{core}-err-sum", err_keys, topn.sum_parts)[0] if err_keys else None
    rank = tree_reduce(layer, f"{core}-rank-sum", rank_keys, topn.sum_parts)[0] if rank_keys else None
    outs = {f"{core}-{what}": key for what, key in (("errors", err), ("ranking", rank)) if key is not None}
    graph = assemble(core, layer, deps, {name: {name: key} for name, key in outs.items()})
    return tuple(
        Delayed(f"{core}-{what}", graph) if key is not None else None
        for what, key in (("errors", err), ("ranking", rank))
    )


def _check_k(k: Any) -> int:
    if not isinstance(k, (Integral, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer (the cutoff of the top-k lists); got {k!r}.")
    return int(k)


def _compute(factors, test, train, k, threshold, want_errors, want_ranking, item_block):
    test = unwrap(test)
    train = None if train is None else unwrap(train)
    err, rank = _metrics_graph(factors, test, train, k, threshold, want_errors, want_ranking, item_block)
    # One compute: blocks shared by both (test, W) are read once.
    values = dict(zip(("err", "rank"), dask.compute(err, rank), strict=True))
    out: dict[str, float] = {}
    if err is not None:
        sse, sae, count = values["err"]
        if count == 0:
            raise ValueError("test has no stored entries: nothing to score. Check the split.")
        out["rmse"] = float(math.sqrt(sse / count))
        out["mae"] = float(sae / count)
    if rank is not None:
        sums, recommended = values["rank"]
        users = sums[topn.R_USERS]
        for name, pos in (
            ("precision", topn.R_PRECISION),
            ("recall", topn.R_RECALL),
            ("ndcg", topn.R_NDCG),
            ("map", topn.R_MAP),
        ):
            out[name] = float(sums[pos] / users) if users else math.nan
        out["coverage"] = float(np.count_nonzero(recommended) / factors.n_items)
        out["n_users"] = float(users)
    return out


def rmse(factors: Any, test: Any) -> float:
    """Root mean squared error of the predicted scores at the test entries.

    Parameters
    ----------
    factors : Factors or fitted model (see :meth:`Factors.from_model`)
    test : sparse matrix, dask array of sparse blocks, store or its path, of shape (n_users, n_items)
        Held-out ratings (stored entries).

    Returns
    -------
    float
    """
    return _compute(_as_factors(factors), test, None, 1, None, True, False, topn.ITEM_BLOCK)["rmse"]


def mae(factors: Any, test: Any) -> float:
    """Mean absolute error of the predicted scores at the test entries (as :func:`rmse`)."""
    return _compute(_as_factors(factors), test, None, 1, None, True, False, topn.ITEM_BLOCK)["mae"]


def ranking_metrics(
    factors: Any,
    test: Any,
    *,
    train: Any = None,
    k: int = 10,
    threshold: float | None = None,
    item_block: int = topn.ITEM_BLOCK,
) -> dict[str, float]:
    """Top-k ranking quality against held-out items.

    Each user with at least one relevant test item gets a top-k list over
    all items except their ``train`` items (ties by smaller item index).

    Parameters
    ----------
    factors : Factors or fitted model
    test : sparse matrix or dask array of shape (n_users, n_items)
        Held-out entries; relevant are all of them, or those with a value of
        at least ``threshold``.
    train : same kind and shape, optional
        Entries to leave out of the lists (what the user has already seen).
    k : int, default=10
    threshold : float, optional
    item_block : int
        Items scored at once per task.

    Returns
    -------
    dict
        ``precision`` (hits / k), ``recall`` (hits / relevant items),
        ``ndcg`` (binary gains, ideal DCG over min(relevant, k) hits),
        ``map`` (mean over users of AP@k = sum of precision at each hit /
        min(relevant, k)), all averaged over the users counted;
        ``coverage``: share of all items that appear in at least one of
        those users' lists; ``n_users``: the number of users counted.
    """
    return _compute(_as_factors(factors), test, train, _check_k(k), threshold, False, True, int(item_block))


def evaluate(
    model_or_factors: Any,
    test: Any,
    *,
    train: Any = None,
    k: int = 10,
    metrics: Sequence[str] | None = None,
    threshold: float | None = None,
) -> dict[str, float]:
    """Accuracy of a recommender on held-out entries, in one pass over the data.

    Parameters
    ----------
    model_or_factors : Factors, dnmf.RatingsNMF, dnmf.NMF (with its W) or any object with ``factors_``
    test : sparse matrix, dask array of sparse blocks, matrix store or its path
        Shape (n_users, n_items): held-out entries, e.g. from
        :func:`train_test_split`.
    train : same kinds, optional
        Entries left out of the top-k lists (exclude-seen).
    k : int, default=10
        Cutoff of the ranking metrics.
    metrics : sequence of str, optional
        Any of ``"rmse", "mae", "precision", "recall", "ndcg", "map",
        "coverage"``; default all. Ranking metrics cost a top-k over all
        items for every test user; the rating metrics only O(nnz(test) k).
    threshold : float, optional
        Minimum test value of a relevant item (default: every test item).

    Returns
    -------
    dict of str to float
        The metrics asked for (see :func:`rmse`, :func:`ranking_metrics`),
        plus ``n_users`` (users counted by the ranking metrics) when any
        ranking metric is asked for.

    Examples
    --------
    >>> train, test = dnmf.train_test_split(X, test_size=0.2, random_state=0)  # doctest: +SKIP
    >>> model = dnmf.RatingsNMF(20).fit(train)                                 # doctest: +SKIP
    >>> dnmf.evaluate(model, test, train=train, k=10)                          # doctest: +SKIP
    {'rmse': 0.86, 'mae': 0.66, 'precision': 0.05, ...}
    """
    names = list(RATING_METRICS + RANKING_METRICS) if metrics is None else list(metrics)
    unknown = [m for m in names if m not in RATING_METRICS + RANKING_METRICS]
    if unknown or not names:
        raise ValueError(
            f"Unknown metrics {unknown}; choose from {list(RATING_METRICS + RANKING_METRICS)}."
            if unknown
            else "metrics is empty; ask for at least one metric or pass None for all."
        )
    factors = _as_factors(model_or_factors)
    want_err = any(m in RATING_METRICS for m in names)
    want_rank = any(m in RANKING_METRICS for m in names)
    out = _compute(factors, test, train, _check_k(k), threshold, want_err, want_rank, topn.ITEM_BLOCK)
    keep = names + (["n_users"] if want_rank else [])
    return {name: out[name] for name in keep}
