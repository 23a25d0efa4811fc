"""Benchmark: time and iterations to a given accuracy, per solver.

Two problems (those of the engine benchmark):

(a) dense  2,000 x 1,000 planted rank-32 product plus noise, k = 32;
(b) sparse 200,000 x 20,000 CSR, 10M non-zeros, Zipf-like row and column
    popularity, ratings 1..5, k = 32.

Solvers, all from the same start (scikit-learn's NNDSVDa of X, computed
once) with ``tol=0`` and the same wall-time budget each:

- dnmf ``mu``, ``cd`` (scikit-learn's HALS), ``cd`` with
  ``inner_iter="auto"`` (accelerated HALS) and ``anls-bpp``, on the local
  threaded scheduler; the loss of every iteration comes from the callback
  (it is computed inside the step, at no extra pass);
- scikit-learn ``cd``: its own ``_update_coordinate_descent`` for W then H,
  timed per iteration exactly as ``NMF(solver="cd")._fit_transform`` runs
  them; the loss after each iteration is computed outside the timed region.

``f*`` is the lowest loss ``||X - WH||_F`` any run reached; for every run the
table gives the first iteration, and the wall time from the call, at which
its loss is within ``rtol`` (default 1e-4) of ``f*``. dnmf's times include
its setup (validation, blocking, persisting the start).

    python benchmarks/bench_solvers.py             # full run (~25 min on 2 cores)
    python benchmarks/bench_solvers.py --quick     # small sizes, < 1 min

Writes ``solvers.md`` and ``solvers.json`` under ``--out`` (bench-results/).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    format_machine,
    log,
    machine_info,
    make_dense_lowrank,
    make_zipf_csr,
    markdown_table,
    median,
    seconds,
    write_results,
)

#: (label, dnmf.NMF keyword arguments); None marks scikit-learn's cd.
RUNS = [
    ("dnmf mu", dict(solver="mu")),
    ("dnmf cd", dict(solver="cd")),
    ("dnmf cd accelerated", dict(solver="cd", inner_iter="auto")),
    ("dnmf anls-bpp", dict(solver="anls-bpp")),
    ("scikit-learn cd", None),
]


def problem_specs(args) -> list[dict]:
    if args.quick:
        dense = dict(m=1_000, n=500, k=16, budget=3.0)
        sparse = dict(m=40_000, n=5_000, nnz=800_000, k=16, budget=3.0)
    else:
        dense = dict(m=2_000, n=1_000, k=32, budget=60.0)
        sparse = dict(m=200_000, n=20_000, nnz=10_000_000, k=32, budget=240.0)
    specs = []
    if "a" in args.problems:
        dense.update(name="a", kind="dense", title=f"(a) dense {dense['m']:,}x{dense['n']:,}, k={dense['k']}")
        specs.append(dense)
    if "b" in args.problems:
        sparse.update(
            name="b",
            kind="sparse",
            title=f"(b) sparse {sparse['m']:,}x{sparse['n']:,}, nnz {sparse['nnz'] / 1e6:g}M, k={sparse['k']}",
        )
        specs.append(sparse)
    for s in specs:
        if args.budget is not None:
            s["budget"] = args.budget
    return specs


def make_problem(spec: dict, seed: int):
    if spec["kind"] == "dense":
        return make_dense_lowrank(spec["m"], spec["n"], spec["k"], seed=seed)
    return make_zipf_csr(spec["m"], spec["n"], spec["nnz"], seed=seed)


def shared_init(X, k: int, seed: int):
    """scikit-learn's NNDSVDa start, computed once for every run."""
    from sklearn.decomposition._nmf import _initialize_nmf

    W0, H0 = _initialize_nmf(X, k, init="nndsvda", random_state=seed)
    return np.ascontiguousarray(W0), np.ascontiguousarray(H0)


def frobenius(X, sq_norm_x: float, W: np.ndarray, Ht: np.ndarray) -> float:
    """``||X - W Ht.T||_F`` from the Gram identity (never forms W H)."""
    cross = float(np.vdot(X @ Ht, W))
    gram = float(np.vdot(W.T @ W, Ht.T @ Ht))
    return math.sqrt(max(sq_norm_x - 2 * cross + gram, 0.0))


def run_dnmf(X, W0, H0, kw: dict, budget: float, max_iter: int) -> dict:
    import dnmf

    trace = []

    def callback(iteration, elapsed, loss):
        trace.append((iteration, time.perf_counter(), loss))

    model = dnmf.NMF(W0.shape[1], init="custom", tol=0.0, max_iter=max_iter, max_time=budget, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        model.fit(X, W=W0.copy(), H=H0.copy(), callback=callback)
        total = time.perf_counter() - t0
    return {
        "trace": [(it, t - t0, loss) for it, t, loss in trace],
        "total": total,
        "n_iter": int(model.n_iter_),
        "stationarity": model.stationarity_history_.tolist(),
    }


def run_sklearn_cd(X, W0, H0, budget: float, max_iter: int) -> dict:
    """scikit-learn's coordinate descent, iteration by iteration."""
    from sklearn.decomposition._nmf import _update_coordinate_descent

    sq_norm_x = float(X.multiply(X).sum()) if sp.issparse(X) else float(np.vdot(X, X))
    trace = []
    paused = 0.0
    t0 = time.perf_counter()
    W = np.ascontiguousarray(W0.copy())
    Ht = np.ascontiguousarray(H0.T.copy())
    XT = X.T
    for it in range(1, max_iter + 1):
        _update_coordinate_descent(X, W, Ht, 0.0, 0.0, False, None)
        _update_coordinate_descent(XT, Ht, W, 0.0, 0.0, False, None)
        elapsed = time.perf_counter() - t0 - paused
        p = time.perf_counter()
        trace.append((it, elapsed, frobenius(X, sq_norm_x, W, Ht)))
        paused += time.perf_counter() - p
        if elapsed >= budget:
            break
    return {"trace": trace, "total": trace[-1][1], "n_iter": len(trace)}


def summarize(traces: dict, rtol: float, rtol2: float) -> list[dict]:
    """Per run: iterations and time to f*(1+rtol) and f*(1+rtol2), and more."""
    best = min(min(loss for _, _, loss in tr) for tr in traces.values())
    rows = []
    for label, trace in traces.items():
        it, t = to_target(trace, best * (1 + rtol))
        it2, t2 = to_target(trace, best * (1 + rtol2))
        final = trace[-1][2]
        rows.append(
            {
                "solver": label,
                "iters_to_target": it,
                "time_to_target": t,
                "iters_to_target2": it2,
                "time_to_target2": t2,
                "per_iter": per_iteration(trace),
                "iters_run": trace[-1][0],
                "time_run": trace[-1][1],
                "final_loss": final,
                "final_gap": final / best - 1,
            }
        )
    return rows


def to_target(trace, target: float):
    for it, t, loss in trace:
        if loss <= target:
            return it, t
    return None, None


def per_iteration(trace) -> float:
    times = [t for _, t, _ in trace]
    return median(np.diff(times)) if len(times) > 2 else float("nan")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small problems and budgets (< 1 minute)")
    p.add_argument("--problems", nargs="+", default=["a", "b"], choices=["a", "b"])
    p.add_argument("--budget", type=float, default=None, help="seconds per run (default 60 dense, 240 sparse)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative distance to the best loss")
    p.add_argument("--rtol2", type=float, default=1e-6, help="a second, tighter target for the table")
    p.add_argument("--from-json", default=None, help="re-render the tables from an earlier solvers.json")
    p.add_argument("--max-iter", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        import json

        with open(args.from_json) as f:
            results = json.load(f)
        results["rtol"], results["rtol2"] = args.rtol, args.rtol2
        for p in results["problems"]:
            p["rows"] = summarize(p["traces"], args.rtol, args.rtol2)
        md = render(results)
        print(md)
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        write_results(args.out, stem, md, results)
        return results
    info = machine_info()
    log(format_machine(info))
    started = time.perf_counter()
    results = {"machine": info, "rtol": args.rtol, "rtol2": args.rtol2, "problems": []}
    for spec in problem_specs(args):
        log(f"\n== {spec['title']}: generating")
        t = time.perf_counter()
        X = make_problem(spec, args.seed)
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        W0, H0 = shared_init(X, spec["k"], args.seed)
        t_init = time.perf_counter() - t
        log(f"   generated in {t_gen:.1f} s, NNDSVDa start in {t_init:.1f} s; budget {spec['budget']:g} s per run")
        runs = {}
        for label, kw in RUNS:
            log(f"-- {label}")
            if kw is None:
                r = run_sklearn_cd(X, W0, H0, spec["budget"], args.max_iter)
            else:
                r = run_dnmf(X, W0, H0, kw, spec["budget"], args.max_iter)
            it, t, loss = r["trace"][-1]
            log(f"   {it} iterations in {t:.1f} s, loss {loss:.8g}, {seconds(per_iteration(r['trace']))}/iteration")
            runs[label] = r
        traces = {label: r["trace"] for label, r in runs.items()}
        best = min(min(loss for _, _, loss in tr) for tr in traces.values())
        results["problems"].append(
            {
                "name": spec["name"],
                "title": spec["title"],
                "spec": spec,
                "generate_s": t_gen,
                "init_s": t_init,
                "best_loss": best,
                "target": best * (1 + args.rtol),
                "rows": summarize(traces, args.rtol, args.rtol2),
                "traces": traces,
            }
        )
    results["elapsed_s"] = time.perf_counter() - started
    results["loadavg_at_end"] = os.getloadavg()
    md = render(results)
    print(md)
    paths = write_results(args.out, "solvers" + ("-quick" if args.quick else ""), md, results)
    log(f"\nwrote {paths[0]} and {paths[1]}")
    return results


def render(results: dict) -> str:
    info = results["machine"]
    out = [
        "# dnmf solver benchmark: time to a given accuracy",
        "",
        "```",
        format_machine(info),
        f"start: scikit-learn's NNDSVDa (shared), tol=0, the same wall-time budget per run; "
        f"target: loss <= f* (1 + {results['rtol']:g}), f* = lowest loss of any run "
        f"(and, for reference, f* (1 + {results.get('rtol2', 1e-6):g}))",
        "```",
        "",
        "Loss: `||X - WH||_F`. Time: wall time from the call (dnmf: fit's setup included). "
        "'–': not reached within the budget. Per iteration: median.",
    ]
    verdicts = []
    for p in results["problems"]:
        out += [
            "",
            f"### {p['title']}",
            "",
            f"f* = {p['best_loss']:.10g}; budget {p['spec']['budget']:g} s per run",
            "",
        ]
        table = []
        for r in p["rows"]:
            table.append(
                [
                    r["solver"],
                    "–" if r["iters_to_target"] is None else f"{r['iters_to_target']:,}",
                    seconds(r["time_to_target"]) if r["time_to_target"] is not None else "–",
                    "–" if r.get("iters_to_target2") is None else f"{r['iters_to_target2']:,}",
                    seconds(r["time_to_target2"]) if r.get("time_to_target2") is not None else "–",
                    seconds(r["per_iter"]),
                    f"{r['iters_run']:,}",
                    seconds(r["time_run"]),
                    f"{r['final_gap']:.2e}",
                ]
            )
        out.append(
            markdown_table(
                [
                    "solver",
                    f"iterations to {results['rtol']:g}",
                    f"time to {results['rtol']:g}",
                    f"iterations to {results.get('rtol2', 1e-6):g}",
                    f"time to {results.get('rtol2', 1e-6):g}",
                    "per iteration",
                    "iterations run",
                    "time run",
                    "final loss / f* - 1",
                ],
                table,
            )
        )
        sk = next(r for r in p["rows"] if r["solver"] == "scikit-learn cd")
        ours = [r for r in p["rows"] if r["solver"].startswith("dnmf") and r["time_to_target"] is not None]
        if ours:
            fastest = min(ours, key=lambda r: r["time_to_target"])
            sk_t = sk["time_to_target"]
            ok = sk_t is None or fastest["time_to_target"] < sk_t
            ratio = "" if sk_t is None else f", {fastest['time_to_target'] / sk_t:.2f}x scikit-learn's"
            sk_s = "not reached in the budget" if sk_t is None else seconds(sk_t)
            verdicts.append(
                f"- [{'PASS' if ok else 'MISS'}] {p['title']}: fastest dnmf solver ({fastest['solver']}) "
                f"{seconds(fastest['time_to_target'])}{ratio}; scikit-learn cd: {sk_s}"
            )
        else:
            verdicts.append(f"- [MISS] {p['title']}: no dnmf solver reached the target")
    load = results.get("loadavg_at_end")
    out += ["", "Target: dnmf's best solver reaches f*(1+rtol) in less wall time than scikit-learn's cd.", ""]
    out += verdicts
    out += [
        "",
        f"Whole run: {results['elapsed_s']:.0f} s. Load average at end: "
        + (" ".join(f"{x:.2f}" for x in load) if load else "n/a")
        + ".",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
