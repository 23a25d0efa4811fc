"""Benchmark: ingest and fit a generated 50M-rating table with the ``dnmf`` command line.

Two parts, both on the same generated data:

``fit`` (default): generates a ratings CSV of ``50M x --scale`` ratings by
``3M x --scale`` users and ``300k x --scale`` items (uniform users, power-law
item popularity with exponent ``--zipf``; written in slices of 2M rows, so
generating takes little memory), then runs, each in a subprocess,

1. ``dnmf ingest CSV -o STORE --json``: wall time, peak RSS, the store's
   blocking (row blocks, and row blocks per core of the default cluster);
2. ``dnmf fit STORE -o MODEL -k 32 --max-iter 5 --log-json``: the default
   embedded cluster (one worker of ``os.cpu_count()`` threads in the
   process). Setup = time from the cluster's ``start`` event to the start
   of iteration 1 (the first ``iteration`` event minus the median
   iteration); per iteration = median gap between ``iteration`` events;
   save = the ``save`` timing. Peak RSS of the process and its children,
   sampled every 50 ms with psutil, next to the bytes of X (CSR: values,
   indices, row pointers), W and Hᵀ (float of X's width); also the peak of
   each phase (setup, iterations, save) and the ratio of the peak above
   the "floor", the peak of the same command on a tiny store (about 0.5 GB
   of interpreter, libraries, cluster and allocator pools, which dominates
   the small cases).

``codecs`` (``--codecs``): the same CSV ingested once per storage choice
(value dtype, index width, codec) and, for each, bytes on disk, a read
pass (every block read and decoded once, in this process, one thread: MB/s
of in-memory CSR bytes, the best and the median of ``--repeat``) and the fit's median
iteration (``dnmf.NMF``, ``init="random"``, k 32, on the store path, Dask's
threaded scheduler, two fits of ``--iters``). Reads and fits go round-robin
over the variants, so a change of load hits them alike.

    python benchmarks/bench_scale.py --scale 0.1            # 5M ratings, a few minutes
    python benchmarks/bench_scale.py                        # the 50M case (~10 min, ~3 GB on disk)
    python benchmarks/bench_scale.py --scale 0.1 --codecs   # the storage table

Files go under ``--work`` (default: a new temporary directory), removed at
the end unless ``--keep``. Prints a Markdown table and writes
``scale.json`` / ``scale_codecs.json`` to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

USERS, ITEMS, RATINGS = 3_000_000, 300_000, 50_000_000
#: (dtype, index width, codec) of the storage table.
VARIANTS = (
    ("float32", "auto", "lz4:5"),
    ("float64", "auto", "lz4:5"),
    ("float32", "int64", "lz4:5"),
    ("float32", "auto", "lz4:1"),
    ("float32", "auto", "lz4:9"),
    ("float32", "auto", "zstd:1"),
    ("float32", "auto", "zstd:3"),
    ("float32", "auto", "zstd:9"),
    ("float32", "auto", "none"),
)


def generate(path: str, rows: int, users: int, items: int, zipf: float, seed: int = 0) -> None:
    """A ratings CSV (``user,item,rating``) written in slices with pyarrow's CSV writer."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    labels = rng.permutation(items)  # popular items are not adjacent
    e = 1.0 - zipf
    tmp = path + ".part"
    step = 2_000_000
    with pacsv.CSVWriter(
        tmp, pa.schema([("user", pa.int64()), ("item", pa.int64()), ("rating", pa.float32())])
    ) as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            user = rng.integers(0, users, n)
            x = (1.0 + rng.random(n) * ((items + 1.0) ** e - 1.0)) ** (1.0 / e)  # power-law ranks
            item = labels[np.clip(x.astype(np.int64) - 1, 0, items - 1)]
            rating = (rng.integers(1, 11, n) / 2).astype(np.float32)
            writer.write_table(pa.table({"user": user, "item": item, "rating": rating}))
    os.replace(tmp, path)


def _env() -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _dnmf() -> list[str]:
    exe = shutil.which("dnmf", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "dnmf.cli"]


def run_sampled(
    cmd: list[str], samples: list[tuple[float, int]] | None = None
) -> tuple[list[tuple[float, str]], str, float, float]:
    """Run ``cmd``; return (stdout lines with arrival times, stderr, seconds, peak RSS bytes of its tree).

    ``samples``, if given, receives every ``(time, RSS bytes)`` sample, on the clock of the lines.
    """
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], rss)
                if samples is not None:
                    samples.append((time.perf_counter() - t0, rss))
            except psutil.Error:
                pass
            time.sleep(0.05)

    err: list[str] = []
    threading.Thread(target=sample, daemon=True).start()
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    lines = [(time.perf_counter() - t0, line) for line in proc.stdout]  # type: ignore[union-attr]
    proc.wait()
    done.set()
    reader.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(err)[-3000:]}")
    return lines, "".join(err), time.perf_counter() - t0, float(peak[0])


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def csr_bytes(store) -> int:
    """In-memory CSR bytes of a store (values, indices and row pointers at the stored widths)."""
    from dnmf.storage import matrix

    info = store.info
    total = 0
    for i in range(len(info.row_chunks)):
        for j in range(len(info.col_chunks)):
            b = matrix.read_block(info, i, j)
            total += b.data.nbytes + b.indices.nbytes + b.indptr.nbytes
    return total


def floor_rss(a, work: str) -> float:
    """Peak RSS of the same ``dnmf fit`` command on a tiny generated store (20k ratings)."""
    csv = os.path.join(work, "tiny.csv")
    generate(csv, 20_000, 3_000, 300, a.zipf)
    store, model = os.path.join(work, "tiny.zarr"), os.path.join(work, "tiny-model")
    run_sampled([*_dnmf(), "ingest", csv, "-o", store, "--overwrite", "--json"])
    cmd = [*_dnmf(), "fit", store, "-o", model, "-k", str(a.k), "--max-iter", str(a.iters), "--seed", "0"]
    _, _, _, peak = run_sampled([*cmd, "--log-json"])
    for path in (csv, store, model):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    return peak


def fit_part(a, work: str, csv: str) -> dict:
    import dnmf

    store = os.path.join(work, "big.zarr")
    lines, _, secs, peak = run_sampled([*_dnmf(), "ingest", csv, "-o", store, "--overwrite", "--json"])
    ingest = json.loads(lines[-1][1])
    cores = os.cpu_count() or 1
    res: dict = {
        "ingest_seconds": secs,
        "ingest_peak_rss_gb": peak / 1e9,
        "shape": ingest["shape"],
        "nnz": ingest["nnz"],
        "row_blocks": ingest["row_blocks"],
        "col_blocks": ingest["col_blocks"],
        "cores": cores,
        "row_blocks_per_core": ingest["row_blocks"] / cores,
    }
    print(json.dumps(res), flush=True)
    opened = dnmf.open_matrix(store)
    x_bytes = csr_bytes(opened)
    item = np.dtype(opened.dtype).itemsize
    m, n = opened.shape
    model = os.path.join(work, "model")
    cmd = [*_dnmf(), "fit", store, "-o", model, "-k", str(a.k), "--max-iter", str(a.iters), "--log-json"]
    cmd += ["--seed", "0"]
    floor = floor_rss(a, work)
    samples: list[tuple[float, int]] = []
    lines, _, secs, peak = run_sampled(cmd, samples)
    events = []
    for t, line in lines:
        try:
            events.append((t, json.loads(line)))
        except ValueError:
            continue
    start = next(t for t, e in events if e.get("event") == "start")
    iters = [t for t, e in events if e.get("event") == "iteration"]
    final = events[-1][1]
    per_iter = statistics.median(np.diff(iters)) if len(iters) > 1 else float("nan")
    setup = iters[0] - start - per_iter
    factors = (m + n) * a.k * item
    # Peak RSS by phase: setup (to the start of iteration 1), the iterations, and what
    # follows them (the save).
    bounds = {"setup": (0.0, iters[0] - per_iter), "iterations": (iters[0] - per_iter, iters[-1])}
    bounds["save"] = (iters[-1], math.inf)
    phases = {name: max((r for t, r in samples if lo <= t < hi), default=0) / 1e9 for name, (lo, hi) in bounds.items()}
    res.update(
        fit_seconds=secs,
        setup_seconds=setup,
        per_iteration_seconds=per_iter,
        setup_in_iterations=setup / per_iter,
        save_seconds=final.get("timings", {}).get("save"),
        fit_peak_rss_gb=peak / 1e9,
        **{f"fit_peak_rss_{name}_gb": v for name, v in phases.items()},
        x_gb=x_bytes / 1e9,
        w_ht_gb=factors / 1e9,
        rss_over_x_w_ht=peak / (x_bytes + factors),
        # What the data costs: the peak above that of the same command on a tiny store (the
        # interpreter, its libraries, the cluster, the allocator's pools), which dominates the
        # small cases; a larger case's ratio approaches this one.
        fit_floor_rss_gb=floor / 1e9,
        rss_above_floor_over_x_w_ht=(peak - floor) / (x_bytes + factors),
        loss_first=None,
    )
    shutil.rmtree(model, ignore_errors=True)
    return res


def read_pass(store) -> float:
    """Seconds to read and decode every block once, one at a time."""
    from dnmf.storage import matrix

    info = store.info
    t0 = time.perf_counter()
    for i in range(len(info.row_chunks)):
        for j in range(len(info.col_chunks)):
            matrix.read_block(info, i, j)
    return time.perf_counter() - t0


def codec_part(a, work: str, csv: str) -> list[dict]:
    """Ingest once per variant, then time reads and fits round-robin, so that a change of the
    machine's load during the run affects every variant alike (medians over the rounds)."""
    import dask
    import numcodecs.blosc

    import dnmf

    numcodecs.blosc.use_threads = False  # decode on one thread, as a Dask worker's task does
    rows, stores = [], []
    for dtype, index, codec in VARIANTS:
        out = os.path.join(work, f"{dtype}-{index}-{codec.replace(':', '')}.zarr")
        t0 = time.perf_counter()
        store = dnmf.ingest(csv, out, dtype=dtype, index_dtype=index, codec=codec, overwrite=True)
        rows.append(
            {
                "dtype": dtype,
                "index": index,
                "codec": codec,
                "disk_mb": dir_bytes(os.path.join(out, "blocks")) / 1e6,
                "csr_mb": csr_bytes(store) / 1e6,
                "ingest_s": time.perf_counter() - t0,
                "nnz": store.nnz,
                "row_blocks": len(store.chunks[0]),
            }
        )
        stores.append(store)
    reads: list[list[float]] = [[] for _ in stores]
    iters: list[list[float]] = [[] for _ in stores]
    for _ in range(a.repeat):
        for i, store in enumerate(stores):
            reads[i].append(read_pass(store))
    for _ in range(2):
        for i, store in enumerate(stores):
            times: list[float] = []
            with dask.config.set(scheduler="threads"):
                est = dnmf.NMF(a.k, init="random", max_iter=a.iters, tol=0, random_state=0)
                est.fit(store.path, callback=lambda it, el, loss, times=times: times.append(el))
            iters[i].extend(np.diff(times).tolist())
    for row, r, t in zip(rows, reads, iters, strict=True):
        row["read_mbps"] = row["csr_mb"] / statistics.median(r)
        # The fastest pass: what the codec costs when the machine's other jobs leave a core free.
        row["read_mbps_best"] = row["csr_mb"] / min(r)
        row["per_iteration_s"] = statistics.median(t)
        print(json.dumps(row), flush=True)
    for store in stores:
        shutil.rmtree(store.path, ignore_errors=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="Fraction of the 50M/3M/300k case (0.1: 5M ratings).")
    p.add_argument("--zipf", type=float, default=1.1, help="Power-law exponent of item popularity.")
    p.add_argument("-k", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="Read passes per storage choice (median).")
    p.add_argument("--codecs", action="store_true", help="Measure the storage table instead of the fit.")
    p.add_argument("--work", default=None, help="Directory for the CSV and stores (default: a temporary one).")
    p.add_argument("--keep", action="store_true", help="Keep the files under --work.")
    p.add_argument("--out", default=None, help="Directory for the JSON results.")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="dnmf-scale-")
    os.makedirs(work, exist_ok=True)
    rows, users, items = (int(v * a.scale) for v in (RATINGS, USERS, ITEMS))
    csv = os.path.join(work, f"ratings-{rows}.csv")
    try:
        print(f"load before: {os.getloadavg()}", flush=True)
        if not os.path.exists(csv):
            t = time.perf_counter()
            generate(csv, rows, users, items, a.zipf)
            print(
                f"generated {csv}: {os.path.getsize(csv) / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s", flush=True
            )
        data = {"ratings": rows, "users": users, "items": items, "zipf": a.zipf, "k": a.k}
        if a.codecs:
            data["codecs"] = codec_part(a, work, csv)
            print("| values | indices | codec | on disk (MB) | CSR (MB) | read, best (MB/s) | median | iteration (s) |")
            print("|---|---|---|--:|--:|--:|--:|--:|")
            for r in data["codecs"]:
                print(
                    f"| {r['dtype']} | {r['index']} | {r['codec']} | {r['disk_mb']:.1f} | {r['csr_mb']:.1f} | "
                    f"{r['read_mbps_best']:.0f} | {r['read_mbps']:.0f} | {r['per_iteration_s']:.2f} |"
                )
        else:
            data["fit"] = fit_part(a, work, csv)
            print(json.dumps(data["fit"], indent=1))
        data["load_after"] = os.getloadavg()
        print(f"load after: {data['load_after']}")
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            name = "scale_codecs.json" if a.codecs else "scale.json"
            with open(os.path.join(a.out, name), "w") as f:
                json.dump(data, f, indent=1)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
