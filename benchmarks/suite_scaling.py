"""Suite sections "nnz" (time per iteration as X grows) and "workers" (1 vs 2
worker processes).

nnz: Zipf-like CSR matrices with a fixed number of columns and about 50
non-zeros per row, so that the rows grow with the non-zeros; dnmf
``solver="cd"``, ``init="random"``, ``tol=0`` on the local threads. Time per
iteration is the median of the callback deltas of iterations 2..N; a bare
one-thread pass of the same products is measured next to it. Linear growth
means a constant time per non-zero: the table reports each size's time per
non-zero relative to the smallest's.

workers: the same fit on ``LocalCluster(n_workers=w, threads_per_worker=1,
processes=True)`` for w = 1 and 2, and on the threaded scheduler (2
threads) for reference.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings

import numpy as np

from benchmarks._common import (
    bare_pass,
    log,
    make_zipf_csr,
    median,
    seconds,
)

NNZ_PER_ROW = 50
N_COLS = 20_000


def _fit(X, k: int, iters: int, client=None) -> dict:
    import dnmf

    marks: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def callback(iteration, elapsed, loss):
        marks.append((time.perf_counter() - t0, elapsed))

    model = dnmf.NMF(k, solver="cd", init="random", tol=0.0, max_iter=iters, random_state=0, client=client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, callback=callback)
    total = time.perf_counter() - t0
    elapsed = np.array([e for _, e in marks])
    deltas = np.diff(np.concatenate([[0.0], elapsed]))
    return {
        "setup_s": float(marks[0][0] - marks[0][1]),
        "per_iter_s": median(deltas[1:] if deltas.size > 1 else deltas),
        "per_iter_min_s": float((deltas[1:] if deltas.size > 1 else deltas).min()),
        "iter_times": deltas.tolist(),
        "total_s": total,
        "loss": float(model.reconstruction_err_),
    }


def _bare_pass(X, k: int, repeat: int) -> float:
    """Median seconds of :func:`benchmarks._common.bare_pass` over dnmf's row blocks of X."""
    from benchmarks.bench_engine import dnmf_row_chunks

    one = bare_pass(X, k, dnmf_row_chunks(X))
    return median([one() for _ in range(repeat)])


def nnz_sizes(quick: bool) -> list[int]:
    return [100_000, 300_000, 1_000_000] if quick else [1_000_000, 10_000_000, 50_000_000]


def run_nnz(quick: bool, k: int = 16, sizes: list[int] | None = None) -> dict:
    iters = 4 if quick else 8
    rows = []
    keep = None
    _fit(make_zipf_csr(2_000, 500, 20_000, seed=1), k, 3)  # warm imports and the thread pool
    for nnz in sizes or nnz_sizes(quick):
        m = max(1000, nnz // NNZ_PER_ROW)
        n = min(N_COLS, m)
        t = time.perf_counter()
        X = make_zipf_csr(m, n, nnz, seed=0)
        gen = time.perf_counter() - t
        bare = _bare_pass(X, k, repeat=2)
        fit = _fit(X, k, iters)
        row = {"nnz": nnz, "m": m, "n": n, "generate_s": gen, "bare_1t_s": bare, **fit}
        rows.append(row)
        log(
            f"[nnz] {nnz / 1e6:g}M: {seconds(fit['per_iter_s'])}/it (bare pass {seconds(bare)}), "
            f"setup {seconds(fit['setup_s'])}"
        )
        if nnz == (10_000_000 if not quick else 1_000_000):
            keep = X  # reused by the workers section
        del X
        gc.collect()
    base = rows[0]["per_iter_s"] / rows[0]["nnz"]
    for i, r in enumerate(rows):
        r["per_nnz_ns"] = r["per_iter_s"] / r["nnz"] * 1e9
        r["vs_linear"] = (r["per_iter_s"] / r["nnz"]) / base  # 1.0 = exactly linear from the smallest
        # Growth from the previous size over the growth of nnz: 1.0 = linear on that step.
        prev = rows[i - 1] if i else None
        r["step_vs_linear"] = ((r["per_iter_s"] / prev["per_iter_s"]) / (r["nnz"] / prev["nnz"])) if prev else None
        r["overhead_vs_bare"] = r["per_iter_s"] / r["bare_1t_s"]
    return {"k": k, "iters": iters, "rows": rows, "_X": keep}


def _fits(X, k: int, iters: int, repeats: int, client=None) -> dict:
    """``repeats`` fits; per-iteration figures pooled over all of them (iterations 2..N of each)."""
    runs = [_fit(X, k, iters, client=client) for _ in range(repeats)]
    deltas = [d for r in runs for d in r["iter_times"][1:]]
    return {
        "setup_s": median([r["setup_s"] for r in runs]),
        "per_iter_s": median(deltas),
        "per_iter_min_s": float(min(deltas)),
        "iter_times": [r["iter_times"] for r in runs],
        "total_s": median([r["total_s"] for r in runs]),
        "loss": runs[0]["loss"],
        "repeats": repeats,
    }


def run_workers(X, quick: bool, k: int = 16) -> dict:
    from distributed import Client, LocalCluster

    iters, repeats = (4, 1) if quick else (10, 2)
    rows = []
    _fit(X, k, 2)  # warm the local thread pool
    rows.append(dict(engine="threads (2)", workers=1, threads=2, **_fits(X, k, iters, repeats)))
    log(f"[workers] threads: {seconds(rows[-1]['per_iter_s'])}/it")
    for w in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = LocalCluster(
                n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            )
        with cluster, Client(cluster, set_as_default=False) as client:
            _fit(X, k, 2, client=client)  # warm the workers (imports, first scatter)
            rows.append(
                dict(
                    engine=f"LocalCluster, {w} process{'es' if w > 1 else ''}",
                    workers=w,
                    threads=1,
                    **_fits(X, k, iters, repeats, client=client),
                )
            )
        log(f"[workers] {w} process(es): {seconds(rows[-1]['per_iter_s'])}/it, setup {seconds(rows[-1]['setup_s'])}")
    one = next(r for r in rows if r["workers"] == 1 and r["threads"] == 1)
    for r in rows:
        r["speedup_vs_1_process"] = one["per_iter_s"] / r["per_iter_s"]
    return {"k": k, "iters": iters, "repeats": repeats, "nnz": int(X.nnz), "shape": list(X.shape), "rows": rows}


def plot_nnz(result: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = result["rows"]
    nnz = np.array([r["nnz"] for r in rows], dtype=float)
    t = np.array([r["per_iter_s"] for r in rows])
    bare = np.array([r["bare_1t_s"] for r in rows])
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    ax.loglog(nnz, t, "o-", label="dnmf per iteration (threads)")
    ax.loglog(nnz, bare, "s--", label="bare SciPy pass (1 thread)")
    ax.loglog(nnz, t[0] * nnz / nnz[0], ":", color="0.5", label="linear from the smallest")
    ax.set_xlabel("non-zeros of X")
    ax.set_ylabel("seconds")
    ax.set_title(f"time per iteration vs nnz (k = {result['k']})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_workers(result: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = result["rows"]
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    labels = [r["engine"] for r in rows]
    ax.barh(labels, [r["per_iter_s"] for r in rows], color=["0.6"] + ["C0"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.text(r["per_iter_s"], i, f"  {r['per_iter_s'] * 1e3:.0f} ms", va="center", fontsize=8)
    ax.set_xlabel("seconds per iteration")
    ax.set_title(f"{result['nnz'] / 1e6:g}M non-zeros, k = {result['k']}", fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(r["per_iter_s"] for r in rows) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
