"""The block canonicaliser: one block of X as a canonical CSR matrix or an ndarray.

Pure NumPy/SciPy (no Dask), so every layer's kernels can import it.
"""

from __future__ import annotations

import functools
import threading
import weakref

import numpy as np
import scipy.sparse as sp


def as_block(x):
    """One block as a canonical CSR matrix (SciPy or pydata ``sparse`` input) or an ndarray."""
    if type(x).__module__.split(".")[0] == "sparse" and hasattr(x, "to_scipy_sparse"):
        x = x.to_scipy_sparse()
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        return x
    return np.asarray(x)


def aligned(x):
    """``x`` with every buffer aligned for its dtype: ``x`` itself, or an aligned copy.

    Arrays deserialized from a worker-to-worker message can start at any byte
    offset of the message. NumPy computes reductions (``@``, ``vdot``, ``sum``)
    of unaligned arrays in its own loops instead of BLAS, which round
    differently: without this, a fit on a cluster would not be bit-identical
    to the same fit on threads, and would depend on how messages were packed.

    Each unaligned object is copied once, not once per task: a worker hands the
    same object to every task that reads it (a scattered block of X at every
    iteration, an Hᵀ block to each of the worker's row tasks), and copying it
    each time cost the wide fits hundreds of MB of fresh memory per worker and
    iteration. A sparse block gets aligned arrays in place (its values do not
    change); an unaligned ndarray's copy is kept while the array lives
    (:func:`_aligned_copy`). Lists and tuples are aligned element by element;
    other objects pass through. A sparse block whose arrays view larger
    buffers is first pruned in place (:func:`own_buffers`).
    """
    if isinstance(x, np.ndarray):
        return x if x.flags.aligned else _aligned_copy(x)
    if sp.issparse(x) and x.format in ("csr", "csc"):
        if not all(a.flags.aligned for a in (x.data, x.indices, x.indptr)):
            # All three replaced before any is assigned: a task reading the block meanwhile
            # sees aligned arrays or does this itself, and the values are the same either way.
            data, indices, indptr = (a if a.flags.aligned else a.copy() for a in (x.data, x.indices, x.indptr))
            x.data, x.indices, x.indptr = data, indices, indptr
        own_buffers(x)
        return x
    if isinstance(x, list):
        return [aligned(v) for v in x]
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(aligned(v) for v in x)
    return x


# id(array) -> (weak reference to the unaligned array, its aligned copy). An entry goes when
# its array is collected; the check that the reference still points to the array guards
# against an id reused before the callback ran. Reentrant: the callback may run, through a
# collection, while this thread holds the lock.
_ALIGNED_COPIES: dict[int, tuple[weakref.ref, np.ndarray]] = {}
_ALIGNED_LOCK = threading.RLock()


def _aligned_copy(x: np.ndarray) -> np.ndarray:
    """An aligned copy of ``x``, the same one for as long as ``x`` lives."""
    key = id(x)
    with _ALIGNED_LOCK:
        entry = _ALIGNED_COPIES.get(key)
        if entry is not None and entry[0]() is x:
            return entry[1]
    copy = x.copy()

    def forget(ref: weakref.ref, key: int = key) -> None:
        with _ALIGNED_LOCK:
            entry = _ALIGNED_COPIES.get(key)
            if entry is not None and entry[0] is ref:
                del _ALIGNED_COPIES[key]

    with _ALIGNED_LOCK:
        entry = _ALIGNED_COPIES.get(key)
        if entry is not None and entry[0]() is x:
            return entry[1]  # another thread copied it meanwhile
        _ALIGNED_COPIES[key] = (weakref.ref(x, forget), copy)
    return copy


def own_buffers(x) -> None:
    """Give a sparse block its own ``indices`` and ``data`` where they are views of larger buffers: once, in place.

    A block deserialized from a message has arrays that view the message's
    byte buffers (a worker's copy of a scattered or persisted X). SciPy's
    ``prune``, which runs whenever a matrix is built from such arrays (``x.T``
    among others), copies an array whose base is more than twice its size:
    every iteration, in every task that transposes the block (3.8 ms for a
    1.2M-non-zero block: 23 ms of the workers' CPU per iteration of a
    200,000 x 20,000 fit with 7.3M non-zeros, and none on the threads).
    Pruning the block itself once makes the arrays its own, and each later
    build a view. The values are unchanged: the same bits.
    """
    if any(a.base is not None and a.size < getattr(a.base, "size", a.size) // 2 for a in (x.indices, x.data)):
        x.prune()


def aligned_inputs(fn):
    """Decorate a task function so that its array arguments are ``aligned`` first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(aligned(a) for a in args), **{k: aligned(v) for k, v in kwargs.items()})

    return wrapper


class RowSubset:
    """An (n, k) array that is zero outside ``rows``: what a partial product ships when it
    touches few rows.

    A row block of a sparse X touches only the columns it has non-zeros in, so its share of
    ``Xᵀ·W`` is zero elsewhere; shipping the touched rows cuts what moves between workers from
    ``n·k`` to ``touched·k`` values. Sums of these (``add_parts``) give the same bits as the
    sums of the dense arrays: every entry is accumulated in the same order, and the rows left
    out only ever add exact zeros.
    """

    __slots__ = ("rows", "values", "n")

    def __init__(self, rows: np.ndarray, values: np.ndarray, n: int) -> None:
        self.rows = rows  # sorted, unique, int64
        self.values = values  # (len(rows), k)
        self.n = n

    def __reduce__(self):
        return (RowSubset, (self.rows, self.values, self.n))

    def __sizeof__(self) -> int:
        # What ``sys.getsizeof`` reports, and with it Dask's ``sizeof`` (its fallback for
        # classes it does not know): distributed counts a result's memory, and the bytes of
        # its transfers between workers, by it. The object alone is 56 bytes.
        values = 0 if self.values is None else self.values.nbytes
        return object.__sizeof__(self) + int(self.rows.nbytes) + int(values)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.values.nbytes)

    def dense(self) -> np.ndarray:
        out = np.zeros((self.n, self.values.shape[1]), dtype=self.values.dtype)
        out[self.rows] = self.values
        return out


#: A partial is shipped as a RowSubset when it touches at most this fraction of its rows.
SUBSET_MAX_FRACTION = 0.5


def touched_rows(*blocks) -> np.ndarray:
    """Sorted column indices that hold a stored entry in any of the CSR ``blocks``.

    Dense blocks touch every column.
    """
    if not all(sp.issparse(b) for b in blocks):
        return np.arange(blocks[0].shape[1])
    n = blocks[0].shape[1]
    mask = np.zeros(n, dtype=bool)
    for b in blocks:
        mask[b.indices] = True
    return np.flatnonzero(mask)


def as_partial(dense: np.ndarray, rows: np.ndarray | None):
    """``dense`` as a RowSubset of ``rows`` when that is small enough to pay, else ``dense``."""
    return dense if rows is None else take_rows(dense, rows)


def add_parts(parts):
    """Sum dense arrays and RowSubsets in the given order (a RowSubset when all parts are)."""
    if all(isinstance(p, RowSubset) for p in parts):
        n = parts[0].n
        dtype = np.result_type(*(p.values for p in parts))
        rows, mask = _union(parts)
        dense = rows.size > SUBSET_MAX_FRACTION * n
        where = [p.rows for p in parts] if dense else _positions(parts, rows, mask)
        out = np.zeros((n if dense else rows.size, parts[0].values.shape[1]), dtype=dtype)
        # Every row starts at 0.0 and adds its parts in order, in either layout: the same bits.
        for p, at in zip(parts, where, strict=True):
            out[at] += p.values
        return out if dense else RowSubset(rows, out, n)
    first = parts[0]
    out = first.dense() if isinstance(first, RowSubset) else np.array(first, copy=True)
    for p in parts[1:]:
        if isinstance(p, RowSubset):
            out[p.rows] += p.values
        else:
            out += p
    return out


def _union(parts) -> tuple[np.ndarray, np.ndarray | None]:
    """The sorted union of the parts' rows, and the mask over all ``n`` rows it came from.

    A mask (no sort) where the parts cover more than an eighth of the ``n``
    rows; ``union1d`` (mask None) where they are few against ``n`` (a wide
    column block).
    """
    n = parts[0].n
    if sum(p.rows.size for p in parts) * 8 < n:
        rows = parts[0].rows
        for p in parts[1:]:
            rows = np.union1d(rows, p.rows)
        return rows, None
    mask = np.zeros(n, dtype=bool)
    for p in parts:
        mask[p.rows] = True
    return np.flatnonzero(mask), mask


def _positions(parts, rows: np.ndarray, mask: np.ndarray | None) -> list:
    """Where each part's rows are in their union ``rows`` (from :func:`_union`)."""
    if mask is None:
        return [np.searchsorted(rows, p.rows) for p in parts]
    position = np.cumsum(mask, dtype=np.intp) - 1
    return [position[p.rows] for p in parts]


def take_rows(dense: np.ndarray, rows: np.ndarray):
    """The ``rows`` of ``dense`` as a RowSubset when that is small enough to pay, else ``dense``.

    What a row-block task receives of a factor block it multiplies by: only the
    rows (columns of X) its blocks touch.
    """
    if rows.size > SUBSET_MAX_FRACTION * dense.shape[0]:
        return dense
    return RowSubset(rows, np.ascontiguousarray(dense[rows]), dense.shape[0])


def restrict(x: sp.csr_matrix, part) -> tuple:
    """``(x', values)`` with ``x' @ values`` bit-identical to ``x @ densify(part)``.

    For a RowSubset ``part`` holding every column of ``x`` with an entry,
    ``x'`` is ``x`` with its column indices renumbered to positions in
    ``part.rows`` (same data, same order of entries per row, so the products
    add the same numbers in the same order); otherwise ``(x, part)``.
    """
    if not isinstance(part, RowSubset):
        return x, part
    where = np.empty(part.n, dtype=x.indices.dtype)
    where[part.rows] = np.arange(part.rows.size, dtype=x.indices.dtype)
    renumbered = sp.csr_matrix((x.data, where[x.indices], x.indptr), shape=(x.shape[0], part.rows.size))
    return renumbered, part.values


def densify(part) -> np.ndarray:
    """A partial as a dense array."""
    return part.dense() if isinstance(part, RowSubset) else part
