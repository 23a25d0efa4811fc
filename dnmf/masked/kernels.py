"""Per-block kernels of masked (weighted) NMF: explicit ratings and implicit feedback.

Pure NumPy/SciPy, no Dask: the graphs of :mod:`dnmf.masked.graph` call these
functions on one *band* of rows at a time (a CSR matrix holding whole rows).

Model. ``score(i, j) = mu + b_i + c_j + w_i · h_j`` with ``w_i, h_j >= 0``;
the biases ``b, c`` (optional) are free in sign and ``mu`` is a constant (the
mean of the observed ratings when biases are used, else 0).

Orientation. Both factors are kept *tall*, augmented with their bias: the
"own" side of a band is ``U`` (rows, q) and the "other" side ``V`` (n, q),
with ``q = k + 1`` when biases are fitted (column ``k`` is the bias) and
``q = k`` otherwise. Updating ``W`` uses the row bands of X with ``V = [Hᵀ, c]``;
updating ``H`` is the same call on the column bands (rows of Xᵀ) with
``V = [W, b]``.

Objectives, per row ``i`` with observed set Ω_i, ``s_ij = u_i · φ_j`` where
``φ_j = [v_j, 1]`` (the 1 multiplies the row's own bias):

- explicit: ``Σ_Ω (t_ij − s_ij)² + r_i``, ``t_ij = x_ij − mu − c_j``
  (missing entries have no term at all);
- implicit (Hu, Koren & Volinsky 2008): ``Σ_all j c_ij (p_ij − s_ij)² + r_i``
  with ``p = 0, c = 1`` at the missing entries and, on Ω, the confidence
  ``c = conf(x)`` and preference ``p = pref(x)`` of :func:`confidence_weights`
  (by default ``c = 1 + confidence·x, p = 1``); ``Σ_all`` is never formed:
  it is ``uᵀ(VᵀV)u + Σ_Ω[(c−1)s² − 2cps + cp]`` (the Gram trick, p ∈ {0, 1}),
  so a row costs O(|Ω_i|·q²) whatever n;
- ``r_i = s_i·(l2·||w_i||² + l1·Σ w_i + l2_bias·b_i²)`` with ``s_i = |Ω_i|``
  when the penalty is scaled by counts (ALS-WR, Zhou et al. 2008),
  ``s_i = (max(|Ω_i|, 1)/count_mean)^count_power`` when ``count_power`` is set
  (the implicit model's users, see :func:`row_scale`), else 1.

Both are ``½uᵀC_iu − d_iᵀu`` (times 2, plus a constant) with
``C_i = G + Σ_Ω a_ij φ_jφ_jᵀ + diag(l2_i)`` and ``d_i = Σ_Ω b_ij φ_j − l1_i/2``,
where explicit: ``G = 0, a = 1, b = t``; implicit: ``G = VᵀV, a = c − 1, b = c·p``.
Three solvers minimise it over the row's ``u`` (non-negative, biases free):

- ``"als"``: exact, by block principal pivoting with one Gram per row
  (:func:`nnls_rows`, Kim & Park 2011): O(|Ω|·q² + rows·q³) per half-step;
- ``"ccd"``: coordinate descent on the residuals at Ω, coordinate by
  coordinate as in CCD++ (Yu et al. 2012), ``sweeps`` passes per half-step:
  O(|Ω|·q) per sweep, no q² or q³ term;
- ``"cg"``: ``cg_steps`` projected conjugate-gradient steps from the row's
  current ``u`` (:mod:`dnmf.masked.compiled`): O(|Ω|·q + q²) per step, ``C``
  never formed (``G`` times a vector, then two passes over the entries).

Determinism. Every row is computed from its own entries only, by code whose
order of operations depends on the row alone (never on which other rows
share its band), so a factor's bits do not depend on the blocking. Sums that
span rows (the loss, the mean) are exact (:func:`exact_sum`), hence
independent of any summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

from ..engine.blocks import aligned_inputs, as_block
from ..nmf import nnls

#: Bytes of temporaries per batch of rows (gathered features and their
#: pairwise products); bounds a task's memory whatever the band's size.
BATCH_BYTES = 32 * 2**20
#: Rows per batch at most: bounds the (rows, q, q) Gram stack and the pivoting's copies of it
#: (about 4 stacks: 36 MB at q = 33; 4096 rows took 143 MB, which paused a 400 MiB worker,
#: and were no faster: 3-iteration fits of 2M ratings, 39-42 s against 33-38 s).
BATCH_ROWS = 1024
#: Largest table of pairwise feature products (the band's distinct columns ×
#: q²) that "als" precomputes; the per-row Grams are then one SciPy CSR ×
#: dense product. Bigger tables are replaced by per-entry products, in
#: batches: the same numbers added in the same order.
TABLE_BYTES = 256 * 2**20
#: Largest stack of per-row Grams (rows × q²) that :func:`update_streamed`
#: accumulates at once; more rows take more passes over the other side's blocks.
GRAM_BYTES = 256 * 2**20
# Relative tolerance of the sign tests of the pivoting (as nnls.nnls_bpp).
_SIGN_RTOL = 1e-11


@dataclass(frozen=True)
class MaskedParams:
    """Everything a masked half-step needs besides the arrays (hashable).

    ``l2``, ``l1`` weigh the factor entries and ``l2_bias`` the bias, all per
    observation when ``count_scaled`` (ALS-WR); ``confidence``,
    ``confidence_form``, ``epsilon``, ``confidence_floor`` and
    ``preference_threshold`` give the implicit model's confidence and
    preference (:func:`confidence_weights`); ``sweeps`` and ``cg_steps``
    are the passes of the "ccd" and "cg" solvers per half-step.
    """

    k: int
    feedback: str = "explicit"  # or "implicit"
    solver: str = "als"  # or "ccd", "cg"
    biases: bool = False
    l2: float = 0.0
    l1: float = 0.0
    l2_bias: float = 0.0
    count_scaled: bool = False
    confidence: float = 1.0
    confidence_form: str = "linear"  # or "log", "proportional"
    epsilon: float = 1.0
    confidence_floor: float = 0.0
    preference_threshold: float | None = None
    global_mean: float = 0.0
    sweeps: int = 1
    # "cg": projected conjugate-gradient steps per half-step.
    cg_steps: int = 3
    # Implicit model: the users' penalty grows as (count/count_mean)^count_power
    # (the items' never: :func:`item_side` drops it).
    count_power: float = 0.0
    count_mean: float = 1.0

    @property
    def q(self) -> int:
        """Width of the augmented factors: k, plus one bias column."""
        return self.k + (1 if self.biases else 0)


# --------------------------------------------------------------------------
# Exact sums: order-independent totals
# --------------------------------------------------------------------------

#: An exact sum ``N * 2**E`` as the pair of Python ints ``(N, E)``.
ExactSum = tuple
ZERO: ExactSum = (0, 0)
_EXACT_CHUNK = 1 << 22


def exact_sum(values) -> ExactSum:
    """The exact sum of float values, as ``(N, E)`` meaning ``N * 2**E``.

    Each float is ``M·2^(e−53)`` with an integer ``M`` of at most 53 bits
    (``np.frexp``); the ``M`` of equal exponent are added in integer
    arithmetic (split in 26/27-bit halves so that float64 bin counts stay
    exact), then combined as Python ints. O(len) vectorised work; the result
    does not depend on the order of ``values``, so partial sums of any split
    combine (:func:`exact_add`) to the same total.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v != 0.0]
    if v.size == 0:
        return ZERO
    if not np.isfinite(v).all():
        raise ValueError("exact_sum needs finite values; got NaN or infinity.")
    mant, expo = np.frexp(v)
    M = (mant * 2.0**53).astype(np.int64)
    e0 = int(expo.min())
    shift = (expo - e0).astype(np.intp)
    hi = (M >> 26).astype(np.float64)
    lo = (M & ((1 << 26) - 1)).astype(np.float64)
    total = 0
    for start in range(0, v.size, _EXACT_CHUNK):
        sl = slice(start, start + _EXACT_CHUNK)
        sh = shift[sl]
        bins = int(sh.max()) + 1
        hs = np.bincount(sh, weights=hi[sl], minlength=bins)
        ls = np.bincount(sh, weights=lo[sl], minlength=bins)
        for s in np.flatnonzero((hs != 0) | (ls != 0)):
            total += ((int(hs[s]) << 26) + int(ls[s])) << int(s)
    return (total, e0 - 53)


def exact_add(*parts: ExactSum) -> ExactSum:
    """The exact total of exact sums (associative and commutative)."""
    parts = [p for p in parts if p[0] != 0]
    if not parts:
        return ZERO
    e = min(p[1] for p in parts)
    return (sum(n << (pe - e) for n, pe in parts), e)


def exact_value(s: ExactSum, divisor: int = 1) -> float:
    """``s / divisor`` correctly rounded to a float."""
    n, e = s
    value = Fraction(n) * (Fraction(2) ** e) / divisor
    return float(value)


# --------------------------------------------------------------------------
# Observed entries and bands
# --------------------------------------------------------------------------


def observed(block) -> sp.csr_matrix:
    """The observed entries of one block of X as a canonical CSR matrix.

    Sparse blocks: every *stored* entry is observed (an explicit 0 is a 0
    rating); absent entries are missing. Dense blocks: every non-NaN entry is
    observed. Values keep their dtype.
    """
    a = as_block(block)
    if sp.issparse(a):
        return a
    if a.ndim != 2:
        raise ValueError(f"A block of X must be 2-D; got shape {a.shape}.")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"X must hold numbers; got dtype {a.dtype}.")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    rows, cols = np.nonzero(~np.isnan(a))
    return sp.csr_matrix((a[rows, cols], (rows, cols)), shape=a.shape)


def row_band(blocks) -> sp.csr_matrix:
    """One CSR band of whole rows from the blocks ``X[i, 0], X[i, 1], ...``."""
    parts = [observed(b) for b in blocks]
    if len(parts) == 1:
        return parts[0]
    out = sp.hstack(parts, format="csr")
    out.sort_indices()
    return out


def col_band(blocks) -> sp.csr_matrix:
    """The rows of ``Xᵀ`` for one column block, from ``X[0, j], X[1, j], ...``.

    Costs one CSR→CSC conversion (O(nnz + rows)) of the stacked blocks.
    """
    parts = [observed(b) for b in blocks]
    stacked = parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
    out = sp.csr_matrix(stacked.T)
    out.sort_indices()
    return out


@aligned_inputs
def block_summary(block) -> tuple:
    """Validation summary of one block's observed entries.

    Returns ``(exact_sum, nnz, min, max, n_nonfinite)`` (min/max over the
    finite observed values; ±inf when there are none).
    """
    x = observed(block).data
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    good = x[finite].astype(np.float64, copy=False) if n_bad else x.astype(np.float64, copy=False)
    if good.size:
        return exact_sum(good), int(x.size), float(good.min()), float(good.max()), n_bad
    return ZERO, int(x.size), math.inf, -math.inf, n_bad


@aligned_inputs
def block_confidence(block, p: MaskedParams) -> ExactSum:
    """The exact sum of the implicit confidences ``c`` (:func:`confidence_weights`) at one block's observed entries."""
    x = observed(block).data
    if x.size == 0:
        return ZERO
    c, _ = confidence_weights(x, p)
    return exact_sum(c)


def combine_summaries(parts) -> tuple:
    """Combine :func:`block_summary` results (in any order: exact)."""
    return (
        exact_add(*(p[0] for p in parts)),
        sum(p[1] for p in parts),
        min(p[2] for p in parts),
        max(p[3] for p in parts),
        sum(p[4] for p in parts),
    )


# --------------------------------------------------------------------------
# Row batches: bounded temporaries, per-row determinism
# --------------------------------------------------------------------------


def _budget(width: int) -> int:
    """Entries per batch so that (entries, width) float64 temporaries fit BATCH_BYTES."""
    return max(1, BATCH_BYTES // (8 * max(1, width)))


def _row_batches(indptr: np.ndarray, budget: int):
    """Consecutive row ranges ``[r0, r1)`` of at most ``budget`` entries and
    ``BATCH_ROWS`` rows; a row longer than ``budget`` is a batch alone."""
    r = len(indptr) - 1
    r0 = 0
    while r0 < r:
        r1 = int(np.searchsorted(indptr, indptr[r0] + budget, side="right")) - 1
        r1 = min(max(r1, r0 + 1), r, r0 + BATCH_ROWS)
        yield r0, r1
        r0 = r1


def _indicator(starts: np.ndarray, e: int) -> sp.csr_matrix:
    """(rows, e) CSR of ones: row r holds entries ``starts[r]`` to the next start."""
    return sp.csr_matrix((np.ones(e), np.arange(e), np.append(starts, e)), shape=(len(starts), e))


def _segment_sum(Z: np.ndarray, starts: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """Per-row sums of the entry rows of ``Z`` (segments start at ``starts``).

    Each row's entries are added one after the other, in order (SciPy's
    CSR × dense kernel on an indicator matrix, which may be passed instead
    of ``starts``), so a row's sum depends on that row's entries alone.
    (``np.add.reduceat`` does not promise an order.) ``Z`` may be 1-D (one
    value per entry) or 2-D.
    """
    ind = starts if sp.issparse(starts) else _indicator(starts, Z.shape[0])
    return np.asarray(ind @ Z)


# --------------------------------------------------------------------------
# Features and weights of one batch
# --------------------------------------------------------------------------


def _features(V: np.ndarray, idx: np.ndarray, p: MaskedParams) -> np.ndarray:
    """``φ_j`` for the entries' columns: (entries, q) float64."""
    Phi = V[idx]
    if p.biases:
        Phi[:, p.k] = 1.0
    return Phi


def confidence_weights(x: np.ndarray, p: MaskedParams) -> tuple[np.ndarray, np.ndarray]:
    """The implicit model's confidence ``c`` and preference ``p`` at observed values ``x``.

    ``confidence_form`` (α = ``p.confidence``):

    - "linear": ``c = 1 + α·x`` (Hu et al., eq. 5);
    - "log": ``c = 1 + α·log(1 + x/ε)`` (Hu et al., eq. 6; ε = ``p.epsilon``);
    - "proportional": ``c = max(α·x, floor)`` (``floor = p.confidence_floor``;
      the form of the ``implicit`` package's ALS, where a value below 1/α
      weighs less than a missing entry, whose ``c`` is 1).

    The preference is 1, or, with a ``preference_threshold`` t, ``[x >= t]``:
    an entry below t is a confident "not preferred" (``p = 0`` with its ``c``).
    Returns float64 arrays ``(c, p)`` of ``x``'s length.
    """
    _, c, pref = _confidence_terms(np.asarray(x), p)
    return c, (np.ones_like(c) if pref is None else pref)


def _confidence_terms(x: np.ndarray, p: MaskedParams):
    """``(c − 1, c, p)`` at the entries; ``p`` is None when every preference is 1.

    ``c − 1`` is computed directly where the form allows (the linear form's
    ``α·x``), so that it is exactly what the model had before the other forms.
    """
    x = x.astype(np.float64, copy=False)
    form = p.confidence_form
    if form == "linear":
        a = p.confidence * x
        c = 1.0 + a
    elif form == "log":
        a = p.confidence * np.log1p(x / p.epsilon)
        c = 1.0 + a
    elif form == "proportional":
        c = np.maximum(p.confidence * x, p.confidence_floor)
        a = c - 1.0
    else:
        raise ValueError(f"Unknown confidence_form {form!r}; use 'linear', 'log' or 'proportional'.")
    pref = None if p.preference_threshold is None else (x >= p.preference_threshold).astype(np.float64)
    return a, c, pref


def _weights(x: np.ndarray, V: np.ndarray, idx: np.ndarray, p: MaskedParams):
    """``(a, b)`` of the quadratic at the entries (``a`` None means all ones)."""
    x = x.astype(np.float64, copy=False)
    if p.feedback == "implicit":
        a, c, pref = _confidence_terms(x, p)
        return a, (c if pref is None else c * pref)
    b = x - p.global_mean
    if p.biases:
        b = b - V[idx, p.k]
    return None, b


def _free(p: MaskedParams) -> np.ndarray:
    free = np.zeros(p.q, dtype=bool)
    if p.biases:
        free[p.k] = True
    return free


def item_side(p: MaskedParams) -> MaskedParams:
    """The parameters of the item half-step: without the users' ``count_power``."""
    return replace(p, count_power=0.0, count_mean=1.0) if p.count_power else p


def row_scale(counts: np.ndarray, p: MaskedParams) -> np.ndarray:
    """``s_i``, the multiplier of row i's penalty: ``|Ω_i|`` (ALS-WR), ``(max(|Ω_i|, 1)/count_mean)^count_power`` or 1."""
    if p.count_scaled:
        return counts.astype(np.float64)
    if p.count_power:
        return (np.maximum(counts, 1).astype(np.float64) / p.count_mean) ** p.count_power
    return np.ones(counts.size)


def _penalty_weights(counts: np.ndarray, p: MaskedParams):
    """Per-row (rows, q) L2 and L1 weights."""
    scale = row_scale(counts, p)
    l2 = np.empty((counts.size, p.q))
    l2[:, : p.k] = p.l2 * scale[:, None]
    l1 = np.zeros((counts.size, p.q))
    l1[:, : p.k] = p.l1 * scale[:, None]
    if p.biases:
        l2[:, p.k] = p.l2_bias * scale
    return l2, l1


# --------------------------------------------------------------------------
# The half-step
# --------------------------------------------------------------------------


def update(
    band: sp.csr_matrix,
    U: np.ndarray,
    V: np.ndarray,
    p: MaskedParams,
    G: np.ndarray | None = None,
    *,
    solver: str | None = None,
) -> np.ndarray:
    """Minimise every row's objective over its ``u`` with the other side fixed.

    Parameters
    ----------
    band : CSR matrix of shape (r, n)
        The observed entries of these rows (see :func:`observed`).
    U : ndarray of shape (r, q)
        The rows' current factors (and bias): the warm start of "als", the
        starting point of "ccd" and "cg".
    V : ndarray of shape (n, q)
        The other side's factors (columns ``:k``) and bias (column ``k``).
    p : MaskedParams
    G : ndarray of shape (k, k), optional
        ``V[:, :k]ᵀ V[:, :k]`` over *all* of the other side (implicit only).
    solver : {"als", "ccd", "cg"}, optional
        Overrides ``p.solver`` ("als" gives the exact minimiser: fold-in).

    Returns
    -------
    U_new : ndarray of shape (r, q), float64
        Rows without observations get 0 (their minimiser).
    """
    solver = solver or p.solver
    _check_update(band, U, V, p, G, solver)
    r = band.shape[0]
    q = p.q
    indptr = band.indptr
    counts = np.diff(indptr)
    free = _free(p)
    if solver == "cg":
        from .compiled import cg_rows  # Numba's import (~0.5 s) only where "cg" runs

        args, other_bias = _cg_args(band, U, V, p, G)
        return cg_rows(*args, other_bias=other_bias)
    l2, l1 = _penalty_weights(counts, p)
    Gq = None
    if G is not None:
        Gq = np.zeros((q, q))
        Gq[: p.k, : p.k] = G
    out = np.zeros((r, q))
    width = q * q if solver == "als" else q
    budget = _budget(width)
    U = np.asarray(U, dtype=np.float64)
    table = weights = VT = None
    if solver == "als" and band.nnz:
        present = np.flatnonzero(np.bincount(band.indices, minlength=V.shape[0]))
        if present.size * width * 8 <= TABLE_BYTES:
            Phi_u = _features(V, present, p)
            table = (Phi_u[:, :, None] * Phi_u[:, None, :]).reshape(present.size, width)
            where = np.zeros(V.shape[0], dtype=np.int64)
            where[present] = np.arange(present.size)
            a_all, _ = _weights(band.data, V, band.indices, p)
            data = np.ones(band.nnz) if a_all is None else a_all
            weights = sp.csr_matrix((data, where[band.indices], indptr), shape=(r, present.size))
            budget = _budget(q)  # per-entry temporaries are now only (entries, q)
    for r0, r1 in _row_batches(indptr, budget):
        rows = np.arange(r0, r1)[counts[r0:r1] > 0]
        if rows.size == 0:
            continue
        e0, e1 = int(indptr[r0]), int(indptr[r1])
        idx = band.indices[e0:e1]
        a, b = _weights(band.data[e0:e1], V, idx, p)
        starts = (indptr[rows] - e0).astype(np.intp)
        if solver == "ccd":
            if VT is None:
                VT = np.ascontiguousarray(V.T)
            PhiT = VT[:, idx]
            if p.biases:
                PhiT[p.k] = 1.0
            local = np.repeat(np.arange(rows.size), counts[rows])
            out[rows] = _ccd_rows(
                U[rows], PhiT, a, b, _indicator(starts, e1 - e0), local, Gq, l2[rows], l1[rows], free, p.sweeps
            )
            continue
        Phi = _features(V, idx, p)
        if table is not None:
            C = np.asarray(weights[rows] @ table).reshape(rows.size, q, q)
            if Gq is not None:
                C += Gq
        else:
            C = _row_grams(Phi, a, starts, budget, Gq)
        C[:, np.arange(q), np.arange(q)] += l2[rows]
        D = _segment_sum(b[:, None] * Phi, starts) - 0.5 * l1[rows]
        out[rows] = nnls_rows(C, D, free=free, passive=U[rows] > 0)
    return out


def _row_grams(Phi, a, starts, budget, Gq):
    """``G + Σ_Ω a φφᵀ`` per row: (rows, q, q).

    A row longer than ``budget`` entries (then alone in its batch) is done in
    pieces, each piece's sum starting from the previous one's, which adds the
    same numbers in the same order as one pass.
    """
    q = Phi.shape[1]

    def products(sl):
        P = Phi[sl]
        Z = (P[:, :, None] * P[:, None, :]).reshape(P.shape[0], q * q)
        if a is not None:
            Z *= a[sl][:, None]
        return Z

    if len(starts) == 1 and Phi.shape[0] > budget:
        S = None
        for s0 in range(0, Phi.shape[0], budget):
            Z = products(slice(s0, s0 + budget))
            S = _segment_sum(Z if S is None else np.vstack([S, Z]), np.zeros(1, dtype=np.intp))
    else:
        S = _segment_sum(products(slice(None)), starts)
    C = S.reshape(S.shape[0], q, q)
    if Gq is not None:
        C += Gq
    return C


def _ccd_rows(U, PhiT, a, b, ind, local, Gq, l2, l1, free, sweeps):
    """Coordinate descent over each row's q coordinates, residuals at Ω kept current.

    ``PhiT`` (q, entries) holds the features by coordinate (contiguous) and
    ``ind`` the (rows, entries) indicator of the rows' entries, ``local``
    each entry's row (sorted). Work that nothing reads is skipped, so the
    numbers are those of the plain loop: the implicit model's ``gT = Gq·U``
    is kept current, in the last sweep, only for the coordinates still to
    come (through one preallocated buffer: a fresh (q, rows) temporary per
    coordinate evicts the entry arrays from the caches), and the scores
    ``s`` are not updated after the last coordinate.
    A row's change is spread over its entries by ``np.repeat`` (a copy per
    row, about twice as fast as gathering with ``local``).
    """
    q = PhiT.shape[0]
    UT = np.ascontiguousarray(U.T)
    counts = np.diff(ind.indptr)
    s = np.einsum("je,je->e", UT[:, local], PhiT)
    sq = PhiT * PhiT if a is None else PhiT * PhiT * a
    hess = np.asarray(ind @ np.ascontiguousarray(sq.T)).T + l2.T
    del sq
    gT = gtmp = None
    if Gq is not None:
        hess += np.diag(Gq)[:, None]
        gT = Gq @ UT
        gtmp = np.empty_like(gT)
    hess = np.where(hess > 0, hess, np.inf)  # a zero curvature: leave that coordinate
    l2T, l1T = np.ascontiguousarray(l2.T), np.ascontiguousarray(l1.T)
    for sweep in range(sweeps):
        last = sweep == sweeps - 1
        for t in range(q):
            phi = PhiT[t]
            resid = (s - b) if a is None else (a * s - b)
            resid *= phi
            grad = ind @ resid
            grad += l2T[t] * UT[t] + 0.5 * l1T[t]
            if gT is not None:
                grad += gT[t]
            new = UT[t] - grad / hess[t]
            if not free[t]:
                np.maximum(new, 0.0, out=new)
            delta = new - UT[t]
            UT[t] = new
            if last and t == q - 1:
                break
            s += np.repeat(delta, counts) * phi
            if gT is not None:
                lo = t + 1 if last else 0
                np.multiply(Gq[lo:, t : t + 1], delta, out=gtmp[lo:])
                gT[lo:] += gtmp[lo:]
    return UT.T


# --------------------------------------------------------------------------
# Non-negative least squares, one Gram per row
# --------------------------------------------------------------------------


def _check_update(band, U, V, p: MaskedParams, G, solver: str) -> None:
    if solver not in ("als", "ccd", "cg"):
        raise ValueError(f"Unknown masked solver {solver!r}; use 'als', 'ccd' or 'cg'.")
    r, q = band.shape[0], p.q
    if U.shape != (r, q) or V.shape != (band.shape[1], q):
        raise ValueError(
            f"Shapes do not match: band {band.shape}, U {U.shape}, V {V.shape}; expected U "
            f"({r}, {q}) and V ({band.shape[1]}, {q})."
        )
    if p.feedback == "implicit" and G is None:
        raise ValueError("The implicit model needs G, the Gram of the other side's factors.")


def _cg_args(band: sp.csr_matrix, U: np.ndarray, V: np.ndarray, p: MaskedParams, G: np.ndarray | None):
    """The arguments of :func:`dnmf.masked.compiled.cg_rows` for a band, and its ``other_bias``."""
    x = band.data.astype(np.float64, copy=False)
    if p.feedback == "implicit":
        a, c, pref = _confidence_terms(x, p)
        a_b = (a, c if pref is None else c * pref)
    else:
        # The other side's bias is taken off inside the loop (as _weights
        # would, same bits), not by a gather of V's rows of its own.
        a_b = (None, x - p.global_mean)
    l2, l1 = _penalty_weights(np.ones(1, dtype=np.int64), replace(p, count_scaled=False, count_power=0.0))
    scale = row_scale(np.diff(band.indptr), p)
    args = (band.indptr, band.indices, *a_b, V, U, G, scale, l2[0], l1[0], _free(p), p.k, p.biases, p.cg_steps)
    return args, p.feedback == "explicit" and p.biases


def update_with_loss(
    band: sp.csr_matrix, U: np.ndarray, V: np.ndarray, p: MaskedParams, G: np.ndarray | None = None
) -> tuple[np.ndarray, ExactSum]:
    """:func:`update`, and :func:`band_loss` of its result (the column half-step).

    Parameters and shapes are those of :func:`update`. The "cg" solver
    scores the entries in the same compiled pass as the update, while each
    row's entries are in cache, instead of gathering ``V``'s rows once more.

    Returns
    -------
    U_new : ndarray of shape (r, q), float64
    loss : ExactSum
        The data term at the band's entries, with ``U_new``.
    """
    if p.solver != "cg":
        U_new = update(band, U, V, p, G)
        return U_new, band_loss(band, U_new, V, p)
    _check_update(band, U, V, p, G, p.solver)
    from .compiled import cg_rows_scored

    args, other_bias = _cg_args(band, U, V, p, G)
    explicit = p.feedback == "explicit"
    U_new, s = cg_rows_scored(*args, other_bias=other_bias, mean=p.global_mean if explicit else None)
    a, b = args[2], args[3]
    if explicit:
        terms = (band.data.astype(np.float64, copy=False) - s) ** 2
    else:
        # _entry_terms' implicit terms, from the weights the update used.
        terms = a * s * s - 2.0 * b * s + b
    return U_new, exact_sum(terms)


# --------------------------------------------------------------------------
# The item half-step with the users' factors read block by block
# --------------------------------------------------------------------------


def split_by_blocks(band: sp.csr_matrix, offsets: np.ndarray) -> list[sp.csr_matrix]:
    """The band's entries split by the block of the other side their column is in.

    ``offsets`` (blocks + 1,) are the other side's block boundaries; part
    ``i`` is a (rows, offsets[i+1] − offsets[i]) CSR with block-local
    columns. Every row keeps its entries in their order, so a row's entries
    in part 0, then part 1, ... are the row's entries of ``band`` in order
    (its columns are sorted: :func:`col_band` sorts them).
    """
    if not band.has_sorted_indices:
        band = band.sorted_indices()
    r = band.shape[0]
    nb = len(offsets) - 1
    which = np.searchsorted(offsets[1:-1], band.indices, side="right") if nb > 1 else np.zeros(band.nnz, np.intp)
    rows_of = np.repeat(np.arange(r), np.diff(band.indptr))
    order = np.argsort(which, kind="stable")  # by block, each block's entries in band order
    bounds = np.searchsorted(which[order], np.arange(nb + 1))
    parts = []
    for i in range(nb):
        sel = order[bounds[i] : bounds[i + 1]]
        indptr = np.zeros(r + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows_of[sel], minlength=r), out=indptr[1:])
        cols = (band.indices[sel] - offsets[i]).astype(band.indices.dtype)
        width = int(offsets[i + 1] - offsets[i])
        parts.append(sp.csr_matrix((band.data[sel], cols, indptr), shape=(r, width)))
    return parts


def _continued(prev: np.ndarray, rows: np.ndarray, indptr: np.ndarray, cols: np.ndarray, weights, extra):
    """``prev[rows] + Σ weights·extra[cols]`` per row, the row's terms added after its previous sum, in order.

    One SciPy CSR × dense product on ``[prev[rows]; extra]`` whose row ``t``
    is ``1·prev[t]`` followed by the row's entries: a row's running sum goes
    on exactly as if its earlier entries and these had been one segment
    (``0 + 1·s`` is ``s``), which is what makes the streamed sums equal the
    one-pass sums of :func:`update` bit for bit.
    """
    nr = rows.size
    out_ptr = indptr + np.arange(nr + 1)
    first = out_ptr[:-1]
    index = np.empty(out_ptr[-1], dtype=np.int64)
    data = np.empty(out_ptr[-1])
    is_entry = np.ones(out_ptr[-1], dtype=bool)
    is_entry[first] = False
    index[first] = np.arange(nr)
    data[first] = 1.0
    index[is_entry] = nr + cols
    data[is_entry] = 1.0 if weights is None else weights
    ind = sp.csr_matrix((data, index, out_ptr), shape=(nr, nr + extra.shape[0]))
    return np.asarray(ind @ np.vstack([prev[rows], extra]))


def update_streamed(
    band: sp.csr_matrix,
    U: np.ndarray,
    read_block,
    offsets: np.ndarray,
    p: MaskedParams,
    G: np.ndarray | None = None,
) -> tuple[np.ndarray, ExactSum]:
    """:func:`update_with_loss` ("als") with the other side's factors read one block at a time.

    For a column band whose users' factors do not fit in memory (a factor
    store): the per-row Grams and right-hand sides are accumulated over the
    other side's blocks, each block read when its turn comes, then solved;
    the loss is a second pass over the blocks. The sums are the same sums in
    the same order as :func:`update`'s, and the loss terms the same terms,
    so the result is bit-identical to ``update_with_loss(band, U, V, p, G)``
    with ``V`` the blocks stacked.

    Parameters
    ----------
    band : CSR matrix of shape (r, n)
    U : ndarray of shape (r, q)
        The rows' current factors (the warm start of the pivoting).
    read_block : callable
        ``read_block(i)`` returns block ``i`` of the other side, (n_i, q).
    offsets : ndarray of shape (blocks + 1,)
        The other side's block boundaries (``offsets[-1] == n``).
    p : MaskedParams
        ``p.solver`` must be "als".
    G : ndarray of shape (k, k), optional
        The other side's Gram (implicit only).

    Returns
    -------
    U_new : ndarray of shape (r, q), float64
    loss : ExactSum
        The data term at the band's entries, with ``U_new``.

    Memory: the Grams of at most :data:`GRAM_BYTES` worth of rows and one
    block of the other side, whatever n; a band with more rows reads the
    blocks once per such group of rows (and once more for the loss).
    """
    if p.solver != "als":
        raise ValueError(f"Reading the other side block by block needs solver='als'; got {p.solver!r}.")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets[-1] != band.shape[1]:
        raise ValueError(f"The blocks cover {int(offsets[-1])} columns; the band has {band.shape[1]}.")
    if p.feedback == "implicit" and G is None:
        raise ValueError("The implicit model needs G, the Gram of the other side's factors.")
    r, q = band.shape[0], p.q
    if U.shape != (r, q):
        raise ValueError(f"Shapes do not match: band {band.shape}, U {U.shape}; expected U ({r}, {q}).")
    parts = split_by_blocks(band, offsets)
    counts = np.diff(band.indptr)
    l2, l1 = _penalty_weights(counts, p)
    free = _free(p)
    out = np.zeros((r, q))
    # Rows in groups whose Grams fit GRAM_BYTES, each group one pass over the blocks.
    group = max(1, GRAM_BYTES // (8 * q * q))
    for g0 in range(0, r, group):
        g1 = min(g0 + group, r)
        C, D = _streamed_grams([part[g0:g1] for part in parts], read_block, p)
        _solve_rows(C, D, g0, counts, l2, l1, free, G, U, p, out)
        del C, D
    total = ZERO
    loss_budget = _budget(q)
    for i, part in enumerate(parts):
        if part.nnz == 0:
            continue
        V = _checked_block(read_block(i), part.shape[1], q, i)
        pc = np.diff(part.indptr)
        for r0, r1 in _row_batches(part.indptr, loss_budget):
            e0, e1 = int(part.indptr[r0]), int(part.indptr[r1])
            if e1 == e0:
                continue
            local = np.repeat(np.arange(r0, r1), pc[r0:r1])
            s = np.einsum("ij,ij->i", out[local, : p.k], V[part.indices[e0:e1], : p.k])
            total = exact_add(total, exact_sum(_entry_terms(part[r0:r1], out[r0:r1], V, s, p)))
    return out, total


def _streamed_grams(parts: list, read_block, p: MaskedParams) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``Σ a·φφᵀ`` (rows, q²) and ``Σ b·φ`` (rows, q) over the parts' entries, block after block."""
    r, q = parts[0].shape[0], p.q
    C = np.zeros((r, q * q))
    D = np.zeros((r, q))
    budget = _budget(q * q)
    for i, part in enumerate(parts):
        if part.nnz == 0:
            continue
        V = _checked_block(read_block(i), part.shape[1], q, i)
        touched = np.flatnonzero(np.diff(part.indptr))
        t_ptr = np.concatenate([[0], np.cumsum(np.diff(part.indptr)[touched])])
        for s0, s1 in _row_batches(t_ptr, budget):
            rows = touched[s0:s1]
            e0, e1 = int(t_ptr[s0]), int(t_ptr[s1])
            g0 = int(part.indptr[rows[0]])
            idx = part.indices[g0 : g0 + (e1 - e0)]
            local_ptr = t_ptr[s0 : s1 + 1] - e0
            present, inverse = np.unique(idx, return_inverse=True)
            Phi_u = _features(V, present, p)
            table = (Phi_u[:, :, None] * Phi_u[:, None, :]).reshape(present.size, q * q)
            a, b = _weights(part.data[g0 : g0 + (e1 - e0)], V, idx, p)
            C[rows] = _continued(C, rows, local_ptr, inverse, a, table)
            D[rows] = _continued(D, rows, local_ptr, np.arange(e1 - e0), None, b[:, None] * _features(V, idx, p))
    return C, D


def _solve_rows(C, D, g0, counts, l2, l1, free, G, U, p: MaskedParams, out) -> None:
    """Rows ``g0 ..`` of ``out`` from their accumulated Grams: :func:`update`'s finish, batch by batch."""
    q = p.q
    diag = np.arange(q)
    Gq = None
    if G is not None:
        Gq = np.zeros((q, q))
        Gq[: p.k, : p.k] = G
    for r0 in range(0, C.shape[0], BATCH_ROWS):
        local = np.arange(r0, min(r0 + BATCH_ROWS, C.shape[0]))
        local = local[counts[g0 + local] > 0]
        if local.size == 0:
            continue
        rows = g0 + local
        Cr = C[local].reshape(local.size, q, q)
        if Gq is not None:
            Cr += Gq
        Cr[:, diag, diag] += l2[rows]
        Dr = D[local] - 0.5 * l1[rows]
        out[rows] = nnls_rows(Cr, Dr, free=free, passive=U[rows] > 0)


def _checked_block(V: np.ndarray, rows: int, q: int, i: int) -> np.ndarray:
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (rows, q):
        raise ValueError(f"Block {i} of the other side is {V.shape}; expected ({rows}, {q}).")
    return V


def nnls_rows(
    C: np.ndarray,
    D: np.ndarray,
    *,
    free: np.ndarray | None = None,
    passive: np.ndarray | None = None,
    max_iter: int | None = None,
) -> np.ndarray:
    """Solve ``min ½ xᵀC_r x − d_rᵀx`` subject to ``x[~free] >= 0``, for every row r.

    Block principal pivoting (Kim & Park 2011) as :func:`dnmf.nmf.nnls.nnls_bpp`,
    but every row has its own Gram ``C_r`` (a masked problem) and the
    ``free`` coordinates (biases) are always passive. Each round solves the
    rows still infeasible with one batched LAPACK call on the systems
    ``C_r[F, F] x_F = d_r[F]`` (embedded in q×q with an identity outside F);
    rows that cycle past ``max_iter`` are finished by Lawson–Hanson
    (:func:`dnmf.nmf.nnls.nnls_active_set`) after eliminating the free
    coordinates. Every row's result depends on its own data only.

    Parameters
    ----------
    C : ndarray of shape (r, q, q)
        Symmetric positive semi-definite Grams (definite on ``free``).
    D : ndarray of shape (r, q)
    free : ndarray of bool, shape (q,), optional
        Unconstrained coordinates.
    passive : ndarray of bool, shape (r, q), optional
        Warm start of the passive sets (e.g. ``U_old > 0``).
    max_iter : int, optional
        Pivoting rounds (default ``5 q + 20``).

    Returns
    -------
    X : ndarray of shape (r, q), float64; ``X[:, ~free] >= 0``.
    """
    C = np.asarray(C, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    r, q = D.shape
    free = np.zeros(q, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    max_iter = 5 * q + 20 if max_iter is None else max_iter
    P = np.zeros((r, q), dtype=bool) if passive is None else np.array(passive, dtype=bool)
    P[:, free] = True
    X = np.zeros((r, q))
    Y = np.zeros((r, q))
    if r == 0:
        return X
    dscale = np.maximum(np.abs(D).max(axis=1), np.finfo(float).tiny)
    cmax = np.maximum(np.einsum("rii->ri", C).max(axis=1), np.finfo(float).tiny)
    ytol = (_SIGN_RTOL * dscale)[:, None]
    xtol = ytol / cmax[:, None]
    rows = np.arange(r)
    _solve_masked(C, D, P, rows, X, Y)
    alpha = np.full(r, 3, dtype=np.int64)
    beta = np.full(r, q + 1, dtype=np.int64)
    for _ in range(max_iter):
        infeasible = (P[rows] & (X[rows] < -xtol[rows])) | (~P[rows] & (Y[rows] < -ytol[rows]))
        infeasible[:, free] = False
        count = infeasible.sum(axis=1)
        keep = count > 0
        rows, infeasible, count = rows[keep], infeasible[keep], count[keep]
        if rows.size == 0:
            break
        fewer = count < beta[rows]
        full = fewer | (alpha[rows] >= 1)
        beta[rows[fewer]] = count[fewer]
        alpha[rows[fewer]] = 3
        alpha[rows[full & ~fewer]] -= 1
        flip = infeasible
        backup = ~full
        if backup.any():
            # Murty's rule: exchange only the largest infeasible index.
            last = q - 1 - np.argmax(infeasible[backup][:, ::-1], axis=1)
            single = np.zeros((int(backup.sum()), q), dtype=bool)
            single[np.arange(single.shape[0]), last] = True
            flip[backup] = single
        P[rows] ^= flip
        _solve_masked(C, D, P, rows, X, Y)
    else:
        infeasible = (P[rows] & (X[rows] < -xtol[rows])) | (~P[rows] & (Y[rows] < -ytol[rows]))
        infeasible[:, free] = False
        for t in rows[infeasible.any(axis=1)]:
            X[t] = _nnls_one(C[t], D[t], free)
    X[:, ~free] = np.maximum(X[:, ~free], 0.0)
    return X


def _solve_masked(C, D, P, rows, X, Y) -> None:
    """x_F = C[F,F]⁻¹ d_F (0 elsewhere) and y = C x − d (0 on F) for ``rows``."""
    Pr = P[rows]
    Cr = C[rows]
    A = Cr * (Pr[:, :, None] & Pr[:, None, :])
    diag = np.arange(Pr.shape[1])
    A[:, diag, diag] += ~Pr
    rhs = (D[rows] * Pr)[:, :, None]
    try:
        x = np.linalg.solve(A, rhs)[:, :, 0]
    except np.linalg.LinAlgError:
        # A singular system somewhere (no L2 and too few ratings): solve the
        # rows one at a time, the singular ones by least squares.
        x = np.empty(rhs.shape[:2])
        for t in range(A.shape[0]):
            try:
                x[t] = np.linalg.solve(A[t : t + 1], rhs[t : t + 1])[0, :, 0]
            except np.linalg.LinAlgError:
                x[t] = np.linalg.lstsq(A[t], rhs[t, :, 0], rcond=None)[0]
    x *= Pr
    y = np.matmul(Cr, x[:, :, None])[:, :, 0] - D[rows]
    y *= ~Pr
    X[rows] = x
    Y[rows] = y


def _nnls_one(C: np.ndarray, d: np.ndarray, free: np.ndarray) -> np.ndarray:
    """One row by Lawson–Hanson, the free coordinates eliminated (Schur complement)."""
    if not free.any():
        return nnls.nnls_active_set(C, d)
    f, c = free, ~free
    Cff_inv = np.linalg.pinv(C[np.ix_(f, f)])
    Ccf = C[np.ix_(c, f)]
    reduced = C[np.ix_(c, c)] - Ccf @ Cff_inv @ Ccf.T
    x = np.zeros(d.size)
    x[c] = nnls.nnls_active_set(reduced, d[c] - Ccf @ Cff_inv @ d[f])
    x[f] = Cff_inv @ (d[f] - Ccf.T @ x[c])
    return x


# --------------------------------------------------------------------------
# Loss terms
# --------------------------------------------------------------------------


def band_loss(band: sp.csr_matrix, U: np.ndarray, V: np.ndarray, p: MaskedParams) -> ExactSum:
    """The data term of the loss at the band's observed entries, exactly summed.

    Explicit: ``Σ_Ω (x − score)²``. Implicit: ``Σ_Ω [(c−1)s² − 2cps + cp]``
    (add ``<UᵀU, VᵀV>`` over all rows for the whole loss).
    """
    counts = np.diff(band.indptr)
    total = ZERO
    budget = _budget(p.q)
    if p.solver == "cg":
        from .compiled import entry_scores

        # The compiled scores (another summation order than the gathered
        # einsum below, which "als" and "ccd" keep: their losses keep their bits).
        return exact_sum(_entry_terms(band, U, V, entry_scores(band.indptr, band.indices, U, V, p.k), p))
    for r0, r1 in _row_batches(band.indptr, budget):
        e0, e1 = int(band.indptr[r0]), int(band.indptr[r1])
        if e1 == e0:
            continue
        idx = band.indices[e0:e1]
        local = np.repeat(np.arange(r0, r1), counts[r0:r1])
        s = np.einsum("ij,ij->i", U[local, : p.k], V[idx, : p.k])
        total = exact_add(total, exact_sum(_entry_terms(band[r0:r1], U[r0:r1], V, s, p)))
    return total


def _entry_terms(band: sp.csr_matrix, U: np.ndarray, V: np.ndarray, s: np.ndarray, p: MaskedParams) -> np.ndarray:
    """The loss terms at a band's entries from their scores ``s = w·h``."""
    x = band.data.astype(np.float64, copy=False)
    if p.feedback == "implicit":
        a, c, pref = _confidence_terms(x, p)
        b = c if pref is None else c * pref
        return a * s * s - 2.0 * b * s + b
    pred = s + p.global_mean
    if p.biases:
        local = np.repeat(np.arange(band.shape[0]), np.diff(band.indptr))
        pred = pred + U[local, p.k] + V[band.indices, p.k]
    return (x - pred) ** 2


def penalty(U: np.ndarray, counts: np.ndarray, p: MaskedParams) -> ExactSum:
    """``Σ_i s_i (l2·||w_i||² + l1·Σw_i + l2_bias·b_i²)``, exactly summed."""
    W = U[:, : p.k]
    per_row = p.l2 * np.einsum("ij,ij->i", W, W) + p.l1 * W.sum(axis=1)
    if p.biases:
        per_row = per_row + p.l2_bias * U[:, p.k] ** 2
    if p.count_scaled:
        per_row = per_row * counts
    elif p.count_power:
        per_row = per_row * row_scale(counts, p)
    return exact_sum(per_row)


@aligned_inputs
def gram(U: np.ndarray, p: MaskedParams) -> np.ndarray:
    """``U[:, :k]ᵀ U[:, :k]`` (k, k) of one block."""
    W = U[:, : p.k]
    return W.T @ W


def predict(U_rows: np.ndarray, V_cols: np.ndarray, p: MaskedParams) -> np.ndarray:
    """Scores of (row, column) pairs from their gathered state rows (pairs, q)."""
    s = np.einsum("ij,ij->i", U_rows[:, : p.k], V_cols[:, : p.k]) + p.global_mean
    if p.biases:
        s = s + U_rows[:, p.k] + V_cols[:, p.k]
    return s
