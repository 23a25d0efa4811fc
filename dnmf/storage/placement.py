"""Where row blocks live on a cluster: each worker holds one contiguous range of row blocks.

Every per-row-block task of a step reads its blocks of X and its block of W,
and the first level of every fixed-order reduction over row blocks sums
consecutive blocks (:func:`dnmf.engine.graph.tree_reduce`). With consecutive
row blocks on the same worker, those sums run where their parts are, and a
factor row that several row blocks of a worker need crosses the network once.
The scheduler then keeps the placement on its own: each iteration's row task
runs where its inputs are. Placement never changes results (the sums'
order is fixed by the blocking), only the bytes moved.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

#: Seconds :func:`worker_addresses` waits for a first worker on a cluster that has none.
WORKER_WAIT_SECONDS = 60.0


def scheduler_identity(client: Any) -> dict[str, Any]:
    """The scheduler's identity with every worker's record, asked of the scheduler on every call.

    ``Client.scheduler_info`` returns the client's cached copy instead, which
    the client's own periodic refresh (one that asks for no workers) may
    overwrite between the fetch and the return: on a busy machine it
    sometimes says that a cluster with workers has none.
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1))


def workers_info(client: Any) -> dict[str, dict[str, Any]]:
    """``{address: record}`` of the client's workers (``nthreads``, ``memory_limit``, ``host``, ...)."""
    return dict(scheduler_identity(client)["workers"])


def worker_addresses(client: Any) -> list[str]:
    """The client's current workers, sorted (a stable order for the ranges).

    A cluster with no worker yet (starting, or restarting its workers) is
    given :data:`WORKER_WAIT_SECONDS` to get one.
    """
    workers = sorted(workers_info(client))
    if not workers:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        workers = sorted(workers_info(client))
    return workers


def row_owner(i: int, n_blocks: int, workers: list[str]) -> str:
    """The worker of row block ``i`` of ``n_blocks``: contiguous, near-equal ranges."""
    return workers[i * len(workers) // max(n_blocks, 1)]


def row_ranges(client: Any, n_blocks: int, workers: list[str] | None = None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Where the client's workers hold ``n_blocks`` row blocks: ``(owners, sizes)``.

    Parameters
    ----------
    client : distributed.Client
    n_blocks : int
        Number of row blocks.
    workers : list of str, optional
        The workers (:func:`worker_addresses`), when the caller places several arrays by one
        snapshot of them; asked of the scheduler if None.

    Returns
    -------
    owners : tuple of (n_blocks,) str
        The worker of each row block (:func:`row_owner`), as
        :func:`scatter_rows` places them.
    sizes : tuple of int
        Row blocks per worker's range, in order (``sum(sizes) == n_blocks``;
        a worker with no block has no entry).
    """
    workers = worker_addresses(client) if workers is None else workers
    owners = tuple(row_owner(i, n_blocks, workers) for i in range(n_blocks))
    sizes = tuple(len(list(run)) for _, run in itertools.groupby(owners))
    return owners, sizes


def scatter_rows(client: Any, data: Mapping[tuple, Any]) -> dict:
    """``client.scatter(data)`` with the blocks of each row range on its worker.

    ``data`` maps keys ``(name, i, ...)`` to values; ``i`` is the row block.
    Returns ``{key: Future}``.
    """
    workers = worker_addresses(client)
    if not workers:
        return client.scatter(dict(data))
    n_blocks = 1 + max(key[1] for key in data)
    groups: dict[str, dict] = defaultdict(dict)
    for key, value in data.items():
        groups[row_owner(key[1], n_blocks, workers)][key] = value
    futures: dict = {}
    for address, part in groups.items():
        futures.update(client.scatter(part, workers=[address]))
    return futures


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def spare_core_everywhere(client: Any | None, threads: int | None = None) -> bool:
    """Whether every host has more cores than worker threads: room for a reader thread beside them.

    Parameters
    ----------
    client : distributed.Client or None
        None: this process, with ``threads`` threads computing (default: one per usable core).
    threads : int, optional
        See ``client``.
    """
    if client is None:
        cores = usable_cores()
        return (threads or cores) < cores
    workers = workers_info(client)
    if not workers:
        return False
    cores = client.run(usable_cores)  # one round trip: {address: cores}
    per_host: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for address, info in workers.items():
        host = per_host[info.get("host", address)]
        host[0] += int(info.get("nthreads", 1))
        host[1] = max(host[1], int(cores.get(address, 0)))
    return all(n_threads < n_cores for n_threads, n_cores in per_host.values())
