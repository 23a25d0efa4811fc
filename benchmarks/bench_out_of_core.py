"""Benchmark: fitting stores larger than the cluster's memory (out of core).

For each size in ``--sizes`` (the CSR size of X as a multiple of the total
worker memory limit, ``--workers`` x ``--memory-limit``), one run:

1. generates a sparse float64 store block by block (``--nnz-per-block``
   non-zeros per row block, power-law (``--columns zipf``) or uniform
   column choice, uniform values), never holding X in memory;
2. reads the whole store once per pass, one block at a time, in this
   process (a), after a raw pass over its files (bytes on disk, no decoding);
3. starts ``LocalCluster(n_workers=W, threads_per_worker=1, processes=True,
   memory_limit=L)``, reads the store once on the cluster (b): a sum of every
   block's nnz, each block read by one task as a fit's row task reads it
   (only the counts come back); the CPU seconds of (a) and of the worker
   processes in (b) are recorded too, and with more than one worker the
   same read in this process with as many threads at once (a')
   (``--read-only``: stop here);
4. fits ``dnmf.NMF(k, solver="mu", init="random", tol=0)`` on the store path
   for ``--iters`` iterations (c) while sampling every worker's RSS, status
   (paused?), process id (restarted?) and spilled keys every 0.1 s;
5. (unless ``--no-in-memory``) starts a second cluster of as many workers and
   threads with enough memory for X (``--memory-big``), reads X's blocks into
   the workers (each row block where the fit runs it) and makes the same fit
   (d): the baseline that (c)'s time per iteration is compared with.

Reported per size: CSR bytes and multiple of the memory limit, bytes on disk
(compression ratio), the memory limit per worker the README's sizing rule
asks for (:func:`sizing_rule`) and whether the workers have it, read
throughput (a), (b) and the fit's effective read rate (c) = CSR bytes /
per-iteration time (a mu iteration reads X once), with (b)/(a) per thread
(divided by the workers' threads), (c)/(a), and (b)/(a) by CPU seconds (less
distorted by a loaded machine than wall time); the fit's setup (before the
first iteration: one statistics pass over X plus the initialisation) and
per-iteration time (median of the callback deltas after the first), also in
the workers' CPU seconds; the same for (d) and the ratios (c)/(d); peak
worker RSS; pauses / restarts; spilled keys, split into X's blocks (keys
named ``dnmf-store...`` or, in (d), ``dnmf-input...``, which must never
spill) and others (the factors and partials); and whether the fit completed.

Throughput is in MB/s (10^6 bytes) of in-memory CSR bytes (values +
int32 column indices + int32 row pointers). The store was just written, so
its files are usually in the page cache: the rates measure decoding and
Zarr's overhead more than the disk.

    python benchmarks/bench_out_of_core.py --quick        # a few minutes (1 worker x 400MiB, 3x)
    python benchmarks/bench_out_of_core.py --quick --read-only --read-repeat 3 --blocking auto
                                                          # the read path at dnmf's own blocking
    python benchmarks/bench_out_of_core.py                # sizes 1,3,5 x 2 workers x 512 MiB
    python benchmarks/bench_out_of_core.py --sizes 8 --workers 2 --memory-limit 512MiB --dir /data/tmp

Writes ``out_of_core.md`` and ``out_of_core.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings

import numpy as np
import scipy.sparse as sp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import itertools

from benchmarks._common import (
    format_machine,
    log,
    machine_info,
    markdown_table,
    median,
    write_results,
)
from dnmf.storage.codecs import DEFAULT_CODEC

MB = 1e6
MiB = 2**20

# --------------------------------------------------------------------------
# Data: a sparse store generated block by block (as in tests/engine/test_out_of_core.py)
# --------------------------------------------------------------------------


def _uniform_block(rng, rows, n_cols, nnz):
    """CSR rows with nnz // rows distinct sorted columns each, one per stride window."""
    per_row = max(1, min(n_cols, nnz // rows))
    stride = n_cols // per_row
    cols = rng.integers(0, stride, size=(rows, per_row)) + np.arange(per_row) * stride
    indptr = np.arange(rows + 1, dtype=np.int64) * per_row
    return cols.ravel().astype(np.int32), indptr


def _sorted_unique(a):
    s = np.sort(a)
    keep = np.empty(s.size, dtype=bool)
    keep[:1] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _zipf_block(rng, labels, exponent, rows, n_cols, nnz):
    """Exactly ``nnz`` distinct entries: rows uniform, columns ~ rank^-exponent.

    Column popularity ranks map to columns through ``labels``, the same
    permutation for every block (popular columns are popular everywhere).
    """
    nnz = min(nnz, rows * n_cols)
    e = 1.0 - exponent
    lin = np.empty(0, dtype=np.int64)
    want = nnz
    for _ in range(50):
        batch = int(want * 1.2) + 1024
        u = rng.random(batch)
        x = np.exp(u * np.log(n_cols + 1.0)) if abs(e) < 1e-12 else (1.0 + u * ((n_cols + 1.0) ** e - 1.0)) ** (1.0 / e)
        ranks = np.clip(x.astype(np.int64) - 1, 0, n_cols - 1)
        new = rng.integers(0, rows, size=batch, dtype=np.int64) * n_cols + labels[ranks]
        lin = _sorted_unique(np.concatenate([lin, new]))
        if lin.size >= nnz:
            break
        want = int((nnz - lin.size) * max(1.0, batch / max(1, lin.size)))
    else:  # pragma: no cover - only for absurd exponents
        raise RuntimeError("could not draw enough distinct entries; lower --col-exponent")
    if lin.size > nnz:
        lin = lin[np.sort(rng.choice(lin.size, nnz, replace=False))]
    r = lin // n_cols
    cols = (lin - r * n_cols).astype(np.int32)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
    return cols, indptr


def _block(seed, n_cols, nnz, columns, exponent, block_info=None):
    """Row block of X starting at row r0, deterministic in (seed, r0)."""
    (r0, r1), _ = block_info[None]["array-location"]
    rows = r1 - r0
    rng = np.random.default_rng([seed, r0])
    if columns == "uniform":
        cols, indptr = _uniform_block(rng, rows, n_cols, nnz)
    else:
        labels = np.random.default_rng([seed, 2**31]).permutation(n_cols).astype(np.int64)
        cols, indptr = _zipf_block(rng, labels, exponent, rows, n_cols, nnz)
    data = rng.random(cols.size) + 0.1
    X = sp.csr_matrix((data, cols, indptr), shape=(rows, n_cols))
    X.has_sorted_indices = True
    return X


def generated(n_blocks, rows_per_block, n_cols, nnz, columns, exponent, seed=0):
    import dask.array as da

    chunks = ((rows_per_block,) * n_blocks, (n_cols,))
    meta = sp.csr_matrix((0, 0))
    return da.map_blocks(_block, seed, n_cols, nnz, columns, exponent, chunks=chunks, dtype=np.float64, meta=meta)


#: What a worker process holds before any task (interpreter, libraries, Dask): the sizing rule's constant.
PROCESS_BASELINE = 200 * MiB


def sizing_rule(*, workers: int, threads: int, m: int, n: int, k: int, block_bytes: int, itemsize: int = 8) -> int:
    """Memory limit per worker that the README's sizing rule asks for a store-backed fit.

    Each worker holds its share of W twice (the blocks of this iteration and
    of the next), Hᵀ and its next version, and per running task three row
    blocks of X (one decoded, one in the kernels, the next one read ahead)
    and two (n x k) partial products, on top of :data:`PROCESS_BASELINE`;
    Dask starts spilling when a process passes 70% of its limit.
    """
    w_share = m * k * itemsize / workers
    nk = n * k * itemsize
    need = PROCESS_BASELINE + 2 * w_share + 2 * nk + threads * (3 * block_bytes + 2 * nk)
    return int(need / 0.7)


def csr_bytes_of(info) -> int:
    """In-memory bytes of X's blocks as the readers return them."""
    value = np.dtype(info.dtype).itemsize
    total = 0
    for i, h in enumerate(info.row_chunks):
        for j, w in enumerate(info.col_chunks):
            nnz = info.nnz_per_block[i][j]
            idx = 4 if max(w, nnz) <= np.iinfo(np.int32).max else 8
            total += nnz * (value + idx) + (h + 1) * idx
    return total


def disk_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


# --------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------


def raw_pass(path: str) -> float:
    """Seconds to read every file of the store's blocks (no decoding)."""
    t = time.perf_counter()
    for root, _, files in os.walk(os.path.join(path, "blocks")):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(16 * MiB):
                    pass
    return time.perf_counter() - t


def _block_nnz(info, ij: tuple[int, int]) -> int:
    """Read block ``ij`` of the store as a fit's row task does (:func:`dnmf.storage.matrix.read_block`); its nnz."""
    from dnmf.storage.matrix import read_block

    return int(read_block(info, *ij).nnz)


def _all_blocks(info) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(info.row_chunks)) for j in range(len(info.col_chunks))]


def sequential_pass(info) -> tuple[float, int]:
    """Seconds to read every block once, one at a time, in this process; the blocks' nnz."""
    t = time.perf_counter()
    nnz = sum(_block_nnz(info, ij) for ij in _all_blocks(info))
    return time.perf_counter() - t, nnz


def threaded_pass(info, threads: int) -> float:
    """Seconds to read every block once in this process with ``threads`` threads at once.

    (a'): what the machine allows ``threads`` readers in one process, the
    fair reference for (b) where the cluster's threads share cores (and
    memory bandwidth) with each other, its scheduler and this process.
    """
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sum(pool.map(functools.partial(_block_nnz, info), _all_blocks(info)))
    return time.perf_counter() - t


def _nnz_of(block) -> int:
    return int(block.nnz)


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def cluster_pass(client, X) -> tuple[float, int, float]:
    """Seconds for the cluster to read every block once, the sum of the blocks' nnz, and the workers' CPU seconds.

    One task per block, as a fit's row task reads it (the read inlined, see
    :func:`dnmf.engine.graph.x_block_refs`) and placed as a fit places it (on
    its row range's worker, :func:`dnmf.storage.placement.row_ranges`: the
    scheduler does not queue placed tasks); only each block's nnz comes back
    to the client, summed here: a Dask reduction tree would add two tasks of
    scheduling per block that are no part of reading. On a loaded machine the
    CPU seconds compare with (a)'s more fairly than wall time.
    """
    from dnmf.engine.graph import assemble, place_blocks, x_block_refs
    from dnmf.storage.placement import row_ranges

    ref, _ = x_block_refs(X)
    name = f"nnz-{uuid.uuid4().hex}"
    nI, nJ = X.numblocks
    dsk = {(name, i, j): (_nnz_of, ref(i, j)) for i in range(nI) for j in range(nJ)}
    owners = row_ranges(client, nI)[0]
    graph = assemble(name, dsk, [], {}, place_blocks(owners, X.numblocks, name))
    cpu0 = client.run(_cpu_seconds)
    t = time.perf_counter()
    total = sum(client.get(graph, list(dsk)))
    wall = time.perf_counter() - t
    cpu1 = client.run(_cpu_seconds)
    return wall, total, sum(cpu1[w] - cpu0[w] for w in cpu1)


def placed_in_memory(client, store):
    """X's blocks read into the workers' memory, each row block on the worker a fit runs it on.

    The in-memory baseline of (d): the same blocks as the store's, held as
    results (futures) where :func:`dnmf.storage.placement.row_ranges` places
    row block ``i``, so the fit moves no block of X.
    """
    import dask.array as da
    from distributed import wait

    from dnmf.storage.placement import row_ranges

    layer = dict(store.data.__dask_graph__().layers[store.data.name])
    owners, _ = row_ranges(client, store.data.numblocks[0])
    name = f"dnmf-input-{uuid.uuid4().hex}"
    futures = {}
    for key, task in layer.items():
        _, i, j = key
        futures[(name, i, j)] = client.submit(
            task[0], *task[1:], key=f"{name}-{i}-{j}", workers=[owners[i]], allow_other_workers=False
        )
    with client.as_current():
        wait(list(futures.values()))
    return da.Array(futures, name, store.data.chunks, meta=store.data._meta)


# --------------------------------------------------------------------------
# Worker monitoring (as in tests/engine/test_out_of_core.py)
# --------------------------------------------------------------------------


def _probe(dask_worker):
    import os

    import psutil

    slow = getattr(dask_worker.data, "slow", None)
    spilled = [] if slow is None else [str(k) for k in slow]
    spilled_bytes = getattr(dask_worker.data, "spilled_total", (0, 0))[0] if slow is not None else 0
    return os.getpid(), psutil.Process().memory_info().rss, str(dask_worker.status), spilled, spilled_bytes


def _key_name(key: str) -> str:
    """The array name of a stringified Dask key: "('dnmf-W-abc', 3, 0)" -> "dnmf-W-abc"."""
    return key[2:].split("'", 1)[0] if key.startswith("('") else key


class Watcher:
    """Samples every worker's (pid, RSS, status, spilled keys) in a thread."""

    def __init__(self, client, interval: float = 0.1):
        self.client, self.interval = client, interval
        self.samples: list[tuple] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                t = time.perf_counter() - self.t0
                for addr, sample in self.client.run(_probe).items():
                    self.samples.append((t, addr) + tuple(sample))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def add(self, probes: dict) -> None:
        t = time.perf_counter() - self.t0
        for addr, sample in probes.items():
            self.samples.append((t, addr) + tuple(sample))

    def summary(self, limit: int) -> dict:
        peaks: dict[str, int] = {}
        pids = set()
        first_seen: dict[str, float] = {}
        paused, spilled_peak = 0, 0
        for t, addr, pid, rss, status, keys, spilled_bytes in self.samples:
            peaks[addr] = max(peaks.get(addr, 0), rss)
            pids.add(pid)
            paused += status == "Status.paused"
            spilled_peak = max(spilled_peak, spilled_bytes)
            for k in keys:
                first_seen.setdefault(k, t)
        peak = max(peaks.values()) if peaks else None
        return {
            "samples": len(self.samples),
            "peak_rss": peak,
            "peak_rss_fraction": None if peak is None else peak / limit,
            "peak_rss_per_worker": peaks,
            "paused_samples": paused,
            "pids_seen": sorted(pids),
            "spilled_keys_first_seen_s": first_seen,
            "spilled_bytes_peak": spilled_peak,
        }


def _is_x(key: str) -> bool:
    """Whether a spilled key is a block of X: read from the store, or held in memory for (d)."""
    return _key_name(key).startswith(("dnmf-store", "dnmf-input"))


def _spill_split(keys) -> tuple[list[str], list[str]]:
    return [k for k in keys if _is_x(k)], [k for k in keys if not _is_x(k)]


_LOG_PATTERNS = ("paus", "spill", "memory use is high", "unmanaged memory", "restart", "killed", "memory limit")


def memory_log_lines(client) -> list[str]:
    """Worker and scheduler log lines about memory pressure, pauses and restarts."""
    lines = []
    try:
        logs = dict(client.get_worker_logs())
        logs["scheduler"] = client.get_scheduler_logs()
    except Exception:
        return lines
    for who, entries in logs.items():
        for level, msg in entries:
            if any(p in msg.lower() for p in _LOG_PATTERNS):
                lines.append(f"{who}: {level}: {msg.splitlines()[0][:200]}")
    return lines


# --------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------


def block_shape(csr_bytes: float, args) -> tuple[int, int]:
    """Rows and non-zeros per row block of a store of about ``csr_bytes``.

    ``--blocking fixed``: ``--rows-per-block`` and ``--nnz-per-block``.
    ``auto``: as many row blocks as dnmf's own rule gives a store of that
    many entries for a cluster of the benchmark's cores
    (:func:`dnmf.storage.chunking.sparse_row_blocks`, what ``dnmf ingest``
    and ``chunks="auto"`` choose), each row as dense as with ``fixed``.
    """
    if args.blocking == "fixed":
        return args.rows_per_block, args.nnz_per_block
    from dnmf.storage.chunking import sparse_row_blocks

    nnz = int(csr_bytes // 12)
    blocks = sparse_row_blocks(nnz, 1, 8, cores=args.workers)
    nnz_per_block = math.ceil(nnz / blocks)
    per_row = args.nnz_per_block / args.rows_per_block
    return max(1, round(nnz_per_block / per_row)), nnz_per_block


def run_size(mult: float, args, base_dir: str) -> dict:
    import dnmf

    total_limit = args.workers * args.memory_limit
    rows_per_block, nnz_per_block = block_shape(mult * total_limit, args)
    per_block_csr = nnz_per_block * 12 + (rows_per_block + 1) * 4
    n_blocks = max(1, math.ceil(mult * total_limit / per_block_csr))
    n_rows = n_blocks * rows_per_block
    res: dict = {
        "size": mult,
        "blocks": n_blocks,
        "shape": [n_rows, args.cols],
        "rows_per_block": rows_per_block,
        "nnz_per_block": nnz_per_block,
    }
    path = os.path.join(base_dir, f"x-{mult:g}.zarr")
    log(
        f"\n== {mult:g}x: {n_blocks} blocks of {rows_per_block} x {args.cols} ({nnz_per_block:,} non-zeros), "
        f"~{n_blocks * per_block_csr / MiB:.0f} MiB CSR vs {total_limit / MiB:.0f} MiB of worker memory"
    )
    try:
        t = time.perf_counter()
        store = dnmf.write_matrix(
            generated(n_blocks, rows_per_block, args.cols, nnz_per_block, args.columns, args.col_exponent, args.seed),
            path,
            scheduler="threads",
            codec=args.codec,
        )
        res["generate_s"] = time.perf_counter() - t
        info = store.info
        res["nnz"] = int(store.nnz)
        res["csr_bytes"] = csr = csr_bytes_of(info)
        res["multiple_of_limit"] = csr / total_limit
        res["disk_bytes"] = disk = disk_bytes(path)
        res["compression_ratio"] = csr / disk
        res["W_bytes"] = n_rows * args.k * 8
        res["rule_memory_limit"] = rule = sizing_rule(
            workers=args.workers, threads=1, m=n_rows, n=args.cols, k=args.k, block_bytes=per_block_csr
        )
        res["follows_rule"] = args.memory_limit >= rule
        log(
            f"generated {csr / MiB:.0f} MiB CSR ({csr / total_limit:.2f}x), {disk / MiB:.0f} MiB on disk "
            f"(ratio {csr / disk:.2f}) in {res['generate_s']:.1f} s"
        )

        # (a) this process, one block at a time (after reading one block to warm imports)
        _block_nnz(info, (0, 0))
        raw, seq, seq_cpu = [], [], []
        for _ in range(args.read_repeat):
            raw.append(raw_pass(path))
            c0 = time.process_time()
            s, nnz = sequential_pass(info)
            seq_cpu.append(time.process_time() - c0)
            assert nnz == store.nnz, (nnz, store.nnz)
            seq.append(s)
        res["raw_read_s"], res["seq_read_s"], res["seq_read_cpu_s"] = raw, seq, seq_cpu
        res["raw_read_mbps_disk"] = disk / median(raw) / MB
        res["seq_read_mbps"] = a = csr / median(seq) / MB
        log(
            f"(a) sequential read {a:.0f} MB/s CSR (passes {', '.join(f'{x:.2f}' for x in seq)} s, "
            f"CPU {', '.join(f'{x:.2f}' for x in seq_cpu)} s); "
            f"raw files {res['raw_read_mbps_disk']:.0f} MB/s on disk"
        )

        if args.workers > 1:
            par = [threaded_pass(info, args.workers) for _ in range(args.read_repeat)]
            res["threaded_read_s"] = par
            res["threaded_read_mbps"] = csr / median(par) / MB
            log(f"(a') {args.workers} threads at once {res['threaded_read_mbps']:.0f} MB/s CSR")

        res.update(run_cluster(path, store, args))
        per_iter = res.get("per_iter_s")
        res["fit_read_mbps"] = c = csr / per_iter / MB if per_iter else None
        b = res.get("cluster_read_mbps")
        # per thread: (b) reads with every worker thread at once, (a) with one
        res["cluster_vs_seq"] = b / a / args.workers if b else None
        if b and res.get("threaded_read_mbps"):
            res["cluster_vs_threaded"] = b / res["threaded_read_mbps"]
        if res.get("cluster_read_cpu_s"):
            res["cluster_vs_seq_cpu"] = median(seq_cpu) / median(res["cluster_read_cpu_s"])
        res["fit_vs_seq"] = c / a if c else None
    except Exception as exc:
        res.setdefault("error", f"{type(exc).__name__}: {exc}")
        res["completed"] = False
        log(f"FAILED: {res['error']}")
    finally:
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    return res


def start_cluster(args, memory_limit: int):
    """``LocalCluster(args.workers x 1 thread, processes)`` with ``--worker-env`` in the workers' environment."""
    import dask
    from distributed import LocalCluster

    env = dict(kv.split("=", 1) for kv in args.worker_env)
    with (
        warnings.catch_warnings(),
        dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}),
    ):
        warnings.simplefilter("ignore")
        return LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def run_cluster(path: str, store, args) -> dict:
    from distributed import Client

    res: dict = {"completed": False}
    from dnmf.engine.allocator import tune_workers

    with start_cluster(args, args.memory_limit) as cluster, Client(cluster, set_as_default=False) as client:
        tune_workers(client)  # the workers' allocator as a fit leaves it (dnmf.worker-allocator)
        # (b) one pass on the cluster (after a first one, to warm the workers' imports and page cache)
        cluster_pass(client, store.data)
        times, cpus = [], []
        with Watcher(client, args.sample_interval) as w_read:
            for _ in range(args.read_repeat):
                s, nnz, cpu = cluster_pass(client, store.data)
                assert nnz == store.nnz, (nnz, store.nnz)
                times.append(s)
                cpus.append(cpu)
        res["cluster_read_s"], res["cluster_read_cpu_s"] = times, cpus
        res["cluster_read_mbps"] = store_mbps = csr_bytes_of(store.info) / median(times) / MB
        res["read_watch"] = w_read.summary(args.memory_limit)
        log(
            f"(b) cluster read {store_mbps:.0f} MB/s CSR (passes {', '.join(f'{x:.2f}' for x in times)} s, "
            f"worker CPU {', '.join(f'{x:.2f}' for x in cpus)} s), "
            f"peak RSS {res['read_watch']['peak_rss'] / MiB:.0f} MiB"
        )
        if args.read_only:
            return res
        # (c) the fit on the store (reading ahead where dnmf.read-ahead="auto" chooses it, or forced)
        import dask

        from dnmf.engine.runner import Runner

        res["read_ahead_auto"] = Runner(client).read_ahead()
        with contextlib.ExitStack() as stack:
            mem_client = None
            if args.in_memory:
                # (d) the same fit with X in the memory of a second cluster of as many workers and threads,
                # alive beside the first so that the two fits take turns (--rounds) under the same load
                big = args.memory_big or int(3 * csr_bytes_of(store.info) / args.workers) + 1024 * MiB
                mem_cluster = stack.enter_context(start_cluster(args, big))
                mem_client = stack.enter_context(Client(mem_cluster, set_as_default=False))
                t = time.perf_counter()
                X = placed_in_memory(mem_client, store)
                load_s = time.perf_counter() - t
            store_rounds, mem_rounds = [], []
            for r in range(args.rounds):
                with dask.config.set({"dnmf.read-ahead": True} if args.compare_read_ahead else {}):
                    fit = run_fit(client, path, args, args.memory_limit)
                store_rounds.append(fit)
                log(_fit_line(f"(c) fit on the store, round {r + 1}", fit))
                if r == 0 and args.compare_read_ahead:
                    # (c') the same fit, each row task reading its own blocks only (no reads ahead)
                    with dask.config.set({"dnmf.read-ahead": False}):
                        plain = {f"noahead_{k}": v for k, v in run_fit(client, path, args, args.memory_limit).items()}
                    res.update(plain)
                    log(_fit_line("(c') fit on the store, no reads ahead", res, "noahead_"))
                if mem_client is not None:
                    mem = {f"mem_{k}": v for k, v in run_fit(mem_client, X, args, big).items()}
                    mem_rounds.append(mem)
                    log(
                        _fit_line(
                            f"(d) fit with X in memory ({big / MiB:.0f} MiB workers, X loaded in {load_s:.1f} s), "
                            f"round {r + 1}",
                            mem,
                            "mem_",
                        )
                    )
            res.update(_over_rounds(store_rounds, ""))
            if args.compare_read_ahead:
                for key in ("per_iter_s", "per_iter_cpu_s"):
                    if res.get(key) and res.get(f"noahead_{key}"):
                        res[f"read_ahead_vs_not_{key}"] = store_rounds[0][key] / res[f"noahead_{key}"]
                log(
                    f"(c)/(c') per iteration: {res.get('read_ahead_vs_not_per_iter_s', float('nan')):.2f}x; "
                    f"blocks read ahead and used / read by their task / dropped: {res.get('read_ahead')}"
                )
            if mem_client is not None:
                del X
                mem = _over_rounds(mem_rounds, "mem_")
                mem["mem_load_s"], mem["mem_memory_limit"] = load_s, big
                res.update(mem)
        if res.get("per_iter_s") and res.get("mem_per_iter_s"):
            res["store_vs_memory"] = res["per_iter_s"] / res["mem_per_iter_s"]
            log(
                f"(c)/(d) per iteration, medians over {args.rounds} round(s): {res['per_iter_s']:.2f} / "
                f"{res['mem_per_iter_s']:.2f} s = {res['store_vs_memory']:.2f}x"
            )
        if res.get("per_iter_cpu_s") and res.get("mem_per_iter_cpu_s"):
            res["store_vs_memory_cpu"] = res["per_iter_cpu_s"] / res["mem_per_iter_cpu_s"]
            log(
                f"(c)/(d) by the workers' CPU seconds per iteration: {res['per_iter_cpu_s']:.1f} / "
                f"{res['mem_per_iter_cpu_s']:.1f} s = {res['store_vs_memory_cpu']:.2f}x"
            )
    return res


def _over_rounds(rounds: list[dict], p: str) -> dict:
    """One fit's results from its rounds: the first round's, with the per-iteration times the medians over all.

    Each round's per-iteration figures are the medians of its iterations;
    ``{p}rounds_per_iter_s`` keeps every round's. Pauses, restarts and
    spills count if any round had them; the peak RSS is the largest.
    """
    out = dict(rounds[0])
    for key in ("per_iter_s", "per_iter_cpu_s"):
        values = [r[p + key] for r in rounds if r.get(p + key)]
        out[p + key] = median(values) if values else None
        out[p + "rounds_" + key] = values
    out[p + "completed"] = all(r.get(p + "completed") for r in rounds)
    out[p + "paused"] = any(r.get(p + "paused") for r in rounds)
    out[p + "restarted"] = any(r.get(p + "restarted") for r in rounds)
    for key in ("spilled_x", "spilled_other"):
        out[p + key] = sorted({k for r in rounds for k in r.get(p + key, [])})
    peaks = [(r.get(p + "fit_watch") or {}).get("peak_rss") or 0 for r in rounds]
    if out.get(p + "fit_watch") is not None:
        out[p + "fit_watch"] = {**out[p + "fit_watch"], "peak_rss": max(peaks)}
    return out


def _fit_line(what: str, r: dict, p: str = "") -> str:
    watch = r.get(p + "fit_watch") or {}
    return (
        f"{what}: setup {r.get(p + 'setup_s', float('nan')):.1f} s, per iteration "
        f"{r.get(p + 'per_iter_s', float('nan')):.2f} s, peak RSS {(watch.get('peak_rss') or 0) / MiB:.0f} MiB, "
        f"paused {r.get(p + 'paused')}, restarted {r.get(p + 'restarted')}, "
        f"spilled {len(r.get(p + 'spilled_x', []))} X / {len(r.get(p + 'spilled_other', []))} other keys, "
        f"completed {r.get(p + 'completed')}"
    )


def run_fit(client, X, args, limit: int) -> dict:
    """``NMF(k, solver="mu", init="random", tol=0)`` on ``X`` for ``--iters`` iterations, the workers watched."""
    from sklearn.exceptions import ConvergenceWarning

    import dnmf

    res: dict = {"completed": False}
    pids = client.run(os.getpid)
    from dnmf.storage import prefetch

    client.run(prefetch.clear)
    calls: list[tuple[float, int, float, float]] = []

    cpu: list[float] = []

    def worker_cpu() -> float:
        return sum(client.run(_cpu_seconds).values())

    def callback(it, elapsed, loss):
        calls.append((time.perf_counter(), it, elapsed, loss))
        cpu.append(worker_cpu())
        log(f"  iteration {it}: {elapsed:.2f} s, loss {loss:.6g}")

    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        log(f"fit timed out after {args.fit_timeout:.0f} s: closing the client")
        client.close()

    timer = threading.Timer(args.fit_timeout, on_timeout)
    t0 = time.perf_counter()
    with Watcher(client, args.sample_interval) as w_fit:
        timer.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = dnmf.NMF(
                    args.k, solver="mu", init="random", random_state=0, max_iter=args.iters, tol=0, client=client
                )
                model.fit(X, callback=callback)
            res["completed"] = len(calls) == args.iters
        except Exception as exc:
            res["error"] = "fit timed out" if timed_out.is_set() else f"{type(exc).__name__}: {exc}"
        finally:
            timer.cancel()
    res["fit_wall_s"] = time.perf_counter() - t0
    if not timed_out.is_set():
        with contextlib.suppress(Exception):  # what the workers read ahead: used, read by the task, dropped
            counts = client.run(prefetch.stats).values()
            res["read_ahead"] = {k: sum(c[k] for c in counts) for k in ("hits", "misses", "dropped")}
    watch = w_fit.summary(limit)
    if not timed_out.is_set():
        try:
            w_fit.add(client.run(_probe))
            watch = w_fit.summary(limit)
            res["restarted"] = client.run(os.getpid) != pids or len(watch["pids_seen"]) > len(pids)
        except Exception as exc:
            res["restarted"] = True
            res.setdefault("error", f"after the fit: {type(exc).__name__}: {exc}")
        res["memory_log"] = memory_log_lines(client)
    else:
        res["restarted"] = len(watch["pids_seen"]) > len(pids)
    res["fit_watch"] = watch
    res["paused"] = watch["paused_samples"] > 0 or any("pausing worker" in m.lower() for m in res.get("memory_log", []))
    res["spilled_x"], res["spilled_other"] = _spill_split(sorted(watch["spilled_keys_first_seen_s"]))
    res["iterations"] = [{"iteration": it, "elapsed_s": el, "loss": loss} for _, it, el, loss in calls]
    if calls:
        el = [c[2] for c in calls]
        deltas = [el[0]] + [b - a for a, b in itertools.pairwise(el)]
        res["iter_s"] = deltas
        # the workers' CPU seconds per iteration: what a loaded machine distorts less than wall time
        res["iter_cpu_s"] = [b - a for a, b in itertools.pairwise(cpu)]
        res["per_iter_cpu_s"] = median(res["iter_cpu_s"]) if res["iter_cpu_s"] else None
        # the first iteration also releases the initial factors: the median of the others when there are any
        res["per_iter_s"] = median(deltas[1:] or deltas)
        res["setup_s"] = calls[0][0] - t0 - el[0]
        # when the first iteration started, on the watcher's clock (which starts with the fit)
        res["iter1_start_s"] = calls[0][0] - el[0] - w_fit.t0
    first = watch["spilled_keys_first_seen_s"]
    res["spilled_x_first_seen_s"] = min((first[k] for k in res["spilled_x"]), default=None)
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _f(v, spec, unit=""):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{unit}"


def _yn(v):
    return "–" if v is None else ("yes" if v else "no")


def render(results: dict) -> str:
    cfg = results["config"]
    total = cfg["workers"] * cfg["memory_limit"]
    lines = [
        "# dnmf out-of-core benchmark",
        "",
        "```",
        format_machine(results["machine"]),
        f"command: {results['command']}",
        "```",
        "",
        f"LocalCluster({cfg['workers']} workers x 1 thread, processes, memory_limit "
        f"{cfg['memory_limit'] / MiB:.0f} MiB = {total / MiB:.0f} MiB in all); "
        f"NMF(k={cfg['k']}, solver='mu', init='random', tol=0), {cfg['iters']} iterations on the store path. "
        + (
            f"X: float64, {cfg['rows_per_block']:,} x {cfg['cols']:,} row blocks of {cfg['nnz_per_block']:,} non-zeros"
            if cfg.get("blocking", "fixed") == "fixed"
            else f"X: float64, {cfg['cols']:,} columns, as many row blocks as dnmf's own rule gives it on "
            f"{cfg['workers']} cores (blocks column; {cfg['nnz_per_block'] / cfg['rows_per_block']:g} non-zeros a row)"
        )
        + f", {cfg['columns']} column choice"
        + (f" (exponent {cfg['col_exponent']})" if cfg["columns"] == "zipf" else "")
        + f", uniform values; store: codec {cfg.get('codec') or DEFAULT_CODEC} (Blosc, shuffled), one Zarr chunk per "
        "CSR array. Worker memory "
        f"thresholds (fractions of the limit): {results['worker_memory']}; worker environment: "
        f"{results['worker_environ']}.",
        "",
        (
            "Size: CSR bytes (values + int32 indices + int32 row pointers) / total worker memory limit. "
            "Per iter: median of the callback deltas; setup: before iteration 1 (a statistics pass over X, "
            "random init), after iteration 1 when there are more; sizing rule: the memory limit per worker "
            "that the README's rule asks for (`sizing_rule`: 200 MiB + 2 x the worker's share of W + per "
            "thread 3 row blocks (one read ahead) and 2 (n x k) partials, all / 0.7), and whether the workers have it; X in memory: the same fit on workers with "
            "enough memory (same workers, threads, k, solver) with X's blocks read into them first, placed "
            "where the fit runs them; by CPU: the ratio of the workers' CPU seconds per iteration (median "
            "after iteration 1), which a loaded machine distorts less (the (d) columns of the JSON hold its RSS, pauses and spills). Peak RSS: the largest worker RSS sampled every "
            f"{cfg['sample_interval']:g} s during the fit (% of its limit). Spilled: distinct keys seen in a "
            "worker's spill storage during or after the fit, X blocks (`dnmf-store-*`) / others."
        ),
        "",
    ]
    rows = []
    for r in results["sizes"]:
        watch = r.get("fit_watch") or {}
        peak = watch.get("peak_rss")
        rows.append(
            [
                f"{r['size']:g}x",
                _f(r.get("csr_bytes") and r["csr_bytes"] / MiB, ",.0f", " MiB"),
                _f(r.get("multiple_of_limit"), ".2f", "x"),
                f"{r['blocks']:,}",
                _f(r.get("disk_bytes") and r["disk_bytes"] / MiB, ",.0f", " MiB"),
                _f(r.get("compression_ratio"), ".2f"),
                _f(r.get("W_bytes") and r["W_bytes"] / MiB, ",.0f", " MiB"),
                "–"
                if r.get("rule_memory_limit") is None
                else f"{r['rule_memory_limit'] / MiB:,.0f} MiB ({_yn(r['follows_rule'])})",
                _f(r.get("setup_s"), ".1f", " s"),
                _f(r.get("per_iter_s"), ".2f", " s"),
                _f(r.get("mem_per_iter_s"), ".2f", " s"),
                _f(r.get("store_vs_memory"), ".2f", "x"),
                _f(r.get("store_vs_memory_cpu"), ".2f", "x"),
                "–" if peak is None else f"{peak / MiB:.0f} MiB ({100 * watch['peak_rss_fraction']:.0f}%)",
                f"{_yn(r.get('paused'))} / {_yn(r.get('restarted'))}",
                "–" if "spilled_x" not in r else f"{len(r['spilled_x'])} / {len(r['spilled_other'])}",
                _yn(r.get("completed")),
            ]
        )
    lines += [
        "## Fit",
        "",
        markdown_table(
            [
                "size",
                "CSR",
                "x limit",
                "blocks",
                "on disk",
                "CSR/disk",
                "W (m x k)",
                "sizing rule (followed?)",
                "setup",
                "per iter",
                "per iter, X in memory",
                "store / memory",
                "store / memory by CPU",
                "peak worker RSS",
                "paused / restarted",
                "spilled X / other",
                "completed",
            ],
            rows,
            align="lrrrrrrrrrrrrrccc",
        ),
    ]

    rows = []
    for r in results["sizes"]:
        rows.append(
            [
                f"{r['size']:g}x",
                _f(r.get("raw_read_mbps_disk"), ",.0f"),
                _f(r.get("seq_read_mbps"), ",.0f"),
                _f(r.get("cluster_read_mbps"), ",.0f"),
                _f(r.get("fit_read_mbps"), ",.0f"),
                _f(r.get("cluster_vs_seq"), ".2f", "x"),
                _f(r.get("fit_vs_seq"), ".2f", "x"),
                _f(r.get("cluster_vs_seq_cpu"), ".2f", "x"),
                _f(r.get("threaded_read_mbps"), ",.0f"),
                _f(r.get("cluster_vs_threaded"), ".2f", "x"),
                _f((r.get("read_watch") or {}).get("peak_rss") and r["read_watch"]["peak_rss"] / MiB, ".0f", " MiB"),
            ]
        )
    lines += [
        "",
        "## Read throughput (MB/s of CSR bytes, medians)",
        "",
        (
            f"(a) this process reads every block once, one at a time (medians of {cfg['read_repeat']} passes; "
            "raw: the store's block files read without decoding, MB/s of bytes on disk); (b) the cluster "
            "reads every block once, one task per block (its nnz comes back); (c) inside the fit: CSR bytes / "
            "per-iteration time (a mu iteration reads X once); (b)/(a) per thread: divided by the workers' "
            "threads, since (b) reads with all of them at once; (b)/(a) by CPU: this process's CPU seconds per pass over the "
            "worker processes' (event loops included), which a loaded machine distorts less than wall time; "
            "(a') with more than one worker: this process reads every block once with as many threads as the "
            "cluster has, at once, and (b)/(a') compares the cluster with that: what the worker processes "
            "cost beyond what the machine's cores and memory allow that many readers."
        ),
        "",
        markdown_table(
            [
                "size",
                "raw files (disk MB/s)",
                "(a) sequential",
                "(b) cluster",
                "(c) in fit",
                "(b)/(a) per thread",
                "(c)/(a)",
                "(b)/(a) by CPU",
                "(a') threads",
                "(b)/(a')",
                "peak RSS in (b)",
            ],
            rows,
        ),
    ]

    ahead = [r for r in results["sizes"] if r.get("noahead_per_iter_s")]
    if ahead:
        lines += [
            "",
            "## Reading ahead (`--compare-read-ahead`)",
            "",
            "(c) the fit on the store with `dnmf.read-ahead` true, each row task reading its worker's next "
            "row block while it computes; (c') the same fit on the same cluster with it false. "
            "Seconds per iteration (median after the first) and the workers' CPU seconds per iteration; "
            "blocks read ahead and used / read by their own task / read ahead and dropped; what "
            '`"auto"` (the default) chose on this cluster.',
            "",
            markdown_table(
                [
                    "size",
                    "(c) s / it.",
                    "(c') s / it.",
                    "(c)/(c')",
                    "(c) CPU s / it.",
                    "(c') CPU s / it.",
                    "peak RSS (c), (c')",
                    "used / by task / dropped",
                    '"auto"',
                ],
                [
                    [
                        f"{r['size']:g}x",
                        _f(r.get("per_iter_s"), ".2f"),
                        _f(r.get("noahead_per_iter_s"), ".2f"),
                        _f(r.get("read_ahead_vs_not_per_iter_s"), ".2f", "x"),
                        _f(r.get("per_iter_cpu_s"), ".1f"),
                        _f(r.get("noahead_per_iter_cpu_s"), ".1f"),
                        f"{((r.get('fit_watch') or {}).get('peak_rss') or 0) / MiB:.0f}, "
                        f"{((r.get('noahead_fit_watch') or {}).get('peak_rss') or 0) / MiB:.0f} MiB",
                        " / ".join(str((r.get("read_ahead") or {}).get(k, "–")) for k in ("hits", "misses", "dropped")),
                        "on" if r.get("read_ahead_auto") else "off",
                    ]
                    for r in ahead
                ],
            ),
        ]

    notes = []
    for r in results["sizes"]:
        if r.get("error"):
            notes.append(f"- {r['size']:g}x: {r['error']}")
        if r.get("spilled_x"):
            notes.append(
                f"- {r['size']:g}x: {len(r['spilled_x'])} X block(s) spilled, first seen "
                f"{r['spilled_x_first_seen_s']:.1f} s into the fit (iteration 1 started at "
                f"{_f(r.get('iter1_start_s'), '.1f', ' s')})"
            )
        if r.get("spilled_other"):
            kinds: dict[str, int] = {}
            for k in r["spilled_other"]:
                name = _key_name(k)
                kind = "-".join(
                    p for p in name.split("-") if not (len(p) == 32 and all(c in "0123456789abcdef" for c in p))
                )
                kinds[kind] = kinds.get(kind, 0) + 1
            notes.append(
                f"- {r['size']:g}x: other spilled keys by name: "
                + ", ".join(f"{n} ({c})" for n, c in sorted(kinds.items(), key=lambda kv: -kv[1])[:8])
                + f"; peak spilled {r['fit_watch']['spilled_bytes_peak'] / MiB:.0f} MiB"
            )
        if "mem_spilled_x" in r:
            notes.append(
                f"- {r['size']:g}x, X in memory ({r['mem_memory_limit'] / MiB:,.0f} MiB workers, X loaded in "
                f"{r['mem_load_s']:.1f} s): peak worker RSS {(r['mem_fit_watch']['peak_rss'] or 0) / MiB:,.0f} MiB, "
                f"paused {_yn(r.get('mem_paused'))}, restarted {_yn(r.get('mem_restarted'))}, spilled "
                f"{len(r['mem_spilled_x'])} X / {len(r['mem_spilled_other'])} other keys"
                + (f"; {r['mem_error']}" if r.get("mem_error") else "")
            )
        for m in (r.get("memory_log") or [])[:5]:
            notes.append(f"- {r['size']:g}x log: {m}")
    if notes:
        lines += ["", "Notes:", ""] + notes
    lines += ["", f"Total wall time {results['wall_s']:.0f} s."]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def parse_args(argv=None):
    from dask.utils import parse_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="< 2 minutes: 1 worker x 400MiB, size 3x, uniform columns, 2 iterations, 1 read pass "
        "(explicit options win)",
    )
    p.add_argument(
        "--sizes", default=None, help="CSR size / total worker memory limit, comma-separated (default 1,3,5)"
    )
    p.add_argument("--workers", type=int, default=None, help="workers W (default 2)")
    p.add_argument("--memory-limit", default=None, help="memory limit L per worker (default 512MiB)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--iters", type=int, default=None, help="iterations (default 3; quick 2)")
    p.add_argument("--cols", type=int, default=20_000)
    p.add_argument("--rows-per-block", type=int, default=4_000)
    p.add_argument("--nnz-per-block", type=int, default=1_000_000)
    p.add_argument(
        "--blocking",
        choices=("fixed", "auto"),
        default="fixed",
        help="fixed: --rows-per-block and --nnz-per-block; auto: the row blocks dnmf's own rule gives X on "
        "the benchmark's cores (as dnmf ingest does), rows as dense as with fixed",
    )
    p.add_argument(
        "--columns",
        choices=("zipf", "uniform"),
        default=None,
        help="column choice: power law or uniform (default zipf; quick uniform, faster to generate)",
    )
    p.add_argument("--codec", default=None, help="the store's codec (write_matrix's codec=; default dnmf's, lz4:5)")
    p.add_argument("--col-exponent", type=float, default=0.9, help="power-law exponent of column popularity")
    p.add_argument("--read-repeat", type=int, default=None, help="read passes (a), (b) (default 3; quick 1)")
    p.add_argument("--sample-interval", type=float, default=0.1, help="seconds between worker samples")
    p.add_argument("--fit-timeout", type=float, default=1200, help="give up a fit after this many seconds")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the worker processes (distributed.nanny.pre-spawn-environ), "
        "e.g. MALLOC_TRIM_THRESHOLD_=1073741824; repeatable",
    )
    p.add_argument("--read-only", action="store_true", help="measure the reads (a) and (b) only, no fit")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fits on the store and with X in memory, taking turns on two live clusters (medians over rounds)",
    )
    p.add_argument(
        "--compare-read-ahead",
        action="store_true",
        help="also fit the store with reads ahead off (dnmf.read-ahead), on the same cluster: (c')",
    )
    p.add_argument(
        "--no-in-memory",
        dest="in_memory",
        action="store_false",
        help="skip (d), the same fit with X held in the memory of workers large enough for it",
    )
    p.add_argument(
        "--memory-big",
        default=None,
        help="memory limit per worker of (d) (default: 3 x X's CSR bytes per worker + 1 GiB: nothing spills)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where to write the stores (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--out", default="bench-results", help="output directory (out_of_core.md, .json)")
    args = p.parse_args(argv)
    q = args.quick
    args.sizes = [float(s) for s in (args.sizes or ("3" if q else "1,3,5")).split(",") if s.strip()]
    args.workers = args.workers or (1 if q else 2)
    args.memory_limit = parse_bytes(args.memory_limit or ("400MiB" if q else "512MiB"))
    args.memory_big = parse_bytes(args.memory_big) if args.memory_big else None
    args.read_repeat = args.read_repeat or (1 if q else 3)
    args.iters = args.iters or (2 if q else 3)
    args.columns = args.columns or ("uniform" if q else "zipf")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False  # (a) decodes on one thread, like a worker
    info = machine_info()
    t_start = time.perf_counter()
    log(format_machine(info))
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None else " ".join(argv)
    results: dict = {
        "benchmark": "out_of_core",
        "machine": info,
        "command": command,
        "config": {k: v for k, v in vars(args).items()},
        "sizes": [],
    }
    import dask
    import distributed  # noqa: F401 - loads the distributed config

    mem = dask.config.get("distributed.worker.memory")
    results["worker_memory"] = {k: mem[k] for k in ("target", "spill", "pause", "terminate")}
    results["worker_environ"] = {
        **dask.config.get("distributed.nanny.pre-spawn-environ"),
        **dict(kv.split("=", 1) for kv in args.worker_env),
    }
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="dnmf-ooc-", dir=args.dir)
    try:
        for mult in args.sizes:
            results["sizes"].append(run_size(mult, args, base))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - t_start
    results["loadavg_at_end"] = os.getloadavg()
    md = render(results)
    paths = write_results(args.out, "out_of_core", md, results)
    print(md)
    print(f"\nwrote {paths[0]} and {paths[1]} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
