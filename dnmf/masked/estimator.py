"""``dnmf.RatingsNMF``: masked NMF for ratings, implicit feedback, fold-in and recommendations.

The estimator fits only the *observed* entries of a ratings matrix (a missing
rating is unknown, not zero), with non-negative user and item factors and,
optionally, free user/item biases and a global mean (see
:mod:`dnmf.masked.kernels` for the objectives and solvers,
:mod:`dnmf.masked.graph` for the blocked step, :mod:`dnmf.masked.data` for
the input). It runs on the engine's loop (:mod:`dnmf.engine.loop`, with
:class:`dnmf.masked.step.MaskedStep`), checkpoints and recovery;
recommendations and metrics are delegated to :mod:`dnmf.recommend`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from numbers import Integral, Real

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..base.estimator import RUN_CONSTRAINTS, DnmfEstimator, params_from_json
from ..base.seeds import seed_from
from ..engine import checkpoint as checkpoint_mod
from ..engine import loop
from ..engine.checkpoint import LoopState
from ..engine.runner import Runner
from ..storage import checkpoints as checkpoint_store
from ..storage import factors, locations
from . import graph as masked_graph
from . import kernels as masked
from .data import RatingsData, as_2d, check_summary, is_str
from .queries import RatingsQueries
from .step import MaskedStep
from .stored import StoredMaskedStep

logger = logging.getLogger("dnmf")

_ESTIMATOR = "RatingsNMF"

#: ``alpha="auto"`` for explicit ratings (with the ALS-WR count scaling).
EXPLICIT_ALPHA = 0.1
#: ``alpha="auto"`` for implicit feedback (with ``reg_scaling="cells"``).
IMPLICIT_ALPHA = 0.3
#: ``reg_scaling="cells"``: the powers of the number of cells and of the mean confidence.
CELLS_POWER = 0.25
CONFIDENCE_POWER = 2.0 / 3.0
#: ``user_count_power="auto"`` for implicit feedback: a user's penalty grows as their entries to this power.
IMPLICIT_USER_COUNT_POWER = 0.6


def cells_scale(n_users: int, n_items: int, confidence_mean: float) -> float:
    """The factor ``reg_scaling="cells"`` multiplies the implicit penalty by.

    ``(n_users·n_items)^(1/4) · c̄^(2/3)``, ``c̄`` (``confidence_mean``) the
    mean confidence of the observed training entries; a NaN ``c̄`` (a model
    that never recorded it) counts as 1.
    """
    scale = (float(n_users) * float(n_items)) ** CELLS_POWER
    if not math.isnan(confidence_mean):
        scale *= confidence_mean**CONFIDENCE_POWER
    return scale


class RatingsNMF(RatingsQueries, DnmfEstimator):
    """Masked (weighted) NMF of a ratings matrix: fits the observed entries only.

    Rows are users, columns items. The model scores a (user, item) pair as
    ``global_mean_ + user_bias_[i] + item_bias_[j] + W[i] @ H[:, j]`` with
    ``W, H >= 0`` (biases free in sign, absent unless fitted). Two models:

    - ``feedback="explicit"`` (ratings): minimises
      ``Σ_(i,j) observed (x_ij − score_ij)² + penalties``; missing entries have
      no effect at all. With ``reg_scaling="count"`` (ALS-WR, as Spark's ALS)
      each user's and item's penalty is multiplied by its number of ratings.
    - ``feedback="implicit"`` (clicks, plays, counts; Hu, Koren & Volinsky
      2008): minimises ``Σ_all c_ij (p_ij − W[i] @ H[:, j])² + penalties``
      with preference ``p = 1`` and confidence ``c = 1 + confidence·x`` where
      x is observed (other forms: ``confidence_form``,
      ``preference_threshold``), ``p = 0, c = 1`` elsewhere, at
      O(nnz·k² + (m+n)·k³) per iteration (the Gram trick), with non-negative
      factors. The penalty is ``alpha`` times ``(m·n)^(1/4)·c̄^(2/3)``, ``c̄``
      the mean confidence of the observed entries (``reg_scaling="cells"``),
      and each user's times ``(n_u/n̄)^0.6`` (``user_count_power``).

    **Which model?** A model fitted on observed ratings predicts ratings well
    (RMSE) but ranks top-n lists poorly: it never sees what users did *not*
    rate. On MovieLens (ml-latest-small, seeded 80/20 split, k=20) the
    explicit model reached test RMSE 0.866 but precision@10 (excluding seen
    items) of 0.001, below the popularity baseline's 0.163, while
    ``feedback="implicit"`` reached 0.277 and plain :class:`dnmf.NMF`
    (missing = zero) 0.245. Use the explicit model to *predict ratings*, and
    ``feedback="implicit"`` (or ``dnmf.NMF``) to *recommend*.

    Parameters
    ----------
    n_components : int, default=20
        Number of factors k.
    feedback : {"explicit", "implicit"}, default="explicit"
    solver : {"als", "ccd", "cg"}, default="als"
        "als": alternating least squares, every half-step solved exactly per
        user/item (non-negative least squares by block principal pivoting on
        that row's observed entries), O(nnz·k² + (m+n)·k³) per iteration.
        "ccd": coordinate descent on the residuals at the observed entries
        (CCD++ order), ``sweeps`` passes per half-step, O(nnz·k·sweeps).
        Measured on MovieLens ml-latest-small at k=64 (seeded 80/20 split,
        ``benchmarks/bench_masked_speed.py``): an iteration of "ccd" costs
        a tenth of one of "als" for explicit ratings and a quarter for
        implicit feedback; explicit ratings reach the same test RMSE (0.8512
        against 0.8522); implicit feedback needs about three times the
        iterations for the same NDCG@10 (30 "ccd" iterations: 0.3557, 10
        "als": 0.3554; 50 against 20: 0.3581 against 0.3573), so "ccd" is
        the faster route to a given quality at large k.
        "cg": ``cg_steps`` projected conjugate-gradient steps per user/item
        and half-step, warm-started from the previous iteration's factors
        (the Gram trick of implicit ALS, the factors kept non-negative),
        O(nnz·k·cg_steps + (m+n)·k²·cg_steps), in a compiled loop (Numba);
        many steps give "als"'s exact solution.
    biases : bool or "auto", default="auto"
        Fit a user bias, an item bias and the global mean (explicit only).
        "auto": True for explicit, False for implicit.
    alpha : float or "auto", default="auto"
        Penalty weight of the factors: ``alpha·(1 − l1_ratio)·||·||² +
        alpha·l1_ratio·Σ`` per user and per item, times the scale of
        ``reg_scaling``. "auto": 0.1 for explicit ratings (with the count
        scaling, as Spark's ALS) and 0.3 for implicit feedback (with the
        "cells" scaling; see ``reg_scaling`` for how it was chosen).
    l1_ratio : float in [0, 1], default=0.0
    alpha_bias : float or "same", default="same"
        L2 weight of the biases (scaled like ``alpha``); "same" uses ``alpha``.
    reg_scaling : {"auto", "count", "cells", "none"}, default="auto"
        How the penalty scales with the data. "count": each user's and item's
        penalty times its number of ratings (ALS-WR, the explicit model's
        default). "cells" (implicit only): the penalty times
        ``(n_users·n_items)^(1/4) · c̄^(2/3)``, where ``c̄`` is the mean
        confidence ``c`` of the observed training entries
        (``confidence_mean_``). "none": ``alpha`` as is (``alpha=0.1,
        reg_scaling="none"`` is the implicit model's default before the
        "cells" scaling). "auto": "count" for explicit, "cells" for implicit.

        Why: the implicit loss sums ``c·(p − score)²`` over all
        ``n_users·n_items`` cells, so its penalty must grow with them and
        with the confidence; measured (NDCG@10 on held-out data), it grows
        far less than in proportion. On ten data sets (MovieLens
        ml-latest-small and subsets of it, generated play counts and
        ratings; ``n_users·n_items`` from 6·10⁴ to 1.8·10⁷) the best penalty
        divided by ``c̄^(2/3)`` grew about as the fourth root of the cells
        (the best ``alpha`` of this rule stayed within 0.3–0.6, where the
        square root, which a per-row count of cells amounts to, would have
        spread it 4× more), and on MovieLens the best penalty went from 30
        to about 500 as ``c̄`` went from 2 to 140 (``confidence`` 0.3 to
        40): as ``c̄^0.6``–``c̄^0.8`` (the missing cells keep weight 1).
        ``alpha`` 0.3 puts the penalty within 10% of the best one on
        ml-latest-small (``c̄`` = 4.5 with ratings as strengths: penalty 40)
        and at the low end elsewhere: too large a penalty is the worse
        error, as the non-negative factors collapse towards one popularity
        component. See the README and ``benchmarks/bench_implicit_quality.py``.
    confidence : float, default=1.0
        Implicit model: α in the confidence ``c`` of an observed entry (see
        ``confidence_form``). Hu et al. used 40 for play counts; for 0.5–5
        star ratings used as strengths, 1 ranked best on MovieLens. Tune it
        on a held-out split (``dnmf.evaluate``); the default penalty follows
        it (``reg_scaling``).
    confidence_form : {"linear", "log", "proportional"}, default="linear"
        Implicit model: the confidence of an observed value ``x`` (a missing
        entry has ``c = 1``):

        - "linear": ``c = 1 + α·x`` (Hu et al., eq. 5);
        - "log": ``c = 1 + α·log(1 + x/ε)`` (Hu et al., eq. 6), for counts
          with a heavy tail;
        - "proportional": ``c = max(α·x, confidence_floor)``: the
          ``implicit`` package's ALS (``c = α·x``), where an entry with
          ``α·x < 1`` (a low rating) weighs less than a missing one.
    epsilon : float > 0, default=1.0
        ε of ``confidence_form="log"``.
    confidence_floor : float >= 0, default=0.0
        Smallest confidence of an observed entry with
        ``confidence_form="proportional"``.
    preference_threshold : float or None, default=None
        Implicit model: observed values ``x < preference_threshold`` get
        preference ``p = 0`` ("not preferred"), keeping their confidence ``c``
        (they push their score to 0 harder than a missing entry when
        ``c > 1``); None: every observed entry has ``p = 1``. E.g. 3 for 1–5
        star ratings to count low ratings as dislikes.
    user_count_power : float >= 0 or "auto", default="auto"
        Implicit model: each user's penalty is multiplied by
        ``(n_u / n̄)^user_count_power``, ``n_u`` the user's observed training
        entries (at least 1) and ``n̄`` their mean over the users; the items'
        penalty is not. "auto": 0.6 for implicit feedback (0 for explicit
        ratings, whose count scaling is ``reg_scaling="count"``); 0: the same
        penalty for every user (the model before this parameter).

        Why: with one penalty for everyone, a heavy user's many entries
        outweigh it and their factors grow to fit them all, while a light
        user's few are shrunk hard; a penalty that grows with the user's
        entries (ALS-WR's full count, power 1, is the explicit model's
        answer) evens this out. Measured (NDCG@10, k = 20, seeded 80/20
        split, model seeds 0 and 1): on MovieLens ml-latest-small 0.3245 and
        0.3043 with power 0, 0.3373/0.3304 (0.5), 0.3398/0.3323 (0.6),
        0.3379/0.3344 (0.75), 0.3344 (1, seed 0); on the generated play
        counts of ``benchmarks/bench_implicit_quality.py`` 0.1814 (0),
        0.1800 (0.6), 0.1790 (0.75) for seed 0: flat on the counts, +0.015
        to +0.03 on the ratings, whose users' counts spread far more
        (20 to 2,698 ratings per user). The items keep one penalty: a count power on
        their side lowered NDCG@10 on MovieLens (0.289 with 0.5).
    tol : float, default=1e-4
        Stop when an iteration lowers the objective by less than ``tol``
        times its value.
    max_iter : int, default=50
    sweeps : int, default=1
        "ccd" only: coordinate sweeps per half-step.
    cg_steps : int, default=3
        "cg" only: conjugate-gradient steps per user/item and half-step (3,
        as the ``implicit`` package's ALS).
    random_state : int, RandomState or None
        Seed of the initial factors. The same seed gives bit-identical
        factors wherever the tasks run; for the explicit model also whatever
        the blocking (every row is computed from its own entries and the
        objective is summed exactly). The implicit model's Grams are summed
        in a fixed order per blocking.
    verbose : int, default=0
        Log every iteration's objective on the ``"dnmf"`` logger.
    max_time : float or None
        Stop after this many seconds of iterations.
    chunks : "auto", int or chunk tuples, default="auto"
        Blocking of in-memory inputs ("auto": bands of about 16 MiB of
        ratings in both orientations); Dask inputs and stores keep theirs.
    client : distributed.Client or None
        Cluster to run on (default: the active Client, else local threads).
    checkpoint, checkpoint_every, checkpoint_seconds, keep_checkpoints, max_retries, storage_options
        As in :class:`dnmf.NMF`: checkpoints of the factors written by the
        workers every N iterations / S seconds, ``fit(X, resume=PATH)``
        continues bit-identically, and lost workers are recovered from the
        last checkpoint.
    factor_store : str, os.PathLike or None, default=None
        Directory (local path or fsspec URL, new or empty) where the users'
        factors and biases live during the fit instead of in the workers'
        memory: row task ``i`` reads its block from there and writes the new
        one every iteration, and each item task reads the new blocks back one
        at a time, accumulating its items' Grams, instead of receiving every
        user who rated its items. So a fit whose W is larger than the
        cluster's memory runs (H and the item biases must still fit a
        worker; an item task holds at most 256 MiB of its items' Grams, and
        reads W once more per such group of items). One
        generation per iteration, committed by a pointer once all its blocks
        are written; checkpoints refer to a generation instead of copying W.
        Same factors, bit for bit, as the in-memory fit. Needs
        ``solver="als"``. ``user_factors_`` of a Dask or store X is then a
        lazy Dask array reading the store's last generation.

    Attributes
    ----------
    factors_ : dnmf.recommend.Factors
        Everything that scores: W, H, biases, global mean and the ID maps.
    user_factors_ : ndarray (n_users, k), or a Dask array for Dask/store input
        W.
    components_ : ndarray of shape (k, n_items)
        H.
    user_bias_ : ndarray of shape (n_users,) or None
    item_bias_ : ndarray of shape (n_items,) or None
    global_mean_ : float
        Mean observed rating (0 without biases).
    confidence_mean_ : float
        Implicit model: the mean confidence ``c̄`` of the observed training
        entries, which ``reg_scaling="cells"`` scales the penalty with
        (NaN for explicit ratings and for models saved before it was
        recorded, which load with ``reg_scaling="none"`` where they had
        "auto", as it meant then).
    rating_mean_ : float
        Mean observed rating, with or without biases (the baseline of an
        explicit model without biases for unknown users and items, see
        :meth:`predict`). Models saved before it was recorded load with
        ``global_mean_`` when they have biases (the same value), else NaN.
    user_ids_, item_ids_ : pandas.Index
        External IDs of the rows and columns (a store's ID maps; positions
        for in-memory input).
    item_counts_ : ndarray of shape (n_items,)
        Observed entries per item (popularity).
    n_iter_ : int
    converged_ : bool
        Whether the stopping rule was met (False when ``max_iter``,
        ``max_time`` or the callback ended the fit).
    loss_history_ : ndarray of shape (``n_iter_``,)
        Objective (data term + penalties) after every iteration.
    n_components_, n_features_in_ : int

    Notes
    -----
    Input: a SciPy sparse matrix (every *stored* entry is observed, an
    explicit 0 included), a NumPy array (NaN marks missing entries), a Dask
    array of such blocks, or the path of a matrix store (``dnmf.ingest``).
    Both orientations of X are needed (users for W, items for H): in-memory X
    is kept twice on the workers (by rows and transposed), store-backed X is
    read twice per iteration and its blocks transposed as they are read
    (one O(nnz) CSR→CSC conversion per block per iteration).
    """

    _MODEL_KIND = _ESTIMATOR

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "feedback": [StrOptions({"explicit", "implicit"})],
        "solver": [StrOptions({"als", "ccd", "cg"})],
        "biases": ["boolean", StrOptions({"auto"})],
        "alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "alpha_bias": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "reg_scaling": [StrOptions({"auto", "count", "cells", "none"})],
        "confidence": [Interval(Real, 0, None, closed="left")],
        "confidence_form": [StrOptions({"linear", "log", "proportional"})],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "confidence_floor": [Interval(Real, 0, None, closed="left")],
        "preference_threshold": [Real, None],
        "user_count_power": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "sweeps": [Interval(Integral, 1, None, closed="left")],
        "cg_steps": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "factor_store": [str, os.PathLike, None],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        n_components=20,
        *,
        feedback="explicit",
        solver="als",
        biases="auto",
        alpha="auto",
        l1_ratio=0.0,
        alpha_bias="same",
        reg_scaling="auto",
        confidence=1.0,
        confidence_form="linear",
        epsilon=1.0,
        confidence_floor=0.0,
        preference_threshold=None,
        user_count_power="auto",
        tol=1e-4,
        max_iter=50,
        sweeps=1,
        cg_steps=3,
        random_state=None,
        verbose=0,
        max_time=None,
        chunks="auto",
        client=None,
        checkpoint=None,
        checkpoint_every=10,
        checkpoint_seconds=None,
        keep_checkpoints=2,
        max_retries=3,
        storage_options=None,
        factor_store=None,
    ):
        self.n_components = n_components
        self.feedback = feedback
        self.solver = solver
        self.biases = biases
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.alpha_bias = alpha_bias
        self.reg_scaling = reg_scaling
        self.confidence = confidence
        self.confidence_form = confidence_form
        self.epsilon = epsilon
        self.confidence_floor = confidence_floor
        self.preference_threshold = preference_threshold
        self.user_count_power = user_count_power
        self.tol = tol
        self.max_iter = max_iter
        self.sweeps = sweeps
        self.cg_steps = cg_steps
        self.random_state = random_state
        self.verbose = verbose
        self.max_time = max_time
        self.chunks = chunks
        self.client = client
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.max_retries = max_retries
        self.storage_options = storage_options
        self.factor_store = factor_store

    # ------------------------------------------------------------ fitting

    def fit(self, X, y=None, *, callback=None, resume=None):
        """Fit the model to the observed entries of X.

        Parameters
        ----------
        X : sparse matrix, ndarray (NaN = missing), Dask array, store path or MatrixStore
            Shape (n_users, n_items).
        y : ignored
        callback : callable, optional
            ``callback(iteration, elapsed_seconds, loss)`` after every
            iteration; returning False stops the fit.
        resume : str, optional
            Continue from the checkpoint at this path.

        Returns
        -------
        self
        """
        self._validate_params()
        p0 = self._params()  # parameter combinations, before any pass over X
        root = self._check_factor_store(resume)
        client = self._client()
        data = RatingsData.prepare(X, self.chunks, client, self.storage_options)
        runner = Runner(client, single_block=data.single_block)
        summ = data.summary(runner)
        check_summary(summ, self.feedback)
        nnz = summ[1]
        confidence_mean = math.nan
        if self.feedback == "implicit":
            confidence_mean = masked.exact_value(data.confidence_total(runner, p0), nnz)
        p = self._params(
            mean=masked.exact_value(summ[0], nnz),
            confidence_mean=confidence_mean,
            shape=data.shape,
            count_mean=nnz / max(data.shape[0], 1),
        )
        bands = data.bands(runner)
        seed = seed_from(self.random_state)
        m, n = data.shape
        fingerprint = {
            "shape": [int(m), int(n)],
            "chunks": [[int(c) for c in data.row_chunks], [int(c) for c in data.col_chunks]],
            "nnz": int(nnz),
            "sum": masked.exact_value(summ[0]),
        }
        state = None
        if resume is not None:
            U0, V0, state = self._resume_from(resume, fingerprint)
        else:
            U0, V0 = self._initial(data, p, seed, summ)
        checkpointer = None
        path = self.checkpoint if self.checkpoint is not None else resume
        if path is not None:
            checkpointer = checkpoint_mod.Checkpointer(
                path,
                every=self.checkpoint_every,
                seconds=self.checkpoint_seconds,
                keep_last=self.keep_checkpoints,
                storage_options=self.storage_options,
                meta={"params": self._resume_params(), "fingerprint": fingerprint, "estimator": _ESTIMATOR},
            )

        def recover():
            nb = data.bands(runner, reload=True)
            if checkpointer is not None and checkpoint_store.exists(checkpointer.path, self.storage_options):
                Ur, Vr, st = self._resume_from(checkpointer.path, fingerprint)
            else:
                (Ur, Vr), st = self._initial(data, p, seed, summ), LoopState()
            return nb, Ur, Vr, st

        if root is None:
            step = MaskedStep(bands, p, self.tol, recover=recover)
        else:
            step = StoredMaskedStep(
                root,
                bands,
                p,
                self.tol,
                recover=recover,
                start=state.iteration if state is not None else 0,
                storage_options=self.storage_options,
            )
        result = loop.run(
            step,
            (U0, V0),
            max_iter=self.max_iter,
            tol=self.tol,
            max_time=self.max_time,
            verbose=self.verbose,
            runner=runner,
            callback=callback,
            state=state,
            checkpointer=checkpointer,
            recover=runner.client is not None,
            max_retries=self.max_retries,
        )
        if root is not None:
            factors.drop_spare(root)
        U, V, _ = result.state
        history, n_iter = result.history, result.n_iter
        V_np = np.asarray(runner.compute(V))
        self._set_fitted(
            p,
            U if not data.in_memory else np.asarray(runner.compute(U)),
            V_np,
            history,
            n_iter,
            data,
            runner,
            rating_mean=masked.exact_value(summ[0], nnz),
            confidence_mean=confidence_mean,
        )
        self.converged_ = bool(result.converged)
        return self

    def _check_factor_store(self, resume) -> str | None:
        """Before any work: the solver can stream, and a fresh fit never writes over an earlier one's factors."""
        if self.factor_store is None:
            return None
        if self.solver != "als":
            raise ValueError(
                f"factor_store needs solver='als'; got solver={self.solver!r} (ccd and cg need every "
                "user row of an item at once). Use solver='als', or leave factor_store=None."
            )
        root = locations.normalize(self.factor_store)
        if resume is None:
            factors.check_new(root, self.storage_options)
        return root

    def fit_transform(self, X, y=None, **fit_params):
        """Fit and return ``user_factors_`` (W)."""
        return self.fit(X, **fit_params).user_factors_

    def _reg_scaling(self) -> str:
        """``reg_scaling`` resolved: "auto" is "count" (explicit) or "cells" (implicit)."""
        if self.reg_scaling == "auto":
            return "cells" if self.feedback == "implicit" else "count"
        return self.reg_scaling

    def _alpha(self) -> float:
        """``alpha`` resolved: "auto" is 0.1 (explicit) or IMPLICIT_ALPHA (implicit)."""
        if isinstance(self.alpha, str):
            return IMPLICIT_ALPHA if self.feedback == "implicit" else EXPLICIT_ALPHA
        return float(self.alpha)

    def _user_count_power(self) -> float:
        """``user_count_power`` resolved: "auto" is IMPLICIT_USER_COUNT_POWER (implicit) or 0 (explicit)."""
        if isinstance(self.user_count_power, str):
            return IMPLICIT_USER_COUNT_POWER if self.feedback == "implicit" else 0.0
        if self.user_count_power and self.feedback != "implicit":
            raise ValueError(
                f"user_count_power={self.user_count_power!r} needs feedback='implicit'; explicit ratings scale "
                "each user's penalty by their count with reg_scaling='count' (ALS-WR). Leave it at 'auto'."
            )
        return float(self.user_count_power)

    def _params(
        self,
        mean: float = 0.0,
        confidence_mean: float = math.nan,
        shape: tuple[int, int] | None = None,
        count_mean: float = 1.0,
    ) -> masked.MaskedParams:
        implicit = self.feedback == "implicit"
        biases = (not implicit) if self.biases == "auto" else bool(self.biases)
        if biases and implicit:
            raise ValueError(
                "biases=True needs feedback='explicit': the implicit model predicts a 0/1 "
                "preference and has no biases. Use biases='auto' or False with feedback='implicit'."
            )
        scaling = self._reg_scaling()
        if scaling == "cells" and not implicit:
            raise ValueError(
                "reg_scaling='cells' needs feedback='implicit' (it scales the penalty with the number of "
                "user x item cells the implicit loss sums over and with the mean confidence). Use 'count' "
                "(ALS-WR), 'none' or 'auto' for explicit ratings."
            )
        alpha = self._alpha()
        alpha_bias = alpha if self.alpha_bias == "same" else self.alpha_bias
        if scaling == "cells" and shape is not None:
            alpha = alpha * cells_scale(shape[0], shape[1], confidence_mean)
        return masked.MaskedParams(
            k=int(self.n_components),
            feedback=self.feedback,
            solver=self.solver,
            biases=biases,
            l2=float(alpha * (1.0 - self.l1_ratio)),
            l1=float(alpha * self.l1_ratio),
            l2_bias=float(alpha_bias),
            count_scaled=scaling == "count",
            confidence=float(self.confidence),
            confidence_form=self.confidence_form,
            epsilon=float(self.epsilon),
            confidence_floor=float(self.confidence_floor),
            preference_threshold=None if self.preference_threshold is None else float(self.preference_threshold),
            global_mean=float(mean) if biases else 0.0,
            sweeps=int(self.sweeps),
            cg_steps=int(self.cg_steps),
            count_power=self._user_count_power(),
            count_mean=float(count_mean) if count_mean > 0 else 1.0,
        )

    def _initial(self, data, p, seed, summ):
        # ALS solves W exactly from H first, so only H's scale matters; it
        # is set so that W H starts near the data's magnitude.
        if p.feedback == "implicit":
            level = 1.0
        else:
            level = abs(masked.exact_value(summ[0], summ[1])) if not p.biases else 1.0
        scale = math.sqrt(max(level, 1e-12) / p.k)
        U0 = masked_graph.initial_state(data.row_chunks, p, seed, "W", scale)
        V0 = masked_graph.initial_state(data.col_chunks, p, seed, "H", scale)
        return U0, V0

    def _resume_from(self, path, fingerprint):
        info, record, U0, V0 = checkpoint_mod.load(path, self.storage_options)
        where = info.path
        if record.get("estimator") != _ESTIMATOR:
            raise ValueError(
                f"Cannot resume from {where}: it is not a RatingsNMF checkpoint. Resume with the "
                "estimator that wrote it, or fit afresh without resume=."
            )
        # The sum is computed exactly (order-independent), so it must match exactly.
        checkpoint_mod.check_resumable(
            where, record, self._resume_params(), fingerprint, max_iter=self.max_iter, rel_tol=0.0
        )
        return U0, V0, LoopState.from_json(record["state"])

    def _set_fitted(self, p, U, V, history, n_iter, data, runner, rating_mean, confidence_mean):
        k = p.k
        self.n_components_ = k
        self.n_features_in_ = data.shape[1]
        self.n_iter_ = int(n_iter)
        self.loss_history_ = np.asarray(history, dtype=np.float64)
        self.global_mean_ = float(p.global_mean)
        self.rating_mean_ = float(rating_mean)
        self.confidence_mean_ = float(confidence_mean)
        self.components_ = np.ascontiguousarray(V[:, :k].T)
        self.item_bias_ = np.ascontiguousarray(V[:, k]) if p.biases else None
        if isinstance(U, da.Array):
            self.user_factors_ = U[:, :k]
            self.user_bias_ = np.asarray(runner.compute(U[:, k])) if p.biases else None
        else:
            self.user_factors_ = np.ascontiguousarray(U[:, :k])
            self.user_bias_ = np.ascontiguousarray(U[:, k]) if p.biases else None
        self.user_ids_ = data.row_ids
        self.item_ids_ = data.col_ids
        self.item_counts_ = data.item_counts(runner)
        self._seen = data.seen
        self._train_store = data.store_path
        self._item_state = None
        self.factors_ = self._make_factors(self.user_factors_, self.user_bias_, self.user_ids_)

    def _make_factors(self, W, user_bias, row_ids):
        from ..recommend.factors import Factors

        return Factors(
            W=W,
            H=self.components_,
            user_bias=user_bias,
            item_bias=self.item_bias_,
            global_mean=self.global_mean_,
            row_ids=row_ids,
            col_ids=self.item_ids_,
            baseline_mean=self._baseline_mean(),
        )

    def _baseline_mean(self) -> float:
        """The score of a pair whose user and item are both unknown (``unknown="baseline"``).

        With biases the global mean; an explicit model without biases, the
        mean training rating (NaN for models saved before it was recorded);
        an implicit model, the mean of what it fits, the 0/1 preference, over
        all pairs: the share of pairs observed.
        """
        if self.item_bias_ is not None:
            return float(self.global_mean_)
        if self.feedback == "implicit":
            n_users = int(self.user_factors_.shape[0])
            return float(np.sum(self.item_counts_)) / (n_users * int(self.n_features_in_))
        return float(self.__dict__.get("rating_mean_", math.nan))

    # ------------------------------------------------------------ fold-in

    def _fitted_params(self) -> masked.MaskedParams:
        shape = (int(self.user_factors_.shape[0]), int(self.n_features_in_))
        count_mean = float(np.sum(self.item_counts_)) / max(shape[0], 1)
        return self._params(self.global_mean_, self.__dict__.get("confidence_mean_", math.nan), shape, count_mean)

    def _items(self):
        """The item side's state ``V = [Hᵀ, c]`` (n, q) and the Gram ``H Hᵀ``."""
        cached = self.__dict__.get("_item_state")
        if cached is None:
            H = self.components_
            V = H.T if self.item_bias_ is None else np.hstack([H.T, self.item_bias_[:, None]])
            cached = (np.ascontiguousarray(V, dtype=np.float64), H @ H.T)
            self._item_state = cached
        return cached

    def fold_in(self, X_new, user_ids=None):
        """Factors of new (or updated) users from their ratings, with the items fixed.

        Each row's ``[w, b]`` is the exact minimiser of the model's objective
        for that row alone (same mask semantics, penalties and count scaling
        as the fit), so a new user's ratings give recommendations without
        refitting. Cost per user: O(r·k² + k³) for r ratings.

        Parameters
        ----------
        X_new : sparse matrix, ndarray (NaN = missing), Dask array, or dict
            Shape (n_new, n_items) in the fitted model's item order
            (``item_ids_``), or one user's ``{item_id: rating}``.
        user_ids : array-like, optional
            IDs of the new rows (default: positions).

        Returns
        -------
        dnmf.recommend.Factors
            For the new users (W NumPy, or Dask for Dask input), sharing H,
            the item biases and the global mean; pass it to
            :func:`dnmf.recommend.factors.recommend`.
        """
        check_is_fitted(self)
        U = self._fold(X_new)
        k = self.n_components_
        W = U[:, :k]
        bias = None
        if self.item_bias_ is not None:
            bias = U[:, k].compute() if isinstance(U, da.Array) else np.ascontiguousarray(U[:, k])
        ids = pd.RangeIndex(U.shape[0]) if user_ids is None else pd.Index(user_ids)
        if len(ids) != U.shape[0]:
            raise ValueError(f"user_ids has {len(ids)} entries for {U.shape[0]} rows of X_new.")
        return self._make_factors(W if isinstance(W, da.Array) else np.ascontiguousarray(W), bias, ids)

    def transform(self, X_new):
        """W of new users (fold-in, see :meth:`fold_in`): (n_new, k)."""
        check_is_fitted(self)
        U = self._fold(X_new)
        W = U[:, : self.n_components_]
        return W if isinstance(W, da.Array) else np.ascontiguousarray(W)

    def _new_rows(self, X_new):
        """``{item_id: rating}`` (one user) as a (1, n_items) CSR row; anything else as is."""
        if not isinstance(X_new, Mapping):
            return X_new
        cols = self.factors_.col_index(np.asarray(list(X_new.keys()), dtype=object if is_str(list(X_new)) else None))
        values = np.asarray(list(X_new.values()), dtype=np.float64)
        return sp.csr_matrix((values, (np.zeros(cols.size, dtype=np.int64), cols)), shape=(1, self.n_features_in_))

    def _fold(self, X_new):
        X_new = self._new_rows(X_new)
        p = self._fitted_params()
        V, G = self._items()
        G = G if p.feedback == "implicit" else None
        n = self.n_features_in_
        if isinstance(X_new, da.Array):
            if X_new.ndim != 2 or X_new.shape[1] != n:
                raise ValueError(f"X_new has shape {X_new.shape}; the model expects (n_users, {n}).")
            bands = masked_graph.bands_from_store(X_new)
            return masked_graph.fold_in(bands, V, G, p)
        band = masked.observed(as_2d(X_new))
        if band.shape[1] != n:
            raise ValueError(
                f"X_new has {band.shape[1]} items (columns), but the model was fitted on {n}. "
                "Put the new ratings in the model's item order (see item_ids_)."
            )
        check_summary(masked.block_summary(band), self.feedback, allow_empty=True)
        return masked.update(band, np.zeros((band.shape[0], p.q)), V, p, G, solver="als")

    # ------------------------------------------------------------ scoring

    def predict(self, users, items, *, unknown: str = "raise") -> np.ndarray:
        """Scores of (user, item) pairs given by their IDs (``user_ids_``, ``item_ids_``).

        Parameters
        ----------
        users, items : ID or array-like of IDs, broadcastable to shape (p,)
        unknown : {"raise", "baseline", "nan"}, default="raise"
            Pairs whose user or item the model does not know (a new user or
            item in a test set): "raise" a :class:`~dnmf.recommend.UnknownIDError`
            (a ``KeyError``) naming them; "baseline" scores them, as Surprise
            does, with the global mean plus the known side's bias (the user's
            bias when the user is known, the item's when the item is known,
            the mean alone when neither is); "nan" gives NaN for them. The
            mean is ``global_mean_`` with biases, the mean training rating
            (``rating_mean_``) without, and for ``feedback="implicit"`` the
            share of observed pairs (the mean 0/1 preference). Scores are not
            clipped, known or baseline. :func:`dnmf.evaluate` counts such pairs.

        Returns
        -------
        ndarray of shape (p,), float64
        """
        check_is_fitted(self)
        from ..recommend.factors import check_unknown

        check_unknown(unknown)
        f = self.factors_
        strict = unknown == "raise"
        fix = (
            "Pass unknown='baseline' to score them with the global mean plus the known side's bias, "
            "or unknown='nan' for NaN."
        )
        users, items = np.asarray(users).ravel(), np.asarray(items).ravel()
        rows = f.row_index(users, strict=strict, fix=fix)
        cols = f.col_index(items, strict=strict, fix=fix)
        return f.predict(rows, cols, unknown=unknown)

    def score(self, X, y=None) -> float:
        """Minus the RMSE at the observed entries of X (rows and columns as in fit)."""
        check_is_fitted(self)
        band = masked.observed(as_2d(X))
        rows = np.repeat(np.arange(band.shape[0]), np.diff(band.indptr))
        pred = self.factors_.predict(rows, band.indices)
        return -float(np.sqrt(np.mean((band.data - pred) ** 2)))

    # ------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Save the fitted model to a Zarr model store at ``path``, atomically (no pickle).

        Stores W (written block by block by the workers when distributed), H,
        the biases, the item counts, the ID maps and, for in-memory fits, the
        training ratings' pattern (for ``exclude_seen``); a fit from a store
        records the store's path instead. Load with :func:`dnmf.load` or
        :func:`dnmf.load`.
        """
        check_is_fitted(self)
        from ..storage import arrays as io

        arrays = {"W": self.user_factors_, "H": self.components_, "item_counts": self.item_counts_}
        if self.user_bias_ is not None:
            arrays["user_bias"] = self.user_bias_
            arrays["item_bias"] = self.item_bias_
        attrs = {
            **self._model_attrs(),
            "global_mean": self.global_mean_,
            "rating_mean": _json_float(self.__dict__.get("rating_mean_", math.nan)),
            "confidence_mean": _json_float(self.__dict__.get("confidence_mean_", math.nan)),
            "n_iter": self.n_iter_,
            "converged": bool(self.__dict__.get("converged_", self.n_iter_ < self.max_iter)),
            "loss_history": [float(v) for v in self.loss_history_],
            "n_features_in": int(self.n_features_in_),
            "train_store": self.__dict__.get("_train_store"),
        }
        for axis, ids in (("user_ids", self.user_ids_), ("item_ids", self.item_ids_)):
            if isinstance(ids, pd.RangeIndex):
                continue
            values = np.asarray(ids)
            if values.dtype.kind in "iu":
                arrays[axis] = values.astype(np.int64)
            else:
                attrs[axis] = [str(v) for v in values]
        seen = self.__dict__.get("_seen")
        if seen is not None and not isinstance(seen, da.Array):
            arrays["seen_indptr"] = seen.indptr.astype(np.int64)
            if seen.nnz:
                arrays["seen_indices"] = seen.indices.astype(np.int64)
        client = self._client()
        io.save_factors(path, arrays, attrs, client=client)


# ---------------------------------------------------------------- loading


def _json_float(value: float) -> float | None:
    """A float for a model's JSON attributes: None for NaN (not recorded)."""
    return None if math.isnan(value) else float(value)


def load_model(arrays: dict, attrs: dict, path) -> RatingsNMF:
    """A :class:`RatingsNMF` from a model store's arrays and attributes (see :func:`dnmf.load`).

    W comes back as a Dask array that reads its blocks lazily; everything
    else (H, biases, IDs, counts) in memory.
    """
    params = params_from_json(attrs["params"])
    if "confidence_mean" not in attrs and params.get("feedback") == "implicit":
        # Saved before reg_scaling="cells": "auto" meant no scaling for the implicit model.
        if params.get("reg_scaling", "auto") == "auto":
            params["reg_scaling"] = "none"
    if "user_count_power" not in params and params.get("feedback") == "implicit":
        # Saved before user_count_power: every user had the same penalty.
        params["user_count_power"] = 0.0
    model = RatingsNMF(**params)
    model.components_ = np.asarray(arrays["H"].compute())
    model.n_components_ = model.components_.shape[0]
    model.n_features_in_ = int(attrs["n_features_in"])
    model.n_iter_ = int(attrs["n_iter"])
    # Models saved before converged_ existed: the old inference.
    model.converged_ = bool(attrs.get("converged", model.n_iter_ < model.max_iter))
    model.loss_history_ = np.asarray(attrs["loss_history"], dtype=np.float64)
    model.global_mean_ = float(attrs["global_mean"])
    model.user_factors_ = arrays["W"]
    model.user_bias_ = np.asarray(arrays["user_bias"].compute()) if "user_bias" in arrays else None
    model.item_bias_ = np.asarray(arrays["item_bias"].compute()) if "item_bias" in arrays else None
    model.item_counts_ = np.asarray(arrays["item_counts"].compute())
    # Recorded since unknown="baseline"; before, it equals global_mean with biases and is unknown without.
    rating_mean = attrs.get("rating_mean")
    if rating_mean is None:
        rating_mean = model.global_mean_ if model.item_bias_ is not None else math.nan
    model.rating_mean_ = float(rating_mean)
    confidence_mean = attrs.get("confidence_mean")
    model.confidence_mean_ = math.nan if confidence_mean is None else float(confidence_mean)
    m = model.user_factors_.shape[0]
    ids = {}
    for axis, size in (("user_ids", m), ("item_ids", model.n_features_in_)):
        if axis in arrays:
            ids[axis] = pd.Index(np.asarray(arrays[axis].compute()))
        elif axis in attrs:
            ids[axis] = pd.Index(attrs[axis], dtype=object)
        else:
            ids[axis] = pd.RangeIndex(size)
    model.user_ids_, model.item_ids_ = ids["user_ids"], ids["item_ids"]
    model._train_store = attrs.get("train_store")
    model._train_store_from_file = True
    model._seen = None
    if "seen_indptr" in arrays:
        indptr = np.asarray(arrays["seen_indptr"].compute())
        indices = np.asarray(arrays["seen_indices"].compute()) if "seen_indices" in arrays else np.zeros(0, np.int64)
        model._seen = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(m, model.n_features_in_))
    model._item_state = None
    model.factors_ = model._make_factors(model.user_factors_, model.user_bias_, model.user_ids_)
    return model
