"""Rank selection: held-out masks, the masked fit, select_rank and its plot."""

import itertools
import multiprocessing
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition._nmf import _update_coordinate_descent
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.base.inputs import from_memory
from dnmf.nmf import kernels
from dnmf.nmf import selection as rank
from dnmf.nmf import step as driver
from dnmf.nmf.stats import compute_stats
from tests.nmf.helpers import loop_config


def planted(seed, m=120, n=80, k=7, noise=0.05):
    """X = W H with exponential factors plus |noise| at 5% of X's spread."""
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (m, k)) @ rng.exponential(1.0, (k, n))
    return X + noise * X.std() * np.abs(rng.standard_normal((m, n)))


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def test_dense_mask_is_seeded_and_exact():
    X = np.ones((30, 20))
    M = kernels.holdout_mask(X, 0.1, [1, 2])
    assert M.nnz == 60 and (M.data == 1).all() and M.has_sorted_indices
    assert (kernels.holdout_mask(X, 0.1, [1, 2]) != M).nnz == 0
    assert (kernels.holdout_mask(X, 0.1, [1, 3]) != M).nnz > 0
    Z = kernels.holdout_zero(X, M)
    assert (Z[M.toarray() > 0] == 0).all() and Z.sum() == 600 - 60
    assert X.sum() == 600  # the input is not modified


def test_sparse_mask_holds_out_nonzeros_and_as_many_zeros():
    X = sp.random(200, 150, density=0.05, format="csr", random_state=0) + 0
    M = kernels.holdout_mask(X, 0.2, 7)
    held = M.toarray() > 0
    Xa = X.toarray()
    n_nz = int(round(0.2 * X.nnz))
    assert (Xa[held] != 0).sum() == n_nz
    assert (Xa[held] == 0).sum() == n_nz
    Z = kernels.holdout_zero(X, M)
    assert sp.issparse(Z) and Z.nnz == X.nnz - n_nz
    assert (Z.toarray()[held] == 0).all()
    np.testing.assert_array_equal(Z.toarray()[~held], Xa[~held])


def test_holdout_values_and_error():
    rng = np.random.default_rng(0)
    X = rng.random((9, 7))
    W, Ht = rng.random((9, 3)), rng.random((7, 3))
    M = kernels.holdout_mask(X, 0.3, 0)
    held = M.toarray() > 0
    F = kernels.holdout_values(M, W, Ht)
    np.testing.assert_allclose(F.toarray()[held], (W @ Ht.T)[held])
    sse, ssx, count = kernels.holdout_error(X, M, W, Ht)
    assert count == held.sum()
    assert sse == pytest.approx(((X - W @ Ht.T)[held] ** 2).sum())
    assert ssx == pytest.approx((X[held] ** 2).sum())
    assert kernels.holdout_error(sp.csr_matrix(X), M, W, Ht) == pytest.approx([sse, ssx, count])


# --------------------------------------------------------------------------
# The masked fit
# --------------------------------------------------------------------------


def masked_fit(X, W0, H0, chunks, solver, iters):
    Xd = from_memory(X, chunks)
    runner = driver.Runner()
    mask, train = rank.holdout_split(Xd, 0.15, seed=4)
    mask, train = runner.persist(mask, train)
    stats = compute_stats(train, runner)
    cfg = loop_config(solver=solver, max_iter=iters, sq_norm_x=stats.sq_norm)
    W0d = from_memory(W0, (chunks[0], W0.shape[1]))
    H0d = from_memory(np.ascontiguousarray(H0.T), (chunks[1], H0.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = driver.run(train, W0d, H0d, cfg, runner=runner, holdout=mask)
    held = np.asarray(mask.compute().toarray()) > 0
    return res.W.compute(), res.Ht.compute().T, held, res


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_masked_cd_is_hals_on_imputed_data(sparse):
    """Each half-step = scikit-learn's CD on X with the held-out entries
    filled by the current model (the EM / majorise-minimise step)."""
    rng = np.random.RandomState(0)
    X = rng.rand(30, 24) * (rng.rand(30, 24) < (0.5 if sparse else 1.0))
    Xin = sp.csr_matrix(X) if sparse else X
    W0, H0 = rng.rand(30, 3), rng.rand(3, 24)
    W, H, held, res = masked_fit(Xin, W0, H0, ((10, 20), (9, 15)), "cd", 4)
    Wn, Htn = W0.copy(), np.ascontiguousarray(H0.T)
    for _ in range(4):
        Xi = np.where(held, Wn @ Htn.T, np.where(held, 0, X))
        _update_coordinate_descent(Xi, Wn, Htn, 0, 0, False, None)
        Xi = np.where(held, Wn @ Htn.T, np.where(held, 0, X))
        _update_coordinate_descent(Xi.T, Htn, Wn, 0, 0, False, None)
    np.testing.assert_allclose(W, Wn, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H, Htn.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["cd", "anls-bpp", "mu"])
def test_masked_loss_never_increases_and_ignores_held_out_values(solver):
    rng = np.random.RandomState(1)
    X = rng.rand(40, 30)
    W0, H0 = rng.rand(40, 4), rng.rand(4, 30)
    losses = []
    for t in (1, 2, 4, 8):
        W, H, held, res = masked_fit(X, W0, H0, ((15, 25), (30,)), solver, t)
        losses.append((((X - W @ H) ** 2)[~held]).sum())
        # The reported loss majorises the loss on the kept entries.
        assert res.loss_history[-1] ** 2 >= losses[-1] * (1 - 1e-10)
    assert all(b <= a * (1 + 1e-10) for a, b in itertools.pairwise(losses))
    # Changing X at the held-out entries changes nothing in the fit.
    X2 = X.copy()
    X2[held] = 100.0
    W2, H2, held2, _ = masked_fit(X2, W0, H0, ((15, 25), (30,)), solver, 8)
    assert (held2 == held).all()
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(H2, H)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_heldout_error_from_truth_matches_naive(sparse):
    """The per-iterate error (X's held-out values picked once) = the naive sums over the mask."""
    from dnmf.nmf import graph as blocked

    rng = np.random.default_rng(5)
    X = rng.random((23, 17)) * (rng.random((23, 17)) < (0.4 if sparse else 1.0))
    Xin = sp.csr_matrix(X) if sparse else X
    Xd = from_memory(Xin, (8, 9))
    mask, _ = rank.holdout_split(Xd, 0.2, seed=3)
    W, Ht = rng.random((23, 4)), rng.random((17, 4))
    Wd, Htd = from_memory(W, ((8, 8, 7), (4,))), from_memory(Ht, ((9, 8), (4,)))
    truth = rank.heldout_truth(Xd, mask)
    got = rank.heldout_error(truth, Wd, Htd).compute()
    held = mask.compute().toarray() > 0
    resid = (X - W @ Ht.T)[held]
    np.testing.assert_allclose(got, [resid @ resid, X[held] @ X[held], held.sum()], rtol=1e-12)
    # The same numbers as the error select_rank scored fits with before (bit for bit).
    np.testing.assert_array_equal(got, blocked.holdout_error(Xd, mask, Wd, Htd).compute())


def test_early_stopping_scores_the_lowest_heldout_error_of_the_fit():
    """A fit stopped on its held-out error scores min over iterates t of the error of the
    same fit run for exactly t iterations, and stops at the first t that improves it by less
    than early_stopping (or raises it)."""
    X = planted(1, m=40, n=30, k=3)
    kw = dict(ks=[2], n_repeats=1, random_state=2, solver="cd", holdout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        es = dnmf.select_rank(X, early_stopping=1e-2, tol=0, max_iter=100, **kw)
        stop = int(es.n_iter[0, 0])
        trace = [
            dnmf.select_rank(X, early_stopping=None, tol=0, max_iter=t, **kw).scores[0, 0] for t in range(1, stop + 1)
        ]
    assert 1 < stop < 100
    assert es.scores[0, 0] == min(trace)
    assert all(b <= (1 - 1e-2) * a for a, b in itertools.pairwise(trace[:-1]))
    assert trace[-1] > (1 - 1e-2) * trace[-2]


def test_mask_must_match_blocking():
    from dnmf.nmf import graph as blocked

    Xd = from_memory(np.ones((10, 8)), (5, 8))
    mask, _ = rank.holdout_split(from_memory(np.ones((10, 8)), (4, 8)), 0.1, 0)
    W, Ht = from_memory(np.ones((10, 2)), (5, 2)), from_memory(np.ones((8, 2)), (8, 2))
    with pytest.raises(ValueError, match="chunked like X"):
        blocked.step(Xd, W, Ht, blocked.gram(Ht), blocked.StepParams("cd", perm_W=(0, 1), perm_H=(0, 1)), mask)


# --------------------------------------------------------------------------
# select_rank
# --------------------------------------------------------------------------

# 50 iterations of accelerated HALS from NNDSVDa settle the held-out error
# (the stopping rule would go on to ~70-100); they keep the test fast.
RECOVERY = dict(ks=range(5, 10), n_repeats=3, solver="cd", inner_iter="auto", tol=1e-5, max_iter=50)


def _recover(seed):
    from threadpoolctl import threadpool_limits

    # One BLAS thread per process: two processes share the two cores.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dnmf.select_rank(planted(seed), random_state=seed, **RECOVERY).chosen_k


@pytest.mark.subprocess
def test_select_rank_recovers_planted_rank():
    """k* = 7 with 5% noise: recovered in at least 9 of 10 seeds.

    The seeds run in two processes (one per core); each fit runs on the
    local scheduler. How long rank selection takes is measured by
    benchmarks/bench_rank.py, not here.
    """
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(2) as pool:
        chosen = pool.map(_recover, range(10))
    assert sum(k == 7 for k in chosen) >= 9, chosen


def test_select_rank_result_and_table():
    X = planted(3, m=60, n=40, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = dnmf.select_rank(X, [2, 3, 4], n_repeats=2, random_state=0, max_iter=60, tol=1e-5)
    assert isinstance(res, dnmf.RankSelection)
    assert res.ks == [2, 3, 4] and res.scores.shape == (3, 2) and res.n_iter.shape == (3, 2)
    assert res.chosen_k == 3
    table = res.table()
    assert list(table["k"]) == [2, 3, 4]
    assert table["chosen"].tolist() == [False, True, False]
    np.testing.assert_allclose(table["heldout_error_mean"], res.mean)
    assert "chosen_k=3" in str(res)
    # Same seed, same numbers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        again = dnmf.select_rank(X, [2, 3, 4], n_repeats=2, random_state=0, max_iter=60, tol=1e-5)
    np.testing.assert_array_equal(again.scores, res.scores)


def test_select_rank_sparse_and_parallel_jobs():
    rng = np.random.default_rng(0)
    W = rng.exponential(1.0, (150, 4)) * (rng.random((150, 4)) < 0.5)
    H = rng.exponential(1.0, (4, 90)) * (rng.random((4, 90)) < 0.5)
    X = sp.csr_matrix(W @ H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seq = dnmf.select_rank(X, [2, 4, 6], n_repeats=2, random_state=1, max_iter=40, chunks=(50, 45))
        par = dnmf.select_rank(X, [2, 4, 6], n_repeats=2, random_state=1, max_iter=40, chunks=(50, 45), n_jobs=3)
    np.testing.assert_array_equal(seq.scores, par.scores)
    assert seq.mean[0] > seq.mean[1]


def test_select_rank_on_distributed_cluster(dist_client):
    X = planted(0, m=60, n=40, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Ten iterations of each fit are enough to compare the two schedulers' bits.
        local = dnmf.select_rank(X, [2, 3], n_repeats=2, random_state=0, max_iter=10, chunks=(20, 40))
        dist = dnmf.select_rank(
            X, [2, 3], n_repeats=2, random_state=0, max_iter=10, chunks=(20, 40), client=dist_client
        )
    np.testing.assert_array_equal(local.scores, dist.scores)


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_consensus_method(noise):
    """Rows that each belong to one of 4 clusters: k = 4 is stable and fits."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=80)
    H = rng.exponential(1.0, (4, 50)) * (rng.random((4, 50)) < 0.4) + 0.01
    W = np.eye(4)[labels] * rng.uniform(1, 2, (80, 1))
    X = W @ H
    X = X + noise * X.mean() * rng.exponential(1.0, X.shape) + 0.001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = dnmf.select_rank(X, [2, 3, 4, 5, 6], method="consensus", n_repeats=6, random_state=0, max_iter=100)
    assert res.cophenetic.shape == (5,)
    assert res.cophenetic[2] > 0.99
    assert res.chosen_k == 4
    assert {"cophenetic", "reconstruction_error_mean"} <= set(res.table().columns)


def test_cophenetic_and_consensus_helpers():
    C = rank.consensus_matrix([np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])])
    np.testing.assert_array_equal(C, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert rank.cophenetic_correlation(C) == pytest.approx(1.0)
    assert rank.cophenetic_correlation(np.ones((3, 3))) == 1.0
    assert rank.one_standard_error([2, 3, 4], np.array([0.5, 0.2, 0.19]), np.array([0, 0.02, 0.02]), 4) == 3
    # Stable: 3 and 4 (within 0.02 of 0.99); 4 fits much better than 3.
    assert rank.stable_rank([2, 3, 4, 5], [0.9, 0.99, 0.98, 0.8], [0.5, 0.3, 0.1, 0.09], 0.02) == 4
    assert rank.stable_rank([2, 3, 4, 5], [0.9, 0.99, 0.98, 0.8], [0.5, 0.3, 0.29, 0.09], 0.02) == 3


def test_select_rank_errors():
    X = np.ones((10, 8))
    with pytest.raises(ValueError, match="ks must hold positive"):
        dnmf.select_rank(X, [0, 2])
    with pytest.raises(ValueError, match="method must be"):
        dnmf.select_rank(X, [2], method="bic")
    with pytest.raises(ValueError, match="holdout must be a fraction"):
        dnmf.select_rank(X, [2], holdout=0.9)
    with pytest.raises(ValueError, match="solver must be"):
        dnmf.select_rank(X, [2], solver="lbfgs")
    with pytest.raises(ValueError, match=r"early_stopping must be a fraction in \[0, 1\) or None"):
        dnmf.select_rank(X, [2], early_stopping=1.5)
    with pytest.raises(ValueError, match="Negative values"):
        dnmf.select_rank(-X, [2])


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def _result():
    return rank.RankSelection(
        method="cv",
        ks=[2, 3, 4],
        chosen_k=3,
        scores=np.array([[0.5, 0.52], [0.2, 0.21], [0.21, 0.2]]),
        mean=np.array([0.51, 0.205, 0.205]),
        std=np.array([0.014, 0.007, 0.007]),
    )


def test_rank_curve_plot():
    pytest.importorskip("matplotlib")
    from dnmf.plot import rank_curve

    fig = rank_curve(_result())
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("k") and "held-out" in ax.get_ylabel()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_rank_curve_without_matplotlib(monkeypatch):
    import sys

    from dnmf import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install dnmf\[plot\]"):
        plot.rank_curve(_result())
