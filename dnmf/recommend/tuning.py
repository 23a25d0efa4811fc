"""``dnmf.tune``: pick an estimator's parameters on a seeded validation split.

A grid search for recommenders. scikit-learn's ``GridSearchCV`` splits the
*rows* of X (users), and a recommender cannot score users it never saw; this
helper splits the *entries* instead (:func:`dnmf.train_test_split`: every
rating goes to validation with probability ``validation_size``), fits every
candidate on the rest, scores it with :func:`dnmf.evaluate` (ranking metrics
leave each user's training entries out of the top-k), and refits the best
candidate on all of X.

On a distributed Client the candidates run side by side: each one is an
independent fit submitted from its own thread (``n_jobs``), as
:func:`dnmf.select_rank` does for its ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

from ..base.estimator import current_client
from ..base.seeds import seed_from
from .evaluation import RANKING_METRICS, RATING_METRICS, evaluate, train_test_split

__all__ = ["TuneResult", "parse_metric", "tune", "validation_split"]

#: Metrics where lower is better.
LOWER_IS_BETTER = RATING_METRICS


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes
    ----------
    best_params_ : dict
        The grid point with the best validation score (the first in grid
        order among equal scores).
    best_score_ : float
        Its validation score (the metric's value: for "rmse" and "mae" the
        lowest, else the highest).
    best_estimator_ : estimator or None
        A clone of the estimator with ``best_params_``, fitted on all of X
        (None with ``refit=False``).
    results_ : pandas.DataFrame
        One row per candidate, in grid order: a ``param_<name>`` column per
        grid parameter, ``score``, ``rank`` (1 = best), ``fit_s`` (seconds of
        the fit, wall clock) and ``n_iter`` (iterations, when the estimator
        records them).
    metric : str
        The metric, as given (e.g. ``"ndcg@10"``).
    greater_is_better : bool
        False for "rmse" and "mae".
    """

    best_params_: dict
    best_score_: float
    best_estimator_: Any
    results_: pd.DataFrame
    metric: str
    greater_is_better: bool = field(default=True)


def parse_metric(metric: str) -> tuple[str, int]:
    """``"ndcg@10"`` as ``("ndcg", 10)``; a ranking metric without ``@k`` has k = 10.

    Raises
    ------
    ValueError
        For a name :func:`dnmf.evaluate` does not know or a cutoff that is
        not a positive integer.
    """
    known = [*RANKING_METRICS, *RATING_METRICS]
    if not isinstance(metric, str):
        raise ValueError(f"metric must be a string such as 'ndcg@10' or 'rmse'; got {metric!r}.")
    name, _, cutoff = metric.strip().lower().partition("@")
    if name not in known:
        raise ValueError(
            f"metric={metric!r} is not known; use one of {[*(m + '@10' for m in RANKING_METRICS), *RATING_METRICS]} "
            "(any cutoff after '@')."
        )
    if not cutoff:
        return name, 10
    if name in RATING_METRICS:
        raise ValueError(f"metric={metric!r}: {name} has no cutoff; pass {name!r}.")
    if not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"metric={metric!r}: the cutoff after '@' must be a positive integer, e.g. '{name}@10'.")
    return name, int(cutoff)


def _candidates(estimator: Any, param_grid: Any) -> list[dict]:
    """The grid's points, checked against the estimator's parameters (before any fit)."""
    grids = [param_grid] if isinstance(param_grid, Mapping) else param_grid
    if not isinstance(grids, Sequence) or isinstance(grids, str) or not grids or not param_grid:
        raise ValueError(
            "param_grid must be a non-empty dict of parameter name -> list of values (or a list of such "
            f"dicts); got {param_grid!r}. E.g. param_grid={{'alpha': [0.1, 0.3, 1.0]}}."
        )
    valid = estimator.get_params(deep=False)
    for grid in grids:
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(
                f"param_grid has an empty or non-dict entry {grid!r}; give each grid as a dict of "
                "parameter name -> list of values, e.g. {'alpha': [0.1, 0.3]}."
            )
        for name, values in grid.items():
            if name not in valid:
                raise ValueError(
                    f"param_grid names {name!r}, which is not a parameter of {type(estimator).__name__}; "
                    f"choose from {sorted(valid)}."
                )
            if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray) or len(values) == 0:
                raise ValueError(
                    f"param_grid[{name!r}] must be a non-empty list of values; got {values!r}. "
                    f"Write {{{name!r}: [{values!r}]}} for a single value."
                )
    points = [dict(p) for p in ParameterGrid(list(grids))]
    for point in points:
        # A bad value fails here, before any fit, with the estimator's own message.
        candidate = clone(estimator).set_params(**point)
        if hasattr(candidate, "_validate_params"):
            candidate._validate_params()
    return points


def validation_split(X: Any, validation_size: float = 0.2, random_state: Any = 0) -> tuple[Any, Any]:
    """The (fit, validation) split :func:`tune` carves from X for a given ``random_state``.

    ``dnmf.train_test_split(method="random")`` with a seed *derived* from
    ``random_state``: a split decides each entry from the seed and its
    (user, item) alone, so splitting a training set again with the seed
    that made it would hold out nothing (every entry that seed sends to
    test is already gone). Use it to score other libraries on the same
    validation entries as :func:`tune`.
    """
    seed = int(np.random.SeedSequence([seed_from(random_state), 0x7475_6E65]).generate_state(1, np.uint64)[0] >> 1)
    return train_test_split(X, method="random", test_size=validation_size, random_state=seed)


def _prepare_split(X: Any, validation_size: float, seed: int, client: Any) -> tuple[Any, Any]:
    train, valid = validation_split(X, validation_size, seed)
    if not isinstance(valid, da.Array) and valid.nnz == 0:
        raise ValueError(
            f"The validation split of X holds no entries (X has {train.nnz} stored entries); "
            "pass more data or a larger validation_size."
        )
    if isinstance(train, da.Array) and client is not None:
        # Every candidate reads the split: keep it in the cluster's memory once.
        train, valid = client.persist([train, valid])
    return train, valid


def tune(
    estimator: Any,
    X: Any,
    param_grid: Mapping[str, Sequence] | Sequence[Mapping[str, Sequence]],
    *,
    metric: str = "ndcg@10",
    validation_size: float = 0.2,
    random_state: Any = 0,
    refit: bool = True,
    n_jobs: int | None = None,
    client: Any = None,
) -> TuneResult:
    """Choose parameters of a recommender by their score on a seeded validation split.

    The split is :func:`validation_split` (the same ``random_state`` gives
    the same split; its seed is derived from ``random_state``, so a training
    set made by ``train_test_split(random_state=s)`` still splits with
    ``random_state=s``).

    Parameters
    ----------
    estimator : dnmf.RatingsNMF, dnmf.NMF or another estimator that
        :func:`dnmf.evaluate` can score (unfitted; it is cloned, never changed)
        The fixed parameters; the grid overrides some of them.
    X : sparse matrix, ndarray, dask array of sparse blocks, matrix store or its path
        Shape (n_users, n_items): the training data, anything
        ``estimator.fit`` accepts and :func:`dnmf.train_test_split` splits.
    param_grid : dict of str to list, or list of such dicts
        As scikit-learn's ``ParameterGrid``: every combination of the listed
        values is a candidate, e.g. ``{"alpha": [0.1, 0.3], "confidence":
        [0.5, 1.0]}`` gives four.
    metric : str, default="ndcg@10"
        ``"ndcg@k"``, ``"precision@k"``, ``"recall@k"``, ``"map@k"``,
        ``"coverage@k"`` (higher is better; a name without ``@k`` has k=10;
        each user's training entries are left out of the top k) or
        ``"rmse"``, ``"mae"`` (lower is better), as :func:`dnmf.evaluate`
        computes them.
    validation_size : float in (0, 1), default=0.2
        Share of X's entries held out for validation (each entry with this
        probability, as ``train_test_split(method="random")``).
    random_state : int, RandomState, Generator or None, default=0
        Seed of the validation split, and of every candidate's fit when the
        estimator's own ``random_state`` is None (so that a seeded call gives
        the same choice every time).
    refit : bool, default=True
        Fit the best candidate on all of X (``best_estimator_``).
    n_jobs : int or None, default=None
        Candidates fitted at the same time, each from its own thread.
        None: all of them on a distributed Client, one at a time without
        (the local scheduler already uses every core for one fit).
    client : distributed.Client or None
        Cluster to run on (default: the estimator's ``client``, else the
        active Client, else local threads).

    Returns
    -------
    TuneResult
        ``best_params_``, ``best_score_``, ``best_estimator_`` and
        ``results_`` (a DataFrame with one row per candidate).

    Raises
    ------
    ValueError
        An empty grid, a parameter the estimator does not have, a value it
        rejects, an unknown metric or a bad ``validation_size``, before any
        fit.

    Examples
    --------
    >>> result = dnmf.tune(dnmf.RatingsNMF(20, feedback="implicit"), train,   # doctest: +SKIP
    ...                    {"alpha": [0.1, 0.3, 1.0]}, metric="ndcg@10")
    >>> result.best_params_, result.best_score_                               # doctest: +SKIP
    ({'alpha': 0.3}, 0.33)
    """
    name, k = parse_metric(metric)
    if not isinstance(validation_size, float | int) or not 0 < validation_size < 1:
        raise ValueError(
            f"validation_size must be a fraction in (0, 1); got {validation_size!r} (e.g. 0.2 to hold out 20%)."
        )
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"n_jobs must be a positive int or None; got {n_jobs!r}.")
    points = _candidates(estimator, param_grid)
    params = estimator.get_params(deep=False)
    if client is None:
        client = params.get("client") or current_client()
    seed = seed_from(random_state)
    fixed: dict[str, Any] = {}
    if "client" in params and client is not None:
        fixed["client"] = client
    if "random_state" in params and params["random_state"] is None:
        fixed["random_state"] = seed
    train, valid = _prepare_split(X, validation_size, seed, client)
    if n_jobs is None:
        n_jobs = len(points) if client is not None else 1

    def one(point: dict) -> tuple[float, float, float]:
        model = clone(estimator).set_params(**fixed, **point)
        started = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - started
        if name in RATING_METRICS:
            scores = evaluate(model, valid, k=k, metrics=[name])
        else:
            scores = evaluate(model, valid, train=train, k=k, metrics=[name])
        return float(scores[name]), seconds, float(getattr(model, "n_iter_", math.nan))

    if n_jobs <= 1 or len(points) <= 1:
        outcomes = [one(p) for p in points]
    else:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(points))) as pool:
            outcomes = list(pool.map(one, points))

    greater = name not in LOWER_IS_BETTER
    scores = np.array([o[0] for o in outcomes])
    if np.isnan(scores).all():
        raise ValueError(
            f"No candidate could be scored by {metric!r} on the validation split (no validation user "
            "with a relevant entry); pass more data or a larger validation_size."
        )
    # NaN (e.g. no validation user) never wins; stable order keeps the first of equal scores.
    keyed = np.where(np.isnan(scores), -np.inf, scores if greater else -scores)
    order = np.argsort(-keyed, kind="stable")
    best = int(order[0])
    rank = np.empty(len(points), dtype=np.int64)
    rank[order] = np.arange(1, len(points) + 1)
    names = list(dict.fromkeys(key for p in points for key in p))
    table = pd.DataFrame(
        {
            **{f"param_{key}": [p.get(key) for p in points] for key in names},
            "params": points,
            "score": scores,
            "rank": rank,
            "fit_s": [o[1] for o in outcomes],
            "n_iter": [o[2] for o in outcomes],
        }
    )
    best_estimator = None
    if refit:
        best_estimator = clone(estimator).set_params(**fixed, **points[best]).fit(X)
    return TuneResult(
        best_params_=dict(points[best]),
        best_score_=float(scores[best]),
        best_estimator_=best_estimator,
        results_=table,
        metric=metric,
        greater_is_better=greater,
    )
