"""dnmf's placed tasks are not stolen (real LocalClusters, the scheduler's own work stealing)."""

import time

import dask
import pytest
from distributed import get_worker

from dnmf.engine.runner import Runner
from dnmf.engine.stealing import PLUGIN_NAME, is_dnmf_key, keep_placed
from tests.helpers import local_client

pytestmark = pytest.mark.cluster


def _where(i):
    time.sleep(0.05)
    return get_worker().address


def _run_placed(client, prefix: str, n: int = 60) -> list[str]:
    """``n`` tasks placed (loosely) on one worker of two; the addresses they ran on."""
    first = sorted(client.scheduler_info()["workers"])[0]
    futures = [
        client.submit(_where, i, key=f"{prefix}-{i}", workers=[first], allow_other_workers=True) for i in range(n)
    ]
    ran = client.gather(futures)
    client.cancel(futures)
    return [address for address in ran if address != first]


def test_placed_tasks_stay_and_others_are_still_stolen():
    with local_client(n_workers=2, threads_per_worker=1, processes=True) as client:
        # Control: without the plugin the scheduler moves placed tasks to the idle worker.
        assert _run_placed(client, "dnmf-before"), "work stealing moved none: the test would prove nothing"
        keep_placed(client)
        keep_placed(client)  # once only (idempotent)
        assert _run_placed(client, "dnmf-placed") == []
        assert _run_placed(client, "someone-else"), "other tasks on the cluster must still be stolen"
        client.unregister_scheduler_plugin(PLUGIN_NAME)
        assert _run_placed(client, "dnmf-after"), "removing the plugin gives stealing back"


def test_runner_keeps_placed_unless_placement_is_off():
    def registered(dask_scheduler=None):
        return PLUGIN_NAME in dask_scheduler.plugins

    with local_client(n_workers=1, threads_per_worker=1, processes=False) as client:
        with dask.config.set({"dnmf.placement": False}):
            Runner(client)
        assert not client.run_on_scheduler(registered)
        Runner(client)
        assert client.run_on_scheduler(registered)


def test_dnmf_keys():
    assert is_dnmf_key(("dnmf-step-abc-A", 3))
    assert is_dnmf_key("dnmf-scalars-abc")
    assert not is_dnmf_key(("array-abc", 0, 0))
    assert not is_dnmf_key(("dnmf",))
    assert not is_dnmf_key(())
    assert not is_dnmf_key(5)
