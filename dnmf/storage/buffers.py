"""Memory for decoded arrays and per-block temporaries, reused from one block to the next.

A Dask worker process runs with ``MALLOC_TRIM_THRESHOLD_`` set (distributed's
default), which fixes glibc's mmap threshold at 128 KiB: every array of a
decoded block is fresh memory from the kernel, and every one of its pages is
faulted in and zeroed while the block is decoded. On a 401 MiB store that is
about 51,000 page faults per pass and a third more CPU than the same read in
an ordinary process (see the out-of-core benchmark). :func:`empty` hands out
arrays whose memory comes back here when the last array using it is
released, so the next block's arrays reuse pages that are already mapped.
A fit raises the threshold of workers of 4 GiB or more to 32 MiB
(:mod:`dnmf.engine.allocator`): the arrays of larger blocks (``dnmf ingest``
writes blocks of about 64 MiB) still come fresh there, and smaller workers,
or workers whose tuning is turned off, keep the 128 KiB.

The same holds for the arrays a row task computes, which have the same
sizes from one row block and one iteration to the next: the step's
temporaries and new factor blocks (:func:`dnmf.nmf.graph.mu_step`), the
sums of partial products (:func:`dnmf.engine.graph.sum_list`) and the
blocks read from a factor store take their memory here too, and so, where
that memory would be fresh (:func:`fresh_memory`: in a :func:`pinned`
process, or 16 MiB or more anywhere), do the sparse × dense products
(``dnmf.nmf.kernels.xdot(..., out=)``).

The pool keeps at most ``dnmf.read-pool-bytes`` (Dask config; default
:data:`DEFAULT_POOL_BYTES`, 0 turns it off) of free memory per process;
memory in use is never limited here. On a Dask worker,
:mod:`dnmf.engine.pooling` sizes the default to the worker's memory limit
and threads, and empties the pool before the memory it keeps could make the
worker spill or pause; a fit on the local threads sizes this process's by the
same rule while it runs (``Runner.fit_memory`` in :mod:`dnmf.engine.runner`).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict

import dask
import numpy as np

#: Free memory a process keeps for the next reads, unless ``dnmf.read-pool-bytes`` says otherwise:
#: the arrays of one of ``dnmf ingest``'s largest row blocks.
DEFAULT_POOL_BYTES = 64 * 2**20
#: A request takes a free buffer up to this many times its size.
MAX_SLACK = 1.5
#: Smaller arrays come from the allocator (glibc's heap reuses small chunks by itself).
MIN_POOLED_BYTES = 256 * 2**10


#: This process's default in place of :data:`DEFAULT_POOL_BYTES` (:func:`set_default_limit`).
_default_limit: int | None = None


def pool_limit() -> int:
    """The most free bytes the pool keeps: ``dnmf.read-pool-bytes``, else this process's default.

    The default is :data:`DEFAULT_POOL_BYTES` unless :func:`set_default_limit`
    set another (a Dask worker's, sized to its memory limit).
    """
    value = dask.config.get("dnmf.read-pool-bytes", None)
    if value is None:
        return DEFAULT_POOL_BYTES if _default_limit is None else _default_limit
    return int(value)


def process_default() -> int | None:
    """This process's default set by :func:`set_default_limit` (None: :data:`DEFAULT_POOL_BYTES`)."""
    return _default_limit


def set_default_limit(nbytes: int | None) -> None:
    """Make ``nbytes`` (None: :data:`DEFAULT_POOL_BYTES`) this process's default :func:`pool_limit`.

    Free buffers beyond the new limit are released at once.
    """
    global _default_limit
    _default_limit = None if nbytes is None else int(nbytes)
    _POOL.shrink(pool_limit())


def capacity(nbytes: int) -> int:
    """The size class of a request: ``nbytes`` rounded up to an eighth of its power of two (≤ 12.5% more)."""
    step = max(1, 1 << max(0, nbytes.bit_length() - 4))
    return -(-nbytes // step) * step


class _Pool:
    """Free buffers by size class, oldest first, at most :func:`pool_limit` bytes in all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: OrderedDict[int, np.ndarray] = OrderedDict()
        self.free_bytes = 0
        self.reused = 0
        self.allocated = 0

    def take(self, size: int) -> np.ndarray:
        """The smallest free buffer of ``size`` to :data:`MAX_SLACK` times it, else a new one of ``size``.

        Blocks of a store differ in size, so an exact size class alone would
        leave buffers of neighbouring classes unused in the pool.
        """
        with self.lock:
            best = None
            for key, raw in self.free.items():
                if size <= raw.size <= size * MAX_SLACK and (best is None or raw.size < self.free[best].size):
                    best = key
            if best is not None:
                raw = self.free.pop(best)
                self.free_bytes -= raw.size
                self.reused += 1
                return raw
            self.allocated += 1
        return np.empty(size, dtype=np.uint8)

    def give(self, raw: np.ndarray) -> None:
        limit = pool_limit()
        if raw.size > limit:
            return
        with self.lock:
            self.free[id(raw)] = raw
            self.free_bytes += raw.size
            self._shrink(limit)

    def shrink(self, limit: int) -> None:
        with self.lock:
            self._shrink(limit)

    def _shrink(self, limit: int) -> None:
        while self.free_bytes > limit:
            _, old = self.free.popitem(last=False)
            self.free_bytes -= old.size

    def clear(self) -> int:
        with self.lock:
            released, self.free_bytes = self.free_bytes, 0
            self.free.clear()
        return released


_POOL = _Pool()


class _Lease:
    """The owner of a pooled array's memory: returns it to the pool when the last array using it goes.

    NumPy makes this object the ``base`` of the array built from its
    ``__array_interface__``, and every view of that array keeps it alive, so
    the memory is given back only once nothing can read or write it.
    """

    __slots__ = ("__array_interface__", "raw")

    def __init__(self, raw: np.ndarray, n: int, dtype: np.dtype) -> None:
        self.raw = raw
        self.__array_interface__ = {
            "shape": (n,),
            "typestr": dtype.str,
            "data": (raw.ctypes.data, False),
            "version": 3,
        }

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter shutdown that module may already be gone.
        try:  # noqa: SIM105
            _POOL.give(self.raw)
        except Exception:
            pass


def empty(shape: int | tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, its memory reused from earlier arrays when it can be.

    Parameters
    ----------
    shape : int or tuple of int
        Number of items, or the array's shape.
    dtype : numpy.dtype
        Item type (a fixed-size numeric or boolean type).

    Returns
    -------
    numpy.ndarray
        Of ``shape``, C-contiguous, writable. Small arrays, and any array
        while the pool is off, are plain :func:`numpy.empty` arrays.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(d) for d in shape)
    n = math.prod(shape)
    nbytes = n * dtype.itemsize
    if nbytes < MIN_POOLED_BYTES or capacity(nbytes) > pool_limit():
        return np.empty(shape, dtype=dtype)
    raw = _POOL.take(capacity(nbytes))
    flat = np.asarray(_Lease(raw, n, dtype))
    return flat if len(shape) == 1 else flat.reshape(shape)


def empty_like(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """:func:`empty` of ``a``'s shape and (unless given) dtype."""
    return empty(a.shape, a.dtype if dtype is None else dtype)


def start_environ() -> dict[str, str]:
    """The environment this process started with (what glibc read), else the current one.

    Not ``os.environ``: a Nanny sets its pre-spawn environment in its own
    process too (a LocalCluster's nannies run in the client's process), long
    after glibc read that process's settings.
    """
    try:
        with open("/proc/self/environ", "rb") as fh:
            entries = fh.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if b"=" in entry)
    return {key: value for key, _, value in pairs}


@functools.cache
def pinned() -> bool:
    """Whether this process started with glibc's mmap threshold pinned by a trim threshold only.

    That is distributed's default for worker processes; a process whose
    environment sets ``MALLOC_MMAP_THRESHOLD_`` too was tuned on purpose.
    There, every array over 128 KiB is new, page-faulted memory unless it is
    reused on purpose. Fixed for the process's life, so read once.
    """
    env = start_environ()
    return "MALLOC_TRIM_THRESHOLD_" in env and "MALLOC_MMAP_THRESHOLD_" not in env


#: glibc's largest dynamic mmap threshold (64-bit): an array over this size is fresh memory from
#: the kernel in any process, its pages faulted in and zeroed when first written.
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
#: From this size on, a new array is mostly fresh memory in an ordinary process too: over
#: :data:`GLIBC_MMAP_THRESHOLD_MAX` always, and from about half of it in the threads' arenas,
#: whose heaps (64 MiB at most) hold only a few such arrays and are unmapped as they empty.
FRESH_BYTES = GLIBC_MMAP_THRESHOLD_MAX // 2


def fresh_memory(nbytes: int) -> bool:
    """Whether a new array of ``nbytes`` is likely fresh memory from the kernel in this process.

    In a :func:`pinned` process, every array of 128 KiB or more (a tuned
    worker's threshold is higher, but it reuses its pool anyway); in an
    ordinary one, arrays of :data:`FRESH_BYTES` or more. Reusing pooled
    memory for those saves every page's fault, where for smaller arrays
    glibc's heap already saves it.
    """
    return pinned() or nbytes >= FRESH_BYTES


def pool_stats() -> dict[str, int]:
    """This process's pool: ``free_bytes`` kept, buffers ``reused`` and ``allocated`` so far."""
    with _POOL.lock:
        return {"free_bytes": _POOL.free_bytes, "reused": _POOL.reused, "allocated": _POOL.allocated}


def clear_pool() -> int:
    """Release every free buffer of this process's pool to the allocator; returns the bytes released."""
    return _POOL.clear()
