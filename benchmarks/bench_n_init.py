"""Benchmark: ``NMF(n_init=5)`` on a 2-worker cluster against 5 sequential fits.

``n_init=N`` fits N starting points and keeps the lowest final loss. With a
distributed ``Client`` the N fits are submitted side by side (one driver
thread each), so the cluster interleaves their tasks; the alternative a user
has is a loop of N single fits with different seeds. Both are timed here on
the same ``LocalCluster`` (2 worker processes, 1 thread each), in one run,
alternating, ``--repeat`` times; reported are the medians and their ratio,
plus the final losses (``n_init`` must never end above the best sequential
loss it contains: restart 0 of ``n_init`` is the ``n_init=1`` fit).

Problems: (a) dense 4,000 x 1,000, k = 16; (b) sparse 50,000 x 5,000 with
1% non-zeros, k = 16. ``--quick`` shrinks both for a smoke run.

    python benchmarks/bench_n_init.py            # ~10 min on 2 cores
    python benchmarks/bench_n_init.py --quick    # < 1 min

Writes ``n_init.md`` and ``n_init.json`` under ``--out`` (bench-results/).
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

from benchmarks._common import format_machine, log, machine_info, markdown_table, median, write_results


def problems(quick: bool):
    rng = np.random.default_rng(0)
    if quick:
        dense = (rng.exponential(1.0, (600, 6)) @ rng.exponential(1.0, (6, 200))).astype(np.float64)
        sparse = sp.random(5000, 800, density=0.01, random_state=1, format="csr")
        return [("(a) dense 600x200", dense, (150, 200)), ("(b) sparse 5,000x800, 1%", sparse, (1250, 800))]
    dense = rng.exponential(1.0, (4000, 16)) @ rng.exponential(1.0, (16, 1000))
    dense += 0.05 * dense.std() * np.abs(rng.standard_normal(dense.shape))
    sparse = sp.random(50_000, 5_000, density=0.01, random_state=1, format="csr")
    return [("(a) dense 4,000x1,000", dense, (1000, 1000)), ("(b) sparse 50,000x5,000, 1%", sparse, (12_500, 5_000))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problems (smoke run)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions (default 3)")
    ap.add_argument("--n-init", type=int, default=5)
    ap.add_argument("--k", type=int, default=None, help="rank (default 16; 6 with --quick)")
    ap.add_argument("--max-iter", type=int, default=None, help="default 100 (30 with --quick)")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    import dnmf

    k = args.k or (6 if args.quick else 16)
    max_iter = args.max_iter or (30 if args.quick else 100)
    info = machine_info()
    log(format_machine(info))
    rows, data = [], {"machine": info, "n_init": args.n_init, "k": k, "max_iter": max_iter, "cases": []}
    warnings.simplefilter("ignore")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for title, X, chunks in problems(args.quick):
            common = dict(solver="cd", init="random", max_iter=max_iter, tol=1e-4, chunks=chunks, client=client)
            t_par, t_seq, best_par, best_seq = [], [], [], []
            for r in range(args.repeat):
                t = time.perf_counter()
                m = dnmf.NMF(k, n_init=args.n_init, random_state=r, **common).fit(X)
                t_par.append(time.perf_counter() - t)
                best_par.append(m.reconstruction_err_)
                t = time.perf_counter()
                losses = [
                    dnmf.NMF(k, random_state=(r if i == 0 else 1000 * (r + 1) + i), **common).fit(X).reconstruction_err_
                    for i in range(args.n_init)
                ]
                t_seq.append(time.perf_counter() - t)
                best_seq.append(min(losses))
                log(f"{title} repeat {r}: n_init {t_par[-1]:.1f}s, sequential {t_seq[-1]:.1f}s")
            par, seq = median(t_par), median(t_seq)
            rows.append(
                [
                    title,
                    f"{par:.1f}",
                    f"{seq:.1f}",
                    f"{seq / par:.2f}",
                    f"{median(best_par):.4g}",
                    f"{median(best_seq):.4g}",
                ]
            )
            data["cases"].append(
                dict(title=title, n_init_s=t_par, sequential_s=t_seq, loss_n_init=best_par, loss_sequential=best_seq)
            )
    data["loadavg_at_end"] = os.getloadavg()
    table = markdown_table(
        [
            "problem",
            f"n_init={args.n_init} (s)",
            f"{args.n_init} sequential fits (s)",
            "speed-up",
            "best loss, n_init",
            "best loss, sequential",
        ],
        rows,
    )
    md = (
        f"# n_init={args.n_init} vs {args.n_init} sequential fits, 2 worker processes\n\n"
        f"k={k}, solver cd, init random, max_iter={max_iter}, tol=1e-4; medians of {args.repeat} "
        f"alternating repetitions. Sequential seeds differ from n_init's derived seeds except restart 0, "
        f"so their best losses differ a little.\n\n{table}\n\n{format_machine(info)}\n"
        f"load average at the end: {' '.join(f'{x:.2f}' for x in data['loadavg_at_end'])}\n"
    )
    print(md)
    write_results(args.out, "n_init", md, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
