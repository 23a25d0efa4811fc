"""Fit jobs: a fit described by a JSON record, runnable here or on the cluster itself.

A job is what ``dnmf fit --checkpoint DIR`` and ``dnmf submit`` create: a
directory (:mod:`dnmf.storage.jobs`) holding the job's specification (input
store, model path, estimator parameters), its progress and its checkpoints.
:func:`run` executes it in any process with a Dask client: the command line's
own process, or a task on a worker (:func:`submit`), where the loop keeps
running after the submitting process has gone. Whatever runs it, the record
is the one place its state is read from (``dnmf status``), and a request to
stop is a file next to it (``dnmf cancel``), checked after every iteration.

A job always continues from its last checkpoint when one exists, so running
it again (``dnmf resume``, or Dask rescheduling the task after its worker
died) finishes it with the factors an undisturbed run would have produced.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..storage import jobs as store
from ..storage import locations

logger = logging.getLogger("dnmf")

#: How often a running job rewrites its record (seconds); state changes are written at once.
RECORD_EVERY = 1.0
#: How often a job on an object store looks for a cancel request (seconds; every iteration locally).
CANCEL_POLL_URL = 2.0

Callback = Callable[[int, float, float], Any]


def new_job_id() -> str:
    """A short, sortable, unique job id: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


#: The estimators a job can fit, by the name its record stores.
ESTIMATORS = {"NMF": ("dnmf.nmf.estimator", "NMF"), "RatingsNMF": ("dnmf.masked.estimator", "RatingsNMF")}


def _estimator(name: str):
    import importlib

    if name not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {name!r} in the job record; known: {', '.join(ESTIMATORS)}.")
    module, attr = ESTIMATORS[name]
    return getattr(importlib.import_module(module), attr)


def create(
    job_dir: str,
    *,
    input: str,
    model: str,
    params: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    report: str | None = None,
    state: str = "submitted",
    job_id: str | None = None,
    estimator: str = "NMF",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a new job record into ``job_dir`` and return it.

    Parameters
    ----------
    job_dir : str
        Local path or fsspec URL; created if needed.
    input : str
        The matrix store to factorize (path or URL every worker can read).
    model : str
        Where the fitted model is saved when the job finishes.
    params : mapping
        The estimator's parameters (JSON values; no ``client``/``checkpoint``).
    estimator : {"NMF", "RatingsNMF"}
        :class:`dnmf.NMF`, or :class:`dnmf.RatingsNMF` (masked / implicit).
    """
    _estimator(estimator)
    job_dir = locations.normalize(job_dir)
    record = {
        "id": job_id or new_job_id(),
        "state": state,
        "created": _now(),
        "updated": _now(),
        "spec": {
            "input": locations.normalize(input),
            "model": locations.normalize(model),
            "estimator": estimator,
            "params": dict(params),
            "storage_options": dict(storage_options) if storage_options else None,
            "report": locations.normalize(report) if report else None,
        },
        "iteration": 0,
        "max_iter": int(params.get("max_iter", 200)),
        "loss": None,
        "elapsed": 0.0,
        "history": [],
        "error": None,
        **dict(extra or {}),
    }
    store.write_record(job_dir, record, storage_options)
    return record


def _job_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(spec["params"])
    for name in ("client", "checkpoint", "storage_options"):
        params.pop(name, None)
    return params


class _Progress:
    """The callback a job runs after every iteration: record, cancel check, caller's callback."""

    def __init__(self, job_dir: str | None, record: dict | None, storage_options, callback):
        self.job_dir = job_dir
        self.record = record
        self.storage_options = storage_options
        self.callback = callback
        self.cancelled = False
        self._last_write = 0.0
        self._last_poll = 0.0
        self._remote = job_dir is not None and locations.is_url(job_dir)

    def __call__(self, iteration: int, elapsed: float, loss: float):
        keep_going = True
        if self.callback is not None and self.callback(iteration, elapsed, loss) is False:
            keep_going = False
        if self.job_dir is None:
            return keep_going
        rec = self.record
        rec["iteration"], rec["elapsed"] = int(iteration), float(elapsed)
        rec["loss"] = float(loss)
        # Resumed fits report the iterations they replay from the checkpoint's history
        # only once: keep the history aligned with iteration numbers.
        del rec["history"][iteration - 1 :]
        rec["history"].append(float(loss))
        now = time.monotonic()
        if now - self._last_write >= RECORD_EVERY:
            rec["updated"] = _now()
            store.write_record(self.job_dir, rec, self.storage_options)
            self._last_write = now
        if not self._remote or now - self._last_poll >= CANCEL_POLL_URL:
            self._last_poll = now
            if store.cancel_requested(self.job_dir, self.storage_options):
                self.cancelled = True
                logger.info("job %s: cancel requested; stopping after a checkpoint", rec["id"])
                keep_going = False
        return keep_going


def run(
    job_dir: str | None,
    *,
    spec: Mapping[str, Any] | None = None,
    client=None,
    callback: Callback | None = None,
    cluster_info: Mapping[str, Any] | None = None,
):
    """Run (or continue) a job and return the fitted estimator.

    Parameters
    ----------
    job_dir : str or None
        The job's directory: its record is updated as the fit goes, its
        checkpoints live in ``job_dir/checkpoints`` and the fit continues from
        the last one if any. None runs ``spec`` with no record and no
        checkpoints.
    spec : mapping, optional
        The specification when ``job_dir`` is None (same keys as the record's).
    client : distributed.Client, optional
        Where the fit runs.
    callback : callable, optional
        ``callback(iteration, elapsed, loss)``; returning False stops the fit.
    cluster_info : mapping, optional
        Recorded in the job record and the report (scheduler, workers, dashboard).

    Returns
    -------
    model : dnmf.NMF or dnmf.RatingsNMF
        Fitted; ``model.job_state_`` is "finished" or "cancelled".
    """
    from ..storage import arrays as io

    so = None
    record = None
    if job_dir is not None:
        job_dir = locations.normalize(job_dir)
        record = store.read_record(job_dir)
        so = record["spec"].get("storage_options")
        spec = record["spec"]
    elif spec is None:
        raise ValueError("run() needs a job directory or a spec.")
    so = so or spec.get("storage_options")
    timings: dict[str, float] = {}
    progress = _Progress(job_dir, record, so, callback)
    ckpt = store.checkpoints_dir(job_dir) if job_dir is not None else None

    def mark(state: str, **fields) -> None:
        if record is None:
            return
        record.update(fields, state=state, updated=_now())
        store.write_record(job_dir, record, so)

    try:
        mark(
            "running",
            started=(record or {}).get("started") or _now(),
            host=socket.gethostname(),
            pid=os.getpid(),
            error=None,
            cluster=dict(cluster_info) if cluster_info else (record or {}).get("cluster"),
        )
        t0 = time.perf_counter()
        X = io.open_matrix(spec["input"], storage_options=so)
        timings["open input"] = time.perf_counter() - t0
        Estimator = _estimator(spec.get("estimator", "NMF"))
        model = Estimator(**_job_params(spec), client=client, checkpoint=ckpt, storage_options=so)
        from ..storage import checkpoints as ckpt_store

        resume = ckpt if ckpt is not None and ckpt_store.exists(ckpt, so) else None
        if resume is not None:
            logger.info("continuing from the last checkpoint in %s", ckpt)
        t0 = time.perf_counter()
        model.fit(X, callback=progress, resume=resume)
        timings["fit"] = time.perf_counter() - t0
        model.job_timings_ = timings
        if progress.cancelled:
            model.job_state_ = "cancelled"
            mark("cancelled", iteration=int(model.n_iter_), loss=_last(model))
            return model
        t0 = time.perf_counter()
        model.save(spec["model"])
        timings["save"] = time.perf_counter() - t0
        if spec.get("report"):
            _write_report(spec["report"], model, timings, cluster_info)
        model.job_state_ = "finished"
        mark(
            "finished",
            iteration=int(model.n_iter_),
            loss=_last(model),
            history=[float(v) for v in model.loss_history_],
            reconstruction_err=_float(getattr(model, "reconstruction_err_", None)),
            converged=bool(getattr(model, "converged_", model.n_iter_ < model.max_iter)),
            timings=timings,
            finished=_now(),
        )
        return model
    except BaseException as exc:
        if record is not None:
            # Ctrl-C is a stop asked for, like `dnmf cancel` (the last checkpoint stays).
            state = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                mark(state, error=f"{type(exc).__name__}: {exc}", failed=_now())
            except Exception:  # the record's storage may be what failed
                logger.exception("could not record the failure of job %s", record.get("id"))
        raise


def _float(v) -> float | None:
    return None if v is None else float(v)


def _last(model) -> float | None:
    hist = getattr(model, "loss_history_", None)
    return float(hist[-1]) if hist is not None and len(hist) else None


def _write_report(path: str, model, timings, cluster_info) -> None:
    from .report import write_report

    write_report(path, model, timings=dict(timings), cluster=dict(cluster_info or {}))


def _run_on_worker(job_dir: str) -> str:
    """The submitted task: run the job from a seceded worker thread."""
    from distributed import get_worker, worker_client

    worker = get_worker()
    info = {"scheduler": worker.scheduler.address, "runs_on": worker.address}
    # worker_client secedes this thread from the worker's pool, so the job's
    # own tasks can use every thread while the loop waits on them.
    with worker_client() as client:
        model = run(job_dir, client=client, cluster_info=info)
    return model.job_state_


def submit(client, job_dir: str) -> str:
    """Start job ``job_dir`` as a task on ``client``'s cluster and return its task key.

    The task is fire-and-forget: it keeps running when this client closes or
    its process exits. If its worker dies, the scheduler runs it again on
    another worker, and the job continues from its last checkpoint.
    """
    from distributed import fire_and_forget

    record = store.read_record(job_dir)
    key = f"dnmf-job-{record['id']}"
    future = client.submit(_run_on_worker, locations.normalize(job_dir), key=key, pure=False)
    fire_and_forget(future)
    return key


def describe(record: Mapping[str, Any]) -> dict[str, Any]:
    """A status summary of a job record: state, iteration, loss, elapsed, ETA."""
    it, max_iter = int(record.get("iteration") or 0), int(record.get("max_iter") or 0)
    elapsed = float(record.get("elapsed") or 0.0)
    eta = None
    if record.get("state") == "running" and it > 0 and max_iter > it:
        eta = elapsed / it * (max_iter - it)  # at most: tol may stop it earlier
    hist = record.get("history") or []
    rel = None
    if len(hist) >= 2 and hist[-2]:
        rel = (hist[-2] - hist[-1]) / hist[-2]
    loss = record.get("loss")
    return {
        "id": record.get("id"),
        "state": record.get("state"),
        "iteration": it,
        "max_iter": max_iter,
        "loss": loss if loss is None or math.isfinite(loss) else None,
        "relative_change": rel,
        "elapsed": elapsed,
        "eta": eta,
        "updated": record.get("updated"),
        "model": record.get("spec", {}).get("model"),
        "input": record.get("spec", {}).get("input"),
        "error": record.get("error"),
    }
