"""The workers' glibc allocator (dnmf.engine.allocator): tuned by a fit's Runner, undone on request.

On real worker processes (distributed starts them with ``MALLOC_TRIM_THRESHOLD_``): a task that
allocates and frees multi-megabyte arrays faults in every page of them until the tuning, and
next to none after it; ``dnmf.worker-allocator`` false undoes it; a restarted worker is tuned
again; a worker in the client's process is left alone unless forced.
"""

import resource
import sys

import dask
import numpy as np
import pytest

from dnmf.engine import allocator
from dnmf.engine.runner import Runner
from tests.helpers import local_client

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"),
]


def _churn(n: int = 320_000, rounds: int = 20) -> int:
    """Page faults of this process while it allocates and frees 2.5 MB arrays ``rounds`` times."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = np.ones(n)
        for _ in range(4):
            a = a * 1.0000001
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _faults(client) -> int:
    """Page faults of the worker's task thread in one churn (after one to warm its heap)."""
    client.submit(_churn, pure=False).result()
    return client.submit(_churn, pure=False).result()


def _applied(dask_worker):
    plugin = dask_worker.plugins.get(allocator.PLUGIN_NAME)
    return None if plugin is None else plugin.applied


@pytest.fixture(scope="module")
def worker_client():
    """One worker process of one thread and 4 GiB, for this module alone (its tuning changes)."""
    with local_client(n_workers=1, threads_per_worker=1, processes=True, memory_limit="4GiB") as client:
        yield client


def test_thresholds_follow_the_memory_limit():
    MiB = 2**20
    assert allocator.thresholds(None) == (32 * MiB, 64 * MiB)
    assert allocator.thresholds(8 * 2**30) == (32 * MiB, 64 * MiB)
    assert allocator.thresholds(4 * 2**30) == (32 * MiB, 64 * MiB)
    assert allocator.thresholds(2**30) is None
    assert allocator.thresholds(400 * MiB) is None


def test_a_fit_runner_tunes_the_workers_and_false_undoes_it(worker_client):
    with dask.config.set({"dnmf.worker-allocator": False}):
        Runner(worker_client)
    pinned = _faults(worker_client)
    # 20 rounds x 5 arrays x 2.5 MB in 4 KiB pages: ~12,000 faults with the pinned threshold.
    assert pinned > 5_000, pinned
    Runner(worker_client)
    (applied,) = worker_client.run(_applied).values()
    assert applied == allocator.thresholds(4 * 2**30)
    tuned = _faults(worker_client)
    assert tuned < pinned / 20, (tuned, pinned)
    with dask.config.set({"dnmf.worker-allocator": False}):
        Runner(worker_client)
    assert list(worker_client.run(_applied).values()) == [None]
    assert _faults(worker_client) > 5_000


def test_a_worker_with_little_memory_is_left_alone():
    """A 400 MiB worker (an out-of-core fit's) keeps distributed's setting: it has no memory to
    spare for freed memory kept."""
    with local_client(n_workers=1, threads_per_worker=1, processes=True, memory_limit="400MiB") as client:
        Runner(client)
        assert list(client.run(_applied).values()) == [None]
        assert _faults(client) > 5_000


def test_a_restarted_worker_is_tuned_again(worker_client):
    Runner(worker_client)
    worker_client.restart()
    (applied,) = worker_client.run(_applied).values()
    assert applied == allocator.thresholds(4 * 2**30)
    assert _faults(worker_client) < 1_000


def test_auto_leaves_a_worker_started_without_the_pinned_threshold_alone(monkeypatch):
    """A worker process whose environment lacks ``MALLOC_TRIM_THRESHOLD_`` (glibc's dynamic
    thresholds work there): "auto" leaves it, true tunes it, false undoes that."""
    # A nanny sets its pre-spawn environment in its own process for good (here: this one's,
    # after an earlier LocalCluster), and its workers inherit it; None unsets it in the config.
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        with local_client(n_workers=1, threads_per_worker=1, processes=True) as client:
            Runner(client)
            assert list(client.run(_applied).values()) == [None]
            with dask.config.set({"dnmf.worker-allocator": True}):
                Runner(client)
                assert list(client.run(_applied).values()) != [None]
            with dask.config.set({"dnmf.worker-allocator": False}):
                Runner(client)
            assert list(client.run(_applied).values()) == [None]


def test_a_worker_in_the_clients_process_is_left_alone(monkeypatch):
    """This process did not start with distributed's setting, though a nanny of an earlier
    LocalCluster may have put it in ``os.environ`` since: "auto" must not tune it (and must
    not, when undoing, pin glibc's thresholds it never had)."""
    if "MALLOC_TRIM_THRESHOLD_" in allocator.start_environ():
        pytest.skip("this test process was started with MALLOC_TRIM_THRESHOLD_ set")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what such a nanny leaves behind
    assert not allocator.pinned()
    with local_client(n_workers=1, threads_per_worker=1, processes=False) as client:
        Runner(client)
        assert list(client.run(_applied).values()) == [None]


def test_a_cluster_that_cannot_be_tuned_does_not_fail_the_fit(caplog):
    """The tuning is a speed-up: where the broadcast fails (here, a client already closed)
    the Runner is still made, with one warning."""
    with local_client(n_workers=1, threads_per_worker=1, processes=False) as client:
        pass
    with caplog.at_level("WARNING", logger="dnmf"):
        runner = Runner(client)
    assert runner.client is client
    assert "Could not tune the workers' memory allocator" in caplog.text


@pytest.mark.parametrize("value", ["sometimes", "off", 1])
def test_bad_setting_is_one_clear_line(value):
    with dask.config.set({"dnmf.worker-allocator": value}):
        with pytest.raises(ValueError, match="dnmf.worker-allocator is .*; set it to true, false or 'auto'"):
            allocator.setting()
