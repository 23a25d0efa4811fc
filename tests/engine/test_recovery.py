"""Failures cost time, not the job: real processes killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf
import dnmf.engine.runner
from dnmf.storage import StoreError
from dnmf.storage import checkpoints as ckpt_store
from tests.helpers import REPO_ROOT, kill_after_checkpoint

PARAMS = dict(n_components=5, solver="cd", init="nndsvdar", random_state=4, tol=0, chunks=(60, 50))


def data():
    return sp.random(300, 150, density=0.1, random_state=1, format="csr", dtype=np.float64)


def reference(max_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(max_iter=max_iter, **PARAMS)
        return m.fit_transform(data()), m.components_


# ------------------------------------------------------------ lost workers


@pytest.mark.cluster
@pytest.mark.parametrize("with_checkpoint", [True, False], ids=["checkpoint", "no-checkpoint"])
def test_killed_worker_costs_time_not_the_job(tmp_path, with_checkpoint):
    from distributed import Client, LocalCluster

    W_ref, H_ref = reference(25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        victim = list(client.run(os.getpid).values())[0]
        done = threading.Event()
        seen = []

        def on_iteration(it, elapsed, loss):
            seen.append(it)
            if it == 8 and not done.is_set():
                done.set()
                # Kill a worker process while the next iteration runs.
                threading.Timer(0.02, os.kill, (victim, signal.SIGKILL)).start()
            time.sleep(0.05)

        kw = dict(checkpoint=str(tmp_path / "ck"), checkpoint_every=3) if with_checkpoint else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = dnmf.NMF(max_iter=25, client=client, **PARAMS, **kw)
            W = m.fit_transform(data(), callback=on_iteration)
        assert victim not in client.run(os.getpid).values(), "the worker was not killed"
    assert done.is_set()
    assert m.n_iter_ == 25
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, H_ref)


# ------------------------------------------------------------- lost driver

SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    import numpy as np, scipy.sparse as sp
    sys.path.insert(0, {root!r})
    import dnmf
    from tests.engine.test_recovery import PARAMS, data
    warnings.simplefilter("ignore")
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "crash-in-commit":
        # Die between the data and the record that makes it current.
        from dnmf.storage import checkpoints
        real, calls = checkpoints.commit, []
        def commit(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                import os, signal
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        checkpoints.commit = commit
    m = dnmf.NMF(max_iter=40, checkpoint=path, checkpoint_every=3, **PARAMS)
    m.fit(data(), callback=lambda it, el, loss: time.sleep(0.1))
    """
)


def run_script(tmp_path, mode):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(root=str(REPO_ROOT)))
    return subprocess.Popen([sys.executable, str(script), mode, str(tmp_path / "ck")])


def resume(path, max_iter=40):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(max_iter=max_iter, **PARAMS)
        return m.fit_transform(data(), resume=str(path)), m


@pytest.mark.subprocess
def test_killed_driver_resumes_bit_identical(tmp_path):
    proc = run_script(tmp_path, "plain")
    at = kill_after_checkpoint(proc, tmp_path / "ck")
    assert at < 40
    W, m = resume(tmp_path / "ck")
    W_ref, H_ref = reference(40)
    assert m.n_iter_ == 40 and len(m.loss_history_) == 40
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, H_ref)


@pytest.mark.subprocess
def test_crash_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    proc = run_script(tmp_path, "crash-in-commit")
    assert proc.wait(timeout=120) == -signal.SIGKILL
    info = ckpt_store.read_latest(str(tmp_path / "ck"))
    assert info.state["state"]["iteration"] == 3  # the first checkpoint stays current
    # the second checkpoint's blocks were written but never committed
    written = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith("it-"))
    assert len(written) == 2 and written[0] == info.name
    W, m = resume(tmp_path / "ck")
    W_ref, _ = reference(40)
    np.testing.assert_array_equal(W, W_ref)


# ------------------------------------------------------- refusals and damage


@pytest.fixture
def checkpointed(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dnmf.NMF(max_iter=6, checkpoint=str(tmp_path / "ck"), checkpoint_every=3, **PARAMS).fit(data())
    return tmp_path / "ck"


@pytest.mark.parametrize(
    "change, field",
    [(dict(n_components=4), "n_components"), (dict(solver="mu"), "solver"), (dict(alpha_W=0.1), "alpha_W")],
)
def test_mismatched_resume_is_refused(checkpointed, change, field):
    with pytest.raises(ValueError, match=f"parameter '{field}' differs"):
        dnmf.NMF(max_iter=9, **{**PARAMS, **change}).fit(data(), resume=str(checkpointed))


def test_resume_on_other_data_is_refused(checkpointed):
    other = data().copy()
    other.data *= 2
    with pytest.raises(ValueError, match="X differs from the checkpoint's in 'sum'"):
        dnmf.NMF(max_iter=9, **PARAMS).fit(other, resume=str(checkpointed))
    with pytest.raises(ValueError, match="X differs from the checkpoint's in 'shape'"):
        dnmf.NMF(max_iter=9, **PARAMS).fit(data()[:, :140], resume=str(checkpointed))


def test_max_iter_may_grow_on_resume(checkpointed):
    W, m = resume(checkpointed, max_iter=12)
    W_ref, _ = reference(12)
    np.testing.assert_array_equal(W, W_ref)


def test_max_iter_below_the_checkpoint_is_refused(checkpointed):
    # Returning the checkpoint's factors as "a fit of max_iter iterations" would be a lie.
    done = ckpt_store.read_latest(str(checkpointed)).state["state"]["iteration"]
    assert done >= 2
    with pytest.raises(ValueError, match=f"max_iter={done - 1}: the checkpoint is at iteration {done}"):
        dnmf.NMF(max_iter=done - 1, **PARAMS).fit(data(), resume=str(checkpointed))
    # the limit may equal the checkpoint's iteration: that is the checkpoint's model
    W, m = resume(checkpointed, max_iter=done)
    assert m.n_iter_ == done


def test_corrupt_checkpoints_are_refused_naming_the_file(checkpointed):
    info = ckpt_store.read_latest(str(checkpointed))
    block = checkpointed / info.name / "W" / "0" / "c" / "0" / "0"
    block.write_bytes(block.read_bytes()[:10])
    with pytest.raises(StoreError, match=f"{info.name}/W/0"):
        resume(checkpointed)
    (checkpointed / ckpt_store.POINTER).write_text("{not json")
    with pytest.raises(StoreError, match="LATEST.json is damaged"):
        resume(checkpointed)
    with pytest.raises(StoreError, match="No checkpoint at"):
        resume(checkpointed / "nowhere")


def test_resume_from_a_job_directory_names_its_checkpoints(tmp_path):
    """`dnmf fit --checkpoint DIR` keeps checkpoints in DIR/checkpoints: resume=DIR says so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dnmf.NMF(max_iter=3, checkpoint=str(tmp_path / "job" / "checkpoints"), checkpoint_every=3, **PARAMS).fit(data())
    with pytest.raises(StoreError, match="job directory .* resume from .*job/checkpoints, or run `dnmf resume"):
        resume(tmp_path / "job")


# ------------------------------------------------------------------ lineage


@pytest.mark.cluster
def test_graph_does_not_grow_over_many_iterations(dist_client):
    """Lineage cuts keep the scheduler's task count a sawtooth whose peaks do not rise.

    The cut period is set to 5 iterations (``dnmf.lineage.every``) so that 60 iterations show
    twelve periods (the default, 20, would need 240 iterations for the same evidence).
    """
    import dask

    every = 5
    client = dist_client  # the session's cluster: what other tests left there is released
    with dask.config.set({"dnmf.lineage.every": every}):
        counts = []

        def count(it, elapsed, loss):
            counts.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            dnmf.NMF(4, init="random", random_state=0, max_iter=60, tol=0, chunks=(50, 50), client=client).fit(
                sp.random(200, 100, density=0.2, random_state=0, format="csr"), callback=count
            )
    assert len(counts) == 60
    # The scheduler holds the live state plus at most `every` iterations of history: a sawtooth
    # whose peaks and troughs do not rise.
    assert max(counts[-2 * every :]) <= max(counts[: 2 * every])
    assert min(counts[-2 * every :]) <= min(counts[: 2 * every]) + 5
    assert max(counts) < 60 * every, counts[: every + 2]
