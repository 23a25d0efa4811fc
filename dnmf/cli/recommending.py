"""``dnmf split``, ``recommend``, ``recommend-all`` and ``evaluate``.

They take a model saved by ``dnmf fit-ratings`` (:class:`dnmf.RatingsNMF`)
or by ``dnmf fit`` (:class:`dnmf.NMF` with its W: plain NMF, missing entries
fitted as zeros). User and item IDs are the ones of the store the model was
fitted on.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import click
import numpy as np

from . import guards
from . import options as o
from .cluster import session as cluster_session


def _ids_like(values: tuple[str, ...], index) -> list:
    """Command-line IDs (text) as the model's ID type (integers when its IDs are)."""
    kind = getattr(getattr(index, "dtype", None), "kind", "O")
    if kind in "iu":
        try:
            return [int(v) for v in values]
        except ValueError:
            raise click.BadParameter(
                f"the model's user IDs are integers; got {list(values)!r}.", param_hint="'--user'"
            ) from None
    return list(values)


def _load(path: str):
    from ..base.estimator import load

    return load(path)


def _nmf_factors(model):
    """Factors of a plain dnmf.NMF model (with its user IDs when fitted from a store)."""
    from ..recommend.factors import Factors

    return Factors.from_model(model)


def _store_matrix(path: str, row_ids, col_ids, tmp: str, ingest_kw: dict):
    """A store or ratings file in the model's (rows, columns) order, matched by ID, as a CSR matrix.

    Returns (matrix, dropped entries of unknown users/items, stored entries kept).
    """
    import pandas as pd
    import scipy.sparse as sp

    from ..storage import arrays as io

    guards.check_input(path)
    if os.path.isfile(path):
        store = io.ingest(path, os.path.join(tmp, os.path.basename(path) + ".zarr"), **ingest_kw)
    else:
        store = io.open_matrix(path)
    X, _, _ = io.align_columns(store, pd.Index(col_ids) if col_ids is not None else store.col_ids)
    X = X.tocoo()
    if row_ids is None:
        rows = np.arange(store.shape[0])
    else:
        rows = pd.Index(row_ids).get_indexer(store.row_ids)
    keep = rows[X.row] >= 0
    n_rows = len(row_ids) if row_ids is not None else store.shape[0]
    out = sp.csr_matrix((X.data[keep], (rows[X.row[keep]], X.col[keep])), shape=(n_rows, X.shape[1]))
    total = store.nnz if store.nnz is not None else X.nnz
    return out, int(total - out.nnz), int(out.nnz)


def _open_store(path: str, scratch: str, ingest_kw: dict):
    """The matrix store at ``path``, or the ratings file at ``path`` ingested into ``scratch``."""
    from ..storage import arrays as io

    guards.check_input(path)
    if os.path.isfile(path):
        return io.ingest(path, scratch, **ingest_kw)
    return io.open_matrix(path)


def _stored_entries(store) -> int:
    """Stored entries of a matrix store (non-zeros of a dense one)."""
    if store.nnz is not None:
        return int(store.nnz)
    import dask.array as da

    return int(da.count_nonzero(store.data).compute())


@click.command()
@click.argument("input", metavar="INPUT")
@click.option("--train", "train_out", required=True, help="The training store to write.")
@click.option("--test", "test_out", required=True, help="The test store to write.")
@click.option(
    "--method",
    type=click.Choice(["random", "leave_k_out"]),
    default="random",
    show_default=True,
    help="random: each rating goes to test with probability --test-size; leave_k_out: --k "
    "ratings of every user with more than k.",
)
@click.option("--test-size", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--k", "k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing stores.")
@o.ingest_options
def split(
    input: str,
    train_out: str,
    test_out: str,
    method: str,
    test_size: float,
    k: int,
    seed: int,
    overwrite: bool,
    **kw: Any,
) -> None:
    """Split the ratings of INPUT (a store or a file to ingest) into train and test stores.

    Both stores keep INPUT's user and item IDs, so a model fitted on the
    training store can be evaluated on the test store directly.
    """
    from ..recommend.evaluation import train_test_split
    from ..storage import arrays as io

    guards.check_input(input)
    guards.disjoint([("--train", train_out), ("--test", test_out)], [("INPUT", input)])
    guards.store_output(train_out, "--train", overwrite=overwrite)
    guards.store_output(test_out, "--test", overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="dnmf-split-") as tmp:
        if os.path.isfile(input):
            store = io.ingest(input, os.path.join(tmp, "input.zarr"), **o.ingest_kwargs(kw))
        else:
            store = io.open_matrix(input)
        train, test = train_test_split(store, method=method, test_size=test_size, k=k, random_state=seed)
        chunks = (store.chunks[0], (store.shape[1],))
        for X, path in ((train, train_out), (test, test_out)):
            io.write_matrix(X, path, chunks=chunks, row_ids=store.row_ids, col_ids=store.col_ids, overwrite=overwrite)
    n_train = io.open_matrix(train_out).nnz
    n_test = io.open_matrix(test_out).nnz
    click.echo(f"train {train_out}: {n_train} ratings; test {test_out}: {n_test} ratings")


@click.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--user", "users", multiple=True, required=True, help="A user ID (repeat for several).")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--exclude-seen",
    default=None,
    metavar="STORE",
    help="Leave out the items each user rated in STORE (default for dnmf fit-ratings models: their training ratings).",
)
@click.option("--include-seen", is_flag=True, help="Do not leave out rated items.")
@click.option(
    "--cold-start",
    type=click.Choice(["raise", "drop", "nan", "popular"]),
    default="raise",
    show_default=True,
    help="Unknown users: an error, left out, NaN scores, or the most popular items.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per recommendation.")
def recommend(
    model_path: str,
    users: tuple[str, ...],
    n: int,
    exclude_seen: str | None,
    include_seen: bool,
    cold_start: str,
    as_json: bool,
) -> None:
    """Top-n items for one or more users of a saved model."""
    model = _load(model_path)
    if type(model).__name__ == "RatingsNMF":
        ids = _ids_like(users, model.user_ids_)
        exclude = _ratings_exclude(model, exclude_seen, include_seen)
        frame = model.recommend(ids, n=n, exclude_seen=exclude, cold_start=cold_start)
    else:
        frame = _recommend_nmf(model, users, n, None if include_seen else exclude_seen, cold_start)
    if as_json:
        for rec in frame.to_dict(orient="records"):
            click.echo(json.dumps(rec, default=str))
        return
    click.echo(frame.to_string(index=False))


def _ratings_exclude(model, exclude_seen: str | None, include_seen: bool) -> Any:
    """What a RatingsNMF model leaves out: nothing, the store the user named, the ratings saved
    in the model, or the training store the model recorded, once it is checked to be that store."""
    from ..recommend.factors import recorded_training_store

    if include_seen:
        return False
    if exclude_seen:
        return exclude_seen
    if model.__dict__.get("_seen") is not None:
        return True
    recorded = model.__dict__.get("_train_store")
    if not recorded:
        raise click.UsageError(
            "The model holds no training ratings to leave out. Name them with --exclude-seen STORE, or "
            "pass --include-seen."
        )
    try:
        path = recorded_training_store(
            recorded, user_ids=model.user_ids_, item_ids=model.item_ids_, item_counts=model.item_counts_
        )
    except ValueError as exc:
        raise click.UsageError(
            str(exc)
            .replace("(--exclude-seen STORE / exclude_seen=PATH)", "with --exclude-seen STORE")
            .replace("do not leave out seen items", "pass --include-seen")
        ) from None
    from ..storage import arrays as io

    return io.open_matrix(path).data


def _recommend_nmf(model, users, n, exclude_path, cold_start):
    import pandas as pd

    from ..recommend import factors as rec

    factors = _nmf_factors(model)
    if factors.row_ids is None:
        raise click.UsageError(
            "This model has no user IDs (it was not fitted from a store with ID maps); "
            "fit it from a store made by `dnmf ingest`."
        )
    if cold_start not in ("raise", "drop"):
        raise click.UsageError("--cold-start nan/popular needs a dnmf fit-ratings model; use raise or drop.")
    ids = _ids_like(users, factors.row_ids)
    pos = factors.row_index(ids, strict=cold_start == "raise")
    known = pos >= 0
    rows = pos[known]
    exclude = None
    if exclude_path is not None:
        with tempfile.TemporaryDirectory() as tmp:
            seen, _, _ = _store_matrix(exclude_path, factors.row_ids, factors.col_ids, tmp, {})
        exclude = seen[rows]
    idx, scores = rec.recommend(factors, rows, n=n, exclude=exclude)
    item_ids = factors.col_ids if factors.col_ids is not None else pd.RangeIndex(factors.n_items)
    out = []
    for t, user in enumerate(np.asarray(ids, dtype=object)[known]):
        valid = idx[t] >= 0
        for r, (j, s) in enumerate(zip(idx[t][valid], scores[t][valid], strict=True)):
            out.append((user, r + 1, item_ids[int(j)], float(s)))
    return pd.DataFrame(out, columns=["user", "rank", "item", "score"])


@click.command("recommend-all")
@click.argument("model_path", metavar="MODEL")
@click.option("-o", "--output", required=True, help="Output table: .parquet or .csv (user, rank, item, score).")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--exclude-seen",
    default=None,
    metavar="STORE",
    help="Leave out the items each user rated in STORE (default for dnmf fit-ratings models: their training ratings).",
)
@click.option("--include-seen", is_flag=True, help="Do not leave out rated items.")
@o.cluster_options
@o.output_options
def recommend_all(
    model_path: str,
    output: str,
    n: int,
    exclude_seen: str | None,
    include_seen: bool,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Top-n items for every user, computed block-wise on the cluster.

    No worker ever holds the full W·H: each task scores one block of users
    against one block of items and keeps its top n; the lists are merged
    in a tree. The table is written one block of users at a time.
    """
    from ..recommend import factors as rec
    from ..storage import arrays as io
    from ..storage import tables
    from .console import setup_logging
    from .progress import Progress

    setup_logging(verbose, quiet)
    fmt = "parquet" if output.endswith(".parquet") else "csv" if output.endswith(".csv") else None
    if fmt is None:
        raise click.UsageError(f"Cannot tell the format of {output!r}: name it *.parquet or *.csv.")

    guards.disjoint([("-o", output)], [("MODEL", model_path), ("--exclude-seen", exclude_seen)])
    guards.file_output(output, "-o")
    copts = o.cluster_from(kw)
    model = _load(model_path)
    progress = Progress(0, "quiet" if quiet or log_json else "lines")
    with cluster_session(copts, progress) as (client, _):
        if type(model).__name__ == "RatingsNMF":
            model.set_params(client=client)
            exclude = _ratings_exclude(model, exclude_seen, include_seen)
            user_ids, items, scores = model.recommend_all(n, exclude_seen=exclude)
        else:
            factors = _nmf_factors(model)
            ex = None
            if exclude_seen is not None and not include_seen:
                ex = io.open_matrix(exclude_seen).data
            items, scores = rec.recommend_all(factors, n, exclude=ex, client=client)
            if factors.col_ids is not None:
                ids = np.asarray(factors.col_ids)
                items = items.map_blocks(_item_ids, ids, dtype=ids.dtype if ids.dtype.kind in "iu" else object)
            user_ids = factors.row_ids
        rows = tables.write_ranked(output, _ranked_blocks(user_ids, items, scores), format=fmt)
    if log_json:
        click.echo(json.dumps({"event": "recommend-all", "output": output, "rows": rows}))
    elif not quiet:
        click.echo(f"wrote {rows} recommendations to {output}")


def _item_ids(block: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Item positions to IDs (padding, -1, stays -1 or becomes None)."""
    out = ids[np.maximum(block, 0)].astype(ids.dtype if ids.dtype.kind in "iu" else object)
    out[block < 0] = -1 if ids.dtype.kind in "iu" else None
    return out


def _ranked_blocks(user_ids, items, scores):
    """(users, rank, item, score) columns, one block of users at a time."""
    import dask

    start = 0
    for i in range(items.numblocks[0]):
        it, sc = dask.compute(items.blocks[i, :], scores.blocks[i, :])
        it, sc = np.asarray(it), np.asarray(sc)
        u = it.shape[0]
        users = (
            np.asarray(user_ids[start : start + u], dtype=object)
            if user_ids is not None
            else np.arange(start, start + u)
        )
        start += u
        valid = np.isfinite(sc)
        r = np.broadcast_to(np.arange(1, it.shape[1] + 1), it.shape)
        yield {
            "user": np.repeat(users, it.shape[1]).reshape(it.shape)[valid],
            "rank": r[valid],
            "item": it[valid],
            "score": sc[valid],
        }


@click.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--test", "test_path", required=True, help="Held-out ratings: a store or a ratings file.")
@click.option(
    "--train",
    "train_path",
    default=None,
    help="Training ratings to leave out of the top-k lists (exclude-seen): a store or file.",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Cutoff of precision@k, recall@k, NDCG@k, MAP@k.",
)
@click.option(
    "--metrics",
    default=None,
    help="Comma-separated subset of rmse,mae,precision,recall,ndcg,map,coverage (default all).",
)
@click.option("--threshold", type=float, default=None, help="Minimum test rating of a relevant item.")
@click.option(
    "--unknown",
    type=click.Choice(["raise", "baseline", "nan"]),
    default="nan",
    show_default=True,
    help="Test ratings of users or items the model does not know: an error; scored with the global mean "
    "plus the known side's bias (RMSE and MAE over all ratings); or left out of RMSE and MAE (the "
    "default, as before this option existed). The count is printed (n_unknown).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@o.ingest_options
def evaluate(
    model_path: str,
    test_path: str,
    train_path: str | None,
    k: int,
    metrics: str | None,
    threshold: float | None,
    unknown: str,
    as_json: bool,
    **kw: Any,
) -> None:
    """Accuracy of a saved model on held-out ratings: RMSE, MAE and ranking metrics at k.

    Test (and train) entries are matched to the model's users and items by
    ID. Test ratings of users or items the model does not know are an error
    unless --unknown says what to do with them (baseline or nan); ranking
    metrics count the known users and items only. Training ratings of
    unknown users or items are ignored.
    """
    from ..recommend.evaluation import evaluate as run_evaluate

    model = _load(model_path)
    target = model if type(model).__name__ == "RatingsNMF" else _nmf_factors(model)
    ingest_kw = o.ingest_kwargs(kw)
    with tempfile.TemporaryDirectory(prefix="dnmf-eval-") as tmp:
        test = _open_store(test_path, os.path.join(tmp, "test.zarr"), ingest_kw)
        train = None
        if train_path is not None:
            train = _open_store(train_path, os.path.join(tmp, "train.zarr"), ingest_kw)
        names = [m.strip() for m in metrics.split(",")] if metrics else None
        result = run_evaluate(target, test, train=train, k=k, metrics=names, threshold=threshold, unknown=unknown)
        n_total = _stored_entries(test)
    result = {name: (int(v) if name in ("n_users", "n_unknown") else float(v)) for name, v in result.items()}
    n_unknown = result.setdefault("n_unknown", 0)
    dropped = n_unknown if unknown == "nan" else 0
    result["test_entries"] = n_total - dropped
    result["dropped_test_entries"] = dropped
    if as_json:
        click.echo(json.dumps(result))
        return
    for name, value in result.items():
        label = f"{name}@{k}" if name in ("precision", "recall", "ndcg", "map") else name
        click.echo(f"{label:>22}  {value:.4f}" if isinstance(value, float) else f"{label:>22}  {value}")
