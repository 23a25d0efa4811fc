"""Non-negative least squares for many right-hand sides: block principal pivoting.

Pure NumPy/SciPy, no Dask: this module sits at the kernel layer.

Every solver here works on the *normal equations* of the problem, never on
the data: for a factor block ``W`` (r, k) the ANLS half-step is, row by row,

    min_{w >= 0}  ½ wᵀ C w − dᵀ w,      C = HHᵀ + l2·I  (k, k),
                                        d = (X Hᵀ)_row − l1  (k,),

which is ``min_{w>=0} ½‖x_row − Hᵀw‖² + l1·Σw + ½·l2·‖w‖²`` up to a constant.
Only the (k, k) Gram and the k-wide products enter, so an exact solve costs
no more communication than one HALS sweep.

``nnls_bpp`` is the block principal pivoting method of Kim & Park (2011,
"Fast nonnegative matrix factorization: an active-set-like method and
comparisons", SIAM J. Sci. Comput. 33(6)), in its many-right-hand-sides form:
all rows iterate together, and rows sharing the same passive set are solved
with one Cholesky factorisation of ``C[F, F]``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .kernels import projected_gradient_l1

# Rows whose passive set is shared by at least this many rows are solved with
# one Cholesky factorisation per set; the others are bucketed by system size
# and solved by batched LAPACK calls (see ``_solve_small``), which avoids a
# Python-level loop over thousands of tiny groups.
_GROUP_MIN_ROWS = 24
# Rows per batched solve: bounds the (batch, k, k) temporaries.
_BATCH_ROWS = 2048
# Relative tolerance on the sign conditions x_F >= 0 and y_G >= 0. Entries
# within round-off of the boundary are feasible either way; without it, a
# value of -1e-18 could be pivoted back and forth.
_SIGN_RTOL = 1e-11


def _keys(P: np.ndarray) -> np.ndarray:
    """One integer (or bytes) label per row of a boolean (r, k) pattern."""
    r, k = P.shape
    if k <= 62:
        weights = np.left_shift(np.int64(1), np.arange(k, dtype=np.int64))
        return P.astype(np.int64) @ weights
    packed = np.packbits(P, axis=1)
    return np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()


def _solve_group(C: np.ndarray, D: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Solve ``C[F, F] x = d[F]`` for every row ``d`` of ``D`` (rows, |F|)."""
    CFF = C[np.ix_(F, F)]
    rhs = D[:, F].T
    try:
        factor = sla.cho_factor(CFF, lower=False, check_finite=False)
        return sla.cho_solve(factor, rhs, check_finite=False).T
    except (np.linalg.LinAlgError, sla.LinAlgError):
        # C[F, F] is singular (a rank-deficient Gram with no L2 term): any
        # minimiser on F will do; the minimum-norm one is well defined.
        return np.linalg.lstsq(CFF, rhs, rcond=None)[0].T


def _solve_small(M: np.ndarray, S: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Solve ``M[S_r, S_r] u = R_r[S_r]`` per row ``r``, every ``S_r`` of one size.

    Returns ``u`` scattered into (rows, k) with zeros outside ``S_r``. The
    systems are gathered into one (rows, s, s) stack and solved with one
    batched LAPACK call, in slices of ``_BATCH_ROWS``.
    """
    n, k = R.shape
    s = int(S[0].sum()) if n else 0
    U = np.zeros((n, k))
    if s == 0:
        return U
    # Positions of the True entries of each row, in increasing order.
    idx = np.argsort(~S, axis=1, kind="stable")[:, :s]
    for start in range(0, n, _BATCH_ROWS):
        ib = idx[start : start + _BATCH_ROWS]
        sub = np.arange(ib.shape[0])[:, None]
        A = M[ib[:, :, None], ib[:, None, :]]
        rhs = R[start : start + _BATCH_ROWS][sub, ib]
        try:
            sol = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            # At least one singular system in the slice: solve it row by row.
            sol = np.empty_like(rhs)
            for t in range(ib.shape[0]):
                sol[t] = np.linalg.lstsq(A[t], rhs[t], rcond=None)[0]
        U[start + sub, ib] = sol
    return U


def _solve_rows(C, Cinv, D, Z, P, rows, X, Y) -> int:
    """Recompute x (on F) and y = C x − d (on G) for the given rows.

    Rows sharing a passive set with at least ``_GROUP_MIN_ROWS`` others are
    solved with one factorisation per set (Kim & Park's grouping). The rest
    are bucketed by system size and solved by batched LAPACK calls.

    When ``C`` is well conditioned (``Cinv`` given) a row with a large
    passive set ``F`` is solved through its complement ``G`` instead: with
    ``z = C⁻¹d``, the solution is ``x = z − C⁻¹[:, G] u`` where
    ``(C⁻¹)[G, G] u = z[G]`` (a Schur-complement identity), and ``y_G = −u``.
    Every system is thus at most k/2 wide.

    Returns the number of groups solved with a shared factorisation.
    """
    if rows.size == 0:
        return 0
    k = C.shape[0]
    Pr = P[rows]
    Dr = D[rows]
    via_complement = (Pr.sum(axis=1) > k // 2) if Cinv is not None else np.zeros(rows.size, bool)
    Xr = np.zeros_like(Dr)
    n_groups = 0

    keys = _keys(Pr)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    big = counts[inverse] >= _GROUP_MIN_ROWS
    if big.any():
        order = np.argsort(inverse, kind="stable")
        order = order[big[order]]
        cuts = np.flatnonzero(np.diff(inverse[order])) + 1
        for members in np.split(order, cuts):
            F = Pr[members[0]]
            n_groups += 1
            if via_complement[members[0]]:
                G = ~F
                Zm = Z[rows[members]]
                if G.any():
                    u = _solve_group(Cinv, Zm, G)
                    Zm = Zm - u @ Cinv[G]
                Xr[members] = Zm
            elif F.any():
                Xr[np.ix_(members, np.flatnonzero(F))] = _solve_group(C, Dr[members], F)
    small = ~big
    if small.any():
        for complement in (False, True):
            sel = small & (via_complement == complement)
            if not sel.any():
                continue
            S = ~Pr[sel] if complement else Pr[sel]
            sizes = S.sum(axis=1)
            where = np.flatnonzero(sel)
            for size in np.unique(sizes):
                part = sizes == size
                members = where[part]
                if complement:
                    Zm = Z[rows[members]]
                    U = _solve_small(Cinv, S[part], Zm)
                    Xr[members] = Zm - U @ Cinv
                else:
                    Xr[members] = _solve_small(C, S[part], Dr[members])
    Xr[~Pr] = 0.0
    Yr = Xr @ C - Dr
    Yr[Pr] = 0.0
    X[rows] = Xr
    Y[rows] = Yr
    return n_groups


# Largest condition number of C for which the complement (Schur) route is
# used: its error grows like cond(C) * eps * |C⁻¹d|.
_MAX_COND_COMPLEMENT = 1e6


def _inverse_if_well_conditioned(C: np.ndarray) -> np.ndarray | None:
    if C.shape[0] < 4:
        return None
    evals, evecs = np.linalg.eigh(C)
    if evals[0] <= 0 or evals[-1] / evals[0] > _MAX_COND_COMPLEMENT:
        return None
    return (evecs / evals) @ evecs.T


def nnls_bpp(
    C: np.ndarray,
    D: np.ndarray,
    passive: np.ndarray | None = None,
    *,
    max_iter: int | None = None,
    return_info: bool = False,
):
    """Solve ``min_{x >= 0} ½ xᵀ C x − dᵀ x`` for every row ``d`` of ``D``.

    Block principal pivoting (Kim & Park 2011, Algorithm 2 with the
    multiple-right-hand-side grouping): each row keeps a passive set ``F``
    (entries free to be positive) and its complement ``G`` (entries at
    zero); the unconstrained solution on ``F`` and the dual ``y = C x − d``
    on ``G`` are recomputed, and every infeasible index (``x_F < 0`` or
    ``y_G < 0``) is exchanged at once — with Murty's single-exchange backup
    rule when the number of infeasibilities stops decreasing, which makes the
    method finite. The result satisfies the KKT conditions ``x >= 0``,
    ``y >= 0``, ``x·y = 0`` (to round-off) and is the exact NNLS solution.

    Parameters
    ----------
    C : ndarray of shape (k, k)
        Symmetric positive semi-definite Gram matrix (``AᵀA``). When it is
        singular the minimiser may not be unique; one is returned.
    D : ndarray of shape (r, k)
        One right-hand side ``d = Aᵀb`` per row.
    passive : ndarray of bool, shape (r, k), optional
        Initial guess of the passive sets, e.g. ``W_old > 0`` (warm start,
        as Kim & Park recommend inside ANLS). Default: all empty.
    max_iter : int, optional
        Pivoting rounds before the rows still infeasible are finished by the
        (slower, one-index-at-a-time) Lawson–Hanson active-set method.
        Default ``5 * k + 20``; BPP usually needs a handful.
    return_info : bool
        Also return a dict with ``n_iter`` (pivoting rounds), ``n_groups``
        (shared factorisations) and ``n_fallback`` (rows finished by
        Lawson–Hanson).

    Returns
    -------
    X : ndarray of shape (r, k), float64, non-negative
    info : dict, only with ``return_info``
    """
    C = np.asarray(C, dtype=np.float64)
    D = np.ascontiguousarray(D, dtype=np.float64)
    r, k = D.shape
    if C.shape != (k, k):
        raise ValueError(f"C must be ({k}, {k}) to match D's {k} columns; got {C.shape}.")
    if max_iter is None:
        max_iter = 5 * k + 20
    P = np.zeros((r, k), dtype=bool) if passive is None else np.array(passive, dtype=bool, copy=True)
    X = np.zeros((r, k))
    Y = np.zeros((r, k))
    info = {"n_iter": 0, "n_groups": 0, "n_fallback": 0}
    if r == 0 or k == 0:
        return (X, info) if return_info else X

    # Per-row scales of the sign tests (see _SIGN_RTOL).
    dscale = np.abs(D).max(axis=1)
    cdiag = np.diag(C)
    cmax = cdiag.max() if cdiag.size and cdiag.max() > 0 else 1.0
    ytol = (_SIGN_RTOL * np.maximum(dscale, np.finfo(float).tiny))[:, None]
    xtol = ytol / cmax

    Cinv = _inverse_if_well_conditioned(C)
    Z = D @ Cinv if Cinv is not None else None
    info["n_groups"] += _solve_rows(C, Cinv, D, Z, P, np.arange(r), X, Y)
    # Kim & Park's safeguard state: alpha = chances left for full exchanges,
    # beta = the smallest number of infeasibilities seen so far.
    alpha = np.full(r, 3, dtype=np.int64)
    beta = np.full(r, k + 1, dtype=np.int64)
    rows = np.arange(r)
    for it in range(max_iter):
        Xr, Yr, Pr = X[rows], Y[rows], P[rows]
        infeasible = (Pr & (Xr < -xtol[rows])) | (~Pr & (Yr < -ytol[rows]))
        count = infeasible.sum(axis=1)
        still = count > 0
        rows, infeasible, count = rows[still], infeasible[still], count[still]
        if rows.size == 0:
            break
        info["n_iter"] = it + 1
        fewer = count < beta[rows]
        full = fewer | (alpha[rows] >= 1)
        beta[rows[fewer]] = count[fewer]
        alpha[rows[fewer]] = 3
        dec = full & ~fewer
        alpha[rows[dec]] -= 1
        flip = infeasible.copy()
        backup = ~full
        if backup.any():
            # Murty's rule: exchange only the largest infeasible index.
            last = k - 1 - np.argmax(infeasible[backup][:, ::-1], axis=1)
            single = np.zeros((int(backup.sum()), k), dtype=bool)
            single[np.arange(single.shape[0]), last] = True
            flip[backup] = single
        P[rows] ^= flip
        info["n_groups"] += _solve_rows(C, Cinv, D, Z, P, rows, X, Y)
    else:
        Xr, Yr, Pr = X[rows], Y[rows], P[rows]
        infeasible = (Pr & (Xr < -xtol[rows])) | (~Pr & (Yr < -ytol[rows]))
        rows = rows[infeasible.any(axis=1)]
        for t in rows:
            X[t] = nnls_active_set(C, D[t])
        info["n_fallback"] = int(rows.size)

    np.maximum(X, 0.0, out=X)
    return (X, info) if return_info else X


def nnls_active_set(C: np.ndarray, d: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Lawson–Hanson active-set NNLS on the normal equations, one right-hand side.

    The fast-NNLS form of Bro & De Jong (1997): ``min_{x>=0} ½xᵀCx − dᵀx``.
    Adds one index at a time, so it is slow for large k but always finite;
    used as the fallback of ``nnls_bpp`` and as an independent reference.

    Parameters
    ----------
    C : ndarray of shape (k, k)
    d : ndarray of shape (k,)

    Returns
    -------
    x : ndarray of shape (k,)
    """
    C = np.asarray(C, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    k = d.shape[0]
    max_iter = 3 * k + 30 if max_iter is None else max_iter
    tol = 10 * np.finfo(float).eps * max(np.abs(d).max(initial=0.0), 1.0) * k
    x = np.zeros(k)
    F = np.zeros(k, dtype=bool)
    w = d.copy()  # the negative gradient d - C x
    for _ in range(max_iter):
        cand = ~F & (w > tol)
        if not cand.any():
            break
        F[np.argmax(np.where(cand, w, -np.inf))] = True
        for _inner in range(k + 1):
            idx = np.flatnonzero(F)
            z = np.zeros(k)
            if idx.size:
                z[idx] = np.linalg.lstsq(C[np.ix_(idx, idx)], d[idx], rcond=None)[0]
            if (z[idx] > 0).all():
                x = z
                break
            # Step from x towards z until the first passive entry hits zero,
            # then drop the entries at zero from the passive set.
            neg = F & (z <= 0)
            ratio = x[neg] / np.maximum(x[neg] - z[neg], np.finfo(float).tiny)
            x = x + float(np.clip(ratio.min(), 0.0, 1.0)) * (z - x)
            F &= x > 0
            x[~F] = 0.0
        w = d - C @ x
    return np.maximum(x, 0.0)


def anls_update(
    W: np.ndarray,
    HHt: np.ndarray,
    XHt: np.ndarray,
    l1_reg: float,
    l2_reg: float,
) -> tuple[np.ndarray, float]:
    """One exact ANLS half-step for a block of rows of ``W``.

    Solves, for every row, ``min_{w>=0} ½ wᵀ(HHt + l2·I)w − (XHt_row − l1)ᵀw``
    — scikit-learn's regularised Frobenius objective restricted to W — by
    block principal pivoting, warm-started from the passive set ``W > 0``.

    Parameters
    ----------
    W : ndarray of shape (r, k)
        Current block (the warm start); not modified.
    HHt : ndarray of shape (k, k)
        Gram of the other factor, summed over all blocks.
    XHt : ndarray of shape (r, k)
        ``X @ Ht`` for these rows.
    l1_reg, l2_reg : float
        Scaled regularisation weights.

    Returns
    -------
    W_new : ndarray of shape (r, k), W's dtype
    violation : float
        ``Σ |projected gradient|`` at the incoming ``W`` (the stationarity
        measure, see ``kernels.projected_gradient_l1``).
    """
    k = W.shape[1]
    C = np.array(HHt, dtype=np.float64, copy=True)
    if l2_reg != 0.0:
        C.flat[:: k + 1] += l2_reg
    D = np.array(XHt, dtype=np.float64, copy=True)
    if l1_reg != 0.0:
        D -= l1_reg
    W64 = np.asarray(W, dtype=np.float64)
    violation = projected_gradient_l1(W64, W64 @ C - D)
    W_new = nnls_bpp(C, D, passive=W64 > 0)
    return W_new.astype(W.dtype, copy=False), violation
