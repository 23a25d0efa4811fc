"""Arrays that arrive unaligned from the wire compute like aligned ones (engine.blocks.aligned)."""

import numpy as np
import scipy.sparse as sp

from dnmf.engine.blocks import aligned, aligned_inputs
from dnmf.nmf import kernels


def _unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose buffer starts 3 bytes into an allocation, as a message frame can."""
    buf = bytearray(a.nbytes + 3)
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=3).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_aligned_copies_only_unaligned_buffers():
    a = np.random.default_rng(0).random((20, 40))
    assert aligned(a) is a
    u = _unaligned(a)
    b = aligned(u)
    assert b.flags.aligned and np.array_equal(b, a)
    csr = sp.random(20, 40, density=0.3, random_state=0, format="csr")
    assert aligned(csr) is csr
    bad = sp.csr_matrix((_unaligned(csr.data), csr.indices, csr.indptr), shape=csr.shape)
    fixed = aligned(bad)
    assert fixed.data.flags.aligned and (fixed != csr).nnz == 0
    nested = aligned([u, (u, 3)])
    assert nested[0].flags.aligned and nested[1][0].flags.aligned and nested[1][1] == 3


def test_kernels_give_the_same_bits_for_unaligned_input():
    rng = np.random.default_rng(1)
    X, W = rng.random((20, 40)), rng.random((20, 3))
    expected = kernels.xtdot(X, W)
    got = kernels.xtdot(_unaligned(X), _unaligned(W))
    assert np.array_equal(got, expected)
    # The same reduction in NumPy's own loop (no alignment fix) is allowed to differ: that is
    # why the kernels align; this only checks the wrapper is what makes the difference.
    assert np.array_equal(aligned_inputs(lambda x, w: x.T @ w)(_unaligned(X), _unaligned(W)), X.T @ W)
