"""RatingsNMF with its factors in a factor store: the users' factors never sit in memory whole.

The step graph is :func:`dnmf.masked.graph.step`'s with ``users=``: row task
``i`` reads its block of ``U = [W, b]`` from generation ``t − 1`` and writes
its new block into generation ``t``; each column task then reads the new
``U`` back one block at a time, accumulating its items' Grams
(:func:`dnmf.masked.kernels.update_streamed`) instead of receiving every
user row its items were rated by, which for popular items is nearly all of
U. The items' ``V = [Hᵀ, c]`` (n, q) and, for implicit feedback, their Gram
are written into the same generation (V, like Hᵀ in
:class:`dnmf.nmf.stored.StoredNMFStep`, must fit a worker).

The sums are those of the in-memory step in the same order, so the factors
equal the in-memory fit's bit for bit. Only the "als" solver can stream
(ccd keeps per-entry residuals across coordinates, cg a pass over the
entries per step).

Cost per iteration, beyond the in-memory step: U written once, and read
``1 + 2·column_blocks`` times (row tasks once; each column task twice: the
Grams, then the loss at the new V). Memory per column task: its band of X,
its items' Grams (n_j × q² floats, at most
:data:`dnmf.masked.kernels.GRAM_BYTES` at once: a wider band reads U once
more per group of items) and one block of U.
"""

from __future__ import annotations

import dask.array as da

from ..engine import generations
from ..storage import factors
from . import graph as masked_graph
from .step import MaskedStep


class StoredMaskedStep(generations.InFactorStore, MaskedStep):
    """:class:`MaskedStep` with ``(U, V, GV)`` in the factor store at ``root`` (see the module doc)."""

    def __init__(self, root: str, *args, start: int = 0, storage_options: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.params.solver != "als":
            raise ValueError(
                f"factor_store needs solver='als'; got solver={self.params.solver!r}. "
                "Use solver='als', or leave factor_store=None."
            )
        self._in_store(root, start, storage_options)

    def _generation(self, number: int) -> factors.Generation:
        return factors.Generation(self.root, int(number), self.storage_options)

    def _open(self, generation: int):
        assert self.layout is not None
        U, V, GV = factors.open_generation(self.root, generation, self.layout, self.storage_options)
        return (U, V, GV if self.implicit else None)

    def _written(self, generation: int, scalars: da.Array | None, arrays: list) -> da.Array:
        return generations.written(self.root, generation, arrays, scalars, self.storage_options)

    def settle(self, runner, start):
        """Write the starting factors as generation ``start``, or continue from the generation they are read from."""
        U, V = start
        self.layout = factors.Layout.of(U, V, gram=self.params.k if self.implicit else 0)

        def arrays():
            out = [("W", U), ("Ht", V)]
            return out + [("HHt", masked_graph.factor_gram(V, self.params))] if self.implicit else out

        generation = self._first_generation(runner, U, V, arrays)
        # Owners only: what the row bands touch serves to ship U's rows to the item tasks
        # (here they read U's blocks), and it holds an index per user and column block
        # (150 MB on a worker for 4.8M users × 4 blocks: a 400 MiB worker died of it).
        self._place(runner, touched=False)
        return self._open(generation)

    def build(self, state, iteration):
        U, V, GV = state
        target = self._generation(iteration)
        U2, V2, G2, s = masked_graph.step(
            self.bands,
            U,
            V,
            GV,
            self.params,
            touched_by=self.touched,
            owners=self.owners,
            users=target,
            col_owners=self.col_owners,
        )
        # U's blocks are written inside the step (its column tasks read them back); the
        # scalars depend on those column tasks, so also on every block of U.
        arrays = [("Ht", V2)] + ([("HHt", G2)] if self.implicit else [])
        return self._open(iteration), self._written(iteration, s, arrays)
