"""The scikit-learn compatible estimator ``dnmf.NMF`` and its function form."""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import dask.array as da
import numpy as np
import scipy.sparse as sp
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import caller
from ..base import inputs
from ..base.estimator import RUN_CONSTRAINTS, DnmfEstimator, params_from_json
from ..base.seeds import seed_from
from ..engine import checkpoint as checkpoint_mod
from ..engine.checkpoint import LoopState
from ..engine.runner import Runner
from ..storage import checkpoints as checkpoint_store
from ..storage import factors, locations
from ..storage.chunking import default_cores
from ..storage.matrix import read_matrix_info
from ..storage.reblock import reblock_for
from . import init, kernels
from . import stats as stats_mod
from . import step as nmf_step
from .stored import StoredNMFStep

_BETA = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def _from_storage(X: da.Array) -> bool:
    """Whether a Dask array reads its blocks from storage (then never persisted)."""
    prefixes = ("dnmf-store", "from-zarr", "zarr-")
    return any(str(name).startswith(prefixes) for name in X.__dask_graph__().layers)


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, DnmfEstimator):
    """Non-negative Matrix Factorization on Dask: ``X ≈ W @ H``.

    Finds non-negative ``W`` (n_samples, n_components) and ``H``
    (n_components, n_features) minimising the beta-divergence between X and
    ``W @ H`` plus L1/L2 penalties, with the same objective, parameters,
    scaling and stopping rules as :class:`sklearn.decomposition.NMF`. X may
    be a NumPy array, any SciPy sparse matrix, a pydata ``sparse`` array or
    a Dask array whose blocks are any of those; it is processed block by
    block, and only (k, k) Grams, k-wide partial products and scalars move
    between workers.

    Parameters
    ----------
    n_components : int or {"auto"} or None, default="auto"
        Number of components k. "auto"/None: from ``H`` when
        ``init="custom"``, else n_features.
    init : {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}, default=None
        None means "nndsvda" when ``k <= min(n_samples, n_features)``, else
        "random". The NNDSVD variants use a distributed randomized SVD with
        4 power iterations (10 passes over X), or, when X has
        ``dnmf.nmf.init.LARGE_NNZ`` (10 million) stored entries or more,
        none (2 passes) with sketches in X's float type and without forming
        the sketch's orthonormal basis, so that the initialisation of a
        large X costs a few iterations, not ten or more, and no more memory
        than the factors.
    solver : {"cd", "mu", "anls-bpp"}, default="cd"
        "cd": HALS / coordinate descent (scikit-learn's ``solver="cd"``);
        "anls-bpp": alternating non-negative least squares, each half-step
        solved exactly by block principal pivoting (Kim & Park 2011; Frobenius
        only) — fewer iterations, same communication;
        "mu": multiplicative updates (any ``beta_loss``).
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default="frobenius"
        Divergence minimised; anything but Frobenius needs ``solver="mu"``.
    tol : float, default=1e-4
        Stopping tolerance (per solver, as scikit-learn defines it).
    max_iter : int, default=200
        Maximum number of iterations.
    random_state : int, RandomState instance or None, default=None
        Seed for the initialisation (and the coordinate order with
        ``shuffle``). The same seed gives bit-identical factors for the same
        blocking, wherever the blocks run.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling
        (``alpha_H="same"`` uses ``alpha_W``).
    verbose : int, default=0
        Log the loss of every iteration on the ``"dnmf"`` logger at INFO.
    shuffle : bool, default=False
        Randomise the coordinate order of the "cd" solver. For an int
        ``random_state`` the orders are scikit-learn's (the same
        ``RandomState(random_state).permutation`` stream).
    max_time : float or None, default=None
        Stop after this many seconds of iterations.
    chunks : "auto", int, pair or chunk tuples, default="auto"
        Blocking of in-memory inputs (Dask inputs keep their own): "auto"
        makes row blocks of about 16 MiB; an int is rows per block.
    client : distributed.Client or None, default=None
        Cluster to run on; None uses the active default Client if there is
        one, else the current Dask scheduler (threads).
    checkpoint : str, os.PathLike or None, default=None
        Directory (local path or fsspec URL) for checkpoints of the fit: the
        factors, written block by block by the workers that hold them, and
        the loop's state, committed by a small pointer record. With a
        Client, each checkpoint also cuts the task graph's lineage.
        ``fit(X, resume=checkpoint)`` continues a stopped fit bit-identically.
    checkpoint_every : int or None, default=10
        Checkpoint every this many iterations (and once at the end).
    checkpoint_seconds : float or None, default=None
        ...and/or when this many seconds passed since the last checkpoint.
    keep_checkpoints : int, default=2
        Complete checkpoints kept; older ones are deleted after each commit.
    max_retries : int, default=3
        Iterations that failed because workers (or the data they held) were
        lost are retried this many times in one fit, from the last checkpoint
        (or the initial factors); then :class:`dnmf.engine.runner.FitFailed`.
    storage_options : dict or None, default=None
        fsspec options (credentials, endpoint) for store paths, URLs and
        checkpoints given as URLs.
    inner_iter : int >= 1 or "auto", default=1
        Sweeps per half-step of the "cd" solver, reusing the same ``X Hᵀ``
        and ``H Hᵀ``. 1 is scikit-learn's HALS; more (or "auto": Gillis &
        Glineur's accelerated HALS, which chooses the largest count from the
        relative costs and stops each row's sweeps once they no longer pay
        off) usually reaches a given loss in fewer passes over X.
    n_init : int, default=1
        Number of initialisations: the fit is run from ``n_init`` starting
        points and the one with the lowest final loss is kept (NMF's objective
        is not convex). The first is exactly the ``n_init=1`` fit (so more
        restarts never end with a higher loss); the others use seeds derived
        from ``random_state`` and, when ``init`` is deterministic (None,
        "nndsvd", "nndsvda"), random initial factors. On a distributed Client
        the restarts run side by side. With ``checkpoint=DIR`` restart ``i``
        checkpoints into ``DIR/init-<i>``, and ``fit(X, resume=DIR)`` continues
        every restart from there. ``callback`` is called for every restart's
        iterations.
    stopping : {"auto", "loss", "stationarity"}, default="auto"
        Stopping rule. "stationarity": the projected-gradient measure
        (``stationarity_history_``) falls to ``tol`` relative to the first
        iteration; "loss": every 10 iterations, the loss decreased by less
        than ``tol`` times the initial loss. "auto" is scikit-learn's rule
        for the solver: "stationarity" for "cd" (and "anls-bpp"), "loss"
        for "mu".
    factor_store : str, os.PathLike or None, default=None
        Directory (local path or fsspec URL, new or empty) where W lives
        during the fit instead of in the workers' memory: row task ``i`` reads
        its block of W from there and writes the new one every iteration, so
        a fit whose W is larger than the cluster's memory runs (Hᵀ, n × k,
        must still fit a worker). One generation per iteration, committed by a
        pointer once all its blocks are written; checkpoints then refer to a
        generation instead of copying W (their cost does not grow with the
        number of samples). Same factors, bit for bit, as the in-memory fit.
        Frobenius loss only. ``fit_transform`` of a Dask X returns W as a lazy
        Dask array reading the store's last generation; with ``n_init > 1``
        restart ``i`` uses ``factor_store/init-<i>``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
    n_iter_ : int
    converged_ : bool
        Whether the stopping rule was met (False when ``max_iter``,
        ``max_time`` or the callback ended the fit).
    reconstruction_err_ : float
        Frobenius norm of ``X - W @ H`` (or ``sqrt(2 * divergence)``).
    loss_history_ : ndarray of shape (``n_iter_``,)
        The same measure after every iteration.
    init_errors_ : ndarray of shape (n_init,)
        The final loss of every initialisation (the kept one is the smallest).
    stationarity_history_ : ndarray of shape (``n_iter_``,)
        Σ|projected gradient| of every iteration relative to the first one's
        (scikit-learn's coordinate-descent "violation" ratio for "cd"; for
        the other solvers measured at the start of each half-step), from the
        products the step computes anyway — no extra pass over X.
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only for inputs with column names)
    feature_ids_, sample_ids_ : pandas.Index (only when fitted from a matrix store with ID maps)
        The store's column (item) and row (user) IDs; saved with the model
        (``sample_ids_`` only together with W).
    """

    _MODEL_KIND = "NMF"

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None, StrOptions({"auto"})],
        "init": [StrOptions({"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}), None],
        "solver": [StrOptions({"cd", "mu", "anls-bpp"})],
        "beta_loss": [StrOptions({"frobenius", "kullback-leibler", "itakura-saito"}), Real],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "verbose": ["verbose"],
        "shuffle": ["boolean"],
        **RUN_CONSTRAINTS,
        "inner_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "stopping": [StrOptions({"auto", "loss", "stationarity"})],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "factor_store": [str, os.PathLike, None],
    }

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        solver="cd",
        beta_loss="frobenius",
        tol=1e-4,
        max_iter=200,
        random_state=None,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        verbose=0,
        shuffle=False,
        max_time=None,
        chunks="auto",
        client=None,
        checkpoint=None,
        checkpoint_every=10,
        checkpoint_seconds=None,
        keep_checkpoints=2,
        max_retries=3,
        storage_options=None,
        inner_iter=1,
        stopping="auto",
        n_init=1,
        factor_store=None,
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.max_time = max_time
        self.chunks = chunks
        self.client = client
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.max_retries = max_retries
        self.storage_options = storage_options
        self.inner_iter = inner_iter
        self.stopping = stopping
        self.n_init = n_init
        self.factor_store = factor_store

    # ------------------------------------------------------------------ API

    def fit(self, X, y=None, W=None, H=None, *, callback=None, resume=None):
        """Learn the factorization of X.

        Parameters
        ----------
        X : array-like, sparse matrix, Dask array, or path of a matrix store
            Shape (n_samples, n_features). A store path (or an opened
            ``dnmf.MatrixStore``) is streamed: its blocks are read from
            storage on every iteration and X is never held in memory whole;
            ``feature_ids_`` then holds the store's column IDs.
        y : ignored
        W, H : array-like, optional
            Starting factors when ``init="custom"``.
        callback : callable, optional
            ``callback(iteration, elapsed, loss)`` after each iteration;
            returning False stops the fit.
        resume : str or os.PathLike, optional
            Continue from the latest checkpoint in this directory (written by
            a fit with ``checkpoint=``): the same X and parameters are required (``max_iter``, ``tol``,
            ``max_time``, ``verbose`` and the run parameters may change). The
            fit ends with the factors an uninterrupted fit would have had, bit
            for bit, and keeps checkpointing there unless ``checkpoint``
            names another directory.

        Returns
        -------
        self
        """
        self.fit_transform(X, W=W, H=H, callback=callback, resume=resume)
        return self

    def fit_transform(self, X, y=None, W=None, H=None, *, callback=None, resume=None):
        """Learn the factorization of X and return W.

        Returns
        -------
        W : ndarray of shape (n_samples, n_components), or a Dask array
            (persisted on the cluster, or reading ``factor_store``) when X is
            a Dask array.
        """
        self._validate_params()
        self._check_factor_store(resume)
        Xd, in_memory, runner, stats = self._prepare(X, reset=True)
        if self.n_init == 1:
            W_out, Ht, result = self._fit_transform(
                Xd, stats, runner, W=W, H=H, update_H=True, callback=callback, resume=resume
            )
            errors = [result.reconstruction_err]
        else:
            W_out, Ht, result, errors = self._best_of_inits(Xd, stats, runner, W, H, callback, resume)
        self.init_errors_ = np.asarray(errors, dtype=np.float64)
        self.components_ = np.ascontiguousarray(np.asarray(runner.compute(Ht)).T)
        self.n_components_ = self.components_.shape[0]
        self.n_iter_ = result.n_iter
        self.converged_ = bool(result.converged)
        self.reconstruction_err_ = result.reconstruction_err
        self.loss_history_ = np.asarray(result.loss_history, dtype=np.float64)
        self.stationarity_history_ = np.asarray(result.stationarity_history, dtype=np.float64)
        # Kept for save(): NumPy for in-memory X, else persisted on the cluster.
        self._W = np.asarray(runner.compute(W_out)) if in_memory else W_out
        return self._W

    def _factor_store_root(self) -> str | None:
        return None if self.factor_store is None else locations.normalize(self.factor_store)

    def _check_factor_store(self, resume) -> None:
        """Before any work: the loss allows it, and a fresh fit never writes over an earlier one's factors."""
        root = self._factor_store_root()
        if root is None:
            return
        beta = _BETA[self.beta_loss] if isinstance(self.beta_loss, str) else float(self.beta_loss)
        if beta != 2:
            raise ValueError(
                f"factor_store needs beta_loss='frobenius'; got beta_loss={self.beta_loss!r}. "
                "Use the Frobenius loss, or leave factor_store=None."
            )
        if resume is None:
            factors.check_new(root, self.storage_options)

    def save(self, path, *, W=None) -> None:
        """Save the fitted model to a Zarr store at ``path``, atomically.

        Stores H, W (the last fit's, or the ``W`` given), the parameters,
        loss history, feature IDs and the library version; no pickle. A
        distributed W is written block by block by the workers that hold it.
        Saving over an existing model replaces it in one step: a crash
        mid-save leaves the old model loadable.
        """
        check_is_fitted(self)
        from ..storage import arrays as io

        W = self.__dict__.get("_W") if W is None else W
        arrays = {"H": self.components_}
        if W is not None:
            arrays["W"] = W
        attrs = {
            **self._model_attrs(),
            "n_iter": int(self.n_iter_),
            "converged": bool(self.__dict__.get("converged_", self.n_iter_ < self.max_iter)),
            "reconstruction_err": float(self.reconstruction_err_),
            "loss_history": [float(v) for v in self.loss_history_],
            "init_errors": [float(v) for v in self.__dict__.get("init_errors_", [self.reconstruction_err_])],
            "n_features_in": int(self.n_features_in_),
        }
        import pandas as pd

        for attr, key in (("feature_ids_", "feature_ids"), ("sample_ids_", "sample_ids")):
            ids = getattr(self, attr, None)
            # The IDs of a store's rows belong to the W saved with them only.
            if key == "sample_ids" and (W is None or ids is None or len(ids) != W.shape[0]):
                continue
            if ids is not None and not isinstance(ids, pd.RangeIndex):
                values = ids.to_numpy()
                if values.dtype.kind in "iu":
                    # An array, not an attribute: 3M integer IDs in the JSON attributes cost 0.2 GB of
                    # Python ints and text at the save's peak, and the same again at every load.
                    arrays[key] = values.astype(np.int64, copy=False)
                else:
                    attrs[key] = [v.item() if hasattr(v, "item") else v for v in ids]
        client = self._client()
        io.save_factors(path, arrays, attrs, client=client)

    def transform(self, X):
        """W for the rows of X with H fixed to ``components_``.

        Each row is solved independently, so new rows can be transformed
        without refitting. Returns a Dask array for Dask input.
        """
        check_is_fitted(self)
        Xd, in_memory, runner, stats = self._prepare(X, reset=False)
        W_out, _, _ = self._fit_transform(Xd, stats, runner, H=self.components_, update_H=False)
        return np.asarray(runner.compute(W_out)) if in_memory else W_out

    def inverse_transform(self, X):
        """``X @ components_``: data of the original shape from W."""
        check_is_fitted(self)
        if isinstance(X, da.Array):
            return X @ da.from_array(self.components_)
        return X @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------ internals

    def _prepare(self, X, reset: bool):
        """Block X, validate its values; returns (X, in_memory, runner, stats)."""
        client = self._client()
        runner = Runner(client)
        source = inputs.resolve_input(X, self.storage_options)
        X = source.data
        if reset:
            for name in ("feature_ids_", "sample_ids_"):
                self.__dict__.pop(name, None)
            if source.store is not None:
                # A store: its blocks are re-read every iteration, never persisted.
                self.feature_ids_ = source.col_ids
                self.sample_ids_ = source.row_ids
        if isinstance(X, da.Array):
            Xd = inputs.from_dask(X)
            if reset:
                self.n_features_in_ = Xd.shape[1]
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif Xd.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {Xd.shape[1]} features, but {type(self).__name__} is "
                    f"expecting {self.n_features_in_} features as input."
                )
            _check_not_empty(Xd.shape)
            if source.store is not None and sp.issparse(Xd._meta):
                # Too few stored row blocks for this cluster: slice them (same bits as a finer store).
                info = read_matrix_info(source.store, self.storage_options, warn=False)
                Xd = reblock_for(Xd, int(info.nnz or 0), _cluster_threads(client))
            if not _from_storage(Xd):
                (Xd,) = runner.persist(Xd)
                source = X
                self._reload_X = lambda: runner.persist(inputs.from_dask(source))[0]
            stats = stats_mod.compute_stats(Xd, runner)
            stats_mod.check_values(stats)
            return Xd, False, runner, stats
        inputs.check_frame_columns(X, "NMF")
        try:
            X = validate_data(
                self,
                X,
                accept_sparse=("csr", "csc", "coo"),
                dtype=[np.float64, np.float32],
                reset=reset,
            )
        except ValueError as exc:
            if "NaN" not in str(exc):
                raise
            # scikit-learn's message suggests estimators that accept NaN; for NMF NaN means missing.
            raise ValueError(
                "Input X contains NaN. NMF treats every entry of X as observed: for missing ratings use "
                "dnmf.RatingsNMF (NaN marks a missing entry there), otherwise fill (e.g. with 0) or drop them."
            ) from None
        stats = stats_mod.MatrixStats.from_vector(kernels.block_stats(X))
        stats_mod.check_values(stats)
        Xd = inputs.from_memory(X, self.chunks, client=client)
        self._reload_X = lambda: inputs.from_memory(X, self.chunks, client=client)
        if Xd.npartitions == 1:
            runner = Runner(client, single_block=True)
        return Xd, True, runner, stats

    def _fit_transform(
        self,
        X,
        stats,
        runner,
        W=None,
        H=None,
        update_H=True,
        callback=None,
        resume=None,
        *,
        seed=None,
        init_method=None,
        checkpoint=None,
        reload_X=None,
        factor_store=None,
    ):
        m, n = X.shape
        beta = _BETA[self.beta_loss] if isinstance(self.beta_loss, str) else float(self.beta_loss)
        if self.solver != "mu" and beta != 2:
            raise ValueError(
                f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                f"beta_loss = {self.beta_loss!r}. Use solver='mu' for other divergences."
            )
        if beta <= 0 and stats.min == 0:
            raise ValueError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. "
                "Please add small values to X, or use a positive beta_loss."
            )
        if update_H and self.solver == "mu" and self.init == "nndsvd":
            caller.warn(
                "The multiplicative update ('mu') solver cannot update zeros present in "
                "the initialization, and so leads to poorer results when used jointly "
                "with init='nndsvd'. You may try init='nndsvda' or init='nndsvdar' instead.",
                UserWarning,
            )
        seed = seed_from(self.random_state) if seed is None else seed
        dtype = X.dtype
        state = None
        if update_H and resume is not None:
            record, W0, Ht0, state = self._resume_from(resume, X, stats)
            k = W0.shape[1]
        elif update_H:
            W0, Ht0, k = self._initial_factors(X, stats, W, H, seed, runner, init_method)
        else:
            H = np.asarray(H, dtype=dtype)
            k = H.shape[0]
            Ht0 = init.as_tall(H.T, X.chunks[1], dtype)
            fill = math.sqrt(stats.mean / k) if self.solver == "mu" else 0.0
            W0 = da.full((m, k), fill, dtype=dtype, chunks=(X.chunks[0], k))
        alpha_H = self.alpha_W if self.alpha_H == "same" else self.alpha_H
        l1_W, l1_H, l2_W, l2_H = kernels.regularization(m, n, self.alpha_W, alpha_H, self.l1_ratio)
        inner_W, inner_H = self._inner_sweeps(X, stats, k)
        config = nmf_step.LoopConfig(
            solver=self.solver,
            beta=beta,
            tol=self.tol,
            max_iter=self.max_iter,
            max_time=self.max_time,
            l1_reg_W=l1_W,
            l1_reg_H=l1_H,
            l2_reg_W=l2_W,
            l2_reg_H=l2_H,
            update_H=update_H,
            sq_norm_x=stats.sq_norm,
            shuffle=self.shuffle,
            verbose=self.verbose,
            stopping=self.stopping,
            inner_W=inner_W,
            inner_H=inner_H,
        )
        rng = np.random.RandomState(seed) if self.shuffle else None
        checkpointer = None
        checkpoint = self.checkpoint if checkpoint is None else checkpoint
        path = checkpoint if checkpoint is not None else resume
        if update_H and path is not None:
            checkpointer = checkpoint_mod.Checkpointer(
                path,
                every=self.checkpoint_every,
                seconds=self.checkpoint_seconds,
                keep_last=self.keep_checkpoints,
                meta={"params": self._resume_params(), "fingerprint": _fingerprint(X, stats)},
                storage_options=self.storage_options,
            )
        if reload_X is None:
            reload_X = self.__dict__.pop("_reload_X", None)

        # Only the lazy starting point of transform (no memory on the cluster) is kept for recovery:
        # a fit recomputes its initial factors, so that nothing here keeps them alive.
        fixed = None if update_H else (W0, Ht0)

        def recover():
            Xn = reload_X() if reload_X is not None else X
            if checkpointer is not None and checkpoint_store.exists(checkpointer.path, self.storage_options):
                _, Wr, Hr, st = self._resume_from(checkpointer.path, Xn, stats)
                return Xn, Wr, Hr, st
            if fixed is None:
                Wr, Hr, _ = self._initial_factors(Xn, stats, W, H, seed, runner, init_method)
            else:
                Wr, Hr = fixed
            return Xn, Wr, Hr, LoopState()

        # Handed over: the loop releases the (persisted) initial factors during the first iteration.
        start = [W0, Ht0]
        del W0, Ht0
        recover_fn = recover if runner.client is not None else None
        root = (factor_store or self._factor_store_root()) if update_H else None
        step = None
        if root is not None:
            step = StoredNMFStep(
                root,
                X,
                config,
                rng=rng,
                recover=recover_fn,
                start=state.iteration if state is not None else 0,
                storage_options=self.storage_options,
            )
        result = nmf_step.run_from(
            X,
            start,
            config,
            runner=runner,
            callback=callback,
            rng=rng,
            state=state,
            checkpointer=checkpointer,
            recover=recover_fn,
            max_retries=self.max_retries,
            step=step,
        )
        if root is not None:
            factors.drop_spare(root)
        return result.W, result.Ht, result

    def _best_of_inits(self, X, stats, runner, W, H, callback, resume):
        """``n_init`` fits from different seeds, run side by side on a Client; the lowest final loss wins.

        Restart 0 is exactly the ``n_init=1`` fit (same seed and init), so
        more restarts never end with a higher loss; ties go to the lowest
        restart. Restarts after the first use derived seeds, and ``"random"``
        initial factors when ``init`` is deterministic (None, "nndsvd",
        "nndsvda"). With checkpoints, restart ``i`` checkpoints into
        ``<checkpoint>/init-<i>`` and ``resume=`` continues each restart
        from there.
        """
        if self.init == "custom":
            raise ValueError(
                f"n_init={self.n_init} needs starting points that differ, but init='custom' gives one. "
                "Use n_init=1 with init='custom', or another init with n_init."
            )
        base = seed_from(self.random_state)
        seeds = [base] + [
            int(np.random.SeedSequence([base, i]).generate_state(1, np.uint64)[0] % (2**63))
            for i in range(1, self.n_init)
        ]
        deterministic = self.init in (None, "nndsvd", "nndsvda")
        reload_X = self.__dict__.pop("_reload_X", None)

        def one(i):
            def sub(root):
                return None if root is None else os.path.join(os.fspath(root), f"init-{i}")

            start = sub(resume)
            if start is not None and not checkpoint_store.exists(start, self.storage_options):
                start = None  # this restart had not started: it starts now, checkpointing there
            return self._fit_transform(
                X,
                stats,
                runner,
                W=W,
                H=H,
                callback=callback,
                resume=start,
                seed=seeds[i],
                init_method=self.init if i == 0 or not deterministic else "random",
                checkpoint=sub(self.checkpoint if self.checkpoint is not None else resume),
                reload_X=reload_X,
                factor_store=sub(self._factor_store_root()),
            )

        if runner.client is not None:
            # Each restart's loop submits its own graphs; the scheduler runs them side by side.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.n_init) as pool:
                fits = list(pool.map(one, range(self.n_init)))
        else:
            fits = [one(i) for i in range(self.n_init)]
        errors = [f[2].reconstruction_err for f in fits]
        best = min(range(self.n_init), key=lambda i: (math.isnan(errors[i]), errors[i], i))
        W_out, Ht, result = fits[best]
        return W_out, Ht, result, errors

    def _resume_from(self, path, X, stats):
        """Load the current checkpoint at ``path`` after checking it fits X and self."""
        info, record, W0, Ht0 = checkpoint_mod.load(path, self.storage_options)
        where = info.path
        checkpoint_mod.check_resumable(
            where, record, self._resume_params(), _fingerprint(X, stats), max_iter=self.max_iter
        )
        state = LoopState.from_json(record["state"])
        return record, W0, Ht0, state

    def _inner_sweeps(self, X, stats, k):
        """Largest sweeps per half-step for W and H (accelerated HALS)."""
        if self.inner_iter == 1:
            return 1, 1
        if self.solver != "cd":
            raise ValueError(
                f"inner_iter={self.inner_iter!r} applies to solver='cd' only; got "
                f"solver={self.solver!r}. Leave inner_iter=1 or use solver='cd'."
            )
        if self.inner_iter == "auto":
            m, n = X.shape
            # A dense block costs m*n per product whatever its zeros.
            cost = stats.nnz if sp.issparse(X._meta) else stats.n_entries
            return kernels.hals_inner_limits(m, n, cost, k)
        return int(self.inner_iter), int(self.inner_iter)

    def _initial_factors(self, X, stats, W, H, seed, runner, method=None):
        m, n = X.shape
        k = self.n_components
        if self.init == "custom":
            H = _check_init(H, (None if k in ("auto", None) else k, n), "NMF (input H)", X.dtype)
            k = H.shape[0]
            W = _check_init(W, (m, k), "NMF (input W)", X.dtype)
            return init.as_tall(W, X.chunks[0], X.dtype), init.as_tall(H.T, X.chunks[1], X.dtype), k
        if W is not None or H is not None:
            caller.warn(
                "When init!='custom', provided W or H are ignored. Set init='custom' to use them as initialization.",
                RuntimeWarning,
            )
        if k in ("auto", None):
            k = n
        method = self.init if method is None else method
        if method is None:
            method = "nndsvda" if k <= min(m, n) else "random"
        if method != "random" and k > min(m, n):
            raise ValueError(
                f"init = '{method}' can only be used when n_components <= "
                f"min(n_samples, n_features) = {min(m, n)}; got n_components={k}. "
                "Lower n_components or use init='random'."
            )
        if method == "random":
            W0, Ht0 = init.random_init(X, k, stats.mean, seed)
        else:
            n_iter = init.power_iterations(stats.nnz)
            dtype = init.sketch_dtype(stats.nnz, X.dtype)
            lean = init.lean_basis(stats.nnz)
            W0, Ht0 = init.nndsvd_init(X, k, method, stats.mean, seed, runner, n_iter=n_iter, dtype=dtype, lean=lean)
            # Persisted here, the SVD's float64 U and V (on which they are built) are released
            # now instead of being held, through the callers' references, for the whole fit.
            W0, Ht0 = runner.persist(W0, Ht0)
        return W0, Ht0, k


def _cluster_threads(client) -> int:
    """Threads that will run the fit: the Client's workers', else this machine's cores."""
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a client that cannot say: the store's own blocking stands
            return 1
    return default_cores()


def _fingerprint(X, stats) -> dict:
    """Cheap identity of X: shape, blocking, and its one-pass statistics."""
    return {
        "shape": [int(v) for v in X.shape],
        "chunks": [[int(c) for c in axis] for axis in X.chunks],
        "dtype": str(X.dtype),
        "nnz": int(stats.nnz),
        "sum": float(stats.sum),
        "sq_norm": float(stats.sq_norm),
    }


def load_model(arrays: dict, attrs: dict, path) -> NMF:
    """An :class:`NMF` from a model store's arrays and attributes (see :func:`dnmf.load`)."""
    model = NMF(**params_from_json(attrs["params"]))
    model.components_ = np.asarray(arrays["H"].compute())
    model.n_components_ = model.components_.shape[0]
    model.n_iter_ = attrs["n_iter"]
    # Models saved before converged_ existed: the old inference.
    model.converged_ = bool(attrs.get("converged", model.n_iter_ < model.max_iter))
    model.reconstruction_err_ = attrs["reconstruction_err"]
    model.loss_history_ = np.asarray(attrs["loss_history"], dtype=np.float64)
    model.init_errors_ = np.asarray(attrs.get("init_errors", [model.reconstruction_err_]), dtype=np.float64)
    model.n_features_in_ = attrs["n_features_in"]
    import pandas as pd

    for key in ("feature_ids", "sample_ids"):
        # Integer IDs are arrays; text IDs, and the IDs of models saved before, attributes.
        if key in arrays:
            setattr(model, key + "_", pd.Index(np.asarray(arrays[key].compute())))
        elif key in attrs:
            setattr(model, key + "_", pd.Index(attrs[key]))
    if "W" in arrays:
        model._W = arrays["W"]
    return model


def _check_not_empty(shape):
    if 0 in shape:
        raise ValueError(
            f"Found array with shape {shape}; NMF needs at least one sample and "
            "one feature. Check how X was built or filtered."
        )


def _check_init(A, shape, whom, dtype):
    if A is None:
        raise ValueError(
            f"init='custom' needs both W and H; {whom} is missing. Pass W= and H= to fit, or choose another init."
        )
    if isinstance(A, da.Array):
        A = A.compute()
    A = np.asarray(A)
    for axis, (got, want) in enumerate(zip(A.shape, shape, strict=False)):
        if want is not None and got != want:
            raise ValueError(
                f"Array with wrong {'first' if axis == 0 else 'second'} dimension passed "
                f"to {whom}. Expected {want}, but got {got}."
            )
    if A.ndim != 2:
        raise ValueError(f"{whom} must be 2-D; got shape {A.shape}.")
    if A.dtype != dtype:
        raise TypeError(
            f"{whom} should have the same dtype as X ({dtype}); got {A.dtype}. Convert it with .astype(X.dtype)."
        )
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{whom} contains NaN or infinity.")
    if A.size and A.min() < 0:
        raise ValueError(f"Negative values in data passed to {whom}.")
    if A.size == 0 or A.max() == 0:
        raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A


def non_negative_factorization(
    X,
    W=None,
    H=None,
    n_components="auto",
    *,
    init=None,
    update_H=True,
    solver="cd",
    beta_loss="frobenius",
    tol=1e-4,
    max_iter=200,
    alpha_W=0.0,
    alpha_H="same",
    l1_ratio=0.0,
    random_state=None,
    verbose=0,
    shuffle=False,
    max_time=None,
    chunks="auto",
    client=None,
    callback=None,
    inner_iter=1,
    stopping="auto",
):
    """Function form of :class:`NMF`, like scikit-learn's.

    With ``update_H=False``, ``H`` is fixed and only W is solved for.

    Returns
    -------
    W : ndarray (n_samples, n_components), or a Dask array for Dask input
    H : ndarray (n_components, n_features)
    n_iter : int
    """
    est = NMF(
        n_components=n_components,
        init=init,
        solver=solver,
        beta_loss=beta_loss,
        tol=tol,
        max_iter=max_iter,
        random_state=random_state,
        alpha_W=alpha_W,
        alpha_H=alpha_H,
        l1_ratio=l1_ratio,
        verbose=verbose,
        shuffle=shuffle,
        max_time=max_time,
        chunks=chunks,
        client=client,
        inner_iter=inner_iter,
        stopping=stopping,
    )
    if update_H:
        W = est.fit_transform(X, W=W, H=H, callback=callback)
        return W, est.components_, est.n_iter_
    est._validate_params()
    if H is None:
        raise ValueError("update_H=False needs H: pass the fixed components as H=.")
    Xd, in_memory, runner, stats = est._prepare(X, reset=True)
    H = _check_init(H, (None, Xd.shape[1]), "NMF (input H)", Xd.dtype)
    W_out, _, result = est._fit_transform(Xd, stats, runner, H=H, update_H=False, callback=callback)
    W_out = np.asarray(runner.compute(W_out)) if in_memory else W_out
    return W_out, H, result.n_iter
