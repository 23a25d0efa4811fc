"""The dnmf benchmark suite: ``python -m benchmarks`` (``--quick`` for a small run).

Sections (``--sections``, default all):

- ``engine``: dnmf vs scikit-learn, time to the same loss, and dnmf's time per
  iteration over the bare SciPy kernels of one iteration (overhead ratio);
- ``nnz``: time per iteration as X grows, 1M -> 10M -> 50M non-zeros (should
  grow linearly);
- ``workers``: the same fit on 1 and 2 worker processes (and on threads);
- ``recommend``: with ``--ratings PATH`` (a ratings CSV, e.g. MovieLens'
  ratings.csv): dnmf's ``RatingsNMF`` (explicit and implicit) and ``NMF``,
  ``implicit``'s ALS and Spark's ALS (``nonnegative=True``) side by side on
  one seeded split, at k = 20 and 64, all scored by ``dnmf.evaluate``: RMSE,
  P@10, NDCG@10, fit time and time per iteration (a library that is not
  installed gives a row naming what to install: ``pip install 'dnmf[bench]'``);
- ``rmse-cv``: with ``--ratings``, ``--folds`` (default 5) seeded folds:
  test RMSE of ``RatingsNMF(20)``'s explicit defaults against Spark ALS
  ``nonnegative=True`` with its best regParam on a validation split;
- ``masked-scale`` (only when named): time per iteration of
  ``RatingsNMF(solver="cg")`` (explicit and implicit) against ``implicit``'s
  ALS and ``dnmf.NMF`` on issue 16's generated 3,000,000 x 300,000 matrix
  with 49M ratings at k = 32 (``benchmarks/bench_masked_speed.py --scale``:
  about 20 minutes and 8 GB on 2 cores); with ``--quick``, 300,000 x 30,000
  with 5M ratings.

Writes ``README.md`` (Markdown tables with the date, the machine and the
command), ``suite.json`` and PNG plots under ``--out`` (default
``bench-results/suite``). The whole suite takes under 15 minutes on 2 cores (the
ratings sections a few more on ml-latest-small);
``--quick`` about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback

from benchmarks._common import (
    _clean,
    _json_default,
    format_machine,
    log,
    machine_info,
    markdown_table,
    seconds,
)
from benchmarks.suite_recommend import recommend_summary_rows, render_recommend

SECTIONS = ("engine", "nnz", "workers", "recommend", "rmse-cv")
#: Run only when named in --sections (long).
OPTIONAL_SECTIONS = ("masked-scale",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS + OPTIONAL_SECTIONS)} (default: all but masked-scale)",
    )
    p.add_argument("--ratings", default=None, help="ratings CSV for the recommend and rmse-cv sections")
    p.add_argument("--folds", type=int, default=5, help="folds of the rmse-cv section (at least 2)")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--value-col", default="rating")
    p.add_argument("--nnz", default=None, help="nnz sizes for the nnz section, e.g. 1e6,1e7,5e7")
    p.add_argument("--out", default=os.path.join("bench-results", "suite"), help="output folder")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.folds < 2:
        p.error(f"--folds must be at least 2; got {args.folds}")
    unknown = sorted(set(args.sections) - set(SECTIONS + OPTIONAL_SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}")
    return args


def _busy_cpu_s() -> float | None:
    """CPU seconds all processes of the machine have used since boot (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (the clusters' workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    eng = res.get("engine")
    if eng and "problems" in eng:
        for p in eng["problems"]:
            for solver, r in p["solvers"].items():
                rows.append(
                    [
                        "dnmf vs scikit-learn: time to the same loss",
                        f"{p['title']}, k={p['k']}, {solver}, sklearn {p['iters']} its",
                        seconds(r["dnmf_to_target_s"]) if r["dnmf_reached"] else "not reached",
                        f"{seconds(r['sklearn_total_s'])} (scikit-learn)",
                        _x(r["e2e_ratio"]),
                    ]
                )
        for p in eng["problems"]:
            if p["name"] != "sparse":
                continue
            for solver, r in p["solvers"].items():
                rows.append(
                    [
                        "dnmf vs bare SciPy kernels: per iteration",
                        f"{p['title']}, k={p['k']}, {solver}",
                        seconds(r["dnmf_per_iter_s"]),
                        f"{seconds(r['bare_1t_s'])} (bare pass, 1 thread)",
                        _x(r["overhead_vs_bare"]),
                    ]
                )
    nnz = res.get("nnz")
    if nnz and "rows" in nnz:
        rs = nnz["rows"]
        sizes = " → ".join(f"{r['nnz'] / 1e6:g}M" for r in rs)
        rows.append(
            [
                "scaling with nnz: time per iteration",
                f"{sizes} nnz, k={nnz['k']}, cd, threads",
                " → ".join(seconds(r["per_iter_s"]) for r in rs),
                "linear: " + " → ".join(seconds(rs[0]["per_iter_s"] * r["nnz"] / rs[0]["nnz"]) for r in rs),
                f"{rs[-1]['per_iter_s'] / rs[-2]['per_iter_s']:.2f}x time for {rs[-1]['nnz'] / rs[-2]['nnz']:.3g}x nnz"
                if len(rs) > 1
                else "",
            ]
        )
    wk = res.get("workers")
    if wk and "rows" in wk:
        one = next(r for r in wk["rows"] if r["engine"].endswith("1 process"))
        two = next(r for r in wk["rows"] if r["engine"].endswith("2 processes"))
        rows.append(
            [
                "scaling with workers: per iteration",
                f"{wk['nnz'] / 1e6:g}M nnz, k={wk['k']}, cd",
                f"{seconds(two['per_iter_s'])} (2 processes)",
                f"{seconds(one['per_iter_s'])} (1 process)",
                f"{two['speedup_vs_1_process']:.2f}x speed-up",
            ]
        )
    rec = res.get("recommend")
    if rec and "rows" in rec:
        rows += recommend_summary_rows(rec)
    elif rec:
        rows.append(["recommendation", rec.get("skipped", rec.get("error", "")), "", "", ""])
    cv = res.get("rmse-cv")
    if cv and "rows" in cv:
        rows.append(
            [
                f"{cv['folds']}-fold RMSE vs Spark ALS nonnegative",
                f"k={cv['k']}, dnmf defaults, Spark regParam {cv['spark_reg']:g}",
                f"{cv['dnmf_mean']:.4f}",
                f"{cv['spark_mean']:.4f} (Spark)",
                f"{cv['dnmf_mean'] / cv['spark_mean']:.3f}x",
            ]
        )
    elif cv:
        rows.append(["k-fold RMSE vs Spark", cv.get("skipped", cv.get("error", "")), "", "", ""])
    return rows


def render(res: dict) -> str:
    lines = [
        "# dnmf benchmark suite",
        "",
        "```",
        format_machine(res["machine"]),
        f"command: {res['command']}",
        f"load average at end: {' '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}; whole run {res['wall_s']:.0f} s",
        "```",
        "",
    ]
    other = res.get("other_cpu_share")
    if other is not None:
        lines += [
            f"Other processes used {other:.0%} of the machine's CPU time during the run"
            + (" — enough to slow some timings; rerun on a quieter machine to compare." if other > 0.1 else "."),
            "",
        ]
    lines += [
        "## Summary",
        "",
        markdown_table(["benchmark", "setting", "dnmf", "reference", "ratio"], summary_rows(res), align="lllll"),
        "",
    ]

    eng = res.get("engine")
    if eng and "problems" in eng:
        lines += [
            "## dnmf vs scikit-learn and vs the bare kernels",
            "",
            "scikit-learn runs N iterations (`tol=0`) from a shared NNDSVDA start; its final loss L_sk is "
            "the target, and dnmf (local threads) runs from the same start until its loss reaches L_sk. "
            "Times to L_sk include dnmf's setup (validation, blocking) and scikit-learn's whole fit. "
            "Per iteration: median of iterations 2..N. Bare pass: `X@Ht + Σ X_i.T@W_i + W.T@W + Ht.T@Ht` "
            "in plain SciPy/NumPy on one thread, sampled before and after the fits.",
            "",
        ]
        rows = []
        for p in eng["problems"]:
            for solver, r in p["solvers"].items():
                rows.append(
                    [
                        p["title"],
                        p["k"],
                        solver,
                        seconds(r["sklearn_total_s"]),
                        seconds(r["sklearn_per_iter_s"]),
                        seconds(r["dnmf_to_target_s"]),
                        r["dnmf_iters_to_target"] or "–",
                        seconds(r["dnmf_setup_s"]),
                        seconds(r["dnmf_per_iter_s"]),
                        seconds(r["bare_1t_s"]),
                        _x(r["e2e_ratio"]),
                        _x(r["per_iter_vs_sklearn"]),
                        _x(r["overhead_vs_bare"]),
                    ]
                )
        lines += [
            markdown_table(
                [
                    "problem",
                    "k",
                    "solver",
                    "sklearn fit",
                    "sklearn /it",
                    "dnmf to L_sk",
                    "dnmf its",
                    "dnmf setup",
                    "dnmf /it",
                    "bare pass",
                    "to L_sk ratio",
                    "/it vs sklearn",
                    "/it vs bare",
                ],
                rows,
                align="lrl" + "r" * 10,
            ),
            "",
        ]
        if res.get("plots", {}).get("engine"):
            lines += [f"![loss against time]({os.path.basename(res['plots']['engine'])})", ""]
    elif eng:
        lines += ["## dnmf vs scikit-learn", "", f"failed: {eng.get('error')}", ""]

    nnz = res.get("nnz")
    if nnz and "rows" in nnz:
        lines += [
            "## Scaling with nnz",
            "",
            f"Zipf-like CSR, about 50 non-zeros per row (rows grow with nnz), up to 20,000 columns; "
            f"`NMF(k={nnz['k']}, solver='cd', init='random', tol=0)`, {nnz['iters']} iterations on local "
            "threads (2 threads; the bare pass uses one). 'vs linear': time per non-zero relative to the "
            "smallest size's (1.00x = exactly linear; below 1 = fixed costs amortised); 'step vs linear': "
            "growth of the time per iteration from the previous size over the growth of nnz.",
            "",
        ]
        rows = [
            [
                f"{r['nnz']:,}",
                f"{r['m']:,} x {r['n']:,}",
                seconds(r["generate_s"]),
                seconds(r["setup_s"]),
                seconds(r["per_iter_s"]),
                seconds(r["per_iter_min_s"]),
                f"{r['per_nnz_ns']:.1f} ns",
                _x(r["vs_linear"]),
                _x(r.get("step_vs_linear")),
                seconds(r["bare_1t_s"]),
                _x(r["overhead_vs_bare"]),
            ]
            for r in nnz["rows"]
        ]
        lines += [
            markdown_table(
                [
                    "nnz",
                    "shape",
                    "generate",
                    "dnmf setup",
                    "dnmf /it",
                    "(min)",
                    "per nnz",
                    "vs linear",
                    "step vs linear",
                    "bare pass (1 thread)",
                    "/it vs bare",
                ],
                rows,
            ),
            "",
        ]
        if res.get("plots", {}).get("nnz"):
            lines += [f"![time per iteration vs nnz]({os.path.basename(res['plots']['nnz'])})", ""]
    elif nnz:
        lines += ["## Scaling with nnz", "", f"failed: {nnz.get('error')}", ""]

    wk = res.get("workers")
    if wk and "rows" in wk:
        lines += [
            "## Scaling with workers",
            "",
            f"X: {wk['shape'][0]:,} x {wk['shape'][1]:,}, {wk['nnz']:,} non-zeros in memory (scattered to "
            f"the workers once per fit); `NMF(k={wk['k']}, solver='cd', init='random', tol=0)`, "
            f"{wk.get('repeats', 1)} fit(s) of {wk['iters']} iterations after a 2-iteration warm-up on the "
            "same engine; per iteration: median (and min) over iterations 2..N of every fit.",
            "",
        ]
        rows = [
            [
                r["engine"],
                seconds(r["setup_s"]),
                seconds(r["per_iter_s"]),
                seconds(r["per_iter_min_s"]),
                f"{r['speedup_vs_1_process']:.2f}x",
            ]
            for r in wk["rows"]
        ]
        lines += [markdown_table(["engine", "setup", "per iter", "(min)", "speed-up vs 1 process"], rows), ""]
        if res.get("plots", {}).get("workers"):
            lines += [f"![workers]({os.path.basename(res['plots']['workers'])})", ""]
    elif wk:
        lines += ["## Scaling with workers", "", f"failed: {wk.get('error')}", ""]

    lines += render_recommend(res)
    ms = res.get("masked-scale")
    if ms:
        lines += ["## RatingsNMF at scale (issue 16)", "", ms.get("md", f"failed: {ms.get('error')}"), ""]
    return "\n".join(lines).rstrip() + "\n"


def _masked_scale(quick: bool, out: str) -> dict:
    """bench_masked_speed's --scale case (with ``quick``: 300,000 x 30,000, 5M ratings)."""
    from benchmarks import bench_masked_speed

    size = ["--users", "300000", "--items", "30000", "--nnz", "5000000", "--ks", "32", "--solvers", "cg"]
    argv = (size + ["--iters", "3", "--repeats", "1"]) if quick else ["--scale"]
    results = bench_masked_speed.main(argv + ["--out", out])
    md = bench_masked_speed.render(results).split("\n", 1)[1].strip()
    return {"rows": results["datasets"][0]["rows"], "md": md}


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------


def _section(name: str, fn):
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:
        log(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["wall_s"] = time.perf_counter() - t
    log(f"[{name}] {out['wall_s']:.0f} s")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cmd = "python -m benchmarks" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    res: dict = {"machine": machine_info(), "command": cmd, "quick": args.quick, "plots": {}}
    busy0, own0 = _busy_cpu_s(), _own_cpu_s()
    log(format_machine(res["machine"]))

    if "engine" in args.sections:
        from benchmarks import suite_engine

        res["engine"] = _section("engine", lambda: suite_engine.run(args.quick))
        if "problems" in res["engine"]:
            res["plots"]["engine"] = suite_engine.plot(res["engine"], os.path.join(args.out, "engine_loss.png"))

    X10 = None
    if "nnz" in args.sections or "workers" in args.sections:
        from benchmarks import suite_scaling

    if "nnz" in args.sections:
        sizes = [int(float(v)) for v in args.nnz.split(",")] if args.nnz else None
        res["nnz"] = _section("nnz", lambda: suite_scaling.run_nnz(args.quick, sizes=sizes))
        X10 = res["nnz"].pop("_X", None)
        if "rows" in res["nnz"]:
            res["plots"]["nnz"] = suite_scaling.plot_nnz(res["nnz"], os.path.join(args.out, "nnz_scaling.png"))

    if "workers" in args.sections:

        def workers():
            from benchmarks._common import make_zipf_csr

            X = X10
            if X is None:
                nnz = 1_000_000 if args.quick else 10_000_000
                X = make_zipf_csr(nnz // 50, 20_000, nnz, seed=0)
            return suite_scaling.run_workers(X, args.quick)

        res["workers"] = _section("workers", workers)
        if "rows" in res["workers"]:
            res["plots"]["workers"] = suite_scaling.plot_workers(res["workers"], os.path.join(args.out, "workers.png"))
    X10 = None  # free the matrix before the ratings sections

    if "masked-scale" in args.sections:
        out = os.path.join(args.out, "masked-scale")
        res["masked-scale"] = _section("masked-scale", lambda: _masked_scale(args.quick, out))

    if "recommend" in args.sections or "rmse-cv" in args.sections:
        from benchmarks import suite_recommend

        shared: dict = {}  # the ratings matrix and one Spark session for both sections
        try:
            if "recommend" in args.sections:
                res["recommend"] = _section("recommend", lambda: suite_recommend.run_recommend(args, shared))
            if "rmse-cv" in args.sections:
                res["rmse-cv"] = _section("rmse-cv", lambda: suite_recommend.run_rmse_cv(args, shared))
        finally:
            suite_recommend.stop(shared)

    res["wall_s"] = time.perf_counter() - t0
    res["loadavg_at_end"] = list(os.getloadavg())
    busy1 = _busy_cpu_s()
    if busy0 is not None and busy1 is not None:
        # Machine-wide busy CPU time minus this suite's own (its cluster workers included).
        other = max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0))
        res["other_cpu_s"] = other
        res["other_cpu_share"] = other / (res["wall_s"] * (os.cpu_count() or 1))
    md = render(res)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(args.out, "suite.json"), "w", encoding="utf-8") as f:
        json.dump(_clean(res), f, indent=1, default=_json_default)
        f.write("\n")
    print(md)
    print(
        f"wrote {args.out}/README.md, suite.json and "
        f"{', '.join(os.path.basename(p) for p in res['plots'].values() if p) or 'no plots'} "
        f"({res['wall_s']:.0f} s)"
    )
    failed = [s for s in args.sections if isinstance(res.get(s), dict) and "error" in res[s]]
    return 1 if failed else 0
