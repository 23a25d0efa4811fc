"""Where a fit's graphs run: a distributed Client or a local scheduler, and lineage cuts.

:class:`Runner` persists state and computes small results on a Client, or
on the local scheduler with BLAS pinned to one thread per Dask thread.
:func:`recoverable_errors` lists the errors that mean lost workers or lost
data (worth a retry), and the lineage policy (how often, up to what size the
persisted state is passed through the client) lives here too.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..storage.placement import row_owner, row_ranges, spare_core_everywhere, worker_addresses
from .config import switch

#: Without checkpoints, cut the lineage of the persisted state this often...
REBASE_EVERY = 20
#: ...when it is small enough to pass through the client (see Runner.rebase).
REBASE_MAX_BYTES = 512 * 2**20
#: Bytes of blocks the client holds at once while a lineage cut moves them (Runner.rebase).
REBASE_BATCH_BYTES = 64 * 2**20
#: dnmf.pipeline "auto" submits each iteration ahead where the client's round trip to the
#: scheduler takes at least this long (seconds): a driver away from its cluster.
PIPELINE_MIN_ROUND_TRIP = 5e-3


class _LocalFits:
    """The fits running on this process's own threads (:meth:`Runner.fit_memory`), and the pool default before them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.before: int | None = None


_LOCAL_FITS = _LocalFits()


def lineage_policy() -> tuple[int, int]:
    """``(every, max_bytes)``: how often, and up to what state size, the loop cuts lineage.

    The Dask config keys ``dnmf.lineage.every`` and ``dnmf.lineage.max-bytes``
    override :data:`REBASE_EVERY` and :data:`REBASE_MAX_BYTES` (e.g.
    ``dask.config.set({"dnmf.lineage.max-bytes": 2**30})``). Above the size,
    only checkpoints cut the lineage (the state is reloaded from them).
    """
    every = int(dask.config.get("dnmf.lineage.every", REBASE_EVERY))
    max_bytes = int(dask.config.get("dnmf.lineage.max-bytes", REBASE_MAX_BYTES))
    return max(every, 1), max_bytes


def nbytes(*arrays: da.Array) -> int:
    """Bytes of the given arrays."""
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays)


class Runner:
    """Persist and compute on the given Client, or on the current scheduler.

    The step graphs are built minimal, so Dask's graph optimisation (culling,
    fusion) is skipped: on small problems it costs more than the step.

    On a Client, the workers' memory allocator is tuned first
    (:func:`dnmf.engine.allocator.tune_workers`, Dask config
    ``dnmf.worker-allocator``), distributed's monitors run less often
    (:func:`dnmf.engine.monitors.quiet_monitors`, ``dnmf.quiet-monitors``), the workers'
    buffer pools are sized to them (:func:`dnmf.engine.pooling.manage_pools`), and the tasks
    it places stay where they are placed (:func:`dnmf.engine.stealing.keep_placed`, with
    ``dnmf.placement``).
    """

    def __init__(self, client=None, single_block: bool = False):
        self.client = client
        # One block leaves nothing to run in parallel within a step; unless a
        # scheduler was configured, the synchronous one then saves the thread
        # pool's hand-offs (same results).
        self.scheduler = None
        configured = dask.config.get("scheduler", None)
        if client is None and single_block and configured is None:
            self.scheduler = "sync"
        # Several blocks on the local thread pool: each Dask thread runs its own
        # kernels, and BLAS threads on top of them oversubscribe the cores
        # (measured 0.39 s vs 4.6 s per iteration on 2 busy cores). Distributed
        # workers already pin BLAS to one thread.
        self._blas = None
        self._read_ahead: bool | None = None
        self._pipelines: bool | None = None
        if client is None and not single_block and configured in (None, "threads", "threading"):
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        if client is not None:
            from .allocator import tune_workers
            from .monitors import quiet_monitors
            from .pooling import manage_pools

            tune_workers(client)
            quiet_monitors(client)
            manage_pools(client)
            if dask.config.get("dnmf.placement", True):
                from .stealing import keep_placed

                keep_placed(client)

    @contextlib.contextmanager
    def fit_memory(self) -> Iterator[None]:
        """For a fit on this process's own threads: its buffer pool sized as a worker's, while the fit runs.

        A worker's pool is sized by :func:`dnmf.engine.pooling.default_limit`
        (a sixteenth of its memory, at most 1 GiB per thread); this process
        otherwise keeps :data:`dnmf.storage.buffers.DEFAULT_POOL_BYTES`, one row
        task's arrays of a large block: with two threads the 2,000,000 ×
        500,000 case faulted the others in, 0.8-2.0 kernel CPU seconds per
        iteration (0.1-0.5 with 512 MiB). The pool's limit goes back when the
        fit ends, releasing what it kept beyond it (when the last of the fits
        running at once in this process ends: ``n_init``,
        ``select_rank(n_jobs=)``). On a Client (the
        workers size their own) it does nothing.
        """
        if self.client is not None:
            yield
            return
        from distributed.system import MEMORY_LIMIT

        from ..storage import buffers
        from .pooling import default_limit

        with _LOCAL_FITS.lock:
            if not _LOCAL_FITS.running:
                _LOCAL_FITS.before = buffers.process_default()
                buffers.set_default_limit(default_limit(MEMORY_LIMIT, self.local_threads()))
            _LOCAL_FITS.running += 1
        try:
            yield
        finally:
            with _LOCAL_FITS.lock:
                _LOCAL_FITS.running -= 1
                if not _LOCAL_FITS.running:
                    buffers.set_default_limit(_LOCAL_FITS.before)

    def local_threads(self) -> int:
        """How many tasks the local scheduler runs at once (1 on the synchronous one)."""
        if self.scheduler == "sync" or dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded"):
            return 1
        from dask.system import CPU_COUNT

        return int(dask.config.get("num_workers", None) or CPU_COUNT)

    def read_ahead(self) -> bool:
        """Whether store-backed row tasks read their next row block ahead (:mod:`dnmf.storage.prefetch`).

        The Dask config key ``dnmf.read-ahead``: true, false, or "auto" (the
        default): only where every host has a core to spare beside its
        worker threads. A reader thread overlaps the reads with computation
        where there is such a core (0.8x the time per iteration on 1 worker x
        1 thread of 2 cores); where the threads already use every core it
        only adds hand-offs, and decoding a block costs the same CPU on any
        thread. Set it true for stores read over a network (latency, not
        CPU). Asked once per fit (one round trip on a cluster).
        """
        setting = switch("dnmf.read-ahead")
        if isinstance(setting, bool):
            return setting
        if self._read_ahead is None:
            threads = None if self.client is not None else dask.config.get("num_workers", None)
            self._read_ahead = spare_core_everywhere(self.client, threads)
        return self._read_ahead

    def pipelines(self) -> bool:
        """Whether the loop submits iteration t + 1 before t's scalars are back (:func:`dnmf.engine.loop.run`).

        The Dask config key ``dnmf.pipeline``: true, false, or "auto" (the
        default): on a Client whose round trip to the scheduler takes at
        least :data:`PIPELINE_MIN_ROUND_TRIP` (the fastest of three, asked
        once per fit). The workers then go from one iteration's last task to
        the next one's first without waiting for the scalars' trip to the
        driver and the next graph's trip back: 0.65-0.86x the time per
        iteration with the driver 10 ms from the scheduler. Beside the
        scheduler there is next to nothing to hide, and the state an
        iteration starts from would be held until its scalars are back,
        while the next iteration writes its own: on a small fit, two states
        at once. The factors are the same bits either way.
        """
        setting = switch("dnmf.pipeline")
        if self.client is None:
            return False
        if isinstance(setting, bool):
            return setting
        if self._pipelines is None:
            self._pipelines = round_trip_seconds(self.client) >= PIPELINE_MIN_ROUND_TRIP
        return self._pipelines

    def _limits(self):
        if self._blas is None:
            return contextlib.nullcontext()
        return self._blas.limit(limits=1, user_api="blas")

    def persist(self, *arrays):
        """Persist arrays on the cluster (or the local scheduler) and return them."""
        if self.client is not None:
            return tuple(self.client.persist(list(arrays), optimize_graph=False))
        with self._limits():
            return dask.persist(*arrays, optimize_graph=False, scheduler=self.scheduler)

    def persist_rows(self, *arrays):
        """Persist arrays chunked by rows, each worker holding a contiguous range of row blocks.

        On a Client the blocks go through one placed copy task each (see
        :mod:`dnmf.storage.placement`); locally this is :meth:`persist`. The
        placement is a preference: a lost worker's blocks move elsewhere.
        """
        if self.client is None or not dask.config.get("dnmf.placement", True):
            return self.persist(*arrays)
        workers = worker_addresses(self.client)
        placed = []
        for a in arrays:
            n_blocks = a.numblocks[0]

            def where(key, n_blocks=n_blocks):
                return [row_owner(key[1], n_blocks, workers)]

            with dask.annotate(workers=where, allow_other_workers=True):
                placed.append(
                    a.map_blocks(_same, dtype=a.dtype, meta=a._meta, name=f"dnmf-placed-{tokenize(a.name, workers)}")
                )
        return self.persist(*placed)

    def row_owners(self, n_blocks: int) -> tuple[str, ...] | None:
        """The worker of each of ``n_blocks`` row blocks (contiguous ranges), or None off a Client.

        For the ``owners`` of a graph's per-row-block tasks (e.g. a pass over
        X's blocks): placed tasks run where their row range lives, and the
        distributed scheduler does not queue them. It queues tasks without
        dependencies and hands a worker its next one only when one finishes:
        a round trip per task, 3 ms against 0.7 ms on a 2-core machine.
        """
        if self.client is None or not dask.config.get("dnmf.placement", True):
            return None
        return row_ranges(self.client, n_blocks)[0]

    def compute(self, array):
        """Compute one (small) array and return it as NumPy."""
        if self.client is not None:
            return self.client.compute(array, sync=True, optimize_graph=False)
        with self._limits():
            return array.compute(optimize_graph=False, scheduler=self.scheduler)

    def rebase(self, *arrays: da.Array) -> tuple[da.Array, ...]:
        """The same persisted arrays as root data, without their history.

        A distributed scheduler keeps the task records of every predecessor of
        a persisted array, to be able to recompute it; over many iterations that
        lineage grows without bound. Moving the blocks through the client and
        scattering them back as new keys cuts it (bit-exact). Local schedulers
        keep values in the graph and have no lineage to cut. The blocks pass
        through the client :data:`REBASE_BATCH_BYTES` at a time, so the client
        never holds a copy of a whole array (a worker in another process would
        otherwise send it its whole share of W at once).
        """
        if self.client is None:
            return arrays
        # One who_has for every block of every array, then the blocks in batches across
        # arrays: a cut of W, Hᵀ and HHᵀ is a handful of round trips, not a few per array.
        names = [f"dnmf-rebased-{uuid.uuid4().hex}" for _ in arrays]
        blocks = []
        for a, name in zip(arrays, names, strict=True):
            graph = dict(a.__dask_graph__())
            for idx in np.ndindex(*a.numblocks):
                size = int(np.prod([a.chunks[d][i] for d, i in enumerate(idx)])) * a.dtype.itemsize
                blocks.append(((name, *idx), graph[(a.name, *idx)], size))
        holders = self.client.who_has([future for _, future, _ in blocks])
        futures: dict = {}
        batch: list = []
        size = 0
        for n, (key, future, nbytes) in enumerate(blocks):
            batch.append((key, future))
            size += nbytes
            if size >= REBASE_BATCH_BYTES or n == len(blocks) - 1:
                futures.update(self._move(batch, holders))
                batch, size = [], 0
        return tuple(
            da.Array(
                {key: f for key, f in futures.items() if key[0] == name},
                name,
                chunks=a.chunks,
                meta=np.empty((0,) * a.ndim, dtype=a.dtype),
            )
            for a, name in zip(arrays, names, strict=True)
        )

    def _move(self, batch: list, holders: dict) -> dict:
        """Gather a batch of ``(new_key, future)`` and scatter each block back, as ``new_key``, where it was."""
        assert self.client is not None
        values = self.client.gather([future for _, future in batch])
        # Each block goes back to a worker that held it: the placement (and
        # what the next step's tasks find locally) does not change.
        by_worker: dict = {}
        for (key, future), value in zip(batch, values, strict=True):
            where = holders.get(future.key) or [None]
            by_worker.setdefault(where[0], {})[key] = value
        del values
        futures: dict = {}
        for address, part in by_worker.items():
            futures.update(self.client.scatter(part, workers=None if address is None else [address]))
        return futures

    def fetch(self, persisted: da.Array) -> np.ndarray:
        """The value of a persisted single-chunk array, with no new graph.

        On a Client this gathers the array's one future: a single wait for
        the result, where ``compute`` would submit a second graph (a finalize
        task on a worker) and wait for that.
        """
        graph = dict(persisted.__dask_graph__())
        if len(graph) == 1:
            (value,) = graph.values()
            if self.client is None and isinstance(value, np.ndarray):
                return value
            if self.client is not None and _is_future(value):
                return np.asarray(self.client.gather(value))
        return np.asarray(self.compute(persisted))


def round_trip_seconds(client, tries: int = 3) -> float:
    """The fastest of ``tries`` round trips from ``client`` to its scheduler, in seconds."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        client.run_on_scheduler(_nothing)
        best = min(best, time.perf_counter() - start)
    return best


def _nothing(**_):
    return None


def _same(block):
    return block


def _is_future(value) -> bool:
    try:
        from distributed import Future
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Future)


def recoverable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean lost workers or lost data, not a bug: worth a retry."""
    import asyncio
    import concurrent.futures

    errors: list[type[BaseException]] = [concurrent.futures.CancelledError, asyncio.CancelledError]
    try:
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        errors += [FutureCancelledError, CommClosedError, KilledWorker]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class FitFailed(RuntimeError):
    """The fit could not recover from lost workers within its retries."""
