"""Benchmark: does ``dnmf.select_rank`` find a planted rank, and how fast?

Problems (planted non-negative rank k*, then noise):

(a) dense  1,500 x 800, k* = 12, |Gaussian| noise at 5% of X's spread;
(b) sparse 20,000 x 3,000, k* = 10: every row mixes 2 of the k* "topics",
    every topic covers 4% of the columns (so X = W H is sparse, ~4.7M
    non-zeros), each non-zero multiplied by (1 + 5% noise).

For each, ``select_rank(method="cv")`` over ks around k* (3 repeats, 10% of
the entries held out, 5% of the non-zeros and as many zeros for (b)), and on
(a) also ``method="consensus"`` (6 restarts per k). Reported: the chosen k,
the per-k table and the wall time, over ``--seeds`` independent problems.

    python benchmarks/bench_rank.py            # full run (~20 min on 2 cores)
    python benchmarks/bench_rank.py --quick    # small sizes, < 1 min

Writes ``rank.md`` and ``rank.json`` under ``--out`` (bench-results/).

``--ratings PATH`` times instead exactly the README's call on a ratings CSV
(``userId,movieId,rating``, e.g. MovieLens ml-latest-small; users × items,
IDs mapped to sorted positions)::

    select_rank(X, ks=range(4, 13), method="cv", n_repeats=3)

``--runs`` times (median), reporting the chosen k and the per-k held-out
errors of each run; ``--random-state`` seeds it (default: unseeded, as in
the README). Writes ``rank-ratings.md`` and ``rank-ratings.json``.
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

from benchmarks._common import (
    format_machine,
    load_ratings,
    log,
    machine_info,
    markdown_table,
    run_footer,
    write_results,
)


def planted_dense(m, n, k, noise, seed):
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (m, k)) @ rng.exponential(1.0, (k, n))
    return X + noise * X.std() * np.abs(rng.standard_normal((m, n)))


def planted_sparse(m, n, k, coverage, noise, seed):
    """Rows mix 2 of k sparse topics; X = W H exactly sparse, then noisy."""
    rng = np.random.default_rng(seed)
    W = np.zeros((m, k))
    topics = np.stack([rng.choice(k, 2, replace=False) for _ in range(m)])
    W[np.arange(m)[:, None], topics] = rng.exponential(1.0, (m, 2)) + 0.2
    H = rng.exponential(1.0, (k, n)) * (rng.random((k, n)) < coverage)
    X = sp.csr_matrix(sp.csr_matrix(W) @ sp.csr_matrix(H))
    X.data *= 1.0 + noise * np.abs(rng.standard_normal(X.nnz))
    return X


def cases(args):
    if args.quick:
        return [
            dict(
                name="a",
                title="(a) dense 300x200, k*=5",
                kind="dense",
                m=300,
                n=200,
                k=5,
                ks=range(3, 8),
                kw=dict(max_iter=60, tol=1e-5),
                consensus=False,
            ),
            dict(
                name="b",
                title="(b) sparse 2,000x600, k*=4",
                kind="sparse",
                m=2000,
                n=600,
                k=4,
                ks=range(2, 7),
                coverage=0.1,
                kw=dict(max_iter=60, tol=1e-5, holdout=0.05),
                consensus=False,
            ),
        ]
    return [
        dict(
            name="a",
            title="(a) dense 1,500x800, k*=12",
            kind="dense",
            m=1500,
            n=800,
            k=12,
            ks=range(9, 16),
            kw=dict(max_iter=150, tol=1e-5),
            consensus=True,
        ),
        dict(
            name="b",
            title="(b) sparse 20,000x3,000, k*=10",
            kind="sparse",
            m=20_000,
            n=3_000,
            k=10,
            ks=range(7, 14),
            coverage=0.04,
            kw=dict(max_iter=150, tol=1e-5, holdout=0.05),
            consensus=False,
        ),
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small problems (< 1 minute)")
    p.add_argument("--seeds", type=int, default=2, help="independent problems per case")
    p.add_argument("--solver", default="cd", help="solver for every fit")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--ratings", metavar="PATH", help="time the README's select_rank call on this ratings CSV")
    p.add_argument("--runs", type=int, default=1, help="--ratings: timed runs (median reported)")
    p.add_argument("--random-state", type=int, default=None, help="--ratings: random_state (default: unseeded)")
    return p.parse_args(argv)


#: The README's call ("Choosing k"), timed by --ratings.
RATINGS_KS = range(4, 13)
RATINGS_REPEATS = 3


def ratings_main(args, info):
    import dnmf

    X = load_ratings(args.ratings)
    log(f"ratings: {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} ratings; load {os.getloadavg()}")
    runs = []
    for run in range(args.runs):
        t, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = dnmf.select_rank(
                X, ks=RATINGS_KS, method="cv", n_repeats=RATINGS_REPEATS, random_state=args.random_state
            )
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        log(f"run {run}: chosen k = {res.chosen_k} in {wall:.1f} s, CPU {cpu:.1f} s (load {os.getloadavg()[0]:.2f})")
        log(res.table().to_string(index=False))
        runs.append(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "chosen": res.chosen_k,
                "loadavg": os.getloadavg(),
                "iterations": int(res.n_iter.sum()),
                "warnings": sorted({str(w.message) for w in caught}),
                "table": res.table().to_dict(orient="list"),
            }
        )
    results = {
        "machine": info,
        "data": {"shape": list(X.shape), "nnz": int(X.nnz)},
        "call": f"select_rank(X, ks=range(4, 13), method='cv', n_repeats=3, random_state={args.random_state})",
        "runs": runs,
        "median_wall_s": float(np.median([r["wall_s"] for r in runs])),
        "median_cpu_s": float(np.median([r["cpu_s"] for r in runs])),
        "loadavg_at_end": os.getloadavg(),
    }
    md = render_ratings(results)
    print(md)
    paths = write_results(args.out, "rank-ratings", md, results)
    log(f"\nwrote {paths[0]} and {paths[1]}")
    return results


def per_k_table(t: dict) -> str:
    """A ``SelectRankResult.table()`` (as a dict of columns) in Markdown, the chosen k marked."""
    cols = [k for k in t if k != "chosen"]
    body = [
        [f"{v:.4g}" if isinstance(v, float) else v for v in vals] + ["<-" if ch else ""]
        for *vals, ch in zip(*[t[k] for k in cols], t["chosen"], strict=True)
    ]
    return markdown_table(cols + ["chosen"], body)


def render_ratings(results) -> str:
    shape, nnz = results["data"]["shape"], results["data"]["nnz"]
    out = ["# dnmf select_rank on a ratings matrix", "", "```", format_machine(results["machine"]), "```", ""]
    out += [f"`{results['call']}` on {shape[0]:,} x {shape[1]:,} ({nnz:,} ratings).", ""]
    rows = [
        [
            i,
            f"{r['wall_s']:.1f} s",
            f"{r['cpu_s']:.1f} s",
            r["chosen"],
            f"{r['iterations']:,}",
            " ".join(f"{x:.2f}" for x in r["loadavg"]),
        ]
        for i, r in enumerate(results["runs"])
    ]
    headers = ["run", "wall time", "CPU time", "chosen k", "iterations", "load avg after"]
    out.append(markdown_table(headers, rows))
    for i, r in enumerate(results["runs"]):
        out += ["", f"run {i}:", "", per_k_table(r["table"])]
        if r["warnings"]:
            out += ["", "warnings: " + "; ".join(r["warnings"])]
    load = results["loadavg_at_end"]
    out += [
        "",
        f"Median wall time: {results['median_wall_s']:.1f} s (CPU time of the process: "
        f"{results['median_cpu_s']:.1f} s). Load average at end: ",
    ]
    out[-1] += " ".join(f"{x:.2f}" for x in load) + "."
    return "\n".join(out)


def main(argv=None):
    import dnmf

    args = parse_args(argv)
    info = machine_info()
    log(format_machine(info))
    if args.ratings:
        return ratings_main(args, info)
    started = time.perf_counter()
    results = {"machine": info, "cases": []}
    solver_kw = dict(solver=args.solver)
    if args.solver == "cd":
        solver_kw["inner_iter"] = "auto"
    for case in cases(args):
        for seed in range(args.seeds):
            if case["kind"] == "dense":
                X = planted_dense(case["m"], case["n"], case["k"], 0.05, seed)
                nnz = X.size
            else:
                X = planted_sparse(case["m"], case["n"], case["k"], case["coverage"], 0.05, seed)
                nnz = X.nnz
            methods = ["cv"] + (["consensus"] if case["consensus"] else [])
            for method in methods:
                kw = dict(case["kw"], **solver_kw)
                if method == "consensus":
                    kw.pop("holdout", None)
                    kw["n_repeats"] = 6
                log(f"== {case['title']}, seed {seed}, nnz {nnz:,}: {method}")
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = dnmf.select_rank(X, list(case["ks"]), method=method, random_state=seed, **kw)
                wall = time.perf_counter() - t
                log(f"   chosen k = {res.chosen_k} (planted {case['k']}) in {wall:.1f} s")
                log(res.table().to_string(index=False))
                results["cases"].append(
                    {
                        "case": case["name"],
                        "title": case["title"],
                        "seed": seed,
                        "method": method,
                        "planted": case["k"],
                        "chosen": res.chosen_k,
                        "wall_s": wall,
                        "nnz": nnz,
                        "n_fits": int(res.n_iter.size),
                        "iterations": int(res.n_iter.sum()),
                        "table": res.table().to_dict(orient="list"),
                        "params": {k: str(v) for k, v in kw.items()},
                    }
                )
    results["elapsed_s"] = time.perf_counter() - started
    results["loadavg_at_end"] = os.getloadavg()
    md = render(results)
    print(md)
    paths = write_results(args.out, "rank" + ("-quick" if args.quick else ""), md, results)
    log(f"\nwrote {paths[0]} and {paths[1]}")
    return results


def render(results) -> str:
    out = ["# dnmf rank selection benchmark", "", "```", format_machine(results["machine"]), "```", ""]
    rows = []
    for c in results["cases"]:
        rows.append(
            [
                c["title"],
                c["seed"],
                c["method"],
                c["planted"],
                c["chosen"],
                "yes" if c["chosen"] == c["planted"] else "NO",
                c["n_fits"],
                f"{c['iterations']:,}",
                f"{c['wall_s']:.1f} s",
            ]
        )
    out.append(
        markdown_table(
            ["problem", "seed", "method", "planted k", "chosen k", "recovered", "fits", "iterations", "wall time"], rows
        )
    )
    for c in results["cases"]:
        out += ["", f"{c['title']}, seed {c['seed']}, {c['method']}:", "", per_k_table(c["table"])]
    out += ["", run_footer(results)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
