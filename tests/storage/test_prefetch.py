"""Reading the next row block ahead (:mod:`dnmf.storage.prefetch`): what is used, what is bounded, same bits."""

from __future__ import annotations

import threading
import time
import warnings

import dask
import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf.storage import prefetch


@pytest.fixture(autouse=True)
def _fresh():
    prefetch.clear()
    yield
    prefetch.clear()


class Disk:
    """Blocks by (row, column); counts reads and which threads ran them."""

    def __init__(self, rows: int, cols: int, fail_ahead: bool = False):
        self.blocks = {(i, j): np.full(3, 10 * i + j, dtype=np.float64) for i in range(rows) for j in range(cols)}
        self.reads: list[tuple[int, int]] = []
        self.fail_ahead = fail_ahead
        self.lock = threading.Lock()

    def read(self, i: int, j: int) -> np.ndarray:
        with self.lock:
            self.reads.append((i, j))
        if self.fail_ahead and threading.current_thread().name.startswith("dnmf-read-ahead"):
            raise OSError("transient")
        return self.blocks[i, j].copy()

    def row(self, name: str, i: int, cols: int) -> list[prefetch.Read]:
        return [prefetch.Read((name, i, j), (name, i), self.read, (i, j)) for j in range(cols)]


def _pass(disk: Disk, order, name="x", cols=2):
    for i in order:
        got = prefetch.take(disk.row(name, i, cols))
        for j, block in enumerate(got):
            np.testing.assert_array_equal(block, disk.blocks[i, j])


def test_learns_the_order_of_a_pass_and_reads_each_block_once():
    disk = Disk(4, 2)
    order = [2, 0, 3, 1]  # not by index: Dask's order of a step's row tasks is its own
    _pass(disk, order)
    assert prefetch.stats()["hits"] == 0  # nothing is known before the first pass
    for _ in range(3):
        _pass(disk, order)
    s = prefetch.stats()
    # 4 passes x 8 blocks, each read exactly once (the last pass also reads the next one's first row)
    assert s["hits"] + s["misses"] == 32
    assert s["misses"] == 8 + 2  # the first pass, and the first row of the second (not yet learnt)
    deadline = time.monotonic() + 10
    while len(disk.reads) < 34 and time.monotonic() < deadline:  # the last read ahead may still run
        time.sleep(0.01)
    assert len(disk.reads) == 32 + 2
    assert s["pending"] == 2  # the next iteration's first row, read ahead; bounded


def test_a_failed_read_ahead_is_read_again_by_the_task():
    disk = Disk(3, 1, fail_ahead=True)
    for _ in range(3):
        _pass(disk, [0, 1, 2], cols=1)  # the values are checked in _pass
    assert prefetch.stats()["hits"] > 0


def test_a_store_rewritten_in_place_is_not_served_from_an_earlier_read():
    """The key names the store's write: another write is another array."""
    disk = Disk(2, 1)
    for _ in range(2):
        _pass(disk, [0, 1], name="x-write-1", cols=1)
    disk.blocks = {key: value + 100 for key, value in disk.blocks.items()}
    _pass(disk, [0, 1], name="x-write-2", cols=1)


def test_an_order_that_changes_a_little_every_pass():
    """Tasks run as their inputs arrive: neighbours swap, and a block comes from elsewhere."""
    disk = Disk(40, 1)
    rng = np.random.default_rng(0)
    base = list(range(39, -1, -1))
    for _ in range(10):
        order = list(base)
        for a in rng.choice(39, size=4, replace=False):  # four neighbours swap
            order[a], order[a + 1] = order[a + 1], order[a]
        late = order.pop(int(rng.integers(40)))  # and one block comes first
        _pass(disk, [late, *order], cols=1)
    s = prefetch.stats()
    assert s["hits"] >= 0.6 * 9 * 40  # a swap costs about two blocks read by their task
    assert s["pending"] <= 1  # bounded: one row block per thread
    # every read is a task's, or one read ahead that was used, dropped (if it had started) or is pending
    assert s["hits"] + s["misses"] == 10 * 40
    assert 10 * 40 <= len(disk.reads) <= 10 * 40 + s["dropped"] + s["pending"]
    assert s["dropped"] <= 0.2 * 10 * 40


def _store(tmp_path):
    X = sp.random(3000, 400, density=0.02, format="csr", random_state=0, dtype=np.float64)
    path = str(tmp_path / "x.zarr")
    dnmf.write_matrix(X, path, chunks=(500, 200))
    return path


def _fit(path, client=None, **kw):
    with warnings.catch_warnings(), dask.config.set({"dnmf.read-ahead": dask.config.get("dnmf.read-ahead", True)}):
        warnings.simplefilter("ignore")
        m = dnmf.NMF(4, init="random", max_iter=6, random_state=0, client=client, **kw)
        W = m.fit_transform(path)  # persisted on the cluster, or lazy
    return np.asarray(W if client is None else client.compute(W).result()), m.components_


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_a_fit_reading_ahead_on_threads_equals_one_that_does_not(tmp_path, solver):
    path = _store(tmp_path)
    W, H = _fit(path, solver=solver)
    assert prefetch.stats()["hits"] >= 6 * 2  # a pass worth of blocks, at least, was read ahead
    with dask.config.set({"dnmf.read-ahead": False}):
        before = prefetch.stats()
        W0, H0 = _fit(path, solver=solver)
        assert prefetch.stats() == before
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(H, H0)


def test_a_fit_reading_ahead_on_worker_processes_equals_one_that_does_not(tmp_path, dist_client):
    path = _store(tmp_path)
    dist_client.run(prefetch.clear)
    W, H = _fit(path, client=dist_client)
    hits = sum(s["hits"] for s in dist_client.run(prefetch.stats).values())
    assert hits >= 6 * 2  # a pass worth of blocks, at least, was read ahead
    with dask.config.set({"dnmf.read-ahead": False}):
        W0, H0 = _fit(path, client=dist_client)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(H, H0)


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_a_ratings_fit_reading_ahead_equals_one_that_does_not(tmp_path, feedback):
    """RatingsNMF's row and column bands of a store are read ahead too."""
    path = _store(tmp_path)

    def fit():
        with warnings.catch_warnings(), dask.config.set({"dnmf.read-ahead": dask.config.get("dnmf.read-ahead", True)}):
            warnings.simplefilter("ignore")
            m = dnmf.RatingsNMF(4, feedback=feedback, max_iter=5, tol=0, random_state=0).fit(path)
        return np.asarray(m.user_factors_), m.components_

    U, V = fit()
    assert prefetch.stats()["hits"] >= 6 * 2  # rows and columns: a pass worth of blocks, at least
    with dask.config.set({"dnmf.read-ahead": False}):
        U0, V0 = fit()
    np.testing.assert_array_equal(U, U0)
    np.testing.assert_array_equal(V, V0)


def test_auto_reads_ahead_only_beside_a_spare_core(dist_client):
    from dnmf.engine.runner import Runner
    from dnmf.storage.placement import spare_core_everywhere, usable_cores

    cores = usable_cores()
    assert not spare_core_everywhere(None)  # the threaded scheduler: a thread per core
    assert spare_core_everywhere(None, threads=cores - 1) == (cores > 1)
    threads = sum(dist_client.nthreads().values())
    assert spare_core_everywhere(dist_client) == (threads < cores)  # one host here
    assert Runner(dist_client).read_ahead() == (threads < cores)
    for setting in (True, False):
        with dask.config.set({"dnmf.read-ahead": setting}):
            assert Runner(dist_client).read_ahead() is setting
    for setting in ("sometimes", "off", 1):
        with dask.config.set({"dnmf.read-ahead": setting}), pytest.raises(ValueError, match="dnmf.read-ahead"):
            Runner(dist_client).read_ahead()
