"""deploy/local and dnmf.cli.cluster.connect against real `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import dnmf
from dnmf.cli.cluster import ClusterOptions, ConnectError, connect
from dnmf.storage.placement import workers_info
from tests.deploy.helpers import dask_local, dnmf_executable, group_pids, recorded_pids, start_cluster, transitions
from tests.helpers import free_port, planted


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and 2 workers started by deploy/local; stopped (and checked gone) at the end."""
    state = tmp_path_factory.mktemp("dask-local")
    address = start_cluster(state, 2)
    pids = recorded_pids(state)
    yield address, state
    dask_local(state, "stop")
    assert not group_pids(pids), "dask-local stop left processes of its cluster running"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X = planted()
    path = tmp_path_factory.mktemp("stores") / "X.zarr"
    dnmf.write_matrix(X, path, chunks=(120, 90))  # 2 row blocks: one per worker
    return X, str(path)


def _params():
    return dict(n_components=4, solver="cd", init="random", random_state=0, max_iter=5, tol=0.0)


@pytest.mark.cluster
@pytest.mark.subprocess
def test_start_status_and_scheduler_file(cluster):
    address, state = cluster
    assert address.startswith("tcp://127.0.0.1:")
    out = dask_local(state, "status")
    assert out.stdout.count("running") == 3, out.stdout
    assert json.loads((state / "scheduler.json").read_text())["address"] == address
    for name in ("scheduler.log", "worker-0.log", "worker-1.log"):
        assert (state / name).stat().st_size > 0
    again = dask_local(state, "start", "1", "--port", "0", check=False)
    assert again.returncode != 0 and "still running" in again.stderr


@pytest.mark.cluster
@pytest.mark.subprocess
def test_connect_fits_on_the_processes_bit_identical_to_threads(cluster, store):
    """The same seed gives the same factors on the 2-process cluster as on local threads."""
    address, state = cluster
    X, path = store
    before = transitions(address)
    with connect(ClusterOptions(scheduler=address)) as (client, link):
        assert len(workers_info(client)) == 2
        assert link is None or link.startswith("http://127.0.0.1:")
        remote = dnmf.NMF(client=client, **_params()).fit(path)
    assert transitions(address) > before  # the work ran on that scheduler's workers
    local = dnmf.NMF(**_params()).fit(path)  # threads in this process
    np.testing.assert_array_equal(remote.components_, local.components_)
    assert remote.loss_history_[-1] < remote.loss_history_[0]


@pytest.mark.cluster
@pytest.mark.subprocess
def test_connect_with_scheduler_file_and_address_without_scheme(cluster):
    address, state = cluster
    with connect(ClusterOptions(scheduler_file=str(state / "scheduler.json"))) as (client, _):
        assert client.submit(sum, [1, 2]).result() == 3
    with connect(ClusterOptions(scheduler=address.removeprefix("tcp://"))) as (client, _):
        assert client.scheduler.address == address


def test_unreachable_scheduler_is_one_clear_error(tmp_path):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as err:
        with connect(ClusterOptions(scheduler=f"tcp://127.0.0.1:{port}", timeout=1.0)):
            pass
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert msg.startswith(f"Could not connect to the Dask scheduler at tcp://127.0.0.1:{port} within 1 s: ")
    assert msg.endswith("Check the address, that the scheduler is running, and TLS settings.")
    with pytest.raises(ConnectError, match="scheduler file"):
        with connect(ClusterOptions(scheduler_file=str(tmp_path / "absent.json"), timeout=0.3)):
            pass


@pytest.mark.parametrize(
    "opts, match",
    [
        (ClusterOptions(scheduler="tcp://a:1", scheduler_file="s.json"), "Give one of them"),
        (ClusterOptions(scheduler="tls://127.0.0.1:1"), "uses TLS but no TLS settings"),
        (ClusterOptions(timeout=0), "timeout must be positive"),
    ],
)
def test_contradictory_options_are_usage_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        with connect(opts):
            pass


def test_embedded_cluster_is_started_and_closed():
    with connect(ClusterOptions(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)) as (
        client,
        link,
    ):
        assert sum(client.nthreads().values()) == 2
        assert link is None  # dashboard_address=None
        cluster = client.cluster
    assert client.status == "closed" and cluster.status.name == "closed"


@pytest.mark.cluster
@pytest.mark.subprocess
def test_stop_ends_exactly_its_processes(cluster, tmp_path):
    """Another cluster and a bystander `dask scheduler` survive; a recycled PID is never signalled."""
    address, state = cluster
    bystander = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        other = tmp_path / "other"
        start_cluster(other, 1)
        pids = recorded_pids(other)
        assert len(group_pids(pids)) >= 2  # scheduler + nanny (+ its worker child)

        # Pretend a recorded worker PID was recycled by the bystander: same PID, another start time.
        doc = json.loads((other / "cluster.json").read_text())
        doc["workers"].append(
            {
                "pid": bystander.pid,
                "create_time": psutil.Process(bystander.pid).create_time() - 100,
                "cmd": ["recycled"],
                "log": str(other / "recycled.log"),
            }
        )
        (other / "cluster.json").write_text(json.dumps(doc))

        dask_local(other, "stop")
        assert not group_pids(pids)
        assert bystander.poll() is None, "stop killed a process it did not start"
        assert dask_local(state, "status").stdout.count("running") == 3
        assert dask_local(other, "status", check=False).returncode == 3
    finally:
        bystander.terminate()
        bystander.wait(10)


@pytest.fixture(scope="module")
def dnmf_cli():
    exe = dnmf_executable()
    if exe is None:
        pytest.skip("the dnmf command line is not installed in this environment (pip install -e .)")
    return exe


def _fit_cli(dnmf_cli, store_path, model, *cluster_args, max_iter=5):
    cmd = [
        dnmf_cli,
        "fit",
        store_path,
        "-k",
        "4",
        "-o",
        str(model),
        "--solver",
        "cd",
        "--init",
        "random",
        "--seed",
        "0",
        "--max-iter",
        str(max_iter),
        "--tol",
        "0",
        "--quiet",
        *cluster_args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.cluster
@pytest.mark.subprocess
def test_cli_fit_on_the_deployed_cluster(cluster, store, dnmf_cli, tmp_path):
    """`dnmf fit --scheduler tcp://...` runs on those processes; the model equals the API's."""
    address, _ = cluster
    X, path = store
    before = transitions(address)
    proc = _fit_cli(dnmf_cli, path, tmp_path / "model.zarr", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    assert transitions(address) > before
    model = dnmf.load(tmp_path / "model.zarr")
    assert model.components_.shape == (4, X.shape[1])
    assert model.n_iter_ == 5
    oracle = dnmf.NMF(**_params()).fit(path)
    np.testing.assert_allclose(model.components_, oracle.components_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.reconstruction_err_, oracle.reconstruction_err_, rtol=1e-12)


@pytest.mark.subprocess
def test_cli_unreachable_scheduler_exits_2(store, dnmf_cli, tmp_path):
    _, path = store
    port = free_port()
    proc = _fit_cli(
        dnmf_cli, path, tmp_path / "m.zarr", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "0.5"
    )
    assert proc.returncode == 2, proc.stderr
    assert f"Could not connect to the Dask scheduler at tcp://127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
