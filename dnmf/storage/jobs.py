"""Job directories: the record of a fit that any machine seeing the directory can read.

Layout of a job directory (a local path or an fsspec URL)::

    job.json          the record: id, state, the job's specification, progress
    CANCEL            present when someone asked the job to stop
    checkpoints/      the fit's checkpoints (see :mod:`dnmf.storage.checkpoints`)
    input/            the matrix store, when the input was ingested for the job

The running job is the only writer of ``job.json`` and replaces it whole
(``os.replace`` locally, one PUT on object stores), so a reader sees either
the previous record or the new one. Requests from other processes go in
their own files (``CANCEL``), never into the record, so there is no
read-modify-write race between the job and a user.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from . import locations
from .errors import StoreError

JOB_FORMAT = "dnmf-job"
JOB_VERSION = 1
RECORD = "job.json"
CANCEL = "CANCEL"
CHECKPOINTS = "checkpoints"
INPUT = "input"


def is_job_dir(job_dir: str, storage_options: locations.StorageOptions = None) -> bool:
    """Whether ``job_dir`` holds a job record."""
    return locations.is_file(locations.join(job_dir, RECORD), storage_options)


def write_record(job_dir: str, record: dict[str, Any], storage_options: locations.StorageOptions = None) -> None:
    """Replace the job record in one step (JSON only; fails loudly otherwise)."""
    body = dict(record, dnmf_format=JOB_FORMAT, version=JOB_VERSION)
    data = json.dumps(body, indent=1, allow_nan=True).encode()
    locations.write_atomic(locations.join(job_dir, RECORD), data, storage_options)


def read_record(job_dir: str, storage_options: locations.StorageOptions = None) -> dict[str, Any]:
    """The job record, with a clear error for a missing or foreign directory."""
    path = locations.join(job_dir, RECORD)
    if not locations.exists(job_dir, storage_options):
        raise StoreError(
            job_dir, "no such job directory", "Give the directory printed by `dnmf submit` or `dnmf fit --checkpoint`."
        )
    if not locations.is_file(path, storage_options):
        raise StoreError(
            job_dir,
            f"it holds no {RECORD}, so it is not a dnmf job directory",
            "Give the directory printed by `dnmf submit` or `dnmf fit --checkpoint`.",
        )
    try:
        if locations.is_url(path):
            fs, fspath = locations._fs(path, storage_options)
            raw = fs.cat_file(fspath)
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
        record = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise StoreError(
            path,
            f"the job record cannot be read ({type(exc).__name__}: {exc})",
            "The record is damaged; `dnmf resume` can still continue from the "
            "checkpoints if you recreate the job with `dnmf fit --checkpoint`.",
        ) from None
    if not isinstance(record, dict) or record.get("dnmf_format") != JOB_FORMAT:
        raise StoreError(
            path,
            "it is not a dnmf job record",
            "Give the directory printed by `dnmf submit` or `dnmf fit --checkpoint`.",
        )
    if record.get("version", 0) > JOB_VERSION:
        raise StoreError(
            path,
            f"the job record has version {record.get('version')}, newer than this dnmf understands ({JOB_VERSION})",
            "Upgrade dnmf.",
        )
    return record


def request_cancel(job_dir: str, storage_options: locations.StorageOptions = None) -> None:
    """Ask the job to stop after its next checkpoint."""
    locations.write_atomic(locations.join(job_dir, CANCEL), b"cancel requested\n", storage_options)


def cancel_requested(job_dir: str, storage_options: locations.StorageOptions = None) -> bool:
    """Whether someone asked the job in ``job_dir`` to stop."""
    return locations.exists(locations.join(job_dir, CANCEL), storage_options)


def clear_cancel(job_dir: str, storage_options: locations.StorageOptions = None) -> None:
    """Withdraw a cancel request (before resuming a cancelled job)."""
    locations.remove(locations.join(job_dir, CANCEL), storage_options)


def checkpoints_dir(job_dir: str) -> str:
    """Where the job's checkpoints live."""
    return locations.join(job_dir, CHECKPOINTS)


def input_dir(job_dir: str) -> str:
    """Where a job keeps the store ingested from a file given as its input."""
    return locations.join(job_dir, INPUT)


# A small local registry so that `dnmf status JOB_ID` works on the machine that
# submitted the job; from anywhere else, the job directory itself is the handle.


def _registry() -> str:
    home = os.environ.get("DNMF_HOME") or os.path.join(os.path.expanduser("~"), ".dnmf")
    return os.path.join(home, "jobs")


def register(job_id: str, job_dir: str) -> None:
    """Remember where job ``job_id`` keeps its directory (best effort)."""
    with contextlib.suppress(OSError):  # the directory printed at submission still works
        locations.write_atomic(
            os.path.join(_registry(), f"{job_id}.json"), json.dumps({"id": job_id, "dir": job_dir}).encode(), None
        )


def lookup(job_id: str) -> str | None:
    """The job directory registered for ``job_id`` on this machine, if any."""
    if not job_id or "/" in job_id or os.sep in job_id:
        return None
    path = os.path.join(_registry(), f"{job_id}.json")
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())["dir"]
    except (OSError, ValueError, KeyError):
        return None
