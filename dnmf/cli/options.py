"""Options shared by several ``dnmf`` commands, and ``--config`` files.

Each group of options is a decorator, so a command lists what it accepts in
one place and ``--help`` shows it. ``--config FILE`` (TOML or YAML) supplies
defaults for any option of the command it is given to; options on the
command line override it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

_BETA_NAMES = ("frobenius", "kullback-leibler", "itakura-saito")
# Config keys that are not an option's own name.
_ALIASES = {"k": "n_components", "random_state": "seed", "workers": "n_workers"}


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


# ---------------------------------------------------------------- --config


def _read_config(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw = fh.read()
    if path.endswith(".toml"):
        import tomllib

        try:
            data = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as exc:
            raise click.BadParameter(f"{path} is not valid TOML ({exc}).", param_hint="--config") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{path} is not valid YAML ({exc}).", param_hint="--config") from None
    else:
        raise click.BadParameter(
            f"{path}: unknown configuration format; name it *.toml, *.yaml or *.yml.", param_hint="--config"
        )
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a table of option = value pairs.", param_hint="--config")
    return data


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    data = _read_config(value)
    known = {
        p.name
        for p in ctx.command.params
        if p.name and p.name != "config" and getattr(p, "nargs", 1) != -1 and isinstance(p, click.Option)
    }
    defaults: dict[str, Any] = {}
    for key, v in data.items():
        name = str(key).replace("-", "_")
        name = _ALIASES.get(name, name) if name not in known else name
        if name not in known:
            options = ", ".join(sorted(n.replace("_", "-") for n in known))
            raise click.BadParameter(
                f"{value}: unknown option {key!r} for `dnmf {ctx.command.name}`. Known: {options}.",
                param_hint="--config",
            )
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


config_option = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML or YAML file of option = value pairs (names as on the command line, without "
    "dashes: max-iter = 300). Command-line options override it.",
)


# ---------------------------------------------------------------- output


def _set_meta(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.find_root().meta[f"dnmf.{param.name}"] = value
    return value


output_options = _stack(
    click.option("-q", "--quiet", is_flag=True, callback=_set_meta, help="Print only the result (and errors)."),
    click.option(
        "-v",
        "--verbose",
        is_flag=True,
        callback=_set_meta,
        help="Log every iteration and Dask's messages; tracebacks on errors.",
    ),
    click.option(
        "--log-json",
        is_flag=True,
        callback=_set_meta,
        help="One JSON record per iteration on standard output, for log collectors.",
    ),
)


# ---------------------------------------------------------------- cluster

cluster_options = _stack(
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Address of a running Dask scheduler (tcp://host:8786, tls://host:8786). "
        "Default: an embedded local cluster on this machine.",
    ),
    click.option(
        "--scheduler-file",
        type=click.Path(dir_okay=False),
        help="JSON file written by `dask scheduler --scheduler-file`.",
    ),
    click.option(
        "--workers",
        "n_workers",
        type=click.IntRange(min=1),
        help="Embedded cluster: number of workers (default: see --processes).",
    ),
    click.option(
        "--threads-per-worker",
        type=click.IntRange(min=1),
        help="Embedded cluster: threads per worker (default: the cores divided among workers).",
    ),
    click.option(
        "--memory-limit",
        metavar="SIZE",
        help="Embedded cluster: memory limit per worker, e.g. 4GiB (default: the machine's "
        "memory divided among the workers).",
    ),
    click.option(
        "--processes/--threads",
        "processes",
        default=None,
        help="Embedded cluster: worker processes, or one worker of threads in this process "
        "(the default: on one machine it has the lowest per-iteration overhead).",
    ),
    click.option(
        "--host",
        metavar="INTERFACE",
        default="127.0.0.1",
        show_default=True,
        help="Embedded cluster: the interface its scheduler, workers and dashboard listen on. "
        "The default lets only this machine connect; 0.0.0.0 opens them to the network (the "
        "dashboard shows logs and call stacks to anyone who can reach it).",
    ),
    click.option(
        "--dashboard/--no-dashboard",
        default=True,
        help="Embedded cluster: serve the Dask dashboard (on --host, a free port).",
    ),
    click.option(
        "--tls-ca-file", type=click.Path(exists=True, dir_okay=False), help="TLS: the cluster's CA certificate (PEM)."
    ),
    click.option(
        "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS: this client's certificate (PEM)."
    ),
    click.option(
        "--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS: this client's private key (PEM)."
    ),
    click.option(
        "--tls",
        "tls_config",
        type=click.Path(exists=True, dir_okay=False),
        help="TLS: a Dask configuration YAML with distributed.comm.tls settings.",
    ),
    click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        help="Seconds to wait for the scheduler.",
    ),
)

CLUSTER_KEYS = (
    "scheduler",
    "scheduler_file",
    "n_workers",
    "threads_per_worker",
    "memory_limit",
    "processes",
    "host",
    "dashboard",
    "tls_ca_file",
    "tls_cert",
    "tls_key",
    "tls_config",
    "connect_timeout",
)


def cluster_from(kwargs: dict[str, Any]):
    """Pop the cluster options from a command's keyword arguments into ClusterOptions."""
    from .cluster import ClusterOptions

    v = {k: kwargs.pop(k, None) for k in CLUSTER_KEYS}
    processes = v["processes"]
    n_workers = v["n_workers"]
    threads = v["threads_per_worker"]
    if processes is None:
        # Measured on 2 cores (README, "Command line"): one worker of threads in this process
        # costs 0.6-0.8x the time per iteration of two worker processes (no inter-process
        # transfers; the kernels release the GIL), so it is the embedded default;
        # --workers N means processes.
        processes = n_workers is not None and n_workers > 1
    if not processes and n_workers is None:
        n_workers = 1
        threads = threads or os.cpu_count() or 1
    return ClusterOptions(
        scheduler=v["scheduler"],
        scheduler_file=v["scheduler_file"],
        n_workers=n_workers,
        threads_per_worker=threads,
        memory_limit=v["memory_limit"],
        processes=processes,
        host=v["host"] or "127.0.0.1",
        dashboard_address=":0" if v["dashboard"] in (None, True) else None,
        tls_ca_file=v["tls_ca_file"],
        tls_cert=v["tls_cert"],
        tls_key=v["tls_key"],
        tls_config=v["tls_config"],
        timeout=v["connect_timeout"] or 10.0,
    )


# ---------------------------------------------------------------- ingestion


def _codec(ctx, param, value):
    if value is None:
        return None
    from ..storage.codecs import parse_codec

    try:
        return str(parse_codec(value, "--codec"))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


ingest_options = _stack(
    click.option(
        "--format",
        "format",
        type=click.Choice(["auto", "csv", "parquet", "mtx", "npz", "npy"]),
        default="auto",
        show_default=True,
        help="Input format (auto: from the file name).",
    ),
    click.option("--user-col", default="user", show_default=True, help="Ratings tables: the row ID column."),
    click.option("--item-col", default="item", show_default=True, help="Ratings tables: the column ID column."),
    click.option(
        "--value-col",
        default="rating",
        show_default=True,
        help="Ratings tables: the value column ('' for implicit data: every pair counts 1).",
    ),
    click.option("--sep", default=None, help="CSV field delimiter (default ',', tab for .tsv)."),
    click.option(
        "--duplicates",
        type=click.Choice(["sum", "last"]),
        default="sum",
        show_default=True,
        help="Repeated (user, item) pairs: add them up or keep the last.",
    ),
    click.option(
        "--on-invalid",
        type=click.Choice(["raise", "drop"]),
        default="raise",
        show_default=True,
        help="Rows with a missing ID or a negative/NaN value: stop with an error, or drop them.",
    ),
    click.option(
        "--rows-per-block",
        type=click.IntRange(min=1),
        default=None,
        help="Rows per block of the store (default: blocks of at most about 64 MiB, at least 4 per core of this machine).",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float64"]),
        default=None,
        help="Value type of the store (default: float32 for ratings tables, the file's for matrices).",
    ),
    click.option(
        "--codec",
        callback=_codec,
        default=None,
        help="Sparse stores: compression of the blocks, lz4[:LEVEL] (default lz4:5), zstd[:LEVEL] (smaller, slower to read) or none.",
    ),
    click.option(
        "--index-dtype",
        type=click.Choice(["auto", "int32", "int64"]),
        default=None,
        help="Sparse stores: width of stored row pointers and column indices (default auto: 32-bit unless too small).",
    ),
)

INGEST_KEYS = (
    "format",
    "user_col",
    "item_col",
    "value_col",
    "sep",
    "duplicates",
    "on_invalid",
    "rows_per_block",
    "dtype",
    "codec",
    "index_dtype",
)


def ingest_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the ingestion options into keyword arguments of :func:`dnmf.ingest`."""
    v = {k: kwargs.pop(k, None) for k in INGEST_KEYS}
    out: dict[str, Any] = {
        "format": v["format"] or "auto",
        "user_col": v["user_col"] or "user",
        "item_col": v["item_col"] or "item",
        "value_col": v["value_col"] if v["value_col"] != "" else None,
        "duplicates": v["duplicates"] or "sum",
        "on_invalid": v["on_invalid"] or "raise",
    }
    if v["rows_per_block"] is not None:
        out["chunks"] = v["rows_per_block"]
    if v["dtype"] is not None:
        out["dtype"] = v["dtype"]
    if v["codec"] is not None:
        out["codec"] = v["codec"]
    if v["index_dtype"] is not None:
        out["index_dtype"] = v["index_dtype"]
    if v["sep"] is not None:
        out["read_options"] = {"sep": v["sep"]}
    return out


# ---------------------------------------------------------------- the estimator


def _beta(ctx, param, value):
    if value is None or value in _BETA_NAMES:
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither one of {', '.join(_BETA_NAMES)} nor a number.") from None


def _storage_options(ctx, param, value):
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    try:
        out = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}); e.g. '{{\"anon\": false}}'.") from None
    if not isinstance(out, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"anon\": false}'.")
    return out


#: Checkpointing, recovery and storage options, shared by every fitting command.
run_options = _stack(
    click.option(
        "--checkpoint-every",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Iterations between checkpoints.",
    ),
    click.option(
        "--checkpoint-seconds",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Also checkpoint when this many seconds passed since the last one.",
    ),
    click.option("--keep-checkpoints", type=click.IntRange(min=1), default=2, show_default=True),
    click.option(
        "--max-retries",
        type=click.IntRange(min=0),
        default=3,
        show_default=True,
        help="Recoveries from lost workers allowed before the job fails.",
    ),
    click.option(
        "--storage-options",
        callback=_storage_options,
        default=None,
        help="JSON object of fsspec options for s3:// and other URLs, "
        'e.g. \'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\'.',
    ),
)

RUN_KEYS = ("checkpoint_every", "checkpoint_seconds", "keep_checkpoints", "max_retries")


def _same_or_float(ctx, param, value):
    if value is None or value == "same" or isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'same' nor a number.") from None


def _auto_or_float(ctx, param, value):
    if value is None or str(value) == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number.") from None
    if number < 0:
        raise click.BadParameter(f"{value!r} is negative; give a number >= 0 or 'auto'.")
    return number


def none_or_fraction(ctx, param, value):
    """A click callback: 'none' → None, else a number in [0, 1)."""
    if value is None or str(value).lower() == "none":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'none' nor a number.") from None
    if not 0 <= number < 1:
        raise click.BadParameter(f"{value!r} is not in [0, 1); give e.g. 0.0001, or 'none'.")
    return number


def _auto_or_int(ctx, param, value):
    if value is None or str(value) == "auto":
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'auto' nor an integer >= 1.") from None


model_options = _stack(
    click.option(
        "-k",
        "--n-components",
        "n_components",
        type=click.IntRange(min=1),
        required=True,
        help="Number of components (the rank k).",
    ),
    click.option(
        "--solver",
        type=click.Choice(["cd", "mu", "anls-bpp"]),
        default="cd",
        show_default=True,
        help="cd: HALS coordinate descent; mu: multiplicative updates (any beta loss); "
        "anls-bpp: alternating NNLS by block principal pivoting.",
    ),
    click.option(
        "--beta-loss",
        default="frobenius",
        show_default=True,
        callback=_beta,
        help="frobenius, kullback-leibler, itakura-saito or a number (not frobenius: --solver mu).",
    ),
    click.option(
        "--init",
        type=click.Choice(["random", "nndsvd", "nndsvda", "nndsvdar"]),
        default=None,
        help="Initialisation (default: nndsvda when k <= min(rows, columns), else random).",
    ),
    click.option("--max-iter", type=click.IntRange(min=1), default=200, show_default=True),
    click.option(
        "--tol",
        type=click.FloatRange(min=0),
        default=1e-4,
        show_default=True,
        help="Stopping tolerance (scikit-learn's rule for the solver).",
    ),
    click.option(
        "--max-time",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Stop after this many seconds of iterations.",
    ),
    click.option(
        "--alpha-W",
        "alpha_W",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Regularisation of W (scikit-learn's scaling).",
    ),
    click.option(
        "--alpha-H",
        "alpha_H",
        default="same",
        show_default=True,
        callback=_same_or_float,
        help="Regularisation of H, or 'same' as --alpha-W.",
    ),
    click.option(
        "--l1-ratio",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Share of L1 in the regularisation (0: L2 only).",
    ),
    click.option(
        "--inner-iter",
        default="1",
        show_default=True,
        callback=_auto_or_int,
        help="cd: sweeps per half-step (1: scikit-learn's HALS; 'auto': accelerated HALS).",
    ),
    click.option(
        "--stopping",
        type=click.Choice(["auto", "loss", "stationarity"]),
        default="auto",
        show_default=True,
        help="Stopping rule.",
    ),
    click.option("--shuffle", is_flag=True, help="cd: random coordinate order."),
    click.option(
        "--factor-store",
        default=None,
        metavar="DIR",
        help="Keep W in this new (or empty) directory during the fit instead of in the workers' "
        "memory: for a W larger than the cluster's memory (Frobenius loss; same results).",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Random seed (initialisation, coordinate order).",
    ),
    run_options,
)

MODEL_KEYS = (
    "n_components",
    "solver",
    "beta_loss",
    "init",
    "max_iter",
    "tol",
    "max_time",
    "alpha_W",
    "alpha_H",
    "l1_ratio",
    "inner_iter",
    "stopping",
    "shuffle",
    "seed",
) + RUN_KEYS


def model_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the estimator options into :class:`dnmf.NMF` parameters (JSON values)."""
    v = {k: kwargs.pop(k) for k in MODEL_KEYS}
    alpha_H, inner = v["alpha_H"], v["inner_iter"]
    params = {
        "n_components": v["n_components"],
        "solver": v["solver"],
        "beta_loss": v["beta_loss"],
        "init": v["init"],
        "max_iter": v["max_iter"],
        "tol": v["tol"],
        "max_time": v["max_time"],
        "alpha_W": v["alpha_W"],
        "alpha_H": alpha_H,
        "l1_ratio": v["l1_ratio"],
        "inner_iter": inner,
        "stopping": v["stopping"],
        "shuffle": bool(v["shuffle"]),
        "random_state": v["seed"],
        "checkpoint_every": v["checkpoint_every"],
        "checkpoint_seconds": v["checkpoint_seconds"],
        "keep_checkpoints": v["keep_checkpoints"],
        "max_retries": v["max_retries"],
    }
    factor_store = kwargs.pop("factor_store", None)
    if factor_store is not None:
        from ..storage import locations

        # Absolute: the fit may run in a worker (`dnmf submit`) or be resumed from elsewhere.
        params["factor_store"] = locations.normalize(factor_store)
    return params


# ---------------------------------------------------------------- the ratings estimator

ratings_options = _stack(
    click.option(
        "-k",
        "--n-components",
        "n_components",
        type=click.IntRange(min=1),
        default=20,
        show_default=True,
        help="Number of factors k.",
    ),
    click.option(
        "--feedback",
        type=click.Choice(["explicit", "implicit"]),
        default="explicit",
        show_default=True,
        help="explicit: fit the observed ratings only (predicts ratings); implicit: confidence-"
        "weighted preferences over all items (ranks top-n lists far better).",
    ),
    click.option(
        "--solver",
        type=click.Choice(["als", "ccd", "cg"]),
        default="als",
        show_default=True,
        help="als: exact non-negative least squares per user/item; ccd: coordinate descent; "
        "cg: a few warm-started projected conjugate-gradient steps per user/item (fastest).",
    ),
    click.option(
        "--biases/--no-biases",
        default=None,
        help="User/item biases and a global mean (default: on for explicit, off for implicit).",
    ),
    click.option(
        "--alpha",
        default="auto",
        show_default=True,
        callback=_auto_or_float,
        help="Penalty weight of the factors ('auto': 0.1 for explicit, 0.3 for implicit).",
    ),
    click.option("--l1-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True),
    click.option(
        "--alpha-bias",
        default="same",
        show_default=True,
        callback=_same_or_float,
        help="L2 weight of the biases, or 'same' as --alpha.",
    ),
    click.option(
        "--reg-scaling",
        type=click.Choice(["auto", "count", "cells", "none"]),
        default="auto",
        show_default=True,
        help="count: ALS-WR (penalty times each user's/item's count); cells (implicit): penalty "
        "times (users*items)^(1/4) * (mean confidence of the observed entries)^(2/3); auto: count "
        "for explicit, cells for implicit.",
    ),
    click.option(
        "--confidence",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="implicit: a in the confidence c (see --confidence-form).",
    ),
    click.option(
        "--confidence-form",
        type=click.Choice(["linear", "log", "proportional"]),
        default="linear",
        show_default=True,
        help="implicit: linear c = 1 + a*x; log c = 1 + a*log(1 + x/epsilon); proportional c = max(a*x, floor).",
    ),
    click.option(
        "--epsilon",
        type=click.FloatRange(min=0, min_open=True),
        default=1.0,
        show_default=True,
        help="implicit, log form: epsilon.",
    ),
    click.option(
        "--confidence-floor",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="implicit, proportional form: the smallest confidence of an observed entry.",
    ),
    click.option(
        "--preference-threshold",
        type=float,
        default=None,
        help="implicit: observed values below it are 'not preferred' (preference 0, with their confidence).",
    ),
    click.option(
        "--user-count-power",
        default="auto",
        show_default=True,
        callback=_auto_or_float,
        help="implicit: each user's penalty times (their entries / the mean)^this ('auto': 0.6; 0: the "
        "same penalty for every user, the model before).",
    ),
    click.option("--max-iter", type=click.IntRange(min=1), default=50, show_default=True),
    click.option("--tol", type=click.FloatRange(min=0), default=1e-4, show_default=True),
    click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None),
    click.option(
        "--sweeps",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="ccd: coordinate sweeps per half-step.",
    ),
    click.option(
        "--cg-steps",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="cg: conjugate-gradient steps per user/item and half-step.",
    ),
    click.option(
        "--factor-store",
        default=None,
        metavar="DIR",
        help="Keep the users' factors in this new (or empty) directory during the fit instead of in the "
        "workers' memory: for more users than the cluster's memory holds (--solver als; same results).",
    ),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
    run_options,
)

RATINGS_KEYS = (
    "n_components",
    "feedback",
    "solver",
    "biases",
    "alpha",
    "l1_ratio",
    "alpha_bias",
    "reg_scaling",
    "confidence",
    "confidence_form",
    "epsilon",
    "confidence_floor",
    "preference_threshold",
    "user_count_power",
    "max_iter",
    "tol",
    "max_time",
    "sweeps",
    "cg_steps",
    "seed",
) + RUN_KEYS


def ratings_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the ratings options into :class:`dnmf.RatingsNMF` parameters (JSON values)."""
    v = {k: kwargs.pop(k) for k in RATINGS_KEYS}
    v["biases"] = "auto" if v["biases"] is None else bool(v["biases"])
    v["random_state"] = v.pop("seed")
    factor_store = kwargs.pop("factor_store", None)
    if factor_store is not None:
        if v["solver"] != "als":
            raise click.UsageError(
                f"--factor-store needs --solver als; got --solver {v['solver']} (ccd and cg need every user "
                "row of an item at once). Use --solver als, or leave out --factor-store."
            )
        from ..storage import locations

        # Absolute: the fit may run in a worker (`dnmf submit`) or be resumed from elsewhere.
        v["factor_store"] = locations.normalize(factor_store)
    return v
