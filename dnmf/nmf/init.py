"""Initial NMF factors (random, NNDSVD and its variants, randomized SVD), computed on the cluster.

Random numbers come from fixed panels of ``PANEL_ROWS`` rows, each with its
own stream derived from the seed, so a factor's values do not depend on how
X is chunked nor on where blocks run.

The NNDSVD variants (Boutsidis & Gallopoulos 2008, as in scikit-learn) start
from a randomized SVD (Halko, Martinsson & Tropp 2011) built only from the
blocked products ``X @ B`` and ``X.T @ A`` and (l, l) Grams, so it works when
X does not fit in memory: each power iteration costs two passes over X.
"""

from __future__ import annotations

import functools
import math

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..engine.blocks import aligned_inputs
from . import graph as blocked

PANEL_ROWS = 1 << 16
#: Power iterations of the randomized SVD (scikit-learn's randomized_svd default).
POWER_ITERATIONS = 4
#: Stored entries from which an X counts as large for the initialisation (:func:`power_iterations`).
LARGE_NNZ = 10_000_000
#: Power iterations for a large X: none (X read twice). Measured on 4.4M ratings of 300k users
#: (k 32, README "sizing"): the loss after 5 NMF iterations is 0.4% above that of 4 power
#: iterations (1 power iteration: 0.1%; random init: 4.7%), for a setup of 2 passes instead of 10.
LARGE_POWER_ITERATIONS = 0
_TAGS = {"W": 1, "H": 2, "omega": 3, "fillW": 4, "fillH": 5}


def _normal_rows(seed: int, tag: str, start: int, stop: int, k: int) -> np.ndarray:
    """Rows [start, stop) of an endless (rows, k) standard-normal matrix."""
    out = np.empty((stop - start, k))
    pos = start
    while pos < stop:
        panel = pos // PANEL_ROWS
        p0 = panel * PANEL_ROWS
        hi = min(stop, p0 + PANEL_ROWS)
        rng = np.random.default_rng([seed, _TAGS[tag], panel])
        values = rng.standard_normal((hi - p0, k))
        out[pos - start : hi - start] = values[pos - p0 :]
        pos = hi
    return out


def random_block(seed, tag, start, stop, k, scale, dtype, absolute=True):
    block = _normal_rows(seed, tag, start, stop, k)
    if absolute:
        np.abs(block, out=block)
    block *= scale
    return block.astype(dtype, copy=False)


def random_tall(
    chunks: tuple[int, ...], k: int, seed: int, tag: str, scale: float, dtype, absolute: bool = True
) -> da.Array:
    """``|scale * N(0, 1)|`` (or signed) of shape (sum(chunks), k), one column chunk."""
    name = "dnmf-random-" + tokenize(chunks, k, seed, tag, scale, np.dtype(dtype).str, absolute)
    offsets = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    layer = {
        (name, i, 0): (random_block, seed, tag, int(offsets[i]), int(offsets[i + 1]), k, scale, dtype, absolute)
        for i in range(len(chunks))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=(tuple(chunks), (k,)), meta=np.empty((0, 0), dtype=dtype))


def random_init(X: da.Array, k: int, mean: float, seed: int):
    """scikit-learn's scaling: ``|N(0, 1)| * sqrt(mean(X) / k)``."""
    avg = math.sqrt(mean / k)
    W = random_tall(X.chunks[0], k, seed, "W", avg, X.dtype)
    Ht = random_tall(X.chunks[1], k, seed, "H", avg, X.dtype)
    return W, Ht


# --------------------------------------------------------------------------
# Randomized SVD from blocked products
# --------------------------------------------------------------------------


def _gram_inverse_sqrt(G: np.ndarray, dtype=np.float64, precision=None) -> np.ndarray:
    """M with ``M' G M`` the identity on G's numerical range (zero columns elsewhere), as ``dtype``.

    Eigenvalues below the noise of the precision the Gram was computed in
    (``precision``, default ``dtype``: relative 1e-12 in float64, 1e-6 in
    float32) count as zero.
    """
    evals, evecs = np.linalg.eigh(np.asarray(G, dtype=np.float64))
    precision = dtype if precision is None else precision
    floor = 1e-12 if np.dtype(precision) == np.float64 else 1e-6
    keep = evals > evals.max() * floor if evals.max() > 0 else np.zeros_like(evals, bool)
    scale = np.zeros_like(evals)
    scale[keep] = 1.0 / np.sqrt(evals[keep])
    return (evecs * scale).astype(dtype, copy=False)


def _dot_twice(block: np.ndarray, M1: np.ndarray, M2: np.ndarray) -> np.ndarray:
    return np.dot(np.dot(block, M1), M2)


def _orthonormalize(held: list[da.Array], runner) -> da.Array:
    """An orthonormal basis of the range of ``Y = held.pop()`` from its (l, l) Gram (twice, for accuracy).

    In Y's dtype. The second Gram is taken of ``Y M1`` computed block by
    block and not kept, and the basis ``(Y M1) M2`` is computed in one task
    per block (the same arithmetic, and bits, as persisting ``Y M1`` first).
    Y is handed over in ``held`` and its last reference dropped once the
    basis is submitted: the cluster releases each block of Y as soon as its
    block of the basis exists, so the two (m, l) arrays are never held whole
    together.
    """
    Y = held.pop()
    dtype = Y.dtype
    M1 = _gram_inverse_sqrt(runner.compute(blocked.gram(Y)), dtype)
    M2 = _gram_inverse_sqrt(runner.compute(blocked.gram(Y.map_blocks(np.dot, M1, dtype=dtype))), dtype)
    basis = Y.map_blocks(_dot_twice, M1, M2, dtype=dtype)
    del Y
    (Q,) = runner.persist(basis)
    return Q


def _as_dtype(block, dtype):
    return block.astype(dtype)


def randomized_svd(
    X: da.Array,
    k: int,
    seed: int,
    runner,
    n_oversamples: int = 10,
    n_iter: int = 4,
    dtype=np.float64,
    lean: bool = False,
):
    """Leading ``k`` singular triplets of X: ``U`` (m, k), ``S`` (k,), ``V`` (n, k).

    ``U`` and ``V`` are Dask arrays chunked like X's rows and columns.
    Reads X ``2 + 2 * n_iter`` times (``n_iter`` power iterations). The
    (m, l) and (n, l) sketches are held in ``dtype`` (float32 halves their
    memory, the largest of the fit's setup); Grams are decomposed in float64.

    ``lean``: the last sketch ``Y`` is not turned into an orthonormal basis
    ``Q = Y·M`` (one Gram, not two, and no (m, l) array formed): ``Qᵀ·X`` is
    taken as ``(Xᵀ·Y)·M`` and ``U`` as ``Y·(M·U_B)``. That saves three of the
    five (m, l)-sized dense passes of the setup (on 3M rows, l = 42, float32:
    about 2.5 s of 2 cores, most of a fit iteration), at the accuracy of one
    Cholesky-QR pass (orthogonality to about ``κ(Y)²`` times the rounding
    unit), which an initialisation can spare. :func:`lean_basis` says when.
    """
    m, n = X.shape
    dtype = np.dtype(dtype)
    l = min(k + n_oversamples, m, n)  # noqa: E741 -- the sketch width, named as in Halko et al. and the comments
    Xf = X if X.dtype == dtype else X.map_blocks(_as_dtype, dtype, dtype=dtype)
    omega = random_tall(X.chunks[1], l, seed, "omega", 1.0, dtype, absolute=False)
    # The passes run where X's row blocks are: the fit's iterations expect them there.
    owners = runner.row_owners(X.numblocks[0])
    # Each sketch is handed to _orthonormalize, which lets its blocks go as the next ones are made.
    held = list(runner.persist(blocked.xdot(Xf, omega, owners)))
    for _ in range(n_iter):
        Q = _orthonormalize(held, runner)
        Z = _orthonormalize(list(runner.persist(blocked.xtdot(Xf, Q, owners))), runner)
        del Q
        held = list(runner.persist(blocked.xdot(Xf, Z, owners)))
        del Z
    if lean:
        (basis,) = held
        # M stays float64 (it is applied twice below), but the Gram is of Y's precision.
        M = _gram_inverse_sqrt(runner.compute(blocked.gram(basis)), np.float64, precision=basis.dtype)
        (Bt,) = runner.persist(
            blocked.xtdot(Xf, basis, owners).map_blocks(np.dot, M.astype(dtype, copy=False), dtype=dtype)
        )
    else:
        basis = _orthonormalize(held, runner)
        M = None
        (Bt,) = runner.persist(blocked.xtdot(Xf, basis, owners))  # (n, l) = (Q' X)'
    G = np.asarray(runner.compute(blocked.gram(Bt)), dtype=np.float64)  # B B'
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1][:k]
    S = np.sqrt(np.clip(evals[order], 0, None))
    Ub = evecs[:, order]
    inv = np.where(S > 0, 1.0 / np.where(S > 0, S, 1.0), 0.0)
    to_U = Ub if M is None else M @ Ub
    U = basis.map_blocks(np.dot, to_U.astype(dtype, copy=False), dtype=dtype, chunks=(basis.chunks[0], (k,)))
    V = Bt.map_blocks(np.dot, (Ub * inv).astype(dtype, copy=False), dtype=dtype, chunks=(Bt.chunks[0], (k,)))
    return U, S, V


# --------------------------------------------------------------------------
# NNDSVD
# --------------------------------------------------------------------------


def _squares_chunk(x, axis=None, keepdims=True, negative=False, **_):
    """Dask's ``sum`` chunk of ``maximum(±x, 0) ** 2`` over rows, in one compiled pass (same bits)."""
    from . import compiled  # Numba: imported only when it runs

    out = np.zeros(x.shape[1], dtype=x.dtype)
    if x.size:
        compiled.column_squares(np.ascontiguousarray(x), negative, out)
    return out[None, :]


def _part_norm(A: da.Array, negative: bool) -> da.Array:
    """``sqrt((maximum(±A, 0) ** 2).sum(axis=0))``: Dask's reduction tree and aggregation, fused chunks.

    The chunks are :func:`_squares_chunk` instead of three elementwise tasks and their
    full-size temporaries (on 3M × 32: 1.05 → about 0.2 CPU seconds); the tree over
    the blocks is :func:`dask.array.sum`'s own, so the norms keep their bits.
    """
    from dask.array import chunk

    dtype = np.zeros(1, dtype=A.dtype).sum().dtype
    total = da.reduction(A, functools.partial(_squares_chunk, negative=negative), chunk.sum, axis=0, dtype=dtype)
    return da.sqrt(total)


@aligned_inputs
def _nndsvd_block(U, coef_pos, coef_neg, eps, fill, fill_seed, tag, dtype, block_info=None):
    """One block of an NNDSVD factor, computed in float64 and returned as ``dtype``."""
    if tag is None:
        from . import compiled  # Numba: imported only when it runs

        out = np.empty(U.shape, dtype=dtype)
        cp, cn = (np.ascontiguousarray(c, dtype=np.float64) for c in (coef_pos, coef_neg))
        compiled.nndsvd_fold(U, cp, cn, float(eps), 0.0 if fill is None else float(fill), fill is not None, out)
        return out
    out = np.maximum(U, 0) * coef_pos + np.maximum(-U, 0) * coef_neg
    out[out < eps] = 0
    if fill is not None:
        zero = out == 0
        if tag is None:
            out[zero] = fill
        else:
            start, stop = block_info[0]["array-location"][0]
            noise = _normal_rows(fill_seed, tag, start, stop, U.shape[1])
            out[zero] = np.abs(fill * noise[zero] / 100)
    return out.astype(dtype, copy=False)


def power_iterations(nnz: int) -> int:
    """Power iterations of the NNDSVD's randomized SVD for an X with ``nnz`` stored entries.

    ``POWER_ITERATIONS`` (4, scikit-learn's choice) up to ``LARGE_NNZ``
    entries, ``LARGE_POWER_ITERATIONS`` (0) above: each one reads X twice and
    orthonormalizes two (m, l) and (n, l) sketches, so on a large X four of
    them cost several NMF iterations, more than a less accurate start loses.
    """
    return POWER_ITERATIONS if nnz < LARGE_NNZ else LARGE_POWER_ITERATIONS


def lean_basis(nnz: int) -> bool:
    """Whether the randomized SVD of an X with ``nnz`` stored entries skips forming its basis (``lean``).

    From ``LARGE_NNZ`` entries, where the dense passes over the (m, l) sketch
    cost as much as a pass over X. Measured on 45M ratings of 3M users
    (k 32, ``benchmarks/bench_scale.py``): see the README's "Blocking and sizing".
    """
    return nnz >= LARGE_NNZ


def sketch_dtype(nnz: int, dtype) -> np.dtype:
    """Float type of the randomized SVD's sketches: float64, or X's own from ``LARGE_NNZ`` entries.

    On a large float32 X the float64 (m, k + 10) sketches are the largest
    arrays of the whole fit (two at a time: 1 GB each for 3M rows); the
    initial factors are float32 anyway.
    """
    return np.dtype(np.float64) if nnz < LARGE_NNZ else np.dtype(dtype)


def nndsvd_init(
    X: da.Array,
    k: int,
    variant: str,
    mean: float,
    seed: int,
    runner,
    eps: float = 1e-6,
    svd=None,
    n_iter: int = 4,
    dtype=np.float64,
    lean: bool = False,
):
    """NNDSVD, NNDSVDa (zeros filled with mean(X)) or NNDSVDar (small noise).

    ``svd``: optional ``(U, S, V)`` from ``randomized_svd`` with at least k
    components, reused (truncated) instead of a new SVD — e.g. across the
    ranks tried by rank selection. ``n_iter``: power iterations of the
    randomized SVD (see :func:`power_iterations`); ``dtype``: of its
    sketches (see :func:`sketch_dtype`); ``lean``: see :func:`randomized_svd`
    and :func:`lean_basis`.
    """
    if svd is None:
        U, S, V = randomized_svd(X, k, seed, runner, n_iter=n_iter, dtype=dtype, lean=lean)
    else:
        U, S, V = svd[0][:, :k], np.asarray(svd[1])[:k], svd[2][:, :k]
    U, V = runner.persist(U, V)
    norms = np.asarray(
        runner.compute(da.stack([_part_norm(U, False), _part_norm(U, True), _part_norm(V, False), _part_norm(V, True)]))
    )
    xp, xn, yp, yn = norms
    mp, mn = xp * yp, xn * yn
    pos = mp > mn
    lbd = np.sqrt(S * np.where(pos, mp, mn))

    def safe(a, b):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)

    cu_pos = np.where(pos, safe(lbd, xp), 0.0)
    cu_neg = np.where(pos, 0.0, safe(lbd, xn))
    cv_pos = np.where(pos, safe(lbd, yp), 0.0)
    cv_neg = np.where(pos, 0.0, safe(lbd, yn))
    # The leading singular pair is non-negative up to sign: take |u0|, |v0|.
    cu_pos[0] = cu_neg[0] = cv_pos[0] = cv_neg[0] = math.sqrt(S[0])

    if variant == "nndsvd":
        fill, tags = None, (None, None)
    elif variant == "nndsvda":
        fill, tags = mean, (None, None)
    else:
        fill, tags = mean, ("fillW", "fillH")
    # Cast to X's dtype in the same task: no float64 copy of a factor block is kept between tasks.
    W = U.map_blocks(_nndsvd_block, cu_pos, cu_neg, eps, fill, seed, tags[0], X.dtype, dtype=X.dtype)
    Ht = V.map_blocks(_nndsvd_block, cv_pos, cv_neg, eps, fill, seed, tags[1], X.dtype, dtype=X.dtype)
    return W, Ht


def as_tall(A, row_chunks: tuple[int, ...], dtype) -> da.Array:
    """A user-supplied factor (NumPy or Dask), rechunked to the solver layout."""
    if isinstance(A, da.Array):
        A = A.astype(dtype) if A.dtype != dtype else A
        return A.rechunk((row_chunks, -1))
    A = np.ascontiguousarray(A, dtype=dtype)
    return da.from_array(A, chunks=(row_chunks, A.shape[1]), name="dnmf-custom-" + tokenize(A, row_chunks))
