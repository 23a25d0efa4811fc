"""NMF with its factors in a factor store: W is read and written by its row task every iteration.

The step graph is :func:`dnmf.nmf.graph.step`'s, unchanged; only where its
inputs come from and where its outputs go differ from :class:`NMFStep`:

- the state ``(W, Ht, HHt)`` is three lazy arrays that read generation
  ``t - 1`` of the store (:func:`dnmf.storage.factors.open_generation`), so
  row task ``i`` receives ``W_i`` from storage and nothing of W stays on the
  cluster between iterations;
- every block of the new ``W``, ``Ht`` and ``HHt`` goes to one write task
  into generation ``t``, and the iteration's scalar vector depends on all
  of them: when the loop has the scalars, generation ``t`` is complete, and
  :meth:`StoredNMFStep.observe` commits it;
- only the scalars are persisted, and the state has no lineage: a lost
  worker's tasks are recomputed from the reads of generation ``t - 1``,
  which stays until ``t`` is committed.

The values read are the values written (Zarr stores the float blocks as they
are) and the arithmetic is the same graph, so the factors equal the
in-memory fit's bit for bit. Frobenius loss only (the lagged loss check of
the other beta-losses may go back one iteration, to a generation already
deleted).
"""

from __future__ import annotations

import dask.array as da

from ..engine import generations
from ..storage import factors
from . import graph as blocked
from .step import NMFStep


class StoredNMFStep(generations.InFactorStore, NMFStep):
    """:class:`NMFStep` with ``(W, Ht, HHt)`` in the factor store at ``root`` (see the module doc)."""

    def __init__(self, root: str, *args, start: int = 0, storage_options: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.config.beta != 2 or self.holdout is not None:
            raise ValueError("factors in a factor store need the Frobenius loss and no holdout.")
        self._in_store(root, start, storage_options)

    def settle(self, runner, start):
        """Write the starting factors as generation ``start``, or continue from the generation they are read from."""
        self.runner = runner
        W, Ht = start
        self.layout = factors.Layout.of(W, Ht)
        generation = self._first_generation(runner, W, Ht, lambda: [("W", W), ("Ht", Ht), ("HHt", blocked.gram(Ht))])
        self.owners = None
        self.columns = self._columns(runner)
        return factors.open_generation(self.root, generation, self.layout, self.storage_options)

    def _written(self, generation: int, scalars: da.Array | None, W, Ht, HHt) -> da.Array:
        """``scalars`` (or a (1,) zero) once every block of ``W``, ``Ht`` and ``HHt`` is in ``generation``."""
        arrays = [("W", W), ("Ht", Ht), ("HHt", HHt)]
        return generations.written(self.root, generation, arrays, scalars, self.storage_options)

    def build(self, state, iteration):
        (W_new, Ht_new, HHt_new), scalars = super().build(state, iteration)
        assert self.layout is not None
        scalars = self._written(iteration, scalars, W_new, Ht_new, HHt_new)
        return factors.open_generation(self.root, iteration, self.layout, self.storage_options), scalars
