"""A single-file HTML report of a fit: loss curve, parameters, timings, cluster.

``write_report(path, model, ...)`` writes one self-contained HTML file (the
figure is inlined as a base64 PNG, or as inline SVG when matplotlib is not
installed; no external assets), atomically. ``dnmf fit --report`` calls it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dnmf.storage.placement import scheduler_identity

__all__ = ["cluster_info", "render_report", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 70em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #4c78a8; height: 0.8em; display: inline-block; }
figure { margin: 0.5em 0; }
img, svg { max-width: 100%; height: auto; }
details { margin: 0.5em 0; }
.missing { color: #999; }
"""


# ---------------------------------------------------------------------------
# Cluster description
# ---------------------------------------------------------------------------


def cluster_info(client: Any) -> dict[str, Any]:
    """Describe the Dask cluster a ``distributed.Client`` is connected to.

    Parameters
    ----------
    client : distributed.Client or None
        None describes the local threaded scheduler of this process.

    Returns
    -------
    dict
        ``scheduler`` (address), ``n_workers``, ``threads`` (total),
        ``memory`` (total worker memory limit in bytes, 0 when unlimited),
        ``dashboard`` (URL or None) and ``workers``: one dict per worker
        with ``name``, ``address``, ``threads`` and ``memory`` — the form
        :func:`write_report` expects for its ``cluster`` argument.
    """
    if client is None:
        threads = os.cpu_count() or 1
        return {
            "scheduler": "local threads (no distributed Client)",
            "n_workers": 1,
            "threads": threads,
            "memory": None,
            "dashboard": None,
            "workers": [],
        }
    try:
        info = scheduler_identity(client)
    except Exception:  # informational only: what the client knows
        info = client.scheduler_info()

    def order(item):
        address, w = item
        name = str(w.get("name", address))
        return (0, int(name), address) if name.isdigit() else (1, name, address)

    workers = []
    for address, w in sorted(info.get("workers", {}).items(), key=order):
        workers.append(
            {
                "name": str(w.get("name", address)),
                "address": address,
                "threads": int(w.get("nthreads", 0) or 0),
                "memory": int(w.get("memory_limit", 0) or 0),
            }
        )
    return {
        "scheduler": info.get("address") or getattr(getattr(client, "scheduler", None), "address", None),
        "n_workers": len(workers),
        "threads": sum(w["threads"] for w in workers),
        "memory": sum(w["memory"] for w in workers),
        # A Client makes up a default link even when the scheduler serves no dashboard.
        "dashboard": getattr(client, "dashboard_link", None) if "dashboard" in info.get("services", {}) else None,
        "workers": workers,
    }


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=False)


def _attr(value: Any) -> str:
    """Escaped for use inside a double-quoted attribute."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A number or value as short, readable text (not yet escaped)."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(value)


def _bytes(n: Any) -> str:
    if n is None:
        return "–"
    if isinstance(n, str):
        return n
    n = float(n)
    if n <= 0:
        return "no limit"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _seconds(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    if v < 120:
        return f"{v:.2f} s"
    return f"{v / 60:.1f} min ({v:.0f} s)"


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None = None, numeric: Sequence[int] = ()) -> str:
    """An HTML table from already-escaped cell strings."""
    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>")
    for r in rows:
        cells = [f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _kv_table(items: Mapping[str, Any], fmt=_fmt) -> str:
    return _table([(_esc(k), _esc(fmt(v))) for k, v in items.items()], headers=("name", "value"))


class _Raw(str):
    """Text shown as it is among parameter values (not quoted like a str value)."""


def _param(value: Any) -> str:
    """A parameter value as Python spells it (None, True, 'auto' stay recognisable)."""
    if isinstance(value, _Raw):
        return str(value)
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return repr(value) if isinstance(value, str) else str(value)
    return _fmt(value)


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def _finite_history(model: Any, name: str) -> np.ndarray | None:
    values = getattr(model, name, None)
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr if arr.size and np.isfinite(arr).any() else None


def _png_figure(loss: np.ndarray, stat: np.ndarray | None) -> str:
    """The loss (and stationarity) curves as a base64 PNG ``<img>`` element."""
    from matplotlib.figure import Figure

    from ..plot import loss_curve

    # A bare Figure (no pyplot): no global figure registry, safe from any thread.
    ncols = 2 if stat is not None else 1
    fig = Figure(figsize=(5.0 * ncols, 3.4), dpi=100)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    loss_curve(loss, stationarity=stat, ax=list(axes) if stat is not None else axes[0])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = "loss per iteration" + (" and stationarity per iteration" if stat is not None else "")
    return f'<img class="loss-curve" alt="{alt}" src="data:image/png;base64,{data}">'


def _svg_chart(values: np.ndarray, title: str, ylabel: str, color: str) -> str:
    """A minimal inline SVG line chart (used when matplotlib is missing)."""
    w, h, left, right, top, bottom = 480, 260, 60, 12, 28, 36
    vals = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(vals)
    log = bool(finite.any() and vals[finite].min() > 0 and vals[finite].max() / vals[finite].min() > 10)
    y = np.where(finite, np.log10(np.where(vals > 0, vals, 1.0)) if log else vals, np.nan)
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(vals.size - 1, 1)

    def px(i, v):
        return left + (w - left - right) * i / n, top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    pts = " ".join(f"{x:.1f},{yv:.1f}" for x, yv in (px(i, v) for i, v in enumerate(y) if np.isfinite(v)))
    lab = (lambda v: f"{10**v:.3g}") if log else (lambda v: f"{v:.4g}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="loss-curve" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{_attr(title)}">'
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>'
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">{_esc(title)}</text>'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#444"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#444"/>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10">{lab(hi)}</text>'
        f'<text x="{left - 4}" y="{h - bottom}" text-anchor="end" font-size="10">{lab(lo)}</text>'
        f'<text x="{left}" y="{h - bottom + 14}" font-size="10">1</text>'
        f'<text x="{w - right}" y="{h - bottom + 14}" text-anchor="end" font-size="10">{vals.size}</text>'
        f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" font-size="11">iteration</text>'
        f'<text x="12" y="{(top + h - bottom) / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(top + h - bottom) / 2})">{_esc(ylabel)}{" (log)" if log else ""}</text>'
        f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/></svg>'
    )


def _figure(model: Any) -> str:
    loss = _finite_history(model, "loss_history_")
    if loss is None:
        return '<p class="missing">No loss history recorded.</p>'
    stat = _finite_history(model, "stationarity_history_")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parts = [_svg_chart(loss, "loss per iteration", "loss", "#4c78a8")]
        if stat is not None:
            parts.append(_svg_chart(stat, "projected-gradient stationarity", "relative", "#f58518"))
        return "".join(parts) + (
            '<p class="meta">Plotted without matplotlib (<code>pip install dnmf[plot]</code> '
            "gives the full figure).</p>"
        )
    return _png_figure(loss, stat)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _check_fitted(model: Any) -> None:
    if not hasattr(model, "n_iter_") or not hasattr(model, "loss_history_"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(
            f"write_report needs a fitted model; this {type(model).__name__} has no n_iter_ / "
            "loss_history_. Call fit(X) on it first (or dnmf.load a saved model)."
        )


def _params(model: Any) -> dict[str, Any]:
    if not hasattr(model, "get_params"):
        return {}
    params = model.get_params(deep=False)
    out = {}
    for name in sorted(params):
        value = params[name]
        if name == "client" and value is not None:
            address = getattr(getattr(value, "scheduler", None), "address", None)
            value = _Raw(f"{type(value).__name__}({address!r})")
        elif isinstance(value, np.random.RandomState):
            value = _Raw("RandomState instance")
        out[name] = value
    return out


def _converged(model: Any) -> str:
    """Whether the fit met its tolerance: recorded (``converged_``), or read off n_iter_."""
    recorded = getattr(model, "converged_", None)
    max_iter = getattr(model, "max_iter", None)
    n_iter = getattr(model, "n_iter_", None)
    if recorded is not None and max_iter is not None and n_iter is not None:
        if recorded:
            return f"yes (stopped at iteration {n_iter} of max_iter={max_iter})"
        if int(n_iter) < int(max_iter):
            return f"no (stopped at iteration {n_iter} of max_iter={max_iter}: max_time or the callback)"
        return f"no (reached max_iter={max_iter})"
    if recorded is not None:
        return _fmt(bool(recorded))
    if max_iter is None or n_iter is None:
        return "not recorded"
    if int(n_iter) < int(max_iter):
        if getattr(model, "max_time", None) is not None:
            return f"stopped at iteration {n_iter} of {max_iter} (tolerance or max_time)"
        return f"yes (stopped at iteration {n_iter} of max_iter={max_iter})"
    return f"no (reached max_iter={max_iter})"


def _summary(model: Any, timings: Mapping[str, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"estimator": type(model).__name__}
    comps = getattr(model, "components_", None)
    if comps is not None:
        out["n_components_"] = int(np.shape(comps)[0])
    for name in ("n_features_in_", "n_iter_", "reconstruction_err_"):
        if hasattr(model, name):
            out[name] = getattr(model, name)
    W = model.__dict__.get("_W") if hasattr(model, "__dict__") else None
    if W is not None:
        out["n_samples (rows of W)"] = int(np.shape(W)[0])
    out["converged"] = _converged(model)
    elapsed = getattr(model, "elapsed_", None)
    if elapsed is None and timings:
        elapsed = next((float(v) for k, v in timings.items() if str(k).lower() in ("iterations", "fit")), None)
    out["elapsed (iterations)"] = None if elapsed is None else _seconds(float(elapsed))
    loss = _finite_history(model, "loss_history_")
    if loss is not None:
        out["first loss"] = float(loss[0])
        out["final loss"] = float(loss[-1])
        if loss.size > 1 and loss[-2] != 0:
            out["last relative decrease"] = float((loss[-2] - loss[-1]) / loss[-2])
    stat = _finite_history(model, "stationarity_history_")
    if stat is not None:
        out["final stationarity (relative)"] = float(stat[np.isfinite(stat)][-1])
    return out


def _timings(timings: Mapping[str, float] | None) -> str:
    if not timings:
        return '<p class="missing">No timings given.</p>'
    items = [(str(k), float(v)) for k, v in timings.items()]
    total = sum(v for _, v in items if math.isfinite(v) and v > 0)
    rows = []
    for name, v in items:
        share = v / total if total > 0 and math.isfinite(v) and v > 0 else 0.0
        bar = f'<span class="bar" style="width:{share * 20:.2f}em"></span>'
        rows.append((_esc(name), _esc(_seconds(v)), f"{share * 100:.1f} %", bar))
    rows.append(("<b>total</b>", f"<b>{_esc(_seconds(total))}</b>", "100 %", ""))
    return _table(rows, headers=("phase", "wall time", "share", ""), numeric=(1, 2))


def _cluster(cluster: Mapping[str, Any] | None) -> str:
    if not cluster:
        return '<p class="missing">No cluster information given.</p>'
    rows = []
    cluster = dict(cluster)
    if "memory" not in cluster and "memory_limit" in cluster:
        cluster["memory"] = cluster.pop("memory_limit")
    workers = cluster.get("workers")
    for key, label in (
        ("scheduler", "scheduler address"),
        ("n_workers", "workers"),
        ("threads", "threads"),
        ("memory", "memory limit (total)"),
        ("dashboard", "dashboard"),
    ):
        if key == "n_workers" and key not in cluster and isinstance(workers, int):
            value = workers
        elif key not in cluster:
            continue
        else:
            value = cluster[key]
        if key == "memory":
            cell = _esc(_bytes(value))
        elif key == "dashboard" and value:
            cell = f'<a href="{_attr(value)}">{_esc(value)}</a>'
        else:
            cell = _esc(_fmt(value))
        rows.append((_esc(label), cell))
    shown = {"scheduler", "n_workers", "threads", "memory", "dashboard", "workers"}
    for key, value in cluster.items():
        if key not in shown:
            rows.append((_esc(key), _esc(_fmt(value))))
    out = [_table(rows, headers=("property", "value"))]
    if isinstance(workers, Sequence) and not isinstance(workers, str) and workers:
        wrows = []
        for w in workers:
            if isinstance(w, Mapping):
                wrows.append(
                    (
                        _esc(w.get("name", "")),
                        _esc(w.get("address", "")),
                        _esc(_fmt(w.get("threads"))),
                        _esc(_bytes(w.get("memory"))),
                    )
                )
            else:
                wrows.append((_esc(w), "", "", ""))
        out.append(_table(wrows, headers=("worker", "address", "threads", "memory limit"), numeric=(2, 3)))
    return "\n".join(out)


def _history_table(model: Any) -> str:
    loss = _finite_history(model, "loss_history_")
    if loss is None:
        return ""
    stat = getattr(model, "stationarity_history_", None)
    stat = np.asarray(stat if stat is not None else [], dtype=np.float64).ravel()
    rows = []
    for i, v in enumerate(loss):
        s = _fmt(float(stat[i])) if i < stat.size else "–"
        rows.append((str(i + 1), _esc(_fmt(float(v))), _esc(s)))
    return (
        "<details><summary>Loss and stationarity of every iteration</summary>"
        + _table(rows, headers=("iteration", "loss", "stationarity"), numeric=(0, 1, 2))
        + "</details>"
    )


def render_report(
    model: Any,
    *,
    timings: Mapping[str, float] | None = None,
    cluster: Mapping[str, Any] | None = None,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The HTML text that :func:`write_report` writes (see there)."""
    _check_fitted(model)
    from .._version import __version__

    title = title or f"dnmf {type(model).__name__} report"
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">Written {_esc(now)} by dnmf {_esc(__version__)}.</p>',
        '<h2 id="result">Result</h2>',
        _kv_table(_summary(model, timings)),
        '<h2 id="loss">Loss curve</h2>',
        f"<figure>{_figure(model)}</figure>",
        _history_table(model),
        '<h2 id="timings">Timing per phase</h2>',
        _timings(timings),
        '<h2 id="cluster">Cluster</h2>',
        _cluster(cluster),
        '<h2 id="parameters">Parameters</h2>',
        _kv_table(_params(model), fmt=_param) if hasattr(model, "get_params") else '<p class="missing">None.</p>',
    ]
    if extra:
        sections += ['<h2 id="extra">More</h2>', _kv_table(dict(extra))]
    sections.append("</body></html>")
    return "\n".join(sections) + "\n"


def write_report(
    path: str | os.PathLike[str],
    model: Any,
    *,
    timings: dict[str, float] | None = None,
    cluster: dict | None = None,
    title: str | None = None,
    extra: dict | None = None,
) -> None:
    """Write a self-contained HTML report of a fitted model, atomically.

    The file holds everything (the figure is an inline base64 PNG, or inline
    SVG without matplotlib; no external assets): the result (``n_iter_``,
    ``reconstruction_err_``, convergence, elapsed time, first and final
    loss), the loss curve with the stationarity measure beside it, every
    iteration's values, the timing of each phase, the cluster used and the
    estimator's parameters (``get_params()``).

    Parameters
    ----------
    path : str or path-like
        The HTML file to write. It is written to a temporary file in the same
        folder and renamed into place, so readers see the old report or the
        new one, never half of one.
    model : fitted dnmf.NMF (or any estimator with ``n_iter_`` and ``loss_history_``)
        Reads ``loss_history_`` (``n_iter_``,), ``stationarity_history_``
        (``n_iter_``,), ``n_iter_``, ``reconstruction_err_``, ``components_``
        (n_components, n_features) and ``get_params()``; ``converged_`` and
        ``elapsed_`` when the model records them.
    timings : dict of str to float, optional
        Wall seconds per phase, in the order to show, e.g.
        ``{"ingest": 3.1, "init": 0.4, "iterations": 12.0, "save": 0.8}``.
        "iterations" (or "fit") is also shown as the elapsed time when the
        model does not record one.
    cluster : dict, optional
        The cluster used, as :func:`cluster_info` returns it: ``scheduler``,
        ``n_workers``, ``threads``, ``memory`` (bytes; or ``memory_limit``),
        ``dashboard`` (URL, shown as a link) and ``workers`` (their number,
        or a list of dicts with ``name``, ``address``, ``threads``,
        ``memory``); other keys are listed as they are.
    title : str, optional
        Page title (default "dnmf NMF report").
    extra : dict, optional
        More name/value pairs to list (the input path, the command line...).

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If ``model`` has not been fitted.
    """
    text = render_report(model, timings=timings, cluster=cluster, title=title, extra=extra)
    from ..storage.locations import write_atomic

    # 0644: the temporary file's 0600 would hide the report from other users.
    write_atomic(os.fspath(path), text.encode("utf-8"), mode=0o644)
