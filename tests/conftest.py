import os

import pytest
from hypothesis import settings

from tests.helpers import local_client

# CI draws the same examples every run, so a failure reproduces and nothing flickers;
# HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Tests on the shared 2-worker cluster are ``cluster`` tests (those that start their own
    cluster carry the marker themselves)."""
    for item in items:
        if "dist_client" in item.fixturenames:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dist_client():
    """A real LocalCluster with 2 worker processes, shared by the session."""
    with local_client(n_workers=2, threads_per_worker=1, processes=True) as client:
        yield client


@pytest.fixture(scope="module")
def threads_client():
    """An in-process LocalCluster (one worker of 2 threads, as ``dnmf fit`` starts by default),
    one per module: a test can read the worker's data directly (``client.cluster.workers``)."""
    with local_client(n_workers=1, threads_per_worker=2, processes=False) as client:
        yield client
