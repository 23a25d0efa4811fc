"""Writing and reading on a real cluster: two worker processes, one thread each."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import sparse

from dnmf.storage import arrays as io
from dnmf.storage import read_model
from dnmf.storage.placement import workers_info

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.cluster, pytest.mark.filterwarnings("ignore:The Zarr array:UserWarning")]


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _tasks(stream, prefix):
    """Tasks of a task stream whose key name starts with ``prefix``."""
    return [t for t in stream.data if f"'{prefix}" in str(t["key"])]


def test_sparse_dask_array_written_by_workers(client, tmp_path):
    X = sp.random(400, 90, density=0.05, format="csr", random_state=0, dtype="float32")
    Xd = da.from_array(X, chunks=(100, 45), asarray=False)
    with distributed.get_task_stream(client) as ts:
        m = io.write_matrix(Xd, tmp_path / "x.zarr", client=client)
    writes = _tasks(ts, "dnmf-write-")
    writers = {t["worker"] for t in writes}
    assert len(writes) == 8
    assert writers <= set(workers_info(client)) and len(writers) == 2
    assert m.chunks == ((100,) * 4, (45, 45)) and m.nnz == X.nnz
    Y = client.compute(m.data, sync=True)
    assert (Y != X).nnz == 0


def test_in_memory_inputs_are_scattered(client, tmp_path):
    X = sp.random(300, 50, density=0.1, format="coo", random_state=1)
    m = io.write_matrix(X, tmp_path / "x.zarr", chunks=(64, 50), client=client)
    assert m.data.numblocks == (5, 1)
    Y = client.compute(m.data, sync=True)
    assert (X.tocsr() != Y).nnz == 0
    D = np.random.default_rng(0).random((300, 40))
    d = io.write_matrix(D, tmp_path / "d.zarr", chunks=(100, 40), client=client)
    np.testing.assert_array_equal(client.compute(d.data, sync=True), D)


def test_pydata_sparse_chunks_and_dense(client, tmp_path):
    S = sp.random(120, 60, density=0.1, format="csr", random_state=2)
    # Blocks built on the workers straight from SciPy: slicing pydata arrays
    # would JIT-compile numba code in each worker, which takes seconds.
    Sd = da.from_array(S, chunks=(50, 30), asarray=False).map_blocks(
        sparse.COO.from_scipy_sparse, meta=sparse.COO.from_numpy(np.zeros((0, 0)))
    )
    m = io.write_matrix(Sd, tmp_path / "s.zarr", client=client)
    assert m.format == "sparse" and m.chunks == ((50, 50, 20), (30, 30))
    assert (client.compute(m.data, sync=True) != S).nnz == 0
    D = da.random.default_rng(3).random((120, 60), chunks=(40, 60))
    d = io.write_matrix(D, tmp_path / "d.zarr", client=client)
    np.testing.assert_array_equal(client.compute(d.data, sync=True), D.compute())


def test_save_factors_on_workers(client, tmp_path):
    rng = np.random.default_rng(4)
    W = da.from_array(rng.random((250, 8)), chunks=(64, 8))
    H = rng.random((8, 30))
    path = tmp_path / "model"
    with distributed.get_task_stream(client) as ts:
        io.save_factors(path, {"W": W, "H": H}, {"n_iter": 3}, client=client)
    assert len(_tasks(ts, "dnmf-save-")) == 4
    arrays, attrs = read_model(path)
    np.testing.assert_array_equal(arrays["W"], W.compute())
    np.testing.assert_array_equal(arrays["H"], H)
    assert attrs == {"n_iter": 3}
    lazy, _ = io.load_factors(path)
    assert lazy["W"].chunks == ((64, 64, 64, 58), (8,))
    np.testing.assert_array_equal(client.compute(lazy["W"], sync=True), W.compute())
    # Irregular chunks (as from a sparse store) are regularised.
    io.save_factors(path, {"W": W.rechunk(((100, 150), (8,)))}, client=client)
    assert io.load_factors(path)[0]["W"].chunks == ((150, 100), (8,))


def test_worker_failure_leaves_no_valid_store(client, tmp_path):
    def boom(block):
        raise RuntimeError("worker failed")

    X = da.from_array(np.ones((20, 4)), chunks=(10, 4)).map_blocks(boom, dtype=float)
    with pytest.raises(RuntimeError, match="worker failed"):
        io.write_matrix(X, tmp_path / "x.zarr", client=client)
    assert not (tmp_path / "x.zarr").exists()
