"""Out of core on a Dask cluster: a store larger than the workers' memory,
the dashboard, and a checkpoint -> killed driver -> resume cycle.

1. Writes a sparse matrix store (block by block, never whole in memory) whose
   CSR size is larger than the total memory limit of the cluster's workers.
2. Starts a ``LocalCluster`` of worker processes with a small
   ``memory_limit`` and prints its dashboard link (open it to watch the
   tasks stream the blocks of X).
3. Runs the fit in a separate *driver* process that connects to the cluster
   and writes a checkpoint every ``--checkpoint-every`` iterations, then
   kills that process (SIGKILL) once it has reported iteration ``--kill-at``.
   (The example's driver waits at that iteration so that the kill lands at a
   known point; a real crash can come at any time and costs at most the
   iterations since the last checkpoint.)
4. Resumes the fit here from the last committed checkpoint, on the same
   cluster, sampling the workers' memory, and checks that the result is
   bit-for-bit the factors of a run that was never interrupted.

Writes ``out_of_core_report.html`` (dnmf's HTML report: loss curve, timings,
the cluster) and ``out_of_core_loss.png`` under ``--out``.

    python examples/out_of_core.py            # ~0.8 GiB store, 2 workers x 320 MiB (~2 minutes)
    python examples/out_of_core.py --quick    # tiny store (CI: the mechanics only)
    python examples/out_of_core.py --store ratings.zarr -k 32 --iters 20   # your store (dnmf.ingest)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import scipy.sparse as sp

MiB = 2**20


# ---------------------------------------------------------------------------
# A generated store: row blocks made on the fly, with a planted group structure
# ---------------------------------------------------------------------------


def _block(seed: int, n_cols: int, per_row: int, groups: int, block_info=None) -> sp.csr_matrix:
    """CSR row block: ``per_row`` distinct columns per row; entries in the row's
    own column group are 5x larger (so the matrix has ``groups`` parts to find)."""
    (r0, r1), _ = block_info[None]["array-location"]
    rows = r1 - r0
    rng = np.random.default_rng([seed, r0])
    stride = n_cols // per_row
    cols = rng.integers(0, stride, size=(rows, per_row)) + np.arange(per_row) * stride
    row_group = (np.arange(r0, r1) % groups)[:, None]
    own = (cols * groups // n_cols) == row_group
    data = (rng.random((rows, per_row)) + 0.1) * np.where(own, 5.0, 1.0)
    indptr = np.arange(rows + 1, dtype=np.int64) * per_row
    X = sp.csr_matrix((data.ravel(), cols.ravel().astype(np.int32), indptr), shape=(rows, n_cols))
    X.has_sorted_indices = True
    return X


def write_generated_store(
    path: str, n_blocks: int, rows_per_block: int, n_cols: int, per_row: int, groups: int, seed: int
):
    import dask.array as da

    import dnmf

    chunks = ((rows_per_block,) * n_blocks, (n_cols,))
    X = da.map_blocks(
        _block, seed, n_cols, per_row, groups, chunks=chunks, dtype=np.float64, meta=sp.csr_matrix((0, 0))
    )
    # Local threads write the blocks (one task per block): only a few blocks are in memory at a time.
    return dnmf.write_matrix(X, path, overwrite=True, scheduler="threads")


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _memory_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


# ---------------------------------------------------------------------------
# The driver process (started by main with --driver)
# ---------------------------------------------------------------------------


def model_params(args) -> dict:
    # "mu": one pass over X per iteration, and no compiled code to load. solver="cd"'s compiled
    # sweep loads Numba's code generator into each worker (about 50 MiB more per process), which
    # a worker of 320 MiB cannot spare: it would pause at its memory threshold.
    return dict(
        n_components=args.n_components, solver="mu", init="random", tol=0.0, max_iter=args.iters, random_state=args.seed
    )


def run_driver(args) -> int:
    """Fit on the cluster at --scheduler with checkpoints; waits at --kill-at to be killed."""
    from distributed import Client
    from sklearn.exceptions import ConvergenceWarning

    import dnmf

    warnings.simplefilter("ignore", ConvergenceWarning)
    with Client(args.scheduler) as client:
        model = dnmf.NMF(
            **model_params(args), client=client, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every
        )

        def show(iteration, elapsed, loss):
            print(f"iteration {iteration:3d}  loss {loss:.8g}  ({elapsed:.1f} s)", flush=True)
            if iteration == args.kill_at:
                print("driver: waiting to be killed", flush=True)
                time.sleep(3600)

        model.fit(args.store, callback=show)
    return 0


# ---------------------------------------------------------------------------
# Watching the workers' memory
# ---------------------------------------------------------------------------


class MemoryWatch:
    """Peak RSS of every worker, sampled every 0.2 s in a thread."""

    def __init__(self, client):
        self.client, self.peak, self._stop = client, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        def rss(dask_worker):
            import psutil

            return psutil.Process().memory_info().rss

        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, *self.client.run(rss).values())
            except Exception:
                return
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny store, few iterations (CI)")
    p.add_argument("--store", default=None, help="fit this existing matrix store instead of a generated one")
    p.add_argument(
        "--size",
        type=float,
        default=1.25,
        help="generated store's CSR size as a multiple of the workers' total memory limit",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="320MiB", help="per worker (Dask's memory_limit)")
    p.add_argument("-k", "--n-components", type=int, default=8)
    p.add_argument("--iters", type=int, default=None, help="iterations in all (default 6)")
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--kill-at", type=int, default=None, help="kill the driver after this iteration (default 3)")
    p.add_argument("--no-verify", action="store_true", help="skip the uninterrupted reference fit")
    p.add_argument("--dir", default=None, help="working folder for the store and checkpoints (default: temporary)")
    p.add_argument("--out", default=os.path.join("examples", "output"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    # Internal: the driver process.
    p.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scheduler", default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.iters = args.iters or 6
    args.kill_at = args.kill_at or 3
    if not 1 <= args.kill_at < args.iters:
        p.error(f"--kill-at must be between 1 and --iters - 1 = {args.iters - 1}; got {args.kill_at}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.driver:
        return run_driver(args)

    import matplotlib

    matplotlib.use("Agg")
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning

    import dnmf
    from dnmf.cli.report import cluster_info, write_report
    from dnmf.plot import loss_curve

    warnings.simplefilter("ignore", ConvergenceWarning)
    work = args.dir or tempfile.mkdtemp(prefix="dnmf-out-of-core-")
    os.makedirs(work, exist_ok=True)
    limit = _memory_bytes(args.memory_limit)
    timings: dict[str, float] = {}
    try:
        # 1. The store.
        t = time.perf_counter()
        if args.store:
            store, path = dnmf.open_matrix(args.store), args.store
        else:
            path = os.path.join(work, "X.zarr")
            if args.quick:
                n_blocks, rows, n_cols, per_row = 4, 2_000, 2_000, 40
            else:
                n_cols, per_row, rows = 20_000, 256, 4_000  # 1M non-zeros (12 MiB of CSR) per block
                n_blocks = max(2, int(np.ceil(args.size * args.workers * limit / (rows * per_row * 12))))
            store = write_generated_store(path, n_blocks, rows, n_cols, per_row, args.n_components, args.seed)
        timings["write store" if not args.store else "open store"] = time.perf_counter() - t
        m, n = store.shape
        csr = store.nnz * (store.dtype.itemsize + 4) + (m + 1) * 8
        total_limit = args.workers * limit
        print(
            f"X: {m:,} x {n:,}, {store.nnz:,} non-zeros in {len(store.chunks[0])} row blocks; "
            f"{csr / MiB:,.0f} MiB as CSR, {_disk_bytes(path) / MiB:,.0f} MiB on disk"
        )
        print(
            f"   = {csr / total_limit:.2f}x the workers' total memory limit "
            f"({args.workers} x {args.memory_limit})" + ("  [--quick: small on purpose]" if args.quick else "")
        )

        # 2. The cluster.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                memory_limit=limit,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as client:
            print(f"cluster: {args.workers} worker processes x 1 thread, memory_limit {args.memory_limit} each")
            print(f"dashboard: {client.dashboard_link}")

            # 3. A driver process, killed mid-fit.
            ckpt = os.path.join(work, "checkpoints")
            shutil.rmtree(ckpt, ignore_errors=True)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--driver",
                "--scheduler",
                cluster.scheduler_address,
                "--store",
                path,
                "--checkpoint",
                ckpt,
                "-k",
                str(args.n_components),
                "--iters",
                str(args.iters),
                "--checkpoint-every",
                str(args.checkpoint_every),
                "--kill-at",
                str(args.kill_at),
                "--seed",
                str(args.seed),
            ]
            print(
                f"\n[driver process] fit with checkpoint every {args.checkpoint_every} iterations; "
                f"killed after iteration {args.kill_at}"
            )
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            killed = False
            for line in proc.stdout:
                print("  " + line.rstrip(), flush=True)
                if line.startswith("driver: waiting"):
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
            proc.wait()
            timings["driver until killed"] = time.perf_counter() - t
            if not killed:
                raise SystemExit(
                    f"the driver process ended (exit code {proc.returncode}) before iteration "
                    f"{args.kill_at}; nothing to resume"
                )
            print(f"killed the driver (pid {proc.pid}, exit code {proc.returncode})")
            from dnmf.engine.checkpoint import load as load_checkpoint

            resumed_from = int(load_checkpoint(ckpt)[1]["state"]["iteration"])
            print(f"last committed checkpoint: iteration {resumed_from} ({ckpt})")

            # 4. Resume here, on the same cluster.
            print(f"\n[resume] from iteration {resumed_from} to {args.iters}")
            model = dnmf.NMF(
                **model_params(args), client=client, checkpoint=ckpt, checkpoint_every=args.checkpoint_every
            )
            t = time.perf_counter()
            with MemoryWatch(client) as watch:
                model.fit(
                    path,
                    resume=ckpt,
                    callback=lambda i, el, loss: print(
                        f"  iteration {i:3d}  loss {loss:.8g}  ({el:.1f} s)", flush=True
                    ),
                )
            timings["resume"] = time.perf_counter() - t
            print(
                f"peak worker RSS while resuming: {watch.peak / MiB:,.0f} MiB "
                f"(memory_limit {limit / MiB:,.0f} MiB per worker; X is {csr / MiB:,.0f} MiB)"
            )

            same = None
            if not args.no_verify:
                print("\n[check] the same fit without interruption")
                t = time.perf_counter()
                reference = dnmf.NMF(**model_params(args), client=client).fit(path)
                timings["uninterrupted fit"] = time.perf_counter() - t
                same = bool(
                    np.array_equal(reference.components_, model.components_)
                    and reference.loss_history_.tolist() == model.loss_history_.tolist()
                )
                diff = float(np.max(np.abs(reference.components_ - model.components_)))
                print(
                    f"resumed == uninterrupted, bit for bit: {'yes' if same else 'NO'} "
                    f"(max |H difference| = {diff:.3g}, final loss {model.reconstruction_err_:.10g} vs "
                    f"{reference.reconstruction_err_:.10g})"
                )
            info = cluster_info(client)

        # 5. Report and figure.
        os.makedirs(args.out, exist_ok=True)
        png = os.path.join(args.out, "out_of_core_loss.png")
        loss_curve(model, path=png, title=f"resumed from iteration {resumed_from}")
        report = os.path.join(args.out, "out_of_core_report.html")
        write_report(
            report,
            model,
            timings=timings,
            cluster=info,
            title="dnmf: out-of-core fit, killed and resumed",
            extra={
                "store": path,
                "shape": f"{m} x {n}",
                "non-zeros": store.nnz,
                "CSR MiB": round(csr / MiB, 1),
                "x total memory limit": round(csr / total_limit, 2),
                "checkpoints": ckpt,
                "driver killed after iteration": args.kill_at,
                "resumed from iteration": resumed_from,
                "peak worker RSS MiB": round(watch.peak / MiB, 1),
                "bit-identical to an uninterrupted fit": "not checked" if same is None else same,
            },
        )
        print(f"\nwrote {png}\nwrote {report}")
        return 0 if same is not False else 1
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
