"""Per-block NMF kernels: pure NumPy/SciPy, no Dask.

Every kernel works on one block and plain floats, and knows nothing of the
estimator or the cluster. The factors are both kept *tall*: ``W`` is
``(m, k)`` and ``Ht = H.T`` is ``(n, k)``. A kernel written for the W side
serves the H side by transposition: updating ``Ht`` is updating ``W`` for
``X.T`` with the roles of the factors swapped.

Blocks of ``X`` are ``numpy.ndarray`` or SciPy CSR matrices; ``X.T`` of a CSR
block is a free CSC view, which every kernel here also accepts.

The update formulas, the regularisation scaling and the numerical guards
(``EPSILON`` clamps, the small-value clipping of the beta-divergence updates)
follow scikit-learn's ``NMF`` so that, from the same starting point, dnmf
reproduces its iterates.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..engine.blocks import aligned_inputs

try:  # SciPy's sparse x dense loops, which accept the output array (not public API: checked by the tests)
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - another SciPy layout: xdot allocates as SciPy does
    _sparsetools = None

# scikit-learn's NMF clamps with float32's epsilon whatever the dtype.
EPSILON = float(np.finfo(np.float32).eps)
# ...and clips small factor entries with float64's epsilon for beta <= 1.
CLIP_EPS = float(np.finfo(np.float64).eps)

# Non-zeros processed at once when sampling W @ Ht.T at X's non-zeros; bounds
# the (batch, k) temporaries.
_SAMPLE_BATCH = 1 << 18


# --------------------------------------------------------------------------
# Products and Grams
# --------------------------------------------------------------------------


@aligned_inputs
def gram(A: np.ndarray) -> np.ndarray:
    """``A.T @ A`` for a tall factor block ``A`` of shape (rows, k)."""
    return A.T @ A


def xdot(X, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``X @ B`` for a dense or sparse block ``X`` (r, c) and dense ``B`` (c, k).

    Returns a C-contiguous dense (r, k) array. For a CSR (or CSC) block this
    is SciPy's CSR x dense kernel, which releases the GIL.

    ``out`` (optional; (r, k), C-contiguous): where the product is written
    when ``X``, ``B`` and ``out`` share one dtype and ``B`` is C-contiguous
    (then ``out`` is returned; otherwise a new array is). The numbers are the
    same bits either way: the same loop (SciPy's, or BLAS for a dense block)
    runs from the same zeros. A worker reuses ``out``'s memory from one block
    to the next, where SciPy's own result is fresh memory every time.
    """
    if out is not None and _product_into(X, B, out):
        return out
    product = X @ B
    if sp.issparse(product):  # pragma: no cover - only if B were sparse
        product = product.toarray()
    return np.ascontiguousarray(product)


def _product_into(X, B, out: np.ndarray) -> bool:
    """``X @ B`` written into ``out`` as ``X @ B`` computes it; False (nothing written) where it can not be."""
    if not (
        isinstance(B, np.ndarray)
        and B.ndim == 2
        and B.flags.c_contiguous
        and out.flags.c_contiguous
        and out.shape == (X.shape[0], B.shape[1])
        and X.shape[1] == B.shape[0]
        and X.dtype == B.dtype == out.dtype
    ):
        return False
    if isinstance(X, np.ndarray) and X.ndim == 2:
        np.matmul(X, B, out=out)
        return True
    if _sparsetools is None or not sp.issparse(X) or X.format not in ("csr", "csc") or X.ndim != 2:
        return False
    # What SciPy's ``_cs_matrix._matmul_multivector`` does, into ``out`` instead of np.zeros.
    out.fill(0)
    matvecs = getattr(_sparsetools, X.format + "_matvecs")
    matvecs(X.shape[0], X.shape[1], B.shape[1], X.indptr, X.indices, X.data, B.ravel(), out.ravel())
    return True


@aligned_inputs
def xtdot(X, A: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``X.T @ A`` for a block ``X`` (r, c) and dense ``A`` (r, k): (c, k); ``out`` as for :func:`xdot`.

    For CSR, ``X.T`` is the CSC view: no copy of the block is made.
    """
    return xdot(X.T, A, out)


def squared_norm(X) -> float:
    """Squared Frobenius norm of a block, summed in float64."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    data = data.astype(np.float64, copy=False)
    return float(np.dot(data, data))


@aligned_inputs
def block_stats(X) -> np.ndarray:
    """Validation and summary statistics of one block.

    Returns ``[min, n_nonfinite, sum, sum_of_squares, nnz, n_entries]`` as
    float64. ``min`` counts the implicit zeros of a sparse block.
    """
    if sp.issparse(X):
        data = X.data
        implicit_zero = X.nnz < X.shape[0] * X.shape[1]
    else:
        data = np.asarray(X).ravel()
        implicit_zero = False
    n_entries = X.shape[0] * X.shape[1]
    if data.size:
        finite = np.isfinite(data)
        n_bad = float(data.size - np.count_nonzero(finite))
        good = data[finite] if n_bad else data
        dmin = float(good.min()) if good.size else np.inf
        # Overflow to inf is reported by stats.check_values with the fix, not as a RuntimeWarning.
        with np.errstate(over="ignore"):
            total = float(good.sum(dtype=np.float64))
            g64 = good.astype(np.float64, copy=False)
            sumsq = float(np.dot(g64, g64))
        nnz = float(np.count_nonzero(good))
    else:
        n_bad, dmin, total, sumsq, nnz = 0.0, np.inf, 0.0, 0.0, 0.0
    if implicit_zero:
        dmin = min(dmin, 0.0)
    return np.array([dmin, n_bad, total, sumsq, nnz, float(n_entries)])


# --------------------------------------------------------------------------
# Multiplicative updates (Lee & Seung; Fevotte & Idier for beta != 2)
# --------------------------------------------------------------------------


def mu_gamma(beta: float) -> float:
    """Exponent of the maximisation-minimisation step (Fevotte & Idier 2011)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def mu_frobenius_denominator(W: np.ndarray, HHt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``W @ HHt``: the Frobenius MU denominator for one block of W (into ``out``, C-contiguous, if given)."""
    return np.matmul(W, HHt, out=out)


def mu_apply(
    W: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    l1_reg: float,
    l2_reg: float,
    gamma: float = 1.0,
    clip: bool = False,
) -> np.ndarray:
    """One multiplicative step ``W * (numerator / denominator) ** gamma``.

    Parameters
    ----------
    W : ndarray of shape (r, k)
        Current factor block; not modified.
    numerator : ndarray of shape (r, k)
        Positive part of the gradient (``X @ Ht`` for Frobenius). Consumed.
    denominator : ndarray of shape (r, k) or (1, k)
        Negative part of the gradient, before regularisation.
    l1_reg, l2_reg : float
        Already scaled regularisation weights (see ``regularization``).
    gamma : float
        MM exponent, ``mu_gamma(beta)``.
    clip : bool
        Set entries below float64's epsilon to zero (scikit-learn's
        stability guard for ``beta < 1`` on W and ``beta <= 1`` on H).

    Returns
    -------
    W_new : ndarray of shape (r, k)
    """
    denominator = np.array(denominator, dtype=W.dtype, copy=True)
    if l1_reg > 0:
        denominator += l1_reg
    if l2_reg > 0:
        denominator = denominator + l2_reg * W
    denominator[denominator == 0] = EPSILON
    delta = np.asarray(numerator, dtype=W.dtype)
    delta = delta / denominator
    if gamma != 1:
        delta **= gamma
    W_new = W * delta
    if clip:
        W_new[W_new < CLIP_EPS] = 0.0
    return W_new


def sampled_dot(X, W: np.ndarray, Ht: np.ndarray) -> np.ndarray:
    """Values of ``W @ Ht.T`` at the stored entries of a sparse block ``X``.

    ``X`` is CSR (rows index W) or CSC (the transpose of a CSR block). The
    result is aligned with ``X.data``. Costs O(nnz * k) time and
    O(batch * k) memory, never O(rows * cols).
    """
    rows, cols = _coords(X)
    out = np.empty(rows.shape[0], dtype=np.result_type(W.dtype, Ht.dtype))
    for start in range(0, rows.shape[0], _SAMPLE_BATCH):
        sl = slice(start, start + _SAMPLE_BATCH)
        np.einsum("ij,ij->i", W[rows[sl]], Ht[cols[sl]], out=out[sl])
    return out


def _coords(X) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) index arrays aligned with ``X.data`` for CSR or CSC."""
    counts = np.diff(X.indptr)
    major = np.repeat(np.arange(counts.shape[0], dtype=X.indices.dtype), counts)
    if X.format == "csr":
        return major, X.indices
    if X.format == "csc":
        return X.indices, major
    raise TypeError(f"Expected a CSR or CSC block, got format {X.format!r}.")


def _wh_values(X, W: np.ndarray, Ht: np.ndarray):
    """(x, wh, wh_full): X's values, ``W @ Ht.T`` at them, and the dense
    product for dense blocks (None for sparse ones)."""
    if sp.issparse(X):
        return X.data, sampled_dot(X, W, Ht), None
    wh_full = W @ Ht.T
    return np.asarray(X).ravel(), wh_full.ravel().copy(), wh_full


def mu_beta_terms(
    X, W: np.ndarray, Ht: np.ndarray, beta: float, with_loss: bool = False
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Numerator and denominator of the beta-divergence MU step for W.

    For one block ``X`` (r, c) with the matching rows ``W`` (r, k) and
    ``Ht`` (c, k), returns this block's contribution to

    - numerator ``(X * (W @ Ht.T) ** (beta - 2)) @ Ht``  — (r, k);
    - denominator ``Ht.sum(0)`` for beta = 1 — (1, k), else
      ``(W @ Ht.T) ** (beta - 1) @ Ht`` — (r, k);
    - with ``with_loss``, the block's share of the divergence of the
      *incoming* (W, H), from the same sampled product (else None).

    Summing the returned pieces over the column blocks of ``X`` gives the
    full-row terms. For the H side call it with ``(X.T, Ht, W, beta)``.
    Sparse blocks compute ``W @ Ht.T`` only at their non-zeros, except the
    general-beta denominator, which needs every entry (as in scikit-learn).
    """
    x, wh, wh_full = _wh_values(X, W, Ht)
    loss = _divergence(X, x, wh, wh_full, W, Ht, beta) if with_loss else None
    if beta < 2:
        wh[wh < EPSILON] = EPSILON
    if beta == 1:
        np.divide(x, wh, out=wh)
    elif beta == 0:
        wh **= -1
        wh **= 2
        wh *= x
    else:
        wh **= beta - 2
        wh *= x
    if sp.issparse(X):
        weighted = type(X)((wh.astype(X.dtype, copy=False), X.indices, X.indptr), shape=X.shape)
        numerator = xdot(weighted, Ht)
    else:
        numerator = wh.reshape(X.shape) @ Ht
    if beta == 1:
        denominator = Ht.sum(axis=0)[np.newaxis, :]
    else:
        full = W @ Ht.T if wh_full is None else wh_full
        if beta < 1:
            full[full < EPSILON] = EPSILON
        full **= beta - 1
        denominator = full @ Ht
    return numerator, denominator, loss


def beta_divergence_block(X, W: np.ndarray, Ht: np.ndarray, beta: float) -> float:
    """This block's additive share of scikit-learn's beta-divergence.

    Summed over all blocks of X, gives ``_beta_divergence(X, W, H, beta)``
    (before the square root) for ``beta != 2``. Entries of ``X`` at or below
    ``EPSILON`` are left out of the data terms, as in scikit-learn.
    """
    x, wh, wh_full = _wh_values(X, W, Ht)
    return _divergence(X, x, wh, wh_full, W, Ht, beta)


def _divergence(X, x, wh, wh_full, W, Ht, beta) -> float:
    keep = x > EPSILON
    wh = wh[keep]
    x = x[keep]
    wh[wh < EPSILON] = EPSILON
    if beta == 1:
        sum_wh = float(np.dot(W.sum(axis=0), Ht.sum(axis=0)))
        return float(np.dot(x, np.log(x / wh))) + sum_wh - float(x.sum())
    if beta == 0:
        div = x / wh
        n_entries = X.shape[0] * X.shape[1]
        return float(np.sum(div)) - n_entries - float(np.sum(np.log(div)))
    full = W @ Ht.T if wh_full is None else wh_full
    sum_wh_beta = float(np.sum(full**beta))
    sum_x_wh = float(np.dot(x, wh ** (beta - 1)))
    res = float((x**beta).sum()) - beta * sum_x_wh + sum_wh_beta * (beta - 1)
    return res / (beta * (beta - 1))


# --------------------------------------------------------------------------
# HALS / coordinate descent (Cichocki & Phan), as scikit-learn's solver="cd"
# --------------------------------------------------------------------------


def cd_update(
    W: np.ndarray,
    HHt: np.ndarray,
    XHt: np.ndarray,
    l1_reg: float,
    l2_reg: float,
    permutation: np.ndarray,
    n_inner: int = 1,
    inner_tol: float = 0.1,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """One sweep (or several) of cyclic coordinate descent over the k columns of ``W``.

    With ``n_inner=1``, scikit-learn's ``_update_coordinate_descent`` for a
    block of rows (to rounding: :mod:`dnmf.nmf.compiled` keeps each row's
    gradient current instead of recomputing it per coordinate): each row of
    W is an independent NNLS problem, so sweeping a block of rows is the same
    as sweeping all of them. The gradient and the arithmetic are float64
    whatever the dtype of ``W``.

    With ``n_inner > 1``, accelerated HALS (Gillis & Glineur 2012): further
    sweeps reuse the same ``XHt`` and ``HHt`` (the expensive part) while they
    still pay off. Their rule stops the inner loop once
    ``||W^(l+1) - W^l|| <= inner_tol * ||W^1 - W^0||``; here it is applied
    to each row on its own (rows are independent problems), which makes the
    result independent of the blocking and lets converged rows drop out.

    Parameters
    ----------
    W : ndarray of shape (r, k)
        Current block; not modified.
    HHt : ndarray of shape (k, k)
        Gram of the other factor, summed over all blocks.
    XHt : ndarray of shape (r, k)
        ``X @ Ht`` for these rows, summed over the column blocks.
    l1_reg, l2_reg : float
        Scaled regularisation weights.
    permutation : ndarray of int, shape (k,)
        Order in which the columns are updated (the same in every sweep).
    n_inner : int, default=1
        Largest number of sweeps (see ``hals_inner_limits``).
    inner_tol : float, default=0.1
        Gillis & Glineur's epsilon.
    out : ndarray of shape (r, k), optional
        C-contiguous, of ``W``'s dtype: where the new block is written (and
        returned) instead of a new array.

    Returns
    -------
    W_new : ndarray of shape (r, k)
    violation : float
        Sum of the absolute projected gradients met during the first sweep
        (scikit-learn's measure; the later sweeps do not add to it).
    """
    from . import compiled  # Numba: imported only when a sweep runs

    k = W.shape[1]
    G = np.array(HHt, dtype=np.float64, copy=True)
    if l2_reg != 0.0:
        G.flat[:: k + 1] += l2_reg
    XHt = np.asarray(XHt)
    # The sweep widens each entry as it reads it: a float32 block is not copied to float64.
    B = np.ascontiguousarray(XHt, dtype=XHt.dtype if XHt.dtype in (np.float32, np.float64) else np.float64)
    if out is None:
        W = np.array(W, copy=True, order="C")
    else:
        np.copyto(out, W)
        W = out
    perm = np.ascontiguousarray(permutation, dtype=np.intp)
    violation = compiled.hals_rows(
        W, G, np.ascontiguousarray(G.T), B, float(l1_reg), perm, int(n_inner), float(inner_tol) ** 2
    )
    return W, float(violation)


def hals_inner_limits(m: int, n: int, nnz: int, k: int, alpha: float = 0.5) -> tuple[int, int]:
    """Gillis & Glineur's largest numbers of inner sweeps for W and for H.

    One sweep over W costs about ``m·k²`` flops, while computing its inputs
    ``X Hᵀ`` and ``H Hᵀ`` costs about ``nnz·k + n·k²``; their ratio
    ``rho_W = 1 + (nnz + n·k) / (m·(k + 1))`` says how many sweeps cost as
    much as the inputs, and at most ``1 + alpha·rho_W`` sweeps are made
    (``alpha = 0.5`` as they recommend for HALS). Symmetrically for H.

    Returns
    -------
    (n_inner_W, n_inner_H) : tuple of int, each >= 1
    """
    rho_W = 1.0 + (nnz + n * k) / (m * (k + 1.0))
    rho_H = 1.0 + (nnz + m * k) / (n * (k + 1.0))
    return max(1, int(1 + alpha * rho_W)), max(1, int(1 + alpha * rho_H))


def projected_gradient_l1(W: np.ndarray, grad: np.ndarray) -> float:
    """``Σ |projected gradient|`` of a block: ``grad`` where ``W > 0``, ``min(grad, 0)`` at 0.

    scikit-learn's coordinate-descent "violation" measured at a fixed point
    (Lin 2007's projected gradient, in the L1 norm). Zero exactly at a KKT
    point of the half-step problem.
    """
    pg = np.where(W > 0, grad, np.minimum(grad, 0.0))
    return float(np.abs(pg).sum())


def regularized_gradient(
    W: np.ndarray, positive: np.ndarray, negative: np.ndarray, l1_reg: float, l2_reg: float
) -> np.ndarray:
    """Gradient of the (regularised) objective in W from its two parts.

    ``positive - negative + l1_reg + l2_reg * W``, e.g. ``W HHt - X Ht`` for
    Frobenius or the MU denominator minus numerator for a beta-divergence.
    """
    grad = np.asarray(positive, dtype=np.float64) - negative
    if l1_reg:
        grad = grad + l1_reg
    if l2_reg:
        grad = grad + l2_reg * W
    return grad


# --------------------------------------------------------------------------
# Held-out entries (rank selection): a mask per block, as CSR coordinates
# --------------------------------------------------------------------------


def holdout_mask(X, fraction: float, seed) -> sp.csr_matrix:
    """A random set of held-out coordinates of one block, as CSR with data 1.

    Dense blocks: ``round(fraction · entries)`` entries uniformly without
    replacement. Sparse blocks: ``round(fraction · nnz)`` of the non-zeros
    *and* as many of the zeros, so that the "missing means zero" part of the
    model is validated too. ``seed`` is anything ``numpy.random.default_rng``
    takes; the mask depends only on it and on the block.
    """
    rng = np.random.default_rng(seed)
    r, c = X.shape
    total = r * c
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        rows, cols = _coords(X)
        lin_nz = rows.astype(np.int64) * c + cols
        n_nz = int(round(fraction * lin_nz.size))
        chosen = lin_nz[rng.choice(lin_nz.size, size=n_nz, replace=False)] if n_nz else lin_nz[:0]
        n_zero = min(n_nz, total - lin_nz.size)
        zeros = _sample_zeros(rng, np.sort(lin_nz), total, n_zero)
        lin = np.concatenate([chosen, zeros])
    else:
        n_out = int(round(fraction * total))
        lin = rng.choice(total, size=n_out, replace=False).astype(np.int64)
    lin.sort()
    rows = lin // c
    cols = (lin - rows * c).astype(np.int32)
    indptr = np.zeros(r + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=r), out=indptr[1:])
    return sp.csr_matrix((np.ones(lin.size), cols, indptr), shape=(r, c))


def _sample_zeros(rng, sorted_nz: np.ndarray, total: int, count: int) -> np.ndarray:
    """``count`` distinct linear indices in [0, total) that are not in ``sorted_nz``."""
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    n_free = total - sorted_nz.size
    if n_free <= 4 * count:
        free = np.setdiff1d(np.arange(total, dtype=np.int64), sorted_nz, assume_unique=True)
        return rng.choice(free, size=count, replace=False)
    out = np.empty(0, dtype=np.int64)
    while out.size < count:
        draw = rng.integers(0, total, size=2 * (count - out.size) + 16)
        pos = np.searchsorted(sorted_nz, draw)
        pos[pos == sorted_nz.size] = 0
        draw = draw[sorted_nz[pos] != draw] if sorted_nz.size else draw
        out = np.unique(np.concatenate([out, draw]))
    return rng.permutation(out)[:count]


@aligned_inputs
def holdout_zero(X, M: sp.csr_matrix):
    """The block with its held-out entries set to zero (removed if sparse)."""
    if M.nnz == 0:
        return X
    rows, cols = _coords(M)
    if sp.issparse(X):
        X = sp.csr_matrix(X, copy=True)
        xr, xc = _coords(X)
        c = X.shape[1]
        held = np.isin(xr.astype(np.int64) * c + xc, rows.astype(np.int64) * c + cols)
        X.data[held] = 0
        X.eliminate_zeros()
        return X
    X = np.array(X, copy=True)
    X[rows, cols] = 0
    return X


def holdout_values(M: sp.csr_matrix, W: np.ndarray, Ht: np.ndarray) -> sp.csr_matrix:
    """``W @ Ht.T`` at the held-out coordinates ``M``, as a CSR block.

    The imputation of the masked (weighted) Frobenius fit: filling the
    held-out entries with the current model and taking an ordinary step
    is a majorise-minimise step of the loss on the kept entries (its
    gradient there is the masked gradient). O(|M| · k).
    """
    values = sampled_dot(M, W, Ht) if M.nnz else np.empty(0, dtype=W.dtype)
    return sp.csr_matrix((values.astype(W.dtype, copy=False), M.indices, M.indptr), shape=M.shape)


@aligned_inputs
def holdout_error(X, M: sp.csr_matrix, W: np.ndarray, Ht: np.ndarray) -> np.ndarray:
    """``[Σ (X - W Ht.T)², Σ X², count]`` over the held-out coordinates of one block."""
    if M.nnz == 0:
        return np.zeros(3)
    rows, cols = _coords(M)
    if sp.issparse(X):
        x = np.asarray(sp.csr_matrix(X)[rows, cols], dtype=np.float64).ravel()
    else:
        x = np.asarray(X[rows, cols], dtype=np.float64)
    pred = sampled_dot(M, W, Ht).astype(np.float64)
    resid = x - pred
    return np.array([float(resid @ resid), float(x @ x), float(x.size)])


# --------------------------------------------------------------------------
# Loss pieces for the Frobenius objective (never forms W @ H)
# --------------------------------------------------------------------------


def frobenius_from_terms(sq_norm_x: float, cross: float, gram_dot: float) -> float:
    """``||X - W H||_F`` from ``||X||²``, ``<X Ht, W>`` and ``<WtW, HHt>``."""
    return float(np.sqrt(max(sq_norm_x - 2.0 * cross + gram_dot, 0.0)))


def regularization(
    n_samples: int,
    n_features: int,
    alpha_W: float,
    alpha_H: float,
    l1_ratio: float,
) -> tuple[float, float, float, float]:
    """scikit-learn's scaling: (l1_reg_W, l1_reg_H, l2_reg_W, l2_reg_H)."""
    l1_reg_W = n_features * alpha_W * l1_ratio
    l1_reg_H = n_samples * alpha_H * l1_ratio
    l2_reg_W = n_features * alpha_W * (1.0 - l1_ratio)
    l2_reg_H = n_samples * alpha_H * (1.0 - l1_ratio)
    return l1_reg_W, l1_reg_H, l2_reg_W, l2_reg_H
