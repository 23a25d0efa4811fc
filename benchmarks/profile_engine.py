"""Where does a dnmf iteration's time go? (diagnostic companion of bench_engine)

Runs a few dnmf iterations on problem (b) of ``bench_engine`` (or the quick
size) and reports, per iteration:

1. threaded scheduler, instrumented: wall time; main-thread time building
   the step graph (``blocked.step``), in ``Runner.persist`` (scheduling and
   waiting for the tasks) and fetching the scalars; busy time of the step's
   tasks (``_row_task``, ``_col_task``, ...) and of the kernels inside them
   (``xdot``, ``xtdot``, ``cd_update``, ``gram``, ``mu_*``) summed over
   threads; the same products timed bare for comparison;
2. synchronous scheduler under cProfile: the top functions by own time
   (everything runs in the main thread, so dask's overhead is visible).

Wrappers are installed in this process only; dnmf's files are not touched.

    python benchmarks/profile_engine.py [--quick] [--solver cd] [--iters 4]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from collections import defaultdict

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import blas_threads, log, make_zipf_csr, median, seconds, time_call
from benchmarks.bench_engine import dnmf_row_chunks, shared_init


class Recorder:
    """Thread-safe (name -> [durations]) with outermost-call-only nesting."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []  # (name, thread ident, t0, t1)
        self.local = threading.local()

    def wrap(self, fn, name):
        rec = self

        def wrapped(*a, **kw):
            depth = getattr(rec.local, name, 0)
            setattr(rec.local, name, depth + 1)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                t1 = time.perf_counter()
                setattr(rec.local, name, depth)
                if depth == 0:
                    with rec.lock:
                        rec.events.append((name, threading.get_ident(), t0, t1))

        wrapped.__wrapped__ = fn
        return wrapped

    def between(self, t0, t1):
        return [e for e in self.events if e[2] >= t0 and e[3] <= t1]


def instrument(rec: Recorder):
    """Patch dnmf's module attributes (this process only); returns an undo list."""
    from dnmf.nmf import graph as blocked
    from dnmf.nmf import kernels
    from dnmf.nmf import step as driver

    undo = []

    def patch(mod, attr, name):
        fn = getattr(mod, attr)
        undo.append((mod, attr, fn))
        setattr(mod, attr, rec.wrap(fn, name))

    # Kernels: looked up through the `kernels` module by blocked.py at call time.
    # Nesting (xtdot -> xdot) is counted once, under the outer name, by
    # giving the inner one a separate depth key only when called from outside.
    for attr in ("cd_update", "gram", "mu_apply", "mu_frobenius_denominator"):
        patch(kernels, attr, "k:" + attr)
    xdot, xtdot = kernels.xdot, kernels.xtdot
    undo += [(kernels, "xdot", xdot), (kernels, "xtdot", xtdot)]
    w_xdot = rec.wrap(xdot, "k:xdot (X_ij@Ht_j)")

    def xtdot_plain(X, A):  # same as kernels.xtdot, without re-entering the wrapped xdot
        return xdot(X.T, A)

    kernels.xdot = w_xdot
    kernels.xtdot = rec.wrap(xtdot_plain, "k:xtdot (X_ij.T@W_i)")
    # Tasks: blocked.step reads these globals when it builds each graph.
    for attr in ("_row_task", "_col_task", "_finish", "sum_list"):
        patch(blocked, attr, "t:" + attr)
    # Driver side (main thread).
    patch(blocked, "step", "d:build step graph")
    undo.append((driver.Runner, "persist", driver.Runner.persist))
    undo.append((driver.Runner, "fetch", driver.Runner.fetch))
    driver.Runner.persist = rec.wrap(driver.Runner.persist, "d:Runner.persist")
    driver.Runner.fetch = rec.wrap(driver.Runner.fetch, "d:Runner.fetch")
    return undo


def uninstrument(undo):
    for mod, attr, fn in reversed(undo):
        setattr(mod, attr, fn)


def fit(X, W0, H0, k, solver, iters, client=None):
    import dnmf

    marks = []
    t0 = [0.0]

    def cb(it, elapsed, loss):
        marks.append((it, time.perf_counter()))

    est = dnmf.NMF(k, init="custom", solver=solver, tol=0.0, max_iter=iters, random_state=0, client=client)
    t0[0] = time.perf_counter()
    est.fit(X, W=W0.copy(), H=H0.copy(), callback=cb)
    return t0[0], marks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--solver", default="cd", choices=("cd", "mu"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blas-threads", type=int, default=None, help="limit BLAS threads (default: library default)")
    a = p.parse_args(argv)
    with blas_threads(a.blas_threads):
        _main(a)


def _main(a):
    m, n, nnz, k = (20_000, 4_000, 200_000, 8) if a.quick else (200_000, 20_000, 10_000_000, 32)
    X = make_zipf_csr(m, n, nnz, seed=a.seed)
    W0, H0 = shared_init(X, k, "random", a.seed)
    chunks = dnmf_row_chunks(X)
    print(
        f"problem: {m:,}x{n:,}, nnz {nnz:,}, k={k}, {len(chunks)} row blocks, solver {a.solver}, "
        f"{a.iters} iterations, BLAS threads {a.blas_threads or 'default'}; load avg {os.getloadavg()}"
    )

    # Bare products (1 thread), for scale.
    Ht = np.ascontiguousarray(H0.T)
    offs = np.concatenate([[0], np.cumsum(chunks)])
    Xb = [X[offs[i] : offs[i + 1]] for i in range(len(chunks))]
    Wb = [W0[offs[i] : offs[i + 1]] for i in range(len(chunks))]
    with blas_threads(1):
        bare = {
            "X@Ht": time_call(lambda: X @ Ht, repeat=3)["median"],
            "sum X_i.T@W_i": time_call(lambda: sum(x.T @ w for x, w in zip(Xb, Wb, strict=True)), repeat=3)["median"],
            "W.T@W": time_call(lambda: W0.T @ W0, repeat=3)["median"],
            "Ht.T@Ht": time_call(lambda: Ht.T @ Ht, repeat=3)["median"],
        }
        from dnmf.nmf import kernels

        HHt = Ht.T @ Ht
        XHt = X @ Ht
        bare["cd_update(W) (dnmf kernel, all rows)"] = time_call(
            lambda: kernels.cd_update(W0, HHt, XHt, 0.0, 0.0, np.arange(k)), repeat=3
        )["median"]
        try:
            from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast

            def sk_cd():
                W = W0.copy()
                _update_cdnmf_fast(W, HHt, XHt, np.arange(k, dtype=np.intp))

            bare["sklearn Cython cd sweep (W, all rows)"] = time_call(sk_cd, repeat=3)["median"]
        except ImportError:
            pass
    print("\nbare, 1 thread (median of 3):")
    for name, t in bare.items():
        print(f"  {name:<40s} {seconds(t)}")
    print(
        f"  {'products total':<40s} {seconds(bare['X@Ht'] + bare['sum X_i.T@W_i'] + bare['W.T@W'] + bare['Ht.T@Ht'])}"
    )

    # 1. threaded scheduler, instrumented.
    fit(X, W0, H0, k, a.solver, 1)  # warm-up
    rec = Recorder()
    undo = instrument(rec)
    try:
        t0, marks = fit(X, W0, H0, k, a.solver, a.iters)
    finally:
        uninstrument(undo)
    print("\nthreaded scheduler, per iteration (iterations 2..N, median):")
    bounds = [t for _, t in marks]
    per = defaultdict(list)
    walls = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        walls.append(hi - lo)
        sums = defaultdict(float)
        for name, _, s, e in rec.between(lo, hi):
            sums[name] += e - s
        for name in {e[0] for e in rec.events}:
            per[name].append(sums.get(name, 0.0))
    print(f"  {'wall':<40s} {seconds(median(walls))}")
    for name in sorted(per, key=lambda s: (s[0], -median(per[s]))):
        print(f"  {name:<40s} {seconds(median(per[name]))}  (summed over threads)")
    setup_end = bounds[0] if bounds else None
    print(f"  (setup before iteration 1 ends: {seconds(setup_end - t0) if setup_end else '–'})")

    # 2. synchronous scheduler under cProfile.
    import dask

    with dask.config.set(scheduler="synchronous"):
        fit(X, W0, H0, k, a.solver, 1)
        prof = cProfile.Profile()
        prof.enable()
        t = time.perf_counter()
        t0, marks = fit(X, W0, H0, k, a.solver, a.iters)
        total = time.perf_counter() - t
        prof.disable()
    b = [t for _, t in marks]
    it_sync = median(np.diff(b)) if len(b) > 1 else float("nan")
    print(f"\nsynchronous scheduler + cProfile: fit {seconds(total)}, per iteration {seconds(it_sync)} (profiled)")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.top)
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:8000])


if __name__ == "__main__":
    log("profiling...")
    main()
