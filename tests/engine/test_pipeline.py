"""On a Client the loop submits iteration t + 1 before t's scalars are back: same fits, same ends."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.engine import runner
from dnmf.engine.runner import Runner
from dnmf.masked.step import MaskedStep
from dnmf.nmf.step import NMFStep

MODELS = {
    # shuffle: every build draws from the fit's random generator, which a dropped
    # iteration must hand back untouched.
    "nmf": (
        NMFStep,
        lambda **kw: dnmf.NMF(4, solver="cd", shuffle=True, init="random", random_state=0, chunks=(30, 30), **kw),
    ),
    "ratings": (
        MaskedStep,
        lambda **kw: dnmf.RatingsNMF(3, random_state=0, chunks=((30, 30, 30), (30, 30)), **kw),
    ),
}


def _matrix():
    X = sp.random(90, 60, density=0.25, random_state=3, format="csr", dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    return X


def _fit(name, X, pipeline, client, callback=None, resume=None, **kw):
    with dask.config.set({"dnmf.pipeline": pipeline}), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MODELS[name][1](client=client, **kw)
        return model.fit(X, callback=callback, resume=resume)


def _state(model):
    W = model.user_factors_ if isinstance(model, dnmf.RatingsNMF) else model._W
    return np.asarray(W), np.asarray(model.components_), model.n_iter_


@pytest.mark.parametrize("name", list(MODELS))
def test_an_iteration_built_ahead_changes_no_fit_and_no_end(name, dist_client, tmp_path, monkeypatch):
    """Runs out of iterations, converges, or is stopped: the same bits, iterations and generator with it on or off."""
    step, _ = MODELS[name]
    builds: list[int] = []
    real = step.build

    def counting(self, state, iteration):
        builds.append(iteration)
        return real(self, state, iteration)

    monkeypatch.setattr(step, "build", counting)
    X = _matrix()
    full = {p: _state(_fit(name, X, p, dist_client, max_iter=6, tol=0)) for p in (True, False)}
    for got, want in zip(full[True], full[False], strict=True):
        np.testing.assert_array_equal(got, want)

    # Converged before max_iter: the iteration built ahead of the last one is dropped.
    converged = {p: _state(_fit(name, X, p, dist_client, max_iter=50, tol=5e-2)) for p in (True, False)}
    assert converged[False][2] < 50
    for got, want in zip(converged[True], converged[False], strict=True):
        np.testing.assert_array_equal(got, want)

    # Stopped by the callback at 3 with a checkpoint, resumed to 6: the dropped build of
    # iteration 4 must not have moved the random generator the checkpoint records.
    builds.clear()
    ck = tmp_path / "ck"
    _fit(name, X, True, dist_client, max_iter=6, tol=0, checkpoint=str(ck), callback=lambda i, *_: i < 3)
    assert builds == [1, 2, 3, 4]  # 4 was built ahead, then dropped
    resumed = _state(_fit(name, X, True, dist_client, max_iter=6, tol=0, checkpoint=str(ck), resume=str(ck)))
    for got, want in zip(resumed, full[False], strict=True):
        np.testing.assert_array_equal(got, want)


def test_auto_pipelines_for_a_driver_away_from_its_cluster(dist_client):
    """ "auto" (the default) submits ahead only where the round trip to the scheduler is long."""
    from benchmarks._latency import DelayProxy

    assert Runner(dist_client).pipelines() is False  # beside the scheduler
    host, port = dist_client.scheduler.address.rsplit("/", 1)[-1].rsplit(":", 1)
    far = DelayProxy(host, int(port), 2 * runner.PIPELINE_MIN_ROUND_TRIP)
    with Client(far.address, set_as_default=False) as client:
        assert Runner(client).pipelines() is True
        with dask.config.set({"dnmf.pipeline": False}):
            assert Runner(client).pipelines() is False
    with dask.config.set({"dnmf.pipeline": True}):
        assert Runner(dist_client).pipelines() is True
        assert Runner().pipelines() is False  # the local schedulers wait for every graph anyway


@pytest.mark.parametrize("setting", ["sometimes", "off", 1])
def test_pipeline_setting_is_checked(dist_client, setting):
    with dask.config.set({"dnmf.pipeline": setting}), pytest.raises(ValueError, match="dnmf.pipeline"):
        Runner(dist_client).pipelines()


def _is_scalars(key) -> bool:
    """A step's scalar vector: NMF's ``dnmf-scalars-…``, RatingsNMF's ``dnmf-masked-scalars-…``."""
    return str(key).startswith("('dnmf-") and "scalars-" in str(key)


class _GraphsAndReleases(SchedulerPlugin):
    """Scheduler plugin: the order in which step graphs arrive and step scalars are forgotten."""

    name = "dnmf-test-graphs-and-releases"

    def __init__(self):
        self.events = []

    def update_graph(self, scheduler, *, keys=(), **kwargs):
        self.events.append(("graph", sorted(str(k) for k in keys if _is_scalars(k))))

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "forgotten" and _is_scalars(key):
            self.events.append(("forgotten", str(key)))


def _events(dask_scheduler=None):
    return dask_scheduler.plugins[_GraphsAndReleases.name].events


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_graph_reaches_the_scheduler_before_the_last_scalars_are_released(name, dist_client):
    """A Client batches messages: a release sent just before a graph holds the graph back (10 ms).

    So the loop releases an iteration's scalars only once the next iteration's graph has gone.
    (With the release first, the scheduler saw it first in 2 of 3 runs: the two messages do not
    always share a batch.)
    """
    dist_client.register_plugin(_GraphsAndReleases(), name=_GraphsAndReleases.name)
    try:
        _fit(name, _matrix(), False, dist_client, max_iter=4)
        events = dist_client.run_on_scheduler(_events)
    finally:
        dist_client.unregister_scheduler_plugin(_GraphsAndReleases.name)
    graphs = [keys[0] for kind, keys in events if kind == "graph" and len(keys) == 1]
    assert len(graphs) >= 4
    position = {key: t for t, (kind, key) in enumerate(events) if kind == "forgotten"}
    sent = {keys[0]: t for t, (kind, keys) in enumerate(events) if kind == "graph" and len(keys) == 1}
    for before, after in zip(graphs, graphs[1:], strict=False):
        assert position[before] > sent[after], f"{before} was released before the next graph arrived: {events}"
