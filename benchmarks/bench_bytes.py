"""Benchmark: bytes moved between workers per NMF iteration, measured by distributed.

A power-law sparse matrix (items drawn with Zipf popularity, so most row blocks touch
only part of the columns) is fitted on a ``LocalCluster`` with 2 and 4 worker
processes, with the partial products of ``Xᵀ·W`` shipped as the touched rows only
(``RowSubset``, the default) and as dense ``(n_j, k)`` arrays (the previous scheme,
``SUBSET_MAX_FRACTION = -1`` on every worker). Reported per iteration: bytes sent
between workers (``transfer_outgoing_bytes_total`` summed over the workers), the
formula's prediction of the partials' bytes for the dense scheme (``row_blocks × n × k × 8``)
and for the subset scheme (``Σ_ij touched columns of block ij × (k + 1) × 8``, a block
shipping all its rows when it touches more than half), an upper bound since partials summed
on the worker that made them never travel, and the wall time.
The first iterations (start-up, scatter of X) are excluded: the counter is read
after a warm-up fit and after a fit ``--iters`` longer, and the difference divided.

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

    m, n, per_row, rb, cb = (20_000, 4_000, 6, 8, 4) if args.quick else (200_000, 20_000, 6, 16, 4)
    X = powerlaw(m, n, per_row)
    k = args.k
    row_chunk, col_chunk = -(-m // rb), -(-n // cb)
    # Rows each (row block, column block) partial ships: its touched columns when they are at
    # most half the block (blocks.SUBSET_MAX_FRACTION), else all of them; values plus an int64 index.
    subset_values = 0
    for i in range(0, m, row_chunk):
        cols = np.unique(X[i : i + row_chunk].indices)
        for j in range(0, n, col_chunk):
            t = int(((cols >= j) & (cols < j + col_chunk)).sum())
            width = min(col_chunk, n - j)
            subset_values += t * (k * 8 + 8) if t <= 0.5 * width else width * k * 8
    info = machine_info()
    log(format_machine(info))
    rows, data = [], {"machine": info, "shape": [m, n], "nnz": int(X.nnz), "k": k, "runs": []}
    warnings.simplefilter("ignore")
    for n_workers in [int(w) for w in args.workers.split(",")]:
        with (
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl,
            Client(cl) as client,
        ):
            for scheme, fraction in (("touched rows", 0.5), ("dense partials", -1.0)):
                client.run(_set_fraction, fraction)

                def fit(iters, scheme=scheme):
                    return dnmf.NMF(
                        k,
                        solver="cd",
                        init="random",
                        random_state=0,
                        max_iter=iters,
                        tol=0,
                        chunks=(row_chunk, col_chunk),
                        client=client,
                    ).fit(X)

                fit(2)  # warm-up: imports, scatter paths
                b0, t0 = _sent(client), time.perf_counter()
                fit(2)
                b1, t1 = _sent(client), time.perf_counter()
                fit(2 + args.iters)
                b2, t2 = _sent(client), time.perf_counter()
                per_iter = ((b2 - b1) - (b1 - b0)) / args.iters
                seconds = ((t2 - t1) - (t1 - t0)) / args.iters
                predicted = subset_values if scheme == "touched rows" else rb * n * k * 8
                rows.append(
                    [n_workers, scheme, f"{per_iter / 2**20:.2f}", f"{predicted / 2**20:.2f}", f"{seconds:.3f}"]
                )
                data["runs"].append(
                    dict(
                        workers=n_workers,
                        scheme=scheme,
                        bytes_per_iter=per_iter,
                        predicted_partials=predicted,
                        seconds_per_iter=seconds,
                    )
                )
                log(rows[-1])
            client.run(_set_fraction, 0.5)
    data["loadavg_at_end"] = os.getloadavg()
    table = markdown_table(
        [
            "workers",
            "partials shipped as",
            "MiB between workers / iteration",
            "partials, formula (MiB, upper bound)",
            "s / iteration",
        ],
        rows,
    )
    md = (
        f"# Bytes between workers per iteration\n\n{m:,} x {n:,}, {X.nnz:,} non-zeros (Zipf items), k={k}, "
        f"{rb} x {cb} blocks, solver cd; {args.iters} measured iterations (warm-up excluded).\n\n{table}\n\n"
        f"{format_machine(info)}\nload average at the end: {' '.join(f'{x:.2f}' for x in data['loadavg_at_end'])}\n"
    )
    print(md)
    write_results(args.out, "bytes", md, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
