"""Benchmark: factors in a factor store (``NMF`` / ``RatingsNMF(factor_store=...)``) against factors in memory.

(a) Per-iteration time. A sparse store X is generated block by block with
    ``m`` rows such that W (m x k float64) is ``--w-multiple`` times the total
    memory limit of a small cluster (``--workers`` x ``--memory-limit``); then,
    on that X, with ``dnmf.NMF(k, solver=--solver, init="random", tol=0)``:

    1. factors in the store, on the small cluster (W does not fit it);
    2. factors in memory, on a cluster of the same workers and threads with
       ``--big-memory`` per worker (large enough to hold them);
    3. factors in the store on that same large cluster (same machine state as 2).

    Reported: median per-iteration time (callback deltas; the first iteration,
    which also holds the setup, left out when there are more), its ratio to 2, peak worker RSS, pauses/restarts, completed.

    With ``--model ratings`` the fits are ``dnmf.RatingsNMF(k,
    feedback=--feedback, tol=0)`` ("als"), W is the users' state (m x (k+1)
    with the explicit model's biases) and X has ``--col-blocks`` column
    blocks (default 4: an item task holds its column band of X).

(b) Checkpoint write time at two sizes of m (``--ckpt-rows`` and 4x that),
    factors in memory (persisted on the large cluster; the checkpoint writes
    W and Hᵀ block by block) against factors in a store (the checkpoint pins a
    generation): ``dnmf.engine.checkpoint.Checkpointer.save``, the call the fit
    makes, timed ``--ckpt-repeat`` times (median).

    python benchmarks/bench_factor_store.py --quick      # W 1x of 1 x 400 MiB, 2 iterations
    python benchmarks/bench_factor_store.py              # W 3x of 1 x 400 MiB, 3 iterations (~15 min)

A worker process holds about 200 MiB before any task (Python, NumPy, SciPy,
scikit-learn, Dask, Zarr): below about 400 MiB per worker it is paused or
restarted by its own memory limit whatever the fit does, so the small cluster
is one 400 MiB worker rather than several smaller ones.

Writes ``factor_store.md`` and ``factor_store.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import format_machine, log, machine_info, markdown_table, median, write_results
from benchmarks.bench_out_of_core import Watcher, generated

MiB = 2**20


def _cluster(workers: int, memory_limit: int):
    from distributed import LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def _model(args, client, factor_store):
    import dnmf

    if args.model == "ratings":
        return dnmf.RatingsNMF(
            args.k,
            feedback=args.feedback,
            random_state=0,
            max_iter=args.iters,
            tol=0,
            client=client,
            factor_store=factor_store,
        )
    return dnmf.NMF(
        args.k,
        solver=args.solver,
        init="random",
        random_state=0,
        max_iter=args.iters,
        tol=0,
        client=client,
        factor_store=factor_store,
    )


def _width(args) -> int:
    """Columns of the state a factor store holds per row: k, plus the explicit RatingsNMF's bias."""
    return args.k + 1 if args.model == "ratings" and args.feedback == "explicit" else args.k


def _column_blocks(X, blocks: int):
    """X with its one column block cut into ``blocks`` (each read of a block generates it again)."""
    import dask.array as da

    if blocks <= 1:
        return X
    edges = np.linspace(0, X.shape[1], blocks + 1).astype(int)
    return da.concatenate([X[:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)


def timed_fit(client, X_path: str, args, memory_limit: int, factor_store: str | None) -> dict:
    """One fit of ``args.iters`` iterations; per-iteration times from the callback."""
    from sklearn.exceptions import ConvergenceWarning

    calls: list[float] = []
    res: dict = {"completed": False, "factor_store": factor_store is not None}
    pids = client.run(os.getpid)
    t0 = time.perf_counter()
    with Watcher(client, args.sample_interval) as watch:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = _model(args, client, factor_store)
                model.fit(
                    X_path, callback=lambda it, el, loss: calls.append(el) or log(f"  iteration {it}: {el:.2f} s")
                )
            res["completed"] = len(calls) == args.iters
            res["loss"] = float(model.loss_history_[-1])
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            log(f"FAILED: {res['error']}")
    res["wall_s"] = time.perf_counter() - t0
    summary = watch.summary(memory_limit)
    res["peak_rss"] = summary["peak_rss"]
    res["peak_rss_fraction"] = summary["peak_rss_fraction"]
    res["paused"] = summary["paused_samples"] > 0
    try:
        res["restarted"] = client.run(os.getpid) != pids or len(summary["pids_seen"]) > len(pids)
    except Exception:
        res["restarted"] = True
    if calls:
        deltas = [calls[0]] + [b - a for a, b in zip(calls, calls[1:], strict=False)]
        res["iter_s"] = deltas
        # Iteration 1's time also holds the setup (statistics, initialisation, the first generation).
        res["per_iter_s"] = median(deltas[1:] or deltas)
    return res


def per_iteration(args, base: str) -> dict:
    import dnmf

    total = args.workers * args.memory_limit
    width = _width(args)
    rows = math.ceil(args.w_multiple * total / (width * 8) / args.rows_per_block) * args.rows_per_block
    n_blocks = rows // args.rows_per_block
    out: dict = {"m": rows, "n": args.cols, "k": args.k, "W_bytes": rows * width * 8, "total_memory": total}
    out["model"] = args.model if args.model == "nmf" else f"ratings ({args.feedback})"
    out["W_multiple"] = out["W_bytes"] / total
    log(
        f"\n== (a) X {rows} x {args.cols}, {args.nnz_per_row} nnz/row; W {out['W_bytes'] / MiB:.0f} MiB "
        f"= {out['W_multiple']:.2f}x of {args.workers} x {args.memory_limit / MiB:.0f} MiB"
    )
    path = os.path.join(base, "x.zarr")
    t = time.perf_counter()
    X = generated(n_blocks, args.rows_per_block, args.cols, args.nnz_per_row * args.rows_per_block, "uniform", 0.9)
    dnmf.write_matrix(
        _column_blocks(X, args.col_blocks),
        path,
        scheduler="threads",
    )
    out["generate_s"] = time.perf_counter() - t
    from distributed import Client

    runs = {}
    if "store_small" in args.runs:
        with _cluster(args.workers, args.memory_limit) as cluster, Client(cluster, set_as_default=False) as client:
            log("-- store, small cluster")
            runs["store_small"] = timed_fit(client, path, args, args.memory_limit, os.path.join(base, "f-small"))
        shutil.rmtree(os.path.join(base, "f-small"), ignore_errors=True)
    with _cluster(args.workers, args.big_memory) as cluster, Client(cluster, set_as_default=False) as client:
        log("-- in memory, large cluster")
        runs["memory_big"] = timed_fit(client, path, args, args.big_memory, None)
        if "store_big" in args.runs:
            log("-- store, large cluster")
            runs["store_big"] = timed_fit(client, path, args, args.big_memory, os.path.join(base, "f-big"))
    shutil.rmtree(os.path.join(base, "f-big"), ignore_errors=True)
    out["runs"] = runs
    ref = runs["memory_big"].get("per_iter_s")
    for r in runs.values():
        r["vs_memory"] = r["per_iter_s"] / ref if ref and r.get("per_iter_s") else None
    return out


def checkpoint_times(args, base: str) -> dict:
    """Checkpointer.save at two sizes of m, factors in memory vs in a factor store."""
    import dask
    import dask.array as da
    from distributed import Client

    from dnmf.engine.checkpoint import Checkpointer, LoopState
    from dnmf.engine.runner import Runner
    from dnmf.storage import factors

    out: dict = {"sizes": []}
    n, k, block = args.cols, args.k, args.rows_per_block
    with _cluster(args.workers, args.big_memory) as cluster, Client(cluster, set_as_default=False) as client:
        runner = Runner(client)
        for rows in (args.ckpt_rows, 4 * args.ckpt_rows):
            W = da.random.default_rng(0).random((rows, k), chunks=(block, k))
            Ht = da.random.default_rng(1).random((n, k), chunks=(n, k))
            W, Ht = runner.persist(W, Ht)
            row: dict = {"m": rows, "W_bytes": rows * k * 8}
            mem, sto = [], []
            for r in range(args.ckpt_repeat):
                ck = Checkpointer(os.path.join(base, f"ck-mem-{rows}"), every=1, keep_last=2)
                t = time.perf_counter()
                ck.save(runner, W, Ht, LoopState(iteration=r + 1))
                mem.append(time.perf_counter() - t)
            # The same factors as a generation of a factor store (what a fit with factor_store= holds).
            root = os.path.join(base, f"f-{rows}")
            layout = factors.Layout.of(W, Ht)
            write = dask.delayed(factors.write_block)
            tasks = [
                write(root, 1, name, i, b)
                for name, A in (("W", W), ("Ht", Ht), ("HHt", da.zeros((k, k), chunks=(k, k))))
                for i, b in enumerate(A.to_delayed().ravel())
            ]
            client.compute(tasks, sync=True)
            del tasks
            factors.commit(root, 1, layout)
            Ws, Hs, _ = factors.open_generation(root, 1, layout)
            for r in range(args.ckpt_repeat):
                ck = Checkpointer(os.path.join(base, f"ck-store-{rows}"), every=1, keep_last=2)
                t = time.perf_counter()
                ck.save(runner, Ws, Hs, LoopState(iteration=r + 1))
                sto.append(time.perf_counter() - t)
            row.update(memory_s=mem, store_s=sto, memory_median_s=median(mem), store_median_s=median(sto))
            log(f"-- (b) m={rows}: checkpoint in memory {median(mem):.3f} s, in a store {median(sto):.4f} s")
            out["sizes"].append(row)
            del W, Ht
            for p in (f"ck-mem-{rows}", f"ck-store-{rows}", f"f-{rows}"):
                shutil.rmtree(os.path.join(base, p), ignore_errors=True)
    s0, s1 = out["sizes"]
    out["memory_growth"] = s1["memory_median_s"] / s0["memory_median_s"]
    out["store_growth"] = s1["store_median_s"] / s0["store_median_s"]
    return out


def _s(v, spec=".2f"):
    return "–" if v is None else f"{v:{spec}}"


def render(res: dict) -> str:
    lines = ["# Factors in a factor store vs in memory", "", format_machine(res["machine"]), ""]
    lines.append(
        f"Command: `{res['command']}`; load average before / after: {res['load_before']} / {res['load_after']}"
    )
    a = res.get("iterations")
    if a:
        lines += [
            "",
            f"## (a) Per iteration, {a.get('model', 'nmf')}: X {a['m']} x {a['n']}, k={a['k']}, "
            f"W {a['W_bytes'] / MiB:.0f} MiB = "
            f"{a['W_multiple']:.2f}x the small cluster's {a['total_memory'] / MiB:.0f} MiB",
            "",
        ]
        names = {
            "store_small": f"store, {res['config']['workers']} x {res['config']['memory_limit'] / MiB:.0f} MiB",
            "memory_big": f"in memory, {res['config']['workers']} x {res['config']['big_memory'] / MiB:.0f} MiB",
            "store_big": f"store, {res['config']['workers']} x {res['config']['big_memory'] / MiB:.0f} MiB",
        }
        rows = []
        for key, label in names.items():
            if key not in a["runs"]:
                continue
            r = a["runs"][key]
            rows.append(
                [
                    label,
                    "yes" if r["completed"] else f"no ({r.get('error', '')[:60]})",
                    _s(r.get("per_iter_s")),
                    ", ".join(f"{x:.1f}" for x in r.get("iter_s", [])),
                    _s(r.get("vs_memory")),
                    _s((r.get("peak_rss") or 0) / MiB, ".0f"),
                    "yes" if r.get("paused") else "no",
                    "yes" if r.get("restarted") else "no",
                ]
            )
        lines.append(
            markdown_table(
                [
                    "factors, cluster",
                    "completed",
                    "s / iteration (median)",
                    "iterations (s)",
                    "vs in memory",
                    "peak worker RSS (MiB)",
                    "paused",
                    "restarted",
                ],
                rows,
            )
        )
    b = res.get("checkpoints")
    if b:
        lines += ["", "## (b) Checkpoint write time (Checkpointer.save, median)", ""]
        rows = [
            [s["m"], _s(s["W_bytes"] / MiB, ".0f"), _s(s["memory_median_s"], ".3f"), _s(s["store_median_s"], ".4f")]
            for s in b["sizes"]
        ]
        lines.append(markdown_table(["m", "W (MiB)", "factors in memory (s)", "factors in a store (s)"], rows))
        lines += ["", f"4x m: in memory x{b['memory_growth']:.2f}, in a store x{b['store_growth']:.2f}."]
    return "\n".join(lines)


def parse_args(argv=None):
    from dask.utils import parse_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller: W 1x the memory, 2 iterations (explicit options win)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--memory-limit", default="400MiB", help="per worker of the small cluster")
    p.add_argument("--big-memory", default="5GiB", help="per worker of the large cluster (holds W in memory)")
    p.add_argument(
        "--w-multiple",
        type=float,
        default=None,
        help="W's bytes / the small cluster's total memory (default 3; quick 1)",
    )
    p.add_argument("--model", choices=["nmf", "ratings"], default="nmf", help="dnmf.NMF or dnmf.RatingsNMF")
    p.add_argument("--feedback", choices=["explicit", "implicit"], default="explicit", help="--model ratings")
    p.add_argument("--col-blocks", type=int, default=None, help="column blocks of X (default 1; ratings 4)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--solver", default="mu", help="solver of the fits (default mu: W's update is one gemm)")
    p.add_argument("--cols", type=int, default=2_000)
    p.add_argument("--nnz-per-row", type=int, default=2)
    p.add_argument("--rows-per-block", type=int, default=12_500)
    p.add_argument("--iters", type=int, default=None, help="iterations (default 3; quick 2)")
    p.add_argument("--ckpt-rows", type=int, default=None, help="m of (b)'s smaller size (default 500000; quick 200000)")
    p.add_argument("--ckpt-repeat", type=int, default=3)
    p.add_argument("--sections", default="iterations,checkpoints")
    p.add_argument(
        "--runs",
        default="store_small,memory_big,store_big",
        help="fits of (a): store_small, memory_big (always), store_big",
    )
    p.add_argument("--sample-interval", type=float, default=0.2)
    p.add_argument("--dir", default=None, help="where to write the stores (default: a new temporary directory)")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    q = args.quick
    args.memory_limit = parse_bytes(args.memory_limit)
    args.w_multiple = args.w_multiple or (1.0 if q else 3.0)
    args.big_memory = parse_bytes(args.big_memory)
    args.iters = args.iters or (2 if q else 3)
    args.ckpt_rows = args.ckpt_rows or (200_000 if q else 500_000)
    args.col_blocks = args.col_blocks or (4 if args.model == "ratings" else 1)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.runs = [s.strip() for s in args.runs.split(",") if s.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = machine_info()
    log(format_machine(info))
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None else " ".join(argv)
    res: dict = {
        "benchmark": "factor_store",
        "machine": info,
        "command": command,
        "config": dict(vars(args)),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    t0 = time.perf_counter()
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="dnmf-fstore-", dir=args.dir)
    try:
        if "iterations" in args.sections:
            res["iterations"] = per_iteration(args, base)
        if "checkpoints" in args.sections:
            res["checkpoints"] = checkpoint_times(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t0
    res["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md = render(res)
    paths = write_results(args.out, "factor_store", md, res)
    print(md)
    print(f"\nwrote {paths[0]} and {paths[1]} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
