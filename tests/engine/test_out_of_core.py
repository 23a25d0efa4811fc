"""Fitting a store larger than the cluster's memory: blocks are streamed from
Zarr every iteration, never held all at once, never spilled."""

import os
import threading
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf

MEMORY_LIMIT = 400 * 2**20
N_COLS = 20_000
ROWS_PER_BLOCK = 4_000
NNZ_PER_ROW = 256  # 1M non-zeros (~12 MiB of CSR) per block


def _block(seed, block_info=None):
    """A CSR row block with NNZ_PER_ROW distinct, sorted columns per row."""
    (r0, r1), _ = block_info[None]["array-location"]
    rng = np.random.default_rng([seed, r0])
    rows = r1 - r0
    stride = N_COLS // NNZ_PER_ROW
    cols = rng.integers(0, stride, size=(rows, NNZ_PER_ROW)) + np.arange(NNZ_PER_ROW) * stride
    data = rng.random(rows * NNZ_PER_ROW) + 0.1
    indptr = np.arange(rows + 1, dtype=np.int64) * NNZ_PER_ROW
    return sp.csr_matrix((data, cols.ravel().astype(np.int32), indptr), shape=(rows, N_COLS))


def generated(n_rows, seed=0):
    chunks = ((ROWS_PER_BLOCK,) * (n_rows // ROWS_PER_BLOCK), (N_COLS,))
    meta = sp.csr_matrix((0, 0))
    return da.map_blocks(_block, seed, chunks=chunks, dtype=np.float64, meta=meta)


def _watch(client, stop, samples):
    def probe(dask_worker):
        import psutil

        return psutil.Process().memory_info().rss, str(dask_worker.status)

    while not stop.is_set():
        try:
            samples.extend(client.run(probe).values())
        except Exception:  # the cluster is closing
            return
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.cluster
def test_fit_store_three_times_the_memory_limit(tmp_path):
    from distributed import Client, LocalCluster

    n_rows = 104 * ROWS_PER_BLOCK  # 106M non-zeros
    path = str(tmp_path / "big.zarr")
    store = dnmf.write_matrix(generated(n_rows), path, scheduler="threads")
    csr_bytes = store.nnz * (8 + 4) + (n_rows + 1) * 8
    assert csr_bytes >= 3 * MEMORY_LIMIT, csr_bytes / MEMORY_LIMIT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit=MEMORY_LIMIT, processes=True, dashboard_address=None
        )
    with cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        samples, stop = [], threading.Event()
        watcher = threading.Thread(target=_watch, args=(client, stop, samples), daemon=True)
        watcher.start()
        losses = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = dnmf.NMF(8, solver="mu", init="random", random_state=0, max_iter=3, tol=0, client=client)
                model.fit(path, callback=lambda it, el, loss: losses.append(loss))
        finally:
            stop.set()
            watcher.join()
        spilled = client.run(lambda dask_worker: [(k[0] if isinstance(k, tuple) else k) for k in dask_worker.data.slow])
        assert client.run(os.getpid) == pids, "a worker was restarted"

    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert samples, "no memory samples were taken"
    peak = max(rss for rss, _ in samples)
    assert peak < MEMORY_LIMIT, f"peak worker RSS {peak / 2**20:.0f} MiB"
    assert not any(status == "Status.paused" for _, status in samples)
    spilled = [name for names in spilled.values() for name in names]
    # X's blocks are read inside the tasks that use them and never spilled; under
    # memory pressure Dask may spill the (small) persisted factors instead.
    assert not any(name.startswith("dnmf-store") for name in spilled), spilled
    print(
        f"X: {csr_bytes / 2**20:.0f} MiB CSR = {csr_bytes / MEMORY_LIMIT:.1f}x the workers' "
        f"memory limit; peak worker RSS {peak / 2**20:.0f} MiB; factor blocks spilled: {len(spilled)}"
    )
