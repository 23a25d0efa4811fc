"""Dask graphs of one NMF step, built from the per-block kernels.

No loop, no I/O and no Client here: each function takes Dask arrays and
plain parameters and returns new lazy Dask arrays.

Layout. ``X`` is an (m, n) Dask array with blocks ``X[i, j]`` (NumPy or SciPy
CSR). Both factors are kept tall: ``W`` is (m, k) with X's row chunks and a
single column chunk; ``Ht = H.T`` is (n, k) with X's column chunks. ``HHt``
is the (k, k) Gram of H, carried from one step to the next.

One step (``step``) is three stages:

A. one task per row block ``i``: ``XHt_i = sum_j X_ij @ Ht_j``, update
   ``W_i``, then, with the new ``W_i`` and the blocks of X still in memory,
   the partial products ``X_ij.T @ W_i`` (n_j, k) and ``W_i.T @ W_i``.
   Each block of X is read once per iteration, which is what makes
   out-of-core fitting affordable;
B. one task per column block ``j``: sum the partial products over ``i``
   (a fixed pairwise tree, whose last sum runs in this task) and update
   ``Ht_j``;
C. one task: ``HHt = sum_j Ht_j.T @ Ht_j`` and the scalars of the step.
   With one column block, B and C are one task.

Only (k, k) Grams, (n_j, k) partials and scalars move between tasks; all
sums run in a fixed order, so a step's result does not depend on where its
tasks ran. On a cluster, a worker's row blocks are summed on it, and the
sums that mix workers run where the fewest partials move
(:func:`dnmf.engine.graph.place_sums`). Cost per step: O(nnz * k + (m + n) * k²)
flops; communication O(k * the sum over workers of the columns their row
blocks touch), for the rows of ``Ht`` in and of the summed partials out, plus
O(k²) per task.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize

from ..engine import blocks as engine_blocks
from ..engine.blocks import RowSubset, aligned_inputs, densify, restrict, take_rows, touched_rows
from ..engine.graph import (
    SPLIT_EVERY,
    assemble,
    group_of_rows,
    partial_tree,
    pick,
    pick_at_source,
    place_blocks,
    place_rows,
    place_sums,
    sum_list,
    tree_reduce,
    x_block_refs,
    x_row_refs,
)
from ..engine.graph import meta as _meta
from ..storage import buffers
from . import kernels, nnls

# Layout of the scalar vector a step returns (float64).
S_VIOLATION = 0  # sum of |projected gradient| over both half-steps: met during
#                  the sweep (cd, as scikit-learn), at the start of each
#                  half-step (mu, anls-bpp) -- the stationarity measure
S_CROSS_W = 1  # <X Ht_old, W_new>            (loss after the W half-step)
S_GRAMDOT_W = 2  # <W_new' W_new, HHt_old>
S_CROSS_H = 3  # <X' W_new, Ht_new>          (loss after the full step)
S_GRAMDOT_H = 4  # <W_new' W_new, HHt_new>
S_IN_A = 5  # incoming state: <X Ht, W_old> (beta=2) or beta-divergence (beta!=2)
S_IN_B = 6  # incoming state: <W_old' W_old, HHt> (beta=2)
S_IMPUTED_IN = 7  # with a holdout: sum of squares of the imputed W_old Ht_old at it
S_IMPUTED = 8  # with a holdout: sum of squares of the imputed W_new Ht_old at it
N_SCALARS = 9

#: Fan-in of the sums of the ``Xᵀ·W`` partials over row blocks with one column block:
#: neighbours in pairs. With several column blocks the tree halves the row blocks where the
#: ranges of 2, 4, 8, ... workers end (:func:`dnmf.engine.graph.partial_tree`), so that each
#: worker's range (see :mod:`dnmf.storage.placement`) is summed on it before anything leaves it.
PARTIAL_FAN_IN = 2


@dataclass(frozen=True)
class StepParams:
    """Everything a step needs besides the arrays; hashable for tokenize."""

    solver: str  # "mu", "cd" or "anls-bpp"
    beta: float = 2.0
    l1_reg_W: float = 0.0
    l1_reg_H: float = 0.0
    l2_reg_W: float = 0.0
    l2_reg_H: float = 0.0
    update_H: bool = True
    incoming_loss: bool = False
    perm_W: tuple[int, ...] | None = None
    perm_H: tuple[int, ...] | None = None
    extra: tuple = field(default_factory=tuple)
    # Accelerated HALS (cd): largest numbers of sweeps per half-step, and
    # Gillis & Glineur's epsilon (see kernels.cd_update). 1 = plain HALS.
    inner_W: int = 1
    inner_H: int = 1
    inner_tol: float = 0.1


# --------------------------------------------------------------------------
# Small task helpers
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Whole-matrix summaries and products (initialisation, tests, transform)
# --------------------------------------------------------------------------


def stats(X: da.Array, owners: tuple[str, ...] | None = None) -> da.Array:
    """Per-block ``kernels.block_stats`` reduced to one (6,) vector.

    ``[min, n_nonfinite, sum, sum_of_squares, nnz, n_entries]``; one pass over X.
    ``owners`` (optional): the worker of each row block, where its blocks'
    tasks are placed (:meth:`dnmf.engine.runner.Runner.row_owners`).
    """
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-stats", X.name)
    core = f"dnmf-stats-core-{token}"
    name = f"dnmf-stats-{token}"
    layer = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            key = (core, i, j)
            layer[key] = (kernels.block_stats, xref(i, j))
            keys.append(key)
    top = tree_reduce(layer, core + "-sum", keys, split_every=64, until=64)
    layer[(core, "agg")] = (_combine_stats, top)
    out = {(name, 0): (operator.getitem, (core, "agg"), slice(None))}
    graph = assemble(core, layer, xdeps, {name: out}, place_blocks(owners, X.numblocks, core))
    return da.Array(graph, name, chunks=((6,),), dtype=np.float64)


@aligned_inputs
def _combine_stats(parts):
    arr = np.stack(parts)
    out = arr.sum(axis=0)
    out[0] = arr[:, 0].min()
    return out


@aligned_inputs
def _row_xdot(x_blocks, b_blocks):
    """``Σ_j x_j @ b_j`` in order; a ``b_j`` may be a RowSubset of the rows ``x_j`` touches."""
    out = _pooled_xdot(*restrict(x_blocks[0], b_blocks[0]))
    for x, b in zip(x_blocks[1:], b_blocks[1:], strict=True):
        part = _pooled_xdot(*restrict(x, b))
        out += part
        del part  # back to the pool for the next column block
    return out


def _pooled_xdot(x, b: np.ndarray) -> np.ndarray:
    """``kernels.xdot(x, b)``, into memory from the buffer pool where a new array would be fresh (the same bits).

    Only where a new array would be fresh, page-faulted memory (a worker process, or a product of
    16 MiB or more in any process: :func:`~dnmf.storage.buffers.fresh_memory`). The product must
    start from zeros, which for a smaller array SciPy's own ``np.zeros`` gets from glibc's heap
    for the price of clearing it, as the pooled array does.
    """
    dtype = np.result_type(x.dtype, b.dtype)
    if not buffers.fresh_memory(x.shape[0] * b.shape[1] * dtype.itemsize):
        return kernels.xdot(x, b)
    return kernels.xdot(x, b, out=buffers.empty((x.shape[0], b.shape[1]), dtype))


def xdot(X: da.Array, B: da.Array, owners: tuple[str, ...] | None = None) -> da.Array:
    """``X @ B`` for B (n, l) chunked like X's columns, one column chunk.

    One task per row block; the sum over column blocks runs in order.
    ``owners`` (optional): the worker of each row block
    (:meth:`dnmf.engine.runner.Runner.row_owners`), where its task is placed.
    Unplaced, the scheduler may run it where ``B``'s blocks are and copy X's
    blocks there, and the cluster may then drop the originals: the fit's
    iterations, placed on the owners, would fetch them every time.
    """
    xref, xdeps = x_block_refs(X)
    _check_tall(B, X.chunks[1], "B")
    token = tokenize("dnmf-xdot", X.name, B.name)
    name = f"dnmf-xdot-{token}"
    layer = {
        (name, i, 0): (
            _row_xdot,
            [xref(i, j) for j in range(X.numblocks[1])],
            [(B.name, j, 0) for j in range(X.numblocks[1])],
        )
        for i in range(X.numblocks[0])
    }
    graph = assemble(name, layer, [*xdeps, B], {}, place_blocks(owners, (X.numblocks[0], 1), name))
    dtype = np.result_type(X.dtype, B.dtype)
    return da.Array(graph, name, chunks=(X.chunks[0], B.chunks[1]), meta=_meta(dtype))


def xtdot(X: da.Array, A: da.Array, owners: tuple[str, ...] | None = None) -> da.Array:
    """``X.T @ A`` for A (m, l) chunked like X's rows: (n, l), X's column chunks.

    Uses the free CSC view of each CSR block (fast, small output), and a
    fixed-order tree over the row blocks. ``owners``: as for :func:`xdot`
    (each block's product runs on its row block's worker).
    """
    xref, xdeps = x_block_refs(X)
    _check_tall(A, X.chunks[0], "A")
    token = tokenize("dnmf-xtdot", X.name, A.name)
    core = f"dnmf-xtdot-core-{token}"
    name = f"dnmf-xtdot-{token}"
    layer = {}
    out = {}
    for j in range(X.numblocks[1]):
        keys = []
        for i in range(X.numblocks[0]):
            key = (core, i, j)
            layer[key] = (kernels.xtdot, xref(i, j), (A.name, i, 0))
            keys.append(key)
        top = tree_reduce(layer, f"{core}-t{j}", keys, until=SPLIT_EVERY)
        out[(name, j, 0)] = (sum_list, top)
    graph = assemble(core, layer, [*xdeps, A], {name: out}, place_blocks(owners, X.numblocks, core))
    dtype = np.result_type(X.dtype, A.dtype)
    return da.Array(graph, name, chunks=(X.chunks[1], A.chunks[1]), meta=_meta(dtype))


def gram(A: da.Array) -> da.Array:
    """``A.T @ A`` (k, k) for a tall A with one column chunk; fixed-order tree."""
    token = tokenize("dnmf-gram", A.name)
    core = f"dnmf-gram-core-{token}"
    name = f"dnmf-gram-{token}"
    layer = {}
    keys = []
    for i in range(A.numblocks[0]):
        layer[(core, i)] = (kernels.gram, (A.name, i, 0))
        keys.append((core, i))
    top = tree_reduce(layer, core, keys, until=SPLIT_EVERY)
    out = {(name, 0, 0): (sum_list, top)}
    graph = assemble(core, layer, [A], {name: out})
    k = A.shape[1]
    return da.Array(graph, name, chunks=((k,), (k,)), meta=_meta(A.dtype))


def _check_tall(A: da.Array, row_chunks: tuple, what: str) -> None:
    if A.chunks[0] != tuple(row_chunks) or A.numblocks[1] != 1:
        raise ValueError(
            f"{what} must be chunked like X along its rows with a single column "
            f"chunk; got chunks {A.chunks}, expected rows {tuple(row_chunks)}. "
            f"Rechunk it with .rechunk(({tuple(row_chunks)}, -1))."
        )


# --------------------------------------------------------------------------
# One iteration
# --------------------------------------------------------------------------


def _frobenius_update(solver, A, G, AX, l1, l2, perm, n_inner, inner_tol):
    """One Frobenius half-step for a tall factor block ``A`` (W, or Ht by transposition).

    ``G`` is the other factor's Gram and ``AX`` the matching product (``X Ht``
    for W, ``X' W`` for Ht). Returns the new block and its stationarity violation.
    """
    if solver == "cd":
        return kernels.cd_update(
            A,
            G,
            AX,
            l1,
            l2,
            np.asarray(perm, dtype=np.intp),
            n_inner=n_inner,
            inner_tol=inner_tol,
            out=buffers.empty_like(A),
        )
    if solver == "anls-bpp":
        return nnls.anls_update(A, G, AX, l1, l2)
    return mu_step(A, G, AX, l1, l2)


def mu_step(A: np.ndarray, G: np.ndarray, AX: np.ndarray, l1: float, l2: float) -> tuple[np.ndarray, float]:
    """One Frobenius multiplicative half-step and its stationarity violation, for a block ``A``.

    The same numbers, bit for bit, as ``kernels.mu_apply(A, AX, A @ G, l1, l2)``
    and ``kernels.projected_gradient_l1`` of ``kernels.regularized_gradient``
    (what the tests compare it with), computed in two arrays the size of
    ``A`` instead of about eight: on a tall block these elementwise passes
    and their allocations cost as much as the step's products.

    Parameters
    ----------
    A : ndarray (r, k)
        The block (W's, or Hᵀ's); not modified.
    G : ndarray (k, k)
        The other factor's Gram.
    AX : ndarray (r, k)
        The matching product (``X·Hᵀ`` for W, ``Xᵀ·W`` for Hᵀ); not modified.
    l1, l2 : float
        Already scaled regularisation weights.

    Returns
    -------
    A_new : ndarray (r, k)
    violation : float
        ``Σ |projected gradient|`` at ``A``.
    """
    # The step's arrays come from the buffer pool: row tasks of one size follow each other, and on
    # a worker with glibc's mmap threshold pinned each fresh array costs its pages' faults.
    den = kernels.mu_frobenius_denominator(A, G, out=buffers.empty(A.shape, np.result_type(A, G)))
    grad = np.subtract(den, AX, out=buffers.empty(A.shape, np.float64), dtype=np.float64)
    if l1:
        grad += l1
    if l2:
        grad += l2 * A
    mask = np.greater(A, 0, out=buffers.empty(A.shape, np.bool_))
    np.minimum(grad, 0.0, out=grad, where=np.logical_not(mask, out=mask))
    violation = float(np.abs(grad, out=grad).sum())
    del grad
    den = den if den.dtype == A.dtype else den.astype(A.dtype)
    if l1 > 0:
        den += l1
    if l2 > 0:
        den += l2 * A
    np.copyto(den, kernels.EPSILON, where=np.equal(den, 0, out=mask))
    np.divide(np.asarray(AX, dtype=A.dtype), den, out=den)
    return np.multiply(A, den, out=den), violation


#: A sparse block with this many stored entries per column touches nearly all its
#: columns (more than ``SUBSET_MAX_FRACTION`` even under steep popularity laws), so
#: its partial is made dense without first finding the touched columns (a pass
#: over its indices, 7% of a 200,000 × 20,000 iteration). Either way the same bits.
DENSE_PARTIAL_NNZ_RATIO = 8


def _partial_xtdot(x, fill, W: np.ndarray):
    """This row block's share of ``Xᵀ·W`` for one column block (``fill``: imputed held-out entries).

    A sparse block's share is zero outside the columns it touches: when they
    are few (``SUBSET_MAX_FRACTION``), only those rows are computed, with the
    block's columns renumbered (:func:`~dnmf.engine.blocks.restrict`), and
    shipped as a RowSubset; the dense ``(n_j, k)`` product is never formed.
    Each touched row accumulates the same products in the same order as in
    the dense product, so the values are its rows, bit for bit.
    """
    parts = [b for b in (x, fill) if b is not None]
    few = sp.issparse(x) and sum(b.nnz for b in parts) < DENSE_PARTIAL_NNZ_RATIO * x.shape[1]
    rows = touched_rows(*parts) if few else None
    if rows is None or rows.size > engine_blocks.SUBSET_MAX_FRACTION * x.shape[1]:
        P = _pooled_xdot(x.T, W)
        if fill is not None:
            P += kernels.xtdot(fill, W)
        return P
    columns = RowSubset(rows, None, x.shape[1])
    P = _pooled_xdot(restrict(x, columns)[0].T, W)
    if fill is not None:
        P += kernels.xtdot(restrict(fill, columns)[0], W)
    return RowSubset(rows, P, x.shape[1])


@aligned_inputs
def _row_task(x_blocks, W, ht_blocks, HHt, p: StepParams, m_blocks=None):
    """Stage A for one row block. Returns a dict of outputs (see module doc).

    ``m_blocks`` (optional): this row's held-out masks (CSR coordinates, see
    ``kernels.holdout_mask``). X's blocks then have zeros there, and the
    model's values are imputed before each half-step (``holdout_values``).
    """
    s = np.zeros(N_SCALARS)
    if p.beta == 2:
        XHt = _row_xdot(x_blocks, ht_blocks)
        if m_blocks is not None:
            for m, ht in zip(m_blocks, ht_blocks, strict=True):
                fill = kernels.holdout_values(m, W, ht)
                XHt += kernels.xdot(fill, ht)
                s[S_IMPUTED_IN] += kernels.squared_norm(fill)
        if p.incoming_loss:
            s[S_IN_A] = float(np.vdot(XHt, W))
            s[S_IN_B] = float(np.vdot(kernels.gram(W), HHt))
        W_new, s[S_VIOLATION] = _frobenius_update(
            p.solver, W, HHt, XHt, p.l1_reg_W, p.l2_reg_W, p.perm_W, p.inner_W, p.inner_tol
        )
        s[S_CROSS_W] = float(np.vdot(XHt, W_new))
    else:
        num = den = None
        loss = 0.0
        for x, ht in zip(x_blocks, ht_blocks, strict=True):
            n_, d_, l_ = kernels.mu_beta_terms(x, W, ht, p.beta, with_loss=True)
            num = n_ if num is None else num + n_
            den = d_ if den is None else den + d_
            loss += l_
        s[S_IN_A] = loss
        s[S_VIOLATION] = kernels.projected_gradient_l1(
            W, kernels.regularized_gradient(W, den, num, p.l1_reg_W, p.l2_reg_W)
        )
        W_new = kernels.mu_apply(
            W,
            num,
            den,
            p.l1_reg_W,
            p.l2_reg_W,
            gamma=kernels.mu_gamma(p.beta),
            clip=p.beta < 1,
        )
    G = kernels.gram(W_new)
    s[S_GRAMDOT_W] = float(np.vdot(G, HHt))
    if not p.update_H:
        return {"W": W_new, "small": (G, s)}
    if p.beta == 2:
        fills: list = [None] * len(x_blocks)
        if m_blocks is not None:
            for j, (m, ht) in enumerate(zip(m_blocks, ht_blocks, strict=True)):
                fills[j] = kernels.holdout_values(m, W_new, ht)
                s[S_IMPUTED] += kernels.squared_norm(fills[j])
        parts = [_partial_xtdot(x, fills[j], W_new) for j, x in enumerate(x_blocks)]
    else:
        parts = [kernels.mu_beta_terms(x.T, ht, W_new, p.beta)[:2] for x, ht in zip(x_blocks, ht_blocks, strict=True)]
    # (G, s) rides with the partials as one more "column block": one tree sums both.
    return {"W": W_new, "P": (*parts, (G, s))}


@aligned_inputs
def _col_task(Ht, total, small, p: StepParams):
    """Stage B for one column block: update ``Ht_j`` from the summed partials."""
    G, _ = small
    s = np.zeros(N_SCALARS)
    if p.beta == 2:
        XtW = densify(total)
        Ht_new, s[S_VIOLATION] = _frobenius_update(
            p.solver, Ht, G, XtW, p.l1_reg_H, p.l2_reg_H, p.perm_H, p.inner_H, p.inner_tol
        )
        s[S_CROSS_H] = float(np.vdot(XtW, Ht_new))
    else:
        num, den = total
        s[S_VIOLATION] = kernels.projected_gradient_l1(
            Ht, kernels.regularized_gradient(Ht, den, num, p.l1_reg_H, p.l2_reg_H)
        )
        Ht_new = kernels.mu_apply(
            Ht,
            num,
            den,
            p.l1_reg_H,
            p.l2_reg_H,
            gamma=kernels.mu_gamma(p.beta),
            clip=p.beta <= 1,
        )
    return {"Ht": Ht_new, "small": (kernels.gram(Ht_new), s)}


@aligned_inputs
def _finish(row_small, col_small, HHt_old, update_H):
    """Stage C: the new HHt and the step's scalar vector.

    ``col_small`` lists the last level of the column tasks' ``(gram, scalars)``
    sums, summed here (one task and one hop fewer than a sum task of its own).
    """
    G, s = row_small
    if update_H:
        HHt, s_col = sum_list(col_small)
        s = s + s_col
        s[S_GRAMDOT_H] = float(np.vdot(G, HHt))
    else:
        HHt = HHt_old
    return {"HHt": HHt, "scalars": s}


@aligned_inputs
def _col_finish(Ht, total, HHt_old, p: StepParams):
    """Stages B and C in one task, for an X of one column block.

    ``total`` is the sum of the row tasks' tuples: ``(partial, (Gram, scalars))``.
    The same numbers as :func:`_col_task` followed by :func:`_finish`.
    """
    partial, row_small = total
    col = _col_task(Ht, partial, row_small, p)
    return {"Ht": col["Ht"], **_finish(row_small, [col["small"]], HHt_old, True)}


def _summed(layer: dict, key):
    """The task that sums ``key``'s parts, taken out of ``layer`` to be inlined where it is used.

    A tree's last sum runs inside the task that uses it (one task and one hop fewer); a key
    that is not a sum (a lone partial, or a split of a whole-tuple sum) is summed as a list of one.
    """
    task = layer.get(key)
    if isinstance(task, tuple) and task and task[0] is sum_list:
        return layer.pop(key)
    return (sum_list, [key])


def step(
    X: da.Array,
    W: da.Array,
    Ht: da.Array,
    HHt: da.Array,
    p: StepParams,
    holdout: da.Array | None = None,
    columns: da.Array | None = None,
    owners: tuple[str, ...] | None = None,
    whole: frozenset = frozenset(),
    local_levels: int | None = None,
    read_ahead: bool = False,
):
    """Build the graph of one iteration.

    Parameters
    ----------
    X : dask array (m, n), NumPy or CSR blocks
    W : dask array (m, k), chunked like X's rows, one column chunk
    Ht : dask array (n, k), chunked like X's columns, one column chunk
    HHt : dask array (k, k), one chunk: ``Ht.T @ Ht``
    p : StepParams
    holdout : dask array (m, n) of CSR blocks, optional
        Held-out coordinates per block of X (Frobenius only), which X must
        hold as zeros: the step then minimises the loss on the other
        entries (masked fit, for rank selection), with the extra cost
        O(|holdout| · k).
    columns : dask array, optional
        :func:`dnmf.engine.graph.group_columns` of X, persisted. Each group of
        row blocks then receives only the rows of ``Ht``'s blocks that it
        touches (one task per group and column block), instead of every row
        task receiving every block whole: on a cluster that cuts the bytes
        moved from ``n·k`` per worker to the touched rows. Same results to the
        bit. Ignored with a holdout or a beta-loss other than 2 (which need
        all of ``Ht``).
    local_levels : int, optional
        Below which height of the tree over row blocks a node may
        sum a row task's partials for all column blocks at once (one task
        per node); above it, and at every node whose row blocks have more
        than one owner, each column block is summed on its own (one task per
        node and column block, so that only that block's partial moves).
        Any value gives the same bits: the tree is the same
        (:func:`dnmf.engine.graph.partial_tree`). None: every node whose row
        blocks one worker holds (all of them when ``owners`` is None).
    whole : frozenset of (group, column block)
        With ``columns``: the blocks where a group touches so many rows that
        it takes ``Ht``'s block whole (no task to take rows from it).
    owners : tuple of str, optional
        The worker that holds each row block (:mod:`dnmf.storage.placement`):
        the row tasks, their outputs, the touched rows of ``Ht`` they receive
        and the sums of partials that stay within one worker's blocks are
        placed there (a preference, see :func:`dnmf.engine.graph.assemble`).
        Placement changes where tasks run, never what they compute.
    read_ahead : bool, default False
        For an X read from a store: each row task, once it has its blocks,
        starts reading those of the row task its worker will likely compute
        next (:func:`dnmf.engine.graph.x_row_refs`), so that reads overlap
        computation. Same results.

    Returns
    -------
    W_new, Ht_new, HHt_new : dask arrays, same layouts as the inputs
        (``Ht_new`` and ``HHt_new`` are the inputs when ``p.update_H`` is False).
    scalars : dask array (N_SCALARS,), float64
        See the ``S_*`` constants.
    """
    xrow, xdeps = x_row_refs(X, read_ahead)
    wref, wdeps = x_block_refs(W)
    nI, nJ = X.numblocks
    if holdout is not None and (holdout.chunks != X.chunks or p.beta != 2):
        raise ValueError(
            "A holdout mask must be chunked like X and needs the Frobenius loss; got "
            f"chunks {holdout.chunks} for X's {X.chunks} and beta={p.beta}."
        )
    token = tokenize(
        "dnmf-step",
        X.name,
        W.name,
        Ht.name,
        HHt.name,
        p,
        None if holdout is None else holdout.name,
        None if columns is None else columns.name,
        tuple(sorted(whole)),
    )
    core = f"dnmf-step-{token}"
    w_name, ht_name = f"dnmf-W-{token}", f"dnmf-Ht-{token}"
    hht_name, s_name = f"dnmf-HHt-{token}", f"dnmf-scalars-{token}"
    ht_keys = [(Ht.name, j, 0) for j in range(nJ)]
    hht_key = (HHt.name, 0, 0)

    layer: dict = {}
    subsets = columns is not None and holdout is None and p.beta == 2
    if subsets:
        assert columns is not None
        if columns.shape != (nI, nJ):
            raise ValueError(f"columns covers {columns.shape} blocks; expected group_columns(X, ...) of this X.")
        group = group_of_rows(columns)
        for g in range(columns.numblocks[0]):
            for j in range(nJ):
                if (g, j) not in whole:
                    layer[(f"{core}-Hs", g, j)] = (take_rows, ht_keys[j], (columns.name, g, j))
    for i in range(nI):
        a = (f"{core}-A", i)
        layer[a] = (
            _row_task,
            xrow(i),
            wref(i, 0),
            [ht_keys[j] if (group[i], j) in whole else (f"{core}-Hs", group[i], j) for j in range(nJ)]
            if subsets
            else ht_keys,
            hht_key,
            p,
        )
        if holdout is not None:
            layer[a] = layer[a] + ([(holdout.name, i, j) for j in range(nJ)],)

    outputs = {w_name: {(w_name, i, 0): (pick, (f"{core}-A", i), "W") for i in range(nI)}}
    fin = (f"{core}-C", 0)
    if p.update_H and nJ == 1:
        # One column block: the whole tuple of partials (and the row tasks' Gram and scalars)
        # is what moves, so every node of the pairwise tree sums it whole, and the root's sum,
        # stage B and stage C are one task: three tasks and three hops fewer per iteration
        # than a tree split per column. The same sums in the same order: the same bits. A
        # level of three nodes is the last: (a + b) + c in the column task is the sum of the
        # pair (a, b) then c, one task and one hop fewer (6 row blocks: 4 sums -> 3).
        rows = [(pick, (f"{core}-A", i), "P") for i in range(nI)]
        top = tree_reduce(layer, f"{core}-P", rows, split_every=PARTIAL_FAN_IN, until=3)
        fin = (f"{core}-B", 0)
        layer[fin] = (_col_finish, ht_keys[0], (sum_list, top), hht_key, p)
        outputs[ht_name] = {(ht_name, 0, 0): (pick, fin, "Ht")}
    elif p.update_H:
        col_small = []
        # The halving tree over row blocks sums whole tuples of partials (all column blocks,
        # and the row tasks' (Gram, scalars) as one more) within each worker's range, then each
        # column block's parts on their own. Its leaves are picks inlined into its first nodes:
        # no task of their own, and a row task's result is held only as long as its partials
        # are (until its pair has run).
        rows = [(pick, (f"{core}-A", i), "P") for i in range(nI)]
        totals = partial_tree(layer, f"{core}-P", rows, nJ + 1, owners, local_levels)
        small_key = totals[nJ]
        for j in range(nJ):
            b = (f"{core}-B", j)
            layer[b] = (_col_task, ht_keys[j], _summed(layer, totals[j]), small_key, p)
            layer[(f"{core}-Bs", j)] = (pick, b, "small")
            col_small.append((f"{core}-Bs", j))
        top = tree_reduce(layer, f"{core}-Bsum", col_small, until=SPLIT_EVERY)
        layer[fin] = (_finish, small_key, top, hht_key, p.update_H)
        outputs[ht_name] = {(ht_name, j, 0): (pick, (f"{core}-B", j), "Ht") for j in range(nJ)}
    else:
        row_small = [(f"{core}-As", i) for i in range(nI)]
        for i, key in enumerate(row_small):
            layer[key] = (pick, (f"{core}-A", i), "small")
        top = tree_reduce(layer, f"{core}-Asum", row_small, until=SPLIT_EVERY)
        small_key = (f"{core}-small", 0)
        layer[small_key] = (sum_list, top)
        layer[fin] = (_finish, small_key, None, hht_key, p.update_H)

    outputs[hht_name] = {(hht_name, 0, 0): (pick, fin, "HHt")}
    outputs[s_name] = {(s_name, 0): (pick, fin, "scalars")}

    deps = [*xdeps, *wdeps, Ht, HHt] + ([holdout] if holdout is not None else []) + ([columns] if subsets else [])
    where = None if owners is None else _placement(layer, outputs, core, owners, nJ)
    graph = assemble(core, layer, deps, outputs, where)
    W_new = da.Array(graph, w_name, chunks=W.chunks, meta=_meta(W.dtype))
    if p.update_H:
        Ht_new = da.Array(graph, ht_name, chunks=Ht.chunks, meta=_meta(Ht.dtype))
        HHt_new = da.Array(graph, hht_name, chunks=HHt.chunks, meta=_meta(HHt.dtype))
    else:
        Ht_new, HHt_new = Ht, HHt
    scalars = da.Array(graph, s_name, chunks=((N_SCALARS,),), dtype=np.float64)
    return W_new, Ht_new, HHt_new, scalars


def _ref(arg):
    """The key an argument refers to: itself, or the task whose result an inlined pick reads."""
    return arg[1] if isinstance(arg, tuple) and arg and arg[0] is pick else arg


def _placement(layer: dict, outputs: dict, core: str, owners: tuple[str, ...], nJ: int) -> dict:
    """``{key: worker}`` for the tasks of row block ``i`` (on ``owners[i]``) and what follows them locally."""
    n_rows = sum(1 for key in layer if key[0] == f"{core}-A")
    where = place_rows(owners, n_rows, lambda i: [(f"{core}-A", i), (f"{core}-As", i)])
    for out in outputs.values():
        for key, task in out.items():
            if task[1] in where:
                where[key] = where[task[1]]
    # The touched rows of Ht (-Hs) are taken where Ht's block is (the scheduler's choice): only
    # they travel.
    # A whole-tuple sum of one worker's row blocks runs there. Each column block's sums (and the
    # column task that takes the last one), and the Grams' and scalars' sums, go where the fewest
    # partials move (the layer lists parts before their sums).
    prefix = f"{core}-P"
    trees: dict = {}
    for key, task in layer.items():
        name = key[0] if isinstance(key, tuple) and isinstance(key[0], str) else ""
        if name.startswith(f"{prefix}all-L") or (nJ == 1 and name.startswith(f"{prefix}-L")):
            owner = {where.get(_ref(c)) for c in task[1]}
            if len(owner) == 1 and None not in owner:
                where[key] = owner.pop()
                continue
        if name == f"{prefix}j":
            # A column block's part of a whole-tuple sum is taken where that sum is: only it moves.
            source = where.get(_ref(task[1]))
            if source is not None:
                where[key] = source
        elif nJ == 1 and (name.startswith(f"{prefix}-L") or name == f"{core}-B"):
            trees.setdefault(0, []).append(key)
        elif name.startswith(prefix) and "-L" in name and not name.startswith(f"{prefix}all"):
            trees.setdefault(int(name[len(prefix) :].split("-L")[0]), []).append(key)
        elif name == f"{core}-B" and nJ > 1:
            trees.setdefault(key[1], []).append(key)
    roots: dict = {}
    for j in sorted(trees):
        place_sums(layer, trees[j], where, roots)
    pick_at_source(layer, [key for j in sorted(trees) for key in trees[j]], where, f"{core}-Pr")
    return where


# --------------------------------------------------------------------------
# Objective of a given state (used where a step does not give it for free)
# --------------------------------------------------------------------------


@aligned_inputs
def _row_objective(x_blocks, W, ht_blocks, HHt, beta):
    if beta == 2:
        XHt = _row_xdot(x_blocks, ht_blocks)
        return np.array([float(np.vdot(XHt, W)), float(np.vdot(kernels.gram(W), HHt))])
    total = 0.0
    for x, ht in zip(x_blocks, ht_blocks, strict=True):
        total += kernels.beta_divergence_block(x, W, ht, beta)
    return np.array([total, 0.0])


def objective_terms(X: da.Array, W: da.Array, Ht: da.Array, HHt: da.Array, beta: float) -> da.Array:
    """(2,) terms of the objective of (W, H): one pass over X.

    For beta = 2: ``[<X Ht, W>, <W'W, HHt>]`` (combine with ``||X||²`` via
    ``kernels.frobenius_from_terms``); otherwise ``[divergence, 0]``.
    """
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-objective", X.name, W.name, Ht.name, HHt.name, beta)
    core = f"dnmf-objective-core-{token}"
    name = f"dnmf-objective-{token}"
    nI, nJ = X.numblocks
    layer = {}
    keys = []
    for i in range(nI):
        layer[(core, i)] = (
            _row_objective,
            [xref(i, j) for j in range(nJ)],
            (W.name, i, 0),
            [(Ht.name, j, 0) for j in range(nJ)],
            (HHt.name, 0, 0),
            beta,
        )
        keys.append((core, i))
    top = tree_reduce(layer, core + "-sum", keys, until=SPLIT_EVERY)
    out = {(name, 0): (sum_list, top)}
    graph = assemble(core, layer, [*xdeps, W, Ht, HHt], {name: out})
    return da.Array(graph, name, chunks=((2,),), dtype=np.float64)


def holdout_error(X: da.Array, holdout: da.Array, W: da.Array, Ht: da.Array) -> da.Array:
    """(3,) ``[Σ (X - W H)², Σ X², count]`` over the held-out coordinates.

    ``X`` holds the true values (not the zeroed training blocks); one task
    per block, then a fixed-order tree. O(|holdout| · k).
    """
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-holdout-error", X.name, holdout.name, W.name, Ht.name)
    core = f"dnmf-holdout-error-core-{token}"
    name = f"dnmf-holdout-error-{token}"
    layer = {}
    keys = []
    for i in range(X.numblocks[0]):
        for j in range(X.numblocks[1]):
            key = (core, i, j)
            layer[key] = (kernels.holdout_error, xref(i, j), (holdout.name, i, j), (W.name, i, 0), (Ht.name, j, 0))
            keys.append(key)
    top = tree_reduce(layer, core + "-sum", keys, until=SPLIT_EVERY)
    out = {(name, 0): (sum_list, top)}
    graph = assemble(core, layer, [*xdeps, holdout, W, Ht], {name: out})
    return da.Array(graph, name, chunks=((3,),), dtype=np.float64)
