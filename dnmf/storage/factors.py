"""Factors out of core: a fit's W (and Hᵀ) in a Zarr directory, one generation per iteration.

Layout of a factor store (a local path or an fsspec URL)::

    CURRENT.json                  the pointer: the committed generation, the pinned ones, the layout
    g-00000012/                   the factors after iteration 12 (a generation)
        W/0, W/1, ...             one Zarr array per row block of W      (m_i, k)
        Ht/0, Ht/1, ...           one Zarr array per column block of Hᵀ  (n_j, k)
        HHt/0                     H Hᵀ (k, k), as the iteration computed it
    spare/                        (local stores) the last generation given up, whose files
                                  the next generation's blocks take over

Row task ``i`` of iteration ``t`` reads ``W_i`` from generation ``t - 1`` and
writes the new ``W_i`` into generation ``t``: W never sits in a worker's
memory between iterations, and no generation is written while it is read.
The driver commits generation ``t`` (rewrites ``CURRENT.json`` in one step)
only after every block of it was written, and only then deletes the
generations nothing refers to. A crash at any moment, also in the middle of
writing a generation's blocks, leaves the committed one complete.

On a local path a generation given up is not deleted but kept as ``spare/``,
and each block of the next generation is written into the spare's file of
the same block (moved into place by one ``rename``, then overwritten):
writing over pages a file already has costs a tenth of making a new file,
which on this kind of store was most of an iteration's extra time (3 MB
blocks: 0.3 ms against 3.5–9 ms). The spare is never a generation anything
reads, so a crash while it is overwritten loses nothing.

Checkpoints refer to a generation instead of copying W: :func:`pin` keeps it
(and its Hᵀ) until the checkpoint that named it is gone (:func:`unpin`), so a
checkpoint writes two small JSON records whatever the size of W.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import dask.array as da
import fsspec
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import buffers, checkpoints, locations
from .errors import StoreError

FORMAT = "dnmf-factor-store"
VERSION = 1
POINTER = "CURRENT.json"
#: A local store's last given-up generation, whose block files the next one reuses.
SPARE = "spare"
_GENERATION = re.compile(r"^g-(\d{8})$")
#: Names of the Dask arrays that read a generation's blocks (see :func:`generation_of`).
_PREFIX = "dnmf-factors-"


@dataclass(frozen=True)
class Layout:
    """The blocking of the factors a store holds.

    ``k`` is the width of W and Hᵀ (RatingsNMF: of its users' and items'
    state, with their bias column), ``gram`` the width of the Gram beside
    them (None: ``k``; 0: the fit keeps no Gram).
    """

    W_chunks: tuple[int, ...]
    Ht_chunks: tuple[int, ...]
    k: int
    dtype: str
    gram: int | None = None

    @property
    def gram_width(self) -> int:
        return self.k if self.gram is None else self.gram

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "W_chunks": list(self.W_chunks),
            "Ht_chunks": list(self.Ht_chunks),
            "k": self.k,
            "dtype": self.dtype,
        }
        if self.gram is not None:
            out["gram"] = self.gram
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        gram = data.get("gram")
        return cls(
            tuple(data["W_chunks"]),
            tuple(data["Ht_chunks"]),
            int(data["k"]),
            str(data["dtype"]),
            None if gram is None else int(gram),
        )

    @classmethod
    def of(cls, W: da.Array, Ht: da.Array, gram: int | None = None) -> Layout:
        return cls(
            tuple(int(c) for c in W.chunks[0]),
            tuple(int(c) for c in Ht.chunks[0]),
            int(W.shape[1]),
            str(W.dtype),
            gram,
        )


@dataclass(frozen=True)
class Generation:
    """One generation of a factor store, as the tasks that read and write its blocks name it."""

    root: str
    number: int
    storage_options: dict | None = None

    def write(self, factor: str, index: int, block: np.ndarray) -> int:
        return write_block(self.root, self.number, factor, index, block, self.storage_options)

    def read(self, factor: str, index: int) -> np.ndarray:
        return read_block(self.root, self.number, factor, index, self.storage_options)


def generation_name(generation: int) -> str:
    return f"g-{generation:08d}"


def check_new(root: str, storage_options: dict | None = None, *, parameter: str = "factor_store=") -> None:
    """Refuse to start a fit in a directory that holds anything (never damage an earlier fit's factors).

    ``parameter`` names the option in the caller's words (``"factor_store="``, ``"--factor-store "``).
    """
    if not locations.exists(root, storage_options):
        return
    if locations.is_file(root, storage_options):
        raise ValueError(f"{parameter}{root!r} is a file; pass a directory that does not exist yet (or is empty).")
    if locations.list_names(root, storage_options):
        what = "the factors of another fit" if has_pointer(root, storage_options) else "other files"
        resume = "resume= the checkpoint" if parameter.endswith("=") else "resume the job"
        raise ValueError(
            f"{parameter}{root!r} already holds {what}; pass a new (or empty) directory, or "
            f"{resume} of the fit that wrote it."
        )


def has_pointer(root: str, storage_options: dict | None = None) -> bool:
    return locations.exists(locations.join(root, POINTER), storage_options)


def read_pointer(root: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The committed record of the store: ``current`` generation, ``pinned`` ones, ``layout``."""
    url = locations.join(root, POINTER)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(path):
        raise StoreError(root, f"{POINTER} is missing: no committed factors", "Check the path of the factor store.")
    try:
        record = json.loads(fs.cat_file(path))
        ok = record["dnmf_format"] == FORMAT and record["version"] == VERSION
        int(record["current"])
    except Exception as exc:
        raise StoreError(
            url, f"{POINTER} is damaged ({exc})", "Resume from another checkpoint, or start afresh."
        ) from None
    if not ok:
        raise StoreError(
            url,
            f"not a dnmf factor store pointer (version {record.get('version')!r})",
            "Use the dnmf version that wrote it.",
        )
    return dict(record)


def _write_pointer(root: str, record: dict[str, Any], storage_options: dict | None) -> None:
    data = json.dumps(record, indent=1).encode()
    url = locations.join(root, POINTER)
    if locations.is_url(url):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.pipe_file(path, data)  # one PUT: atomic on object stores
    else:
        os.makedirs(root, exist_ok=True)
        locations.write_atomic(url, data)


def _generations(root: str, storage_options: dict | None) -> list[int]:
    if not locations.exists(root, storage_options):
        return []
    names = locations.list_names(root, storage_options)
    return sorted(int(m.group(1)) for m in map(_GENERATION.match, names) if m)


def commit(root: str, generation: int, layout: Layout, storage_options: dict | None = None) -> None:
    """Make ``generation`` (all its blocks written) the current one; delete those nothing refers to.

    The pinned generations (checkpoints) stay. Called by the driver only.
    """
    pinned: list[int] = []
    if has_pointer(root, storage_options):
        pinned = [int(g) for g in read_pointer(root, storage_options).get("pinned", [])]
    record = {
        "dnmf_format": FORMAT,
        "version": VERSION,
        "current": int(generation),
        "pinned": pinned,
        "layout": layout.to_json(),
    }
    _write_pointer(root, record, storage_options)
    keep = {int(generation), *pinned}
    dead = [g for g in _generations(root, storage_options) if g not in keep]
    older = [g for g in dead if g < generation]
    if older and not locations.is_url(root):
        drop_spare(root)
        os.rename(os.path.join(root, generation_name(older[-1])), os.path.join(root, SPARE))
        dead.remove(older[-1])
    for g in dead:
        locations.remove(locations.join(root, generation_name(g)), storage_options)


def drop_spare(root: str) -> None:
    """Delete a local store's spare generation (at the end of a fit: it holds a W's worth of disk)."""
    if not locations.is_url(root):
        # Write tasks may be moving blocks out of it: what they took is gone, not an error.
        shutil.rmtree(os.path.join(root, SPARE), ignore_errors=True)


def pin(root: str, generation: int, storage_options: dict | None = None) -> None:
    """Keep ``generation`` until :func:`unpin` (a checkpoint refers to it)."""
    record = read_pointer(root, storage_options)
    pinned = [int(g) for g in record.get("pinned", []) if int(g) != generation]
    record["pinned"] = [*pinned, int(generation)]
    _write_pointer(root, record, storage_options)


def unpin(root: str, keep_last: int, storage_options: dict | None = None) -> None:
    """Keep only the last ``keep_last`` pins (the checkpoints still kept); delete what they held alone."""
    record = read_pointer(root, storage_options)
    pinned = [int(g) for g in record.get("pinned", [])]
    record["pinned"] = kept = pinned[-max(keep_last, 1) :]
    _write_pointer(root, record, storage_options)
    for g in set(pinned) - set(kept) - {int(record["current"])}:
        locations.remove(locations.join(root, generation_name(g)), storage_options)


def _local_array(root: str, generation: int, factor: str, index: int) -> str:
    return os.path.join(root, generation_name(generation), factor, str(index))


def write_block(
    root: str, generation: int, factor: str, index: int, block: np.ndarray, storage_options: dict | None = None
) -> int:
    """Write one block of ``generation`` (a task on the worker that computed it); returns its rows.

    Uncompressed: a generation lives one iteration, and dense float factors
    compress little for the CPU time it would add to every iteration. On a
    local path the Zarr v3 array (one chunk, the "bytes" codec) is written
    directly: Zarr's own writer costs about 4x the time of the bytes for a
    block of a few MiB, every block, every iteration.
    """
    if locations.is_url(root):
        return checkpoints.write_block(
            root, generation_name(generation), factor, index, block, storage_options, compress=False
        )
    block = np.ascontiguousarray(block, dtype=np.dtype(block.dtype).newbyteorder("<"))
    path = _local_array(root, generation, factor, index)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(OSError):  # take over the spare's block (see the module doc), if it has one
            os.rename(os.path.join(root, SPARE, factor, str(index)), path)
    os.makedirs(os.path.join(path, "c", "0"), exist_ok=True)
    if block.size:
        _overwrite(os.path.join(path, "c", "0", "0"), block)
    meta = {
        "shape": list(block.shape),
        "data_type": block.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, d) for d in block.shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    with open(os.path.join(path, "zarr.json"), "w") as f:
        json.dump(meta, f)
    return int(block.shape[0])


def _overwrite(file: str, block: np.ndarray) -> None:
    """Write ``block``'s bytes as the whole of ``file``, into its existing pages when it has as many."""
    data = block.data.cast("B")  # C-contiguous (write_block made it so)
    try:
        same = os.path.getsize(file) == data.nbytes
    except OSError:
        same = False
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | (0 if same else os.O_TRUNC), 0o666)
    try:
        done = 0
        while done < data.nbytes:
            done += os.write(fd, data[done:])
    finally:
        os.close(fd)


def read_block(root: str, generation: int, factor: str, index: int, storage_options: dict | None = None) -> np.ndarray:
    """Read one block of ``generation``, with an error naming the file if it is missing or damaged."""
    try:
        if locations.is_url(root):
            return checkpoints.read_block(root, generation_name(generation), factor, index, storage_options)
        path = _local_array(root, generation, factor, index)
        try:
            with open(os.path.join(path, "zarr.json")) as f:
                meta = json.load(f)
            shape = tuple(int(d) for d in meta["shape"])
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            if not all(shape):
                return np.zeros(shape, dtype=dtype)
            # Reused memory (dnmf.storage.buffers): a worker otherwise faults in a fresh block every iteration.
            out = buffers.empty(shape, dtype)
            with open(os.path.join(path, "c", "0", "0"), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != out.nbytes:
                    raise ValueError(f"{size // dtype.itemsize} values where the array has {out.size}")
                got = f.readinto(out.data.cast("B"))
            if got != out.nbytes:
                raise ValueError(f"{got} bytes read of {out.nbytes}")
            return out
        except Exception as exc:
            raise StoreError(path, f"({type(exc).__name__}: {exc})", "") from None
    except StoreError as exc:
        cause = exc.problem.partition("(")[2].rstrip(")") or exc.problem
        raise StoreError(
            exc.path,
            f"the block of generation {generation} of the factor store cannot be read ({cause})",
            "The generation was deleted or damaged: resume from a checkpoint of this fit, or fit afresh.",
        ) from None


def open_generation(
    root: str, generation: int, layout: Layout, storage_options: dict | None = None
) -> tuple[da.Array, da.Array, da.Array | None]:
    """``(W, Ht, HHt)`` of ``generation`` as lazy Dask arrays with no dependencies.

    Each block is one read task: nothing is held in memory until a task
    needs it, and the arrays carry no lineage. The Gram is None when the
    layout keeps none (``layout.gram == 0``).
    """
    out: list[da.Array | None] = []
    parts = (("W", layout.W_chunks, layout.k), ("Ht", layout.Ht_chunks, layout.k), ("HHt", None, layout.gram_width))
    for factor, chunks, width in parts:
        if chunks is None:
            if width == 0:
                out.append(None)
                continue
            chunks = (width,)
        name = f"{_PREFIX}{factor}-{generation_name(generation)}-" + tokenize(root, generation, factor, layout)
        dsk = {
            (name, i, 0): (read_block, root, int(generation), factor, i, storage_options) for i in range(len(chunks))
        }
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
        meta = np.empty((0, 0), dtype=np.dtype(layout.dtype))
        out.append(da.Array(graph, name, chunks=(tuple(chunks), (width,)), meta=meta))
    W, Ht, HHt = out
    assert W is not None and Ht is not None
    return W, Ht, HHt


def generation_of(A: da.Array) -> tuple[str, int] | None:
    """``(root, generation)`` when ``A`` is a factor read by :func:`open_generation`, else None."""
    if not str(A.name).startswith(_PREFIX):
        return None
    task = A.__dask_graph__()[(A.name, 0, 0)]
    return str(task[1]), int(task[2])
