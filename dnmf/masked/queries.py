"""RatingsNMF's recommendation queries: top-n for known and new users, all users, similar items.

A mixin of :class:`dnmf.masked.estimator.RatingsNMF` (as implicit's ``RecommenderBase``
holds the queries every model answers): it reads the fitted ``factors_``, the ID maps and
the training ratings the fit recorded, and never refits.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ..base import inputs
from . import kernels as masked
from .data import as_2d, dask_rows, is_str, map_ids


class RatingsQueries:
    """Recommendation queries of a fitted RatingsNMF (see its docstring for the attributes used)."""

    def _training_ratings(self):
        """What ``exclude_seen=True`` leaves out: the fit's ratings, or the path of its store."""
        source = self.__dict__.get("_seen")
        if source is None and self.__dict__.get("_train_store"):
            source = self._train_store
            if self.__dict__.get("_train_store_from_file"):
                # A model file is data: its recorded path is followed only when it is that store.
                from ..recommend.factors import recorded_training_store

                source = recorded_training_store(
                    source,
                    user_ids=self.user_ids_,
                    item_ids=self.item_ids_,
                    item_counts=self.item_counts_,
                    storage_options=self.storage_options,
                )
        if source is None:
            raise ValueError(
                "exclude_seen=True needs the ratings the model was fitted on, which this model "
                "does not have (it was loaded without them). Pass exclude_seen=X (a sparse matrix "
                "or the path of the training store) or exclude_seen=False."
            )
        return source

    def _seen_rows(self, rows: np.ndarray, source):
        """CSR (len(rows), n_items) of the entries to exclude for these rows."""
        if source is True:
            source = self._training_ratings()
        source = inputs.resolve_input(source, self.storage_options).data
        if isinstance(source, da.Array):
            return dask_rows(source, rows)
        return masked.observed(as_2d(source))[rows]

    def _positions(self, user_ids, cold_start):
        ids = np.atleast_1d(np.asarray(user_ids, dtype=object if is_str(user_ids) else None))
        pos = self.factors_.row_index(ids, strict=cold_start == "raise")
        return ids, pos, pos < 0

    def recommend(self, user_ids, n: int = 10, exclude_seen=True, items=None, cold_start: str = "raise"):
        """Top-n items for the given users.

        Parameters
        ----------
        user_ids : ID or array-like of IDs
            Users, by their IDs (``user_ids_``).
        n : int
        exclude_seen : bool, sparse matrix or store path, default=True
            Leave out items the user has rated: True uses the training
            ratings (kept by the fit; for a loaded model, the training store
            it was fitted from), or pass the ratings to exclude.
        items : array-like of item IDs, optional
            Candidate items (default: all).
        cold_start : {"raise", "drop", "nan", "popular"}
            Unknown user IDs: raise KeyError naming them; leave them out;
            give them NaN scores (item ``None``); or give them the most-rated
            items (``item_counts_``) with NaN scores.

        Returns
        -------
        pandas.DataFrame
            Columns ``user``, ``rank`` (1..n), ``item``, ``score``; n rows per
            user in the order given (fewer when fewer items are eligible).
        """
        check_is_fitted(self)
        from ..recommend import factors as rec

        if cold_start not in ("raise", "drop", "nan", "popular"):
            raise ValueError(f"cold_start must be 'raise', 'drop', 'nan' or 'popular'; got {cold_start!r}.")
        ids, pos, unknown = self._positions(user_ids, cold_start)
        known = np.flatnonzero(~unknown)
        rows = pos[known]
        cand = None if items is None else self.factors_.col_index(np.asarray(items).ravel())
        exclude = self._seen_rows(rows, exclude_seen) if exclude_seen is not False else None
        idx, scores = rec.recommend(self.factors_, rows, n=n, exclude=exclude, items=cand)
        idx, scores = np.asarray(idx), np.asarray(scores)
        n_out = idx.shape[1]
        frames = []
        item_ids = self.item_ids_
        for t, user in enumerate(ids):
            if not unknown[t]:
                r = int(np.searchsorted(known, t))
                valid = idx[r] >= 0
                its, scs = idx[r][valid], scores[r][valid]
                frames.append((user, item_ids[its].tolist(), scs))
            elif cold_start == "nan":
                frames.append((user, [None] * n_out, np.full(n_out, np.nan)))
            elif cold_start == "popular":
                top, _ = rec.popular_items(self.item_counts_, n_out, items=cand)
                top = top[0][top[0] >= 0]
                frames.append((user, item_ids[top].tolist(), np.full(top.size, np.nan)))
        rows_out = [
            (u, rank + 1, it, float(sc))
            for u, its, scs in frames
            for rank, (it, sc) in enumerate(zip(its, scs, strict=True))
        ]
        return pd.DataFrame(rows_out, columns=["user", "rank", "item", "score"])

    def recommend_new(self, ratings, n: int = 10, *, user_ids=None, exclude_seen: bool = True, items=None):
        """Top-n items for new users from their ratings alone (fold-in, no refit).

        Parameters
        ----------
        ratings : dict or matrix
            One user's ``{item_id: rating}``, or a (n_new, n_items) matrix in
            the model's item order (see :meth:`fold_in`).
        n : int
        user_ids : array-like, optional
            Names of the new users in the output (default: 0, 1, ...).
        exclude_seen : bool
            Leave out the items they rated.
        items : array-like of item IDs, optional
            Candidate items.

        Returns
        -------
        pandas.DataFrame
            Columns ``user``, ``rank``, ``item``, ``score`` (as :meth:`recommend`).
        """
        check_is_fitted(self)
        from ..recommend import factors as rec

        rows = masked.observed(as_2d(self._new_rows(ratings)))
        f = self.fold_in(rows, user_ids=user_ids)
        cand = None if items is None else self.factors_.col_index(np.asarray(items).ravel())
        idx, scores = rec.recommend(
            f, np.arange(rows.shape[0]), n=n, exclude=rows if exclude_seen else None, items=cand
        )
        out = [
            (user, rank + 1, self.item_ids_[int(j)], float(sc))
            for user, its, scs in zip(f.row_ids, np.asarray(idx), np.asarray(scores), strict=True)
            for rank, (j, sc) in enumerate(zip(its, scs, strict=True))
            if j >= 0
        ]
        return pd.DataFrame(out, columns=["user", "rank", "item", "score"])

    def recommend_all(self, n: int = 10, *, exclude_seen=True, item_block=None):
        """Top-n items for every user, block-wise on the cluster.

        Returns
        -------
        user_ids : pandas.Index (n_users,)
        item_ids : dask array (n_users, n) of item IDs (positions mapped
            through ``item_ids_``; ``-1`` positions, when fewer than n items
            are eligible, map to ``None``/``-1``)
        scores : dask array (n_users, n)
        """
        check_is_fitted(self)
        from ..recommend import factors as rec

        exclude = None
        if exclude_seen is not False:
            exclude = self._seen_dask(exclude_seen)
        client = self._client()
        idx, scores = rec.recommend_all(self.factors_, n, exclude=exclude, item_block=item_block, client=client)
        ids = np.asarray(self.item_ids_)
        if isinstance(self.item_ids_, pd.RangeIndex):
            return self.user_ids_, idx, scores
        fill = -1 if ids.dtype.kind in "iu" else None
        mapped = idx.map_blocks(map_ids, ids, fill, dtype=ids.dtype if fill == -1 else object)
        return self.user_ids_, mapped, scores

    def _seen_dask(self, source):
        """The exclusion matrix for ``recommend_all`` (any blocking: it is re-blocked to W's)."""
        if source is True:
            source = self._training_ratings()
        source = inputs.resolve_input(source, self.storage_options).data
        return source if isinstance(source, da.Array) else masked.observed(as_2d(source))

    def similar_items(self, item_id, n: int = 10) -> pd.DataFrame:
        """The n items most similar to ``item_id`` (cosine of H's columns).

        Returns a DataFrame with columns ``item``, ``rank``, ``similar``, ``score``.
        """
        check_is_fitted(self)
        from ..recommend import factors as rec

        ids = np.atleast_1d(np.asarray(item_id, dtype=object if is_str(item_id) else None))
        pos = self.factors_.col_index(ids)
        idx, scores = rec.similar_items(self.factors_, pos, n=n)
        idx, scores = np.asarray(idx), np.asarray(scores)
        out = []
        for t, it in enumerate(ids):
            valid = idx[t] >= 0
            for rank, (j, s) in enumerate(zip(idx[t][valid], scores[t][valid], strict=True)):
                out.append((it, rank + 1, self.item_ids_[int(j)], float(s)))
        return pd.DataFrame(out, columns=["item", "rank", "similar", "score"])
