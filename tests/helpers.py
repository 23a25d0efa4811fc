"""Helpers shared by the test folders (fixtures live in conftest.py).

Import them as ``from tests.helpers import make_data``: ``tests`` is a package,
and pytest puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

#: The repository root (deploy/, examples/, README.md, the dnmf package).
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_data(m=40, n=30, k=4, density=None, seed=0, dtype=np.float64):
    """A non-negative X (dense, or CSR if density is given) and a starting (W, H)."""
    rng = np.random.RandomState(seed)
    if density is None:
        X = np.abs(rng.randn(m, n))
    else:
        X = sp.random(m, n, density=density, random_state=rng, format="csr") * 5
    W0 = np.abs(rng.randn(m, k))
    H0 = np.abs(rng.randn(k, n))
    return X.astype(dtype), W0.astype(dtype), H0.astype(dtype)


def planted(m: int = 240, n: int = 90, k: int = 4, seed: int = 0) -> sp.csr_matrix:
    """An exactly rank-``k`` non-negative sparse matrix (NMF can fit it to ~0 error)."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (m, k)) * (rng.random((m, k)) < 0.5)
    H = rng.gamma(1.0, 1.0, (k, n)) * (rng.random((k, n)) < 0.5)
    return sp.csr_matrix(W @ H)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_client(n_workers: int, threads_per_worker: int, processes: bool, **cluster_kwargs) -> Iterator:
    """A ``distributed.Client`` on its own LocalCluster (no dashboard), closed on exit.

    ``cluster_kwargs`` go to the LocalCluster (e.g. ``memory_limit``).
    """
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=None,
            **cluster_kwargs,
        )
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def worker_arrays(client, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The NumPy arrays of ``shape`` that the one worker of an in-process cluster holds now."""
    (worker,) = client.cluster.workers.values()
    return [v for v in list(worker.data.values()) if isinstance(v, np.ndarray) and v.shape == shape]


def alive_after(refs: list, seconds: float = 5.0) -> list:
    """The weak references still alive once the worker had up to ``seconds`` to act on the releases."""
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        alive = [r for r in refs if r() is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def committed_iteration(checkpoint_dir: Path) -> int:
    """The iteration of the checkpoint committed in ``checkpoint_dir`` (0 while there is none)."""
    from dnmf.storage import checkpoints

    try:
        return json.loads((Path(checkpoint_dir) / checkpoints.POINTER).read_text())["iteration"]
    except (OSError, ValueError, KeyError):
        return 0


def kill_after_checkpoint(proc, checkpoint_dir: Path, iteration: int = 6, timeout: float = 120) -> int:
    """SIGKILL the fit running in ``proc`` once it has committed a checkpoint of ``iteration``.

    Returns the iteration committed when it died (checked to be at least ``iteration``).
    """
    import signal

    deadline = time.time() + timeout
    while committed_iteration(checkpoint_dir) < iteration and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = committed_iteration(checkpoint_dir)
    assert at >= iteration, at
    return at


@contextmanager
def cluster_losing_a_worker(at: int) -> Iterator:
    """A LocalCluster of 2 worker processes × 1 thread whose first worker is SIGKILLed after iteration ``at``.

    Yields ``(client, callback)``: give ``callback`` to a fit; the kill comes
    20 ms into the next iteration (while it reads and writes its blocks), and
    on leaving, the context checks that the callback fired and the worker is gone.
    """
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        victim = list(client.run(os.getpid).values())[0]
        done = threading.Event()

        def callback(it, elapsed, loss):
            if it == at and not done.is_set():
                done.set()
                threading.Timer(0.02, os.kill, (victim, signal.SIGKILL)).start()
            time.sleep(0.05)

        yield client, callback
        assert done.is_set(), f"the fit never reached iteration {at}"
        assert victim not in client.run(os.getpid).values(), "the worker was not killed"
