"""Benchmark: dnmf's iteration engine against scikit-learn's NMF.

Two problems, both solvers ("cd", "mu"), one run:

(a) dense  2,000 x 1,000 planted low-rank product plus noise, k = 32;
(b) sparse 200,000 x 20,000 CSR, 10M non-zeros, Zipf-like row and column
    popularity, ratings 1..5, k = 32.

For every problem and solver, scikit-learn runs ``tol=0, max_iter=N`` from a
shared custom start (W0, H0 from scikit-learn's own initialisation, computed
once) and its final loss ``L_sk`` and wall time are recorded; dnmf then runs
from the same start with a callback recording (elapsed, loss) and stops at
the first iteration whose loss is <= ``L_sk * (1 + rtol)``. Reported:

- setup: dnmf's one-off work before the first iteration (validation,
  blocking, init checks), i.e. wall time at the first callback minus the
  driver's elapsed time; for scikit-learn, the time before its first update;
- time per iteration: median of the per-iteration deltas (iterations 2..N;
  iteration 1 also persists the start and computes the incoming loss);
  scikit-learn's are taken from timestamps of its update functions;
- time to reach ``L_sk`` end to end (dnmf: from the call to ``fit``,
  setup included; scikit-learn: its whole fit);
- dnmf's time per iteration divided by the bare SciPy/NumPy time of one
  iteration's products (``X @ Ht`` + the faster of ``X.T @ W`` on the CSC
  view and ``sum_i X_i.T @ W_i`` over dnmf's row blocks + ``W.T @ W`` +
  ``Ht.T @ Ht``), single-threaded and on all cores (row blocks in a thread
  pool, default BLAS threads).

dnmf runs on the threaded scheduler; ``--distributed`` adds a
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.

    python benchmarks/bench_engine.py                 # full run (~5-10 min on 2 cores)
    python benchmarks/bench_engine.py --quick         # small sizes, < 1 min
    python benchmarks/bench_engine.py --distributed --dtype float32 --out bench-results/

Writes ``engine.md`` and ``engine.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (
    blas_threads,
    format_machine,
    log,
    machine_info,
    make_dense_lowrank,
    make_zipf_csr,
    markdown_table,
    median,
    seconds,
    time_call,
    usable_cores,
    write_results,
)

SOLVERS = ("cd", "mu")

#: Targets checked at the end of the run.
TARGET_SPARSE_VS_BARE_1T = 1.5  # (b): dnmf per iteration <= 1.5 x bare kernels (1 thread)
TARGET_DENSE_VS_SKLEARN_E2E = 2.0  # (a): dnmf time to L_sk (incl. setup) <= 2 x sklearn's


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


def problem_specs(args) -> list[dict]:
    if args.quick:
        dense = dict(m=400, n=300, k=8, iters=30, repeats=3)
        sparse = dict(m=20_000, n=4_000, nnz=200_000, k=8, iters=8, repeats=1)
    else:
        dense = dict(m=2_000, n=1_000, k=32, iters=100, repeats=3)
        sparse = dict(m=200_000, n=20_000, nnz=10_000_000, k=32, iters=20, repeats=1)
    specs = []
    if "a" in args.problems:
        dense.update(name="a", kind="dense", title=f"(a) dense {dense['m']:,}x{dense['n']:,}")
        specs.append(dense)
    if "b" in args.problems:
        sparse.update(
            name="b",
            kind="sparse",
            title=f"(b) sparse {sparse['m']:,}x{sparse['n']:,}, nnz {sparse['nnz'] / 1e6:g}M",
        )
        specs.append(sparse)
    for s in specs:
        if args.iters is not None:
            s["iters"] = args.iters
        if args.repeats is not None:
            s["repeats"] = args.repeats
    return specs


def make_problem(spec: dict, dtype, seed: int):
    if spec["kind"] == "dense":
        return make_dense_lowrank(spec["m"], spec["n"], spec["k"], seed=seed, dtype=dtype)
    return make_zipf_csr(spec["m"], spec["n"], spec["nnz"], seed=seed, dtype=dtype)


def shared_init(X, k: int, method: str, seed: int):
    """(W0, H0) from scikit-learn's own initialisation, computed once."""
    try:
        from sklearn.decomposition._nmf import _initialize_nmf

        W0, H0 = _initialize_nmf(X, k, init=method, random_state=seed)
    except ImportError:  # pragma: no cover - private API moved: sklearn's "random" recipe
        rng = np.random.default_rng(seed)
        avg = math.sqrt(X.mean() / k)
        W0 = avg * np.abs(rng.standard_normal((X.shape[0], k)))
        H0 = avg * np.abs(rng.standard_normal((k, X.shape[1])))
    return np.ascontiguousarray(W0, dtype=X.dtype), np.ascontiguousarray(H0, dtype=X.dtype)


def dnmf_row_chunks(X) -> tuple[int, ...]:
    """The row blocking dnmf picks for an in-memory X (chunks="auto")."""
    nbytes = X.data.nbytes + X.indices.nbytes if sp.issparse(X) else X.nbytes
    try:
        from dnmf.base import inputs

        return tuple(inputs.memory_auto_chunks(X.shape, nbytes)[0])
    except Exception:
        parts = max(1, min(X.shape[0], math.ceil(nbytes / (16 * 2**20))))
        base, extra = divmod(X.shape[0], parts)
        return tuple(base + (1 if p < extra else 0) for p in range(parts))


# --------------------------------------------------------------------------
# Bare kernels
# --------------------------------------------------------------------------


def bare_kernels(X, W, Ht, row_chunks, repeat: int, cores: int) -> dict:
    """Time one iteration's products with plain SciPy/NumPy.

    ``1t``: everything sequential with BLAS limited to one thread.
    ``default``: sequential, default BLAS threads (SciPy's sparse products
    are single-threaded either way).
    ``all_cores``: the row blocks in a pool of ``cores`` threads (SciPy
    releases the GIL), default BLAS threads.
    """
    offs = np.concatenate([[0], np.cumsum(row_chunks)]).astype(int)
    Xb = [X[offs[i] : offs[i + 1]] for i in range(len(row_chunks))]
    Wb = [W[offs[i] : offs[i + 1]] for i in range(len(row_chunks))]
    Htb = [Ht]  # Ht has a single column block in dnmf's layout for these sizes

    def xht():
        return X @ Ht

    def xtw_whole():
        return X.T @ W

    def xtw_blocks():
        out = Xb[0].T @ Wb[0]
        for x, w in zip(Xb[1:], Wb[1:], strict=True):
            out += x.T @ w
        return out

    def wtw():
        return W.T @ W

    def hht():
        return Ht.T @ Ht

    ops = {"X@Ht": xht, "X.T@W (CSC view)": xtw_whole, "sum X_i.T@W_i": xtw_blocks, "W.T@W": wtw, "Ht.T@Ht": hht}
    out: dict = {"row_blocks": len(row_chunks), "cores": cores}
    for mode, limit in (("1t", 1), ("default", None)):
        with blas_threads(limit):
            times = {name: time_call(fn, repeat=repeat)["median"] for name, fn in ops.items()}
        xtw = min(times["X.T@W (CSC view)"], times["sum X_i.T@W_i"])
        times["total"] = times["X@Ht"] + xtw + times["W.T@W"] + times["Ht.T@Ht"]
        times["xtw_best"] = "CSC view" if times["X.T@W (CSC view)"] <= times["sum X_i.T@W_i"] else "row blocks"
        out[mode] = times

    # All cores: the products over row blocks in a thread pool.
    with ThreadPoolExecutor(max_workers=cores) as pool:

        def parallel_iteration():
            xh = list(pool.map(lambda x: x @ Htb[0], Xb))
            parts = list(pool.map(lambda xw: xw[0].T @ xw[1], zip(Xb, Wb, strict=True)))
            total = parts[0].copy()
            for p in parts[1:]:
                total += p
            grams = list(pool.map(lambda w: w.T @ w, Wb))
            return xh, total, grams, Ht.T @ Ht

        out["all_cores"] = {"total": time_call(parallel_iteration, repeat=repeat)["median"]}

    xtw_fn = xtw_whole if out["1t"]["xtw_best"] == "CSC view" else xtw_blocks

    def iteration_1t():
        """One iteration's products, sequential (call under ``blas_threads(1)``)."""
        xht(), xtw_fn(), wtw(), hht()

    return out, iteration_1t


def sample_bare(iteration_1t, repeat: int) -> list[float]:
    """Wall times of ``repeat`` bare iterations (taken next to the fits they are compared with)."""
    with blas_threads(1):  # entering the limiter costs milliseconds: keep it out of the timing
        return time_call(iteration_1t, repeat=repeat, warmup=0)["times"]


# --------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------


class SklearnClock:
    """Timestamps of scikit-learn's per-iteration update calls.

    Wraps (in this process only) the private update functions that
    ``sklearn.decomposition._nmf`` calls once (mu) or twice (cd) per
    iteration; the first call of each iteration is the W update.
    """

    NAMES = {"cd": ("_update_coordinate_descent",), "mu": ("_multiplicative_update_w", "_multiplicative_update_h")}

    def __init__(self, solver: str):
        import sklearn.decomposition._nmf as nmf_mod

        self.mod = nmf_mod
        self.solver = solver
        self.calls: list[tuple[str, float, float]] = []
        self.saved = {}

    def __enter__(self):
        for name in self.NAMES[self.solver]:
            fn = getattr(self.mod, name, None)
            if fn is None:
                continue
            self.saved[name] = fn

            def wrapped(*a, __fn=fn, __name=name, **kw):
                t = time.perf_counter()
                r = __fn(*a, **kw)
                self.calls.append((__name, t, time.perf_counter()))
                return r

            setattr(self.mod, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.mod, name, fn)

    def iterations(self) -> tuple[list[float], float | None]:
        """(per-iteration wall times, start of the first iteration)."""
        per = 2 if self.solver == "cd" or len(self.saved) == 2 else 1
        calls = self.calls
        if not calls or len(calls) % per:
            return [], None
        starts = [calls[i][1] for i in range(0, len(calls), per)]
        end = calls[-1][2]
        return [b - a for a, b in zip(starts, starts[1:] + [end], strict=True)], starts[0]


def run_sklearn(X, W0, H0, k: int, solver: str, iters: int) -> dict:
    from sklearn.decomposition import NMF

    W, H = W0.copy(), H0.copy()  # scikit-learn updates a custom W in place
    est = NMF(n_components=k, init="custom", solver=solver, tol=0.0, max_iter=iters, random_state=0)
    with SklearnClock(solver) as clock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit_transform(X, W=W, H=H)
        total = time.perf_counter() - t0
    per_iter, first = clock.iterations()
    return {
        "total": total,
        "setup": None if first is None else first - t0,
        "per_iter": median(per_iter[1:] or per_iter) if per_iter else total / max(est.n_iter_, 1),
        "first_iter": per_iter[0] if per_iter else None,
        "per_iter_min": min(per_iter[1:] or per_iter) if per_iter else None,
        "iter_times": per_iter,
        "n_iter": int(est.n_iter_),
        "loss": float(est.reconstruction_err_),
    }


# --------------------------------------------------------------------------
# dnmf
# --------------------------------------------------------------------------


def run_dnmf(X, W0, H0, k: int, solver: str, target: float, max_iter: int, client=None) -> dict:
    import dnmf

    rec: list[tuple[int, float, float, float]] = []  # (iteration, wall since fit, elapsed, loss)
    t0 = [0.0]

    def callback(iteration, elapsed, loss):
        rec.append((int(iteration), time.perf_counter() - t0[0], float(elapsed), float(loss)))
        return not (loss <= target)

    est = dnmf.NMF(
        n_components=k, init="custom", solver=solver, tol=0.0, max_iter=max_iter, random_state=0, client=client
    )
    W, H = W0.copy(), H0.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0[0] = time.perf_counter()
        est.fit(X, W=W, H=H, callback=callback)
        total = time.perf_counter() - t0[0]
    if not rec:
        return {"total": total, "reached": False, "n_iter": int(est.n_iter_)}
    its = np.array([r[0] for r in rec])
    wall = np.array([r[1] for r in rec])
    elapsed = np.array([r[2] for r in rec])
    loss = np.array([r[3] for r in rec])
    deltas = np.diff(np.concatenate([[0.0], elapsed]))
    hit = np.nonzero(loss <= target)[0]
    reached = bool(hit.size)
    i_hit = int(hit[0]) if reached else None
    return {
        "total": total,
        "setup": float(wall[0] - elapsed[0]),
        "first_iter": float(deltas[0]),
        "per_iter": median(deltas[1:] if deltas.size > 1 else deltas),
        "per_iter_min": float((deltas[1:] if deltas.size > 1 else deltas).min()),
        "iter_times": deltas.tolist(),
        "n_iter": int(est.n_iter_),
        "reached": reached,
        "iter_reached": int(its[i_hit]) if reached else None,
        "time_to_target": float(wall[i_hit]) if reached else None,
        "loss": float(est.reconstruction_err_),
        "best_loss": float(loss.min()),
        "loss_history": loss.tolist(),
        # Post-loop work: gathering W and components_ from the blocks.
        "finish": float(total - wall[-1]),
    }


def median_of_runs(runs: list[dict]) -> dict:
    """Median of each numeric field over repeated runs (lists from the median run)."""
    if len(runs) == 1:
        return dict(runs[0], repeats=1)
    key = "time_to_target" if runs[0].get("time_to_target") is not None else "total"
    order = sorted(runs, key=lambda r: (r.get(key) is None, r.get(key) or 0.0))
    out = dict(order[len(order) // 2])
    for f in ("total", "setup", "per_iter", "per_iter_min", "first_iter", "time_to_target", "finish"):
        vals = [r.get(f) for r in runs if r.get(f) is not None]
        if vals:
            out[f] = median(vals)
    out["repeats"] = len(runs)
    out["reached"] = all(r.get("reached", True) for r in runs)
    return out


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (finishes in < 1 minute)")
    p.add_argument("--iters", type=int, default=None, help="iterations N (default 100 for (a), 20 for (b))")
    p.add_argument("--repeats", type=int, default=None, help="fits per engine (default 3 for (a), 1 for (b))")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--distributed", action="store_true", help="also run dnmf on a 2-process LocalCluster")
    p.add_argument("--problems", default="ab", help="which problems: 'a', 'b' or 'ab' (default)")
    p.add_argument("--init", default="nndsvda", choices=("nndsvda", "nndsvd", "nndsvdar", "random"))
    p.add_argument("--solvers", default="cd,mu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit BLAS threads for the whole run (default: leave the library defaults)",
    )
    p.add_argument("--kernel-repeats", type=int, default=None, help="repeats of each bare kernel (default 5)")
    p.add_argument("--out", default="bench-results", help="output directory (engine.md, engine.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with blas_threads(args.blas_threads):
        return _main(args)


def _main(args) -> dict:
    dtype = np.dtype(args.dtype)
    rtol = 1e-9 if dtype == np.float64 else 1e-5
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    cores = usable_cores()
    info = machine_info()
    t_start = time.perf_counter()
    log(format_machine(info))

    specs = problem_specs(args)
    results: dict = {
        "benchmark": "engine",
        "machine": info,
        "config": {
            "quick": args.quick,
            "dtype": str(dtype),
            "init": args.init,
            "seed": args.seed,
            "rtol_target": rtol,
            "distributed": args.distributed,
            "solvers": solvers,
            "blas_threads": args.blas_threads,
        },
        "problems": {},
    }
    data, bare_iters = {}, {}
    for spec in specs:
        name = spec["name"]
        log(f"\n== {spec['title']}, k={spec['k']}, N={spec['iters']} iterations, {dtype}")
        t = time.perf_counter()
        X = make_problem(spec, dtype, args.seed)
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        W0, H0 = shared_init(X, spec["k"], args.init, args.seed)
        t_init = time.perf_counter() - t
        log(f"generated in {t_gen:.2f} s, {args.init} init in {t_init:.2f} s")
        chunks = dnmf_row_chunks(X)
        Ht0 = np.ascontiguousarray(H0.T)
        kr = args.kernel_repeats or (5 if spec["kind"] == "dense" or args.quick else 3)
        bare, bare_iteration = bare_kernels(X, W0, Ht0, chunks, repeat=kr, cores=cores)
        log(f"bare kernels: 1 thread {seconds(bare['1t']['total'])}, all cores {seconds(bare['all_cores']['total'])}")
        pres = {
            "spec": {k: v for k, v in spec.items()},
            "nnz": int(X.nnz) if sp.issparse(X) else int(X.size),
            "generate_s": t_gen,
            "init_s": t_init,
            "row_blocks": len(chunks),
            "bare": bare,
            "solvers": {},
        }
        if spec["kind"] == "dense":  # warm imports and thread pools before timing small fits
            run_sklearn(X, W0, H0, spec["k"], "cd", 2)
            run_dnmf(X, W0, H0, spec["k"], "cd", -1.0, 2)
        for solver in solvers:
            N = spec["iters"]
            sk_runs, dn_runs = [], []
            # Bare 1-thread iterations are sampled before, between and after
            # the fits, so that the ratios compare times taken under the same
            # machine load (the machine may be shared).
            near = sample_bare(bare_iteration, 2)
            for _ in range(spec["repeats"]):
                sk_runs.append(run_sklearn(X, W0, H0, spec["k"], solver, N))
            sk = median_of_runs(sk_runs)
            target = sk["loss"] * (1 + rtol)
            max_iter = N + max(5, N // 4)
            near += sample_bare(bare_iteration, 2)
            for _ in range(spec["repeats"]):
                dn_runs.append(run_dnmf(X, W0, H0, spec["k"], solver, target, max_iter))
            dn = median_of_runs(dn_runs)
            near += sample_bare(bare_iteration, 2)
            pres["solvers"][solver] = {
                "target_loss": target,
                "sklearn": sk,
                "dnmf_threads": dn,
                "bare_1t_near": {"median": median(near), "min": min(near), "times": near},
            }
            log(
                f"[{solver}] sklearn {seconds(sk['per_iter'])}/it, total {seconds(sk['total'])}, loss {sk['loss']:.10g}; "
                f"dnmf setup {seconds(dn.get('setup'))}, {seconds(dn.get('per_iter'))}/it, "
                f"L_sk at it {dn.get('iter_reached')} after {seconds(dn.get('time_to_target'))}"
            )
        results["problems"][name] = pres
        data[name] = (spec, X, W0, H0)
        bare_iters[name] = bare_iteration

    if args.distributed:
        import logging

        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        log("\n== distributed: LocalCluster(n_workers=2, threads_per_worker=1, processes=True)")
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            for name, (spec, X, W0, H0) in data.items():
                for solver in solvers:
                    entry = results["problems"][name]["solvers"][solver]
                    N = spec["iters"]
                    runs = [
                        run_dnmf(X, W0, H0, spec["k"], solver, entry["target_loss"], N + max(5, N // 4), client=client)
                        for _ in range(spec["repeats"])
                    ]
                    entry["dnmf_distributed"] = dn = median_of_runs(runs)
                    near = sample_bare(bare_iters[name], 2)
                    dn["bare_1t_near"] = {"median": median(near), "min": min(near), "times": near}
                    log(
                        f"[{name}/{solver}] distributed setup {seconds(dn.get('setup'))}, "
                        f"{seconds(dn.get('per_iter'))}/it, L_sk after {seconds(dn.get('time_to_target'))}"
                    )

    results["wall_s"] = time.perf_counter() - t_start
    results["loadavg_at_end"] = os.getloadavg()
    md, checks = render(results)
    results["checks"] = checks
    paths = write_results(args.out, "engine", md, results)
    print(md)
    print(f"\nwrote {paths[0]} and {paths[1]} ({results['wall_s']:.0f} s)")
    return results


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _ratio(a, b):
    if a is None or b is None or not b or not np.isfinite(a) or not np.isfinite(b):
        return None
    return a / b


def _x(r):
    return "–" if r is None else f"{r:.2f}x"


def render(results: dict) -> tuple[str, list[dict]]:
    cfg = results["config"]
    lines = [
        "# dnmf engine benchmark",
        "",
        "```",
        format_machine(results["machine"]),
        f"dtype {cfg['dtype']}, init {cfg['init']} (shared), seed {cfg['seed']}, "
        f"target loss L_sk*(1+{cfg['rtol_target']:g}), BLAS threads "
        f"{cfg.get('blas_threads') or 'default'}{', quick sizes' if cfg['quick'] else ''}",
        "```",
        "",
        "Per iteration: median over iterations 2..N ((min): fastest of them, a guide to the "
        "undisturbed cost on a shared machine). Setup: dnmf's validation and blocking before the "
        "first iteration (scikit-learn: time before its first update). To L_sk: wall time from the call "
        "to fit until the loss first reaches scikit-learn's final loss (setup included; for scikit-learn, "
        "its whole fit). Bare: one iteration's products (X@Ht + X.T@W + W.T@W + Ht.T@Ht) in plain "
        "SciPy/NumPy; 'vs bare 1t' divides by single-threaded bare iterations sampled before, between and "
        "after that solver's fits (median; '(min vs min)': fastest dnmf iteration / fastest bare one); "
        "'vs bare all cores' by the all-cores time of the kernel table.",
        "",
    ]
    headers = [
        "problem",
        "solver",
        "engine",
        "setup",
        "1st iter",
        "per iter",
        "(min)",
        "iters to L_sk",
        "to L_sk (e2e)",
        "fit total",
        "final loss",
        "per iter vs sklearn",
        "vs bare 1t",
        "(min vs min)",
        "vs bare all cores",
    ]
    rows = []
    checks = []
    for name, p in results["problems"].items():
        barem = p["bare"]["all_cores"]["total"]
        for solver, e in p["solvers"].items():
            sk = e["sklearn"]
            near = e.get("bare_1t_near") or {"median": p["bare"]["1t"]["total"], "min": p["bare"]["1t"]["total"]}
            for eng, label in (
                ("sklearn", "scikit-learn"),
                ("dnmf_threads", "dnmf threads"),
                ("dnmf_distributed", "dnmf distributed"),
            ):
                r = e.get(eng)
                if r is None:
                    continue
                rn = r.get("bare_1t_near") or near
                is_sk = eng == "sklearn"
                to_target = r["total"] if is_sk else (r.get("time_to_target") if r.get("reached") else None)
                iters = r["n_iter"] if is_sk else (r.get("iter_reached") or f"not reached ({r.get('n_iter')})")
                rows.append(
                    [
                        p["spec"]["title"].split(" ")[0],
                        solver,
                        label,
                        seconds(r.get("setup")),
                        seconds(r.get("first_iter")),
                        seconds(r.get("per_iter")),
                        seconds(r.get("per_iter_min")),
                        iters,
                        seconds(to_target),
                        seconds(r.get("total")),
                        f"{r.get('loss', float('nan')):.6g}",
                        "1.00x" if is_sk else _x(_ratio(r.get("per_iter"), sk["per_iter"])),
                        _x(_ratio(r.get("per_iter"), rn["median"])),
                        _x(_ratio(r.get("per_iter_min"), rn["min"])),
                        _x(_ratio(r.get("per_iter"), barem)),
                    ]
                )
            dn = e["dnmf_threads"]
            if name == "b":
                ratio = _ratio(dn.get("per_iter"), near["median"])
                checks.append(
                    {
                        "problem": name,
                        "solver": solver,
                        "what": f"dnmf per iteration <= {TARGET_SPARSE_VS_BARE_1T}x bare kernels (1 thread)",
                        "ratio": ratio,
                        "target": TARGET_SPARSE_VS_BARE_1T,
                        "ratio_min_vs_min": _ratio(dn.get("per_iter_min"), near["min"]),
                        "ok": ratio is not None and ratio <= TARGET_SPARSE_VS_BARE_1T,
                    }
                )
                ratio = _ratio(dn.get("per_iter"), sk["per_iter"])
                checks.append(
                    {
                        "problem": name,
                        "solver": solver,
                        "what": "dnmf per iteration faster than scikit-learn",
                        "ratio": ratio,
                        "target": 1.0,
                        "ok": ratio is not None and ratio < 1.0,
                        "ratio_min_vs_min": _ratio(dn.get("per_iter_min"), sk.get("per_iter_min")),
                    }
                )
            if name == "a":
                ratio = _ratio(dn.get("time_to_target") if dn.get("reached") else None, sk["total"])
                checks.append(
                    {
                        "problem": name,
                        "solver": solver,
                        "what": f"dnmf time to L_sk incl. setup <= {TARGET_DENSE_VS_SKLEARN_E2E}x scikit-learn's fit",
                        "ratio": ratio,
                        "target": TARGET_DENSE_VS_SKLEARN_E2E,
                        "ok": ratio is not None and ratio <= TARGET_DENSE_VS_SKLEARN_E2E,
                    }
                )
    lines += [markdown_table(headers, rows, align="lll" + "r" * (len(headers) - 3)), ""]

    kh = ["problem", "row blocks", "threads", "X@Ht", "X.T@W (CSC view)", "sum X_i.T@W_i", "W.T@W", "Ht.T@Ht", "total"]
    krows = []
    for p in results["problems"].values():
        b = p["bare"]
        for mode, label in (("1t", "1"), ("default", "default BLAS")):
            t = b[mode]
            krows.append(
                [
                    p["spec"]["title"],
                    b["row_blocks"],
                    label,
                    seconds(t["X@Ht"]),
                    seconds(t["X.T@W (CSC view)"]),
                    seconds(t["sum X_i.T@W_i"]),
                    seconds(t["W.T@W"]),
                    seconds(t["Ht.T@Ht"]),
                    f"{seconds(t['total'])} (X.T@W via {t['xtw_best']})",
                ]
            )
        krows.append(
            [
                p["spec"]["title"],
                b["row_blocks"],
                f"all {b['cores']} cores (row blocks in threads)",
                "",
                "",
                "",
                "",
                "",
                seconds(b["all_cores"]["total"]),
            ]
        )
    lines += ["Bare kernels of one iteration (median):", "", markdown_table(kh, krows, align="lrl" + "r" * 6), ""]

    lines += ["Targets:", ""]
    for c in checks:
        mark = "PASS" if c["ok"] else "MISS"
        extra = f" (fastest iterations: {_x(c['ratio_min_vs_min'])})" if c.get("ratio_min_vs_min") else ""
        lines.append(f"- [{mark}] ({c['problem']}, {c['solver']}) {c['what']}: {_x(c['ratio'])}{extra}")
    gen = ", ".join(
        f"{n}: generate {p['generate_s']:.1f} s, init {p['init_s']:.1f} s" for n, p in results["problems"].items()
    )
    load = results.get("loadavg_at_end")
    load_s = f" Load average at end: {' '.join(f'{x:.2f}' for x in load)}." if load else ""
    lines += ["", f"Data: {gen}. Whole run: {results['wall_s']:.0f} s.{load_s}"]
    return "\n".join(lines), checks


if __name__ == "__main__":
    main()
