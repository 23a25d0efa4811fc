"""Benchmark: bytes moved per NMF iteration on a cluster, measured, next to the formula.

A power-law sparse matrix (items drawn with Zipf popularity, so most row blocks touch
only part of the columns) is fitted on a ``LocalCluster`` with 2 and 4 worker processes
(1 thread each), once with the default scheme and once with every factor block shipped
whole (the scheme before, ``SUBSET_MAX_FRACTION = -1`` on every worker):

- **touched rows** (default): each worker holds a contiguous range of row blocks, receives
  only the rows of ``Hᵀ``'s column blocks that its blocks touch, and sums its row blocks'
  shares of ``Xᵀ·W`` (each its touched rows) before shipping them;
- **whole blocks**: every row task receives every ``Hᵀ`` block, partials are dense
  ``(n_j, k)`` arrays.

Per iteration (median over the measured iterations, read in the fit's callback):

- bytes sent between workers: distributed's own counter ``transfer_outgoing_bytes_total``
  summed over the workers;
- bytes between the client and the scheduler: the client process's socket traffic
  (``/proc/self/io`` ``rchar + wchar``; it does no other I/O during the fit);
- tasks per iteration: the step graph's size;
- seconds per iteration.

The same matrix is then fitted as ratings with ``RatingsNMF(k)`` (explicit, ``als``), with
the placement on (each row band receives the item rows it touches, each column band the user
rows, from each worker's range) and off (``dnmf.placement = False``: every task receives the
other factor whole): bytes between workers and seconds per iteration, next to
``Σ_workers Σ_j (items + users touched) × (q + 1) × 8`` and, for the whole factors,
``(P − 1)/P × (R·n + C·m) × q × 8``.

The formula's prediction for the touched-rows scheme is
``2 × Σ_workers Σ_j touched(w, j) × (k + 1) × 8`` bytes (the touched rows of ``Hᵀ`` in and
of the partial sums out, with their indices),
plus ``O(row blocks × k²)`` for the Grams; for the whole-blocks scheme
``(workers − 1) × n × k × 8`` for ``Hᵀ`` plus ``row blocks × n × k × 8`` for the partials.
Both are upper bounds (parts computed where they are used never travel).

    python benchmarks/bench_bytes.py            # 200,000 x 20,000, ~1.2M nnz, k = 32
    python benchmarks/bench_bytes.py --quick    # small, < 1 min

Writes ``bytes.md`` and ``bytes.json`` under ``--out`` (bench-results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import format_machine, log, machine_info, markdown_table, write_results


def powerlaw(m: int, n: int, per_row: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n + 1) ** 1.1
    weights /= weights.sum()
    cols = rng.choice(n, size=m * per_row, p=weights)
    rows = np.repeat(np.arange(m), per_row)
    X = sp.csr_matrix((rng.integers(1, 6, size=rows.size).astype(np.float64), (rows, cols)), shape=(m, n))
    X.sum_duplicates()
    return X


def _set_fraction(value: float) -> None:
    from dnmf.engine import blocks

    blocks.SUBSET_MAX_FRACTION = value


def _sent(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def _client_io() -> int:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def worker_ranges(row_blocks: int, workers: int) -> tuple[int, ...]:
    """Row blocks per worker, as dnmf places them (``dnmf.storage.placement.row_owner``)."""
    owners = [i * workers // row_blocks for i in range(row_blocks)]
    return tuple(owners.count(w) for w in range(workers) if owners.count(w))


def predicted(X: sp.csr_matrix, row_chunk: int, col_chunk: int, k: int, workers: int) -> dict:
    """The formula's bytes per iteration for both schemes (see the module doc)."""
    m, n = X.shape
    row_blocks = -(-m // row_chunk)
    touched = 0
    start = 0
    for size in worker_ranges(row_blocks, workers):
        cols = np.unique(X[start * row_chunk : (start + size) * row_chunk].indices)
        start += size
        for j in range(0, n, col_chunk):
            t = int(((cols >= j) & (cols < j + col_chunk)).sum())
            width = min(col_chunk, n - j)
            touched += t * (k + 1) * 8 if t <= 0.5 * width else width * k * 8
    return {
        "touched rows": 2 * touched + row_blocks * 2 * k * k * 8,
        "whole blocks": (workers - 1) * n * k * 8 + row_blocks * n * k * 8,
    }


def step_tasks(X: sp.csr_matrix, row_chunk: int, col_chunk: int, k: int, workers: int, subsets: bool) -> int:
    """Tasks in one iteration's graph (its outputs included)."""
    import dask.array as da

    from dnmf.engine.graph import group_columns
    from dnmf.nmf import graph

    Xd = da.from_array(X, chunks=(row_chunk, col_chunk), asarray=False)
    W = da.ones((X.shape[0], k), chunks=(row_chunk, k))
    Ht = da.ones((X.shape[1], k), chunks=(col_chunk, k))
    HHt = da.ones((k, k), chunks=(k, k))
    columns = group_columns(Xd, worker_ranges(Xd.numblocks[0], workers)) if subsets else None
    R = Xd.numblocks[0]
    owners = tuple(f"worker-{i * workers // R}" for i in range(R)) if workers > 1 else None
    out = graph.step(Xd, W, Ht, HHt, graph.StepParams(solver="cd"), columns=columns, owners=owners)
    inputs = [Xd, W, Ht, HHt] + ([columns] if columns is not None else [])
    known = set().union(*(dict(a.__dask_graph__()) for a in inputs))
    return len(set().union(*(dict(a.__dask_graph__()) for a in out)) - known)


def ratings_bytes(X, k: int, chunks, client, iters: int, placement: bool) -> dict:
    """Bytes between workers and seconds per iteration of ``RatingsNMF`` (explicit, ``als``)."""
    import dask

    import dnmf

    marks: list[tuple[float, int]] = []

    def callback(iteration, elapsed, loss):
        marks.append((time.perf_counter(), _sent(client)))

    with dask.config.set({"dnmf.placement": placement}):
        dnmf.RatingsNMF(k, random_state=0, max_iter=iters + 2, tol=0, chunks=chunks, client=client).fit(
            X, callback=callback
        )
    t, sent = (np.diff(np.array([mk[c] for mk in marks[1:]], dtype=float)) for c in range(2))
    return {"bytes": float(np.median(sent)), "seconds": float(np.median(t))}


def ratings_formula(X: sp.csr_matrix, row_chunk: int, col_chunk: int, q: int, workers: int) -> dict:
    """Upper bounds of the ratings model's bytes per iteration, both schemes."""
    m, n = X.shape
    row_blocks, col_blocks = -(-m // row_chunk), -(-n // col_chunk)
    shipped = 0
    start = 0
    for size in worker_ranges(row_blocks, workers):
        band = X[start * row_chunk : (start + size) * row_chunk]
        start += size
        for j in range(0, n, col_chunk):
            block = band[:, j : j + col_chunk]
            items, users = np.unique(block.indices).size, int((np.diff(block.indptr) > 0).sum())
            shipped += (items + users) * (q * 8 + 8)
    return {
        "touched rows": shipped,
        "whole blocks": (workers - 1) / workers * (row_blocks * n + col_blocks * m) * q * 8,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10, help="measured iterations (default 10)")
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    import dnmf

    m, n, per_row, rb, cb = (40_000, 8_000, 6, 16, 4) if args.quick else (200_000, 20_000, 6, 16, 4)
    X = powerlaw(m, n, per_row)
    k = args.k
    row_chunk, col_chunk = -(-m // rb), -(-n // cb)
    info = machine_info()
    log(format_machine(info))
    rows, data = [], {"machine": info, "shape": [m, n], "nnz": int(X.nnz), "k": k, "runs": [], "ratings_runs": []}
    ratings_rows: list[list] = []
    warnings.simplefilter("ignore")
    for n_workers in [int(w) for w in args.workers.split(",")]:
        formula = predicted(X, row_chunk, col_chunk, k, n_workers)
        with (
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl,
            Client(cl) as client,
        ):
            for scheme, fraction in (("touched rows", 0.5), ("whole blocks", -1.0)):
                client.run(_set_fraction, fraction)
                marks: list[tuple[float, int, int]] = []

                def callback(iteration, elapsed, loss, marks=marks):
                    marks.append((time.perf_counter(), _sent(client), _client_io()))

                model = dnmf.NMF(
                    k,
                    solver="cd",
                    init="random",
                    random_state=0,
                    max_iter=args.iters + 2,
                    tol=0,
                    chunks=(row_chunk, col_chunk),
                    client=client,
                )
                model.fit(X, callback=callback)
                # Iterations 1-2 carry start-up (scatter of X, imports): measure from the third.
                t, sent, io = (np.diff(np.array([mk[c] for mk in marks[1:]], dtype=float)) for c in range(3))
                # The callback's own reads of the counters are round trips too: subtract one idle read.
                base = _client_io()
                _sent(client)
                idle_io = _client_io() - base
                row = {
                    "workers": n_workers,
                    "scheme": scheme,
                    "bytes_between_workers": float(np.median(sent)),
                    "formula_bytes": formula[scheme],
                    "client_bytes": float(np.median(io)) - idle_io,
                    "tasks": step_tasks(X, row_chunk, col_chunk, k, n_workers, scheme == "touched rows"),
                    "seconds": float(np.median(t)),
                }
                data["runs"].append(row)
                rows.append(
                    [
                        n_workers,
                        scheme,
                        f"{row['bytes_between_workers'] / 2**20:.2f}",
                        f"{row['formula_bytes'] / 2**20:.2f}",
                        f"{row['client_bytes'] / 2**10:.0f}",
                        row["tasks"],
                        f"{row['seconds']:.3f}",
                    ]
                )
                log(rows[-1])
            client.run(_set_fraction, 0.5)
            q = k + 1
            rformula = ratings_formula(X, row_chunk, col_chunk, q, n_workers)
            for scheme, placement in (("touched rows", True), ("whole blocks", False)):
                r = ratings_bytes(X, k, (row_chunk, col_chunk), client, args.iters, placement)
                ratings_rows.append(
                    [
                        n_workers,
                        scheme,
                        f"{r['bytes'] / 2**20:.2f}",
                        f"{rformula[scheme] / 2**20:.2f}",
                        f"{r['seconds']:.3f}",
                    ]
                )
                data["ratings_runs"].append(dict(workers=n_workers, scheme=scheme, formula_bytes=rformula[scheme], **r))
                log(ratings_rows[-1])
    data["loadavg_at_end"] = os.getloadavg()
    table = markdown_table(
        [
            "workers",
            "factor rows shipped",
            "MiB between workers / iteration",
            "formula (MiB, upper bound)",
            "KiB client <-> scheduler / iteration",
            "tasks / iteration",
            "s / iteration",
        ],
        rows,
    )
    ratings_table = markdown_table(
        ["workers", "factor rows shipped", "MiB between workers / iteration", "formula (MiB)", "s / iteration"],
        ratings_rows,
    )
    md = (
        f"# Bytes moved per iteration\n\n{m:,} x {n:,}, {X.nnz:,} non-zeros (Zipf items), k={k}, "
        f"{rb} x {cb} blocks, solver cd; medians of {args.iters} iterations (the first two excluded).\n\n"
        f"{table}\n\n## RatingsNMF (explicit, als, same matrix as ratings)\n\n{ratings_table}\n\n"
        f"{format_machine(info)}\nload average at the end: {' '.join(f'{x:.2f}' for x in data['loadavg_at_end'])}\n"
    )
    print(md)
    write_results(args.out, "bytes", md, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
