"""`Factors` (fitted W, H, biases and ID maps) and its queries: top-n, pair scores, similar items, popularity.

Every function works on a :class:`Factors`: the prediction model is

    score(i, j) = global_mean + user_bias[i] + item_bias[j] + W[i] @ H[:, j]

with rows of ``W`` (m, k) the users and columns of ``H`` (k, n) the items
(absent biases and mean count as 0). ``W`` may be a NumPy array or a Dask
array chunked by rows; ``H`` is NumPy.

- :func:`recommend`: top-n lists for a few users, in this process.
- :func:`recommend_all`: top-n lists for every user, block-wise on the
  cluster: one task per (user block, item block) computes that block's
  scores a slab at a time and keeps its top-n; a fixed-order tree merges
  the item blocks' lists. The full ``W @ H`` is never formed.
- :func:`similar_items`: cosine similarity between H's columns.
- :func:`item_popularity`, :func:`popular_items`, :func:`popularity_baseline`:
  the popularity fallback for unknown users and the baseline to beat.

Ranking ties are broken by the smaller item index, so every result is
deterministic and does not depend on the blocking. Lists with fewer than n
eligible items are padded with item ``-1`` and score ``-inf``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..base.estimator import current_client
from ..base.inputs import even_split, resolve_input
from ..engine.graph import assemble, tree_reduce, x_block_refs
from ..storage.arrays import blocks_array
from . import kernels as topn

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "Factors",
    "UnknownIDError",
    "item_popularity",
    "popular_items",
    "popularity_baseline",
    "recommend",
    "recommend_all",
    "similar_items",
]

#: Users per row block when ``W`` is in memory (``recommend_all``, evaluation).
USER_BLOCK = 65536


class UnknownIDError(KeyError):
    """IDs that the model does not know (a ``KeyError``).

    Attributes
    ----------
    unknown : list
        Every unknown ID, in the order given.
    positions : ndarray of int
        Their positions in the IDs given.
    """

    def __init__(self, message: str, unknown: list, positions: np.ndarray) -> None:
        super().__init__(message)
        self.unknown = unknown
        self.positions = positions

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Factors:
    """A fitted factor model: what recommendation and evaluation need.

    Parameters
    ----------
    W : ndarray or dask.array.Array of shape (n_users, k)
        User factors (a Dask array chunked by rows, one column chunk, stays
        distributed).
    H : ndarray of shape (k, n_items)
        Item factors.
    user_bias : ndarray or dask array of shape (n_users,), optional
    item_bias : ndarray of shape (n_items,), optional
    global_mean : float, default=0.0
    row_ids, col_ids : pandas.Index, optional
        External user and item IDs by position (a store's ID maps). None:
        the IDs are the positions.
    baseline_mean : float, optional
        The baseline score of a pair whose user and item are both unknown
        (``unknown="baseline"`` of :meth:`predict`); a known side adds its
        bias. None: ``global_mean``. :class:`dnmf.RatingsNMF` sets it to its
        global mean (with biases), the mean training rating (explicit,
        without biases) or the share of observed pairs (implicit).
    """

    W: Any
    H: np.ndarray
    user_bias: Any = None
    item_bias: np.ndarray | None = None
    global_mean: float = 0.0
    row_ids: pd.Index | None = None
    col_ids: pd.Index | None = None
    baseline_mean: float | None = None

    def __post_init__(self) -> None:
        self.H = np.asarray(self.H)
        if self.H.ndim != 2:
            raise ValueError(f"H must be 2-D (k, n_items); got shape {self.H.shape}.")
        if not isinstance(self.W, da.Array):
            self.W = np.asarray(self.W)
        if self.W.ndim != 2 or self.W.shape[1] != self.H.shape[0]:
            raise ValueError(
                f"W must be (n_users, k) with k = H.shape[0] = {self.H.shape[0]}; got W of "
                f"shape {self.W.shape}. Pass W and H of the same fit (H is components_)."
            )
        m, n = self.W.shape[0], self.H.shape[1]
        if self.user_bias is not None:
            if not isinstance(self.user_bias, da.Array):
                self.user_bias = np.asarray(self.user_bias, dtype=np.float64)
            if self.user_bias.shape != (m,):
                raise ValueError(f"user_bias must have shape ({m},) like W's rows; got {self.user_bias.shape}.")
        if self.item_bias is not None:
            self.item_bias = np.asarray(self.item_bias, dtype=np.float64)
            if self.item_bias.shape != (n,):
                raise ValueError(f"item_bias must have shape ({n},) like H's columns; got {self.item_bias.shape}.")
        self.global_mean = float(self.global_mean)
        if self.baseline_mean is not None:
            self.baseline_mean = float(self.baseline_mean)
        for name, ids, size in (("row_ids", self.row_ids, m), ("col_ids", self.col_ids, n)):
            if ids is not None and len(ids) != size:
                raise ValueError(f"{name} has {len(ids)} IDs for {size} positions; pass the ID map of the same matrix.")

    # ------------------------------------------------------------ building

    @classmethod
    def from_model(cls, model: Any, W: Any = None) -> Factors:
        """The factors of a fitted model.

        Parameters
        ----------
        model : Factors, an object with ``factors_`` (e.g. ``dnmf.RatingsNMF``), or a ``dnmf.NMF``
            A ``dnmf.NMF`` gives plain NMF scores (missing entries were fitted
            as zeros): ``H = components_``, no biases, item IDs from
            ``feature_ids_`` when fitted on a store.
        W : array of shape (n_users, k), optional
            User factors of a ``dnmf.NMF`` (e.g. ``model.fit_transform(X)``);
            by default the W its last fit (or ``dnmf.load``) kept.

        Returns
        -------
        Factors
        """
        if isinstance(model, Factors):
            return model if W is None else replace(model, W=W)
        factors = getattr(model, "factors_", None)
        if factors is not None:
            return factors if W is None else replace(factors, W=W)
        H = getattr(model, "components_", None)
        if H is None:
            raise TypeError(
                f"Cannot take factors from a {type(model).__name__}: it has neither factors_ nor "
                "components_. Pass a fitted dnmf.RatingsNMF or dnmf.NMF, or build Factors(W, H)."
            )
        kept = model.__dict__.get("_W")
        if W is None:
            W = kept
        if W is None:
            raise ValueError(
                f"{type(model).__name__} has no user factors W: pass them, e.g. "
                "Factors.from_model(model, W=model.fit_transform(X))."
            )
        # The store's user IDs belong to the W fitted (or loaded) with them, not to a W passed in.
        row_ids = getattr(model, "sample_ids_", None) if W is kept else None
        return cls(W=W, H=H, row_ids=row_ids, col_ids=getattr(model, "feature_ids_", None))

    # ------------------------------------------------------------ sizes

    @property
    def n_users(self) -> int:
        """Number of users (rows of W)."""
        return int(self.W.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items (columns of H)."""
        return int(self.H.shape[1])

    @property
    def n_components(self) -> int:
        """Number of factors k."""
        return int(self.H.shape[0])

    # ------------------------------------------------------------ IDs

    def row_index(self, ids: Any, *, strict: bool = True, fix: str | None = None) -> np.ndarray:
        """Positions of user IDs.

        Parameters
        ----------
        ids : scalar or array-like of shape (u,)
        strict : bool, default=True
            Raise :class:`UnknownIDError` for unknown IDs; False gives -1 for them.
        fix : str, optional
            The error's last sentence, what to do (default: fold new users in
            or use a ``cold_start`` fallback).

        Returns
        -------
        ndarray of shape (u,), int64
        """
        return _index(self.row_ids, ids, self.n_users, "user", strict, fix)

    def col_index(self, ids: Any, *, strict: bool = True, fix: str | None = None) -> np.ndarray:
        """Positions of item IDs; as :meth:`row_index`."""
        return _index(self.col_ids, ids, self.n_items, "item", strict, fix)

    # ------------------------------------------------------------ scores

    def user_factors(self, rows: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``(W[rows], user_bias[rows] or None)`` as NumPy arrays (gathers a Dask W)."""
        rows = _positions(rows, self.n_users, "user")
        uniq, inv = np.unique(rows, return_inverse=True)
        W, ub = self.W, self.user_bias
        if isinstance(W, da.Array) or isinstance(ub, da.Array):
            import dask

            W, ub = dask.compute(W[uniq], None if ub is None else ub[uniq])
        else:
            W, ub = W[uniq], None if ub is None else ub[uniq]
        return np.asarray(W)[inv], None if ub is None else np.asarray(ub)[inv]

    def predict(self, rows: Any, cols: Any, *, unknown: str = "raise") -> np.ndarray:
        """Scores of (user, item) pairs.

        Parameters
        ----------
        rows, cols : array-like of int, broadcastable to shape (p,)
            User and item positions (see :meth:`row_index`, :meth:`col_index`);
            with ``unknown`` other than "raise", -1 (what ``strict=False``
            gives) marks an unknown user or item.
        unknown : {"raise", "baseline", "nan"}, default="raise"
            Pairs with a -1 position: an ``IndexError``; the baseline
            (:meth:`baseline`); or NaN.

        Returns
        -------
        ndarray of shape (p,)
            ``global_mean + user_bias + item_bias + W[rows] @ H[:, cols]``.
        """
        check_unknown(unknown)
        rows, cols = np.broadcast_arrays(np.atleast_1d(rows), np.atleast_1d(cols))
        rows, cols = rows.ravel(), cols.ravel()
        if unknown != "raise" and rows.dtype.kind in "iu" and cols.dtype.kind in "iu":
            rows, cols = rows.astype(np.int64), cols.astype(np.int64)
            known = (rows >= 0) & (cols >= 0)
            if not known.all():
                out = np.full(rows.size, np.nan)
                if known.any():
                    out[known] = self.predict(rows[known], cols[known])
                if unknown == "baseline":
                    out[~known] = self.baseline(rows[~known], cols[~known])
                return out
        cols = _positions(cols, self.n_items, "item")
        W, ub = self.user_factors(rows)
        local = np.arange(W.shape[0])
        return topn.pair_scores(W, ub, self.global_mean, self.H, self.item_bias, local, cols)

    def baseline(self, rows: Any, cols: Any) -> np.ndarray:
        """Baseline scores of (user, item) pairs, for users or items the model does not know.

        The baseline mean (``baseline_mean``, else ``global_mean``) plus the
        user's bias when the user is known and the item's bias when the item
        is known (absent biases count as 0), as Surprise's baseline for
        unknown users and items.

        Parameters
        ----------
        rows, cols : array-like of int, broadcastable to shape (p,)
            Positions; -1 (any negative) marks an unknown user or item.

        Returns
        -------
        ndarray of shape (p,), float64
        """
        rows, cols = np.broadcast_arrays(np.atleast_1d(rows), np.atleast_1d(cols))
        rows, cols = np.asarray(rows, dtype=np.int64).ravel(), np.asarray(cols, dtype=np.int64).ravel()
        mean = self.global_mean if self.baseline_mean is None else self.baseline_mean
        if math.isnan(mean) and rows.size:
            raise ValueError(
                "These factors have no baseline mean for unknown users and items (baseline_mean is NaN: "
                "a RatingsNMF without biases saved before dnmf recorded its mean training rating, "
                "rating_mean_). Refit the model to score unknown pairs with unknown='baseline', or use "
                "unknown='nan'."
            )
        out = np.full(rows.size, mean, dtype=np.float64)
        known_rows = rows >= 0
        if self.user_bias is not None and known_rows.any():
            r = _positions(rows[known_rows], self.n_users, "user")
            uniq, inv = np.unique(r, return_inverse=True)
            ub = self.user_bias[uniq]
            ub = np.asarray(ub.compute() if isinstance(ub, da.Array) else ub, dtype=np.float64)
            out[known_rows] += ub[inv]
        known_cols = cols >= 0
        if self.item_bias is not None and known_cols.any():
            out[known_cols] += self.item_bias[_positions(cols[known_cols], self.n_items, "item")]
        return out


#: What to do with (user, item) pairs whose user or item the model does not know.
UNKNOWN_POLICIES = ("raise", "baseline", "nan")


def check_unknown(unknown: Any) -> str:
    """``unknown`` if it is one of :data:`UNKNOWN_POLICIES`; else a ValueError naming them."""
    if not isinstance(unknown, str) or unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be 'raise', 'baseline' or 'nan'; got {unknown!r}.")
    return unknown


def _positions(values: Any, size: int, what: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(
            f"{what} positions must be integers; got dtype {arr.dtype}. Map external IDs "
            f"with Factors.{'row' if what == 'user' else 'col'}_index first."
        )
    arr = arr.astype(np.int64).ravel()
    bad = (arr < 0) | (arr >= size)
    if bad.any():
        raise IndexError(
            f"{what} positions must lie in [0, {size}); got {arr[bad][:5].tolist()}"
            f"{' ...' if bad.sum() > 5 else ''}. Map external IDs with row_index/col_index."
        )
    return arr


def _index(index, ids: Any, size: int, what: str, strict: bool, fix: str | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ids, dtype=object if isinstance(ids, str) else None))
    if index is None:
        if arr.dtype.kind in "iu":
            pos = arr.astype(np.int64)
            pos[(pos < 0) | (pos >= size)] = -1
        else:
            pos = np.full(arr.size, -1, dtype=np.int64)
        hint = f"This model has no {what} ID map: its IDs are the positions 0..{size - 1}."
    else:
        pos = np.asarray(index.get_indexer(arr), dtype=np.int64)
        sample = ", ".join(repr(v) for v in index[:3].tolist())
        hint = f"Known {what} IDs look like {sample}, ... (dtype {index.dtype})."
        if arr.size and index.dtype.kind != arr.dtype.kind and index.dtype.kind in "iuf" and arr.dtype.kind in "OUS":
            hint += " The IDs given are strings; convert them, e.g. [int(v) for v in ids]."
    missing = np.flatnonzero(pos < 0)
    if strict and missing.size:
        unknown = arr[missing].tolist()
        shown = ", ".join(repr(v) for v in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UnknownIDError(
            f"{len(unknown)} of {arr.size} {what} IDs are unknown to the model: {shown}. {hint} "
            + (fix or "New users can be folded in (transform) or handled with a cold_start fallback."),
            unknown,
            missing,
        )
    return pos


# --------------------------------------------------------------------------
# A few users, in this process
# --------------------------------------------------------------------------


def _candidates(items: Any, n_items: int) -> np.ndarray | None:
    if items is None:
        return None
    return np.unique(_positions(items, n_items, "item"))


def _check_n(n: Any, cap: int | None = None) -> int:
    """``n`` as an int, at most ``cap`` (the number of items that can be listed).

    A list never holds more items than there are, so a huge ``n`` (10**9) costs
    what ``n = cap`` costs instead of allocating ``users x n`` entries.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer (list length); got {n!r}.")
    n = int(n)
    return n if cap is None else max(1, min(n, int(cap)))


def _exclude_rows(exclude: Any, u: int, n_items: int):
    if exclude is None:
        return None
    if isinstance(exclude, da.Array):
        exclude = exclude.compute()
    ex = topn.as_block(exclude)
    if ex.shape != (u, n_items):
        raise ValueError(
            f"exclude must have one row per requested user and one column per item, shape "
            f"({u}, {n_items}); got {ex.shape}. Select the users' rows, e.g. X[rows]."
        )
    return ex


def recommend(
    factors: Factors,
    rows: Any,
    n: int = 10,
    *,
    exclude: Any = None,
    items: Any = None,
    item_block: int = topn.ITEM_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items for some users, computed in this process.

    Parameters
    ----------
    factors : Factors
    rows : array-like of int of shape (u,)
        User positions (see :meth:`Factors.row_index`).
    n : int, default=10
        List length, capped at the number of candidate items.
    exclude : sparse matrix or ndarray of shape (u, n_items), optional
        Items to leave out per user (e.g. the training ratings ``X[rows]``):
        stored entries of a sparse matrix, non-zeros of a dense one.
    items : array-like of int, optional
        Candidate item positions; default every item.
    item_block : int
        Items scored at once (memory O(u * item_block)).

    Returns
    -------
    item_idx : ndarray of shape (u, n), int64
        Item positions by decreasing score, ties by smaller position; -1 pads.
    scores : ndarray of shape (u, n)
        Their scores; -inf pads.
    """
    cand = _candidates(items, factors.n_items)
    n = _check_n(n, factors.n_items if cand is None else cand.size)
    rows = _positions(rows, factors.n_users, "user")
    W, ub = factors.user_factors(rows)
    ex = _exclude_rows(exclude, rows.size, factors.n_items)
    return topn.topn_rows(
        W,
        ub,
        factors.global_mean,
        factors.H,
        factors.item_bias,
        n,
        exclude=ex,
        items=cand,
        item_block_size=int(item_block),
    )


def similar_items(factors: Factors, items: Any, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Most similar items by the cosine of H's columns.

    Parameters
    ----------
    factors : Factors
    items : int or array-like of int of shape (q,)
        Item positions (see :meth:`Factors.col_index`).
    n : int, default=10

    Returns
    -------
    item_idx : ndarray of shape (q, n), int64
        The other items by decreasing similarity (an item is never its own
        neighbour), ties by smaller position.
    similarity : ndarray of shape (q, n)
        Cosines in [0, 1] for non-negative factors; items with an all-zero
        column have similarity 0 to every item.
    """
    n = _check_n(n, factors.n_items - 1)
    q = _positions(items, factors.n_items, "item")
    H = np.asarray(factors.H, dtype=np.float64)
    norm = np.linalg.norm(H, axis=0)
    Hn = H / np.where(norm > 0, norm, 1.0)
    self_ex = sp.csr_matrix((np.ones(q.size), (np.arange(q.size), q)), shape=(q.size, H.shape[1]))
    return topn.topn_rows(Hn[:, q].T, None, 0.0, Hn, None, n, exclude=self_ex)


# --------------------------------------------------------------------------
# Popularity
# --------------------------------------------------------------------------


def item_popularity(X: Any) -> np.ndarray:
    """Number of stored entries (ratings, interactions) per item.

    Parameters
    ----------
    X : sparse matrix, ndarray or dask array of shape (n_users, n_items)
        Stored entries of sparse blocks count, non-zeros of dense ones.

    Returns
    -------
    ndarray of shape (n_items,), float64
    """
    X = unwrap(X)
    if not isinstance(X, da.Array):
        return topn.count_columns(X, X.shape[1])
    token = tokenize("dnmf-popularity", X.name)
    core, name = f"dnmf-popularity-core-{token}", f"dnmf-popularity-{token}"
    offsets = np.concatenate([[0], np.cumsum(X.chunks[1])])
    layer: dict = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            layer[(core, i, j)] = (topn.count_columns, (X.name, i, j), X.chunks[1][j])
            keys.append((core, i, j))
    cols = []
    for j in range(X.numblocks[1]):
        layer[(core, "col", j)] = (topn.sum_parts, [(core, i, j) for i in range(X.numblocks[0])])
        cols.append((core, "col", j))
    layer[(name, 0)] = (np.concatenate, cols)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[X])
    out = da.Array(graph, name, chunks=((int(offsets[-1]),),), dtype=np.float64)
    return np.asarray(out.compute())


def popular_items(
    popularity: Any, n: int = 10, *, n_rows: int = 1, exclude: Any = None, items: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most popular items, for ``n_rows`` users.

    Parameters
    ----------
    popularity : array-like of shape (n_items,)
        E.g. :func:`item_popularity` of the training matrix.
    n : int, default=10
    n_rows : int, default=1
    exclude : sparse matrix or ndarray of shape (n_rows, n_items), optional
    items : array-like of int, optional
        Candidate item positions.

    Returns
    -------
    item_idx : ndarray of shape (n_rows, n), int64
    popularity : ndarray of shape (n_rows, n)
    """
    pop = np.asarray(popularity, dtype=np.float64)
    base = Factors(W=np.ones((int(n_rows), 1)), H=pop[None, :])
    return recommend(base, np.arange(int(n_rows)), n, exclude=exclude, items=items)


def popularity_baseline(X: Any, *, row_ids=None, col_ids=None) -> Factors:
    """Factors whose scores are the items' popularity in X (the same for every user).

    Evaluate it next to a model: a recommender that does not beat it on
    precision@k does not personalise.
    """
    X = unwrap(X)
    pop = item_popularity(X)
    m = X.shape[0]
    if isinstance(X, da.Array):
        W = da.ones((m, 1), chunks=(X.chunks[0], 1))
    else:
        W = np.ones((m, 1))
    return Factors(W=W, H=pop[None, :], row_ids=row_ids, col_ids=col_ids)


def unwrap(X: Any) -> Any:
    """A matrix store (or its path) as its Dask array; anything else as is."""
    X = resolve_input(X).data
    if isinstance(X, da.Array):
        return X
    if sp.issparse(X):
        return sp.csr_matrix(X)
    return topn.as_block(X)


# --------------------------------------------------------------------------
# Every user, block-wise on the cluster
# --------------------------------------------------------------------------


def even_chunks(size: int, block: int) -> tuple[int, ...]:
    """``size`` cut into even chunks of at most about ``block``."""
    return even_split(size, max(1, math.ceil(size / block)))


def tall(A: Any, row_chunks: tuple[int, ...] | None, client, what: str) -> da.Array:
    """An array (NumPy, SciPy sparse or Dask) as a Dask array with the given row chunks.

    One chunk along the other axes. In-memory blocks are scattered to the
    cluster when there is a client (large graphs are slow to send).
    """
    if isinstance(A, da.Array):
        want = (tuple(row_chunks or A.chunks[0]),) + tuple((s,) for s in A.shape[1:])
        return A if A.chunks == want else A.rechunk(want)
    if not sp.issparse(A):
        A = np.asarray(A)
    rows = tuple(row_chunks or even_chunks(A.shape[0], USER_BLOCK))
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    rest = (0,) * (A.ndim - 1)
    blocks = {(i,) + rest: A[offsets[i] : offsets[i + 1]] for i in range(len(rows))}
    chunks = (rows,) + tuple((s,) for s in A.shape[1:])
    meta = sp.csr_matrix((0, 0), dtype=A.dtype) if sp.issparse(A) else np.empty((0,) * A.ndim, dtype=A.dtype)
    return blocks_array(blocks, chunks, meta, client, prefix=f"dnmf-{what}", token=tokenize(A, rows))


def placed_factors(factors: Factors, rows: tuple[int, ...] | None, client):
    """The factors as graph inputs: W (and the user bias) in row blocks, H and the item bias whole.

    Returns ``(W, user_bias, H_ref, item_bias_ref, deps)``: Dask arrays for the
    per-user parts (one column chunk), keys (or None) for the small ones, and
    the collections the graph depends on.
    """
    W = tall(factors.W, rows, client, "W")
    if W.numblocks[1] != 1:
        W = W.rechunk((W.chunks[0], -1))
    deps: list = [W]
    ub = None
    if factors.user_bias is not None:
        ub = tall(factors.user_bias, W.chunks[0], client, "user-bias")
        deps.append(ub)
    H_ref, H_deps = _small(factors.H, client, "H")
    ib_ref, ib_deps = _small(factors.item_bias, client, "item-bias")
    return W, ub, H_ref, ib_ref, deps + H_deps + ib_deps


def _small(value: Any, client, what: str) -> tuple[Any, list]:
    """A graph reference to an in-memory array in one block: ``(key, deps)``."""
    if value is None:
        return None, []
    arr = tall(np.asarray(value), (np.shape(value)[0],), client, what)
    return (arr.name,) + (0,) * arr.ndim, [arr]


def row_parts(
    X: da.Array, row_chunks: tuple[int, ...], layer: dict, prefix: str, near: list | None = None
) -> tuple[list, list]:
    """References to X's rows re-blocked to ``row_chunks``, all columns in one block.

    Adds an assembling task per target block to ``layer`` unless X already
    has those row chunks and one column chunk. The blocks of a dnmf store
    are read inside those tasks (:func:`dnmf.engine.graph.x_block_refs`).
    With ``near`` (a key per target block, typically W's blocks), each such
    task also takes that block as an unused input: the scheduler places a
    task where its inputs are, so the read runs on the worker that holds
    W's block and its rows never travel. A read with no input at all would
    go to whichever worker is free. (Annotations would not survive: the
    array optimization that ``compute`` runs by default drops them.)

    Returns
    -------
    refs : list of (len(row_chunks),) keys
    deps : list
        The collections the references depend on (for the graph's layers).
    """
    row_chunks = tuple(int(c) for c in row_chunks)
    ref, deps = x_block_refs(X)
    anchored = not deps and near is not None and dask.config.get("dnmf.placement", True)

    def task(i: int, value: Any) -> Any:
        return (topn.beside, near[i], value) if anchored else value

    if tuple(X.chunks[0]) == row_chunks and X.numblocks[1] == 1:
        if deps:
            return [(X.name, i, 0) for i in range(X.numblocks[0])], deps
        for i in range(X.numblocks[0]):
            layer[(prefix, i)] = task(i, ref(i, 0))
        return [(prefix, i) for i in range(X.numblocks[0])], deps
    src = np.concatenate([[0], np.cumsum(X.chunks[0])])
    dst = np.concatenate([[0], np.cumsum(row_chunks)])
    refs = []
    for i in range(len(row_chunks)):
        a, b = int(dst[i]), int(dst[i + 1])
        pieces = []
        for s in range(X.numblocks[0]):
            lo, hi = max(a, int(src[s])), min(b, int(src[s + 1]))
            if lo < hi or (a == b and s == 0):
                pieces.append([[ref(s, j) for j in range(X.numblocks[1])], lo - int(src[s]), hi - int(src[s])])
        layer[(prefix, i)] = task(i, (topn.assemble, pieces))
        refs.append((prefix, i))
    return refs, deps


def _check_exclude_shape(exclude, m: int, n_items: int) -> None:
    if tuple(exclude.shape) != (m, n_items):
        raise ValueError(
            f"exclude must have the shape of the ratings matrix, ({m}, {n_items}) (users x items); "
            f"got {tuple(exclude.shape)}. Pass the training matrix the model was fitted on."
        )


def recommend_all(
    factors: Factors,
    n: int = 10,
    *,
    exclude: Any = None,
    items: Any = None,
    item_block: int | None = None,
    client: Any = None,
) -> tuple[da.Array, da.Array]:
    """Top-n items for every user, block-wise on the cluster (lazy).

    Parameters
    ----------
    factors : Factors
        ``W`` a Dask array stays where it is (its row chunks are the user
        blocks); a NumPy ``W`` is split into blocks of ``USER_BLOCK`` rows
        (scattered to the cluster when there is a client).
    n : int, default=10
    exclude : dask array, sparse matrix or ndarray of shape (n_users, n_items), optional
        Items to leave out per user, typically the training matrix (a
        store's ``X``): stored entries of sparse blocks, non-zeros of dense
        ones. Any blocking; it is re-blocked to W's rows if needed.
    items : array-like of int, optional
        Candidate item positions; default every item.
    item_block : int, optional
        Most items per item block (default ``topn.ITEM_BLOCK``; the items are
        split into blocks of even sizes). Each task scores
        its user block against one item block, ``topn.SLAB_ENTRIES`` scores
        at a time, so its memory is O(slab + users x n) whatever the sizes.
    client : distributed.Client, optional
        Where in-memory inputs are scattered to; default the active client.
        Compute the results as usual (``dask.compute``, ``.to_zarr``).

    Returns
    -------
    item_idx : dask array of shape (n_users, n), int64
        Chunked like W's rows; -1 pads.
    scores : dask array of shape (n_users, n)
        -inf pads.

    Notes
    -----
    Cost: O(n_users * n_items * k) flops in tasks of one (user block, item
    block) each; the lists are merged over item blocks by a fixed-order tree
    of fan-in 8, O(n_users * n) data moved per tree level. Results are
    identical for any user or item blocking (ties by item index).
    """
    client = client if client is not None else current_client()
    cand = _candidates(items, factors.n_items)
    cand = np.arange(factors.n_items, dtype=np.int64) if cand is None else cand
    n = _check_n(n, cand.size)
    size = int(item_block or topn.ITEM_BLOCK)
    if size < 1:
        raise ValueError(f"item_block must be a positive number of items; got {item_block!r}.")
    # Even blocks of at most ``size`` items: no small straggler block.
    blocks = np.array_split(cand, max(1, math.ceil(cand.size / size)))

    W, ub, H_ref, ib_ref, deps = placed_factors(factors, None, client)
    rows = W.chunks[0]

    ex = None
    if exclude is not None:
        ex = unwrap(exclude)
        _check_exclude_shape(ex, factors.n_users, factors.n_items)
        if not isinstance(ex, da.Array):
            ex = tall(ex, rows, client, "exclude")
    token = tokenize(
        "dnmf-recommend-all",
        W.name,
        None if ub is None else ub.name,
        H_ref,
        ib_ref,
        factors.global_mean,
        n,
        cand,
        size,
        None if ex is None else ex.name,
    )
    core = f"dnmf-recommend-all-{token}"
    idx_name, sc_name = f"dnmf-topn-idx-{token}", f"dnmf-topn-scores-{token}"
    layer: dict = {}
    for j, cols in enumerate(blocks):
        layer[(f"{core}-items", j)] = (topn.item_block, H_ref, ib_ref, cols)
    ex_refs: list = [None] * len(rows)
    if ex is not None:
        near = [(W.name, i, 0) for i in range(len(rows))]
        ex_refs, ex_deps = row_parts(ex, rows, layer, f"{core}-exclude", near)
        deps += ex_deps
    dtype = np.result_type(W.dtype, factors.H.dtype, np.float32 if factors.item_bias is None else np.float64)
    idx_layer, sc_layer = {}, {}
    for i in range(len(rows)):
        parts = []
        for j in range(len(blocks)):
            key = (f"{core}-part", i, j)
            layer[key] = (topn.topn_block, (W.name, i, 0), None, 0.0, (f"{core}-items", j), ex_refs[i], n)
            parts.append(key)
        (top,) = tree_reduce(layer, f"{core}-merge-{i}", parts, topn.merge_list, n)
        if len(parts) == 1:
            # One item block: its task runs inside the final one, so that its lists
            # (users x n) cannot end up on another worker than the final task.
            top = layer.pop(top)
        fin = (f"{core}-final", i)
        layer[fin] = (topn.add_row_offset, top, None if ub is None else (ub.name, i), factors.global_mean)
        idx_layer[(idx_name, i, 0)] = (topn.split_pick, fin, 0)
        sc_layer[(sc_name, i, 0)] = (topn.split_pick, fin, 1)
    graph = assemble(core, layer, deps, {idx_name: idx_layer, sc_name: sc_layer})
    chunks = (rows, (n,))
    return (
        da.Array(graph, idx_name, chunks=chunks, dtype=np.int64),
        da.Array(graph, sc_name, chunks=chunks, dtype=dtype),
    )


def recorded_training_store(
    path: Any, *, user_ids: Any, item_ids: Any, item_counts: Any, storage_options: Any = None
) -> str:
    """The training store a loaded model recorded, once checked to be that store.

    A model file is data, and its recorded ``train_store`` path could point
    anywhere (another store, a URL). It is used only when it is a local
    matrix store whose fingerprint matches the model: the same shape, the
    same user and item IDs, and as many stored ratings as the model counted
    at fit time (``item_counts``).

    Returns
    -------
    str
        The store's path.

    Raises
    ------
    ValueError
        Naming what differs; pass the training store explicitly (or do not
        exclude seen items) instead.
    """
    import pandas as pd

    from ..storage import arrays as io
    from ..storage import locations

    fix = (
        "Name the training store explicitly (--exclude-seen STORE / exclude_seen=PATH) or do not leave out seen items."
    )
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"The model records no usable training store ({path!r}). {fix}")
    path = os.fspath(path)
    if locations.is_url(path) and not path.startswith("file://"):
        raise ValueError(
            f"The model's recorded training store {path!r} is a URL, which is never followed unasked. {fix}"
        )
    if not os.path.isdir(locations.normalize(path)):
        raise ValueError(f"The model's recorded training store {path!r} does not exist. {fix}")
    store = io.open_matrix(path, storage_options=storage_options)
    counts = np.asarray(item_counts, dtype=np.float64)
    problems = []
    if store.shape != (len(user_ids), len(item_ids)):
        problems.append(f"shape {store.shape} instead of {(len(user_ids), len(item_ids))}")
    elif not store.row_ids.equals(pd.Index(user_ids)) or not store.col_ids.equals(pd.Index(item_ids)):
        problems.append("other user or item IDs")
    elif store.nnz is not None and int(store.nnz) != int(round(counts.sum())):
        problems.append(f"{store.nnz} ratings instead of {int(round(counts.sum()))}")
    if problems:
        raise ValueError(
            f"The store at the model's recorded training store path {path!r} is not the one it was fitted on "
            f"({'; '.join(problems)}). {fix}"
        )
    return store.path
