"""Helpers shared by the test folders (fixtures live in conftest.py).

Import them as ``from tests.helpers import make_data``: ``tests`` is a package,
and pytest puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import scipy.sparse as sp

#: The repository root (deploy/, examples/, README.md, the dnmf package).
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_data(m=40, n=30, k=4, density=None, seed=0, dtype=np.float64):
    """A non-negative X (dense, or CSR if density is given) and a starting (W, H)."""
    rng = np.random.RandomState(seed)
    if density is None:
        X = np.abs(rng.randn(m, n))
    else:
        X = sp.random(m, n, density=density, random_state=rng, format="csr") * 5
    W0 = np.abs(rng.randn(m, k))
    H0 = np.abs(rng.randn(k, n))
    return X.astype(dtype), W0.astype(dtype), H0.astype(dtype)


def planted(m: int = 240, n: int = 90, k: int = 4, seed: int = 0) -> sp.csr_matrix:
    """An exactly rank-``k`` non-negative sparse matrix (NMF can fit it to ~0 error)."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (m, k)) * (rng.random((m, k)) < 0.5)
    H = rng.gamma(1.0, 1.0, (k, n)) * (rng.random((k, n)) < 0.5)
    return sp.csr_matrix(W @ H)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
