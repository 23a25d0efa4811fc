"""The pool of reused memory for decoded arrays (:mod:`dnmf.storage.buffers`)."""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.storage import buffers

BIG = buffers.MIN_POOLED_BYTES // 8 + 1000  # float64 items: over the pooled minimum


@pytest.fixture(autouse=True)
def _empty_pool():
    buffers.clear_pool()
    yield
    buffers.clear_pool()


def _span(a: np.ndarray) -> tuple[int, int]:
    start = a.ctypes.data
    return start, start + a.nbytes


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**40))
def test_capacity_is_within_an_eighth(nbytes):
    c = buffers.capacity(nbytes)
    assert nbytes <= c <= nbytes * 1.125
    assert buffers.capacity(c) == c  # a class is its own class


def test_released_memory_is_reused():
    a = buffers.empty(BIG, np.float64)
    start = a.ctypes.data
    del a
    b = buffers.empty(BIG, np.float64)
    assert b.ctypes.data == start
    assert buffers.pool_stats()["reused"] >= 1


def test_memory_is_not_reused_while_a_view_lives():
    a = buffers.empty(BIG, np.float64)
    a[:] = 7.0
    view = a[10:20][::2]
    del a
    b = buffers.empty(BIG, np.float64)
    b[:] = -1.0
    assert np.all(view == 7.0)
    lo, hi = _span(b)
    assert not lo <= view.ctypes.data < hi


def test_arrays_are_plain_arrays_to_their_users():
    a = buffers.empty(BIG, np.int32)
    a[:] = np.arange(BIG, dtype=np.int32)
    assert a.shape == (BIG,) and a.dtype == np.int32
    assert a.flags.writeable and a.flags.c_contiguous and a.flags.aligned
    back = pickle.loads(pickle.dumps(a[100:200]))
    np.testing.assert_array_equal(back, np.arange(100, 200, dtype=np.int32))


def test_small_arrays_and_a_pool_turned_off_are_not_pooled():
    assert buffers.empty(10, np.float64).base is None
    with dask.config.set({"dnmf.read-pool-bytes": 0}):
        a = buffers.empty(BIG, np.float64)
        assert a.base is None
        del a
        assert buffers.pool_stats()["free_bytes"] == 0


def test_the_pool_keeps_at_most_its_limit():
    limit = 3 * buffers.capacity(BIG * 8)
    with dask.config.set({"dnmf.read-pool-bytes": limit}):
        arrays = [buffers.empty(BIG, np.float64) for _ in range(6)]
        del arrays
        assert 0 < buffers.pool_stats()["free_bytes"] <= limit


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["take", "drop", "view"]), st.integers(0, 9), st.integers(1, 3)), max_size=40)
)
def test_live_arrays_never_share_memory(ops):
    """Against a naive model: whatever is taken, viewed and dropped, no two live arrays overlap,
    and each keeps the values written to it."""
    live: dict[int, tuple[np.ndarray, float]] = {}  # slot -> (array or view, its value)
    for n, (op, slot, size) in enumerate(ops):
        if op == "take":
            a = buffers.empty(BIG * size, np.float64)
            a[:] = float(n)
            live[slot] = (a, float(n))
        elif op == "drop":
            live.pop(slot, None)
        elif slot in live:
            a, value = live[slot]
            live[slot] = (a[1:-1], value)  # keep only a view of it
        spans = sorted(_span(a) for a, _ in live.values())
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))
        for a, value in live.values():
            assert np.all(a == value)


def test_a_slightly_smaller_request_reuses_a_larger_buffer():
    """Blocks differ in size: a free buffer up to MAX_SLACK times a request serves it, the smallest first."""
    near = buffers.empty(int(BIG * 1.1), np.float64)
    far = buffers.empty(int(BIG * 1.35), np.float64)
    huge = buffers.empty(int(BIG * 2), np.float64)
    starts = {name: a.ctypes.data for name, a in (("near", near), ("far", far), ("huge", huge))}
    del near, far, huge
    first = buffers.empty(BIG, np.float64)
    second = buffers.empty(BIG, np.float64)
    third = buffers.empty(BIG, np.float64)
    assert first.ctypes.data == starts["near"]
    assert second.ctypes.data == starts["far"]
    assert third.ctypes.data not in starts.values()  # "huge" is more than MAX_SLACK times a request
    assert buffers.pool_stats()["free_bytes"] == buffers.capacity(int(BIG * 2) * 8)


def test_arrays_of_a_shape_reuse_memory_of_any_shape():
    """The step's temporaries are 2-D: the pool serves shapes, from the same free memory."""
    a = buffers.empty((BIG // 4, 4), np.float64)
    assert a.shape == (BIG // 4, 4) and a.flags.c_contiguous and a.flags.writeable
    start = a.ctypes.data
    del a
    b = buffers.empty((4, BIG // 4), np.float64)
    assert b.ctypes.data == start
    c = buffers.empty_like(b, np.float32)
    assert c.shape == b.shape and c.dtype == np.float32
    assert buffers.empty((3, 5), np.float64).shape == (3, 5)  # small: a plain array


def test_a_process_default_limit_bounds_the_pool_and_the_config_key_wins():
    arrays = [buffers.empty(BIG, np.float64) for _ in range(4)]
    del arrays
    held = buffers.pool_stats()["free_bytes"]
    assert held >= 4 * BIG * 8
    try:
        buffers.set_default_limit(2 * buffers.capacity(BIG * 8))
        assert buffers.pool_limit() == 2 * buffers.capacity(BIG * 8)
        assert buffers.pool_stats()["free_bytes"] <= buffers.pool_limit()  # shrunk at once
        with dask.config.set({"dnmf.read-pool-bytes": 10 * BIG * 8}):
            assert buffers.pool_limit() == 10 * BIG * 8
    finally:
        buffers.set_default_limit(None)
    assert buffers.pool_limit() == buffers.DEFAULT_POOL_BYTES
    assert buffers.clear_pool() > 0
    assert buffers.pool_stats()["free_bytes"] == 0


def test_large_products_reuse_pooled_memory_in_an_ordinary_process():
    """Over FRESH_BYTES a new array is fresh pages even outside a worker: products reuse the pool."""
    import scipy.sparse as sp

    from dnmf.nmf import graph, kernels

    assert not buffers.pinned()  # the test process starts as an ordinary one
    assert not buffers.fresh_memory(buffers.FRESH_BYTES - 1) and buffers.fresh_memory(buffers.FRESH_BYTES)
    k = 32
    rows = buffers.FRESH_BYTES // (8 * k) + 1
    x = sp.random(rows, 300, density=0.01, format="csr", random_state=0)
    b = np.random.default_rng(0).random((300, k))
    first = graph._pooled_xdot(x, b)
    want = kernels.xdot(x, b)
    assert first.tobytes() == want.tobytes()
    start = first.ctypes.data
    del first
    reused = buffers.pool_stats()["reused"]
    again = graph._pooled_xdot(x, b)
    assert buffers.pool_stats()["reused"] == reused + 1
    assert again.ctypes.data == start and again.tobytes() == want.tobytes()
    before = buffers.pool_stats()
    graph._pooled_xdot(x[:100], b)  # under FRESH_BYTES: SciPy's own array, the pool untouched
    assert buffers.pool_stats() == before
