"""Properties: block reductions equal in-memory products for any blocking;
MU never increases its objective."""

import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.base.inputs import from_memory
from dnmf.engine.runner import Runner
from dnmf.nmf import graph as blocked
from dnmf.nmf.stats import compute_stats


def chunks_for(draw, size):
    cuts = draw(st.lists(st.integers(1, size - 1), max_size=4, unique=True)) if size > 1 else []
    bounds = [0, *sorted(cuts), size]
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))


@st.composite
def blocked_problem(draw):
    m = draw(st.integers(1, 14))
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    sparse = draw(st.booleans())
    rng = np.random.RandomState(seed)
    X = rng.rand(m, n) * (rng.rand(m, n) < 0.5)
    chunks = (chunks_for(draw, m), chunks_for(draw, n))
    return (sp.csr_matrix(X) if sparse else X), X, rng.rand(m, k), rng.rand(n, k), chunks


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(blocked_problem())
def test_block_products_equal_in_memory(problem):
    Xin, X, W, Ht, chunks = problem
    Xd = from_memory(Xin, chunks)
    Wd = da.from_array(W, chunks=(chunks[0], -1))
    Hd = da.from_array(Ht, chunks=(chunks[1], -1))
    np.testing.assert_allclose(blocked.xdot(Xd, Hd).compute(), X @ Ht, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocked.xtdot(Xd, Wd).compute(), X.T @ W, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocked.gram(Wd).compute(), W.T @ W, rtol=1e-12)
    np.testing.assert_allclose(blocked.gram(Hd).compute(), Ht.T @ Ht, rtol=1e-12)
    s = compute_stats(Xd, Runner())
    assert s.sq_norm == pytest.approx((X**2).sum())
    assert s.sum == pytest.approx(X.sum())
    assert s.nnz == np.count_nonzero(X)
    assert s.min == X.min()


@SETTINGS
@given(blocked_problem(), st.sampled_from([2.0, 1.0, 0.5]))
def test_step_result_independent_of_blocking(problem, beta):
    """One full step gives the same factors whatever the blocking."""
    Xin, X, W, Ht, chunks = problem
    W, Ht = W + 0.1, Ht + 0.1
    results = []
    for ch in (chunks, "auto"):
        Xd = from_memory(Xin, ch)
        Wd = da.from_array(W, chunks=(Xd.chunks[0], -1))
        Hd = da.from_array(Ht, chunks=(Xd.chunks[1], -1))
        p = blocked.StepParams(solver="mu", beta=beta)
        W1, H1, HHt1, _ = blocked.step(Xd, Wd, Hd, blocked.gram(Hd), p)
        results.append((W1.compute(), H1.compute()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**16),
    st.sampled_from(["frobenius", "kullback-leibler", 0.5, 1.5]),
    st.booleans(),
)
def test_mu_never_increases_objective(seed, beta, sparse):
    rng = np.random.RandomState(seed)
    X = rng.rand(15, 12) * (rng.rand(15, 12) < 0.6)
    if sparse:
        X = sp.csr_matrix(X)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dnmf.NMF(
            3, solver="mu", beta_loss=beta, init="random", random_state=seed, tol=0, max_iter=25, chunks=(4, 5)
        ).fit(X, callback=lambda it, el, loss: losses.append(loss))
    assert len(losses) == 25
    diffs = np.diff(losses)
    assert (diffs <= 1e-9 * max(losses)).all(), losses


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_partial_sums_give_the_same_bits_at_any_split_level(beta):
    """The pairwise tree over row blocks sums whole tuples of partials for its lowest levels and
    each column block's parts above: wherever that split is, the additions and the bits are the same."""
    import dask.array as da

    from dnmf.nmf import graph

    rng = np.random.default_rng(5)
    X = sp.random(70, 45, density=0.2, random_state=rng, format="csr")
    Xd = da.from_array(X, chunks=(10, 15), asarray=False)  # 7 x 3 blocks: an odd tree
    k = 3
    W = da.from_array(rng.random((70, k)), chunks=(10, k))
    Ht = da.from_array(rng.random((45, k)), chunks=(15, k))
    HHt = da.from_array(np.asarray(Ht.T @ Ht), chunks=(k, k))
    params = graph.StepParams(solver="mu", beta=beta)
    results = []
    for levels in range(4):
        out = graph.step(Xd, W, Ht, HHt, params, local_levels=levels)
        results.append([np.asarray(a.compute(scheduler="sync")).tobytes() for a in out])
    assert all(r == results[0] for r in results[1:])
