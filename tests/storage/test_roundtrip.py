"""Round trips through the matrix stores: what is written is read back exactly."""

from __future__ import annotations

import math
import tempfile

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dnmf.storage import arrays as io
from dnmf.storage import read_sparse_block, write_sparse_block
from dnmf.storage.layout import MatrixInfo
from dnmf.storage.matrix import begin_matrix_store

pytestmark = pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")

DTYPES = ["float32", "float64", "int32", "int64", "uint8"]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _elements(dtype: str):
    if dtype.startswith("float"):
        width = 32 if dtype == "float32" else 64
        return st.floats(-1e6, 1e6, width=width, allow_nan=False, allow_subnormal=False)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@st.composite
def matrices(draw, sparse: bool):
    """A small matrix and a block shape giving at most 4 x 4 blocks."""
    m, n = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(hnp.arrays(dtype, (m, n), elements=_elements(dtype)))
    if sparse:
        stored = draw(hnp.arrays(bool, (m, n)))
        rows, cols = np.nonzero(stored)
        # Stored zeros stay stored: in ratings data they are observations.
        X = sp.csr_matrix((values[rows, cols], (rows, cols)), shape=(m, n), dtype=dtype)
    else:
        X = values
    kr, kc = draw(st.integers(1, min(4, m))), draw(st.integers(1, min(4, n)))
    return X, (math.ceil(m / kr), math.ceil(n / kc))


def _same_csr(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    a.sum_duplicates()
    assert b.dtype == a.dtype and b.shape == a.shape and b.nnz == a.nnz
    np.testing.assert_array_equal(b.indptr, a.indptr)
    np.testing.assert_array_equal(b.indices, a.indices)
    np.testing.assert_array_equal(b.data, a.data)


@SETTINGS
@given(matrices(sparse=True))
@example((sp.csr_matrix((5, 7), dtype="float64"), (2, 3)))  # all zero, ragged, empty blocks
@example((sp.csr_matrix(np.arange(6.0).reshape(2, 3)), (1, 1)))  # 1 x 1 blocks
def test_sparse_round_trip(case):
    X, chunks = case
    with tempfile.TemporaryDirectory() as d:
        m = io.write_matrix(X, f"{d}/x.zarr", chunks=chunks, scheduler="synchronous")
        assert m.format == "sparse" and m.shape == X.shape and m.dtype == X.dtype
        assert m.nnz == X.nnz
        Y = m.data.compute(scheduler="synchronous")
        assert isinstance(Y, sp.csr_matrix)
        _same_csr(X, Y)
        # Each block alone, as a worker would read it.
        r0 = 0
        for i, h in enumerate(m.chunks[0]):
            c0 = 0
            for j, w in enumerate(m.chunks[1]):
                block = m.data.blocks[i, j].compute(scheduler="synchronous")
                assert isinstance(block, sp.csr_matrix)
                _same_csr(X[r0 : r0 + h, c0 : c0 + w], block)
                c0 += w
            r0 += h


@SETTINGS
@given(matrices(sparse=False))
@example((np.zeros((3, 5), dtype="float32"), (2, 2)))
@example((np.arange(6, dtype="int64").reshape(3, 2), (1, 1)))
def test_dense_round_trip(case):
    X, chunks = case
    with tempfile.TemporaryDirectory() as d:
        m = io.write_matrix(X, f"{d}/x.zarr", chunks=chunks, scheduler="synchronous")
        assert m.format == "dense" and m.nnz is None
        assert m.chunks == tuple(tuple(c) for c in m.data.chunks)
        Y = m.data.compute(scheduler="synchronous")
        assert isinstance(Y, np.ndarray) and Y.dtype == X.dtype
        np.testing.assert_array_equal(Y, X)


@settings(max_examples=10, deadline=None)
@given(matrices(sparse=True))
def test_sparse_to_dense_and_back(case):
    """format= converts: a sparse input stored densely and read back is the same matrix."""
    X, chunks = case
    with tempfile.TemporaryDirectory() as d:
        dense = io.write_matrix(X, f"{d}/d.zarr", chunks=chunks, format="dense", scheduler="synchronous")
        np.testing.assert_array_equal(dense.data.compute(scheduler="synchronous"), X.toarray())
        back = io.write_matrix(dense.data, f"{d}/s.zarr", format="sparse", scheduler="synchronous")
        Y = back.data.compute(scheduler="synchronous")
        np.testing.assert_array_equal(Y.toarray(), X.toarray())


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_block_functions_alone(tmp_path, index_dtype):
    """The per-block writer and reader a worker calls, without Dask."""
    X = sp.random(7, 5, density=0.4, format="csr", random_state=1)
    X.indices = X.indices.astype(index_dtype)
    info = MatrixInfo(
        path=str(tmp_path / "s.zarr"),
        kind="sparse",
        shape=(7, 5),
        dtype=np.dtype("float64"),
        row_chunks=(7,),
        col_chunks=(5,),
        nnz_per_block=((0,),),
    )
    begin_matrix_store(info)
    nnz = write_sparse_block(info.path, 0, 0, X, shape=(7, 5), dtype="float64")
    assert nnz == X.nnz
    Y = read_sparse_block(info.path, 0, 0, shape=(7, 5), dtype="float64", nnz=nnz)
    _same_csr(X, Y)
    # Rewriting a block (a retried task) replaces it.
    write_sparse_block(info.path, 0, 0, 2 * X, shape=(7, 5), dtype="float64")
    _same_csr(2 * X, read_sparse_block(info.path, 0, 0, shape=(7, 5), dtype="float64", nnz=nnz))
