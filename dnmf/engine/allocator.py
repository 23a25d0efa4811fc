"""glibc's allocator in Dask worker processes: freed memory reused, not faulted in again.

distributed starts every worker process with ``MALLOC_TRIM_THRESHOLD_=65536``
(its config ``distributed.nanny.pre-spawn-environ``), so that freed memory
goes back to the operating system at once and a worker's "unmanaged memory"
stays low. Setting that variable also turns off glibc's dynamic mmap
threshold, which then stays at 128 KiB: every array larger than that is fresh
memory from the kernel, each of its pages faulted in and zeroed when first
written, and unmapped again when the array is freed. A row task allocates
tens of megabytes of such arrays per iteration (``X·Hᵀ``, the new rows of W,
the partial products), so a worker process spends a large part of its CPU in
the kernel: on 2 cores, 2.5 MB NumPy temporaries cost 8.8 ms per task against
3.0 ms without the pinned threshold.

:class:`AllocatorPlugin` gives each worker process of at least
:data:`MIN_TUNED_MEMORY` what glibc does by itself in an ordinary process:
arrays up to 32 MiB come from the heap and are reused, and up to 64 MiB of
free memory is kept at the top of each heap (glibc's own dynamic maxima). It is registered for a
fit's cluster by :func:`tune_workers` (Dask config ``dnmf.worker-allocator``)
and undone when unregistered. Results never depend on it.

The cost is memory held: a worker keeps up to the trim threshold of freed
memory per heap (one heap per thread that allocates) where distributed's
setting returned it at once, seen by its memory monitor as unmanaged memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..storage.buffers import GLIBC_MMAP_THRESHOLD_MAX, pinned, start_environ
from .config import switch

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's defaults, which a worker started with ``MALLOC_TRIM_THRESHOLD_`` keeps for the mmap threshold.
GLIBC_MMAP_THRESHOLD = 128 * 2**10
#: The largest mmap threshold this module sets: glibc's own dynamic maximum on 64-bit systems.
MMAP_THRESHOLD_MAX = GLIBC_MMAP_THRESHOLD_MAX
#: Workers with less memory than this are left alone: a worker sized tightly for an
#: out-of-core fit can not spare the freed memory kept (a 400 MiB worker kept enough of it,
#: with thresholds scaled down to its limit, to pause at 83% once in a CI run).
MIN_TUNED_MEMORY = 4 * 2**30
#: Name of the worker plugin on the cluster.
PLUGIN_NAME = "dnmf-allocator"

logger = logging.getLogger("dnmf")


def thresholds(memory_limit: int | None) -> tuple[int, int] | None:
    """``(mmap_threshold, trim_threshold)`` in bytes for a worker with ``memory_limit`` (None or 0: none).

    32 MiB and 64 MiB, glibc's own dynamic maxima; None (leave the worker as
    it is) below :data:`MIN_TUNED_MEMORY`.
    """
    if memory_limit and memory_limit < MIN_TUNED_MEMORY:
        return None
    return MMAP_THRESHOLD_MAX, 2 * MMAP_THRESHOLD_MAX


def _libc() -> Any | None:
    """glibc, or None (another C library, or another system)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl and others lack it)
        return libc
    except (OSError, AttributeError):
        return None


def set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set this process's glibc mmap and trim thresholds; False where glibc is not the allocator."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok)


def trim() -> bool:
    """Ask glibc to return this process's free heap memory to the system (``malloc_trim(0)``).

    True if it released any; False where it had none to release, or glibc is
    not the allocator.
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)


class AllocatorPlugin(WorkerPlugin):
    """Sets each worker's glibc thresholds (:func:`thresholds`: none below :data:`MIN_TUNED_MEMORY`).

    Its teardown (the plugin unregistered, or replaced) puts a :func:`pinned`
    worker's thresholds back as the worker started.

    Parameters
    ----------
    force : bool, default False
        Also where the worker's allocator is not :func:`pinned` (a worker in
        the client's own process, or one started with settings of its own).
    """

    idempotent = False

    def __init__(self, force: bool = False) -> None:
        self.force = force
        self.applied: tuple[int, int] | None = None

    def setup(self, worker: Any) -> None:
        if not (self.force or pinned()):
            return
        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        wanted = thresholds(limit)
        if wanted is not None and set_thresholds(*wanted):
            self.applied = wanted

    def teardown(self, worker: Any) -> None:
        if self.applied is None:
            return
        if pinned():
            # Back to what the process started with: glibc's fixed mmap threshold and
            # the trim threshold of its environment (distributed's 65536).
            set_thresholds(GLIBC_MMAP_THRESHOLD, int(start_environ()["MALLOC_TRIM_THRESHOLD_"]))
        # Else (forced) the values stay: glibc has no call that turns its dynamic
        # thresholds back on, and the ones set here are within their range.
        self.applied = None


def setting() -> bool | str:
    """The Dask config key ``dnmf.worker-allocator``: true, false or "auto" (the default)."""
    return switch("dnmf.worker-allocator")


def tune_workers(client: Any) -> None:
    """Register (or, with ``dnmf.worker-allocator`` false, remove) :class:`AllocatorPlugin` on ``client``'s cluster.

    "auto" tunes the worker processes whose allocator distributed pinned
    (:func:`pinned`); true tunes every worker, false none (and undoes an
    earlier fit's tuning). Workers that join later, such as a restarted
    one, get the plugin too. One round trip.
    """
    value = setting()
    try:
        if value is False:
            if PLUGIN_NAME in _registered(client):
                client.unregister_worker_plugin(PLUGIN_NAME)
            return
        client.register_plugin(AllocatorPlugin(force=value is True), name=PLUGIN_NAME)
    except Exception as exc:  # a worker leaving mid-broadcast, say: a speed-up is not worth a failed fit
        logger.warning("Could not tune the workers' memory allocator (%s); the fit goes on without it.", exc)


def _registered(client: Any) -> set[str]:
    def names(dask_scheduler=None):
        return set(dask_scheduler.worker_plugins)

    return set(client.run_on_scheduler(names))
