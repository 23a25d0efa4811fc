"""Benchmark: the cost model of one NMF iteration (``dnmf.engine.cost``) against measured fits.

1. Measures this machine's per-core rates (``Rates``): both sparse products per
   ``nnz·k``, one HALS sweep and one Gram per ``row·k²``, each the median of 5
   single-thread runs, and the distributed scheduler's time per task (a graph
   of trivial tasks on a 1-worker cluster).
2. Fits power-law sparse matrices (Zipf-popular columns) with ``solver="cd"``,
   ``init="random"``, on the local threads and on ``LocalCluster``s of 2 and 4
   worker processes × 1 thread, and records per iteration (medians of
   ``--iters`` iterations after 2): seconds, bytes between workers
   (distributed's ``transfer_outgoing_bytes_total``) and tasks.
3. Prints the model's prediction next to each measurement, with the rates of
   step 1, and the prediction for sizes no machine here holds: 1B non-zeros,
   100M × 10M, k = 64, on 64 workers × 8 cores at 10 Gb/s, at the blocking
   ``recommend_blocking`` picks.

    python benchmarks/bench_cost_model.py           # 200k x 20k, ~1.2M nnz, k = 32
    python benchmarks/bench_cost_model.py --quick   # smaller, about 2 minutes

Writes ``cost-model.md`` and ``.json`` under ``--out`` (bench-results/). On a
shared machine the seconds are only as good as the load allows (printed);
bytes and tasks do not depend on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import format_machine, log, machine_info, markdown_table, write_results
from benchmarks.bench_bytes import powerlaw, step_tasks, worker_ranges


def _median_seconds(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_rates(X, k: int):
    """This machine's ``Rates``: single-thread products, HALS sweep, Gram, and scheduler time per task."""
    from threadpoolctl import threadpool_limits

    from dnmf.engine.cost import Rates
    from dnmf.nmf import kernels

    rng = np.random.default_rng(0)
    m, n = X.shape
    W, Ht = rng.random((m, k)), rng.random((n, k))
    with threadpool_limits(1):
        sparse = _median_seconds(lambda: X @ Ht) + _median_seconds(lambda: X.T @ W)
        gram = _median_seconds(lambda: W.T @ W)
        G, XHt = Ht.T @ Ht, X @ Ht
        perm = np.arange(k)
        update = _median_seconds(lambda: kernels.cd_update(W.copy(), G, XHt, 0.0, 0.0, perm, n_inner=1, inner_tol=0.1))
    task_seconds = _scheduler_seconds_per_task()
    return Rates(
        sparse=sparse / (X.nnz * k),
        update=update / (m * k * k),
        gram=gram / (m * k * k),
        task_seconds=task_seconds,
    )


def _inc(x):
    return x + 1


def _scheduler_seconds_per_task(n_tasks: int = 2000) -> float:
    """Wall time per task of a chain-free graph of trivial tasks on 1 worker × 1 thread."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cl,
        Client(cl) as client,
    ):
        client.gather(client.map(_inc, range(100)))  # warm-up
        t0 = time.perf_counter()
        client.gather(client.map(_inc, range(n_tasks), pure=False))
        return (time.perf_counter() - t0) / n_tasks


def _sent(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def measure_fit(X, k: int, chunks, iters: int, client=None) -> dict:
    import dnmf

    marks: list[tuple[float, int]] = []

    def callback(iteration, elapsed, loss):
        marks.append((time.perf_counter(), _sent(client) if client is not None else 0))

    model = dnmf.NMF(
        k, solver="cd", init="random", random_state=0, max_iter=iters + 2, tol=0, chunks=chunks, client=client
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, callback=callback)
    t = np.diff([mk[0] for mk in marks[1:]])
    sent = np.diff([mk[1] for mk in marks[1:]])
    return {"seconds": float(np.median(t)), "bytes": float(np.median(sent))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    from dnmf.engine.cost import Cluster, predict, recommend_blocking, zipf_touched

    m, n, per_row, rb, cb = (40_000, 8_000, 6, 16, 4) if args.quick else (200_000, 20_000, 6, 16, 4)
    k = args.k
    X = powerlaw(m, n, per_row)
    chunks = (-(-m // rb), -(-n // cb))
    info = machine_info()
    log(format_machine(info))
    rates = measure_rates(X, k)
    log(f"rates: {rates}")
    rows, runs = [], []
    for workers in (1, 2, 4):
        client = cluster = None
        if workers > 1:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        try:
            measured = measure_fit(X, k, chunks, args.iters, client)
        finally:
            if client is not None:
                client.close()
                cluster.close()
        # Touched fraction per worker, from the data (the model's input).
        touched = []
        start = 0
        for size in worker_ranges(rb, workers):
            touched.append(np.unique(X[start * chunks[0] : (start + size) * chunks[0]].indices).size / n)
            start += size
        cores = 2 if workers == 1 else 1  # threads: the machine's 2 cores; processes: 1 thread each
        machine = Cluster(workers=workers, cores=cores, bandwidth=1e9, latency=2e-4)
        r = rates if workers > 1 else type(rates)(rates.sparse, rates.update, rates.gram, 50e-6)
        p = predict(X.nnz, m, n, k, rb, cb, machine, touched=float(np.mean(touched)), rates=r)
        tasks = step_tasks(X, chunks[0], chunks[1], k, workers, workers > 1)
        run = dict(
            workers=workers,
            measured_seconds=measured["seconds"],
            predicted_seconds=p.seconds,
            measured_bytes=measured["bytes"],
            predicted_bytes=p.bytes_per_worker * workers,
            graph_tasks=tasks,
            predicted_tasks=p.tasks,
            touched=float(np.mean(touched)),
        )
        runs.append(run)
        rows.append(
            [
                "threads (2)" if workers == 1 else f"{workers} processes × 1 thread",
                f"{run['measured_seconds']:.3f}",
                f"{run['predicted_seconds']:.3f}",
                f"{run['measured_bytes'] / 2**20:.1f}",
                f"{run['predicted_bytes'] / 2**20:.1f}",
                run["graph_tasks"],
                run["predicted_tasks"],
            ]
        )
        log(rows[-1])
    big = Cluster(workers=64, cores=8, memory=64 * 2**30, bandwidth=1.25e9, latency=1e-4)
    nnz, bm, bn, bk = 1e9, 100e6, 10e6, 64
    t_big = zipf_touched(nnz / big.workers, int(bn))
    R, C, pb = recommend_blocking(nnz, bm, bn, bk, big, touched=t_big, rates=rates)
    prediction = {
        "touched": t_big,
        "row_blocks": R,
        "col_blocks": C,
        "seconds": pb.seconds,
        "row_seconds": pb.row_seconds,
        "col_seconds": pb.col_seconds,
        "network_seconds": pb.network_seconds,
        "schedule_seconds": pb.schedule_seconds,
        "bytes_per_worker": pb.bytes_per_worker,
        "tasks": pb.tasks,
        "memory_per_worker": pb.memory_per_worker,
    }
    load = os.getloadavg()
    table = markdown_table(
        [
            "where",
            "s / iteration, measured",
            "model",
            "MiB between workers, measured",
            "model",
            "tasks in the step graph",
            "model",
        ],
        rows,
    )
    md = (
        f"# Cost model vs measured\n\n{m:,} x {n:,}, {X.nnz:,} non-zeros (Zipf items), k={k}, {rb} x {cb} blocks, "
        f"cd, medians of {args.iters} iterations after 2.\n\nRates (per core): sparse products "
        f"{rates.sparse * 1e9:.2f} ns per nnz·k, HALS sweep {rates.update * 1e9:.2f} ns and Gram "
        f"{rates.gram * 1e9:.3f} ns per row·k², scheduler {rates.task_seconds * 1e3:.2f} ms per task.\n\n{table}\n\n"
        f"Prediction: 1B non-zeros, 100M x 10M, k = 64, 64 workers x 8 cores, 64 GiB each, 10 Gb/s, "
        f"Zipf(1.1) items ({t_big:.1%} of the columns touched per worker): blocking {R} x {C}, "
        f"{pb.seconds:.1f} s per iteration (row stage {pb.row_seconds:.1f}, column stage {pb.col_seconds:.1f}, "
        f"network {pb.network_seconds:.1f}, scheduler {pb.schedule_seconds:.1f}), "
        f"{pb.bytes_per_worker / 2**30:.2f} GiB sent per worker, {pb.tasks:,} tasks, "
        f"{pb.memory_per_worker / 2**30:.1f} GiB per worker.\n\n"
        f"{format_machine(info)}\nload average at the end: {' '.join(f'{x:.2f}' for x in load)}\n"
    )
    print(md)
    write_results(
        args.out,
        "cost-model",
        md,
        {"machine": info, "rates": rates.__dict__, "runs": runs, "prediction": prediction, "load_end": load},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
