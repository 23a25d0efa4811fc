import os
import warnings

import pytest
from hypothesis import settings

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
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()
