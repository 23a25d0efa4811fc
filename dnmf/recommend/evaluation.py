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

A test (or train) set given as a matrix store, or its path, is matched to
the model's users and items by ID when both have ID maps; its entries of
users or items the model does not know are the *unknown pairs*, which
:func:`evaluate` scores with a baseline, leaves out or refuses
(``unknown=``). Other inputs are taken by position.

Everything runs block-wise over row blocks of users (one task per block,
fixed-order sums), on the active Dask scheduler or client; only per-block
sums and an item bitmap travel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    check_unknown,
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
        x_refs, _ = row_parts(X, rows, layer, f"{core}-rows")
        t_refs = [None] * nI if ts is None else row_parts(ts, rows, layer, f"{core}-times")[0]
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


@dataclass(frozen=True)
class _Unknown:
    """The entries of a test set whose user or item the model does not know.

    ``rows``/``cols`` are model positions, -1 where unknown; ``users``/``items``
    the unknown IDs (each once, in order of appearance); ``total`` the entries
    of the whole test set.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    users: list
    items: list
    total: int

    @property
    def count(self) -> int:
        return int(self.values.size)

    def message(self, fix: str) -> str:
        def shown(ids: list) -> str:
            return ", ".join(repr(v) for v in ids[:5]) + (", ..." if len(ids) > 5 else "")

        parts = [
            f"{len(ids)} {what}{'s' if len(ids) != 1 else ''} ({shown(ids)})"
            for what, ids in (
                ("new user", self.users),
                ("new item", self.items),
            )
            if ids
        ]
        return (
            f"{self.count} of {self.total} test entries have a user or item the model does not know: "
            f"{' and '.join(parts)}. {fix}"
        )


def _store_entries(A: da.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, values)`` of every stored entry of a Dask array of blocks, in this process."""
    r_off = np.concatenate([[0], np.cumsum(A.chunks[0])]).astype(np.int64)
    c_off = np.concatenate([[0], np.cumsum(A.chunks[1])]).astype(np.int64)
    grid = A.to_delayed()
    blocks = dask.compute(*grid.ravel().tolist())
    parts = []
    for (i, j), block in zip(np.ndindex(*grid.shape), blocks, strict=True):
        r, c, v = topn.coords(block)
        parts.append((r + r_off[i], c + c_off[j], np.asarray(v)))
    rows, cols, vals = (np.concatenate([p[t] for p in parts]) for t in range(3))
    return rows, cols, vals


def _by_id(factors: Factors, X: Any, what: str) -> tuple[Any, _Unknown | None]:
    """X in the model's (user, item) positions, and its entries of unknown users or items.

    A matrix store (or its path) whose ID maps differ from the model's is
    matched by ID, in this process (the entries of known pairs become a CSR
    matrix of the model's shape); anything else, and a store with the
    model's IDs, is returned as is (matched by position, unknown None).
    """
    resolved = resolve_input(X)
    axes = ((factors.row_ids, resolved.row_ids, factors.n_users), (factors.col_ids, resolved.col_ids, factors.n_items))
    if not any(mine is not None and theirs is not None and not mine.equals(theirs) for mine, theirs, _ in axes):
        return resolved.data, None
    A = resolved.data
    positions = []
    for axis, (mine, theirs, size) in enumerate(axes):
        if mine is None or theirs is None:
            if A.shape[axis] != size:
                raise ValueError(
                    f"{what} has shape {tuple(A.shape)} but the model scores {factors.n_users} users x "
                    f"{factors.n_items} items; pass the {what} matrix of the data the model was fitted on "
                    "(same ID maps)."
                )
            positions.append(np.arange(size, dtype=np.int64))
        else:
            positions.append(np.asarray(mine.get_indexer(theirs), dtype=np.int64))
    r, c, v = _store_entries(A)
    rows, cols = positions[0][r], positions[1][c]
    known = (rows >= 0) & (cols >= 0)
    aligned = sp.csr_matrix((v[known], (rows[known], cols[known])), shape=(factors.n_users, factors.n_items))
    new = ~known
    unknown = _Unknown(
        rows=rows[new],
        cols=cols[new],
        values=np.asarray(v[new], dtype=np.float64),
        users=_first_seen(resolved.row_ids, r[new & (rows < 0)]),
        items=_first_seen(resolved.col_ids, c[new & (cols < 0)]),
        total=int(v.size),
    )
    return aligned, unknown


def _first_seen(ids: Any, positions: np.ndarray) -> list:
    """The IDs at these positions, each once, in order of first appearance."""
    if ids is None or positions.size == 0:
        return []
    _, first = np.unique(positions, return_index=True)
    return ids[positions[np.sort(first)]].tolist()


def _row_blocks(factors: Factors, test: Any) -> tuple[int, ...]:
    if isinstance(factors.W, da.Array):
        return tuple(factors.W.chunks[0])
    if isinstance(test, da.Array):
        return tuple(test.chunks[0])
    return even_chunks(factors.n_users, USER_BLOCK)


def _matrix_refs(A: Any, rows: tuple[int, ...], shape, client, layer: dict, prefix: str, what: str, near: list):
    """References to A's row blocks (all columns in one block), read next to ``near`` (see
    :func:`row_parts`), and A's dependencies."""
    A = unwrap(A)
    if tuple(A.shape) != tuple(shape):
        raise ValueError(
            f"{what} has shape {tuple(A.shape)} but the model scores {shape[0]} users x {shape[1]} "
            f"items; pass the {what} matrix of the data the model was fitted on (same ID maps)."
        )
    if not isinstance(A, da.Array):
        A = tall(A if sp.issparse(A) else sp.csr_matrix(A), rows, client, what)
    return row_parts(A, rows, layer, prefix, near)


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
    near = [(W.name, i, 0) for i in range(len(rows))]
    test_refs, d = _matrix_refs(test, rows, shape, client, layer, f"{core}-test", "test", near)
    deps += d
    train_refs = [None] * len(rows)
    if train is not None and want_ranking:
        train_refs, d = _matrix_refs(train, rows, shape, client, layer, f"{core}-train", "train", near)
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


def _compute(factors, test, train, k, threshold, want_errors, want_ranking, item_block, unknown=None, policy="raise"):
    """The metrics of the known pairs; with ``policy="baseline"`` RMSE and MAE also count ``unknown``'s
    pairs, scored by :meth:`Factors.baseline` (``"nan"``: they are left out)."""
    test = unwrap(test)
    train = None if train is None else unwrap(train)
    err, rank = _metrics_graph(factors, test, train, k, threshold, want_errors, want_ranking, item_block)
    # One compute: blocks shared by both (test, W) are read once.
    values = dict(zip(("err", "rank"), dask.compute(err, rank), strict=True))
    out: dict[str, float] = {}
    if err is not None:
        sse, sae, count = values["err"]
        n_unknown = 0 if unknown is None else unknown.count
        if policy == "baseline" and n_unknown:
            e = unknown.values - factors.baseline(unknown.rows, unknown.cols)
            sse, sae, count = sse + float(e @ e), sae + float(np.abs(e).sum()), count + e.size
        if count == 0 and not n_unknown:
            raise ValueError("test has no stored entries: nothing to score. Check the split.")
        out["rmse"] = float(math.sqrt(sse / count)) if count else math.nan
        out["mae"] = float(sae / count) if count else math.nan
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

    Notes
    -----
    A store is matched to the model by ID (see the module's notes); entries
    of users or items the model does not know are an error: score them with
    :func:`evaluate`'s ``unknown=``.
    """
    f = _as_factors(factors)
    return _compute(f, _known_only(f, test, "test"), None, 1, None, True, False, topn.ITEM_BLOCK)["rmse"]


def mae(factors: Any, test: Any) -> float:
    """Mean absolute error of the predicted scores at the test entries (as :func:`rmse`)."""
    f = _as_factors(factors)
    return _compute(f, _known_only(f, test, "test"), None, 1, None, True, False, topn.ITEM_BLOCK)["mae"]


_FIX_EVALUATE = (
    "Evaluate with dnmf.evaluate(model, test, unknown='baseline') to score them with the global mean plus "
    "the known side's bias, or unknown='nan' to leave them out."
)
_FIX = (
    "Pass unknown='baseline' to score them with the global mean plus the known side's bias (RMSE and MAE "
    "over all entries), or unknown='nan' to leave them out of RMSE and MAE; either way the result counts "
    "them (n_unknown)."
)


def _known_only(factors: Factors, test: Any, what: str) -> Any:
    """``test`` by ID in the model's positions; unknown users or items are an error."""
    test, unknown = _by_id(factors, test, what)
    if unknown is not None and unknown.count:
        raise ValueError(unknown.message(_FIX_EVALUATE))
    return test


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
    f = _as_factors(factors)
    test = _known_only(f, test, "test")
    train = None if train is None else _by_id(f, train, "train")[0]
    return _compute(f, test, train, _check_k(k), threshold, False, True, int(item_block))


def evaluate(
    model_or_factors: Any,
    test: Any,
    *,
    train: Any = None,
    k: int = 10,
    metrics: Sequence[str] | None = None,
    threshold: float | None = None,
    unknown: str = "raise",
) -> dict[str, float]:
    """Accuracy of a recommender on held-out entries, in one pass over the data.

    Parameters
    ----------
    model_or_factors : Factors, dnmf.RatingsNMF, dnmf.NMF (with its W) or any object with ``factors_``
    test : sparse matrix, dask array of sparse blocks, matrix store or its path
        Shape (n_users, n_items): held-out entries, e.g. from
        :func:`train_test_split`. A store is matched to the model's users and
        items by ID (both with ID maps; then its shape may differ), so it
        may hold users and items the model does not know: see ``unknown``.
    train : same kinds, optional
        Entries left out of the top-k lists (exclude-seen); a store's entries
        of unknown users or items are ignored.
    k : int, default=10
        Cutoff of the ranking metrics.
    metrics : sequence of str, optional
        Any of ``"rmse", "mae", "precision", "recall", "ndcg", "map",
        "coverage"``; default all. Ranking metrics cost a top-k over all
        items for every test user; the rating metrics only O(nnz(test) k).
    threshold : float, optional
        Minimum test value of a relevant item (default: every test item).
    unknown : {"raise", "baseline", "nan"}, default="raise"
        Test entries whose user or item the model does not know: "raise" a
        ``ValueError`` naming them; "baseline" scores them as
        ``model.predict(..., unknown="baseline")`` does (the global mean plus
        the known side's bias, see :meth:`Factors.baseline`), so RMSE and MAE
        are over **all** test entries; "nan" leaves them out of RMSE and MAE
        (over the known pairs only; NaN when none is known). Ranking metrics
        always rank the known users over the known items.

    Returns
    -------
    dict of str to float
        The metrics asked for (see :func:`rmse`, :func:`ranking_metrics`),
        plus ``n_users`` (users counted by the ranking metrics) when any
        ranking metric is asked for, plus ``n_unknown`` (test entries with an
        unknown user or item, 0 when the test set is taken by position) when
        ``unknown`` is "baseline" or "nan".

    Examples
    --------
    >>> train, test = dnmf.train_test_split(X, test_size=0.2, random_state=0)  # doctest: +SKIP
    >>> model = dnmf.RatingsNMF(20).fit(train)                                 # doctest: +SKIP
    >>> dnmf.evaluate(model, test, train=train, k=10)                          # doctest: +SKIP
    {'rmse': 0.86, 'mae': 0.66, 'precision': 0.05, ...}
    """
    names = list(RATING_METRICS + RANKING_METRICS) if metrics is None else list(metrics)
    bad = [m for m in names if m not in RATING_METRICS + RANKING_METRICS]
    if bad or not names:
        raise ValueError(
            f"Unknown metrics {bad}; choose from {list(RATING_METRICS + RANKING_METRICS)}."
            if bad
            else "metrics is empty; ask for at least one metric or pass None for all."
        )
    policy = check_unknown(unknown)
    k = _check_k(k)
    factors = _as_factors(model_or_factors)
    test, new = _by_id(factors, test, "test")
    if new is not None and new.count and policy == "raise":
        raise ValueError(new.message(_FIX))
    if train is not None:
        train = _by_id(factors, train, "train")[0]
    want_err = any(m in RATING_METRICS for m in names)
    want_rank = any(m in RANKING_METRICS for m in names)
    out = _compute(factors, test, train, k, threshold, want_err, want_rank, topn.ITEM_BLOCK, new, policy)
    keep = names + (["n_users"] if want_rank else [])
    result = {name: out[name] for name in keep}
    if policy != "raise":
        result["n_unknown"] = 0 if new is None else new.count
    return result
