"""Train/test splits and accuracy metrics against naive per-user NumPy implementations."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dnmf
from dnmf.recommend.evaluation import evaluate, mae, ranking_metrics, rmse, train_test_split
from dnmf.recommend.factors import Factors
from dnmf.storage import arrays as io

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")


# --------------------------------------------------------------------------
# Data and naive references
# --------------------------------------------------------------------------


def ratings(m=60, n=80, density=0.12, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(
        m, n, density=density, format="csr", random_state=seed, data_rvs=lambda s: rng.integers(1, 6, s).astype(float)
    )
    T = X.copy()
    T.data = rng.integers(1, 40, X.nnz).astype(float)  # timestamps, with ties
    return X, T


def model(m, n, k=3, seed=1, biases=True):
    rng = np.random.default_rng(seed)
    W, H = rng.random((m, k)), rng.random((k, n))
    if not biases:
        return Factors(W, H)
    return Factors(W, H, rng.normal(size=m), rng.normal(size=n), 3.0)


def dense(f):
    S = np.asarray(f.W) @ f.H + f.global_mean
    if f.user_bias is not None:
        S += np.asarray(f.user_bias)[:, None]
    if f.item_bias is not None:
        S += f.item_bias[None, :]
    return S


def entries(X):
    X = sp.coo_matrix(X)
    return {(int(i), int(j)): float(v) for i, j, v in zip(X.row, X.col, X.data, strict=True)}


def naive_errors(f, test):
    S = dense(f)
    errs = [v - S[i, j] for (i, j), v in entries(test).items()]
    return math.sqrt(sum(e * e for e in errs) / len(errs)), sum(abs(e) for e in errs) / len(errs)


def naive_ranking(f, test, train, k, threshold=None):
    S = dense(f)
    m, n = S.shape
    test, train = sp.csr_matrix(test), None if train is None else sp.csr_matrix(train)
    totals = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    users, shown = 0, set()
    for u in range(m):
        rel = {
            int(j) for j, v in zip(test[u].indices, test[u].data, strict=True) if threshold is None or v >= threshold
        }
        if not rel:
            continue
        seen = set() if train is None else set(train[u].indices.tolist())
        top = sorted((j for j in range(n) if j not in seen), key=lambda j: (-S[u, j], j))[:k]
        shown.update(top)
        hit = [1 if j in rel else 0 for j in top] + [0] * (k - len(top))
        totals["precision"] += sum(hit) / k
        totals["recall"] += sum(hit) / len(rel)
        dcg = sum(h / math.log2(p + 2) for p, h in enumerate(hit))
        totals["ndcg"] += dcg / sum(1 / math.log2(p + 2) for p in range(min(len(rel), k)))
        ap, found = 0.0, 0
        for p, h in enumerate(hit):
            found += h
            ap += h * found / (p + 1)
        totals["map"] += ap / min(len(rel), k)
        users += 1
    out = {name: value / users for name, value in totals.items()}
    out["coverage"] = len(shown) / n
    out["n_users"] = users
    return out


def blocked(X, rows, cols=None):
    return da.from_array(sp.csr_matrix(X), chunks=(rows, cols or X.shape[1]), asarray=False)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def check_partition(X, train, test):
    a, b, x = entries(train), entries(test), entries(X)
    assert not set(a) & set(b)
    assert {**a, **b} == x


def test_random_split_is_seeded_disjoint_and_blocking_independent(tmp_path):
    X, _ = ratings(m=200, n=150, density=0.2)
    train, test = train_test_split(X, test_size=0.25, random_state=3)
    check_partition(X, train, test)
    assert abs(test.nnz / X.nnz - 0.25) < 0.03
    again = train_test_split(X, test_size=0.25, random_state=3)[1]
    other = train_test_split(X, test_size=0.25, random_state=4)[1]
    assert entries(again) == entries(test) and entries(other) != entries(test)
    store = io.write_matrix(X, tmp_path / "x.zarr", chunks=(64, 70))
    for source in (blocked(X, 33, 40), str(tmp_path / "x.zarr"), store):
        tr, te = train_test_split(source, test_size=0.25, random_state=3)
        assert tr.chunks == te.chunks
        tr, te = dask.compute(tr, te, scheduler="sync")
        assert entries(te) == entries(test) and entries(tr) == entries(train)


def test_leave_k_out_random_and_latest():
    X, T = ratings()
    counts = np.diff(X.indptr)
    train, test = train_test_split(X, method="leave_k_out", k=2, random_state=0)
    check_partition(X, train, test)
    assert (np.diff(test.indptr) == np.where(counts > 2, 2, 0)).all()
    _, te_d = dask.compute(*train_test_split(blocked(X, 17, 30), method="leave_k_out", k=2, random_state=0))
    assert entries(te_d) == entries(test)

    train, test = train_test_split(X, method="leave_k_out", k=2, timestamps=T, random_state=0)
    check_partition(X, train, test)
    times = entries(T)
    for u in range(X.shape[0]):
        if counts[u] <= 2:
            assert test[u].nnz == 0
            continue
        held = [times[(u, int(j))] for j in test[u].indices]
        kept = [times[(u, int(j))] for j in train[u].indices]
        assert len(held) == 2 and min(held) >= max(kept)  # the latest (ties random)
    te_d = dask.compute(
        train_test_split(blocked(X, 17, 30), method="leave_k_out", k=2, timestamps=blocked(T, 17, 30), random_state=0)[
            1
        ]
    )[0]
    assert entries(te_d) == entries(test)


def test_time_split_uses_a_global_cutoff():
    X, T = ratings(m=90, n=70)
    train, test = train_test_split(X, method="time", test_size=0.3, timestamps=T)
    check_partition(X, train, test)
    times = np.sort(T.data)[::-1]
    cutoff = times[round(0.3 * X.nnz) - 1]
    assert entries(test) == {key: v for key, v in entries(X).items() if entries(T)[key] >= cutoff}
    # A Dask X finds the same cutoff by counting, block by block.
    te_d = dask.compute(
        train_test_split(blocked(X, 20, 25), method="time", test_size=0.3, timestamps=blocked(T, 20, 25))[1],
        scheduler="sync",
    )[0]
    assert entries(te_d) == entries(test)
    # 1-D timestamps follow X.data, also for a CSR whose indices are not sorted.
    order = np.random.default_rng(0).permutation(X.indices.size)
    Xu = X.copy()
    for u in range(X.shape[0]):  # shuffle each row's entries
        a, b = X.indptr[u], X.indptr[u + 1]
        p = a + np.random.default_rng(u).permutation(b - a)
        Xu.indices[a:b], Xu.data[a:b] = X.indices[p], X.data[p]
        T.data[a:b] = T.data[p]
    Xu.has_sorted_indices = False
    te_1d = train_test_split(Xu, method="time", test_size=0.3, timestamps=T.data.copy())[1]
    assert entries(te_1d) == entries(test) and order.size == X.nnz


def test_split_errors_name_the_problem():
    X, T = ratings()
    with pytest.raises(ValueError, match="method must be one of"):
        train_test_split(X, method="folds")
    with pytest.raises(ValueError, match=r"test_size must be a fraction in \(0, 1\)"):
        train_test_split(X, test_size=20)
    with pytest.raises(ValueError, match="needs timestamps"):
        train_test_split(X, method="time")
    with pytest.raises(ValueError, match="has 3 values but X stores"):
        train_test_split(X, method="time", timestamps=np.arange(3))
    bad = T.copy()
    bad.data[0] = 0
    bad.eliminate_zeros()
    with pytest.raises(ValueError, match="entry exactly where X has one"):
        train_test_split(X, method="time", timestamps=bad)


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def test_metrics_match_naive_per_user_implementations():
    X, _ = ratings(m=70, n=90, density=0.15)
    train, test = train_test_split(X, test_size=0.3, random_state=1)
    f = model(*X.shape)
    want_rmse, want_mae = naive_errors(f, test)
    assert rmse(f, test) == pytest.approx(want_rmse, rel=1e-12)
    assert mae(f, test) == pytest.approx(want_mae, rel=1e-12)
    for k, threshold, tr in ((5, None, train), (10, 4.0, train), (3, None, None)):
        got = ranking_metrics(f, test, train=tr, k=k, threshold=threshold)
        want = naive_ranking(f, test, tr, k, threshold)
        assert got == pytest.approx(want, rel=1e-12), (k, threshold)
    everything = evaluate(f, test, train=train, k=5)
    assert everything == pytest.approx({"rmse": want_rmse, "mae": want_mae, **naive_ranking(f, test, train, 5)})


def test_ranking_counts_ties_by_item_index():
    # Integer factors: exact ties everywhere; the lists (and metrics) follow the item order.
    rng = np.random.default_rng(5)
    f = Factors(rng.integers(0, 2, (40, 2)).astype(float), rng.integers(0, 2, (2, 30)).astype(float))
    X, _ = ratings(m=40, n=30, density=0.3, seed=5)
    train, test = train_test_split(X, method="leave_k_out", k=3, random_state=0)
    assert ranking_metrics(f, test, train=train, k=4) == pytest.approx(naive_ranking(f, test, train, 4), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(4, 70), st.integers(4, 70), st.sampled_from([90, 45, 31]), st.sampled_from([16, 37, 1000]))
def test_any_blocking_gives_the_same_metrics(w_rows, t_rows, t_cols, item_block):
    X, _ = ratings(m=70, n=90, density=0.15, seed=2)
    train, test = train_test_split(X, test_size=0.3, random_state=1)
    f = model(*X.shape, seed=3)
    ref = evaluate(f, test, train=train, k=6)
    fd = Factors(
        da.from_array(np.asarray(f.W), chunks=(w_rows, 3)),
        f.H,
        da.from_array(f.user_bias, chunks=17),
        f.item_bias,
        f.global_mean,
    )
    with dask.config.set(scheduler="sync"):
        got = evaluate(fd, blocked(test, t_rows, t_cols), train=blocked(train, max(1, t_rows // 2), t_cols), k=6)
        ranked = ranking_metrics(f, blocked(test, t_rows, t_cols), train=train, k=6, item_block=item_block)
    assert got == pytest.approx(ref, rel=1e-12)
    assert ranked == pytest.approx({k: v for k, v in ref.items() if k not in ("rmse", "mae")}, rel=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_evaluate_models_by_name_and_errors():
    X, _ = ratings(m=50, n=40, density=0.2)
    train, test = train_test_split(X, random_state=0)
    nmf = dnmf.NMF(3, random_state=0, max_iter=5).fit(train)
    got = dnmf.evaluate(nmf, test, train=train, k=5, metrics=["precision", "rmse"])
    f = Factors(nmf._W, nmf.components_)
    assert set(got) == {"precision", "rmse", "n_users"}
    assert got["precision"] == pytest.approx(naive_ranking(f, test, train, 5)["precision"])
    assert got["rmse"] == pytest.approx(naive_errors(f, test)[0])
    assert dnmf.train_test_split is train_test_split
    assert dnmf.evaluate is evaluate
    with pytest.raises(ValueError, match=r"Unknown metrics \['auc'\]"):
        evaluate(f, test, metrics=["auc"])
    with pytest.raises(ValueError, match=r"test has shape \(50, 39\) but the model scores 50 users x 40"):
        evaluate(f, test[:, :39])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        evaluate(f, test, k=0)
