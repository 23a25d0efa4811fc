"""Checkpointing the loop: the workers write the factors, the driver commits.

A :class:`Checkpointer` decides when a checkpoint is due (every N iterations
and/or every S seconds), has each worker write the factor blocks it holds
(one task per block, no data through the driver), then commits the loop's
state with :mod:`dnmf.storage.checkpoints`' pointer protocol. Loading builds
Dask arrays that read one block per task.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..storage import checkpoints as store
from ..storage import factors

logger = logging.getLogger("dnmf")


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped (JSON-able)."""

    iteration: int = 0
    history: list[float] = field(default_factory=list)
    stationarity: list[float] = field(default_factory=list)
    error_at_init: float | None = None
    previous_error: float | None = None
    violation_init: float | None = None
    rng_state: list | None = None
    elapsed: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def rng_to_json(rng: np.random.RandomState | None) -> list | None:
    if rng is None:
        return None
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [name, [int(x) for x in keys], int(pos), int(has_gauss), float(cached)]


def rng_from_json(state: list | None) -> np.random.RandomState | None:
    if state is None:
        return None
    rng = np.random.RandomState()
    name, keys, pos, has_gauss, cached = state
    rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return rng


def _write_all(*counts):
    return sum(counts)


class Checkpointer:
    """Writes checkpoints of a fit to ``path`` (local or fsspec URL).

    Parameters
    ----------
    path : str
        Checkpoint directory.
    every : int or None
        Checkpoint every this many iterations.
    seconds : float or None
        ...and/or when this many seconds passed since the last one.
    keep_last : int
        Checkpoints kept; older ones are deleted after each commit.
    meta : dict
        JSON-able record stored with every checkpoint (parameters and the
        fingerprint of X, checked on resume).
    storage_options : dict, optional
        fsspec options for remote paths.
    """

    def __init__(
        self,
        path,
        every: int | None = 10,
        seconds: float | None = None,
        keep_last: int = 2,
        meta: dict | None = None,
        storage_options: dict | None = None,
    ):
        self.path = str(path)
        self.every = every
        self.seconds = seconds
        self.keep_last = keep_last
        self.meta = dict(meta or {})
        self.storage_options = storage_options
        self._last_time = time.monotonic()
        self.last: store.CheckpointInfo | None = None

    def ensure_dir(self) -> None:
        fs, p = store._fs(self.path, self.storage_options)
        fs.makedirs(p, exist_ok=True)

    def due(self, iteration: int) -> bool:
        if self.every and iteration % self.every == 0:
            return True
        return self.seconds is not None and self.seconds > 0 and time.monotonic() - self._last_time >= self.seconds

    def save(self, runner, W: da.Array, Ht: da.Array, state: LoopState) -> store.CheckpointInfo:
        """Write W and Ht block by block on the workers, then commit ``state``.

        Factors read from a factor store (:mod:`dnmf.storage.factors`) are not
        copied: the checkpoint pins their generation and records where it is.
        """
        t0 = time.perf_counter()
        self.ensure_dir()
        name = store.new_name(state.iteration)
        stored = factors.generation_of(W)
        if stored is not None:
            return self._save_pointer(name, stored, W, Ht, state, t0)
        token = tokenize("dnmf-checkpoint", self.path, name, W.name, Ht.name)
        core = f"dnmf-ckpt-write-{token}"
        layer: dict[tuple, tuple] = {}
        keys = []
        for factor, A in (("W", W), ("Ht", Ht)):
            for i in range(A.numblocks[0]):
                key = (core, factor, i)
                layer[key] = (store.write_block, self.path, name, factor, i, (A.name, i, 0), self.storage_options)
                keys.append(key)
        out = f"dnmf-ckpt-done-{token}"
        layer[(out, 0)] = (np.atleast_1d, (_write_all, *keys))
        graph = HighLevelGraph.from_collections(out, layer, dependencies=[W, Ht])
        done = da.Array(graph, out, chunks=((1,),), dtype=np.int64)
        runner.compute(done)
        record = dict(self.meta)
        record.update(
            iteration=state.iteration,
            state=state.to_json(),
            W_chunks=list(W.chunks[0]),
            Ht_chunks=list(Ht.chunks[0]),
            n_components=int(W.shape[1]),
            dtype=str(W.dtype),
        )
        # commit() stores the record under the group's "state" attribute.
        self.last = store.commit(
            self.path, name, record, keep_last=self.keep_last, storage_options=self.storage_options
        )
        self._last_time = time.monotonic()
        logger.info("checkpoint %s at iteration %d (%.2f s)", self.last.path, state.iteration, time.perf_counter() - t0)
        return self.last

    def _save_pointer(self, name: str, stored: tuple[str, int], W, Ht, state: LoopState, t0: float):
        """A checkpoint of factors in a factor store: two small records, whatever the size of W."""
        root, generation = stored
        # Pinned before the checkpoint that names it is committed, unpinned after the
        # checkpoints beyond keep_last are gone: a crash between leaves an extra pin, never a
        # checkpoint whose factors were deleted.
        factors.pin(root, generation, self.storage_options)
        record = dict(self.meta)
        record.update(
            iteration=state.iteration,
            state=state.to_json(),
            factor_store={"root": root, "generation": generation, "layout": factors.Layout.of(W, Ht).to_json()},
            n_components=int(W.shape[1]),
            dtype=str(W.dtype),
        )
        self.last = store.commit(
            self.path, name, record, keep_last=self.keep_last, storage_options=self.storage_options
        )
        factors.unpin(root, self.keep_last, self.storage_options)
        self._last_time = time.monotonic()
        logger.info(
            "checkpoint %s at iteration %d (factors: generation %d of %s, %.3f s)",
            self.last.path,
            state.iteration,
            generation,
            root,
            time.perf_counter() - t0,
        )
        return self.last


def load(path, storage_options: dict | None = None):
    """The current checkpoint at ``path``: (record, W, Ht) with lazy block reads."""
    info = store.read_latest(str(path), storage_options)
    record = info.state
    if "factor_store" in record:
        where = record["factor_store"]
        layout = factors.Layout.from_json(where["layout"])
        W, Ht, _ = factors.open_generation(where["root"], int(where["generation"]), layout, storage_options)
        return info, record, W, Ht
    dtype = np.dtype(record["dtype"])
    k = int(record["n_components"])
    arrays = []
    for factor, chunks in (("W", record["W_chunks"]), ("Ht", record["Ht_chunks"])):
        name = f"dnmf-ckpt-{factor}-" + tokenize(info.path, factor)
        layer = {
            (name, i, 0): (store.read_block, info.root, info.name, factor, i, storage_options)
            for i in range(len(chunks))
        }
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
        arrays.append(da.Array(graph, name, chunks=(tuple(chunks), (k,)), meta=np.empty((0, 0), dtype=dtype)))
    return info, record, arrays[0], arrays[1]


def check_resumable(
    where: str,
    record: dict,
    params: dict,
    fingerprint: dict,
    *,
    max_iter: int | None = None,
    rel_tol: float = 1e-9,
) -> None:
    """Refuse to resume from a checkpoint written for other parameters or another X.

    ``params`` are the estimator's parameters that must not change on resume;
    ``fingerprint`` is the cheap identity of X (shape, blocking, statistics);
    ``max_iter`` (the resumed fit's) may not be below the checkpoint's iteration,
    which would otherwise return the checkpoint's factors as a fit of
    ``max_iter`` iterations; floats are compared with ``rel_tol`` (0: exactly,
    for statistics summed exactly).
    """
    done = int(record.get("state", {}).get("iteration", 0))
    if max_iter is not None and done > max_iter:
        raise ValueError(
            f"Cannot resume from {where} with max_iter={max_iter}: the checkpoint is at iteration "
            f"{done}. Give max_iter={done} or more (it counts the iterations before the "
            "checkpoint too), or fit afresh without resume=."
        )
    saved = record.get("params", {})
    for name, value in params.items():
        if name in saved and saved[name] != value:
            raise ValueError(
                f"Cannot resume from {where}: parameter {name!r} differs (checkpoint: "
                f"{saved[name]!r}, now: {value!r}). Use the checkpoint's parameters, or fit "
                "afresh without resume= (only max_iter, tol, max_time, verbose and the "
                "checkpoint settings may change on resume)."
            )
    have = record.get("fingerprint", {})
    for name, value in fingerprint.items():
        old = have.get(name)
        same = (
            math.isclose(old, value, rel_tol=rel_tol, abs_tol=1e-12 if rel_tol else 0.0)
            if isinstance(value, float) and isinstance(old, (int, float))
            else old == value
        )
        if not same:
            raise ValueError(
                f"Cannot resume from {where}: X differs from the checkpoint's in {name!r} "
                f"(checkpoint: {old!r}, now: {value!r}). Resume with the same matrix and "
                "blocking, or fit afresh without resume=."
            )
