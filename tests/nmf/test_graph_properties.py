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


@pytest.mark.parametrize(("R", "C", "P"), [(6, 1, 2), (16, 4, 4), (13, 3, 3), (8, 2, 2)])
def test_placed_step_moves_only_column_parts_between_workers(R, C, P):
    """A row task's results and a worker's whole-tuple sums are read only where they are.

    Between workers move only a column block's part of a sum (or, with one column block, the
    tuple itself, which is that part, and a row task's partials, never its rows of ``W``); a node that mixes workers moves no more parts than the
    fewest any placement could (:func:`dnmf.engine.graph.place_sums`).
    """
    from dnmf.engine.graph import pick, task_parts

    X = sp.random(R * 4, C * 30, density=0.05, random_state=0, format="csr")
    Xd = da.from_array(X, chunks=(4, 30), asarray=False)
    W = da.ones((R * 4, 2), chunks=(4, 2))
    Ht = da.ones((C * 30, 2), chunks=(30, 2))
    HHt = da.ones((2, 2), chunks=(2, 2))
    owners = tuple(f"w{i * P // R}" for i in range(R))
    out = blocked.step(Xd, W, Ht, HHt, blocked.StepParams(solver="cd"), owners=owners)
    hlg = out[3].__dask_graph__()
    core = next(name for name in hlg.layers if name.startswith("dnmf-step-"))
    layer = dict(hlg.layers[core])
    where = hlg.layers[core].annotations["workers"]
    moved = 0
    for key, task in layer.items():
        if not isinstance(task, tuple) or task[0] is pick:
            continue
        here = where(key)
        for part in task_parts(task):
            if part not in layer:
                continue
            whole = part[0].endswith("-A") or "-Pall-" in part[0]
            if whole:
                assert where(part) == here, f"{key} reads {part} from another worker"
            moved += where(part) is not None and where(part) != here
    # Each column block's tree (and the Grams') sums S single-worker subtrees: the fewest
    # moves are at most S - 1 per tree (each sum where one of its parts is), and each column
    # task reads the Grams' (k × k) sum.
    nodes = [(owner, 1) for owner in owners]
    while len(nodes) > 1:
        pairs = [nodes[t : t + 2] for t in range(0, len(nodes), 2)]
        nodes = [
            pair[0]
            if len(pair) == 1
            else ((pair[0][0], 1) if pair[0][0] == pair[1][0] is not None else (None, pair[0][1] + pair[1][1]))
            for pair in pairs
        ]
    trees = 1 if C == 1 else C + 1
    assert moved <= trees * (nodes[0][1] - 1) + (C if C > 1 else 0)
