"""Checks every command runs on its outputs before any work.

An output may not be (or lie inside, or contain) an input; an existing output
must be replaceable (``--overwrite`` and something dnmf may replace); its
directory must be writable. Each check raises an error that the command line
reports as one line with exit code 2, naming the option and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..storage import locations
from .console import InputError


def _err(message: str):
    return InputError(message)


def disjoint(outputs: Iterable[tuple[str, str | None]], inputs: Iterable[tuple[str, str | None]]) -> None:
    """Refuse an output that resolves to an input, lies inside one, or holds one."""
    try:
        locations.check_disjoint(list(outputs), list(inputs))
    except locations.SamePathError as exc:
        raise _err(str(exc)) from None


def store_output(path: str, option: str, *, overwrite: bool, storage_options=None) -> None:
    """An output store: replaceable if it exists (with --overwrite), its directory writable."""
    from ..storage.matrix import OutputExistsError, check_output

    try:
        check_output(path, overwrite=overwrite, storage_options=storage_options)
    except OutputExistsError:
        raise _err(
            f"{option} {path!r} already exists. Pass --overwrite to replace it, or choose another path."
        ) from None
    except (ValueError, OSError) as exc:
        raise _err(f"{option}: {exc}") from None


def model_output(path: str, option: str = "-o") -> None:
    """A model output: absent, an empty directory or a dnmf model (replaced atomically); writable."""
    from ..storage import models

    if "://" in path:
        return  # models.write_model refuses URLs with its own message
    if os.path.exists(path):
        if os.path.isfile(path):
            raise _err(f"{option} {path!r} is a file; a model is saved as a directory. Choose another path.")
        if os.listdir(path) and not models._is_model_dir(path):
            raise _err(
                f"{option} {path!r} holds something other than a dnmf model, and dnmf never deletes "
                "foreign data. Choose another path or remove it yourself."
            )
    try:
        locations.check_writable_parent(path)
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"Cannot write {path!r}: it is not writable. Choose a writable location.")
    except OSError as exc:
        raise _err(f"{option}: {exc}") from None


def file_output(path: str, option: str = "-o") -> None:
    """A plain output file (table, array): not a directory, its directory writable."""
    if os.path.isdir(path):
        raise _err(f"{option} {path!r} is a directory; give a file name. Choose another path.")
    try:
        locations.check_writable_parent(path)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError(f"Cannot write {path!r}: the file is not writable. Choose another path.")
    except OSError as exc:
        raise _err(f"{option}: {exc}") from None


def exists(path: str) -> bool:
    """Whether a path exists (URLs are taken to: their store says otherwise when opened)."""
    return "://" in path or os.path.exists(path)


def check_input(path: str) -> None:
    """Refuse an INPUT that does not exist, naming what INPUT may be."""
    if not exists(path):
        raise FileNotFoundError(
            f"INPUT {path!r} does not exist. Give a matrix store (made by "
            "`dnmf ingest`) or a ratings/matrix file (csv, parquet, mtx, npz, npy)."
        )
