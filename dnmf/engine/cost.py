"""A cost model of one NMF iteration: time and memory per worker from the sizes, the blocking and the cluster.

Pure arithmetic (no Dask): used by ``benchmarks/bench_cost_model.py`` to check
it against measured fits and to predict sizes that no test machine holds, and
documented in the "Cost model" page of the docs. The constants are per-core
rates measured on a 2-core Xeon (``Rates``); measure your own with the
benchmark and pass them in.

The model follows the step graph of :mod:`dnmf.nmf.graph`:

- **row stage**: ``R`` row-block tasks, each ``X_i·Hᵀ`` and ``X_iᵀ·W_i`` over its
  non-zeros and the update of ``W_i`` (``m_i·k²`` per sweep), run ``min(R,
  cores)`` at a time;
- **column stage**: ``C`` column-block tasks, the update of ``Hᵀ_j``;
- **communication** (on a cluster): each worker receives the rows of ``Hᵀ``
  its row blocks touch and sends as many rows of summed partials, ``2 ·
  touched · (k + 1) · 8`` bytes, over links of ``bandwidth``, plus a latency
  per stage and per level of the partial tree;
- **scheduling**: the scheduler handles every task of the graph one after
  the other, ``task_seconds`` each.

The stages run one after the other (each needs the previous one's results),
so the time of an iteration is their sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .graph import partial_tree, sum_list, tree_reduce


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on one core (defaults: measured, see the module doc).

    Attributes
    ----------
    sparse : float
        Both sparse products, per stored entry and per component (``nnz·k``).
    update : float
        One factor update of ``solver``, per row and per ``k²``.
    gram : float
        A Gram, per row and per ``k²``.
    task_seconds : float
        Scheduler time per task (distributed: about 0.3 ms; threads: 0.05 ms).
    """

    sparse: float = 3.9e-9
    update: float = 5.6e-9  # "cd" (HALS), one sweep; "mu" is about 30x less, "anls-bpp" about 2x more
    gram: float = 0.16e-9
    task_seconds: float = 0.3e-3


@dataclass(frozen=True)
class Cluster:
    """The machines: ``workers`` processes of ``cores`` threads, ``memory`` bytes each."""

    workers: int = 1
    cores: int = 2
    memory: float = 8 * 2**30
    bandwidth: float = 1.25e9  # bytes/s between two workers (10 Gb/s)
    latency: float = 1e-4  # seconds per message round trip


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` returns: seconds per iteration by part, bytes and tasks."""

    row_seconds: float
    col_seconds: float
    network_seconds: float
    schedule_seconds: float
    bytes_per_worker: float
    tasks: int
    memory_per_worker: float

    @property
    def seconds(self) -> float:
        return self.row_seconds + self.col_seconds + self.network_seconds + self.schedule_seconds


def zipf_touched(draws: float, n: int, exponent: float = 1.1) -> float:
    """Expected fraction of ``n`` items hit by ``draws`` draws with Zipf(``exponent``) popularity."""
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    p /= p.sum()
    return float(np.sum(-np.expm1(draws * np.log1p(-p))) / n)


def step_tasks(row_blocks: int, col_blocks: int, workers: int) -> int:
    """Tasks in one iteration's graph (:func:`dnmf.nmf.graph.step`, outputs included; exact to a few).

    Per row block: the task, W's pick and a share of the tree that
    sums all its partials (and its Gram and scalars, one more "column block")
    at once within a worker's range; per single-worker subtree where the
    ranges meet, and per node above it, one task per column block and one
    for the Grams (:func:`dnmf.engine.graph.partial_tree`, counted here on
    the same tree), except each column block's last sum, which runs in its
    column task; per worker and column block (sparse X) the touched rows of
    ``Hᵀ``; per column block: the task and three picks. With one column
    block the tree sums whole tuples up to the column task, which also does
    stage C: ``2R + 4`` and the tree's sums (``R - 2``, one fewer for each
    level of three), plus a pick of the partials for each pair of row blocks
    that two workers hold. With ``P`` workers that is
    ``O(R + P·C)``, not ``O(R·C)``.
    """
    R, C = row_blocks, col_blocks
    shipped = min(workers, R) * C if workers > 1 else 0
    owners = [i * workers // R for i in range(R)] if workers > 1 else [0] * R
    tree: dict = {}
    if C == 1:
        straddled = sum(1 for i in range(1, R, 2) if owners[i] != owners[i - 1])
        tree_reduce(tree, "p", list(range(R)), split_every=2, until=3)  # as nmf.graph.step builds it
        return 2 * R + len(tree) + 4 + shipped + straddled
    totals = partial_tree(tree, "p", list(range(R)), C + 1, owners)
    inlined = sum(1 for key in totals[:C] if tree.get(key, (None,))[0] is sum_list)
    return 2 * R + len(tree) - inlined + 4 * C + shipped + -(-C // 8) + 1


def predict(
    nnz: float,
    m: float,
    n: float,
    k: int,
    row_blocks: int,
    col_blocks: int,
    cluster: Cluster,
    *,
    touched: float = 1.0,
    sweeps: float = 1.0,
    x_in_memory: bool = True,
    rates: Rates = Rates(),
) -> Prediction:
    """Seconds per iteration and memory per worker of a blocked NMF fit.

    Parameters
    ----------
    nnz, m, n, k
        Stored entries, shape of X and rank.
    row_blocks, col_blocks : int
        The blocking of X (``R × C`` blocks of even sizes).
    cluster : Cluster
    touched : float in (0, 1]
        Fraction of X's columns that one worker's row blocks touch (1 for
        dense data; :func:`zipf_touched` for power-law items).
    sweeps : float
        Factor-update sweeps per half-step (``inner_iter``).
    x_in_memory : bool
        X held by the workers (else read from a store by each task).
    rates : Rates

    Returns
    -------
    Prediction
    """
    P, cores = cluster.workers, cluster.cores
    slots = P * cores
    per_row_task = (rates.sparse * nnz * k + (rates.update * sweeps + rates.gram) * m * k * k) / row_blocks
    row_seconds = per_row_task * math.ceil(row_blocks / slots)
    per_col_task = (rates.update * sweeps + rates.gram) * n * k * k / col_blocks
    col_seconds = per_col_task * math.ceil(col_blocks / slots)
    levels = math.ceil(math.log2(max(row_blocks, 2)))
    if P > 1:
        moved = 2 * touched * n * (k + 1) * 8 * (P - 1) / P
        network = moved / cluster.bandwidth + cluster.latency * (3 + levels)
    else:
        moved, network = 0.0, 0.0
    tasks = step_tasks(row_blocks, col_blocks, P)
    # Per worker: its share of X (or one row of blocks per running task), of W and of Hᵀ, the
    # touched rows of Hᵀ it receives, and per running task XHᵀ_i plus its partials (at most one
    # row per touched column, twice while they are summed).
    x_bytes = nnz * 12 / P if x_in_memory else cores * 2 * nnz * 12 / row_blocks
    factors = (m + n) * k * 8 / P + touched * n * (k + 1) * 8
    per_task = m / row_blocks * k * 8 + 2 * min(nnz / row_blocks, touched * n) * (k + 1) * 8
    memory = x_bytes + factors + cores * per_task + 200 * 2**20
    return Prediction(
        row_seconds=row_seconds,
        col_seconds=col_seconds,
        network_seconds=network,
        schedule_seconds=tasks * rates.task_seconds,
        bytes_per_worker=moved,
        tasks=tasks,
        memory_per_worker=memory,
    )


def recommend_blocking(
    nnz: float,
    m: float,
    n: float,
    k: int,
    cluster: Cluster,
    *,
    touched: float = 1.0,
    sweeps: float = 1.0,
    x_in_memory: bool = True,
    rates: Rates = Rates(),
) -> tuple[int, int, Prediction]:
    """``(row_blocks, col_blocks, prediction)``: the fastest blocking whose memory fits.

    Candidates are multiples of the cluster's cores (powers of two times it,
    and fewer for small inputs); ties go to fewer blocks.
    """
    slots = cluster.workers * cluster.cores
    candidates = sorted({max(1, slots * 2**e // 8) for e in range(0, 9)} | {1, 2})
    best = None
    for R in candidates:
        for C in candidates:
            if m < R or n < C:
                continue
            p = predict(
                nnz, m, n, k, R, C, cluster, touched=touched, sweeps=sweeps, x_in_memory=x_in_memory, rates=rates
            )
            fits = p.memory_per_worker <= cluster.memory
            key = (not fits, p.seconds, R * C)
            if best is None or key < best[0]:
                best = (key, R, C, p)
    assert best is not None
    return best[1], best[2], best[3]
