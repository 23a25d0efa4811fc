import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import settings

# CI draws the same examples every run, so a failure reproduces and nothing flickers;
# HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


def make_data(m=40, n=30, k=4, density=None, seed=0, dtype=np.float64):
    """A non-negative X (dense, or CSR if density is given) and a starting (W, H)."""
    rng = np.random.RandomState(seed)
    if density is None:
        X = np.abs(rng.randn(m, n))
    else:
        X = sp.random(m, n, density=density, random_state=rng, format="csr") * 5
    W0 = np.abs(rng.randn(m, k))
    H0 = np.abs(rng.randn(k, n))
    return X.astype(dtype), W0.astype(dtype), H0.astype(dtype)
