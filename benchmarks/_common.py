"""Shared helpers for the dnmf benchmarks: data, timing, machine info, tables.

Only NumPy/SciPy (and, optionally, threadpoolctl) are imported at module
level, so the helpers can be reused by any benchmark script.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def versions(names: Iterable[str] = ("numpy", "scipy", "dask", "distributed", "sklearn", "dnmf")) -> dict:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            out[name] = None
    return out


def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info

        return [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer")}
            for d in threadpool_info()
        ]
    except Exception:
        return []


def machine_info() -> dict:
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    mem_gib = None
    with contextlib.suppress(ValueError, OSError, AttributeError):  # pragma: no cover
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "loadavg_at_start": load,
        "versions": versions(),
        "blas": blas_info(),
    }


def format_machine(info: dict) -> str:
    v = info["versions"]
    vs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    blas = "; ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)" for b in info.get("blas", [])
    )
    load = info.get("loadavg_at_start")
    load_s = "n/a" if not load else " ".join(f"{x:.2f}" for x in load)
    return (
        f"date: {info['date']}\n"
        f"machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"load avg at start {load_s}\n"
        f"platform: {info['platform']}\n"
        f"versions: {vs}\n"
        f"BLAS: {blas or 'n/a'}"
    )


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def make_dense_lowrank(m: int, n: int, rank: int, seed: int = 0, noise: float = 0.1, dtype=np.float64):
    """Planted non-negative rank-``rank`` product plus |Gaussian| noise.

    Entries of the planted factors are Gamma(1, 1)-ish (exponential), so X
    has mean about ``rank``; ``noise`` is relative to X's mean.
    """
    rng = np.random.default_rng(seed)
    W = rng.exponential(1.0, size=(m, rank))
    H = rng.exponential(1.0, size=(rank, n))
    X = W @ H
    X += noise * X.mean() * np.abs(rng.standard_normal((m, n)))
    return np.ascontiguousarray(X, dtype=dtype)


def _zipf_sampler(size: int, exponent: float, rng: np.random.Generator):
    """Inverse-CDF sampler over ``size`` items with popularity ~ rank^-a.

    Uses the closed-form inverse CDF of the continuous power law on
    [1, size + 1) (a close approximation of the discrete Zipf law that costs
    one ``pow`` per draw, no search). Popularity ranks are scattered over the
    index range by a random permutation, so popular rows/columns are not all
    adjacent (each row block of the matrix gets a fair share of heavy rows).
    """
    a = float(exponent)
    labels = rng.permutation(size).astype(np.int64)

    def draw(count: int) -> np.ndarray:
        u = rng.random(count)
        if abs(a - 1.0) < 1e-12:
            x = np.exp(u * np.log(size + 1.0))
        else:
            e = 1.0 - a
            x = (1.0 + u * ((size + 1.0) ** e - 1.0)) ** (1.0 / e)
        ranks = x.astype(np.int64) - 1
        np.clip(ranks, 0, size - 1, out=ranks)
        return labels[ranks]

    return draw


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` by sort + neighbour compare (much faster than NumPy 2.x's
    hash-based ``np.unique`` on large int64 arrays)."""
    if a.size == 0:
        return a
    s = np.sort(a)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def make_zipf_csr(
    m: int,
    n: int,
    nnz: int,
    seed: int = 0,
    row_exponent: float = 0.6,
    col_exponent: float = 0.9,
    dtype=np.float64,
    values: str = "ratings",
) -> sp.csr_matrix:
    """A sparse (m, n) CSR matrix with exactly ``nnz`` distinct non-zeros.

    Row and column indices follow independent Zipf-like popularity laws
    (``row_exponent``, ``col_exponent``), drawn by inverse-CDF sampling;
    duplicates are removed with a linear index and a sort-based unique and the draw
    is topped up until ``nnz`` distinct entries exist, then trimmed at
    random. Values are ratings 1..5 (floats) or, with ``values="uniform"``,
    uniform in (0, 1]. Fully vectorised and deterministic for a given seed.
    """
    if nnz > m * n:
        raise ValueError(f"nnz={nnz} exceeds m*n={m * n}")
    rng = np.random.default_rng(seed)
    draw_row = _zipf_sampler(m, row_exponent, rng)
    draw_col = _zipf_sampler(n, col_exponent, rng)
    lin = np.empty(0, dtype=np.int64)
    want = nnz
    for _ in range(50):
        batch = int(want * 1.15) + 1024
        new = draw_row(batch) * n + draw_col(batch)
        lin = sorted_unique(np.concatenate([lin, new]))
        if lin.size >= nnz:
            break
        # Collisions grow with the skew: ask for what is missing, inflated by
        # the observed rate of distinct draws.
        want = int((nnz - lin.size) * max(1.0, batch / max(1, lin.size)))
    else:  # pragma: no cover - only for absurd skews
        raise RuntimeError("could not draw enough distinct entries; lower the exponents")
    if lin.size > nnz:
        keep = np.sort(rng.permutation(lin.size)[:nnz])
        lin = lin[keep]
    rows = lin // n
    cols = (lin - rows * n).astype(np.int32)
    indptr = np.zeros(m + 1, dtype=np.int64 if nnz >= 2**31 else np.int32)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    if values == "ratings":
        data = rng.integers(1, 6, size=nnz).astype(dtype)
    else:
        data = (1.0 - rng.random(nnz)).astype(dtype)
    X = sp.csr_matrix((data, cols, indptr), shape=(m, n))
    X.has_sorted_indices = True
    return X


def load_ratings(
    path: str, user_col: str = "userId", item_col: str = "movieId", value_col: str = "rating"
) -> sp.csr_matrix:
    """A ratings CSV as a users × items float64 CSR, IDs mapped to sorted positions (read in memory only).

    Repeated (user, item) pairs add up; the indices are sorted.
    """
    import pandas as pd

    df = pd.read_csv(path, usecols=[user_col, item_col, value_col])
    users, rows = np.unique(df[user_col].to_numpy(), return_inverse=True)
    items, cols = np.unique(df[item_col].to_numpy(), return_inverse=True)
    X = sp.csr_matrix(
        (df[value_col].to_numpy(dtype=np.float64), (rows, cols)), shape=(users.size, items.size), dtype=np.float64
    )
    X.sum_duplicates()
    X.sort_indices()
    return X


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def time_call(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> dict:
    """Median, min and all wall times of ``fn()`` over ``repeat`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median": median(times), "min": min(times), "times": times}


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit BLAS/OpenMP threads to ``n`` (None: leave the defaults)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=n):
        yield


class Stopwatch:
    """Labelled wall-clock phases: ``with sw("phase"): ...``."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, label: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - t


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def bare_pass(X, k: int, row_chunks) -> Callable[[], float]:
    """One thread: ``X·Hᵀ + Σ_i X_iᵀ·W_i + WᵀW + HᵀH`` (dnmf's row blocks); returns the callable."""
    rng = np.random.default_rng(0)
    W = rng.random((X.shape[0], k))
    Ht = rng.random((X.shape[1], k))
    offs = np.concatenate([[0], np.cumsum(row_chunks)]).astype(int)
    blocks = [(X[a:b], W[a:b]) for a, b in zip(offs[:-1], offs[1:], strict=True)]

    def one() -> float:
        with blas_threads(1):
            t = time.perf_counter()
            X @ Ht
            acc = np.zeros((X.shape[1], k))
            for x, w in blocks:
                acc += x.T @ w
            W.T @ W
            Ht.T @ Ht
            return time.perf_counter() - t

    return one


def fmt(value, digits: int = 3) -> str:
    """Compact human formatting of numbers for tables."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    if not np.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 1e-3:
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(digits - len(str(int(abs(v)))), 0)}f}".rstrip(".")


def seconds(value) -> str:
    """Seconds with an adaptive unit (µs / ms / s)."""
    if value is None or not np.isfinite(value):
        return "–"
    v = float(value)
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one of 'l', 'r', 'c' per column."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))

    def line(r):
        return (
            "| "
            + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            (":" + "-" * (w + 1)) if a == "l" else ("-" * (w + 1) + ":") for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def run_footer(results: dict) -> str:
    """The closing line of a report: the whole run's seconds (``elapsed_s``) and ``loadavg_at_end``."""
    load = results.get("loadavg_at_end")
    return (
        f"Whole run: {results['elapsed_s']:.0f} s. Load average at end: "
        + (" ".join(f"{x:.2f}" for x in load) if load else "n/a")
        + "."
    )


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return str(o)


def _clean(o):
    """Replace non-finite floats by None so the JSON is strict."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def write_results(out_dir: str, stem: str, markdown: str, data: dict) -> tuple[str, str]:
    """Write ``<stem>.md`` and ``<stem>.json`` under ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, stem + ".md")
    js_path = os.path.join(out_dir, stem + ".json")
    with open(md_path, "w") as f:
        f.write(markdown.rstrip() + "\n")
    with open(js_path, "w") as f:
        json.dump(_clean(data), f, indent=1, default=_json_default)
        f.write("\n")
    return md_path, js_path


def log(*args) -> None:
    """Progress messages go to stderr, results to stdout."""
    print(*args, file=sys.stderr, flush=True)
