"""Benchmark: time per iteration of ``RatingsNMF`` ("als", "ccd", "cg") vs the ``implicit`` package's ALS.

Issue 16, acceptance 3: a ``RatingsNMF`` iteration (explicit and implicit
feedback) should cost at most 1.5x an iteration of ``implicit``'s ALS
(conjugate gradient) on the same data and threads, and at most 3x an
iteration of plain ``dnmf.NMF`` on the same matrix. This script measures
those ratios within one run, at each ``--ks`` value:

- ``dnmf.RatingsNMF(k, feedback=..., solver=...)`` for explicit and implicit
  feedback and each of ``--solvers``;
- ``implicit.als.AlternatingLeastSquares(factors=k)`` (its defaults; all
  cores, as dnmf's default threaded scheduler);
- ``dnmf.NMF(k)`` (missing = zero) on the same training matrix.

Every model runs ``--iters`` iterations (``tol=0``); the time of one
iteration is the time between consecutive iteration callbacks, so the
first iteration (and any setup) is left out, and the table shows the median
over the others and over ``--repeats`` fits of every model, taken in
turns. "cores busy" is the process's CPU seconds over those iterations
divided by their wall time (2.0: both cores of a 2-core machine the whole
time). The load average is printed at the start and the end and after
each fit: the machine may be shared, so compare the ratios, measured in
one run.

    python benchmarks/bench_masked_speed.py --ratings path/to/ml-latest-small/ratings.csv
    python benchmarks/bench_masked_speed.py                      # generated data only
    python benchmarks/bench_masked_speed.py --users 300000 --items 30000 --nnz 5000000 --ks 32 --solvers cg
    python benchmarks/bench_masked_speed.py --scale                    # issue 16: 3M x 300k, 49M ratings, k=32
    python benchmarks/bench_masked_speed.py --ratings PATH --no-generated --solvers als cg --quality

``--scale``: issue 16's large case, 3,000,000 x 300,000 with 49,000,000
ratings (power-law items) at k = 32, "cg" only, 3 iterations, one fit each
(about 20 minutes and 8 GB on 2 cores; also the suite's ``masked-scale``
section). ``--quality``: each solver's test RMSE (explicit) or NDCG@10
(implicit) on the ratings' test split after ``--quality-iters`` iterations
and with the defaults (``max_iter=50, tol=1e-4``).

Data: the ratings CSV (seeded 80/20 random split, the training part) and,
unless ``--no-generated``, a generated ratings matrix (Zipf-like user and
item popularity, values 1..5; ``benchmarks._common.make_zipf_csr``) of
``--users`` x ``--items`` with ``--nnz`` entries. The CSV is read into
memory and never written anywhere. ``implicit`` is optional
(``pip install implicit``); without it the ratios are left out.
Writes ``masked-speed.md`` and ``.json`` under ``--out`` (bench-results/).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
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
    make_zipf_csr,
    markdown_table,
    run_footer,
    write_results,
)


def process_cpu() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def per_iteration(fit) -> tuple[list[float], list[float]]:
    """Seconds between consecutive iteration callbacks of ``fit(callback)``, and the
    process's CPU seconds over the same spans (their ratio: the cores kept busy)."""
    stamps: list[tuple[float, float]] = []

    def callback(*_):
        stamps.append((time.perf_counter(), process_cpu()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(callback)
    walls = [float(b[0] - a[0]) for a, b in zip(stamps, stamps[1:], strict=False)]
    cpus = [float(b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]
    return walls, cpus


def time_ratings(train, k: int, feedback: str, solver: str, iters: int, seed: int) -> tuple[list[float], list[float]]:
    import dnmf

    model = dnmf.RatingsNMF(k, feedback=feedback, solver=solver, max_iter=iters, tol=0.0, random_state=seed)
    return per_iteration(lambda cb: model.fit(train, callback=cb))


def time_nmf(train, k: int, iters: int, seed: int) -> tuple[list[float], list[float]]:
    import dnmf

    model = dnmf.NMF(k, max_iter=iters, tol=0.0, random_state=seed)
    return per_iteration(lambda cb: model.fit(train, callback=cb))


def time_implicit(train, k: int, iters: int, seed: int) -> tuple[list[float], list[float]] | None:
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        return None
    model = AlternatingLeastSquares(factors=k, iterations=iters, random_state=seed)
    X = sp.csr_matrix(train, dtype=np.float32)
    return per_iteration(lambda cb: model.fit(X, show_progress=False, callback=cb))


def quality(train, test, k: int, feedback: str, solver: str, max_iter: int, tol: float, seed: int) -> dict:
    """Fit with ``max_iter``/``tol`` and score on ``test``: RMSE (explicit) or NDCG@10 (implicit)."""
    import dnmf

    model = dnmf.RatingsNMF(k, feedback=feedback, solver=solver, max_iter=max_iter, tol=tol, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train)
    if feedback == "explicit":
        r = dnmf.evaluate(model, test, metrics=["rmse"])
        return {"metric": "test RMSE", "value": float(r["rmse"]), "n_iter": int(model.n_iter_)}
    r = dnmf.evaluate(model, test, train=train, k=10, metrics=["ndcg"])
    return {"metric": "NDCG@10", "value": float(r["ndcg"]), "n_iter": int(model.n_iter_)}


def run_quality(name: str, train, test, args) -> dict:
    """Each solver after ``--quality-iters`` iterations (``tol=0``) and with the defaults (50, tol=1e-4)."""
    log(f"== quality: {name}")
    rows = []
    for k in args.ks:
        for feedback in ("explicit", "implicit"):
            for solver in args.solvers:
                budgets = [(n, 0.0) for n in args.quality_iters] + [(50, 1e-4)]
                for max_iter, tol in budgets:
                    r = quality(train, test, k, feedback, solver, max_iter, tol, args.seed)
                    label = "defaults (max_iter=50, tol=1e-4)" if tol else f"{max_iter} iterations"
                    rows.append({"k": k, "feedback": feedback, "solver": solver, "budget": label, **r})
                    log(f"   k={k} {feedback} {solver} {label}: {r['metric']} {r['value']:.4f} ({r['n_iter']} it.)")
    return {"name": name, "rows": rows}


def run_dataset(name: str, train: sp.csr_matrix, args) -> dict:
    title = f"{name}: {train.shape[0]:,} x {train.shape[1]:,}, {train.nnz:,} training entries"
    log(f"== {title}")
    rows = []
    for k in args.ks:
        # Every model once per round, ``--repeats`` rounds: a burst of load from elsewhere
        # then falls on all of them rather than on one.
        fits = {
            "implicit ALS (CG)": lambda k=k: time_implicit(train, k, args.iters, args.seed),
            "dnmf.NMF (missing = 0)": lambda k=k: time_nmf(train, k, args.iters, args.seed),
        }
        for feedback in ("explicit", "implicit"):
            for solver in args.solvers:
                fits[f'RatingsNMF {feedback}, solver="{solver}"'] = lambda k=k, f=feedback, s=solver: time_ratings(
                    train, k, f, s, args.iters, args.seed
                )
        gaps: dict[str, list[float] | None] = {label: [] for label in fits}
        cpu: dict[str, list[float]] = {label: [] for label in fits}
        for _ in range(args.repeats):
            for label, fit in fits.items():
                got = fit()
                if got is None or gaps[label] is None:
                    gaps[label] = None
                    continue
                gaps[label] += got[0]
                cpu[label] += got[1]
                busy = sum(got[1]) / max(sum(got[0]), 1e-9)
                log(
                    f"   k={k} {label}: {' '.join(f'{g:.3f}' for g in got[0])} "
                    f"({busy:.2f} cores busy; load {os.getloadavg()[0]:.1f})"
                )
        med = {label: None if g is None else statistics.median(g) for label, g in gaps.items()}
        ref_s, nmf_s = med["implicit ALS (CG)"], med["dnmf.NMF (missing = 0)"]
        for label, t in med.items():
            if t is None:
                rows.append({"k": k, "model": label, "skipped": "`implicit` is not installed"})
                continue
            rows.append(
                {
                    "k": k,
                    "model": label,
                    "s_per_iter": t,
                    "n_timed": len(gaps[label] or []),
                    "cores_busy": sum(cpu[label]) / max(sum(gaps[label] or []), 1e-9),
                    "vs_implicit": None if ref_s is None else t / ref_s,
                    "vs_nmf": None if nmf_s is None else t / nmf_s,
                }
            )
    return {"name": name, "title": title, "rows": rows}


def render(results) -> str:
    out = ["# RatingsNMF: time per iteration", "", "```", format_machine(results["machine"]), "```"]
    for d in results["datasets"]:
        out += [
            "",
            f"{d['title']}; median over {results['repeats']} fits x {results['iters'] - 1} iterations "
            "(each fit's first left out):",
            "",
        ]
        body = []
        for r in d["rows"]:
            if "skipped" in r:
                body.append([r["k"], r["model"], "–", "–", "–", "–", r["skipped"]])
                continue
            ratio = "–" if r["vs_implicit"] is None else f"{r['vs_implicit']:.2f}x"
            busy = f"{r['cores_busy']:.2f}" if "cores_busy" in r else "–"
            body.append([r["k"], r["model"], f"{r['s_per_iter']:.3f}", ratio, f"{r['vs_nmf']:.2f}x", busy, ""])
        head = ["k", "model", "s / iteration", "vs implicit ALS", "vs dnmf.NMF", "cores busy", ""]
        out.append(markdown_table(head, body))
    for d in results.get("quality", []):
        out += ["", f"Quality on {d['name']} (test split), seed {results['seed']}:", ""]
        body = [
            [r["k"], r["feedback"], r["solver"], r["budget"], r["n_iter"], f"{r['metric']} {r['value']:.4f}"]
            for r in d["rows"]
        ]
        out.append(markdown_table(["k", "feedback", "solver", "iterations", "ran", "quality"], body))
    out += ["", run_footer(results)]
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", default=None, help="ratings CSV, e.g. ml-latest-small/ratings.csv (never copied)")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--value-col", default="rating")
    p.add_argument("--ks", type=int, nargs="+", default=[20, 64], help="factors (default 20 64)")
    p.add_argument("--solvers", nargs="+", default=["als", "ccd", "cg"], choices=["als", "ccd", "cg"])
    p.add_argument("--iters", type=int, default=5, help="iterations per fit; the first is not timed")
    p.add_argument("--repeats", type=int, default=3, help="fits of every model, taken in turns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-generated", action="store_true", help="skip the generated matrix")
    p.add_argument("--users", type=int, default=20_000, help="generated matrix: rows")
    p.add_argument("--items", type=int, default=4_000, help="generated matrix: columns")
    p.add_argument("--nnz", type=int, default=400_000, help="generated matrix: entries")
    p.add_argument(
        "--scale",
        action="store_true",
        help="issue 16's large case: 3,000,000 x 300,000 with 49,000,000 ratings at k=32, "
        "cg only, 3 iterations, 1 fit (overrides --users/--items/--nnz/--ks/--solvers/--iters/--repeats; "
        "needs about 12 GB and tens of minutes on 2 cores)",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="also score each solver on the ratings' test split: RMSE / NDCG@10 after --quality-iters and with the defaults",
    )
    p.add_argument("--quality-iters", type=int, nargs="+", default=[10, 20], help="iteration budgets of --quality")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.scale:
        args.users, args.items, args.nnz = 3_000_000, 300_000, 49_000_000
        args.ks, args.solvers, args.iters, args.repeats = [32], ["cg"], 3, 1
        args.no_generated = False
    if args.iters < 2:
        p.error("--iters must be at least 2: the first iteration is not timed.")
    return args


def main(argv=None):
    import dnmf

    started = time.perf_counter()
    args = parse_args(argv)
    info = machine_info()
    log(format_machine(info))
    results = {"machine": info, "iters": args.iters, "repeats": args.repeats, "seed": args.seed, "datasets": []}
    if args.ratings:
        X = load_ratings(args.ratings, args.user_col, args.item_col, args.value_col)
        train, test = dnmf.train_test_split(X, method="random", test_size=0.2, random_state=args.seed)
        label = "/".join(os.path.abspath(args.ratings).split(os.sep)[-2:]) + " (80% training split)"
        results["datasets"].append(run_dataset(label, sp.csr_matrix(train), args))
        if args.quality:
            results["quality"] = [run_quality(label, sp.csr_matrix(train), test, args)]
    if not args.no_generated:
        t = time.perf_counter()
        X = make_zipf_csr(args.users, args.items, args.nnz, seed=args.seed)
        log(f"generated {X.shape} with {X.nnz:,} entries in {time.perf_counter() - t:.1f} s")
        results["datasets"].append(run_dataset(f"generated ratings (seed {args.seed})", X, args))
    results["loadavg_at_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - started
    md = render(results)
    print(md)
    paths = write_results(args.out, "masked-speed", md, results)
    log(f"\nwrote {paths[0]} and {paths[1]}")
    return results


if __name__ == "__main__":
    main()
