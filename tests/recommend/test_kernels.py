"""Top-n kernels (dnmf.recommend.kernels) against a naive sort of every score."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.recommend import kernels as topn
from tests.recommend.helpers import naive_topn, problem

scores_st = st.integers(1, 5).flatmap(
    lambda r: st.sampled_from([1, 7, 40, 1030, 2600]).flatmap(
        lambda c: st.tuples(
            st.just((r, c)),
            st.integers(0, 2**32 - 1),
            st.sampled_from([1, 3, 10, 50]),
            st.sampled_from(["ties", "continuous", "flat", "mostly-excluded"]),
        )
    )
)


def _scores(shape, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "ties":
        S = rng.integers(0, 4, shape).astype(float)
    elif kind == "flat":
        S = np.ones(shape)
    else:
        S = rng.random(shape)
    p_ex = 0.98 if kind == "mostly-excluded" else 0.2
    S[rng.random(shape) < p_ex] = -np.inf
    return S


@settings(max_examples=60, deadline=None)
@given(scores_st)
def test_select_equals_naive_sort(case):
    shape, seed, n, kind = case
    S = _scores(shape, seed, kind)
    cols = np.sort(np.random.default_rng(seed).choice(10**6, shape[1], replace=False))
    idx, sc = topn.select(S.copy(), n, cols)
    ref_idx, ref_sc = naive_topn(S, n, cols)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sc, ref_sc)


@settings(max_examples=30, deadline=None)
@given(scores_st, st.integers(0, 2**32 - 1))
def test_merging_item_blocks_in_any_order_gives_the_whole_top_n(case, seed):
    shape, s_seed, n, kind = case
    S = _scores(shape, s_seed, kind)
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate([[0, shape[1]], rng.integers(0, shape[1] + 1, 3)]))
    parts = [topn.select(S[:, a:b], n, np.arange(a, b)) for a, b in itertools.pairwise(cuts)]
    parts = [parts[i] for i in rng.permutation(len(parts))]
    idx, sc = topn.merge(parts, n)
    ref_idx, ref_sc = naive_topn(S, n)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sc, ref_sc)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6),
    st.sampled_from([1030, 1500, 2600]),
    st.sampled_from([1, 10, 60]),
    st.sampled_from(["continuous", "ties", "near-ties"]),
    st.integers(0, 2**32 - 1),
)
def test_float32_screening_ranks_exactly_like_float64(r, c, n, kind, seed):
    rng = np.random.default_rng(seed)
    k = 6
    if kind == "ties":
        W, H = rng.integers(0, 3, (r, k)).astype(float), rng.integers(0, 3, (k, c)).astype(float)
    else:
        W, H = rng.random((r, k)), rng.random((k, c))
    if kind == "near-ties":  # a crowded top for row 0: float32 cannot order it, float64 can
        crowd = rng.choice(c, 3 * n, replace=False)
        w = W[0]
        target = (w @ H).max() * (1.01 + rng.uniform(0, 1e-8, crowd.size))
        H[:, crowd] += np.outer(w, target - w @ H[:, crowd]) / (w @ w)
    excluded = rng.random((r, c)) < 0.1
    S = W @ H
    S[excluded] = -np.inf
    S32 = W.astype(np.float32) @ H.astype(np.float32)
    S32[excluded] = -np.inf
    cols = np.arange(c)
    idx, sc = topn.select_refined(S32, n, cols, W, H, topn.score_error_bound(W, H))
    ref_idx, ref_sc = topn.select(S, n, cols)
    np.testing.assert_array_equal(idx, naive_topn(S, n)[0])
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-14)


def test_slab_size_does_not_change_a_block():
    W, H, ub, ib, gm, seen = problem(m=50, n=300, seed=3)
    item = topn.item_block(H, ib, np.arange(300))
    ref = topn.topn_block(W, ub, gm, item, seen, 5)
    small = topn.topn_block(W, ub, gm, item, seen, 5, slab_entries=300 * 3)  # 3 rows at a time
    np.testing.assert_array_equal(small[0], ref[0])
    np.testing.assert_array_equal(small[1], ref[1])
