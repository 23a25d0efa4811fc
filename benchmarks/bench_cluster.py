"""Benchmark: threads vs worker processes per NMF iteration, and the fixed cost of an iteration.

For each case (power-law sparse X, ``make_zipf_csr``: Zipf-popular rows and items), k = 32,
``init="random"``, ``tol=0``, both solvers (``cd``, ``mu``), one run interleaves:

- the bare one-thread pass of one iteration's products (``X·Hᵀ``, ``Σ_i X_iᵀ·W_i`` over dnmf's
  row blocks, both Grams), sampled before and after each pair of fits;
- a fit on the local threads (2 threads);
- the same fit on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.

Per fit, over iterations 2..N (callback deltas): the median seconds per iteration, the CPU
seconds per iteration of the worker processes and of the driver's process (on a LocalCluster it
also runs the scheduler; on the threads it runs everything), read at iterations 1 and N, and per
iteration the driver's calls into the scheduler (round trips: ``Client.persist``,
``Client.compute``, ``Client.gather``, ``Client.scatter``, ``Client.who_has`` — each waits
for, or sends, one message exchange), the tasks of the step graph, and the seconds the driver
spends building the graph and handing it to the scheduler (``step.build`` + the persist
call), i.e. client-side fixed cost (on a Client; on the threads the persist call runs the
step itself, so only the processes' figure is reported). Ratios are medians of the
``--repeats`` repeats, within this run: threads / bare, processes / bare, processes / threads.

    python benchmarks/bench_cluster.py                       # both cases of issue 14
    python benchmarks/bench_cluster.py --cases narrow --iters 6 --repeats 3
    python benchmarks/bench_cluster.py --quick               # small, about a minute
    python benchmarks/bench_cluster.py --cases narrow --compare-pipeline   # dnmf.pipeline off too
    python benchmarks/bench_cluster.py --cases narrow --compare-allocator  # workers' allocator as Dask sets it too
    python benchmarks/bench_cluster.py --cases narrow --compare-monitors   # distributed's monitors as it sets them too

Cases: ``narrow`` 200,000 × 20,000, 7.3M nnz; ``wide`` 2,000,000 × 500,000, 18.2M nnz;
``small`` 200,000 × 20,000, 1.1M nnz (``--quick``: 20,000 × 4,000, 0.2M nnz). ``--rows-per-block``
overrides dnmf's own row blocking (e.g. 3125 for 64 row blocks of the small case).
``--compare-pipeline`` fits on the processes with the Dask config key ``dnmf.pipeline`` true
(each iteration submitted before the previous one's scalars are back), and adds, per repeat,
the same fit with it false; without it the key keeps its default ("auto").
``--compare-allocator`` adds, per repeat, a fit on the processes with the Dask config key
``dnmf.worker-allocator`` false (the workers' glibc thresholds as distributed starts them, see
``dnmf.engine.allocator``); the other fits keep its default ("auto").
``--compare-monitors`` adds, per repeat, a fit on the processes with the Dask config key
``dnmf.quiet-monitors`` false (distributed's event-loop ticks and profile at its own intervals,
see ``dnmf.engine.monitors``); the other fits keep its default (true).
``--client-latency-ms D`` connects the processes' Client through a proxy that delays every
message by D ms each way (``benchmarks/_latency.py``): a driver far from its cluster, as a
notebook with a cluster in a data centre; the workers still talk to the scheduler directly.
Writes ``cluster.md`` and ``cluster.json`` under ``--out`` (bench-results/). The load
average (``uptime``) is recorded before and after each case: on a shared machine the
process/thread ratio is sensitive to it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import resource
import sys
import time
import warnings

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    bare_pass,
    format_machine,
    log,
    machine_info,
    make_zipf_csr,
    markdown_table,
    median,
    seconds,
    write_results,
)

CASES = {
    "narrow": dict(m=200_000, n=20_000, nnz=7_300_000),
    "wide": dict(m=2_000_000, n=500_000, nnz=18_200_000),
    "small": dict(m=200_000, n=20_000, nnz=1_100_000),
    "quick": dict(m=20_000, n=4_000, nnz=200_000),
}
#: Client methods counted as round trips to the scheduler.
CALLS = ("persist", "compute", "gather", "scatter", "who_has")


class Meter:
    """Counts the driver's Client calls and times graph building + submission, per iteration."""

    def __init__(self):
        self.calls = 0
        self.build_s = 0.0
        self.tasks = 0
        self._undo: list = []

    def __enter__(self):
        from distributed import Client

        from dnmf.engine.runner import Runner
        from dnmf.nmf.step import NMFStep

        def count(cls, name):
            fn = getattr(cls, name)

            def wrapped(client, *a, __fn=fn, **kw):
                self.calls += 1
                return __fn(client, *a, **kw)

            setattr(cls, name, wrapped)
            self._undo.append((cls, name, fn))

        for name in CALLS:
            count(Client, name)
        build, persist = NMFStep.build, Runner.persist

        def timed_build(step, state, iteration):
            t = time.perf_counter()
            out = build(step, state, iteration)
            self.build_s += time.perf_counter() - t
            _, scalars = out
            token = scalars.name.rsplit("-", 1)[-1]  # every layer of one step's graph carries its token
            self.tasks = sum(len(layer) for name, layer in scalars.__dask_graph__().layers.items() if token in name)
            return out

        def timed_persist(runner, *arrays):
            t = time.perf_counter()
            out = persist(runner, *arrays)
            self.build_s += time.perf_counter() - t
            return out

        NMFStep.build = timed_build
        Runner.persist = timed_persist
        self._undo += [(NMFStep, "build", build), (Runner, "persist", persist)]
        return self

    def __exit__(self, *exc):
        for cls, name, fn in reversed(self._undo):
            setattr(cls, name, fn)

    def snapshot(self) -> tuple[int, float]:
        return self.calls, self.build_s


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fit(
    X, k: int, solver: str, iters: int, client=None, chunks="auto", pipeline: bool | None = None, config=None
) -> dict:
    import dask

    import dnmf

    marks: list = []
    cpu: list = []  # (driver, workers) at iterations 1 and N: two client.run calls per fit
    with Meter() as meter:

        def callback(iteration, elapsed, loss):
            marks.append((elapsed, *meter.snapshot(), meter.tasks))
            if iteration in (1, iters):
                cpu.append((cpu_seconds(), sum(client.run(cpu_seconds).values()) if client is not None else 0.0))

        model = dnmf.NMF(
            k, solver=solver, init="random", tol=0.0, max_iter=iters, random_state=0, client=client, chunks=chunks
        )
        settings = dict(config or {}, **({} if pipeline is None else {"dnmf.pipeline": pipeline}))
        with warnings.catch_warnings(), dask.config.set(settings):
            warnings.simplefilter("ignore")
            model.fit(X, callback=callback)
    t = np.array([m[0] for m in marks])
    calls = np.array([m[1] for m in marks])
    build = np.array([m[2] for m in marks])
    n = len(marks) - 1  # iterations 2..N
    return {
        "per_iter_s": median(np.diff(t)),
        "iter_times": np.diff(t).tolist(),
        "calls_per_iter": float((calls[-1] - calls[0]) / n),
        "build_per_iter_s": float((build[-1] - build[0]) / n),
        "driver_cpu_per_iter_s": float((cpu[-1][0] - cpu[0][0]) / n),
        "workers_cpu_per_iter_s": float((cpu[-1][1] - cpu[0][1]) / n),
        "tasks_per_iter": int(marks[-1][3]),
        "loss": float(model.reconstruction_err_),
    }


def run_case(
    name: str,
    spec: dict,
    k: int,
    iters: int,
    repeats: int,
    solvers,
    seed: int,
    processes: bool = True,
    rows_per_block: int | None = None,
    compare_pipeline: bool = False,
    client_latency_ms: float = 0.0,
    compare_allocator: bool = False,
    compare_monitors: bool = False,
) -> dict:
    from distributed import Client, LocalCluster

    from benchmarks.bench_engine import dnmf_row_chunks
    from dnmf.base.inputs import memory_chunks

    t = time.perf_counter()
    X = make_zipf_csr(spec["m"], spec["n"], spec["nnz"], seed=seed)
    log(
        f"[{name}] {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz / 1e6:.1f}M nnz, generated in {seconds(time.perf_counter() - t)}"
    )
    chunks = dnmf_row_chunks(X) if rows_per_block is None else memory_chunks(rows_per_block, X.shape, 0)[0]
    fit_chunks = "auto" if rows_per_block is None else rows_per_block
    bare = bare_pass(X, k, chunks)
    bare()  # warm
    entry = dict(
        spec,
        name=name,
        k=k,
        iters=iters,
        repeats=repeats,
        row_blocks=len(chunks),
        client_latency_ms=client_latency_ms,
        load=[os.getloadavg()[0]],
    )
    runs: dict = {
        s: {"threads": [], "processes": [], "unpipelined": [], "untuned": [], "loud": [], "bare": []} for s in solvers
    }
    with contextlib.ExitStack() as stack:
        client = None
        if processes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=2,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                )
            address = cluster.scheduler_address
            if client_latency_ms:
                from benchmarks._latency import DelayProxy

                host, port = address.rsplit("/", 1)[-1].rsplit(":", 1)
                address = DelayProxy(host, int(port), client_latency_ms / 1000).address
            client = stack.enter_context(Client(address, set_as_default=False))
            fit(X, k, solvers[0], 2, client=client, chunks=fit_chunks)  # warm the workers (imports, first scatter)
        fit(X, k, solvers[0], 2, chunks=fit_chunks)
        for r in range(repeats):
            for s in solvers:
                runs[s]["bare"].append(bare())
                runs[s]["threads"].append(fit(X, k, s, iters, chunks=fit_chunks))
                # Without processes, the threads' numbers stand in (ratio 1): the run is for threads only.
                # dnmf.pipeline "auto" unless compared: then on here, off in the extra fit.
                piped = True if compare_pipeline else None
                runs[s]["processes"].append(
                    fit(X, k, s, iters, client=client, chunks=fit_chunks, pipeline=piped)
                    if processes
                    else runs[s]["threads"][-1]
                )
                if processes and compare_pipeline:
                    runs[s]["unpipelined"].append(fit(X, k, s, iters, client=client, chunks=fit_chunks, pipeline=False))
                if processes and compare_allocator:
                    # Undone at the start of this fit, tuned again at the start of the next.
                    runs[s]["untuned"].append(
                        fit(X, k, s, iters, client=client, chunks=fit_chunks, config={"dnmf.worker-allocator": False})
                    )
                if processes and compare_monitors:
                    # Undone at the start of this fit, slowed again at the start of the next.
                    runs[s]["loud"].append(
                        fit(X, k, s, iters, client=client, chunks=fit_chunks, config={"dnmf.quiet-monitors": False})
                    )
                runs[s]["bare"].append(bare())
                th, pr = runs[s]["threads"][-1], runs[s]["processes"][-1]
                unpiped = (
                    f", not pipelined {seconds(runs[s]['unpipelined'][-1]['per_iter_s'])}/it"
                    if runs[s]["unpipelined"]
                    else ""
                )
                if runs[s]["untuned"]:
                    unpiped += f", allocator not tuned {seconds(runs[s]['untuned'][-1]['per_iter_s'])}/it"
                if runs[s]["loud"]:
                    lo = runs[s]["loud"][-1]
                    unpiped += (
                        f", monitors as distributed sets them {seconds(lo['per_iter_s'])}/it "
                        f"({lo['workers_cpu_per_iter_s']:.2f} + {lo['driver_cpu_per_iter_s']:.2f} CPU s)"
                    )
                log(
                    f"[{name}] {s} #{r + 1}: threads {seconds(th['per_iter_s'])}/it ({th['driver_cpu_per_iter_s']:.2f} "
                    f"CPU s), processes {seconds(pr['per_iter_s'])}/it ({pr['workers_cpu_per_iter_s']:.2f} + "
                    f"{pr['driver_cpu_per_iter_s']:.2f} CPU s, {pr['calls_per_iter']:.1f} calls, "
                    f"{pr['tasks_per_iter']} tasks, build {seconds(pr['build_per_iter_s'])}){unpiped}, "
                    f"bare {seconds(runs[s]['bare'][-1])}, load {os.getloadavg()[0]:.1f}"
                )
                gc.collect()
    entry["load"].append(os.getloadavg()[0])
    entry["solvers"] = {}
    for s in solvers:
        bare_s = median(runs[s]["bare"])
        th = median([x["per_iter_s"] for x in runs[s]["threads"]])
        pr = median([x["per_iter_s"] for x in runs[s]["processes"]])
        last = runs[s]["processes"][-1]
        ratios = per_repeat_ratios(runs[s]["processes"], runs[s]["threads"])
        entry["solvers"][s] = {
            "bare_s": bare_s,
            "threads_s": th,
            "processes_s": pr,
            "threads_vs_bare": th / bare_s,
            "processes_vs_bare": pr / bare_s,
            "processes_vs_threads": median(ratios),
            # The machine is shared: single repeats spread widely around the median.
            "processes_vs_threads_range": (min(ratios), max(ratios)),
            "calls_per_iter": last["calls_per_iter"],
            "tasks_per_iter": last["tasks_per_iter"],
            "build_per_iter_s": median([x["build_per_iter_s"] for x in runs[s]["processes"]]),
            "threads_cpu_s": median([x["driver_cpu_per_iter_s"] for x in runs[s]["threads"]]),
            "workers_cpu_s": median([x["workers_cpu_per_iter_s"] for x in runs[s]["processes"]]),
            "driver_cpu_s": median([x["driver_cpu_per_iter_s"] for x in runs[s]["processes"]]),
            "pipelined_vs_not": median(
                [
                    p["per_iter_s"] / u["per_iter_s"]
                    for p, u in zip(runs[s]["processes"], runs[s]["unpipelined"], strict=False)
                ]
            )
            if runs[s]["unpipelined"]
            else None,
            "tuned_vs_not": median(
                [
                    p["per_iter_s"] / u["per_iter_s"]
                    for p, u in zip(runs[s]["processes"], runs[s]["untuned"], strict=False)
                ]
            )
            if runs[s]["untuned"]
            else None,
            "untuned_workers_cpu_s": median([x["workers_cpu_per_iter_s"] for x in runs[s]["untuned"]])
            if runs[s]["untuned"]
            else None,
            "quiet_vs_not": median(
                [p["per_iter_s"] / u["per_iter_s"] for p, u in zip(runs[s]["processes"], runs[s]["loud"], strict=False)]
            )
            if runs[s]["loud"]
            else None,
            "loud_vs_threads": median(per_repeat_ratios(runs[s]["loud"], runs[s]["threads"]))
            if runs[s]["loud"]
            else None,
            "loud_cpu_s": median([x["workers_cpu_per_iter_s"] + x["driver_cpu_per_iter_s"] for x in runs[s]["loud"]])
            if runs[s]["loud"]
            else None,
            "threads_build_per_iter_s": median([x["build_per_iter_s"] for x in runs[s]["threads"]]),
            "runs": runs[s],
        }
    return entry


def per_repeat_ratios(processes: list, threads: list) -> list[float]:
    """Each repeat's processes / threads seconds per iteration (the two fits ran back to back)."""
    return [p["per_iter_s"] / t["per_iter_s"] for p, t in zip(processes, threads, strict=True)]


def render(results: dict) -> str:
    rows = []
    for c in results["cases"]:
        for s, r in c["solvers"].items():
            rows.append(
                [
                    f"{c['m']:,} × {c['n']:,}, {c['nnz'] / 1e6:.1f}M nnz ({c['row_blocks']} row blocks)"
                    + (f", client {c['client_latency_ms']:g} ms away" if c.get("client_latency_ms") else ""),
                    s,
                    seconds(r["bare_s"]),
                    f"{seconds(r['threads_s'])} ({r['threads_vs_bare']:.2f}×)",
                    f"{seconds(r['processes_s'])} ({r['processes_vs_bare']:.2f}×)",
                    f"{r['processes_vs_threads']:.2f}× ({r['processes_vs_threads_range'][0]:.2f}–"
                    f"{r['processes_vs_threads_range'][1]:.2f})",
                    f"{r['threads_cpu_s']:.2f} / {r['workers_cpu_s']:.2f} + {r['driver_cpu_s']:.2f}",
                    "–" if r.get("pipelined_vs_not") is None else f"{r['pipelined_vs_not']:.2f}×",
                    "–"
                    if r.get("tuned_vs_not") is None
                    else f"{r['tuned_vs_not']:.2f}× (CPU {r['workers_cpu_s']:.2f} / {r['untuned_workers_cpu_s']:.2f})",
                    "–"
                    if r.get("quiet_vs_not") is None
                    else f"{r['quiet_vs_not']:.2f}× (CPU {r['workers_cpu_s'] + r['driver_cpu_s']:.2f} / "
                    f"{r['loud_cpu_s']:.2f}; not quiet: {r['loud_vs_threads']:.2f}× the threads)",
                    f"{r['calls_per_iter']:.1f}",
                    r["tasks_per_iter"],
                    seconds(r["build_per_iter_s"]),
                    f"{c['load'][0]:.1f} → {c['load'][1]:.1f}",
                ]
            )
    table = markdown_table(
        [
            "case",
            "solver",
            "bare pass (1 thread)",
            "threads (vs bare)",
            "2 processes (vs bare)",
            "processes / threads (repeats' range)",
            "CPU s / it: threads / workers + driver",
            "pipelined / not",
            "allocator tuned / not",
            "monitors quiet / not",
            "round trips / it",
            "tasks / it",
            "driver build+submit / it",
            "load",
        ],
        rows,
    )
    return f"# Threads vs processes per iteration\n\n{format_machine(results['machine'])}\n\n{table}\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="narrow,wide", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="the quick case only, few iterations")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--iters", type=int, default=7, help="iterations per fit (medians over 2..N)")
    p.add_argument("--repeats", type=int, default=2, help="fits per engine and solver, interleaved")
    p.add_argument("--solvers", default="cd,mu")
    p.add_argument("--threads-only", action="store_true", help="no LocalCluster: threads against the bare pass")
    p.add_argument("--rows-per-block", type=int, default=None, help="row blocking (default: dnmf's own)")
    p.add_argument("--compare-pipeline", action="store_true", help="also fit on the processes with dnmf.pipeline false")
    p.add_argument(
        "--compare-allocator",
        action="store_true",
        help="also fit on the processes with dnmf.worker-allocator false",
    )
    p.add_argument(
        "--compare-monitors",
        action="store_true",
        help="also fit on the processes with dnmf.quiet-monitors false",
    )
    p.add_argument(
        "--client-latency-ms", type=float, default=0.0, help="one-way delay between the Client and the scheduler"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cases = ["quick"] if args.quick else args.cases.split(",")
    iters = 4 if args.quick else args.iters
    solvers = tuple(args.solvers.split(","))
    results = {"machine": machine_info(), "cases": []}
    for name in cases:
        results["cases"].append(
            run_case(
                name,
                CASES[name],
                args.k,
                iters,
                args.repeats,
                solvers,
                args.seed,
                not args.threads_only,
                args.rows_per_block,
                args.compare_pipeline,
                args.client_latency_ms,
                args.compare_allocator,
                args.compare_monitors,
            )
        )
        gc.collect()
    md = render(results)
    print(md)
    write_results(args.out, "cluster", md, results)
    return results


if __name__ == "__main__":
    main()
