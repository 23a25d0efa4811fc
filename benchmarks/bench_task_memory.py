"""Benchmark: peak memory of one NMF iteration's tasks as the number of row blocks grows.

One iteration's graph (``dnmf.nmf.graph.step``, ``solver="cd"``) over a power-law sparse
matrix runs on Dask's synchronous scheduler with ``tracemalloc`` on; a
``dask.callbacks.Callback`` resets the peak before each task and reads it after, so each
task's figure is what it allocated at its peak above what was live when it started (NumPy and
SciPy report their buffers to tracemalloc). Reported per blocking (8, 16, 32, 64 row blocks
by default, 4 column blocks): the largest row-block task, the largest column-block task and
the largest task of any kind of the step (the sums of partials, the picks; not dask's
concatenation of the results for ``compute``), and X's, W's and Hᵀ's bytes.

    python benchmarks/bench_task_memory.py            # 200,000 x 20,000, ~1.1M nnz, k = 32
    python benchmarks/bench_task_memory.py --quick

Writes ``task-memory.md`` and ``.json`` under ``--out`` (bench-results/). Deterministic:
the load does not matter.
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import format_machine, log, machine_info, markdown_table, write_results
from benchmarks.bench_bytes import powerlaw


def task_peaks(X, k: int, row_blocks: int, col_blocks: int) -> dict:
    """Largest per-task peak allocation (bytes) of one step, by kind of task."""
    import dask.array as da
    from dask.callbacks import Callback

    from dnmf.nmf import graph

    m, n = X.shape
    chunks = (-(-m // row_blocks), -(-n // col_blocks))
    rng = np.random.default_rng(0)
    Xd = da.from_array(X, chunks=chunks, asarray=False)
    W = da.from_array(rng.random((m, k)), chunks=(chunks[0], k))
    Ht = da.from_array(rng.random((n, k)), chunks=(chunks[1], k))
    HHt = da.from_array(np.asarray(Ht.T @ Ht), chunks=(k, k))
    perm = tuple(range(k))
    out = graph.step(Xd, W, Ht, HHt, graph.StepParams(solver="cd", perm_W=perm, perm_H=perm))
    peaks: dict[str, int] = {"row": 0, "column": 0, "any": 0}

    class Peaks(Callback):
        def _pretask(self, key, dsk, state):
            tracemalloc.reset_peak()
            self._start = tracemalloc.get_traced_memory()[0]

        def _posttask(self, key, result, dsk, state, worker_id):
            peak = tracemalloc.get_traced_memory()[1] - self._start
            name = key[0] if isinstance(key, tuple) else str(key)
            if not name.startswith("dnmf-"):  # dask's own concatenation of the outputs for compute()
                return
            kind = "row" if name.endswith("-A") else "column" if name.endswith("-B") else "any"
            peaks[kind] = max(peaks[kind], peak)
            peaks["any"] = max(peaks["any"], peak)

    tracemalloc.start()
    try:
        with Peaks():
            da.compute(*out, scheduler="sync", optimize_graph=False)
    finally:
        tracemalloc.stop()
    return peaks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--row-blocks", default="8,16,32,64")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)
    m, n, per_row = (40_000, 8_000, 6) if args.quick else (200_000, 20_000, 6)
    k = args.k
    X = powerlaw(m, n, per_row)
    info = machine_info()
    log(format_machine(info))
    rows, runs = [], []
    for rb in (int(r) for r in args.row_blocks.split(",")):
        p = task_peaks(X, k, rb, 4)
        runs.append({"row_blocks": rb, **p})
        rows.append([rb, f"{p['row'] / 2**20:.2f}", f"{p['column'] / 2**20:.2f}", f"{p['any'] / 2**20:.2f}"])
        log(rows[-1])
    x_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    table = markdown_table(
        ["row blocks", "largest row task (MiB)", "largest column task (MiB)", "largest task of any kind (MiB)"], rows
    )
    md = (
        f"# Peak memory per task\n\n{m:,} x {n:,}, {X.nnz:,} non-zeros (Zipf items), k={k}, 4 column blocks, cd; "
        f"X {x_bytes / 2**20:.1f} MiB, W {m * k * 8 / 2**20:.1f} MiB, Hᵀ {n * k * 8 / 2**20:.1f} MiB.\n\n{table}\n\n"
        f"{format_machine(info)}\n"
    )
    print(md)
    write_results(args.out, "task-memory", md, {"machine": info, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
