"""RatingsNMF's plug-in for the engine loop: one masked step per iteration, stop when the objective stalls.

The state on the cluster is ``(U, V, GV)``: ``U = [W, b]`` (users),
``V = [Hᵀ, c]`` (items) and, for implicit feedback, the Gram of the item
factors that the Gram trick needs (None otherwise). Checkpoints hold U and V.
The fit converges when the objective decreased by at most ``tol`` times its
previous value.
"""

from __future__ import annotations

from collections.abc import Callable

import dask
import dask.array as da
import numpy as np

from ..engine.checkpoint import LoopState
from ..engine.loop import Report, Verdict
from ..storage.placement import row_ranges, worker_addresses
from . import graph as masked_graph
from .kernels import MaskedParams

#: Called after lost workers: ``(bands, U, V, loop_state)`` to continue from.
Recover = Callable[[], tuple]


class MaskedStep:
    """The :class:`dnmf.engine.loop.Step` of masked NMF (explicit ratings and implicit feedback)."""

    def __init__(self, bands: masked_graph.Bands, params: MaskedParams, tol: float, recover: Recover | None = None):
        self.bands = bands
        self.params = params
        self.tol = tol
        self._recover = recover
        self.implicit = params.feedback == "implicit"
        self.not_converged_hint = f" The objective had not stopped decreasing by tol={tol}. Increase max_iter or tol."
        self.owners: tuple[str, ...] | None = None
        self.col_owners: tuple[str, ...] | None = None
        self.touched: da.Array | None = None
        self.items: da.Array | None = None

    @property
    def rolls_back(self) -> bool:
        """Whether :meth:`observe` may go back to the state an iteration started from.

        It never does (a stalled objective stops the fit on the new state), so
        the loop keeps no reference to that state while the iteration runs;
        a subclass that overrides :meth:`observe` may.
        """
        return type(self).observe is not MaskedStep.observe

    def settle(self, runner, factors):
        (U,) = runner.persist_rows(factors[0])
        (V,) = runner.persist(factors[1])
        GV = runner.persist(masked_graph.factor_gram(V, self.params))[0] if self.implicit else None
        self._place(runner)
        return (U, V, GV)

    def _place(self, runner, touched: bool = True) -> None:
        """On a cluster: the worker of each row band and of each column band, and what each worker's bands touch.

        Sets ``owners`` and ``col_owners`` (contiguous ranges, where the bands
        were scattered or persisted), and ``touched`` and ``items``
        (:func:`dnmf.masked.graph.touched` and :func:`~dnmf.masked.graph.touched_items`,
        persisted where their tasks run). Band tasks then run where their bands
        and factor blocks are, and only the touched factor rows travel (see
        :func:`dnmf.masked.graph.step`). The Dask config key ``dnmf.placement``
        (default True) turns this off. With ``touched=False``, or on a cluster
        of one worker, ``touched`` and ``items`` are None.
        """
        self.owners = self.col_owners = self.touched = self.items = None
        if runner.client is None or not dask.config.get("dnmf.placement", True):
            return
        # One snapshot of the workers for both sides: the row and column ranges then agree.
        workers = worker_addresses(runner.client)
        self.owners, sizes = row_ranges(runner.client, len(self.bands.row_chunks), workers)
        self.col_owners = row_ranges(runner.client, len(self.bands.col_chunks), workers)[0]
        if not touched or len(sizes) < 2:
            # One worker holds every band: no factor row crosses a process, and finding the
            # touched ones would be one more pass over the bands.
            return
        (self.touched,) = runner.persist_rows(masked_graph.touched(self.bands, sizes))
        (self.items,) = runner.persist_rows(masked_graph.touched_items(self.touched, len(self.bands.col_chunks)))

    def build(self, state, iteration):
        U, V, GV = state
        U2, V2, G2, s = masked_graph.step(
            self.bands,
            U,
            V,
            GV,
            self.params,
            touched_by=self.touched,
            owners=self.owners,
            items_by=self.items,
            col_owners=self.col_owners,
        )
        return (U2, V2, G2 if self.implicit else None), s

    def observe(self, st: LoopState, iteration: int, s: np.ndarray, report: Report) -> Verdict:
        loss = float(s[masked_graph.S_LOSS])
        detail = f"; data {s[masked_graph.S_DATA]:.6g}, penalty {s[masked_graph.S_PENALTY]:.6g}"
        stop = not report(iteration, loss, detail)
        if len(st.history) > 1 and self.tol > 0:
            prev = st.history[-2]
            if prev - loss <= self.tol * abs(prev):
                return Verdict(converged=True, stop=stop)
        return Verdict(stop=stop)

    def finish(self, runner, state, st: LoopState, converged: bool, report: Report) -> float:
        return st.history[-1] if st.history else float("nan")

    def recover(self):
        assert self._recover is not None
        self.bands, U, V, st = self._recover()
        return U, V, st
