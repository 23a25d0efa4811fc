"""Reading the next row block of a store while this one is computed: reader threads per process.

A row task of a store-backed fit reads its blocks of X inside the task
(:func:`dnmf.engine.graph.x_row_refs`), so on a worker thread the disk, the
decoder and the arithmetic take turns: nothing is read while a block is
computed. :func:`take` reads a row block's blocks (or collects them, read
ahead), then hands the reads of the row block this process will most likely
compute next to a reader thread, which decodes them while the task
computes. Decoding releases the GIL (file reads, Zstandard, Blosc), so the
reader runs beside the task's compiled and BLAS code.

Which row block comes next is learnt, per store array and process, from the
previous pass: the order in which this process's tasks took the row blocks
(a step's row tasks run as their inputs arrive: not by index, and not
quite in the same order every iteration). A task that took ``i`` reads
ahead the first block after ``i`` in that order that this pass has not
taken yet; every block is taken once per pass, so what is read ahead is
used, if not always by the very next task. The first pass reads nothing
ahead. Where reads ahead are dropped unused again and again (a cluster
whose scheduler moves row blocks between workers), the process stops
reading ahead for that array.

Whether a fit reads ahead at all is :meth:`dnmf.engine.runner.Runner.read_ahead`'s
choice (the Dask config key ``dnmf.read-ahead``; by default only beside a
spare core).

Bounds: a process holds at most :data:`AHEAD_PER_THREAD` row blocks read
ahead per thread that takes them (a new guess replaces the oldest), and a
block nobody collects within :data:`STALE_SECONDS` (the read ahead
past a fit's last iteration) is dropped. Those bytes are unmanaged
memory of the worker: the README's sizing rule counts one row block of X
per thread for them.

A block read ahead is the block read now: the same bytes, decoded the same
way, so results do not change. Keys name the store's write (see
:func:`dnmf.storage.arrays.open_matrix`), so a store rewritten at the same
path is never served from an earlier read. A read ahead that failed is read
again by the task, whose error is then the one reported.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

#: Row blocks read ahead that a process keeps per thread that takes row blocks.
AHEAD_PER_THREAD = 1
#: Seconds after which a row block read ahead and not collected is dropped.
STALE_SECONDS = 30.0
#: Reader threads per process (started as needed).
READERS = 4
#: An array is no longer read ahead once this many more of its reads ahead were dropped than used.
GIVE_UP_AFTER = 8


@dataclass(frozen=True, eq=False)
class Read:
    """A block read to run later: ``func(*args)``, known as ``key``, part of row block ``group``.

    Not a tuple, so that a Dask graph passes it to :func:`take` as it is,
    unexecuted. ``group`` is ``(array name, row block)``.
    """

    key: Hashable
    group: tuple[Hashable, int]
    func: Callable[..., Any]
    args: tuple

    def __call__(self) -> Any:
        return self.func(*self.args)


@dataclass
class _Order:
    """How one process takes the row blocks of one array: the last pass and the current one."""

    last: list[int] = field(default_factory=list)
    last_threads: int = 1
    current: list[int] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    threads: set[int] = field(default_factory=set)
    _position: dict[int, int] | None = None
    reads: dict[int, tuple[Read, ...]] = field(default_factory=dict)
    used: int = 0
    wasted: int = 0
    count: int = 0

    def took(self, row: int, reads: Sequence[Read]) -> int | None:
        """Record that ``row`` was taken; the row block to read ahead now, if any.

        The first row block after ``row`` in the last pass's order that this
        pass has not taken yet: the order of the tasks on a worker varies a
        little from one iteration to the next (they run as their inputs
        arrive), but a block not taken yet in this pass will be taken in it,
        so what is read ahead is used, if not always by the very next task.
        Once this pass has taken every block, the one ``threads`` places on,
        for the next pass.
        """
        if row in self.taken:  # a new pass
            self.last, self.last_threads = self.current, max(1, len(self.threads))
            self.current, self.taken, self.threads = [], set(), set()
            self._position = None
        self.current.append(row)
        self.taken.add(row)
        self.threads.add(threading.get_ident())
        self.reads[row] = tuple(reads)
        if row not in self.position or self.wasted > self.used + GIVE_UP_AFTER:
            return None
        start, n = self.position[row], len(self.last)
        for step in range(1, n):
            candidate = self.last[(start + step) % n]
            if candidate not in self.taken:
                return candidate
        candidate = self.last[(start + max(self.last_threads, len(self.threads))) % n]
        return None if candidate == row else candidate

    @property
    def position(self) -> dict[int, int]:
        """Where each row block came in the last pass."""
        if self._position is None:
            self._position = {r: a for a, r in enumerate(self.last)}
        return self._position


class _Ahead:
    """This process's reads ahead (futures by key, oldest first) and the orders it learnt."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # key -> (future, group, when submitted (monotonic s), the array's take count then)
        self.pending: OrderedDict[Hashable, tuple[Future, tuple[Hashable, int], float, int]] = OrderedDict()
        self.orders: dict[Hashable, _Order] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.timer: threading.Timer | None = None
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    def collect(self, read: Read) -> Any:
        with self.lock:
            entry = self.pending.pop(read.key, None)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
                self.orders[read.group[0]].used += 1
        if entry is not None:
            try:
                return entry[0].result()
            except Exception:
                pass  # read it here: a lasting fault then raises in the task, with its own message
        return read()

    def took(self, reads: Sequence[Read]) -> None:
        name, row = reads[0].group
        with self.lock:
            order = self.orders.setdefault(name, _Order())
            order.count += 1
            # Dropped: a read ahead of this very block (another thread read it ahead just as this
            # one took it), and one not taken within a pass (its block went to another worker).
            late = order.count - max(len(order.last), 1)
            for key in [
                k for k, (_, g, _, at) in self.pending.items() if g == (name, row) or (g[0] == name and at < late)
            ]:
                self._drop(key)
            nxt = order.took(row, reads)
            if nxt is None:
                return
            if self.pool is None:
                self.pool = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="dnmf-read-ahead")
            now = time.monotonic()
            if (name, nxt) not in {group for _, group, _, _ in self.pending.values()}:
                for read in order.reads[nxt]:
                    self.pending[read.key] = (self.pool.submit(read), read.group, now, order.count)
                # The oldest go: they were guessed before a task came that did not want them.
                limit = AHEAD_PER_THREAD * max(order.last_threads, len(order.threads))
                while len({group for _, group, _, _ in self.pending.values()}) > limit:
                    self._drop(next(iter(self.pending)))
            self._drop_stale()

    def _drop(self, key: Hashable) -> None:
        """Forget a read ahead (holds the lock); a running read ends, and its block is freed then."""
        fut, group, _, _ = self.pending.pop(key)
        fut.cancel()
        self.dropped += 1
        order = self.orders.get(group[0])
        if order is not None:
            order.wasted += 1

    def _drop_stale(self) -> None:
        """Drop what waited too long; look again later while anything is left (holds the lock)."""
        now = time.monotonic()
        for key, (_, _, since, _) in list(self.pending.items()):
            if now - since > STALE_SECONDS:
                self._drop(key)
        if self.pending and (self.timer is None or not self.timer.is_alive()):
            # Without it the read ahead past a fit's last iteration would stay until the next fit.
            self.timer = threading.Timer(STALE_SECONDS, self._on_timer)
            self.timer.daemon = True
            self.timer.start()

    def _on_timer(self) -> None:
        with self.lock:
            self.timer = None
            self._drop_stale()

    def clear(self) -> None:
        with self.lock:
            for key in list(self.pending):
                self._drop(key)
            self.orders.clear()
            self.hits = self.misses = self.dropped = 0


_AHEAD = _Ahead()


def take(reads: Sequence[Read]) -> list:
    """The blocks ``reads`` name (read ahead earlier, or read now), in order; then read ahead.

    Parameters
    ----------
    reads : sequence of Read
        One row block's reads (one per column block), all of the same
        ``group``.

    Returns
    -------
    list
        One block per read, as ``read()`` returns it.
    """
    blocks = [_AHEAD.collect(read) for read in reads]
    if reads:
        _AHEAD.took(reads)
    return blocks


def stats() -> dict[str, int]:
    """This process's reads: ``hits`` (read ahead and used), ``misses`` (read by the task), ``dropped``, ``pending``."""
    with _AHEAD.lock:
        return {
            "hits": _AHEAD.hits,
            "misses": _AHEAD.misses,
            "dropped": _AHEAD.dropped,
            "pending": len(_AHEAD.pending),
        }


def clear() -> None:
    """Drop every block read ahead in this process and the orders it learnt; reset :func:`stats`."""
    _AHEAD.clear()
