"""Models on disk: named arrays plus JSON attributes, saved atomically.

A model store is a Zarr v3 group whose root attributes are::

    {"dnmf_format": "dnmf-model", "version": 1,
     "arrays": {name: {"shape": [...], "dtype": "float64", "chunks": [...]}},
     "attrs": {...caller's JSON...}, "write_id": "...", "created_by": "dnmf x.y"}

with one Zarr array per name at the root. No pickle anywhere.

Saving over an existing model never leaves it unloadable. The protocol,
for a model at ``parent/name`` (local filesystems only; concurrent writers
take turns for steps 2-5 under an advisory lock on ``parent``, and each holds
a lock on its own temporary directory so that no other save deletes it; the
last writer's model wins, every writer's save succeeds):

1. Write the new model, root attributes last, into a fresh sibling
   ``parent/.name.dnmf-tmp-XXXX`` and fsync it.
2. Roll forward any earlier interrupted save (see below).
3. ``rename(parent/name, parent/.name.dnmf-old)`` (if a model exists).
4. ``rename(parent/.name.dnmf-tmp-XXXX, parent/name)``, fsync ``parent``.
5. Delete ``parent/.name.dnmf-old``.

A crash before step 3 leaves the old model in place (and a temporary
directory that the next save deletes); between steps 3 and 4 ``name`` is
missing and readers load ``.name.dnmf-old``, the old model; after step 4
``name`` is the new model. Readers never rename or delete anything; the
next save finishes the clean-up (step 2: restore ``.name.dnmf-old`` if
``name`` is missing, else delete it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import zarr

from .._version import __version__
from . import locations, nodes
from .chunking import TARGET_BLOCK_BYTES
from .codecs import ARRAY_CONFIG, ZSTD_LEVEL, numeric_compressors
from .errors import StoreError
from .layout import FORMAT_KEY, VERSION_KEY

MODEL_FORMAT = "dnmf-model"
MODEL_VERSIONS = (1,)
MODEL_VERSION = 1
#: Compression of a model's numeric arrays (see ``_create``).
MODEL_CODEC = f"zstd:{ZSTD_LEVEL}"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TMP_TAG = ".dnmf-tmp-"
_OLD_TAG = ".dnmf-old"


@dataclass(frozen=True)
class DeferredArray:
    """A model array whose blocks are written by someone else, e.g. Dask workers.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    chunks : tuple of int
        Block shape: each call to :func:`write_model_block` writes one block.
    fill : callable
        Called once as ``fill(location)`` after the empty array is created in
        the temporary directory and before the commit; it must write every
        block with ``write_model_block(location, block_index, block)`` and
        return when all are written. An exception aborts the save.
    """

    shape: tuple[int, ...]
    dtype: Any
    chunks: tuple[int, ...]
    fill: Callable[[str], None]


ArrayLike = Union[np.ndarray, DeferredArray]  # noqa: UP007 (a runtime alias on 3.10)


@dataclass(frozen=True)
class ModelInfo:
    """What a model store holds, from its metadata.

    ``location`` is where the committed model was found: the model's path,
    or its ``.dnmf-old`` sibling while an interrupted save awaits clean-up.
    ``arrays`` maps each name to ``{"shape", "dtype", "chunks"}``.
    """

    path: str
    location: str
    arrays: Mapping[str, Mapping[str, Any]]
    attrs: Mapping[str, Any]
    write_id: str
    version: int


def _old(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}{_OLD_TAG}")


def _local(path: str | os.PathLike[str]) -> str:
    path = locations.normalize(path)
    if locations.is_url(path):
        raise ValueError(
            f"Models are saved atomically with directory renames, which need a local "
            f"(or mounted) filesystem; got the URL {path!r}. Save to a local path and copy it."
        )
    return path


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with NumPy scalars/arrays turned into JSON types; reject the rest."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"attrs keys must be strings; {where} has key {k!r}.")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(
        f"attrs must be JSON-serialisable; {where} is a {type(value).__name__}. Convert it "
        "to a str, number, bool, list or dict (dnmf never pickles)."
    )


def _default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    # Row blocks of about TARGET_BLOCK_BYTES; small arrays stay one chunk.
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, TARGET_BLOCK_BYTES // max(1, row_bytes))
    return (max(1, min(shape[0], rows)) if shape else 1, *(max(1, s) for s in shape[1:]))


def _create(root: str, name: str, shape, dtype, chunks) -> zarr.Array:
    return zarr.create_array(
        store=root,
        name=name,
        shape=tuple(shape),
        chunks=tuple(chunks),
        dtype=np.dtype(dtype),
        # Zstandard, not the stores' LZ4: a model is written once and read rarely, so bytes count
        # more than decoding speed (and a model's files stay as they were).
        compressors=numeric_compressors(np.dtype(dtype), int(np.prod(chunks)), MODEL_CODEC),
        fill_value=0,
        config=ARRAY_CONFIG,
        overwrite=True,
    )


def write_model_block(location: str, block_index: tuple[int, ...], block: Any) -> None:
    """Write block ``block_index`` of the model array at ``location``.

    ``location`` is what :class:`DeferredArray`'s ``fill`` receives. Safe to
    call from any process that sees the same filesystem, and idempotent.
    """
    arr = nodes.open_for_writing(location)
    block = np.asarray(block)
    expected = tuple(min(c, n - b * c) for b, c, n in zip(block_index, arr.chunks, arr.shape, strict=True))
    if block.shape != expected:
        raise ValueError(
            f"block {tuple(block_index)} of {location!r} must have shape {expected}; got "
            f"{block.shape}. Rechunk the array to the chunks given to DeferredArray."
        )
    region = tuple(slice(b * c, b * c + s) for b, c, s in zip(block_index, arr.chunks, block.shape, strict=True))
    arr[region] = block.astype(arr.dtype, copy=False)


def _chunk_grid(shape, chunks) -> list[tuple[int, ...]]:
    grid = [max(1, -(-s // c)) if s else 0 for s, c in zip(shape, chunks, strict=True)]
    return [tuple(ix) for ix in np.ndindex(*grid)] if all(grid) else []


def _fsync_tree(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _is_model_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
            meta = json.load(f)
        return meta.get("attributes", {}).get(FORMAT_KEY) == MODEL_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _recover(path: str) -> None:
    """Finish the clean-up of an interrupted save (protocol step 2)."""
    old = _old(path)
    if not os.path.exists(old):
        return
    if os.path.exists(path):
        shutil.rmtree(old)
    else:
        os.rename(old, path)


class ConcurrentSaveError(RuntimeError):
    """Another writer saved a model to the same path and removed this save's files."""


def _flock(path: str, blocking: bool = True):
    """An exclusive advisory lock on the directory ``path``, or None when held elsewhere."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd) -> None:
    import fcntl

    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_stale_tmp(path: str) -> None:
    """Delete temporary directories of saves that are over (crashed); never a running one's.

    A running save holds a lock on its directory.
    """
    parent, name = os.path.split(path)
    prefix = f".{name}{_TMP_TAG}"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        full = os.path.join(parent, entry)
        try:
            fd = _flock(full, blocking=False)
        except OSError:
            continue  # gone meanwhile
        if fd is None:
            continue  # a save in progress
        try:
            shutil.rmtree(full, ignore_errors=True)
        finally:
            _unlock(fd)


def write_model(
    path: str | os.PathLike[str],
    arrays: Mapping[str, ArrayLike],
    attrs: Mapping[str, Any] | None = None,
    *,
    chunks: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Save a model (named arrays + JSON attributes), replacing any old one atomically.

    Parameters
    ----------
    path : str or path-like
        Local directory of the model. Its parent is created if needed.
    arrays : dict of str to ndarray or DeferredArray
        Names are identifiers (``W``, ``H``, ``components_``...). In-memory
        arrays are written here; a :class:`DeferredArray` is filled by its
        ``fill`` callable (e.g. Dask workers writing W block by block).
    attrs : dict, optional
        JSON-serialisable attributes (NumPy scalars and arrays are converted).
    chunks : dict of str to tuple of int, optional
        Chunk shape per in-memory array (default: row blocks of about 64 MiB).

    Raises
    ------
    ValueError
        If ``path`` is a URL, or holds something other than a dnmf model
        (which dnmf never deletes), or an array name is invalid.
    TypeError
        If ``attrs`` is not JSON-serialisable.

    Notes
    -----
    See the module docstring for the crash-safety protocol. One writer per
    model path at a time.
    """
    path = _local(path)
    user_attrs = _jsonable(dict(attrs or {}), "attrs")
    chunks = dict(chunks or {})
    for name in arrays:
        if not _NAME.match(name):
            raise ValueError(f"Model array names must be identifiers (letters, digits, _); got {name!r}.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # Renames and clean-ups of one model path happen under one lock, so concurrent saves
    # serialise their commits (the last one wins) and never delete each other's files.
    # (A lock on the parent directory: no lock file is left behind.)
    swap_lock = parent
    fd = _flock(swap_lock)
    try:
        _recover(path)
        if os.path.exists(path) and not _is_model_dir(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise ValueError(
                f"Cannot save a model to {path!r}: something other than a dnmf model is there, "
                "and dnmf never deletes foreign data. Choose another path or remove it yourself."
            )
        _remove_stale_tmp(path)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}{_TMP_TAG}", dir=parent)
        own = _flock(tmp)  # held until this save ends: cleaners leave this directory alone
    finally:
        _unlock(fd)
    try:
        _write_tmp(tmp, path, arrays, chunks, user_attrs)
        fd = _flock(swap_lock)
        try:
            if not os.path.isdir(tmp):
                raise ConcurrentSaveError(
                    f"Cannot save the model to {path!r}: another writer replaced it while this save "
                    "ran and removed this save's files. The model there is the other writer's, complete; "
                    "save again if this one should win."
                )
            old = _old(path)
            _recover(path)
            if os.path.exists(path):
                os.rename(path, old)
            os.rename(tmp, path)
            _fsync_dir(parent)
            if os.path.exists(old):
                shutil.rmtree(old)
        finally:
            _unlock(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _unlock(own)


def _write_tmp(tmp: str, path: str, arrays, chunks, user_attrs) -> None:
    """Protocol step 1: the complete new model in ``tmp``, commit record last, fsynced."""
    try:
        # "a", not "w": "w" deletes and recreates the directory, dropping this save's lock on it.
        zarr.open_group(store=tmp, mode="a", zarr_format=3)
        specs: dict[str, dict[str, Any]] = {}
        for name, value in arrays.items():
            location = os.path.join(tmp, name)
            if isinstance(value, DeferredArray):
                shape, dtype, ch = tuple(value.shape), np.dtype(value.dtype), tuple(value.chunks)
                _create(tmp, name, shape, dtype, ch)
                value.fill(location)
            else:
                data = np.asarray(value)
                shape, dtype = data.shape, data.dtype
                if dtype.kind not in "biuf":
                    raise TypeError(f"Model array {name!r} must be numeric; got dtype {dtype}.")
                ch = tuple(chunks.get(name) or _default_chunks(shape, dtype))
                arr = _create(tmp, name, shape, dtype, ch)
                arr[...] = data
            missing = [ix for ix in _chunk_grid(shape, ch) if not nodes.chunk_exists(tmp, name, ix, None)]
            if missing:
                raise RuntimeError(
                    f"Model array {name!r}: {len(missing)} block(s) were not written (first "
                    f"{missing[0]}); the save was abandoned and the previous model kept. "
                    "Make sure the fill callable writes every block."
                )
            specs[name] = {"shape": list(shape), "dtype": dtype.name, "chunks": list(ch)}
        # The commit record: written last, so a partial directory is never a model.
        nodes.set_root_attrs(
            tmp,
            {
                FORMAT_KEY: MODEL_FORMAT,
                VERSION_KEY: MODEL_VERSION,
                "arrays": specs,
                "attrs": user_attrs,
                "write_id": uuid.uuid4().hex,
                "created_by": f"dnmf {__version__}",
            },
            None,
        )
        _fsync_tree(tmp)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not os.path.isdir(tmp):
            raise ConcurrentSaveError(
                f"Cannot save the model to {path!r}: another writer replaced it while this save ran "
                "and removed this save's files. The model there is the other writer's, complete; save "
                "again if this one should win."
            ) from exc
        raise


def _committed(path: str) -> str:
    """Where the committed model for ``path`` is (see the protocol)."""
    if os.path.exists(path):
        return path
    old = _old(path)
    if os.path.isdir(old):
        return old
    return path


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read and check a model's metadata (not its arrays).

    Raises
    ------
    StoreError
        If there is no model, or a foreign, unfinished, newer or corrupt one.
    """
    path = _local(path)
    location = _committed(path)
    node = nodes.open_readonly(location)
    fix = "Save the model again (e.g. fit and save) or point at a model saved by dnmf."
    if isinstance(node, zarr.Array):
        raise StoreError(location, "it is a Zarr array, not a dnmf model group", fix)
    attrs = node.attrs.asdict()
    fmt = attrs.get(FORMAT_KEY)
    if fmt != MODEL_FORMAT:
        problem = (
            f"{FORMAT_KEY}={fmt!r} names another layout, not {MODEL_FORMAT!r}"
            if fmt is not None
            else f"the group has no {FORMAT_KEY!r} attribute: not a dnmf model, or a save that did not finish"
        )
        raise StoreError(location, problem, fix)
    version = attrs.get(VERSION_KEY)
    if version not in MODEL_VERSIONS:
        raise StoreError(
            location,
            f"model version {version!r} is not supported (this dnmf reads {list(MODEL_VERSIONS)})",
            "Upgrade dnmf if a newer version saved it; otherwise " + fix[0].lower() + fix[1:],
        )
    try:
        arrays = {
            str(k): {
                "shape": tuple(int(s) for s in v["shape"]),
                "dtype": np.dtype(v["dtype"]),
                "chunks": tuple(int(c) for c in v["chunks"]),
            }
            for k, v in attrs["arrays"].items()
        }
        user_attrs = dict(attrs.get("attrs") or {})
        write_id = str(attrs["write_id"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(location, f"malformed model metadata ({type(exc).__name__}: {exc})", fix) from None
    return ModelInfo(path, location, arrays, user_attrs, write_id, int(version))


def _open_model_array(info: ModelInfo, name: str) -> zarr.Array:
    if name not in info.arrays:
        raise KeyError(f"The model at {info.path!r} has no array {name!r}; it has {sorted(info.arrays)}.")
    arr = nodes.open_array_readonly(info.location, name)
    spec = info.arrays[name]
    if arr.shape != spec["shape"] or arr.dtype != spec["dtype"] or tuple(arr.chunks) != spec["chunks"]:
        raise StoreError(
            locations.join(info.location, name),
            f"the array has shape {arr.shape}, dtype {arr.dtype}, chunks {arr.chunks} but the "
            f"model's metadata says {spec['shape']}, {spec['dtype']}, {spec['chunks']}",
            "The model was modified by another program; save it again.",
        )
    return arr


def read_model_block(info: ModelInfo, name: str, block_index: tuple[int, ...]) -> np.ndarray:
    """Block ``block_index`` of model array ``name`` (for lazy, block-wise loading)."""
    arr = _open_model_array(info, name)
    where = locations.join(info.location, name)
    if not nodes.chunk_exists(info.location, name, tuple(block_index), None):
        raise StoreError(where, f"block {tuple(block_index)} is missing", "The model is damaged; save it again.")
    region = tuple(slice(b * c, (b + 1) * c) for b, c in zip(block_index, arr.chunks, strict=True))
    return nodes.read_region(arr, region, where)


def read_model(
    path: str | os.PathLike[str], names: list[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a model saved by :func:`write_model`.

    Parameters
    ----------
    path : str or path-like
    names : list of str, optional
        Arrays to load (default: all).

    Returns
    -------
    arrays : dict of str to numpy.ndarray
    attrs : dict
        The attributes given to :func:`write_model`.

    Raises
    ------
    StoreError
        If ``path`` holds no model, a foreign or unfinished one, an unknown
        version, or damaged data (missing or corrupt chunks).
    """
    info = read_model_info(path)
    out = {}
    for name in names if names is not None else info.arrays:
        arr = _open_model_array(info, name)
        spec = info.arrays[name]
        for ix in _chunk_grid(spec["shape"], spec["chunks"]):
            if not nodes.chunk_exists(info.location, name, ix, None):
                raise StoreError(
                    locations.join(info.location, name),
                    f"block {ix} is missing",
                    "The model is damaged; save it again.",
                )
        out[name] = nodes.read_whole(arr, locations.join(info.location, name))
    return out, dict(info.attrs)
