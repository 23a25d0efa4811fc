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


def file_mode() -> int:
    """The mode a new file gets from ``open()``: 0o666 less the process's umask.

    Temporary files (``tempfile.mkstemp``) are created 0600; files renamed into
    place from them get this mode instead, so results on a shared volume are as
    readable as any other file the user writes.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, data: bytes, storage_options: StorageOptions = None, *, mode: int | None = None) -> None:
    """Replace the file at ``path`` with ``data`` in one step.

    Locally: a temporary file in the same directory, fsynced, then
    ``os.replace`` and an fsync of the directory, so a crash leaves the old
    file or the new one. On object stores: one PUT, which is atomic.
    ``mode``: the local file's permission bits (default: what ``open()``
    would give, :func:`file_mode`); ignored on object stores.
    """
    if is_url(path):
        fs, fspath = _fs(path, storage_options)
        fs.pipe_file(fspath, data)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        os.fchmod(fd, file_mode() if mode is None else mode)
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


class SamePathError(ValueError):
    """An output would be written onto (or into, or around) an input."""


def _resolved(path: str) -> str:
    path = normalize(path)
    if is_url(path):
        return path
    return os.path.realpath(path)


def overlaps(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same location, or one lies inside the other.

    Local paths are compared after resolving symbolic links and ``..``, so two
    spellings of one directory overlap. URLs are compared as text.
    """
    ra, rb = _resolved(a), _resolved(b)
    if is_url(ra) != is_url(rb):
        return False
    sep = "/" if is_url(ra) else os.sep
    ra, rb = ra.rstrip(sep) or sep, rb.rstrip(sep) or sep
    return ra == rb or ra.startswith(rb.rstrip(sep) + sep) or rb.startswith(ra.rstrip(sep) + sep)


def check_disjoint(outputs, inputs) -> None:
    """Refuse, before any work, an output that is an input, lies inside one or holds one.

    Parameters
    ----------
    outputs, inputs : iterable of (label, path)
        Labels name the paths in the caller's words (``"--train"``, ``"INPUT"``,
        ``"path"``). Outputs are also checked against each other.

    Raises
    ------
    SamePathError
        Naming both paths; nothing has been read or written.
    """
    outputs = [(label, os.fspath(p)) for label, p in outputs if p is not None]
    inputs = [(label, os.fspath(p)) for label, p in inputs if p is not None]
    for k, (olabel, out) in enumerate(outputs):
        for ilabel, inp in inputs:
            if overlaps(out, inp):
                raise SamePathError(
                    f"{olabel} {out!r} is the same location as {ilabel} {inp!r} (or one contains the other): "
                    f"writing it would destroy what is read. Choose another path for {olabel}."
                )
        for olabel2, out2 in outputs[k + 1 :]:
            if overlaps(out, out2):
                raise SamePathError(
                    f"{olabel} {out!r} and {olabel2} {out2!r} are the same location (or one contains the "
                    "other). Give them different paths."
                )


def sibling(path: str, tag: str) -> str:
    """A fresh, unused hidden path next to ``path`` (same directory, so a rename is atomic)."""
    import uuid

    parent, name = os.path.split(normalize(path))
    return os.path.join(parent, f".{name}.{tag}-{uuid.uuid4().hex[:12]}")


def swap_in(new: str, path: str) -> None:
    """Replace the directory (or file) at local ``path`` with ``new``, which lies beside it.

    Renames the old one aside, renames ``new`` into place, then deletes the old
    one; if the second rename fails the old one is put back, so ``path`` never
    ends up missing or half-written.
    """
    old = sibling(path, "dnmf-old")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    remove(old)
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def check_writable_parent(path: str) -> None:
    """Refuse a local output whose (nearest existing) parent directory cannot be written."""
    parent = os.path.dirname(normalize(path)) or "."
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"Cannot write {path!r}: {parent!r} is not a directory. Choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write {path!r}: the directory {parent!r} is not writable. Choose a writable location."
        )
