"""Where the blocks run does not change the bits: threads, one worker process, two worker processes.

The fits on a cluster also show where they ran: the scattered blocks of X (keys ``dnmf-X-...``)
are held by every worker, and every worker ran tasks of the fit (its task stream).
"""

import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.storage.placement import workers_info
from tests.helpers import local_client

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def one_worker_client():
    """A LocalCluster with 1 worker process, one thread (``dist_client`` has 2 such workers)."""
    with local_client(n_workers=1, threads_per_worker=1, processes=True) as client:
        yield client


def _x_blocks(client) -> tuple[dict[str, int], int]:
    """Blocks of X (scattered under ``dnmf-X-<uuid>`` names) each worker holds now, and how many
    distinct blocks there are (a worker may also hold copies it fetched from another)."""
    held = {
        worker: {key for key in keys if isinstance(key, tuple) and str(key[0]).startswith("dnmf-X-")}
        for worker, keys in client.has_what().items()
    }
    return {worker: len(keys) for worker, keys in held.items()}, len(set().union(*held.values()))


def _fit(X, client, **params):
    """``(W, H, placement)``. On a cluster, ``placement`` records the blocks of X each worker held
    at the first iteration and the workers that ran the fit's tasks; on threads it is None."""
    model = dnmf.NMF(client=client, **params)
    blocks = []

    def at_first_iteration(it, elapsed, loss):
        if client is not None and not blocks:
            blocks.append(_x_blocks(client))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if client is None:
            return model.fit_transform(X, callback=at_first_iteration), model.components_, None
        from distributed import get_task_stream

        with get_task_stream(client) as ts:
            W = model.fit_transform(X, callback=at_first_iteration)
    ((held, distinct),) = blocks
    ran = {task["worker"] for task in ts.data}
    workers = set(workers_info(client))
    return W, model.components_, {"held": held, "distinct": distinct, "ran": ran, "workers": workers}


def _assert_on_every_worker(placement, n_workers, n_blocks):
    assert len(placement["workers"]) == n_workers
    held = placement["held"]
    assert placement["distinct"] == n_blocks, placement
    assert set(held) == placement["workers"] and all(held.values()), f"X's blocks are not on every worker: {held}"
    assert placement["ran"] == placement["workers"], f"tasks ran on {placement['ran']} only"


def test_same_seed_bit_identical_on_threads_one_and_two_workers(dist_client, one_worker_client):
    """Same seed and blocking: identical bits on the local threads, 1 worker process and 2."""
    X = sp.random(200, 90, density=0.1, random_state=0, format="csr")
    for solver in ("cd", "mu"):
        params = dict(
            n_components=6, init="nndsvdar", solver=solver, random_state=7, max_iter=15, tol=0, chunks=(45, 40)
        )
        W0, H0, _ = _fit(X, None, **params)
        for client, n_workers in ((one_worker_client, 1), (dist_client, 2)):
            W, H, placement = _fit(X, client, **params)
            _assert_on_every_worker(placement, n_workers, n_blocks=5 * 3)
            assert np.array_equal(W, W0) and np.array_equal(H, H0), (solver, n_workers)


def test_same_seed_bit_identical_one_vs_two_workers(dist_client, one_worker_client):
    """Random init on 1 worker and on 2: the same bits, and on 2 workers the blocks and their
    tasks really were spread over both."""
    X = sp.random(150, 80, density=0.15, random_state=1, format="csr")
    params = dict(n_components=5, init="random", random_state=11, max_iter=10, tol=0, chunks=(40, 30))
    W1, H1, one = _fit(X, one_worker_client, **params)
    W2, H2, two = _fit(X, dist_client, **params)
    _assert_on_every_worker(one, 1, n_blocks=4 * 3)
    _assert_on_every_worker(two, 2, n_blocks=4 * 3)
    assert np.array_equal(W1, W2)
    assert np.array_equal(H1, H2)


@pytest.mark.parametrize("init", ["nndsvdar", "nndsvda"])
def test_an_svd_init_leaves_x_where_it_was_scattered(dist_client, init):
    """The passes of an SVD init run on the row blocks' workers: at the first iteration each of
    X's blocks is held once, by its range's worker. Unplaced, the scheduler ran some where the
    sketch's blocks were and copied X's blocks there, and the cluster could then drop the
    originals (a flaky failure of the test above, all 15 blocks on one worker)."""
    from dnmf.storage.placement import row_owner, worker_addresses

    X = sp.random(200, 90, density=0.1, random_state=0, format="csr")
    params = dict(n_components=6, init=init, solver="cd", random_state=7, max_iter=3, tol=0, chunks=(45, 40))
    held: list = []

    def at_first_iteration(it, elapsed, loss):
        if it == 1:
            held.append(
                {
                    worker: sorted(k[1:] for k in keys if isinstance(k, tuple) and str(k[0]).startswith("dnmf-X-"))
                    for worker, keys in dist_client.has_what().items()
                }
            )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dnmf.NMF(client=dist_client, **params).fit(X, callback=at_first_iteration)
    workers = worker_addresses(dist_client)
    expected = {w: sorted((i, j) for i in range(5) for j in range(3) if row_owner(i, 5, workers) == w) for w in workers}
    assert held[0] == expected


def test_row_ranges_stay_on_their_worker_and_receive_touched_rows_only(dist_client):
    """A wide sparse X on 2 workers: each worker's row tasks run on it (a contiguous range of
    row blocks each), they receive only the touched rows of Hᵀ (the ``-Hs`` tasks), and the
    result equals the threaded fit's bits."""
    from distributed import get_task_stream

    from dnmf.storage.placement import row_owner, worker_addresses

    X = sp.random(200, 2000, density=0.005, random_state=4, format="csr")  # a worker touches < half
    params = dict(n_components=4, init="random", solver="cd", random_state=3, max_iter=6, tol=0, chunks=(25, 500))
    W0, H0, _ = _fit(X, None, **params)
    model = dnmf.NMF(client=dist_client, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with get_task_stream(dist_client) as ts:
            W = model.fit_transform(X)
    assert np.array_equal(W, W0) and np.array_equal(model.components_, H0)
    workers = worker_addresses(dist_client)
    row_tasks = [t for t in ts.data if str(t["key"][0]).startswith("dnmf-step-") and str(t["key"][0]).endswith("-A")]
    assert len(row_tasks) == 6 * 8
    on_owner = sum(t["worker"] == row_owner(t["key"][1], 8, workers) for t in row_tasks)
    # Work stealing may move a few under load; the placement holds for the rest.
    assert on_owner >= 0.75 * len(row_tasks), f"{on_owner} of {len(row_tasks)} row tasks ran on their worker"
    assert any(str(t["key"][0]).endswith("-Hs") for t in ts.data), "no touched-row tasks: Hᵀ went whole"


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_ratings_ship_only_touched_factor_rows_and_keep_the_bits(dist_client, feedback):
    """RatingsNMF on 2 workers: row bands get only the item rows they touch, column bands only the
    user rows (Spark's out-blocks), and the factors equal the threaded fit's bits."""
    from distributed import get_task_stream

    rng = np.random.default_rng(2)
    X = sp.random(400, 1500, density=0.01, random_state=rng, format="csr")
    X.data = np.ceil(X.data * 5)
    kw = dict(feedback=feedback, random_state=0, max_iter=4, tol=0, chunks=(50, 500))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = dnmf.RatingsNMF(3, **kw).fit(X)
        with get_task_stream(dist_client) as ts:
            remote = dnmf.RatingsNMF(3, client=dist_client, **kw).fit(X)
    assert np.array_equal(np.asarray(local.components_), np.asarray(remote.components_))
    assert np.array_equal(np.asarray(local.transform(X)), np.asarray(remote.transform(X)))
    names = {str(t["key"][0]).rsplit("-", 1)[-1] for t in ts.data if isinstance(t["key"], tuple)}
    assert {"Vs", "Us"} <= names, names


@pytest.mark.parametrize(("feedback", "given"), [("explicit", "memory"), ("implicit", "memory"), ("explicit", "dask")])
def test_ratings_iterations_move_factor_rows_and_small_sums_only(dist_client, feedback, given):
    """RatingsNMF on 2 workers, from the second iteration on: no band of X, no index of the
    touched rows and no band task's whole result (which holds its new factor rows) crosses
    between the workers; the factor rows a band needs and the small sums do. Before, each
    iteration moved column bands (the column tasks ran where the rows of U they read were), the
    touched rows' carrier, and whole column results to the task that summed the losses. X in
    memory (its bands scattered) or a Dask array (its bands persisted)."""
    import re

    import dask.array as da

    rng = np.random.default_rng(3)
    X = sp.random(800, 1200, density=0.02, random_state=rng, format="csr")
    X.data = np.ceil(X.data * 5)
    kw = dict(feedback=feedback, random_state=0, max_iter=5, tol=0, chunks=(100, 300))
    if given == "dask":
        X = da.from_array(X, chunks=(100, 300), asarray=False)
        del kw["chunks"]

    def logs(dask_worker):
        # The log keeps the last 1,000 transfers (distributed.admin.low-level-log-length), which
        # the session's cluster may have reached: what this fit moved is told by the time.
        return [(entry["start"], str(entry["keys"])) for entry in dask_worker.transfer_outgoing_log]

    since: list = []

    def at(iteration, elapsed, loss):
        if iteration == 1:
            since.append(time.time())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = dnmf.RatingsNMF(3, **kw).fit(X)
        remote = dnmf.RatingsNMF(3, client=dist_client, **kw).fit(X, callback=at)
    assert np.array_equal(np.asarray(local.components_), np.asarray(remote.components_))
    moved = [keys for v in dist_client.run(logs).values() for start, keys in v if start >= since[0]]
    names = {a + b for keys in moved for a, b in re.findall(r"'(dnmf[A-Za-z-]*?)-[0-9a-f]{32}(-[A-Za-z]+)?'", keys)}
    assert "dnmf-masked-step-Us" in names, names  # the touched rows of U do travel
    unexpected = {n for n in names if n.endswith(("bands", "-touched", "-items", "-step-A", "-step-B"))}
    assert not unexpected, f"moved between workers during the iterations: {sorted(unexpected)}"


def test_passes_over_a_store_run_where_their_row_ranges_live(dist_client, tmp_path):
    """The statistics pass over a store places each block's task on its row range's worker
    (Runner.row_owners): dependency-free tasks that the scheduler would otherwise queue."""
    import ast

    from distributed import get_task_stream

    from dnmf.engine.runner import Runner
    from dnmf.nmf.stats import compute_stats

    X = sp.random(400, 60, density=0.1, random_state=3, format="csr")
    store = dnmf.write_matrix(X, tmp_path / "x.zarr", chunks=(50, 30))
    runner = Runner(dist_client)
    owners = runner.row_owners(store.data.numblocks[0])
    with get_task_stream(dist_client) as ts:
        stats = compute_stats(store.data, runner)
    assert stats.nnz == X.nnz
    ran = {}
    for task in ts.data:
        key = task["key"]
        if isinstance(key, str) and key.startswith("("):
            key = ast.literal_eval(key)
        if isinstance(key, tuple) and str(key[0]).startswith("dnmf-stats-core") and len(key) == 3:
            ran[key[1:]] = task["worker"]
    assert len(ran) == 8 * 2, ran
    assert all(worker == owners[i] for (i, _), worker in ran.items()), (owners, ran)
    assert len(set(owners)) == 2
