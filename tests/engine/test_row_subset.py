"""Partials that touch few rows ship as RowSubsets, and sum to the same bits as dense arrays."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dnmf
from dnmf.engine import blocks
from dnmf.engine.blocks import RowSubset, add_parts, as_partial, densify, touched_rows
from dnmf.engine.graph import sum_list


@st.composite
def partials(draw):
    n, k = draw(st.integers(1, 40)), draw(st.integers(1, 4))
    count = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(count):
        rows = np.flatnonzero(rng.random(n) < draw(st.floats(0, 1)))
        dense = np.zeros((n, k))
        dense[rows] = rng.exponential(1.0, (rows.size, k)) * 10.0 ** rng.integers(-8, 8, (rows.size, 1))
        out.append((dense, rows))
    return out


@settings(max_examples=300, deadline=None)
@given(parts=partials(), shipped=st.lists(st.booleans(), min_size=9, max_size=9), fan_in=st.integers(2, 4))
def test_sums_of_subsets_are_bit_identical_to_dense_sums(parts, shipped, fan_in):
    dense = [d for d, _ in parts]
    mixed = [
        RowSubset(r, np.ascontiguousarray(d[r]), d.shape[0]) if s else d
        for (d, r), s in zip(parts, shipped, strict=False)
    ]

    def tree(items):  # the fixed-order tree the graphs build, at a chosen fan-in
        while len(items) > 1:
            items = [sum_list(items[i : i + fan_in]) for i in range(0, len(items), fan_in)]
        return densify(items[0]) if isinstance(items[0], RowSubset) else np.asarray(items[0])

    expected = tree(list(dense))
    got = tree(list(mixed))
    assert got.tobytes() == expected.tobytes()


def test_as_partial_ships_a_subset_only_when_it_pays():
    d = np.arange(20.0).reshape(10, 2)
    assert isinstance(as_partial(d, np.array([1, 3])), RowSubset)
    assert as_partial(d, np.arange(8)) is d
    assert as_partial(d, None) is d
    x = sp.csr_matrix(([1.0, 2.0], ([0, 1], [3, 7])), shape=(2, 10))
    assert touched_rows(x).tolist() == [3, 7]
    part = as_partial(d, touched_rows(x))
    assert np.array_equal(part.dense()[[3, 7]], d[[3, 7]]) and part.nbytes < d.nbytes
    assert np.array_equal(add_parts([part, part]).dense(), 2 * part.dense())


def _fit(X, **kw):
    return dnmf.NMF(4, random_state=0, max_iter=15, tol=0, chunks=(50, 40), **kw).fit(X)


@pytest.mark.parametrize("solver", ["cd", "mu", "anls-bpp"])
def test_fits_with_and_without_subsets_are_bit_identical(solver, monkeypatch):
    rng = np.random.default_rng(0)
    X = sp.random(200, 400, density=0.01, random_state=rng, format="csr")  # most column blocks barely touched
    with_subsets = _fit(X, solver=solver)
    monkeypatch.setattr(blocks, "SUBSET_MAX_FRACTION", -1.0)  # never ship a subset
    dense_only = _fit(X, solver=solver)
    assert with_subsets.components_.tobytes() == dense_only.components_.tobytes()
    assert with_subsets.transform(X).tobytes() == dense_only.transform(X).tobytes()


def test_rank_selection_holdout_fits_are_bit_identical(monkeypatch):
    rng = np.random.default_rng(1)
    X = sp.random(200, 400, density=0.02, random_state=rng, format="csr")
    kw = dict(n_repeats=1, random_state=0, max_iter=10, chunks=(50, 40))
    a = dnmf.select_rank(X, [2, 3], **kw)
    monkeypatch.setattr(blocks, "SUBSET_MAX_FRACTION", -1.0)
    b = dnmf.select_rank(X, [2, 3], **kw)
    assert a.scores.tobytes() == b.scores.tobytes()


@st.composite
def blocks_and_factors(draw):
    r, n, k = draw(st.integers(1, 12)), draw(st.integers(1, 30)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = sp.random(r, n, density=draw(st.floats(0, 1)), random_state=rng, format="csr")
    x.data *= 10.0 ** rng.integers(-6, 6, x.nnz)
    ht = rng.exponential(1.0, (n, k)) * 10.0 ** rng.integers(-6, 6, (n, 1))
    return x, ht


@settings(max_examples=300, deadline=None)
@given(case=blocks_and_factors(), extra=st.integers(0, 30))
def test_products_with_touched_factor_rows_are_bit_identical(case, extra):
    """``x @ Ht`` from the rows of Ht that x touches (plus any others) equals ``x @ Ht`` to the bit."""
    x, ht = case
    rows = np.union1d(touched_rows(x), np.arange(min(extra, x.shape[1])))
    part = blocks.take_rows(ht, rows)
    assert isinstance(part, RowSubset) == (rows.size <= blocks.SUBSET_MAX_FRACTION * ht.shape[0])
    x_restricted, values = blocks.restrict(x, part)
    got = np.ascontiguousarray(x_restricted @ values)
    assert got.tobytes() == np.ascontiguousarray(x @ ht).tobytes()


def test_group_columns_are_the_union_of_each_groups_columns():
    import dask.array as da

    from dnmf.engine.graph import group_columns, group_of_rows

    rng = np.random.default_rng(3)
    X = sp.random(70, 50, density=0.03, random_state=rng, format="csr")
    Xd = da.from_array(X, chunks=(10, 20), asarray=False)  # 7 x 3 blocks
    sizes = (3, 1, 3)
    columns = group_columns(Xd, sizes)
    assert group_of_rows(columns) == [0, 0, 0, 1, 2, 2, 2]
    starts = [0, 30, 40, 70]
    for g in range(3):
        for j, c0 in enumerate(range(0, 50, 20)):
            band = X[starts[g] : starts[g + 1], c0 : c0 + 20]
            expected = np.unique(band.indices)
            got = columns.blocks[g, j].compute(scheduler="sync")
            assert np.array_equal(got, expected), (g, j)
    with pytest.raises(ValueError, match="add up to"):
        group_columns(Xd, (3, 3))


def test_sizeof_counts_a_subsets_buffers():
    """Dask's ``sizeof``, by which distributed counts a result's memory and the bytes of its
    transfers, sees a RowSubset's index and values (it saw 56 bytes, whatever they held)."""
    from dask.sizeof import sizeof

    part = RowSubset(np.arange(1000), np.ones((1000, 32)), 5000)
    assert part.nbytes <= sizeof(part) <= part.nbytes + 256
    columns = RowSubset(np.arange(300), None, 500)
    assert columns.rows.nbytes <= sizeof(columns) <= columns.rows.nbytes + 256
