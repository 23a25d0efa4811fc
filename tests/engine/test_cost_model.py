"""The cost model (``dnmf.engine.cost``) against what it models: graph sizes, touched columns, bytes."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from dnmf.engine.cost import Cluster, Rates, predict, recommend_blocking, step_tasks, zipf_touched
from dnmf.engine.graph import group_columns
from dnmf.nmf import graph


def _graph_tasks(R: int, C: int, P: int) -> int:
    X = sp.random(R * 4, C * 30, density=0.05, random_state=0, format="csr")
    Xd = da.from_array(X, chunks=(4, 30), asarray=False)
    k = 2
    W = da.ones((R * 4, k), chunks=(4, k))
    Ht = da.ones((C * 30, k), chunks=(30, k))
    HHt = da.ones((k, k), chunks=(k, k))
    owners = tuple(f"w{i * P // R}" for i in range(R)) if P > 1 else None
    sizes = tuple(sum(1 for o in owners if o == w) for w in dict.fromkeys(owners)) if owners else None
    columns = group_columns(Xd, sizes) if sizes else None
    out = graph.step(Xd, W, Ht, HHt, graph.StepParams(solver="cd"), columns=columns, owners=owners)
    inputs = [Xd, W, Ht, HHt] + ([columns] if columns is not None else [])
    known = set().union(*(dict(a.__dask_graph__()) for a in inputs))
    every = set().union(*(dict(a.__dask_graph__()) for a in out))
    return len(every - known)


@pytest.mark.parametrize(
    ("R", "C", "P"), [(1, 1, 1), (6, 1, 2), (64, 1, 4), (8, 2, 1), (16, 4, 2), (16, 4, 4), (13, 3, 3), (32, 8, 4)]
)
def test_task_count_follows_the_graph(R, C, P):
    """The formula counts the step graph's tasks to within a few (it rounds the small trees)."""
    assert abs(step_tasks(R, C, P) - _graph_tasks(R, C, P)) <= 0.1 * _graph_tasks(R, C, P) + 6


def test_tasks_grow_with_r_plus_p_times_c_not_r_times_c():
    assert _graph_tasks(32, 8, 2) < 32 * 8
    assert step_tasks(4096, 64, 64) < 6 * 4096 + 4 * 64 * 64 < 4096 * 64 / 5


def test_zipf_touched_matches_sampling():
    n, draws = 5_000, 20_000
    p = 1.0 / np.arange(1, n + 1) ** 1.1
    p /= p.sum()
    rng = np.random.default_rng(0)
    sampled = np.mean([np.unique(rng.choice(n, size=draws, p=p)).size / n for _ in range(5)])
    assert zipf_touched(draws, n) == pytest.approx(sampled, rel=0.02)


def test_prediction_parts_and_limits():
    cl = Cluster(workers=4, cores=2, memory=2**40)
    p = predict(1e7, 1e6, 1e5, 16, 8, 4, cl, touched=0.5)
    assert p.seconds == pytest.approx(p.row_seconds + p.col_seconds + p.network_seconds + p.schedule_seconds)
    assert p.bytes_per_worker == pytest.approx(2 * 0.5 * 1e5 * 17 * 8 * 3 / 4)
    # One process moves nothing; more cores than blocks do not help.
    one = predict(1e7, 1e6, 1e5, 16, 8, 4, Cluster(workers=1, cores=8), touched=0.5)
    assert one.bytes_per_worker == 0 and one.network_seconds == 0
    assert predict(1e7, 1e6, 1e5, 16, 8, 4, Cluster(workers=1, cores=64)).row_seconds == one.row_seconds
    # Twice the non-zeros, twice the sparse arithmetic.
    r = Rates(update=0.0, gram=0.0)
    assert predict(2e7, 1e6, 1e5, 16, 8, 4, cl, rates=r).row_seconds == pytest.approx(
        2 * predict(1e7, 1e6, 1e5, 16, 8, 4, cl, rates=r).row_seconds
    )


def test_recommended_blocking_fits_in_memory_when_it_can():
    cl = Cluster(workers=8, cores=4, memory=4 * 2**30)
    R, C, p = recommend_blocking(2e8, 2e7, 1e6, 32, cl, touched=0.3)
    assert p.memory_per_worker <= cl.memory
    assert R >= 8 and C >= 1
    for R2, C2 in ((R * 2, C), (max(R // 2, 1), C)):
        other = predict(2e8, 2e7, 1e6, 32, R2, C2, cl, touched=0.3)
        assert other.seconds >= p.seconds or other.memory_per_worker > cl.memory
