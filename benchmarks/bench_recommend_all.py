"""Benchmark: top-n for every user of a large model, block-wise on a LocalCluster.

One run (defaults: 1,000,000 users x 50,000 items, k = 32, n = 10):

1. starts ``LocalCluster(--workers, threads_per_worker=1, processes=True,
   memory_limit=--memory-limit)`` and generates, on the workers, W (users x k,
   row blocks of ``--user-block``; uniform) and the items each user has seen
   (``--seen`` per user, Zipf-like item popularity, CSR blocks chunked like W);
   H (k x items), item biases and a global mean are made here;
2. ``dnmf.recommend.recommend_all(..., exclude=seen)`` persisted on the
   cluster, timed, while every worker's RSS is sampled every 0.1 s;
3. checks ``--sample`` random users against a brute-force top-n computed
   here from their regenerated W rows and seen items (full scores of all
   items, stable sort, ties by index): item lists must be identical;
4. in this process, on one slab of scores (``topn.SLAB_ENTRIES`` entries),
   times the steps of a task (interleaved, medians of ``--repeat``): the
   float64 product + ``topn.select``; the float64 product + a plain
   ``np.argpartition`` and sort of the n (no tie order); and the path the
   tasks take for float64 factors, a float32 product + ``topn.select_refined``
   (exact float64 ranks); and prints their ratios.

The full W·H would take ``users x items x 8`` bytes (400 GB by default);
each task holds one slab of it at a time. Peak worker RSS is reported
against that and against the memory limit.

    python benchmarks/bench_recommend_all.py --quick     # 100k x 10k, < 1 minute
    python benchmarks/bench_recommend_all.py             # 1M x 50k, k = 32 (a few minutes on 2 cores)

Writes ``recommend_all.md`` and ``recommend_all.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    blas_threads,
    format_machine,
    log,
    machine_info,
    markdown_table,
    median,
    seconds,
    write_results,
)

MiB = 2**20


# --------------------------------------------------------------------------
# Data, generated per block from (seed, block) so that any block can be
# regenerated here for the brute-force check
# --------------------------------------------------------------------------


def make_W(seed: int, i: int, rows: int, k: int, dtype: str) -> np.ndarray:
    return np.random.default_rng([seed, 1, i]).random((rows, k)).astype(dtype)


def make_seen(seed: int, i: int, rows: int, n_items: int, per_user: int) -> sp.csr_matrix:
    """``per_user`` items per user (before de-duplication), popularity ~ rank^-0.9."""
    rng = np.random.default_rng([seed, 2, i])
    popularity = np.random.default_rng([seed, 3]).permutation(n_items)  # same item ranks in every block
    u = rng.random(rows * per_user)
    e = 1.0 - 0.9
    ranks = ((1.0 + u * ((n_items + 1.0) ** e - 1.0)) ** (1.0 / e)).astype(np.int64) - 1
    cols = popularity[np.clip(ranks, 0, n_items - 1)]
    user = np.repeat(np.arange(rows), per_user)
    X = sp.csr_matrix((np.ones(cols.size), (user, cols)), shape=(rows, n_items))
    X.sum_duplicates()
    return X


def even(size: int, block: int) -> tuple[int, ...]:
    parts = max(1, -(-size // block))
    base, extra = divmod(size, parts)
    return tuple(base + (1 if p < extra else 0) for p in range(parts))


def generated(name: str, func, chunks, meta, *args):
    """A Dask array whose block i is ``func(seed, i, rows_i, *args)``, made on the workers."""
    import dask.array as da

    graph = {(name, i, 0): (func, args[0], i, rows, *args[1:]) for i, rows in enumerate(chunks[0])}
    return da.Array(graph, name, chunks=chunks, meta=meta)


# --------------------------------------------------------------------------
# Worker memory
# --------------------------------------------------------------------------


def _rss(dask_worker=None):
    import psutil

    return psutil.Process().memory_info().rss


class Watcher:
    """Every worker's RSS, sampled in a thread; ``peak`` per worker."""

    def __init__(self, client, interval: float = 0.1):
        self.client, self.interval = client, interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for addr, rss in self.client.run(_rss).items():
                    self.peak[addr] = max(self.peak.get(addr, 0), rss)
                self.samples += 1
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------
# Brute force on a sample of users
# --------------------------------------------------------------------------


def brute_force(args, H, item_bias, global_mean, user_chunks, users):
    """Top-n of the given users from their regenerated rows: every item scored, stable sort."""
    offsets = np.concatenate([[0], np.cumsum(user_chunks)])
    idx = np.empty((users.size, args.n), dtype=np.int64)
    sc = np.empty((users.size, args.n))
    for b in np.unique(np.searchsorted(offsets, users, side="right") - 1):
        here = np.flatnonzero((users >= offsets[b]) & (users < offsets[b + 1]))
        local = users[here] - offsets[b]
        W = make_W(args.seed, int(b), user_chunks[b], args.k, args.dtype)[local]
        seen = make_seen(args.seed, int(b), user_chunks[b], args.items, args.seen)[local]
        S = (W @ H).astype(np.float64) + item_bias + global_mean
        S[seen.nonzero()] = -np.inf
        item = np.arange(args.items)
        for t, row in zip(here, S, strict=True):
            order = np.lexsort((item, -row))[: args.n]
            idx[t], sc[t] = order, row[order]
    return idx, sc


# --------------------------------------------------------------------------
# Kernel costs on one slab, in this process
# --------------------------------------------------------------------------


def slab_costs(args, H) -> dict:
    """Medians of the steps of one task's slab, float64 factors: the plain and the screened path."""
    from dnmf.recommend import kernels as topn

    cols = min(args.item_block, args.items)
    rows = max(1, topn.SLAB_ENTRIES // cols)
    W = make_W(args.seed, 0, rows, args.k, "float64")
    Hj = np.ascontiguousarray(H[:, :cols], dtype=np.float64)
    W32, H32 = W.astype(np.float32), Hj.astype(np.float32)
    bound = topn.score_error_bound(W, Hj)
    S, S32 = W @ Hj, W32 @ H32
    item = np.arange(cols)

    def argpartition():
        part = np.argpartition(-S, args.n - 1, axis=1)[:, : args.n]
        vals = np.take_along_axis(S, part, axis=1)
        return np.take_along_axis(part, np.argsort(-vals, axis=1), axis=1)

    steps = {
        "product64": lambda: W @ Hj,
        "select": lambda: topn.select(S, args.n, item),
        "argpartition": argpartition,
        "product32": lambda: W32 @ H32,
        "select_refined": lambda: topn.select_refined(S32, args.n, item, W, Hj, bound),
    }
    assert np.array_equal(topn.select(S, args.n, item)[0], steps["select_refined"]()[0])
    times: dict[str, list[float]] = {name: [] for name in steps}
    with blas_threads(1):  # as on a worker
        for _ in range(args.repeat):  # interleaved: the machine's load hits every step alike
            for name, fn in steps.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    out = {"rows": rows, "cols": cols}
    out.update({name: median(v) for name, v in times.items()})
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seen", type=int, default=20, help="items seen per user (excluded)")
    p.add_argument("--user-block", type=int, default=65_536)
    p.add_argument("--item-block", type=int, default=8192)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="of W and H")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--sample", type=int, default=300, help="users checked against brute force")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="100k users x 10k items")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.items = 100_000, 10_000

    import dask
    import scipy.sparse as _sp
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster, wait

    from dnmf.recommend import factors as rec
    from dnmf.recommend import kernels as topn

    info = machine_info()
    log(format_machine(info))
    rng = np.random.default_rng([args.seed, 4])
    H = rng.random((args.k, args.items)).astype(args.dtype)
    item_bias = rng.normal(scale=0.1, size=args.items)
    global_mean = 3.5
    user_chunks = even(args.users, args.user_block)
    res: dict = {"config": vars(args).copy(), "machine": info}

    log(f"slab kernel costs ({args.repeat} repeats)...")
    res["slab"] = slab_costs(args, H)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=args.memory_limit,
            dashboard_address=None,
        )
        client = Client(cluster)
    try:
        t = time.perf_counter()
        W = generated(
            "bench-W",
            make_W,
            (user_chunks, (args.k,)),
            np.empty((0, 0), dtype=args.dtype),
            args.seed,
            args.k,
            args.dtype,
        )
        seen = generated(
            "bench-seen",
            make_seen,
            (user_chunks, (args.items,)),
            _sp.csr_matrix((0, 0)),
            args.seed,
            args.items,
            args.seen,
        )
        W, seen = client.persist([W, seen])
        wait([W, seen])
        res["generate_s"] = time.perf_counter() - t
        res["seen_nnz"] = int(sum(client.gather(client.map(lambda b: b.nnz, client.futures_of(seen)))))
        base = client.run(_rss)
        log(
            f"data on the workers in {res['generate_s']:.1f} s; seen entries {res['seen_nnz']:,}; "
            f"worker RSS {', '.join(f'{v / MiB:.0f}' for v in base.values())} MiB"
        )

        factors = rec.Factors(W=W, H=H, item_bias=item_bias, global_mean=global_mean)
        idx, sc = rec.recommend_all(factors, args.n, exclude=seen, item_block=args.item_block, client=client)
        n_tasks = len(idx.__dask_graph__())
        load_before = os.getloadavg()
        with Watcher(client) as watch:
            t = time.perf_counter()
            idx, sc = client.persist([idx, sc])
            wait([idx, sc])
            res["recommend_all_s"] = time.perf_counter() - t
        res["loadavg_after"] = os.getloadavg()
        res["loadavg_before"] = load_before
        res["peak_rss"] = watch.peak
        res["baseline_rss"] = base
        res["rss_samples"] = watch.samples
        res["graph_tasks"] = n_tasks
        res["user_blocks"] = len(user_chunks)
        res["item_blocks"] = -(-args.items // args.item_block)
        log(f"recommend_all: {res['recommend_all_s']:.1f} s, peak worker RSS {max(watch.peak.values()) / MiB:.0f} MiB")

        users = np.sort(np.random.default_rng([args.seed, 5]).choice(args.users, args.sample, replace=False))
        got_idx, got_sc = dask.compute(idx[users], sc[users])
        t = time.perf_counter()
        ref_idx, ref_sc = brute_force(args, H, item_bias, global_mean, user_chunks, users)
        res["brute_force_s"] = time.perf_counter() - t
        res["sample_users"] = int(users.size)
        res["sample_exact"] = int((got_idx == ref_idx).all(axis=1).sum())
        res["sample_max_score_diff"] = float(np.max(np.abs(got_sc - ref_sc)))
        log(
            f"sample: {res['sample_exact']}/{users.size} users with identical lists, "
            f"max |score diff| {res['sample_max_score_diff']:.2e}"
        )
    finally:
        client.close()
        cluster.close()

    limit = parse_bytes(args.memory_limit)
    full = args.users * args.items * 8
    peak = max(res["peak_rss"].values())
    s = res["slab"]
    flops = 2.0 * args.users * args.items * args.k
    rows = [
        ["users x items, k, n", f"{args.users:,} x {args.items:,}, {args.k}, {args.n} ({args.dtype})"],
        ["seen items excluded", f"{res['seen_nnz']:,}"],
        [
            "user blocks x item blocks (graph tasks)",
            f"{res['user_blocks']} x {res['item_blocks']} ({res['graph_tasks']:,})",
        ],
        ["cluster", f"{args.workers} worker processes x 1 thread, memory limit {args.memory_limit} each"],
        ["recommend_all time", seconds(res["recommend_all_s"])],
        ["users / s", f"{args.users / res['recommend_all_s']:,.0f}"],
        ["effective GFLOP/s of the scores (2·m·n·k / time)", f"{flops / res['recommend_all_s'] / 1e9:.1f}"],
        ["peak worker RSS (max over workers)", f"{peak / MiB:,.0f} MiB ({peak / limit:.0%} of the limit)"],
        ["worker RSS before the run", ", ".join(f"{v / MiB:,.0f}" for v in res["baseline_rss"].values()) + " MiB"],
        ["full W·H if formed (float64)", f"{full / 2**30:,.0f} GiB ({full / peak:,.0f}x the peak RSS)"],
        [
            "largest score slab in a task",
            f"{topn.SLAB_ENTRIES:,} scores ({topn.SLAB_ENTRIES * 8 / MiB:.0f} MiB as float64)",
        ],
        [
            "sample vs brute force",
            (
                f"{res['sample_exact']}/{res['sample_users']} identical lists; "
                f"max |score diff| {res['sample_max_score_diff']:.1e}"
            ),
        ],
        [
            "load average before / after",
            " / ".join(" ".join(f"{x:.2f}" for x in v) for v in (res["loadavg_before"], res["loadavg_after"])),
        ],
    ]
    plain = s["product64"] + s["select"]
    screened = s["product32"] + s["select_refined"]
    naive = s["product64"] + s["argpartition"]
    slab_rows = [
        ["float64 product W_slab @ H_block", seconds(s["product64"]), ""],
        ["+ topn.select of the float64 scores", seconds(s["select"]), seconds(plain)],
        ["+ np.argpartition + sort of the n (no tie order)", seconds(s["argpartition"]), seconds(naive)],
        ["float32 product (screen)", seconds(s["product32"]), ""],
        ["+ topn.select_refined (float64 ranks; used)", seconds(s["select_refined"]), seconds(screened)],
    ]
    md = "\n\n".join(
        [
            "# recommend_all: top-n for every user, block-wise",
            "```\n" + format_machine(info) + "\n```",
            markdown_table(["", "value"], rows, align="ll"),
            (
                f"Steps of one task's slab ({s['rows']} users x {s['cols']} items, float64 factors, one thread, "
                f"this process), median of {args.repeat} interleaved runs. Plain path / screened path = "
                f"{plain / screened:.2f}; argpartition path / screened path = {naive / screened:.2f}; "
                f"select_refined / float32 product = {s['select_refined'] / s['product32']:.2f}."
            ),
            markdown_table(["step", "median", "path total"], slab_rows),
        ]
    )
    print(md)
    md_path, _ = write_results(args.out, "recommend_all", md, res)
    log(f"wrote {md_path}")
    return res


if __name__ == "__main__":
    main()
