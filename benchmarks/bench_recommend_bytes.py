"""Benchmark: bytes moved between workers by ``recommend_all`` and the ranking metrics.

A power-law ratings matrix (Zipf item popularity) is written to a dnmf store; a model's
factors (W users x k in memory, H k x items) score every user against every item on a
``LocalCluster`` of 2 and 4 worker processes (1 thread each):

- ``recommend_all(factors, n, exclude=store)``: the top-n of every user, leaving out the
  items the user rated (read from the store); the lists are persisted on the workers;
- ``ranking_metrics(factors, test=store, k=n)``: precision/NDCG over the same store.

W is split into user blocks of ``dnmf.recommend.factors.USER_BLOCK`` rows and scattered, each
worker holding a contiguous range. With the placement on (default) the reads of a user
block's rows of the store take W's block as an input, so the scheduler runs them where
that block is; off (the Dask config key ``dnmf.placement = False``) a read has no input
and runs wherever a thread is free, and its rows then travel to W's block.

Reported per run (medians over ``--repeat``): bytes sent between workers
(distributed's counter ``transfer_outgoing_bytes_total``, summed over workers) and
seconds, next to the prediction for the placed scheme: every worker that holds user
blocks but one receives H's columns (and the item biases) once,
``(holders - 1) x (k + 1) x items x 8`` bytes; the merge of a user block's lists runs
where they are, and the metrics' sums are a few numbers per user block. What the counter
shows above that is the store's rows or W's blocks moving.

    python benchmarks/bench_recommend_bytes.py            # 400,000 x 20,000, 4M ratings, k = 32
    python benchmarks/bench_recommend_bytes.py --quick    # 200,000 x 4,000, 1M ratings

Writes ``recommend_bytes.md`` and ``recommend_bytes.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    format_machine,
    log,
    machine_info,
    make_zipf_csr,
    markdown_table,
    median,
    run_footer,
    write_results,
)

MiB = 2**20


def _sent(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def measure(client, job, repeat: int) -> dict:
    """Median bytes between workers and seconds of ``job()`` (a compute on the cluster)."""
    sent, secs = [], []
    for _ in range(repeat):
        before = _sent(client)
        t0 = time.perf_counter()
        job()
        secs.append(time.perf_counter() - t0)
        sent.append(_sent(client) - before)
    return {"bytes": median(sent), "seconds": median(secs)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=400_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--per-user", type=int, default=10, help="ratings per user")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--row-blocks", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="200,000 x 4,000, 1M ratings")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.items, args.per_user, args.row_blocks = 200_000, 4_000, 5, 8

    import dask
    from distributed import Client, LocalCluster, wait

    import dnmf
    from dnmf.recommend import Factors, recommend_all
    from dnmf.recommend.evaluation import ranking_metrics
    from dnmf.recommend.factors import USER_BLOCK

    warnings.filterwarnings("ignore", message=".*Port 8787.*")
    rng = np.random.default_rng(0)
    X = make_zipf_csr(args.users, args.items, args.users * args.per_user, seed=0)
    W = rng.random((args.users, args.k))
    H = rng.random((args.k, args.items))
    factors = Factors(W=W, H=H)
    rows = -(-args.users // args.row_blocks)
    results: dict = {"args": vars(args), "machine": machine_info(), "runs": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ratings.zarr")
        dnmf.write_matrix(X, path, chunks=(rows, args.items))
        log(f"store {path}: {X.shape}, {X.nnz} stored, {args.row_blocks} row blocks")
        for workers in args.workers:
            with (
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                for placement in (True, False):
                    with dask.config.set({"dnmf.placement": placement}):
                        store = dnmf.open_matrix(path)

                        def top(store=store):
                            # Persisted, not computed: the lists stay on the workers, so the
                            # counter sees only what moves between them.
                            idx, _ = recommend_all(factors, args.n, exclude=store)
                            wait(client.persist(idx))

                        def metrics(store=store):
                            ranking_metrics(factors, store, k=args.n)

                        for what, job in (("recommend_all", top), ("ranking_metrics", metrics)):
                            job()  # warm: scatter, imports
                            got = measure(client, job, args.repeat)
                            holders = min(workers, -(-args.users // USER_BLOCK))
                            predicted = (holders - 1) * (args.k + 1) * args.items * 8
                            run = {
                                "what": what,
                                "workers": workers,
                                "placement": placement,
                                "MiB": got["bytes"] / MiB,
                                "predicted MiB": predicted / MiB,
                                "seconds": got["seconds"],
                                "load": os.getloadavg()[0],
                            }
                            log(run)
                            results["runs"].append(run)
    results["elapsed_s"] = time.perf_counter() - started
    results["loadavg_at_end"] = os.getloadavg()
    headers = ["what", "workers", "placement", "MiB between workers", "predicted (placed)", "seconds", "load"]
    table = [
        [
            r["what"],
            r["workers"],
            "on" if r["placement"] else "off",
            f"{r['MiB']:.1f}",
            f"{r['predicted MiB']:.1f}",
            f"{r['seconds']:.2f}",
            f"{r['load']:.1f}",
        ]
        for r in results["runs"]
    ]
    md = (
        f"# Bytes between workers: recommend_all and ranking metrics\n\n"
        f"{args.users:,} users x {args.items:,} items, {X.nnz:,} ratings, k = {args.k}, n = {args.n}, "
        f"{args.row_blocks} row blocks; medians of {args.repeat}.\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + format_machine(results["machine"])
        + "\n"
        + run_footer(results)
    )
    write_results(args.out, "recommend_bytes", md, results)
    print(md)
    return results


if __name__ == "__main__":
    main()
