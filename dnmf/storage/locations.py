"""Where stores live: local paths and fsspec URLs, handled the same way.

Zarr opens both kinds from a string; these helpers cover the few file
operations Zarr does not do for us (existence checks, removal, listing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

StorageOptions = Mapping[str, Any] | None


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``)."""
    return "://" in path


def normalize(path: str | os.PathLike[str]) -> str:
    """An absolute local path, or the URL unchanged.

    Tasks run in worker processes whose working directory may differ from
    the client's, so relative paths are resolved here, once.
    """
    path = os.fspath(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    """``root/part/...`` with ``/`` separators (Zarr keys use ``/`` everywhere)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts if p)])


def _fs(path: str, storage_options: StorageOptions):
    import fsspec

    return fsspec.core.url_to_fs(path, **dict(storage_options or {}))


def exists(path: str, storage_options: StorageOptions = None) -> bool:
    """Whether anything (file or directory) exists at ``path``."""
    if not is_url(path):
        return os.path.exists(path)
    fs, fspath = _fs(path, storage_options)
    return bool(fs.exists(fspath))


def is_file(path: str, storage_options: StorageOptions = None) -> bool:
    """Whether ``path`` is an existing file (not a directory)."""
    if not is_url(path):
        return os.path.isfile(path)
    fs, fspath = _fs(path, storage_options)
    return bool(fs.isfile(fspath))


def list_names(path: str, storage_options: StorageOptions = None) -> list[str]:
    """Names directly under the directory ``path`` (empty if it is absent)."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, fspath = _fs(path, storage_options)
    if not fs.isdir(fspath):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(fspath, detail=False))


def remove(path: str, storage_options: StorageOptions = None) -> None:
    """Delete the directory tree (or file) at ``path`` if it exists."""
    if not is_url(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    fs, fspath = _fs(path, storage_options)
    if fs.exists(fspath):
        fs.rm(fspath, recursive=True)


def write_atomic(path: str, data: bytes, storage_options: StorageOptions = None, *, mode: int | None = None) -> None:
    """Replace the file at ``path`` with ``data`` in one step.

    Locally: a temporary file in the same directory, fsynced, then
    ``os.replace`` and an fsync of the directory, so a crash leaves the old
    file or the new one. On object stores: one PUT, which is atomic.
    ``mode``: the local file's permission bits (default: the temporary
    file's 0600); ignored on object stores.
    """
    if is_url(path):
        fs, fspath = _fs(path, storage_options)
        fs.pipe_file(fspath, data)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
