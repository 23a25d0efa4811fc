"""Naive references for the masked model: row solutions and objectives that loop over observed entries."""

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import lsq_linear

from dnmf.masked import kernels as masked


def ratings(m, n, density, seed):
    """A ratings-like CSR (values 0.5..5) with every row and column observed at least once."""
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True
    mask[rng.integers(0, m, n), np.arange(n)] = True
    values = np.round(rng.uniform(0.5, 5.0, (m, n)) * 2) / 2
    return as_csr(mask, values), mask, values


def as_csr(mask, values):
    rows, cols = np.nonzero(mask)
    return sp.csr_matrix((values[rows, cols], (rows, cols)), shape=mask.shape)


def naive_row(cols, x, V, p, n_items):
    """argmin over u = [w, b] of the row objective, by bounded least squares on an
    explicitly assembled system (one equation per observed entry, or per item for
    the implicit model), L1 folded into the right-hand side."""
    k, q = p.k, p.q
    if len(cols) == 0 and p.feedback == "explicit":
        return np.zeros(q)  # no data: 0 is the (penalised) minimiser, by convention without penalty
    s = len(cols) if p.count_scaled else user_scale(len(cols), p)
    rows, rhs = [], []
    if p.feedback == "implicit":
        conf = np.ones(n_items)
        pref = np.zeros(n_items)
        for j, v in zip(cols, x, strict=True):
            conf[j] = 1.0 + p.confidence * v
            pref[j] = 1.0
        for j in range(n_items):
            rows.append(math.sqrt(conf[j]) * V[j, :k])
            rhs.append(math.sqrt(conf[j]) * pref[j])
    else:
        for j, v in zip(cols, x, strict=True):
            phi = np.append(V[j, :k], 1.0) if p.biases else V[j, :k]
            rows.append(phi)
            rhs.append(v - p.global_mean - (V[j, k] if p.biases else 0.0))
    reg = np.zeros((q, q))
    reg[np.arange(k), np.arange(k)] = math.sqrt(s * p.l2)
    if p.biases:
        reg[k, k] = math.sqrt(s * p.l2_bias)
    A = np.vstack([np.array(rows).reshape(-1, q), reg])
    b = np.concatenate([rhs, np.zeros(q)])
    l1 = np.zeros(q)
    l1[:k] = s * p.l1
    # ||A u − b||² + l1·u = ||A u − b'||² + const with Aᵀb' = Aᵀb − l1/2.
    b = b - A @ np.linalg.solve(A.T @ A, l1 / 2)
    lower = np.zeros(q)
    if p.biases:
        lower[k] = -np.inf
    return lsq_linear(A, b, bounds=(lower, np.inf), method="bvls", tol=1e-15).x


def row_terms(cols, x, V, p, n_items):
    """A row's objective term by term: ``(weight, target, Phi, l2, l1)`` with
    ``Σ_e weight_e·(Phi_e·u − target_e)² + Σ_t l2_t·u_t² + l1·u`` over every item for the
    implicit model (no Gram trick) and the observed ones for explicit ratings."""
    k, q = p.k, p.q
    s = len(cols) if p.count_scaled else user_scale(len(cols), p)
    if p.feedback == "implicit":
        weight, target = np.ones(n_items), np.zeros(n_items)
        for j, v in zip(cols, x, strict=True):
            weight[j], target[j] = 1.0 + p.confidence * v, 1.0
        Phi = V[:, :k]
    else:
        weight = np.ones(len(cols))
        target = np.array([v - p.global_mean - (V[j, k] if p.biases else 0.0) for j, v in zip(cols, x, strict=True)])
        Phi = np.array([np.append(V[j, :k], 1.0) if p.biases else V[j, :k] for j in cols]).reshape(-1, q)
    l2 = np.array([s * (p.l2_bias if t == k else p.l2) for t in range(q)])
    l1 = np.array([0.0 if t == k else s * p.l1 for t in range(q)])
    return weight, target, Phi, l2, l1


def naive_ccd_row(cols, x, u, V, p, n_items, sweeps=1):
    """``sweeps`` passes of exact coordinate minimisation (projected on w >= 0) of the row
    objective from ``u``, the objective written out over every term (every item for the
    implicit model, no Gram trick)."""
    k, q = p.k, p.q
    u = np.array(u, dtype=float)
    if len(cols) == 0 and p.feedback == "explicit":
        return np.zeros(q)
    weight, target, Phi, l2, l1 = row_terms(cols, x, V, p, n_items)
    for _ in range(sweeps):
        for t in range(q):
            grad = sum(w * (phi @ u - y) * phi[t] for w, y, phi in zip(weight, target, Phi, strict=True))
            hess = sum(w * phi[t] ** 2 for w, phi in zip(weight, Phi, strict=True)) + l2[t]
            if hess <= 0:
                continue
            new = u[t] - (grad + l2[t] * u[t] + 0.5 * l1[t]) / hess
            u[t] = new if t == k else max(new, 0.0)
    return u


def user_scale(count, p):
    """A user's penalty multiplier with ``count_power`` (implicit): (max(count, 1) / count_mean)^count_power."""
    return (max(count, 1) / p.count_mean) ** p.count_power if p.count_power else 1.0


def naive_half_step(band, V, p):
    """Every row of ``band`` solved with the other side ``V`` fixed; ``p`` of that side (users: with
    ``count_power``; items: pass ``dataclasses.replace(p, count_power=0)``)."""
    band = sp.csr_matrix(band)
    return np.array(
        [
            naive_row(
                band.indices[band.indptr[i] : band.indptr[i + 1]],
                band.data[band.indptr[i] : band.indptr[i + 1]],
                V,
                p,
                band.shape[1],
            )
            for i in range(band.shape[0])
        ]
    )


def naive_objective(mask, values, U, V, p):
    """Loop over every entry; missing entries contribute only to the implicit loss."""
    m, n = mask.shape
    k = p.k
    total = 0.0
    for i in range(m):
        for j in range(n):
            s = U[i, :k] @ V[j, :k]
            if p.feedback == "implicit":
                c = 1.0 + p.confidence * values[i, j] if mask[i, j] else 1.0
                total += c * ((1.0 if mask[i, j] else 0.0) - s) ** 2
            elif mask[i, j]:
                pred = s + p.global_mean + (U[i, k] + V[j, k] if p.biases else 0.0)
                total += (values[i, j] - pred) ** 2
    for A, counts, users in ((U, mask.sum(axis=1), True), (V, mask.sum(axis=0), False)):
        for a, c in zip(A, counts, strict=True):
            scale = c if p.count_scaled else (user_scale(c, p) if users else 1.0)
            total += scale * (
                p.l2 * (a[:k] @ a[:k]) + p.l1 * a[:k].sum() + (p.l2_bias * a[k] ** 2 if p.biases else 0.0)
            )
    return total


PARAMS = {
    "explicit-biases-l1": masked.MaskedParams(
        k=3, biases=True, l2=0.3, l1=0.05, l2_bias=0.2, count_scaled=True, global_mean=3.1
    ),
    "explicit-plain": masked.MaskedParams(k=3, l2=0.1),
    "implicit": masked.MaskedParams(k=3, feedback="implicit", l2=0.5, confidence=2.0),
}


def random_state(rows, p, seed):
    rng = np.random.default_rng(seed)
    U = np.abs(rng.standard_normal((rows, p.q)))
    if p.biases:
        U[:, p.k] = rng.standard_normal(rows) * 0.3
    return U
