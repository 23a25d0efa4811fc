"""Every model runs on the one engine loop: same recovery, same lineage policy."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings

import dask
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.engine import loop
from dnmf.engine.runner import Runner
from dnmf.masked.step import MaskedStep
from dnmf.nmf.step import NMFStep


def _matrix(seed=3):
    X = sp.random(90, 60, density=0.25, random_state=seed, format="csr", dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    return X


MODELS = {
    "nmf": lambda **kw: dnmf.NMF(
        n_components=4, solver="cd", init="random", random_state=0, tol=0, chunks=(30, 30), **kw
    ),
    "ratings": lambda **kw: dnmf.RatingsNMF(
        n_components=3, random_state=0, tol=0, chunks=((30, 30, 30), (30, 30)), **kw
    ),
}


def _factors(model):
    W = model.user_factors_ if isinstance(model, dnmf.RatingsNMF) else model._W
    return np.asarray(W), np.asarray(model.components_)


def _fit(name, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MODELS[name](**kw).fit(X)


def test_both_estimators_fit_through_the_one_loop(monkeypatch):
    steps = []
    real = loop.run

    def spy(step, *args, **kwargs):
        steps.append(type(step))
        return real(step, *args, **kwargs)

    monkeypatch.setattr(loop, "run", spy)
    for name in MODELS:
        _fit(name, _matrix(), max_iter=3)
    assert steps == [NMFStep, MaskedStep]


@pytest.mark.cluster
@pytest.mark.parametrize("name", list(MODELS))
def test_killed_worker_recovers_through_the_engine(name, tmp_path, caplog):
    """SIGKILL a worker mid-fit: the engine's recovery reloads the checkpoint; same bits as no failure."""
    from distributed import Client, LocalCluster

    X = _matrix()
    ref = _factors(_fit(name, X, max_iter=12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        victim = next(iter(client.run(os.getpid).values()))
        killed = threading.Event()

        def on_iteration(it, elapsed, loss):
            if it == 5 and not killed.is_set():
                killed.set()
                threading.Timer(0.02, os.kill, (victim, signal.SIGKILL)).start()
            time.sleep(0.05)

        model = MODELS[name](max_iter=12, client=client, checkpoint=str(tmp_path / "ck"), checkpoint_every=2)
        with caplog.at_level(logging.WARNING, logger="dnmf"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, callback=on_iteration)
        assert victim not in client.run(os.getpid).values(), "the worker was not killed"
    assert model.n_iter_ == 12
    recoveries = [r for r in caplog.records if r.name == "dnmf" and "recovering" in r.getMessage()]
    assert recoveries and all(r.module == "loop" for r in recoveries)
    for got, want in zip(_factors(model), ref, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_lineage_cuts_follow_one_size_policy(name, dist_client, monkeypatch):
    """Both models cut lineage every `dnmf.lineage.every` iterations, and neither above `max-bytes`."""
    cuts = []
    real = Runner.rebase

    def counting(self, *arrays):
        cuts.append(len(arrays))
        return real(self, *arrays)

    monkeypatch.setattr(Runner, "rebase", counting)
    X = _matrix()
    results = {}
    for label, limit in (("default", None), ("tiny", 1)):
        cuts.clear()
        settings = {"dnmf.lineage.every": 2}
        if limit is not None:
            settings["dnmf.lineage.max-bytes"] = limit
        with dask.config.set(settings):
            results[label] = _factors(_fit(name, X, max_iter=6, client=dist_client))
        if limit is None:
            assert len(cuts) == 2, cuts  # after iterations 2 and 4 (none after the last)
        else:
            assert cuts == [], cuts
    for got, want in zip(results["tiny"], results["default"], strict=True):
        np.testing.assert_array_equal(got, want)
