"""Rank selection for NMF: choosing the number of components k by held-out error or by consensus.

Two methods, both built from the blocked step and the driver loop:

``method="cv"`` — held-out entries (Wold's cross-validation for matrix
factorisations; Owen & Perry 2009, Kanagal & Sindhwani 2010). A random,
seeded fraction of X's entries is held out *as a mask*: they are excluded
from the fit (a masked Frobenius fit: before each half-step the held-out
entries are filled with the current model, a majorise-minimise step of the
loss on the kept entries that only costs O(|held out| · k) on top of an
ordinary step), and the error of the fitted ``W H`` on them is measured.
For sparse X, a fraction of the non-zeros *and* as many sampled zeros are
held out, so the "missing means zero" part of the model is validated too.
Repeated with independent masks, the chosen k is the smallest whose mean
held-out error is within one standard error of the best (the "one standard
error" rule of Breiman et al.). By default every fit stops on its held-out
error (``early_stopping``): it is measured at every iterate, with the step's
other scalars, and a fit stops when it no longer improves; the score is its
lowest value. Masked fits of a too-large k overfit as they converge, so
this is the quantity being estimated at its best, in a few iterations.

``method="consensus"`` — stability over restarts (Brunet et al. 2004; nimfa,
NMFk): each k is fitted from several random starts, every row is assigned to
its largest component, and the cophenetic correlation of the consensus
matrix (how often two rows share a cluster) says how reproducible the
clustering is. As NMFk does, stability is weighed with the fit: among the
stable ranks (cophenetic correlation within ``cophenetic_tol`` of the best),
the chosen k is the smallest whose mean reconstruction error is within 5% of
the error range (over all k) of the lowest among them — extra components
that never win a row's argmax leave the clustering "stable" but do not
improve the fit.

Fits of different k (and repeats) are independent graphs; with a
distributed Client they are submitted from several threads at once so the
scheduler runs them side by side (``n_jobs``). On the local threaded
scheduler, fits of a one-block X run one per core side by side (a fit has
nothing to parallelise), others one after the other, each using every core;
BLAS is single-threaded during the selection, as on distributed workers.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.system import CPU_COUNT
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from .. import caller
from ..base.seeds import seed_from
from ..engine import loop
from ..engine.blocks import aligned_inputs
from ..engine.graph import SPLIT_EVERY, assemble, sum_list, tree_reduce, x_block_refs
from . import graph as blocked
from . import init, kernels
from . import stats as stats_mod
from . import step as nmf_step
from .estimator import NMF

_METHODS = ("cv", "consensus")


@dataclass
class RankSelection:
    """What ``select_rank`` found.

    Attributes
    ----------
    method : {"cv", "consensus"}
    ks : list of int
        The candidate ranks, ascending.
    chosen_k : int
    scores : ndarray of shape (len(ks), n_repeats)
        "cv": relative held-out error ``||X_Ω − (WH)_Ω|| / ||X_Ω||`` of each
        repeat (lower is better). "consensus": the relative reconstruction
        error of each restart (the stability score is ``cophenetic``).
    mean, std : ndarray of shape (len(ks),)
        Over repeats: of ``scores`` for "cv"; for "consensus", ``mean`` is
        the cophenetic correlation and ``std`` is zero.
    cophenetic : ndarray of shape (len(ks),) or None
        Cophenetic correlation of the consensus matrix ("consensus" only).
    n_iter : ndarray of int, shape (len(ks), n_repeats)
        Iterations of every fit.
    converged : ndarray of bool, shape (len(ks), n_repeats)
    params : dict
        The settings used (holdout fraction, solver, seeds, ...).
    """

    method: str
    ks: list
    chosen_k: int
    scores: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    cophenetic: np.ndarray | None = None
    n_iter: np.ndarray | None = None
    converged: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    @property
    def score_name(self) -> str:
        """What ``scores`` measure, for labels and reports."""
        return "held-out relative error" if self.method == "cv" else "cophenetic correlation"

    def table(self):
        """One row per k, as a pandas DataFrame.

        Columns: ``k``, the mean and standard deviation (``cv``: of the
        held-out error; ``consensus``: cophenetic correlation and the mean
        reconstruction error), the mean number of iterations, and
        ``chosen``.
        """
        import pandas as pd

        data = {"k": list(self.ks)}
        if self.method == "cv":
            data["heldout_error_mean"] = self.mean
            data["heldout_error_std"] = self.std
            data["heldout_error_se"] = self.std / math.sqrt(max(self.scores.shape[1], 1))
        else:
            data["cophenetic"] = self.cophenetic
            data["reconstruction_error_mean"] = self.scores.mean(axis=1)
        if self.n_iter is not None:
            data["n_iter_mean"] = self.n_iter.mean(axis=1)
        data["chosen"] = [k == self.chosen_k for k in self.ks]
        return pd.DataFrame(data)

    def __str__(self) -> str:
        return f"RankSelection(method={self.method!r}, chosen_k={self.chosen_k})\n{self.table().to_string(index=False)}"


def select_rank(
    X,
    ks,
    *,
    method="cv",
    n_repeats=3,
    holdout=0.1,
    random_state=None,
    solver="anls-bpp",
    init=None,
    tol=1e-4,
    max_iter=200,
    stopping="auto",
    inner_iter=1,
    alpha_W=0.0,
    alpha_H="same",
    l1_ratio=0.0,
    chunks="auto",
    client=None,
    n_jobs=None,
    max_rows=2000,
    cophenetic_tol=0.005,
    early_stopping=1e-4,
):
    """Choose the number of components k of an NMF of X.

    Parameters
    ----------
    X : array-like, sparse matrix or Dask array of shape (n_samples, n_features)
        Non-negative data, as for :class:`dnmf.NMF`.
    ks : iterable of int
        Candidate ranks (at least 1 each).
    method : {"cv", "consensus"}, default="cv"
        "cv": held-out entries, one-standard-error rule; "consensus":
        cophenetic correlation over restarts (see the module doc).
    n_repeats : int, default=3
        "cv": independent held-out masks; "consensus": random restarts per k
        (stability estimates want 10 or more).
    holdout : float in (0, 0.5], default=0.1
        Fraction of entries held out ("cv"). For sparse X, this fraction of
        the non-zeros and as many zeros.
    random_state : int, RandomState or None
        Seeds the masks and the initialisations; an int gives the same result
        on any cluster for the same blocking.
    solver : {"anls-bpp", "cd", "mu"}, default="anls-bpp"
        Frobenius solver for every fit (the masked fit needs Frobenius).
    init : {None, "random", "nndsvd", "nndsvda", "nndsvdar"}, default=None
        As in :class:`dnmf.NMF` for "cv" (None: "nndsvda" when possible);
        "consensus" always uses "random" restarts.
    tol, max_iter, stopping, inner_iter, alpha_W, alpha_H, l1_ratio
        As in :class:`dnmf.NMF`, for every fit.
    chunks, client
        As in :class:`dnmf.NMF`.
    n_jobs : int or None, default=None
        Fits run at the same time (threads submitting independent graphs).
        None: one per k with a distributed Client; on local threads, one per
        core when X is one block (in memory and small: each fit has nothing
        to run in parallel), else 1. The result does not depend on it.
    max_rows : int, default=2000
        "consensus": rows used for the (rows × rows) consensus matrix, a
        seeded sample when X has more.
    cophenetic_tol : float, default=0.005
        "consensus": how far below the best cophenetic correlation a k may
        fall and still count as stable.
    early_stopping : float in [0, 1) or None, default=1e-4
        "cv": the held-out error of every iterate is measured (with the
        step's other scalars, O(held-out entries · k) each), and a fit stops as
        soon as an iteration lowers it by less than this fraction, or raises
        it (the fit then keeps the previous iterate). A k's score is the
        lowest held-out error its fit reached. Masked fits of a too-large k
        overfit as they converge, so this is both faster (a few to a few
        tens of iterations per fit instead of ``max_iter``) and the score of
        each k at its best. ``tol`` and ``max_iter`` still stop a fit
        earlier. None: every fit runs to ``tol`` or ``max_iter`` and is
        scored at its last iterate (as in 0.1.0; slower, and it favours
        smaller k on data where large k overfit).

    Returns
    -------
    RankSelection
        ``chosen_k``, the per-k scores and ``table()``.

    Notes
    -----
    Speed: the cost is (fits) × (iterations per fit) × (one masked step).
    On local threads BLAS runs single-threaded during the selection (the
    fits run side by side instead, see ``n_jobs``). On MovieLens
    ml-latest-small (610 × 9,724, 100,836 ratings),
    ``select_rank(X, ks=range(4, 13), n_repeats=3)`` takes about 15 s of
    CPU time (``python benchmarks/bench_rank.py --ratings PATH``).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must hold positive integers; got {ks!r}. Pass e.g. ks=range(2, 11).")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}.")
    if not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive int; got {n_repeats!r}.")
    if method == "cv" and not (0 < holdout <= 0.5):
        raise ValueError(f"holdout must be a fraction in (0, 0.5]; got {holdout!r}. 0.1 (10% of the entries) is usual.")
    if solver not in ("anls-bpp", "cd", "mu"):
        raise ValueError(f"solver must be 'anls-bpp', 'cd' or 'mu'; got {solver!r}.")
    if early_stopping is not None and not (
        isinstance(early_stopping, (int, float, np.floating)) and 0 <= early_stopping < 1
    ):
        raise ValueError(
            f"early_stopping must be a fraction in [0, 1) or None; got {early_stopping!r}. "
            "1e-4 stops a fit once the held-out error improves by less than 0.01%; None runs fits to tol."
        )

    est = NMF(
        n_components=ks[-1],
        init=init,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        random_state=random_state,
        alpha_W=alpha_W,
        alpha_H=alpha_H,
        l1_ratio=l1_ratio,
        chunks=chunks,
        client=client,
        inner_iter=inner_iter,
        stopping=stopping,
    )
    est._validate_params()
    Xd, _, runner, stats = est._prepare(X, reset=True)
    m, n = Xd.shape
    if ks[-1] > min(m, n) and method == "cv" and init not in (None, "random"):
        raise ValueError(
            f"init={init!r} needs k <= min(n_samples, n_features) = {min(m, n)}; "
            f"the largest k is {ks[-1]}. Lower ks or use init='random'."
        )
    base = seed_from(random_state)
    if n_jobs is None:
        # One block leaves each fit nothing to run in parallel: fit side by side instead.
        n_jobs = len(ks) if runner.client is not None else (CPU_COUNT if Xd.npartitions == 1 else 1)

    fitter = _Fitter(est, Xd, stats, runner)
    # On local threads, BLAS threads on top of the fits (or of Dask's threads)
    # oversubscribe the cores: on a busy 2-core machine a 20,000-term dot
    # product took 40 ms instead of 0.02 ms. Distributed workers pin it already.
    blas = threadpool_limits(limits=1, user_api="blas") if runner.client is None else contextlib.nullcontext()
    with blas:
        if method == "cv":
            return _cv(fitter, ks, n_repeats, holdout, base, n_jobs, early_stopping)
        return _consensus(fitter, ks, n_repeats, base, n_jobs, max_rows, cophenetic_tol)


def _derive(*parts) -> int:
    """A 63-bit seed from integers (independent streams per repeat and k)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class _Fitter:
    """One NMF fit of a given k on the prepared, blocked X (optionally masked)."""

    def __init__(self, est: NMF, X: da.Array, stats, runner):
        self.est = est
        self.X = X
        self.stats = stats
        self.runner = runner

    @staticmethod
    def init_method(init_param, k, shape):
        if init_param is None:
            return "nndsvda" if k <= min(shape) else "random"
        return init_param

    def svd(self, X, ks, init_param, seed):
        """One randomized SVD for every k that starts from NNDSVD (or None)."""
        need = [k for k in ks if self.init_method(init_param, k, X.shape) != "random"]
        if not need:
            return None
        U, S, V = init.randomized_svd(X, max(need), seed, self.runner)
        U, V = self.runner.persist(U, V)
        return U, S, V

    def fit(self, X, stats, k, seed, init_param, holdout=None, svd=None, truth=None, early_stopping=None):
        """One fit of rank k; with ``truth`` and ``early_stopping``, stopped on the held-out error.

        Returns the :class:`~dnmf.nmf.step.FitResult` and, when stopped on
        the held-out error, that error per iteration (else None).
        """
        est = self.est
        m, n = X.shape
        method = self.init_method(init_param, k, X.shape)
        if method == "random":
            W0, Ht0 = init.random_init(X, k, stats.mean, seed)
        else:
            W0, Ht0 = init.nndsvd_init(X, k, method, stats.mean, seed, self.runner, svd=svd)
        alpha_H = est.alpha_W if est.alpha_H == "same" else est.alpha_H
        l1_W, l1_H, l2_W, l2_H = kernels.regularization(m, n, est.alpha_W, alpha_H, est.l1_ratio)
        inner_W, inner_H = est._inner_sweeps(X, stats, k)
        config = nmf_step.LoopConfig(
            solver=est.solver,
            beta=2.0,
            tol=est.tol,
            max_iter=est.max_iter,
            max_time=None,
            l1_reg_W=l1_W,
            l1_reg_H=l1_H,
            l2_reg_W=l2_W,
            l2_reg_H=l2_H,
            update_H=True,
            sq_norm_x=stats.sq_norm,
            stopping=est.stopping,
            inner_W=inner_W,
            inner_H=inner_H,
        )
        with warnings.catch_warnings():
            # Convergence is reported once, for all fits, by the caller.
            warnings.simplefilter("ignore", ConvergenceWarning)
            if truth is None or early_stopping is None:
                return nmf_step.run(X, W0, Ht0, config, runner=self.runner, holdout=holdout), None
            step = _EarlyStoppingStep(X, config, holdout, truth, early_stopping)
            out = loop.run(step, (W0, Ht0), max_iter=config.max_iter, tol=config.tol, runner=self.runner)
        W, Ht, _ = out.state
        result = nmf_step.FitResult(
            W=W,
            Ht=Ht,
            n_iter=out.n_iter,
            loss_history=out.history,
            reconstruction_err=out.final_loss,
            converged=out.converged,
            elapsed=out.elapsed,
        )
        return result, step.errors


def _map(n_jobs, fn, items):
    # Convergence is reported once, for all fits, by the caller. Warning filters are process-wide,
    # so the filter is set here, in the calling thread, before any fit starts: catch_warnings in
    # the fits' own threads alone would race and let a fit's warning through (naming the thread
    # pool's file instead of the user's line).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if n_jobs <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            return list(pool.map(fn, items))


def _warn_unconverged(converged: np.ndarray, max_iter: int) -> None:
    if not converged.all():
        caller.warn(
            f"{int((~converged).sum())} of {converged.size} fits reached max_iter={max_iter} "
            "before converging. Increase max_iter (or tol) for a more reliable choice of k.",
            ConvergenceWarning,
        )


# --------------------------------------------------------------------------
# Held-out cross-validation
# --------------------------------------------------------------------------


def _mask_block(x, fraction, base, repeat, block_id=None):
    return kernels.holdout_mask(x, fraction, [base, 101, repeat, *block_id])


def holdout_split(X: da.Array, fraction: float, seed: int, repeat: int = 0):
    """(mask, X_train): held-out coordinates per block and X with zeros there.

    ``mask`` has X's chunks and CSR blocks with data 1 at the held-out
    coordinates (see ``kernels.holdout_mask``); it depends only on
    ``(seed, repeat)`` and the blocking.
    """
    mask = X.map_blocks(
        _mask_block,
        fraction,
        seed,
        repeat,
        dtype=np.float64,
        meta=sp.csr_matrix((0, 0), dtype=np.float64),
    )
    train = da.map_blocks(kernels.holdout_zero, X, mask, dtype=X.dtype, meta=X._meta)
    return mask, train


@aligned_inputs
def _truth_block(x, m):
    """X's values at the held-out coordinates of one block: CSR with ``m``'s structure.

    Zeros among them stay stored (explicit), so the data lines up with the mask.
    """
    if m.nnz == 0:
        values = np.empty(0)
    else:
        c = m.tocoo()
        picked = sp.csr_matrix(x)[c.row, c.col] if sp.issparse(x) else x[c.row, c.col]
        values = np.asarray(picked, dtype=np.float64).ravel()
    return sp.csr_matrix((values, m.indices.copy(), m.indptr.copy()), shape=m.shape)


def heldout_truth(X: da.Array, mask: da.Array) -> da.Array:
    """X's values at the held-out coordinates, blocked like X (CSR blocks shaped like ``mask``'s).

    Picked out once per mask, so the held-out error of an iterate costs
    O(|held out| · k), without indexing X again.
    """
    return da.map_blocks(_truth_block, X, mask, dtype=np.float64, meta=sp.csr_matrix((0, 0), dtype=np.float64))


@aligned_inputs
def _truth_error(t, W, Ht):
    """``[Σ (X - W Ht.T)², Σ X², count]`` of one block, as ``kernels.holdout_error`` (same sums)."""
    if t.nnz == 0:
        return np.zeros(3)
    resid = t.data - kernels.sampled_dot(t, W, Ht).astype(np.float64)
    return np.array([float(resid @ resid), float(t.data @ t.data), float(t.data.size)])


def heldout_error(truth: da.Array, W: da.Array, Ht: da.Array) -> da.Array:
    """(3,) ``[Σ (X - W H)², Σ X², count]`` over the held-out coordinates, from ``heldout_truth``.

    The same numbers as :func:`dnmf.nmf.graph.holdout_error` on X and the
    mask: one task per block, then a fixed-order tree. O(|held out| · k).
    """
    tref, tdeps = x_block_refs(truth)
    token = tokenize("dnmf-heldout-error", truth.name, W.name, Ht.name)
    core = f"dnmf-heldout-error-core-{token}"
    name = f"dnmf-heldout-error-{token}"
    layer: dict = {}
    keys = []
    for i in range(truth.numblocks[0]):
        for j in range(truth.numblocks[1]):
            layer[(core, i, j)] = (_truth_error, tref(i, j), (W.name, i, 0), (Ht.name, j, 0))
            keys.append((core, i, j))
    top = tree_reduce(layer, core + "-sum", keys, until=SPLIT_EVERY)
    graph = assemble(core, layer, [*tdeps, W, Ht], {name: {(name, 0): (sum_list, top)}})
    return da.Array(graph, name, chunks=((3,),), dtype=np.float64)


def relative_error(sse: float, ssx: float, count: float) -> float:
    """The held-out score ``sqrt(Σ (X - W H)² / Σ X²)`` (RMSE when X is zero there)."""
    return math.sqrt(sse / ssx) if ssx > 0 else math.sqrt(sse / max(count, 1.0))


class _EarlyStoppingStep(nmf_step.NMFStep):
    """The masked NMF step, also measuring the held-out error of every iterate, and stopping on it.

    The error comes with the step's scalar vector (one round trip, as
    before). The fit stops once an iteration lowers it by less than the
    fraction ``early_stopping`` of the previous one; when it rose, the fit
    goes back to the previous iterate (the lowest so far).
    """

    def __init__(self, X, config, holdout, truth, early_stopping: float):
        super().__init__(X, config, holdout=holdout)
        self.truth = truth
        self.early_stopping = early_stopping
        self.errors: list[float] = []

    def build(self, state, iteration):
        new, scalars = super().build(state, iteration)
        W_new, Ht_new = new[0], new[1]
        both = da.concatenate([scalars, heldout_error(self.truth, W_new, Ht_new)]).rechunk(-1)
        return new, both

    def observe(self, st, iteration, s, report):
        verdict = super().observe(st, iteration, s[: blocked.N_SCALARS], report)
        error = relative_error(*s[blocked.N_SCALARS :])
        previous = self.errors[-1] if self.errors else math.inf
        self.errors.append(error)
        if error > previous:
            return loop.Verdict(converged=True, rollback=True, stop=verdict.stop)
        if error > (1.0 - self.early_stopping) * previous:
            return loop.Verdict(converged=True, stop=verdict.stop)
        return verdict

    @property
    def best(self) -> float:
        return min(self.errors) if self.errors else math.nan


def _cv(fitter: _Fitter, ks, n_repeats, fraction, base, n_jobs, early_stopping) -> RankSelection:
    runner = fitter.runner
    splits = []
    for r in range(n_repeats):
        mask, train = holdout_split(fitter.X, fraction, base, r)
        extra = [heldout_truth(fitter.X, mask)] if early_stopping is not None else []
        mask, train, *extra = runner.persist(mask, train, *extra)
        truth = extra[0] if extra else None
        svd = fitter.svd(train, ks, fitter.est.init, _derive(base, 505, r))
        splits.append((mask, train, truth, stats_mod.compute_stats(train, runner), svd))

    def one(item):
        r, k = item
        mask, train, truth, stats, svd = splits[r]
        seed = _derive(base, 202, r, k)
        res, errors = fitter.fit(
            train, stats, k, seed, fitter.est.init, holdout=mask, svd=svd, truth=truth, early_stopping=early_stopping
        )
        if errors is not None:
            return min(errors), res.n_iter, res.converged
        sse, ssx, count = np.asarray(runner.compute(blocked.holdout_error(fitter.X, mask, res.W, res.Ht)))
        return relative_error(sse, ssx, count), res.n_iter, res.converged

    items = [(r, k) for k in ks for r in range(n_repeats)]
    out = _map(n_jobs, one, items)
    scores = np.array([o[0] for o in out]).reshape(len(ks), n_repeats)
    n_iter = np.array([o[1] for o in out]).reshape(len(ks), n_repeats)
    converged = np.array([o[2] for o in out]).reshape(len(ks), n_repeats)
    _warn_unconverged(converged, fitter.est.max_iter)
    mean = scores.mean(axis=1)
    std = scores.std(axis=1, ddof=1) if n_repeats > 1 else np.zeros(len(ks))
    chosen = one_standard_error(ks, mean, std, n_repeats)
    return RankSelection(
        method="cv",
        ks=ks,
        chosen_k=chosen,
        scores=scores,
        mean=mean,
        std=std,
        n_iter=n_iter,
        converged=converged,
        params=dict(
            holdout=fraction, n_repeats=n_repeats, seed=base, solver=fitter.est.solver, early_stopping=early_stopping
        ),
    )


def one_standard_error(ks, mean, std, n_repeats) -> int:
    """The smallest k whose mean error is within one standard error of the best."""
    best = int(np.argmin(mean))
    limit = mean[best] + std[best] / math.sqrt(n_repeats)
    return int(next(k for k, v in zip(ks, mean, strict=True) if v <= limit))


# --------------------------------------------------------------------------
# Consensus (stability over restarts)
# --------------------------------------------------------------------------


def _consensus(fitter: _Fitter, ks, n_repeats, base, n_jobs, max_rows, tol) -> RankSelection:
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    runner = fitter.runner
    X, stats = fitter.X, fitter.stats
    m = X.shape[0]
    rows = np.arange(m)
    if m > max_rows:
        rows = np.sort(np.random.default_rng([base, 303]).choice(m, size=max_rows, replace=False))
    norm_x = math.sqrt(stats.sq_norm) or 1.0

    def one(item):
        r, k = item
        res, _ = fitter.fit(X, stats, k, _derive(base, 404, r, k), "random")
        W = res.W if rows.size == m else res.W[rows]
        labels = np.asarray(runner.compute(W.argmax(axis=1)))
        return labels, res.reconstruction_err / norm_x, res.n_iter, res.converged

    items = [(r, k) for k in ks for r in range(n_repeats)]
    out = _map(n_jobs, one, items)
    coph = np.empty(len(ks))
    for a in range(len(ks)):
        labels = [out[a * n_repeats + r][0] for r in range(n_repeats)]
        coph[a] = cophenetic_correlation(consensus_matrix(labels), linkage, cophenet, squareform)
    errors = np.array([o[1] for o in out]).reshape(len(ks), n_repeats)
    n_iter = np.array([o[2] for o in out]).reshape(len(ks), n_repeats)
    converged = np.array([o[3] for o in out]).reshape(len(ks), n_repeats)
    _warn_unconverged(converged, fitter.est.max_iter)
    chosen = stable_rank(ks, coph, errors.mean(axis=1), tol)
    return RankSelection(
        method="consensus",
        ks=ks,
        chosen_k=chosen,
        scores=errors,
        mean=coph,
        std=np.zeros(len(ks)),
        cophenetic=coph,
        n_iter=n_iter,
        converged=converged,
        params=dict(n_repeats=n_repeats, seed=base, rows=int(rows.size), cophenetic_tol=tol, solver=fitter.est.solver),
    )


def consensus_matrix(labels) -> np.ndarray:
    """Fraction of the runs in which two rows got the same label: (rows, rows)."""
    labels = [np.asarray(lab) for lab in labels]
    C = np.zeros((labels[0].size, labels[0].size))
    for lab in labels:
        C += lab[:, None] == lab[None, :]
    return C / len(labels)


def cophenetic_correlation(C: np.ndarray, linkage=None, cophenet=None, squareform=None) -> float:
    """Correlation of ``1 − C`` with the cophenetic distances of its average-linkage tree.

    1 for a perfectly reproducible clustering (C of zeros and ones).
    """
    if linkage is None:
        from scipy.cluster.hierarchy import cophenet, linkage
        from scipy.spatial.distance import squareform
    D = squareform(1.0 - C, checks=False)
    if D.size == 0 or np.ptp(D) == 0:
        return 1.0
    return float(cophenet(linkage(D, method="average"), D)[0])


#: A stable k whose reconstruction error is within this fraction of the error
#: range of the best stable one's is as good a fit (see the module doc).
_CONSENSUS_ERROR_RTOL = 0.05


def stable_rank(ks, coph, errors, tol) -> int:
    """The smallest stable k that fits about as well as any stable k.

    Stable: cophenetic correlation >= max - ``tol``. About as well: mean
    reconstruction error <= the lowest among the stable ones plus 5% of the
    range of the errors over all k (an elbow criterion).
    """
    coph = np.asarray(coph, dtype=float)
    errors = np.asarray(errors, dtype=float)
    stable = coph >= coph.max() - tol
    best = errors[stable].min()
    limit = best + _CONSENSUS_ERROR_RTOL * (errors.max() - best)
    return int(next(k for k, s, e in zip(ks, stable, errors, strict=True) if s and e <= limit))
