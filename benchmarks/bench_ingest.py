"""Benchmark: out-of-core ingestion of a large ratings CSV with string IDs.

Generates (once) a CSV of ``--rows`` ratings with skewed string user and
item IDs, then runs :func:`dnmf.storage.arrays.ingest` in a fresh subprocess and
reports wall time and the subprocess's peak resident memory
(``resource.getrusage``), which must stay under 2 GiB for 20M rows.

    python benchmarks/bench_ingest.py --rows 20000000 --dir /tmp/dnmf-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def generate(path: str, rows: int, users: int, items: int, seed: int = 0) -> None:
    """Write the CSV in slices so generation itself stays small in memory."""
    rng = np.random.default_rng(seed)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.write("user,item,rating\n")
        step = 1_000_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            # Skewed popularity (a few heavy users, a long tail of items),
            # with IDs scrambled so popular ones are not all adjacent.
            u = (users * rng.random(n) ** 2).astype(np.int64) * 2654435761 % users
            i = (items * rng.random(n) ** 3).astype(np.int64) * 40503 % items
            r = rng.integers(1, 11, n) / 2
            lines = [
                f"user_{a:07d},item_{b:06d},{c:g}\n" for a, b, c in zip(u.tolist(), i.tolist(), r.tolist(), strict=True)
            ]
            f.writelines(lines)
    os.replace(tmp, path)


_CHILD = r"""
import json, resource, sys, time, logging
import dnmf.storage.arrays
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
m = dnmf.storage.arrays.ingest(args["csv"], args["out"], overwrite=True, tmp_dir=args["tmp"])
elapsed = time.perf_counter() - t0
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak_kib / 1024, "shape": m.shape,
                  "nnz": m.nnz, "blocks": m.info.numblocks, "provenance": m.info.provenance}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--users", type=int, default=2_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dir", default="/tmp/dnmf-bench")
    p.add_argument("--limit-mib", type=float, default=2048)
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    csv = os.path.join(a.dir, f"ratings-{a.rows}.csv")
    if not os.path.exists(csv):
        t = time.perf_counter()
        generate(csv, a.rows, a.users, a.items)
        size = os.path.getsize(csv) / 2**20
        print(f"generated {csv} ({size:.0f} MiB) in {time.perf_counter() - t:.0f}s")
    args = {"csv": csv, "out": os.path.join(a.dir, "ratings.zarr"), "tmp": a.dir}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rows"] = a.rows
    result["csv_mib"] = os.path.getsize(csv) / 2**20
    print(json.dumps(result, indent=1))
    if result["peak_rss_mib"] > a.limit_mib:
        sys.exit(f"peak RSS {result['peak_rss_mib']:.0f} MiB exceeds {a.limit_mib:.0f} MiB")


if __name__ == "__main__":
    main()
