"""``dnmf ingest``, ``info``, ``transform`` and ``export``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from . import guards
from . import options as o


@click.command()
@click.argument("input", metavar="INPUT", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, help="The matrix store to create (path or fsspec URL).")
@o.ingest_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store at OUTPUT.")
@click.option(
    "--storage-options",
    callback=o._storage_options,
    default=None,
    help="JSON object of fsspec options for an OUTPUT URL.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@o.config_option
def ingest(input: str, output: str, overwrite: bool, storage_options: dict | None, as_json: bool, **kw: Any) -> None:
    """Turn a ratings table or matrix file into a matrix store.

    Ratings tables (CSV, Parquet) become a sparse users x items matrix; the
    user and item IDs are kept as the store's row and column IDs. Files are
    streamed: they never have to fit in memory.
    """
    from ..storage import arrays as io

    t0 = time.perf_counter()
    store = io.ingest(input, output, overwrite=overwrite, storage_options=storage_options, **o.ingest_kwargs(kw))
    out = _matrix_info(store)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"wrote {store.path}: {out['shape'][0]} x {out['shape'][1]}, {out['nnz']} non-zeros "
            f"({out['seconds']:.1f} s)"
        )


def _matrix_info(store) -> dict[str, Any]:
    m, n = store.shape
    nnz = store.nnz
    rows, cols = store.chunks
    out: dict[str, Any] = {
        "kind": "matrix",
        "path": store.path,
        "format": store.format,
        "shape": [m, n],
        "nnz": nnz,
        "density": (nnz / (m * n)) if nnz is not None and m and n else None,
        "dtype": str(store.dtype),
        "row_blocks": len(rows),
        "col_blocks": len(cols),
        "rows_per_block": max(rows) if rows else 0,
        "cols_per_block": max(cols) if cols else 0,
    }
    for name, ids in (("row_ids", store.row_ids), ("col_ids", store.col_ids)):
        import pandas as pd

        named = not isinstance(ids, pd.RangeIndex)
        out[name] = {
            "named": named,
            "dtype": str(ids.dtype),
            "first": [v.item() if hasattr(v, "item") else v for v in ids[:3]],
        }
    return out


def _model_info(path: str) -> dict[str, Any]:
    from ..base.estimator import load

    model = load(path)
    hist = [float(v) for v in model.loss_history_]
    W = model.__dict__.get("_W")
    if W is None:
        W = model.__dict__.get("user_factors_")  # RatingsNMF
    err = getattr(model, "reconstruction_err_", None)
    n_components = getattr(model, "n_components_", None)
    if n_components is None:
        n_components = model.components_.shape[0]
    return {
        "kind": "model",
        "path": path,
        "estimator": type(model).__name__,
        "n_components": int(n_components),
        "n_features": int(model.n_features_in_),
        "n_samples": int(W.shape[0]) if W is not None else None,
        "has_W": W is not None,
        "n_iter": int(model.n_iter_),
        "converged": bool(getattr(model, "converged_", model.n_iter_ < model.max_iter)),
        "reconstruction_err": None if err is None else float(err),
        "loss_first": hist[0] if hist else None,
        "loss_last": hist[-1] if hist else None,
        "loss_history": hist,
        "params": {k: v for k, v in model.get_params(deep=False).items() if k != "client"},
        "feature_ids": hasattr(model, "feature_ids_") or hasattr(model, "item_ids_"),
        "sample_ids": hasattr(model, "sample_ids_") or hasattr(model, "user_ids_"),
    }


@click.command()
@click.argument("path", metavar="PATH")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@click.option(
    "--storage-options", callback=o._storage_options, default=None, help="JSON object of fsspec options for a URL."
)
def info(path: str, as_json: bool, storage_options: dict | None) -> None:
    """Describe a matrix store, a model or a job directory.

    \b
    matrix store: shape, non-zeros, density, blocking, dtype, IDs
    model:        parameters, iterations, convergence, loss history
    job:          as `dnmf status`
    """
    from ..storage import arrays as io

    kind = io.identify(path, storage_options)
    if kind == "job":
        from .fitting import status

        click.get_current_context().invoke(status, job=path, as_json=as_json, storage_options=storage_options)
        return
    if kind == "model":
        out = _model_info(path)
    else:
        out = _matrix_info(io.open_matrix(path, storage_options=storage_options))
    if as_json:
        click.echo(json.dumps(out, default=str))
        return
    if kind == "matrix":
        dens = "-" if out["density"] is None else f"{out['density']:.3g}"
        click.echo(f"matrix store {out['path']} ({out['format']})")
        click.echo(f"  shape:    {out['shape'][0]} x {out['shape'][1]}")
        click.echo(f"  nnz:      {out['nnz']} (density {dens})")
        click.echo(f"  dtype:    {out['dtype']}")
        click.echo(
            f"  blocks:   {out['row_blocks']} x {out['col_blocks']} (up to {out['rows_per_block']} x "
            f"{out['cols_per_block']})"
        )
        for name in ("row_ids", "col_ids"):
            ids = out[name]
            what = f"named ({ids['dtype']}), first {ids['first']}" if ids["named"] else "positions"
            click.echo(f"  {name}:  {what}")
        return
    p = out["params"]
    click.echo(f"model {out['path']} ({out['estimator']})")
    click.echo(
        f"  components: {out['n_components']}, features {out['n_features']}, samples "
        f"{out['n_samples'] if out['has_W'] else '- (W not saved)'}"
    )
    shown = ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("n_components", "verbose", "checkpoint"))
    click.echo(f"  {shown}")
    how = "converged" if out["converged"] else "stopped at max_iter"
    first = "-" if out["loss_first"] is None else f"{out['loss_first']:.6g}"
    last = "-" if out["loss_last"] is None else f"{out['loss_last']:.6g}"
    tail = "" if out["reconstruction_err"] is None else f"; reconstruction error {out['reconstruction_err']:.6g}"
    click.echo(f"  iterations: {out['n_iter']} ({how}); loss {first} -> {last}{tail}")


def _input_matrix(model, input: str, ingest_kw: dict, tmp: str):
    """INPUT as something ``model.transform`` takes, with columns in the model's order."""
    from ..storage import arrays as io

    if not guards.exists(input):
        raise FileNotFoundError(f"INPUT {input!r} does not exist.")
    if os.path.isfile(input) or (os.path.isdir(input) and not os.path.exists(os.path.join(input, "zarr.json"))):
        store = io.ingest(input, os.path.join(tmp, "input"), **ingest_kw)
    else:
        store = io.open_matrix(input)
    feature_ids = getattr(model, "feature_ids_", None)
    if feature_ids is None or store.col_ids.equals(feature_ids):
        if store.shape[1] != model.n_features_in_:
            raise ValueError(
                f"INPUT has {store.shape[1]} columns but the model has {model.n_features_in_}. "
                "Give rows over the model's columns."
            )
        return store.data, store.row_ids, 0
    X, dropped, unknown = io.align_columns(store, feature_ids)
    return X, store.row_ids, dropped


@click.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", required=True, help="Output file: .npy, .csv or .parquet.")
@click.option(
    "--output-format",
    "out_format",
    type=click.Choice(["npy", "csv", "parquet"]),
    default=None,
    help="Output format (default: from the file name). --format is INPUT's format.",
)
@o.ingest_options
@o.cluster_options
@o.output_options
def transform(
    model_path: str,
    input: str,
    output: str,
    out_format: str | None,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Compute W for the rows of INPUT with the model's H fixed.

    INPUT is a matrix store or a file to ingest (a ratings table of new
    users, say). Its columns are matched to the model's by ID; entries of
    items the model has never seen are dropped (and counted).
    """
    import tempfile

    from ..base.estimator import load
    from .cluster import connect
    from .console import setup_logging

    setup_logging(verbose, quiet)
    fmt = out_format or _format_of(output)

    guards.disjoint([("-o", output)], [("MODEL", model_path), ("INPUT", input)])
    guards.file_output(output, "-o")
    copts = o.cluster_from(kw)
    ingest_kw = o.ingest_kwargs(kw)
    model = load(model_path)
    with tempfile.TemporaryDirectory(prefix="dnmf-transform-") as tmp, connect(copts) as (client, _):
        model.set_params(client=client)
        X, row_ids, dropped = _input_matrix(model, input, ingest_kw, tmp)
        if dropped and not quiet:
            click.echo(f"warning: dropped {dropped} entries of items the model does not know", err=True)
        W = model.transform(X)
        _write_factor(output, W, row_ids, fmt)
    if log_json:
        click.echo(
            json.dumps({"event": "transformed", "output": output, "rows": int(W.shape[0]), "dropped_entries": dropped})
        )
    elif not quiet:
        click.echo(f"wrote W for {W.shape[0]} rows to {output}")


def _format_of(path: str) -> str:
    for fmt in ("npy", "csv", "parquet"):
        if path.endswith(f".{fmt}"):
            return fmt
    raise click.UsageError(
        f"Cannot tell the format of {path!r}: name it *.npy, *.csv or *.parquet, or give --output-format."
    )


def _blocks(A):
    """Row blocks of a NumPy or Dask matrix, one in memory at a time."""
    import dask.array as da
    import numpy as np

    if isinstance(A, da.Array):
        for i in range(A.numblocks[0]):
            yield np.asarray(A.blocks[i, :].compute())
    else:
        yield np.asarray(A)


def _write_factor(path: str, A, ids, fmt: str) -> None:
    import pandas as pd

    from ..storage import tables

    named = ids is not None and not isinstance(ids, pd.RangeIndex)
    row_ids = [v.item() if hasattr(v, "item") else v for v in ids] if named else None
    tables.write_table(path, _blocks(A), (int(A.shape[0]), int(A.shape[1])), format=fmt, ids=row_ids)


@click.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--format", "fmt", type=click.Choice(["npy", "csv", "parquet"]), default="npy", show_default=True)
@click.option("-o", "--output", required=True, help="Directory to write W.<format> and H.<format> into.")
def export(model_path: str, fmt: str, output: str) -> None:
    """Write a model's factors as plain files.

    \b
    npy:          W.npy (samples x k) and H.npy (k x features, components_)
    csv, parquet: W.<fmt> (one row per sample) and H.<fmt> (one row per
                  feature, i.e. H transposed), columns id, c0 .. c{k-1};
                  id holds the store's user/item IDs when the model has them
    """
    from ..base.estimator import load

    guards.disjoint([("-o", output)], [("MODEL", model_path)])
    if os.path.isfile(output):
        raise click.UsageError(f"-o {output!r} is a file; give a directory for W.{fmt} and H.{fmt}.")
    model = load(model_path)
    os.makedirs(output, exist_ok=True)
    written = []
    W = model.__dict__.get("_W")
    if W is None:
        W = model.__dict__.get("user_factors_")  # RatingsNMF
    row_ids = getattr(model, "sample_ids_", None)
    row_ids = getattr(model, "user_ids_", None) if row_ids is None else row_ids
    col_ids = getattr(model, "feature_ids_", None)
    col_ids = getattr(model, "item_ids_", None) if col_ids is None else col_ids
    if W is not None:
        path = os.path.join(output, f"W.{fmt}")
        _write_factor(path, W, row_ids, fmt)
        written.append(path)
    path = os.path.join(output, f"H.{fmt}")
    if fmt == "npy":
        _write_factor(path, model.components_, None, fmt)
    else:
        _write_factor(path, model.components_.T, col_ids, fmt)
    written.append(path)
    for p in written:
        click.echo(p)
    if W is None:
        click.echo("note: the model was saved without W; only H was written", err=True)
