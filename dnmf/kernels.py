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

# scikit-learn's NMF clamps with float32's epsilon whatever the dtype.
EPSILON = float(np.finfo(np.float32).eps)
# ...and clips small factor entries with float64's epsilon for beta <= 1.
CLIP_EPS = float(np.finfo(np.float64).eps)

# Rows processed at once by the coordinate-descent sweep: small enough that a
# panel of W stays in cache across the k inner passes.
_CD_PANEL_ROWS = 16384
# Non-zeros processed at once when sampling W @ Ht.T at X's non-zeros; bounds
# the (batch, k) temporaries.
_SAMPLE_BATCH = 1 << 18


def is_sparse(X) -> bool:
    return sp.issparse(X)


# --------------------------------------------------------------------------
# Products and Grams
# --------------------------------------------------------------------------


def gram(A: np.ndarray) -> np.ndarray:
    """``A.T @ A`` for a tall factor block ``A`` of shape (rows, k)."""
    return A.T @ A


def xdot(X, B: np.ndarray) -> np.ndarray:
    """``X @ B`` for a dense or sparse block ``X`` (r, c) and dense ``B`` (c, k).

    Returns a C-contiguous dense (r, k) array. For a CSR block this is SciPy's
    CSR x dense kernel, which releases the GIL.
    """
    out = X @ B
    if sp.issparse(out):  # pragma: no cover - only if B were sparse
        out = out.toarray()
    return np.ascontiguousarray(out)


def xtdot(X, A: np.ndarray) -> np.ndarray:
    """``X.T @ A`` for a block ``X`` (r, c) and dense ``A`` (r, k): (c, k).

    For CSR, ``X.T`` is the CSC view: no copy of the block is made.
    """
    return xdot(X.T, A)


def squared_norm(X) -> float:
    """Squared Frobenius norm of a block, summed in float64."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    data = data.astype(np.float64, copy=False)
    return float(np.dot(data, data))


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


def mu_frobenius_denominator(W: np.ndarray, HHt: np.ndarray) -> np.ndarray:
    """``W @ HHt``: the Frobenius MU denominator for one block of W."""
    return W @ HHt


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
) -> tuple[np.ndarray, float]:
    """One sweep of cyclic coordinate descent over the k columns of ``W``.

    Exactly scikit-learn's ``_update_coordinate_descent`` for a block of rows:
    each row of W is an independent NNLS problem, so sweeping a block of rows
    is the same as sweeping all of them. Vectorised over panels of rows.

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
        Order in which the columns are updated.

    Returns
    -------
    W_new : ndarray of shape (r, k)
    violation : float
        Sum of the absolute projected gradients met during the sweep.
    """
    k = W.shape[1]
    HHt = np.array(HHt, dtype=W.dtype, copy=True)
    if l2_reg != 0.0:
        HHt.flat[:: k + 1] += l2_reg
    XHt = np.asarray(XHt, dtype=W.dtype)
    if l1_reg != 0.0:
        XHt = XHt - l1_reg
    W = np.array(W, copy=True, order="C")
    violation = 0.0
    for start in range(0, W.shape[0], _CD_PANEL_ROWS):
        Wp = W[start : start + _CD_PANEL_ROWS]
        Xp = XHt[start : start + _CD_PANEL_ROWS]
        for t in permutation:
            grad = Wp @ HHt[t] - Xp[:, t]
            col = Wp[:, t]
            pg = np.where(col == 0, np.minimum(grad, 0.0), grad)
            violation += float(np.abs(pg).sum())
            hess = HHt[t, t]
            if hess != 0:
                np.maximum(col - grad / hess, 0.0, out=col)
    return W, violation


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
