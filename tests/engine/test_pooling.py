"""Buffer pools on real worker processes (dnmf.engine.pooling), and what a worker imports.

A fit's Runner sizes each worker's pool to its memory limit; a worker above its spill threshold,
or paused, empties its pool (a paused worker whose memory is not Dask's would never resume).
A worker that ran a fit, factor store included, has not imported scikit-learn, pandas or
pyarrow (about 110 MiB of a small worker's memory).
"""

import os
import time

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf.engine import pooling
from dnmf.engine.runner import Runner
from dnmf.storage import buffers
from tests.helpers import local_client

pytestmark = pytest.mark.cluster

MiB = 2**20


def _fill_pool(n_arrays: int = 4, nbytes: int = MiB) -> int:
    """Take and release ``n_arrays`` pooled arrays on this worker; the pool's free bytes after."""
    arrays = [buffers.empty(nbytes // 8, np.float64) for _ in range(n_arrays)]
    del arrays
    return buffers.pool_stats()["free_bytes"]


def _pool(dask_worker):
    plugin = dask_worker.plugins.get(pooling.PLUGIN_NAME)
    return buffers.pool_limit(), buffers.pool_stats()["free_bytes"], getattr(plugin, "released", None)


def _wait_for(client, condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        (state,) = client.run(_pool).values()
        if condition(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.fixture(scope="module")
def worker_client():
    """One worker process of one thread and 512 MiB, for this module alone (its settings change)."""
    with local_client(n_workers=1, threads_per_worker=1, processes=True, memory_limit="512MiB") as client:
        Runner(client)  # registers the plugin, as every fit does
        yield client


def test_default_limit_follows_the_memory_limit():
    assert pooling.default_limit(None) == buffers.DEFAULT_POOL_BYTES
    assert pooling.default_limit(32 * 2**30) == pooling.MAX_WORKER_POOL_BYTES == 1024 * MiB
    assert pooling.default_limit(12 * 2**30) == 768 * MiB
    assert pooling.default_limit(4 * 2**30) == 256 * MiB
    assert pooling.default_limit(2 * 2**30) == 128 * MiB
    assert pooling.default_limit(400 * MiB) == 25 * MiB
    assert pooling.default_limit(512 * MiB) == 32 * MiB


def test_default_limit_grows_with_the_threads_up_to_a_sixteenth_of_memory():
    # Each thread runs a row task of its own, which holds about five arrays of its block.
    assert pooling.default_limit(64 * 2**30, threads=2) == 2 * pooling.MAX_WORKER_POOL_BYTES
    assert pooling.default_limit(16 * 2**30, threads=8) == 2**30
    assert pooling.default_limit(256 * 2**30, threads=8) == 8 * pooling.MAX_WORKER_POOL_BYTES
    assert pooling.default_limit(400 * MiB, threads=8) == 25 * MiB
    assert pooling.default_limit(None, threads=8) == buffers.DEFAULT_POOL_BYTES


def _default(dask_worker):
    return buffers.process_default(), dask_worker.memory_manager.memory_limit


def test_a_worker_of_two_threads_keeps_a_pool_for_each():
    with local_client(n_workers=1, threads_per_worker=2, processes=True, memory_limit="4GiB") as client:
        Runner(client)
        ((default, limit),) = client.run(_default).values()
    assert default == pooling.default_limit(limit, threads=2) == 256 * MiB


def test_a_fit_on_the_local_threads_sizes_this_process_pool_while_it_runs():
    from distributed.system import MEMORY_LIMIT

    X = sp.random(4_000, 600, density=0.02, format="csr", random_state=0)
    before = buffers.process_default()
    seen = []
    dnmf.NMF(4, max_iter=3, tol=0.0, chunks=1_000, random_state=0).fit(
        X, callback=lambda i, e, loss: seen.append(buffers.pool_limit())
    )
    threads = Runner().local_threads()
    assert threads >= 1
    assert seen == [pooling.default_limit(MEMORY_LIMIT, threads)] * 3
    assert buffers.process_default() == before  # back after the fit


def test_a_worker_keeps_a_pool_sized_to_its_memory(worker_client):
    limit, _, released = _wait_for(worker_client, lambda s: True)
    assert limit == 32 * MiB
    assert released is not None  # the plugin is there
    free = worker_client.submit(_fill_pool, pure=False).result()
    assert free >= 4 * MiB
    # Below its spill threshold, the worker keeps it.
    time.sleep(5 * pooling.CHECK_INTERVAL_MS / 1000)
    assert _wait_for(worker_client, lambda s: True)[1] == free


def _set_spill_fraction(fraction, dask_worker=None):
    manager = dask_worker.memory_manager
    old, manager.memory_spill_fraction = manager.memory_spill_fraction, fraction
    return old


def test_a_worker_above_its_spill_threshold_empties_its_pool(worker_client):
    (old,) = worker_client.run(_set_spill_fraction, 0.01).values()  # any process is above 1% of 512 MiB
    try:
        worker_client.submit(_fill_pool, pure=False).result()
        limit, free, released = _wait_for(worker_client, lambda s: s[1] == 0)
        assert free == 0 and released >= 4 * MiB
    finally:
        worker_client.run(_set_spill_fraction, old)
    # Back below it, the pool fills and stays again.
    free = worker_client.submit(_fill_pool, pure=False).result()
    time.sleep(5 * pooling.CHECK_INTERVAL_MS / 1000)
    assert free > 0 and _wait_for(worker_client, lambda s: True)[1] == free


def _set_fractions(spill, pause, dask_worker=None):
    manager = dask_worker.memory_manager
    old = manager.memory_spill_fraction, manager.memory_pause_fraction
    manager.memory_spill_fraction, manager.memory_pause_fraction = spill, pause
    return old


def _status(dask_worker):
    return dask_worker.status.name


def _wait_for_status(client, name: str, timeout: float = 5.0) -> None:
    """Until the worker's status is ``name`` (distributed's monitor acts every 100 ms), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while list(client.run(_status).values()) != [name] and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_worker_paused_by_its_memory_monitor_empties_its_pool(worker_client):
    """Spilling off, pause at 1%: distributed's own monitor pauses the worker, and the pool goes."""
    worker_client.submit(_fill_pool, pure=False).result()
    (old,) = worker_client.run(_set_fractions, False, 0.01).values()
    try:
        _wait_for_status(worker_client, "paused")
        assert list(worker_client.run(_status).values()) == ["paused"]
        _, free, _ = _wait_for(worker_client, lambda s: s[1] == 0)
        assert free == 0
    finally:
        worker_client.run(_set_fractions, *old)
    _wait_for_status(worker_client, "running")
    assert worker_client.submit(_fill_pool, pure=False).result() > 0  # running again


def _imported(dask_worker):
    import sys

    return sorted(name for name in ("sklearn", "pandas", "pyarrow", "matplotlib") if name in sys.modules)


@pytest.mark.parametrize("model", ["nmf", "ratings"])
def test_workers_of_a_fit_import_no_estimator_libraries(tmp_path, model):
    """Task functions live in modules that import neither scikit-learn nor pandas nor pyarrow."""
    rng = np.random.default_rng(0)
    X = sp.random(600, 80, density=0.05, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 5)
    path = str(tmp_path / "x.zarr")
    dnmf.write_matrix(X, path, chunks=(150, 80))
    with local_client(n_workers=1, threads_per_worker=1, processes=True) as client:
        assert client.run(_imported) == {w: [] for w in client.run(os.getpid)}  # the control: a fresh worker
        store = str(tmp_path / "factors")
        if model == "nmf":
            dnmf.NMF(3, init="random", max_iter=2, tol=0, client=client, factor_store=store).fit(path)
        else:
            dnmf.RatingsNMF(3, max_iter=2, tol=0, client=client, factor_store=store).fit(path)
        assert list(client.run(_imported).values()) == [[]]


def _mu_step_faults(rounds: int = 20) -> int:
    """Page faults of this worker while it runs ``rounds`` MU half-steps of a 12,500 x 32 block."""
    import resource

    from dnmf.nmf.graph import mu_step

    rng = np.random.default_rng(0)
    A, AX = rng.random((12_500, 32)), rng.random((12_500, 32))
    G = A.T @ A
    mu_step(A, G, AX, 0.0, 0.0)  # the pool's first buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        new, _ = mu_step(A, G, AX, 0.0, 0.0)
        del new
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _set_pool_bytes(value, dask_worker=None):
    import dask

    dask.config.set({"dnmf.read-pool-bytes": value})


def test_a_row_task_s_arrays_reuse_memory_on_a_worker(worker_client):
    """On a worker as distributed starts it (glibc's mmap threshold pinned), each 3.2 MB array of a
    half-step is fresh, page-faulted memory unless the pool serves it: the control turns it off."""
    pooled = worker_client.submit(_mu_step_faults, pure=False).result()
    worker_client.run(_set_pool_bytes, 0)
    try:
        fresh = worker_client.submit(_mu_step_faults, pure=False).result()
    finally:
        worker_client.run(_set_pool_bytes, None)
    assert fresh > 20 * 2 * 700  # two arrays of ~780 pages each (and a mask), every round
    assert pooled < fresh / 20


def test_fits_that_overlap_keep_the_sized_pool_until_the_last_one_ends():
    # n_init and select_rank(n_jobs=) run fits at once in one process, ending in any order.
    before = buffers.process_default()
    first, second = Runner().fit_memory(), Runner().fit_memory()
    first.__enter__()
    sized = buffers.process_default()
    assert sized is not None and sized != before
    second.__enter__()
    first.__exit__(None, None, None)
    assert buffers.process_default() == sized  # the second fit still runs
    second.__exit__(None, None, None)
    assert buffers.process_default() == before
