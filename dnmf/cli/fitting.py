"""``dnmf fit``, ``submit``, ``status``, ``cancel``, ``resume`` and ``demo``."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import click

from . import cluster as cluster_mod
from . import guards
from . import options as o
from .console import check_interrupt
from .progress import Progress


def _check_outputs(input: str, output: str, report: str | None, job_dir: str | None, job_option: str) -> None:
    """Everything a fit will write, checked before the cluster starts and the fit runs."""

    outputs = [("-o", output), ("--report", report)]
    if job_dir is not None and "://" not in job_dir:
        outputs.append((job_option, job_dir))
        if os.path.exists(job_dir) and not os.path.isdir(job_dir):
            raise click.UsageError(f"{job_option} {job_dir!r} is a file; give a directory.")
        from ..storage import locations

        try:
            locations.check_writable_parent(os.path.join(os.path.abspath(job_dir), "job.json"))
        except OSError as exc:
            raise click.UsageError(f"{job_option}: {exc}") from None
    guards.disjoint(outputs[:2], [("INPUT", input)])
    if job_dir is not None and "://" not in job_dir:
        for option, path in (("-o", output), ("--report", report)):
            if path is not None and os.path.realpath(path) == os.path.realpath(job_dir):
                raise click.UsageError(
                    f"{option} and {job_option} are the same path {path!r}. Give them different paths."
                )
    guards.model_output(output, "-o")
    if report is not None:
        guards.file_output(report, "--report")


def _resolve_input(
    path: str, ingest_kw: dict, workdir: str | None, progress: Progress, storage_options: dict | None
) -> str:
    """A matrix store for INPUT: itself, or a store ingested from the file into ``workdir``."""
    from ..storage import arrays as io

    guards.check_input(path)
    is_file_input = os.path.isfile(path) or (
        os.path.isdir(path) and not os.path.exists(os.path.join(path, "zarr.json"))
    )
    if not is_file_input:
        return path
    if workdir is None:
        raise ValueError(
            f"INPUT {path!r} is a file to ingest, but the job directory is a URL. Ingest it "
            "first (`dnmf ingest FILE -o URL`) and give the store as INPUT."
        )
    from ..storage import jobs as job_store

    target = job_store.input_dir(workdir)
    progress.note(f"ingesting {path} -> {target}")
    t0 = time.perf_counter()
    store = io.ingest(path, target, overwrite=True, **ingest_kw)
    progress.note(
        f"ingested {store.shape[0]} x {store.shape[1]}, {store.nnz} non-zeros ({time.perf_counter() - t0:.1f} s)"
    )
    return store.path


def _summary(model, model_path: str, progress: Progress) -> None:
    state = getattr(model, "job_state_", "finished")
    hist = model.loss_history_
    loss = float(hist[-1]) if len(hist) else math.nan
    converged = bool(getattr(model, "converged_", model.n_iter_ < model.max_iter))
    err = getattr(model, "reconstruction_err_", None)
    if progress.mode == "json":
        progress.event(
            state,
            model=model_path,
            n_iter=int(model.n_iter_),
            loss=loss,
            reconstruction_err=None if err is None else float(err),
            converged=converged,
            timings=getattr(model, "job_timings_", {}),
        )
        return
    if state == "cancelled":
        click.echo(
            f"cancelled after iteration {model.n_iter_} (loss {loss:.6g}); the last "
            "checkpoint is kept: `dnmf resume` continues it"
        )
        return
    if converged:
        how = "converged"
    elif model.n_iter_ < model.max_iter:
        how = "stopped before converging: --max-time"
    else:
        how = "max_iter reached"
    tail = "" if err is None else f", reconstruction error {err:.6g}"
    click.echo(f"model saved to {model_path}: {model.n_iter_} iterations ({how}), loss {loss:.6g}{tail}")


def _run(job_dir: str | None, spec: dict | None, client, info: dict, progress: Progress):
    from . import jobs

    try:
        return jobs.run(job_dir, spec=spec, client=client, callback=progress, cluster_info=info)
    finally:
        progress.close()


@click.command()
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", "output", required=True, help="Where to save the fitted model (a directory).")
@o.model_options
@click.option(
    "--checkpoint",
    "job_dir",
    default=None,
    help="Job directory: checkpoints and the job record go there, and `dnmf resume DIR` "
    "continues the fit after a crash or a cancel.",
)
@click.option(
    "--report", default=None, help="Also write a single-file HTML report (loss curve, parameters, timings, cluster)."
)
@o.ingest_options
@o.cluster_options
@o.output_options
@o.config_option
def fit(
    input: str,
    output: str,
    job_dir: str | None,
    report: str | None,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Fit a model to INPUT and save it.

    INPUT is a matrix store (made by `dnmf ingest`) or any file `dnmf ingest`
    reads (csv, parquet, mtx, npz, npy), ingested on the fly. Without
    --scheduler the fit runs on an embedded local cluster on this machine.
    """
    from .console import setup_logging

    setup_logging(verbose, quiet)
    params = o.model_params(kw)
    _fit(input, output, job_dir, report, params, "NMF", quiet=quiet, log_json=log_json, kw=kw)


def _fit(
    input: str,
    output: str,
    job_dir: str | None,
    report: str | None,
    params: dict,
    estimator: str,
    *,
    quiet: bool,
    log_json: bool,
    kw: dict,
) -> None:
    """The foreground fit shared by `dnmf fit` and `dnmf fit-ratings`."""
    from ..storage import jobs as job_store
    from . import jobs

    copts = o.cluster_from(kw)
    ingest_kw = o.ingest_kwargs(kw)
    so = kw.pop("storage_options", None)
    progress = Progress.choose(params["max_iter"], quiet=quiet, log_json=log_json)
    if job_dir is not None and job_store.is_job_dir(job_dir, so):
        raise click.UsageError(
            f"{job_dir} already holds a job. Continue it with `dnmf resume {job_dir}`, "
            "or give another --checkpoint directory."
        )
    guards.check_input(input)
    _check_outputs(input, output, report, job_dir, "--checkpoint")
    if params.get("factor_store") is not None:
        from ..storage import factors

        try:
            factors.check_new(params["factor_store"], so, parameter="--factor-store ")
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    # The estimator and the storage layer are imported before the cluster starts (about 1 s on
    # the machines measured): a broken installation fails before any cluster exists, and the
    # cluster's time before the first iteration is the fit's own.
    importlib.import_module(jobs.ESTIMATORS[estimator][0])
    importlib.import_module("dnmf.storage.arrays")
    with contextlib.ExitStack() as stack:
        client, info = stack.enter_context(cluster_mod.session(copts, progress))
        if job_dir is not None:
            workdir = job_dir if "://" not in job_dir else None
            if workdir is not None:
                os.makedirs(workdir, exist_ok=True)
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dnmf-fit-"))
        store = _resolve_input(input, ingest_kw, workdir, progress, so)
        if job_dir is not None:
            record = jobs.create(
                job_dir,
                input=store,
                model=output,
                params=params,
                storage_options=so,
                report=report,
                state="running",
                estimator=estimator,
            )
            job_store.register(record["id"], job_dir)
            progress.note(f"job {record['id']}: checkpoints in {job_dir}")
            spec = None
        else:
            spec = {
                "input": store,
                "model": os.path.abspath(output),
                "params": params,
                "storage_options": so,
                "report": report,
                "estimator": estimator,
            }
        model = _run(job_dir, spec, client, info, progress)
    _summary(model, output, progress)


@click.command("fit-ratings")
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", "output", required=True, help="Where to save the fitted model (a directory).")
@o.ratings_options
@click.option(
    "--checkpoint",
    "job_dir",
    default=None,
    help="Job directory: checkpoints and the job record; `dnmf resume DIR` continues it.",
)
@click.option("--report", default=None, help="Also write a single-file HTML report.")
@o.ingest_options
@o.cluster_options
@o.output_options
@o.config_option
def fit_ratings(
    input: str,
    output: str,
    job_dir: str | None,
    report: str | None,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Fit a recommender (dnmf.RatingsNMF) to a ratings matrix and save it.

    \b
    --feedback explicit: only observed ratings count (missing = unknown),
        with user/item biases; predicts ratings (RMSE).
    --feedback implicit: every item counts, observed ones with confidence
        c = 1 + a * x (--confidence a; see --confidence-form); ranks top-n
        lists (precision@k) far better.
    Then: `dnmf recommend MODEL --user ID`, `dnmf recommend-all`, `dnmf evaluate`.
    """
    from .console import setup_logging

    setup_logging(verbose, quiet)
    params = o.ratings_params(kw)
    _fit(input, output, job_dir, report, params, "RatingsNMF", quiet=quiet, log_json=log_json, kw=kw)


@click.command()
@click.argument("input", metavar="INPUT")
@click.option(
    "-o", "--output", "output", required=True, help="Where the job saves the model (a path every worker can write)."
)
@o.model_options
@click.option(
    "--job-dir",
    default=None,
    help="Job directory (record, checkpoints; default: OUTPUT.job). Must be visible to the "
    "workers and to whoever runs `dnmf status`.",
)
@click.option("--report", default=None, help="Also write a single-file HTML report when the job ends.")
@o.ingest_options
@o.cluster_options
@o.output_options
@o.config_option
def submit(
    input: str,
    output: str,
    job_dir: str | None,
    report: str | None,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Start a fit that runs on the cluster itself, and return.

    The job keeps running after this command exits or loses its connection:
    its loop runs in a task on a worker. It prints the job id and the job
    directory; `dnmf status`, `dnmf cancel` and `dnmf resume` take either.
    """
    from ..storage import jobs as job_store
    from . import jobs
    from .cluster import connect
    from .console import setup_logging

    setup_logging(verbose, quiet)
    if kw.get("scheduler") is None and kw.get("scheduler_file") is None:
        raise click.UsageError(
            "dnmf submit needs a cluster: give --scheduler ADDRESS or --scheduler-file "
            "FILE (to fit on this machine, use `dnmf fit`)."
        )
    params = o.model_params(kw)
    copts = o.cluster_from(kw)
    ingest_kw = o.ingest_kwargs(kw)
    so = kw.pop("storage_options", None)
    job_dir = job_dir or f"{output.rstrip('/')}.job"
    if job_store.is_job_dir(job_dir, so):
        raise click.UsageError(
            f"{job_dir} already holds a job. Continue it with `dnmf resume {job_dir}`, or give another --job-dir."
        )
    progress = Progress.choose(params["max_iter"], quiet=quiet, log_json=log_json)
    guards.check_input(input)
    _check_outputs(input, output, report, job_dir, "--job-dir")
    local = "://" not in job_dir
    with connect(copts) as (client, link):
        # Created once the scheduler answered: an unreachable one leaves nothing behind.
        if local:
            os.makedirs(job_dir, exist_ok=True)
        store = _resolve_input(input, ingest_kw, job_dir if local else None, progress, so)
        record = jobs.create(
            job_dir, input=store, model=output, params=params, storage_options=so, report=report, state="submitted"
        )
        job_store.register(record["id"], job_dir)
        key = jobs.submit(client, job_dir)
        _wait_received(client, key)
    fields = {
        "id": record["id"],
        "job_dir": job_store.locations.normalize(job_dir),
        "model": record["spec"]["model"],
        "task": key,
        "dashboard": link,
    }
    if log_json:
        progress.event("submitted", **fields)
    else:
        click.echo(f"submitted job {record['id']}")
        click.echo(f"  job directory: {fields['job_dir']}")
        click.echo(f"  model:         {fields['model']}")
        if link:
            click.echo(f"  dashboard:     {link}")
        click.echo(f"watch it with `dnmf status {fields['job_dir']}`")


def _has_task(key, dask_scheduler=None) -> bool:
    return key in dask_scheduler.tasks


def _wait_received(client, key: str, timeout: float = 30.0) -> None:
    """Return once the scheduler holds the job's task, so closing this client cannot lose it."""
    deadline = time.monotonic() + timeout
    while not client.run_on_scheduler(_has_task, key):
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"The scheduler did not register the job's task {key} within "
                f"{timeout:g} s. Check the scheduler's logs and try again."
            )
        time.sleep(0.05)


def _job_dir(job: str) -> str:
    from ..storage import jobs as job_store

    if guards.exists(job) and ("://" in job or os.path.isdir(job)):
        return job
    found = job_store.lookup(job)
    if found is None:
        raise click.UsageError(
            f"Unknown job {job!r}: not a job directory, and no job with this id was submitted from this "
            "machine. Give the job directory printed by `dnmf submit`."
        )
    return found


def _age_seconds(iso: str | None) -> float | None:
    import datetime as dt

    if not iso:
        return None
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (dt.datetime.now(dt.UTC) - then).total_seconds()


@click.command()
@click.argument("job", metavar="JOB_OR_DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.option(
    "--storage-options",
    callback=o._storage_options,
    default=None,
    help="JSON object of fsspec options when the job directory is a URL.",
)
def status(job: str, as_json: bool, storage_options: dict | None) -> None:
    """Show a job's state, iteration, loss, elapsed time and ETA.

    Read from the job directory, so it works from any machine that sees it.
    """
    from ..storage import jobs as job_store
    from . import jobs

    job_dir = _job_dir(job)
    record = job_store.read_record(job_dir, storage_options)
    d = jobs.describe(record)
    d["job_dir"] = job_dir
    d["cancel_requested"] = job_store.cancel_requested(job_dir, storage_options)
    d["seconds_since_update"] = _age_seconds(record.get("updated"))
    if as_json:
        click.echo(json.dumps(d))
        return
    loss = "-" if d["loss"] is None else f"{d['loss']:.6g}"
    line = f"job {d['id']}: {d['state']}, iteration {d['iteration']}/{d['max_iter']}, loss {loss}"
    if d["relative_change"] is not None:
        line += f" (change {d['relative_change']:.2e})"
    line += f", elapsed {d['elapsed']:.1f} s"
    if d["eta"] is not None:
        line += f", ETA <= {d['eta']:.0f} s"
    click.echo(line)
    if d["state"] == "running" and d["cancel_requested"]:
        click.echo("  cancel requested: stopping after the next checkpoint")
    age = d["seconds_since_update"]
    if d["state"] == "running" and age is not None and age > 120:
        click.echo(
            f"  no update for {age:.0f} s: the job may have died; `dnmf resume {job_dir}` "
            "continues it from its last checkpoint"
        )
    click.echo(f"  model: {d['model']}")
    if d["error"]:
        click.echo(f"  error: {d['error']}")


@click.command()
@click.argument("job", metavar="JOB_OR_DIR")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the job has stopped (after writing a checkpoint).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=300.0, show_default=True, help="Seconds to wait with --wait."
)
@click.option(
    "--storage-options",
    callback=o._storage_options,
    default=None,
    help="JSON object of fsspec options when the job directory is a URL.",
)
def cancel(job: str, wait: bool, timeout: float, storage_options: dict | None) -> None:
    """Stop a running job cleanly: it writes a checkpoint and stops.

    `dnmf resume` continues it later from that checkpoint.
    """
    from ..storage import jobs as job_store

    job_dir = _job_dir(job)
    record = job_store.read_record(job_dir, storage_options)
    if record["state"] in ("finished", "failed", "cancelled"):
        click.echo(f"job {record['id']} is already {record['state']}")
        return
    job_store.request_cancel(job_dir, storage_options)
    if not wait:
        click.echo(f"cancel requested for job {record['id']}")
        return
    deadline = time.monotonic() + timeout
    while True:
        record = job_store.read_record(job_dir, storage_options)
        if record["state"] in ("finished", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"job {record['id']} has not stopped within {timeout:g} s "
                "(the request stays: it stops after its current iteration)"
            )
        time.sleep(0.2)
    click.echo(f"job {record['id']} {record['state']} at iteration {record['iteration']}")


@click.command()
@click.argument("job", metavar="JOB_OR_DIR")
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=None,
    help="A new iteration limit (the other parameters are the job's).",
)
@click.option(
    "--max-time", type=click.FloatRange(min=0, min_open=True), default=None, help="A new time limit in seconds."
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run it on the cluster (--scheduler) as a job that outlives this command, like `dnmf submit`.",
)
@o.cluster_options
@o.output_options
def resume(
    job: str,
    max_iter: int | None,
    max_time: float | None,
    detach: bool,
    quiet: bool,
    verbose: bool,
    log_json: bool,
    **kw: Any,
) -> None:
    """Continue a stopped, cancelled or failed job from its last checkpoint.

    Runs here (an embedded cluster, or --scheduler) until the job ends, or on
    the cluster with --detach. The result is the model an uninterrupted run
    would have produced.
    """
    from ..storage import jobs as job_store
    from . import jobs
    from .cluster import connect
    from .console import setup_logging

    setup_logging(verbose, quiet)
    job_dir = _job_dir(job)
    record = job_store.read_record(job_dir)
    if record["state"] == "finished" and max_iter is None:
        click.echo(f"job {record['id']} already finished: model {record['spec']['model']}")
        return
    if record["state"] in ("running", "submitted"):
        age = _age_seconds(record.get("updated"))
        if age is not None and age < 30:
            raise click.UsageError(
                f"job {record['id']} is {record['state']} (updated {age:.0f} s ago). Cancel it first "
                f"(`dnmf cancel {job}`), or wait until it stops."
            )
    if max_iter is not None:
        _check_resume_limit(job, job_dir, record, max_iter)
    copts = o.cluster_from(kw)
    for name, value in (("max_iter", max_iter), ("max_time", max_time)):
        if value is not None:
            record["spec"]["params"][name] = value
    if max_iter is not None:
        record["max_iter"] = max_iter
    job_store.clear_cancel(job_dir)
    record["state"] = "submitted"
    job_store.write_record(job_dir, record)
    if detach:
        if copts.scheduler is None and copts.scheduler_file is None:
            raise click.UsageError("--detach runs the job on a cluster: give --scheduler or --scheduler-file.")
        with connect(copts) as (client, _):
            key = jobs.submit(client, job_dir)
            _wait_received(client, key)
        click.echo(f"resumed job {record['id']} on the cluster; watch it with `dnmf status {job_dir}`")
        return
    progress = Progress.choose(int(record["max_iter"]), quiet=quiet, log_json=log_json)
    with cluster_mod.session(copts, progress) as (client, info):
        model = _run(job_dir, None, client, info, progress)
    _summary(model, record["spec"]["model"], progress)


def _check_resume_limit(job: str, job_dir: str, record: dict, max_iter: int) -> None:
    """Refuse a --max-iter below the iteration the job's checkpoint is at (before the record changes)."""
    from ..storage import checkpoints as ckpt_store
    from ..storage import jobs as job_store

    so = record["spec"].get("storage_options")
    ckpt = job_store.checkpoints_dir(job_dir)
    if not ckpt_store.exists(ckpt, so):
        return
    done = int(ckpt_store.read_latest(ckpt, so).state.get("state", {}).get("iteration", 0))
    if done > max_iter:
        raise click.BadParameter(
            f"{max_iter} is below the iteration the job's last checkpoint is at ({done}): "
            f"give --max-iter {done} or more (`dnmf resume {job} --max-iter {done}` saves that model).",
            param_hint="'--max-iter'",
        )


@click.command()
@click.option("--rows", type=click.IntRange(min=2), default=50_000, show_default=True)
@click.option("--cols", type=click.IntRange(min=2), default=5_000, show_default=True)
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.002, show_default=True)
@click.option("-k", "--n-components", "k", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--solver", type=click.Choice(["cd", "mu", "anls-bpp"]), default="cd", show_default=True)
@click.option("--max-iter", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--report",
    "report",
    default="dnmf-demo.html",
    show_default=True,
    help="Where to write the fit's HTML report (replaced if it exists).",
)
@o.cluster_options
def demo(
    rows: int, cols: int, density: float, k: int, solver: str, max_iter: int, seed: int, report: str, **kw: Any
) -> None:
    """Factorize a generated sparse matrix on the embedded cluster (the README's first command).

    Prints the loss of every iteration and the final relative error
    ||X - WH||_F / ||X||_F (about 0.04: the planted noise), writes the HTML
    report and prints its path. In a terminal the cluster and its dashboard
    stay up until Enter is pressed, so the dashboard link can be opened.
    """
    import numpy as np

    from ..nmf.estimator import NMF
    from .cluster import connect
    from .console import setup_logging
    from .demo import planted_sparse

    setup_logging(False, True)
    copts = o.cluster_from(kw)
    t0 = time.perf_counter()
    X = planted_sparse(rows, cols, density, k, seed)
    click.echo(f"X: {X.shape[0]} x {X.shape[1]}, {X.nnz} non-zeros ({time.perf_counter() - t0:.1f} s to generate)")
    embedded = copts.scheduler is None and copts.scheduler_file is None
    with cluster_mod._blas_limit(embedded and not copts.processes), connect(copts) as (client, link):
        info = cluster_mod.cluster_info(client, link, embedded)
        click.echo(
            f"cluster: {info.get('workers')} worker(s), {info.get('threads')} thread(s), dashboard {link or 'none'}"
        )
        model = NMF(k, solver=solver, init="nndsvda", max_iter=max_iter, tol=1e-4, random_state=seed, client=client)

        def show(iteration: int, elapsed: float, loss: float) -> None:
            check_interrupt()
            click.echo(f"iteration {iteration:4d}  loss {loss:.6g}  ({elapsed:.2f} s)")

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_fit = time.perf_counter()
            model.fit(X, callback=show)
            t_fit = time.perf_counter() - t_fit
        rel = model.reconstruction_err_ / np.sqrt((X.data.astype(np.float64) ** 2).sum())
        click.echo(f"done: {model.n_iter_} iterations, relative error {rel:.4f}")
        from .report import write_report

        write_report(report, model, timings={"fit": t_fit}, cluster=info, title="dnmf demo")
        click.echo(f"report: {os.path.abspath(report)}")
        if link and sys.stdin.isatty() and sys.stdout.isatty():
            click.echo(f"the dashboard stays up at {link}: press Enter to stop")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()


def _ks(ctx, param, value: str):
    try:
        if ":" in value:  # start:stop[:step], stop inclusive
            parts = [int(p) for p in value.split(":")]
            start, stop, step = (parts + [1])[:3]
            ks = list(range(start, stop + 1, step))
        else:
            ks = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give ranks as 2,4,8 or a range 2:12[:2].") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{value!r}: give at least one rank, every rank >= 1.")
    return ks


@click.command("select-rank")
@click.argument("input", metavar="INPUT")
@click.option("--ks", required=True, callback=_ks, help="Candidate ranks: 2,4,8 or a range 2:12[:2].")
@click.option(
    "--method",
    type=click.Choice(["cv", "consensus"]),
    default="cv",
    show_default=True,
    help="cv: error on held-out entries; consensus: stability over restarts (cophenetic).",
)
@click.option("--repeats", "n_repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--holdout", type=click.FloatRange(0, 0.5, min_open=True), default=0.1, show_default=True)
@click.option("--solver", type=click.Choice(["anls-bpp", "cd", "mu"]), default="anls-bpp", show_default=True)
@click.option("--max-iter", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--early-stopping",
    default="0.0001",
    show_default=True,
    callback=o.none_or_fraction,
    help="cv: stop a fit once an iteration improves its held-out error by less than this fraction "
    "('none': fit to --max-iter and score the last iterate, as before).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--plot", default=None, help="Also save the error-vs-k curve as a PNG (matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@o.ingest_options
@o.cluster_options
@o.config_option
def select_rank(
    input: str,
    ks: list[int],
    method: str,
    n_repeats: int,
    holdout: float,
    solver: str,
    max_iter: int,
    early_stopping: float | None,
    seed: int,
    plot: str | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Choose the number of components k for INPUT (a store or a file to ingest)."""
    from ..nmf.selection import select_rank as select
    from ..storage import arrays as io
    from .console import setup_logging

    setup_logging(False, True)
    copts = o.cluster_from(kw)
    ingest_kw = o.ingest_kwargs(kw)
    guards.check_input(input)
    with (
        tempfile.TemporaryDirectory(prefix="dnmf-rank-") as tmp,
        cluster_mod.session(copts, Progress(0, "quiet")) as (client, _),
    ):
        store = io.open_matrix(_resolve_input(input, ingest_kw, tmp, Progress(0, "quiet"), None))
        result = select(
            store.data,
            ks,
            method=method,
            n_repeats=n_repeats,
            holdout=holdout,
            random_state=seed,
            solver=solver,
            max_iter=max_iter,
            early_stopping=early_stopping,
            client=client,
        )
    if plot:
        from ..plot import rank_curve

        rank_curve(result, path=plot)
    rows = [
        {"k": int(k), "mean": float(m), "std": float(s)}
        for k, m, s in zip(result.ks, result.mean, result.std, strict=True)
    ]
    if as_json:
        click.echo(json.dumps({"method": method, "chosen_k": int(result.chosen_k), "scores": rows}))
        return
    what = "held-out relative error" if method == "cv" else "cophenetic correlation"
    click.echo(f"{'k':>4}  {what}")
    for r in rows:
        mark = "  <- chosen" if r["k"] == result.chosen_k else ""
        click.echo(f"{r['k']:>4}  {r['mean']:.4f} ± {r['std']:.4f}{mark}")
    click.echo(f"chosen k = {result.chosen_k}")
