"""The buffer pool on Dask workers: sized to each worker, and emptied before it costs a spill or a pause.

A worker process keeps up to :func:`dnmf.storage.buffers.pool_limit` bytes
of freed block memory for the next row tasks (decoded blocks of X, the
step's temporaries and new factor blocks, sums of partial products, factor
blocks read from a store). Distributed counts that memory as unmanaged: on
a worker sized tightly for an out-of-core fit it can push the process past
the spill threshold (Dask then writes managed data to disk) or the pause
threshold (the worker stops running tasks, and memory that is not Dask's
never goes away by itself: the fit would hang).

:class:`PoolPlugin`, registered on a fit's cluster by :func:`manage_pools`,
makes each worker's default pool a sixteenth of its memory limit (at most
:data:`MAX_WORKER_POOL_BYTES`, 1 GiB, per thread; 25 MiB on a 400 MiB worker)
and checks the worker's memory every :data:`CHECK_INTERVAL_MS`: above the
spill threshold, or when the worker is paused, the pool is emptied (and on
a paused worker glibc is asked to return its free memory too). The pool then
fills again from the next tasks. Results never depend on it.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

from ..storage import buffers
from .allocator import trim

#: Name of the worker plugin on the cluster.
PLUGIN_NAME = "dnmf-pool"
#: How often a worker's memory is checked (distributed's own memory monitor: 100 ms).
CHECK_INTERVAL_MS = 100
#: A worker's default pool is its memory limit over this (at most MAX_WORKER_POOL_BYTES per thread).
LIMIT_SHARE = 16
#: The largest default pool of a worker, per thread: a row task holds about five arrays of its
#: block of factor rows at once (X·Hᵀ, a product of another column block, the update's
#: temporaries, the new block), up to about 40 MB each at dnmf's blocking; with a 64 MiB pool
#: the 2,000,000 × 500,000 case's workers kept one of them and faulted the others in (5.1–5.3
#: CPU seconds per iteration on 2 workers, 3.9–4.6 with 256 MiB). A worker also sums partials
#: and runs column tasks between its row tasks: with 256 MiB each of those workers still faulted
#: in 0.7-0.8 GiB of fresh huge pages per iteration (`mu`), with 512 MiB 0.4, with 768 MiB (a
#: sixteenth of their memory) 0.2: 2.7–2.9 s per iteration against 2.8–3.2 with 256 MiB.
#: And each thread runs a row task of its own: on the local threads (2) the same case took
#: 0.8–2.0 kernel CPU seconds per iteration with 64 MiB, 0.4–1.4 with 256 MiB, 0.1–0.5 with 512.
MAX_WORKER_POOL_BYTES = 16 * buffers.DEFAULT_POOL_BYTES

logger = logging.getLogger("dnmf")


def default_limit(memory_limit: int | None, threads: int = 1) -> int:
    """The pool a process with ``memory_limit`` and ``threads`` running tasks keeps by default.

    :data:`MAX_WORKER_POOL_BYTES` per thread, at most a :data:`LIMIT_SHARE`-th of
    the memory limit (None or 0: no limit, the global default).
    """
    if not memory_limit:
        return buffers.DEFAULT_POOL_BYTES
    return min(MAX_WORKER_POOL_BYTES * max(1, int(threads)), int(memory_limit) // LIMIT_SHARE)


class PoolPlugin(WorkerPlugin):
    """Sizes a worker's buffer pool to its memory limit and empties it under memory pressure (module doc)."""

    idempotent = False

    def __init__(self) -> None:
        self.released = 0
        self._callback: Any = None

    def setup(self, worker: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        manager = getattr(worker, "memory_manager", None)
        limit = getattr(manager, "memory_limit", None)
        threads = getattr(getattr(worker, "state", None), "nthreads", 1)
        buffers.set_default_limit(default_limit(limit, threads))
        if not limit:
            return
        self._callback = PeriodicCallback(lambda: self.check(worker), CHECK_INTERVAL_MS)
        worker.periodic_callbacks[PLUGIN_NAME] = self._callback
        self._callback.start()

    def check(self, worker: Any) -> None:
        """Empty the pool if the worker is paused or above its spill threshold; trim glibc if paused."""
        manager = worker.memory_manager
        paused = worker.status == Status.paused
        fractions = [f for f in (manager.memory_spill_fraction, manager.memory_pause_fraction) if f]
        high = paused or bool(fractions and worker.monitor.get_process_memory() > min(fractions) * manager.memory_limit)
        if not high:
            return
        self.released += buffers.clear_pool()
        if paused:
            trim()

    def teardown(self, worker: Any) -> None:
        if self._callback is not None:
            self._callback.stop()
            if worker.periodic_callbacks.get(PLUGIN_NAME) is self._callback:
                del worker.periodic_callbacks[PLUGIN_NAME]
            self._callback = None
        buffers.set_default_limit(None)


def manage_pools(client: Any) -> None:
    """Register :class:`PoolPlugin` on ``client``'s cluster (workers that join later get it too). One round trip."""
    try:
        client.register_plugin(PoolPlugin(), name=PLUGIN_NAME)
    except Exception as exc:  # a worker leaving mid-broadcast, say: not worth a failed fit
        logger.warning("Could not size the workers' buffer pools (%s); the fit goes on without it.", exc)
