"""graph.mu_step against the kernels it fuses: the same bits for any block, penalties and dtype."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.engine.graph import sum_list
from dnmf.nmf import kernels
from dnmf.nmf.graph import mu_step


def _reference(A, G, AX, l1, l2):
    """The multiplicative half-step as the kernels compose it (the naive reference)."""
    den = kernels.mu_frobenius_denominator(A, G)
    violation = kernels.projected_gradient_l1(A, kernels.regularized_gradient(A, den, AX, l1, l2))
    return kernels.mu_apply(A, AX.copy(), den, l1, l2), violation


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    k=st.integers(1, 6),
    l1=st.sampled_from([0.0, 0.3]),
    l2=st.sampled_from([0.0, 0.7]),
    dtype=st.sampled_from([np.float64, np.float32]),
    zeros=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**16),
)
def test_mu_step_is_the_kernels_bit_for_bit(rows, k, l1, l2, dtype, zeros, seed):
    rng = np.random.default_rng(seed)
    A = rng.random((rows, k)).astype(dtype)
    A[rng.random(A.shape) < zeros] = 0  # zero entries: the projected gradient's other branch
    H = rng.random((k + 3, k)).astype(dtype)
    H[:, 0] = 0  # a zero column of the Gram: zero denominators
    G = H.T @ H
    AX = (rng.random((rows, k)) * 3).astype(dtype)
    A0, AX0 = A.copy(), AX.copy()
    new, violation = mu_step(A, G, AX, l1, l2)
    ref, ref_violation = _reference(A, G, AX, l1, l2)
    assert new.dtype == ref.dtype and new.shape == ref.shape
    assert new.tobytes() == ref.tobytes()
    assert violation == ref_violation
    np.testing.assert_array_equal(A, A0)  # inputs untouched
    np.testing.assert_array_equal(AX, AX0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), shape=st.sampled_from([(3,), (4, 2)]), seed=st.integers(0, 2**16))
def test_sum_list_adds_in_order_without_touching_its_parts(n, shape, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8) for _ in range(n)]
    kept = [p.copy() for p in parts]
    expected = parts[0].copy()
    for p in parts[1:]:
        expected += p
    assert sum_list(parts).tobytes() == expected.tobytes()
    for p, q in zip(parts, kept, strict=True):
        np.testing.assert_array_equal(p, q)
