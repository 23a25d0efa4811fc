"""Suite section "engine": dnmf vs scikit-learn (time to the same loss) and
dnmf vs the bare SciPy kernels of one iteration (overhead ratio).

Reuses benchmarks/bench_engine.py: scikit-learn runs ``tol=0, max_iter=N``
from a shared NNDSVDA start and its final loss ``L_sk`` is the target; dnmf
(threads) runs from the same start until its loss reaches ``L_sk``. The bare
pass (``X@Ht + X.T@W + W.T@W + Ht.T@Ht``, one thread) is sampled before and
after the fits so that the ratio compares times taken under the same load.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import bench_engine as be
from benchmarks._common import log, make_dense_lowrank, make_zipf_csr, median, seconds


def specs(quick: bool) -> list[dict]:
    if quick:
        return [
            dict(name="dense", m=400, n=300, k=8, iters=30, title="dense 400 x 300"),
            dict(name="sparse", m=20_000, n=4_000, nnz=200_000, k=8, iters=8, title="sparse 20,000 x 4,000, 0.2M nnz"),
        ]
    return [
        dict(name="dense", m=2_000, n=1_000, k=32, iters=50, title="dense 2,000 x 1,000"),
        dict(
            name="sparse", m=200_000, n=20_000, nnz=10_000_000, k=32, iters=20, title="sparse 200,000 x 20,000, 10M nnz"
        ),
    ]


def run(quick: bool, solvers=("cd", "mu"), seed: int = 0) -> dict:
    out = {"problems": []}
    for spec in specs(quick):
        log(f"[engine] {spec['title']}, k={spec['k']}, N={spec['iters']}")
        t = time.perf_counter()
        if spec["name"] == "dense":
            X = make_dense_lowrank(spec["m"], spec["n"], spec["k"], seed=seed)
        else:
            X = make_zipf_csr(spec["m"], spec["n"], spec["nnz"], seed=seed)
        W0, H0 = be.shared_init(X, spec["k"], "nndsvda", seed)
        prep = time.perf_counter() - t
        chunks = be.dnmf_row_chunks(X)
        _, bare_iteration = be.bare_kernels(X, W0, np.ascontiguousarray(H0.T), chunks, repeat=1, cores=1)
        if spec["name"] == "dense":  # warm imports and thread pools before timing small fits
            be.run_sklearn(X, W0, H0, spec["k"], "cd", 2)
            be.run_dnmf(X, W0, H0, spec["k"], "cd", -1.0, 2)
        entry = dict(spec, nnz=int(getattr(X, "nnz", X.size)), prepare_s=prep, row_blocks=len(chunks), solvers={})
        for solver in solvers:
            near = be.sample_bare(bare_iteration, 2)
            sk = be.run_sklearn(X, W0, H0, spec["k"], solver, spec["iters"])
            target = sk["loss"] * (1 + 1e-9)
            dn = be.run_dnmf(X, W0, H0, spec["k"], solver, target, spec["iters"] + max(5, spec["iters"] // 4))
            near += be.sample_bare(bare_iteration, 2)
            bare = median(near)
            res = {
                "sklearn_total_s": sk["total"],
                "sklearn_per_iter_s": sk["per_iter"],
                "sklearn_loss": sk["loss"],
                "dnmf_reached": dn.get("reached", False),
                "dnmf_to_target_s": dn.get("time_to_target"),
                "dnmf_iters_to_target": dn.get("iter_reached"),
                "dnmf_setup_s": dn.get("setup"),
                "dnmf_per_iter_s": dn.get("per_iter"),
                "dnmf_loss_history": dn.get("loss_history", []),
                "dnmf_iter_times": dn.get("iter_times", []),
                "sklearn_iter_times": sk.get("iter_times", []),
                "bare_1t_s": bare,
                "bare_1t_samples": near,
            }
            res["e2e_ratio"] = (res["dnmf_to_target_s"] / sk["total"]) if res["dnmf_reached"] else None
            res["per_iter_vs_sklearn"] = res["dnmf_per_iter_s"] / sk["per_iter"] if sk["per_iter"] else None
            res["overhead_vs_bare"] = res["dnmf_per_iter_s"] / bare if bare else None
            entry["solvers"][solver] = res
            log(
                f"[engine] {spec['name']}/{solver}: sklearn {seconds(sk['total'])} ({seconds(sk['per_iter'])}/it), "
                f"dnmf to L_sk {seconds(res['dnmf_to_target_s'])} ({seconds(res['dnmf_per_iter_s'])}/it), "
                f"bare pass {seconds(bare)}"
            )
        out["problems"].append(entry)
    return out


def plot(result: dict, path: str) -> str | None:
    """Loss against wall time: dnmf's curve and scikit-learn's end point, per problem and solver."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    probs = result["problems"]
    solvers = sorted({s for p in probs for s in p["solvers"]})
    fig = Figure(figsize=(5 * len(solvers), 3.4 * len(probs)))
    axes = fig.subplots(len(probs), len(solvers), squeeze=False)
    for i, p in enumerate(probs):
        for j, solver in enumerate(solvers):
            ax = axes[i, j]
            r = p["solvers"].get(solver)
            if r is None:
                ax.set_axis_off()
                continue
            t = np.cumsum(r["dnmf_iter_times"]) + (r["dnmf_setup_s"] or 0.0)
            ax.plot(t, r["dnmf_loss_history"], marker=".", label="dnmf (threads)")
            ax.plot(
                [r["sklearn_total_s"]],
                [r["sklearn_loss"]],
                "s",
                color="C3",
                label=f"scikit-learn after {p['iters']} its",
            )
            ax.axhline(r["sklearn_loss"], color="C3", lw=0.8, ls="--")
            ax.set_xlabel("wall time (s)")
            ax.set_ylabel("loss")
            ax.set_title(f"{p['title']}, {solver}", fontsize=10)
            lo = r["sklearn_loss"]
            hi = max(r["dnmf_loss_history"][: max(2, len(r["dnmf_loss_history"]) // 5)] or [lo])
            if hi > lo:
                ax.set_ylim(lo - 0.05 * (hi - lo), hi)
            ax.legend(fontsize=8)
            ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
