"""distributed's monitors on a cluster dnmf fits on (dnmf.engine.monitors), on real worker processes.

A fit's Runner runs the scheduler's, the workers' and the nannies' event-loop tick every 200 ms
and the workers' profile every 100 ms; the profile still records; ``dnmf.quiet-monitors``
false puts distributed's intervals back; a restarted worker is slowed again; a cluster that
already runs them slower keeps its own.
"""

import time

import dask
import pytest

from dnmf.engine import monitors
from dnmf.engine.runner import Runner
from tests.helpers import local_client

pytestmark = pytest.mark.cluster


def _intervals(server) -> dict:
    return {name: pc.callback_time for name, pc in server.periodic_callbacks.items() if name in ("tick", "profile")}


def _worker_intervals(dask_worker=None):
    return _intervals(dask_worker)


def _nanny_intervals(dask_worker=None):  # run with nanny=True: dask_worker is the nanny
    return _intervals(dask_worker)


def _scheduler_intervals(dask_scheduler=None):
    return _intervals(dask_scheduler)


def _all(client) -> tuple:
    """The intervals (ms) of the scheduler, each worker and each nanny."""
    return (
        client.run_on_scheduler(_scheduler_intervals),
        list(client.run(_worker_intervals).values()),
        list(client.run(_nanny_intervals, nanny=True).values()),
    )


def _busy(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


@pytest.fixture(scope="module")
def client():
    """One worker process under a nanny, for this module alone (its monitors change)."""
    with local_client(n_workers=1, threads_per_worker=1, processes=True) as c:
        yield c


def test_a_fit_runner_slows_the_monitors_and_false_undoes_it(client):
    with dask.config.set({"dnmf.quiet-monitors": False}):
        Runner(client)
    default = ({"tick": 20.0}, [{"tick": 20.0, "profile": 10.0}], [{"tick": 20.0}])
    assert _all(client) == default  # distributed's own defaults
    Runner(client)
    assert _all(client) == ({"tick": 200.0}, [{"tick": 200.0, "profile": 100.0}], [{"tick": 200.0}])
    Runner(client)  # registered once: a second fit changes nothing
    assert _all(client) == ({"tick": 200.0}, [{"tick": 200.0, "profile": 100.0}], [{"tick": 200.0}])
    with dask.config.set({"dnmf.quiet-monitors": False}):
        Runner(client)
    assert _all(client) == default


def test_the_profile_still_records_a_task(client):
    Runner(client)
    start = time.time()
    client.submit(_busy, 1.5, pure=False).result()
    profile = client.profile(start=start)
    # 100 ms between samples: about 15 samples of the task's 1.5 s (at 10 ms, about 150).
    assert 5 <= profile["count"] <= 40, profile["count"]


def test_a_restarted_worker_is_slowed_again(client):
    Runner(client)
    client.restart()
    assert _all(client) == ({"tick": 200.0}, [{"tick": 200.0, "profile": 100.0}], [{"tick": 200.0}])


def test_a_cluster_that_runs_them_slower_keeps_its_intervals():
    slower = {"distributed.admin.tick.interval": "500ms", "distributed.worker.profile.enabled": False}
    with dask.config.set(slower), local_client(n_workers=1, threads_per_worker=1, processes=True) as c:
        Runner(c)
        assert _all(c) == ({"tick": 500.0}, [{"tick": 500.0}], [{"tick": 500.0}])
        with dask.config.set({"dnmf.quiet-monitors": False}):
            Runner(c)
        assert _all(c) == ({"tick": 500.0}, [{"tick": 500.0}], [{"tick": 500.0}])


@pytest.mark.parametrize("value", ["auto", "yes", 1])
def test_a_bad_setting_is_one_line(value):
    with dask.config.set({"dnmf.quiet-monitors": value}):
        with pytest.raises(ValueError, match=r"dnmf.quiet-monitors is .*; set it to true or false\.$"):
            monitors.setting()
