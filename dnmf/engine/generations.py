"""Graphs that write a step's factors into a generation of a factor store (:mod:`dnmf.storage.factors`).

Shared by the estimators whose factors can live in a factor store
(:class:`dnmf.nmf.stored.StoredNMFStep`, :class:`dnmf.masked.stored.StoredMaskedStep`):
one write task per block, run by the worker that computed the block, and a
result that depends on all of them, so that the loop has an iteration's
scalars only once its generation is complete.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..storage import factors
from .checkpoint import LoopState
from .graph import pick
from .loop import Report, Verdict

#: Scheduler priority of the write tasks (Dask's default is 0: higher runs first).
WRITE_PRIORITY = 100


def block_source(A: da.Array, i: int):
    """What a write task takes for block ``i`` of ``A``: the step's own pick of it, inlined.

    A block of a step's output is often a task that picks it from its task's
    results (:func:`dnmf.engine.graph.pick`). The write task runs that pick
    itself, so the block depends on the producing task directly and the pick
    task is never scheduled: one task fewer per block and iteration (the
    block has no other consumer in a factor-store step). Other blocks are
    taken by key.
    """
    key = (A.name, i, 0)
    task = A.__dask_graph__().get(key)
    if isinstance(task, tuple) and len(task) == 3 and task[0] is pick and isinstance(task[1], tuple):
        return task
    return key


def _after(scalars, *written):
    """The scalars, once every write they wait for has run."""
    return scalars


def written(
    root: str,
    generation: int,
    arrays: list[tuple[str, da.Array]],
    scalars: da.Array | None,
    storage_options: dict | None = None,
) -> da.Array:
    """``scalars`` (or a (1,) zero) once every block of the named ``arrays`` is in ``generation``.

    ``arrays`` are ``(factor name, tall array)`` pairs, written block by
    block with :func:`dnmf.storage.factors.write_block` at priority
    :data:`WRITE_PRIORITY`: a task's new block leaves the worker's memory
    before the next task starts, or a worker with room for a few blocks only
    would hold many of them.
    """
    token = tokenize("dnmf-factors-write", root, generation, [(f, A.name) for f, A in arrays])
    core = f"dnmf-factors-write-{token}"
    layer: dict = {}
    keys = []
    for factor, A in arrays:
        for i in range(A.numblocks[0]):
            key = (core, factor, i)
            layer[key] = (factors.write_block, root, generation, factor, i, block_source(A, i), storage_options)
            keys.append(key)
    name = f"dnmf-factors-written-{token}"
    deps = [A for _, A in arrays]
    if scalars is None:
        layer[(name, 0)] = (_after, np.zeros(1), *keys)
        chunks: tuple = ((1,),)
    else:
        layer[(name, 0)] = (_after, (scalars.name, 0), *keys)
        deps.append(scalars)
        chunks = scalars.chunks
    with dask.annotate(priority=WRITE_PRIORITY):
        graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=np.float64)


class InFactorStore:
    """What every step whose state lives in a factor store does alike (a mixin before the model's step).

    The subclass sets ``root``, ``storage_options``, ``layout`` and ``start``
    (the iteration of factors handed to ``settle`` that are not in the store
    yet); its ``build`` returns lazy reads of the new generation and scalars
    that depend on every write of it (:func:`written`).
    """

    root: str
    storage_options: dict | None
    layout: factors.Layout | None
    start: int
    #: The state is reads of a generation: there is no lineage to cut.
    lineage_free = True

    def _in_store(self, root: str, start: int, storage_options: dict | None) -> None:
        self.root = root
        self.storage_options = storage_options
        self.layout = None
        self.start = start

    def _first_generation(self, runner, A: da.Array, B: da.Array, arrays) -> int:
        """The generation the fit goes on from, committed before the next iteration writes anything.

        Factors read from a generation of this store continue from it (a
        checkpoint's, a recovery's); others are written as generation
        ``start`` (``arrays()``: what to write). After a recovery, the
        generations past this one, about to be rewritten, are no longer current.
        """
        stored = factors.generation_of(A)
        if stored is not None and stored[0] == self.root and factors.generation_of(B) == stored:
            generation = stored[1]
        else:
            generation = self.start
            runner.compute(written(self.root, generation, arrays(), None, self.storage_options))
        assert self.layout is not None
        factors.commit(self.root, generation, self.layout, self.storage_options)
        return generation

    @property
    def rolls_back(self) -> bool:
        """Never (a generation once left is deleted)."""
        return False

    def persist(self, runner, state, scalars):
        """Persist only the scalars: their graph writes the new generation (the state reads it)."""
        return state, runner.persist(scalars)

    def recover(self):
        A, B, st = super().recover()
        self.start = st.iteration
        return A, B, st

    def observe(self, st: LoopState, iteration: int, s: np.ndarray, report: Report) -> Verdict:
        """Commit the iteration's generation (complete: the scalars waited for its writes), then judge it."""
        assert self.layout is not None
        factors.commit(self.root, iteration, self.layout, self.storage_options)
        return super().observe(st, iteration, s, report)  # type: ignore[misc]
