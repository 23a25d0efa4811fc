"""Dask graphs of one masked NMF step (ratings, implicit feedback) and of fold-in.

No loop, no I/O and no Client here; the kernels are in :mod:`dnmf.masked`.

Layout. X is (m, n) with blocks ``X[i, j]`` (CSR: stored entries observed;
NumPy: non-NaN entries observed). The state is kept tall and augmented with
the biases: ``U = [W, b]`` (m, q) chunked like X's rows and ``V = [Hᵀ, c]``
(n, q) chunked like X's columns (``q = k + 1`` with biases, else ``k``).

A masked half-step needs every observed entry of a row together (each row
has its own Gram), so the tasks work on *bands*: a row band is the blocks
``X[i, :]`` side by side (CSR, m_i × n) and a column band the blocks
``X[:, j]`` stacked and transposed (CSR of Xᵀ, n_j × m). :class:`Bands`
says where a task gets them:

- in-memory X (:func:`bands_from_memory`, :func:`persist_bands`): both
  orientations are built once and kept on the workers: twice X's memory,
  one O(nnz) transposition per fit;
- store-backed X (:func:`bands_from_store`): each task reads its blocks
  itself (twice per iteration: once per orientation) and the column tasks
  transpose theirs (one CSR→CSC conversion, O(nnz), per block per
  iteration); nothing of X is ever held between tasks.

One step (:func:`step`) is three stages:

A. one task per row band ``i``: update ``U_i`` with all of ``V`` (and, for
   the implicit model, ``VᵀV``); return its penalty and Gram;
B. one task per column band ``j``: update ``V_j`` with all of the new ``U``
   (every A task's output, stacked once by one task and shared: O(m·q)
   numbers per column task); return its penalty, Gram and the loss at its
   observed entries (new U, new V), scored in the update's pass for "cg";
C. one task: the loss of the step and the new ``VᵀV``.

Loss terms are exact sums (:func:`dnmf.masked.exact_sum`), so they do not
depend on the blocking; Grams (implicit only) are summed by fixed-order
trees. Cost per step: O(nnz·q² + (m+n)·q³) ("als") or O(nnz·q·sweeps)
("ccd"), plus the implicit model's O((m+n)·q²) Grams.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..engine.blocks import RowSubset, aligned_inputs, take_rows
from ..engine.graph import (
    assemble,
    pick,
    pick_at_source,
    place_blocks,
    place_rows,
    place_sums,
    row_groups,
    sum_list,
    tree_sum,
    tree_top,
    union_all,
    x_block_refs,
    x_col_refs,
    x_row_refs,
)
from ..nmf import init
from ..storage.factors import Generation
from ..storage.placement import scatter_rows
from . import kernels as masked

# Layout of a step's scalar vector.
S_LOSS = 0  # objective after the step: data term + penalties
S_DATA = 1  # data term (explicit: Σ_Ω squared error)
S_PENALTY = 2  # penalties of both sides
N_SCALARS = 3


@dataclass(frozen=True)
class Bands:
    """Where step tasks find the row and column bands of X.

    ``row_ref(i)`` / ``col_ref(j)`` give a task argument (a key, or an
    inlined task that reads and assembles the blocks); ``deps`` are the
    collections those refer to; ``token`` identifies X in task names.
    """

    shape: tuple[int, int]
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]
    row_ref: Callable[[int], Any]
    col_ref: Callable[[int], Any]
    deps: tuple
    token: str


def _meta(dtype=np.float64) -> np.ndarray:
    return np.empty((0, 0), dtype=dtype)


def _csr_meta() -> sp.csr_matrix:
    return sp.csr_matrix((0, 0))


def _offsets(chunks) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def bands_from_memory(X: sp.csr_matrix, row_chunks, col_chunks, client=None) -> tuple[Bands, da.Array, da.Array]:
    """Bands of an in-memory CSR X (its observed entries), built once.

    Returns the Bands and the two band arrays (row bands (m, n) chunked
    ``(row_chunks, (n,))``, column bands (n, m) chunked ``(col_chunks, (m,))``);
    on a distributed ``client`` they are scattered to the workers.
    """
    X = masked.observed(X)
    m, n = X.shape
    r_off, c_off = _offsets(row_chunks), _offsets(col_chunks)
    rows = {i: X[r_off[i] : r_off[i + 1]] for i in range(len(row_chunks))}
    Xt = sp.csr_matrix(X.T)
    cols = {j: Xt[c_off[j] : c_off[j + 1]] for j in range(len(col_chunks))}
    token = tokenize("dnmf-masked-bands", X, tuple(row_chunks), tuple(col_chunks))
    if client is not None:
        import uuid

        token = uuid.uuid4().hex  # fresh keys: see dnmf.base.inputs.from_memory
    rname, cname = f"dnmf-rowbands-{token}", f"dnmf-colbands-{token}"
    rgraph = {(rname, i, 0): b for i, b in rows.items()}
    cgraph = {(cname, j, 0): b for j, b in cols.items()}
    if client is not None:
        # Each worker gets a contiguous range of row bands (and of column bands): see
        # dnmf.storage.placement.
        rgraph = scatter_rows(client, rgraph)
        cgraph = scatter_rows(client, cgraph)
    R = da.Array(rgraph, rname, chunks=(tuple(row_chunks), (n,)), meta=_csr_meta())
    Cb = da.Array(cgraph, cname, chunks=(tuple(col_chunks), (m,)), meta=_csr_meta())
    return _bands_of(R, Cb, token), R, Cb


def _bands_of(R: da.Array, Cb: da.Array, token: str) -> Bands:
    return Bands(
        shape=(R.shape[0], R.shape[1]),
        row_chunks=R.chunks[0],
        col_chunks=Cb.chunks[0],
        row_ref=lambda i: (R.name, i, 0),
        col_ref=lambda j: (Cb.name, j, 0),
        deps=(R, Cb),
        token=token,
    )


def band_arrays(X: da.Array) -> tuple[da.Array, da.Array]:
    """Lazy row-band and column-band arrays of a Dask X (to persist once)."""
    xref, xdeps = x_block_refs(X)
    nI, nJ = X.numblocks
    token = tokenize("dnmf-masked-bands", X.name)
    rname, cname = f"dnmf-rowbands-{token}", f"dnmf-colbands-{token}"
    rlayer = {(rname, i, 0): (masked.row_band, [xref(i, j) for j in range(nJ)]) for i in range(nI)}
    clayer = {(cname, j, 0): (masked.col_band, [xref(i, j) for i in range(nI)]) for j in range(nJ)}
    m, n = X.shape
    R = da.Array(
        HighLevelGraph.from_collections(rname, rlayer, dependencies=xdeps),
        rname,
        chunks=(X.chunks[0], (n,)),
        meta=_csr_meta(),
    )
    Cb = da.Array(
        HighLevelGraph.from_collections(cname, clayer, dependencies=xdeps),
        cname,
        chunks=(X.chunks[1], (m,)),
        meta=_csr_meta(),
    )
    return R, Cb


def persist_bands(X: da.Array, runner) -> tuple[Bands, da.Array, da.Array]:
    """Build both orientations of a Dask X once and keep them on the workers.

    Each worker holds a contiguous range of row bands and one of column bands
    (:meth:`dnmf.engine.runner.Runner.persist_rows`), as :func:`bands_from_memory`
    scatters them: the step's band tasks are placed there.
    """
    R, Cb = runner.persist_rows(*band_arrays(X))
    return _bands_of(R, Cb, tokenize("dnmf-masked-bands", X.name)), R, Cb


def bands_from_store(X: da.Array, read_ahead: bool = False) -> Bands:
    """Bands read from storage by the tasks that use them (never held).

    With ``read_ahead`` each band task, once it has its blocks, starts
    reading those of the band its process will likely build next
    (:func:`dnmf.engine.graph.x_row_refs`); the same bands either way.
    """
    xrow, xdeps = x_row_refs(X, read_ahead)
    xcol, _ = x_col_refs(X, read_ahead)
    return Bands(
        shape=X.shape,
        row_chunks=X.chunks[0],
        col_chunks=X.chunks[1],
        row_ref=lambda i: (masked.row_band, xrow(i)),
        col_ref=lambda j: (masked.col_band, xcol(j)),
        deps=tuple(xdeps),
        token=tokenize("dnmf-masked-store", X.name),
    )


# --------------------------------------------------------------------------
# Small task helpers
# --------------------------------------------------------------------------


def _exact_list(parts):
    return masked.exact_add(*parts)


def _summary_list(parts):
    return masked.combine_summaries(parts)


def _concat(blocks):
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


# --------------------------------------------------------------------------
# Validation pass and initial state
# --------------------------------------------------------------------------


def summary(X: da.Array, owners: tuple[str, ...] | None = None) -> da.Array:
    """One pass over X's blocks: a 1-element object array holding
    ``masked.combine_summaries`` of every block (exact, order-free).

    ``owners`` (optional): the worker of each row block, where its blocks'
    tasks are placed (:meth:`dnmf.engine.runner.Runner.row_owners`)."""
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-masked-summary", X.name)
    core = f"dnmf-masked-summary-core-{token}"
    name = f"dnmf-masked-summary-{token}"
    layer: dict = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            layer[(core, i, j)] = (masked.block_summary, xref(i, j))
            keys.append((core, i, j))
    top = tree_top(layer, core + "-sum", keys, _summary_list)
    out = {(name, 0): (_boxed, top)}
    graph = assemble(core, layer, xdeps, {name: out}, place_blocks(owners, X.numblocks, core))
    return da.Array(graph, name, chunks=((1,),), dtype=object)


def confidence_total(X: da.Array, p: masked.MaskedParams, owners: tuple[str, ...] | None = None) -> da.Array:
    """One pass over X's blocks: a 1-element object array holding the exact sum
    of the implicit confidences at the observed entries (:func:`masked.block_confidence`);
    ``owners`` as in :func:`summary`."""
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-masked-confidence", X.name, p)
    core = f"dnmf-masked-confidence-core-{token}"
    name = f"dnmf-masked-confidence-{token}"
    layer: dict = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            layer[(core, i, j)] = (masked.block_confidence, xref(i, j), p)
            keys.append((core, i, j))
    top = tree_top(layer, core + "-sum", keys, _exact_list)
    out = {(name, 0): (_boxed, top)}
    graph = assemble(core, layer, xdeps, {name: out}, place_blocks(owners, X.numblocks, core))
    return da.Array(graph, name, chunks=((1,),), dtype=object)


def _boxed(value):
    out = np.empty(1, dtype=object)
    out[0] = value
    return out


def _init_block(seed, tag, start, stop, k, scale, biases):
    W = init.random_block(seed, tag, start, stop, k, scale, np.float64)
    if not biases:
        return W
    return np.hstack([W, np.zeros((stop - start, 1))])


def initial_state(chunks: tuple[int, ...], p: masked.MaskedParams, seed: int, tag: str, scale: float) -> da.Array:
    """``|scale·N(0, 1)|`` factors (bias column 0): (sum(chunks), q), one column chunk.

    The random numbers come from :mod:`dnmf.nmf.init`'s fixed panels, so they do
    not depend on the blocking.
    """
    name = "dnmf-masked-init-" + tokenize(chunks, p.k, seed, tag, scale, p.biases)
    off = _offsets(chunks)
    layer = {
        (name, i, 0): (_init_block, seed, tag, int(off[i]), int(off[i + 1]), p.k, scale, p.biases)
        for i in range(len(chunks))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=(tuple(chunks), (p.q,)), meta=_meta())


def factor_gram(A: da.Array, p: masked.MaskedParams) -> da.Array:
    """(k, k) Gram of the factor columns of a tall state array (fixed-order tree)."""
    token = tokenize("dnmf-masked-gram", A.name, p.k)
    core = f"dnmf-masked-gram-core-{token}"
    name = f"dnmf-masked-gram-{token}"
    layer: dict = {}
    keys = []
    for i in range(A.numblocks[0]):
        layer[(core, i)] = (masked.gram, (A.name, i, 0), p)
        keys.append((core, i))
    top = tree_top(layer, core, keys, sum_list)
    out = {(name, 0, 0): (operator.getitem, top, slice(None))}
    graph = assemble(core, layer, [A], {name: out})
    return da.Array(graph, name, chunks=((p.k,), (p.k,)), meta=_meta())


# --------------------------------------------------------------------------
# One iteration
# --------------------------------------------------------------------------


def _compact(band: sp.csr_matrix, parts: list, offsets: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(band', F)`` with the band's columns renumbered into the rows of ``F``.

    ``parts`` are the other side's blocks in order, each whole or a
    :class:`~dnmf.engine.blocks.RowSubset` of the rows the band touches
    (block-local rows; ``offsets`` place block ``j`` at ``offsets[j]``).
    ``F`` stacks what was shipped; every entry of the band keeps its order
    and value, so a kernel gives the same bits as with the whole factor.
    """
    if not any(isinstance(part, RowSubset) for part in parts):
        return band, _concat(parts)
    rows, values = [], []
    for j, part in enumerate(parts):
        if isinstance(part, RowSubset):
            rows.append(part.rows + offsets[j])
            values.append(part.values)
        else:
            rows.append(np.arange(offsets[j], offsets[j] + part.shape[0]))
            values.append(part)
    index = np.concatenate(rows)
    renumbered = np.searchsorted(index, band.indices).astype(band.indices.dtype)
    compact = sp.csr_matrix((band.data, renumbered, band.indptr), shape=(band.shape[0], index.size))
    return compact, np.ascontiguousarray(np.concatenate(values))


@aligned_inputs
def _row_task(band, U, v_blocks, G, p: masked.MaskedParams, col_offsets=None):
    band, V = _compact(band, v_blocks, col_offsets) if col_offsets is not None else (band, _concat(v_blocks))
    U_new = masked.update(band, U, V, p, G)
    out = {"U": U_new, "pen": masked.penalty(U_new, np.diff(band.indptr), p)}
    if p.feedback == "implicit":
        out["gram"] = masked.gram(U_new, p)
    return out


@aligned_inputs
def _col_task(band, V, u_blocks, G, p: masked.MaskedParams, row_offsets=None):
    band, U = _compact(band, u_blocks, row_offsets) if row_offsets is not None else (band, _concat(u_blocks))
    V_new, loss = masked.update_with_loss(band, V, U, p, G)
    out = {"V": V_new, "pen": masked.penalty(V_new, np.diff(band.indptr), p), "loss": loss}
    if p.feedback == "implicit":
        out["gram"] = masked.gram(V_new, p)
    return out


@aligned_inputs
def _col_task_streamed(band, V, written, users: Generation, row_offsets, G, p: masked.MaskedParams):
    """:func:`_col_task` with the users' factors read from ``users``, one row block at a time."""
    V_new, loss = masked.update_streamed(band, V, lambda i: users.read("W", i), row_offsets, p, G)
    out = {"V": V_new, "pen": masked.penalty(V_new, np.diff(band.indptr), p), "loss": loss}
    if p.feedback == "implicit":
        out["gram"] = masked.gram(V_new, p)
    return out


def _write_users(users: Generation, i: int, U_i):
    return users.write("W", i, U_i)


def _touched_by_band(band: sp.csr_matrix, col_offsets: np.ndarray) -> tuple:
    """Per column block j: ``(its columns the band touches, the band's rows with an entry there)``."""
    rows_of_entries = np.repeat(np.arange(band.shape[0]), np.diff(band.indptr))
    out = []
    for j in range(len(col_offsets) - 1):
        inside = (band.indices >= col_offsets[j]) & (band.indices < col_offsets[j + 1])
        out.append((np.unique(band.indices[inside]) - col_offsets[j], np.unique(rows_of_entries[inside])))
    return tuple(out)


def _union_touched(parts: list, row_starts: list) -> tuple:
    """One group of row bands: per column block, the union of the columns and the rows (group-local)."""
    out = []
    for j in range(len(parts[0])):
        cols = union_all([part[j][0] for part in parts])
        rows = np.concatenate([part[j][1] + start for part, start in zip(parts, row_starts, strict=True)])
        out.append((cols, rows))
    return tuple(out)


def touched(bands: Bands, sizes: tuple[int, ...]) -> da.Array:
    """What each group of row bands touches, per column block (one pass over the row bands).

    ``sizes`` splits the row bands into consecutive groups (a worker's range).
    Block ``g`` of the result (chunks ``sizes``; a carrier to persist) is a
    tuple over column blocks ``j`` of ``(columns of block j, rows of the
    group)`` that have an observed entry in both, both sorted and local.
    """
    groups = row_groups(sizes, len(bands.row_chunks))
    col_offsets = _offsets(bands.col_chunks)
    token = tokenize("dnmf-masked-touched", bands.token, tuple(sizes))
    core, name = f"dnmf-masked-touched-core-{token}", f"dnmf-masked-touched-{token}"
    layer: dict = {}
    out = {}
    for g, members in enumerate(groups):
        for i in members:
            layer[(core, i)] = (_touched_by_band, bands.row_ref(i), col_offsets)
        starts = [int(sum(bands.row_chunks[members.start : i])) for i in members]
        out[(name, g, 0)] = (_union_touched, [(core, i) for i in members], starts)
    graph = assemble(core, layer, list(bands.deps), {name: out})
    return da.Array(graph, name, chunks=(tuple(sizes), (1,)), dtype=np.intp)


def touched_items(touched_by: da.Array, n_cols: int) -> da.Array:
    """The item columns of :func:`touched`, one block per column block ``j`` and group ``g``.

    Block ``(j, g)`` (chunks ``((1,) * n_cols, (1,) * groups)``; a carrier to persist) holds
    the columns of block ``j`` that group ``g`` touches. Persisted with column block ``j``'s
    worker holding its row of blocks (:meth:`dnmf.engine.runner.Runner.persist_rows`), it is
    where the tasks that take those rows of ``V_j`` run: the whole carrier of :func:`touched`,
    which the group's own tasks read, would otherwise travel to them every iteration.
    """
    token = tokenize("dnmf-masked-items", touched_by.name, n_cols)
    name = f"dnmf-masked-items-{token}"
    n_groups = touched_by.numblocks[0]
    layer = {(name, j, g): (_items_of, (touched_by.name, g, 0), j) for j in range(n_cols) for g in range(n_groups)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[touched_by])
    return da.Array(graph, name, chunks=((1,) * n_cols, (1,) * n_groups), dtype=np.intp)


def _items_of(group_touched, j):
    return group_touched[j][0]


def _take_items(V_j, group_touched, j):
    return take_rows(V_j, group_touched[j][0])


def _take_users(u_blocks, group_touched, j, n_rows):
    rows = group_touched[j][1]
    stacked = _concat(u_blocks)
    return RowSubset(rows, np.ascontiguousarray(stacked[rows]), n_rows)


@aligned_inputs
def _finish(data, pen, GU, GV, p: masked.MaskedParams):
    data_v = masked.exact_value(data)
    if p.feedback == "implicit":
        data_v += float(np.vdot(GU, GV))
    pen_v = masked.exact_value(pen)
    loss = masked.exact_value(masked.exact_add(data, pen))
    if p.feedback == "implicit":
        loss = data_v + pen_v
    return {"scalars": np.array([loss, data_v, pen_v]), "GV": GV}


def step(
    bands: Bands,
    U: da.Array,
    V: da.Array,
    GV: da.Array | None,
    p: masked.MaskedParams,
    touched_by: da.Array | None = None,
    owners: tuple[str, ...] | None = None,
    users: Generation | None = None,
    items_by: da.Array | None = None,
    col_owners: tuple[str, ...] | None = None,
):
    """Build the graph of one alternating step (U then V).

    Parameters
    ----------
    bands : Bands
    U : dask array (m, q), chunked like X's rows, one column chunk
    V : dask array (n, q), chunked like X's columns, one column chunk
    GV : dask array (k, k) or None
        ``V[:, :k]ᵀ V[:, :k]`` (implicit model only).
    p : dnmf.masked.MaskedParams
    touched_by : dask array, optional
        :func:`touched` of these bands, persisted: each group of row bands
        then receives only the rows of V's blocks it touches, and each column
        task only the rows of U that its band touches, from each group (as
        Spark's ALS ships a user block's factors only to the item blocks that
        rated them). Same bits.
    owners : tuple of str, optional
        The worker of each row band: its task and picks are placed there (a
        preference, see :func:`dnmf.engine.graph.assemble`).
    items_by : dask array, optional
        With ``touched_by``: :func:`touched_items` of it, persisted where
        ``col_owners`` says. The tasks that take the touched rows of ``V_j``
        then read their columns there, instead of the group's carrier.
    col_owners : tuple of str, optional
        With ``owners``: the worker of each column band (where it was
        scattered, see :mod:`dnmf.storage.placement`). Its column task, its
        block of ``V`` and the rows taken from it are placed there; the sums
        of the step's losses, penalties and Grams go where the fewest parts
        move, and what they read of another worker's band results is picked
        there (:func:`dnmf.engine.graph.pick_at_source`), so that a band
        result (which holds its new factor rows) never travels whole.
    users : dnmf.storage.factors.Generation, optional
        Factors out of core (solver "als" only): each row band's new ``U``
        block is written into this generation as block ``"W"/i`` (by the
        worker of its row task), and each column task reads the blocks back
        one at a time (:func:`dnmf.masked.kernels.update_streamed`) instead
        of receiving the rows of U it touches. Same bits; no task ever holds
        more of U than one block.

    Returns
    -------
    U_new, V_new : dask arrays, same layouts
    GV_new : dask array (k, k) or None
    scalars : dask array (N_SCALARS,), float64 (see ``S_*``)
    """
    implicit = p.feedback == "implicit"
    if implicit and GV is None:
        raise ValueError("The implicit model's step needs GV, the Gram of V's factors.")
    p_items = masked.item_side(p)
    nI, nJ = len(bands.row_chunks), len(bands.col_chunks)
    token = tokenize(
        "dnmf-masked-step",
        bands.token,
        U.name,
        V.name,
        None if GV is None else GV.name,
        p,
        None if touched_by is None else touched_by.name,
        owners,
        users,
        None if items_by is None else items_by.name,
        col_owners,
    )
    if users is not None and p.solver != "als":
        raise ValueError(f"Factors in a factor store need solver='als'; got solver={p.solver!r}.")
    core = f"dnmf-masked-step-{token}"
    u_name, v_name = f"dnmf-masked-U-{token}", f"dnmf-masked-V-{token}"
    g_name, s_name = f"dnmf-masked-GV-{token}", f"dnmf-masked-scalars-{token}"
    gv_key = (GV.name, 0, 0) if implicit else None
    v_keys = [(V.name, j, 0) for j in range(nJ)]

    layer: dict = {}
    groups: list[range] = []
    if touched_by is not None:
        if touched_by.shape[0] != nI:
            raise ValueError(f"touched_by covers {touched_by.shape[0]} row bands; expected touched() of these {nI}.")
        groups = row_groups(touched_by.chunks[0], nI)
        for g in range(len(groups)):
            for j in range(nJ):
                layer[(f"{core}-Vs", g, j)] = (
                    (take_rows, v_keys[j], (items_by.name, j, g))
                    if items_by is not None
                    else (_take_items, v_keys[j], (touched_by.name, g, 0), j)
                )
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    col_offsets = _offsets(bands.col_chunks)
    if touched_by is None:
        # Every band task needs the whole other side: stack its blocks once
        # per half-step and share the result (on threads, by reference)
        # rather than once per task: at 1M users x k = 32 each column task's
        # copy of U took 0.15 s beside its 0.18 s update (and at 3M users it
        # is 790 MB), most of the fit's page faults with it.
        layer[(f"{core}-Vall", 0)] = (_concat, v_keys)
    for i in range(nI):
        if touched_by is not None:
            v_parts = [(f"{core}-Vs", group_of[i], j) for j in range(nJ)]
            layer[(f"{core}-A", i)] = (_row_task, bands.row_ref(i), (U.name, i, 0), v_parts, gv_key, p, col_offsets)
        else:
            v_all = [(f"{core}-Vall", 0)]
            layer[(f"{core}-A", i)] = (_row_task, bands.row_ref(i), (U.name, i, 0), v_all, gv_key, p)
    # A band task's parts are read by picks inlined into the tasks that use them, not by
    # pick tasks of their own: its result holds nothing those tasks would not (the new
    # factor rows are an output of the step anyway). Where such a task runs on another
    # worker, its pick becomes a task on the band's worker (_place_columns).
    u_keys = [(pick, (f"{core}-A", i), "U") for i in range(nI)]
    if touched_by is None and users is None:
        layer[(f"{core}-Uall", 0)] = (_concat, u_keys)
    if users is not None:
        for i in range(nI):
            layer[(f"{core}-Uw", i)] = (_write_users, users, i, u_keys[i])
    group_starts = _offsets([sum(bands.row_chunks[i] for i in members) for members in groups])
    if touched_by is not None and users is None:
        for g, members in enumerate(groups):
            for j in range(nJ):
                layer[(f"{core}-Us", g, j)] = (
                    _take_users,
                    [u_keys[i] for i in members],
                    (touched_by.name, g, 0),
                    j,
                    int(group_starts[g + 1] - group_starts[g]),
                )
    row_pen = [(pick, (f"{core}-A", i), "pen") for i in range(nI)]
    gu_key = None
    if implicit:
        grams = [(pick, (f"{core}-A", i), "gram") for i in range(nI)]
        gu_key = tree_top(layer, f"{core}-GU", grams, sum_list)

    col_parts, col_pen, col_grams = [], [], []
    row_offsets = _offsets(bands.row_chunks)
    for j in range(nJ):
        if users is not None:
            layer[(f"{core}-B", j)] = (
                _col_task_streamed,
                bands.col_ref(j),
                (V.name, j, 0),
                [(f"{core}-Uw", i) for i in range(nI)],
                users,
                row_offsets,
                gu_key,
                p_items,
            )
        elif touched_by is not None:
            u_parts = [(f"{core}-Us", g, j) for g in range(len(groups))]
            layer[(f"{core}-B", j)] = (
                _col_task,
                bands.col_ref(j),
                (V.name, j, 0),
                u_parts,
                gu_key,
                p_items,
                group_starts[:-1],
            )
        else:
            u_all = [(f"{core}-Uall", 0)]
            layer[(f"{core}-B", j)] = (_col_task, bands.col_ref(j), (V.name, j, 0), u_all, gu_key, p_items)
        for part, bucket in (("loss", col_parts), ("pen", col_pen)) + ((("gram", col_grams),) if implicit else ()):
            bucket.append((pick, (f"{core}-B", j), part))
    # The last sums of the losses, penalties and Grams run inside stage C (one task and one hop
    # fewer each; the same sums).
    data_sum = tree_sum(layer, f"{core}-data", col_parts, _exact_list)
    pen_sum = tree_sum(layer, f"{core}-pen", row_pen + col_pen, _exact_list)
    gv_new_sum = tree_sum(layer, f"{core}-GV", col_grams, sum_list) if implicit else None
    fin = (f"{core}-C", 0)
    layer[fin] = (_finish, data_sum, pen_sum, gu_key, gv_new_sum, p)

    outputs = {
        u_name: {(u_name, i, 0): (pick, (f"{core}-A", i), "U") for i in range(nI)},
        v_name: {(v_name, j, 0): (pick, (f"{core}-B", j), "V") for j in range(nJ)},
        s_name: {(s_name, 0): (pick, fin, "scalars")},
    }
    if implicit:
        outputs[g_name] = {(g_name, 0, 0): (pick, fin, "GV")}
    deps = [*bands.deps, U, V] + ([GV] if implicit else []) + ([touched_by] if touched_by is not None else [])
    deps += [items_by] if items_by is not None else []
    where = None
    if owners is not None:
        where = place_rows(owners, nI, lambda i: [(f"{core}-A", i), (u_name, i, 0), (f"{core}-Uw", i)])
        if users is None:
            for g, members in enumerate(groups):
                for j in range(nJ):
                    where[(f"{core}-Us", g, j)] = owners[members[0]]
        if col_owners is not None:
            _place_columns(layer, where, core, v_name, col_owners, len(groups))
    urgent = {(f"{core}-Uw", i) for i in range(nI)} if users is not None else None
    graph = assemble(core, layer, deps, outputs, where, urgent=urgent)
    U_new = da.Array(graph, u_name, chunks=U.chunks, meta=_meta())
    V_new = da.Array(graph, v_name, chunks=V.chunks, meta=_meta())
    GV_new = da.Array(graph, g_name, chunks=((p.k,), (p.k,)), meta=_meta()) if implicit else None
    scalars = da.Array(graph, s_name, chunks=((N_SCALARS,),), dtype=np.float64)
    return U_new, V_new, GV_new, scalars


def _place_columns(
    layer: dict, where: dict, core: str, v_name: str, col_owners: tuple[str, ...], n_groups: int
) -> None:
    """Add to ``where`` the column tasks, their outputs and the rows taken from them (on each
    column band's worker), then the sums of the step's small parts and its last task."""
    if len(col_owners) != sum(1 for key in layer if key[0] == f"{core}-B"):
        raise ValueError(f"col_owners names {len(col_owners)} workers; expected one per column band.")
    for j, owner in enumerate(col_owners):
        where[(f"{core}-B", j)] = where[(v_name, j, 0)] = owner
        for g in range(n_groups):
            if (f"{core}-Vs", g, j) in layer:
                where[(f"{core}-Vs", g, j)] = owner
    sums = (f"{core}-GU", f"{core}-data", f"{core}-pen", f"{core}-GV")
    # The layer lists each tree's parts before the tasks that sum them, and the last task last.
    nodes = [key for key in layer if str(key[0]).startswith(sums)] + [(f"{core}-C", 0)]
    place_sums(layer, nodes, where)
    pick_at_source(layer, nodes, where, f"{core}-Pr")


@aligned_inputs
def _band_counts(band):
    return np.diff(band.indptr).astype(np.int64)


def col_counts(bands: Bands) -> da.Array:
    """Observed entries per column of X (n,), one task per column band."""
    name = "dnmf-masked-colcounts-" + tokenize(bands.token)
    layer = {(name, j): (_band_counts, bands.col_ref(j)) for j in range(len(bands.col_chunks))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=list(bands.deps))
    return da.Array(graph, name, chunks=(tuple(bands.col_chunks),), dtype=np.int64)


# --------------------------------------------------------------------------
# Fold-in: new rows with the other side fixed
# --------------------------------------------------------------------------


@aligned_inputs
def _fold_task(band, V, G, p):
    U0 = np.zeros((band.shape[0], p.q))
    return masked.update(band, U0, V, p, G, solver="als")


def fold_in(bands: Bands, V: np.ndarray, G: np.ndarray | None, p: masked.MaskedParams) -> da.Array:
    """Exact per-row minimisers for the rows of ``bands`` with ``V`` fixed: (m, q).

    One task per row band; ``V`` (n, q) and ``G`` enter the graph once.
    """
    token = tokenize("dnmf-masked-fold", bands.token, V, G, p)
    name = f"dnmf-masked-fold-{token}"
    vkey, gkey = (f"dnmf-masked-foldV-{token}",), (f"dnmf-masked-foldG-{token}",)
    layer: dict = {vkey: V, gkey: G}
    out = {(name, i, 0): (_fold_task, bands.row_ref(i), vkey, gkey, p) for i in range(len(bands.row_chunks))}
    layer.update(out)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=list(bands.deps))
    return da.Array(graph, name, chunks=(tuple(bands.row_chunks), (p.q,)), meta=_meta())
