"""Checkpoints of a running fit, committed by a pointer record.

Layout of a checkpoint directory (a local path or an fsspec URL such as
``s3://bucket/run1``)::

    LATEST.json                    the pointer: which checkpoint is current
    it-00000120-1a2b3c4d/          one checkpoint (a Zarr v3 group)
        zarr.json                  attributes: format, version, the loop's state
        W/0, W/1, ...              one Zarr array per row block of W   (m_i, k)
        Ht/0, Ht/1, ...            one Zarr array per column block of H.T (n_j, k)

One array per factor block keeps any blocking exact and lets every worker
write its own blocks with no coordination.

Commit protocol: (1) the workers write the blocks into a fresh directory;
(2) the driver writes the group's attributes (the loop's state); (3) the
driver replaces ``LATEST.json`` in one step (``os.replace`` locally, a single
object PUT on object stores); (4) older checkpoints beyond ``keep_last`` are
deleted. Until step 3 the previous checkpoint stays current, so a crash at
any moment leaves a loadable checkpoint. No pickle: state is JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr

from . import locations
from .errors import StoreError

CHECKPOINT_FORMAT = "dnmf-checkpoint"
POINTER_FORMAT = "dnmf-checkpoint-pointer"
VERSION = 1
POINTER = "LATEST.json"
_NAME = re.compile(r"^it-(\d{8})-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint: where it is and the loop state it holds."""

    root: str
    name: str
    state: dict[str, Any]

    @property
    def path(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"


def _fs(root: str, storage_options: dict | None):
    fs, path = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
    return fs, path


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def new_name(iteration: int) -> str:
    """A fresh, sortable checkpoint name for ``iteration``."""
    return f"it-{iteration:08d}-{uuid.uuid4().hex[:8]}"


def block_url(root: str, name: str, factor: str, index: int) -> str:
    return f"{str(root).rstrip('/')}/{name}/{factor}/{index}"


def write_block(
    root: str,
    name: str,
    factor: str,
    index: int,
    block: np.ndarray,
    storage_options: dict | None = None,
    *,
    compress: bool = True,
) -> int:
    """Write one factor block (called on the worker that holds it); ``compress=False``: raw bytes."""
    block = np.ascontiguousarray(block)
    extra: dict = {} if compress else {"compressors": None}
    zarr.create_array(
        store=block_url(root, name, factor, index),
        data=block,
        chunks=block.shape if block.size else None,  # type: ignore[arg-type]  # None: Zarr picks (empty block)
        storage_options=storage_options or None,
        overwrite=True,
        **extra,
    )
    return int(block.shape[0])


def read_block(root: str, name: str, factor: str, index: int, storage_options: dict | None = None) -> np.ndarray:
    """Read one factor block, with an error naming the file if it is damaged."""
    url = block_url(root, name, factor, index)
    try:
        return np.asarray(zarr.open_array(url, mode="r", storage_options=storage_options or None)[...])
    except Exception as exc:  # zarr raises many types for damaged data
        raise StoreError(
            url,
            f"the checkpoint block cannot be read ({type(exc).__name__}: {exc})",
            "The checkpoint is damaged: resume from an earlier one, or start afresh.",
        ) from None


def commit(
    root: str, name: str, state: dict[str, Any], *, keep_last: int = 2, storage_options: dict | None = None
) -> CheckpointInfo:
    """Make checkpoint ``name`` (blocks already written) the current one."""
    state = json.loads(json.dumps(state))  # JSON only, fails loudly otherwise
    group = zarr.open_group(f"{str(root).rstrip('/')}/{name}", mode="a", storage_options=storage_options or None)
    group.attrs.update({"dnmf_format": CHECKPOINT_FORMAT, "version": VERSION, "state": state})
    pointer = {"dnmf_format": POINTER_FORMAT, "version": VERSION, "current": name, "iteration": state.get("iteration")}
    _write_pointer(root, json.dumps(pointer, indent=1).encode(), storage_options)
    _prune(root, name, keep_last, storage_options)
    return CheckpointInfo(str(root), name, state)


def _write_pointer(root: str, data: bytes, storage_options) -> None:
    fs, path = _fs(root, storage_options)
    if _is_local(fs):
        locations.write_atomic(f"{path.rstrip('/')}/{POINTER}", data)
    else:
        fs.pipe_file(f"{path.rstrip('/')}/{POINTER}", data)  # one PUT: atomic on object stores


def _prune(root: str, current: str, keep_last: int, storage_options) -> None:
    fs, path = _fs(root, storage_options)
    names = sorted(n for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) if _NAME.match(n))
    keep = set(names[-max(keep_last, 1) :]) | {current}
    for n in names:
        if n not in keep:
            fs.rm(f"{path.rstrip('/')}/{n}", recursive=True)


def exists(root: str, storage_options: dict | None = None) -> bool:
    fs, path = _fs(root, storage_options)
    return fs.exists(f"{path.rstrip('/')}/{POINTER}")


def read_latest(root: str, storage_options: dict | None = None) -> CheckpointInfo:
    """The current checkpoint; a clear error if there is none or it is damaged."""
    fs, path = _fs(root, storage_options)
    pointer_path = f"{path.rstrip('/')}/{POINTER}"
    shown = f"{str(root).rstrip('/')}/{POINTER}"
    if not fs.exists(pointer_path):
        fix = "Check the path, or fit with checkpoint=... to write checkpoints."
        if fs.exists(f"{path.rstrip('/')}/checkpoints/{POINTER}"):  # a job directory (storage.jobs)
            inner = f"{str(root).rstrip('/')}/checkpoints"
            fix = (
                f"This is a job directory of `dnmf fit --checkpoint`: resume from {inner}, or run `dnmf resume {root}`."
            )
        raise StoreError(str(root), f"No checkpoint at {root}: {POINTER} is missing", fix)
    try:
        pointer = json.loads(fs.cat_file(pointer_path))
        name = pointer["current"]
        fmt, version = pointer["dnmf_format"], pointer["version"]
    except Exception as exc:
        raise StoreError(
            shown,
            f"{POINTER} is damaged ({exc}); it is not a dnmf checkpoint record",
            "Resume from another checkpoint directory, or start afresh.",
        ) from None
    if fmt != POINTER_FORMAT or version != VERSION or not _NAME.match(str(name)):
        raise StoreError(
            shown,
            f"the pointer has format {fmt!r} version {version!r}; this dnmf reads {POINTER_FORMAT!r} version {VERSION}",
            "Use the dnmf version that wrote it.",
        )
    group_url = f"{str(root).rstrip('/')}/{name}"
    try:
        attrs: dict[str, Any] = dict(
            zarr.open_group(group_url, mode="r", storage_options=storage_options or None).attrs
        )
        state = attrs["state"]
        ok = attrs.get("dnmf_format") == CHECKPOINT_FORMAT and attrs.get("version") == VERSION
    except Exception as exc:
        raise StoreError(
            f"{group_url}/zarr.json",
            f"the checkpoint record is missing or damaged ({type(exc).__name__}: {exc})",
            "Resume from an earlier checkpoint, or start afresh.",
        ) from None
    if not ok:
        raise StoreError(
            group_url,
            f"not a dnmf checkpoint (format {attrs.get('dnmf_format')!r})",
            "Point resume= at a directory written with checkpoint=.",
        )
    return CheckpointInfo(str(root), name, state)
