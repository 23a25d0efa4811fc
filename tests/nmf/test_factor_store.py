"""Factors in a factor store (``NMF(factor_store=...)``): the same bits as in memory, and crash safety.

Real Zarr directories, a real LocalCluster with worker processes, real SIGKILLs
of a worker, of the driver, and of a process in the middle of writing W's blocks.
"""

import os
import signal
import subprocess
import sys
import textwrap
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.storage import checkpoints as ckpt_store
from dnmf.storage import factors
from tests.helpers import REPO_ROOT, cluster_losing_a_worker, kill_after_checkpoint

PARAMS = dict(n_components=5, solver="cd", init="nndsvdar", random_state=4, tol=0, chunks=(60, 50))


def data():
    return sp.random(300, 150, density=0.1, random_state=1, format="csr", dtype=np.float64)


def fit(max_iter=12, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(max_iter=max_iter, **{**PARAMS, **kw})
        W = m.fit_transform(data())
    return np.asarray(W), m


def reference(max_iter, **kw):
    return fit(max_iter, **kw)


def generations(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("g-"))


# ------------------------------------------------------------ same bits


@pytest.mark.parametrize("solver", ["cd", "mu", "anls-bpp"])
def test_store_backed_fit_equals_the_in_memory_fit_on_threads(tmp_path, solver):
    W_ref, ref = reference(12, solver=solver)
    W, m = fit(12, solver=solver, factor_store=str(tmp_path / "f"))
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)
    assert m.loss_history_.tolist() == ref.loss_history_.tolist()
    pointer = factors.read_pointer(str(tmp_path / "f"))
    assert pointer["current"] == 12
    # Only the committed generation is left: every earlier one was deleted once the next committed.
    assert generations(tmp_path / "f") == ["g-00000012"]


def test_a_dask_x_gets_w_back_as_a_lazy_read_of_the_store(tmp_path):
    X = da.from_array(data(), chunks=(60, 50))
    W_ref, ref = reference(8)
    m = dnmf.NMF(max_iter=8, **{**PARAMS, "chunks": "auto"}, factor_store=str(tmp_path / "f"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = m.fit_transform(X)
    assert isinstance(W, da.Array) and factors.generation_of(W) == (str(tmp_path / "f"), 8)
    np.testing.assert_array_equal(W.compute(), W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)


def test_checkpoints_refer_to_a_pinned_generation_and_resume_bit_identically(tmp_path):
    W_ref, ref = reference(12)
    store, ck = tmp_path / "f", tmp_path / "ck"
    fit(7, factor_store=str(store), checkpoint=str(ck), checkpoint_every=3, keep_checkpoints=2)
    info = ckpt_store.read_latest(str(ck))
    assert info.state["factor_store"]["generation"] == 7
    # A checkpoint holds no factor blocks: only its record (the factors stay in the store).
    assert sorted(p.name for p in (ck / info.name).iterdir()) == ["zarr.json"]
    # Checkpoints at 3, 6 and the end (7), two kept: generations 6 and 7 stay, 3 was deleted.
    assert generations(store) == ["g-00000006", "g-00000007"]
    assert factors.read_pointer(str(store))["pinned"] == [6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(max_iter=12, factor_store=str(store), **PARAMS)
        W = m.fit_transform(data(), resume=str(ck))
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)
    assert m.loss_history_.tolist() == ref.loss_history_.tolist()


# ------------------------------------------------------------ refusals


def test_bad_configurations_are_refused_in_one_line(tmp_path):
    with pytest.raises(
        ValueError, match=r"^factor_store needs beta_loss='frobenius'; got beta_loss='kullback-leibler'"
    ):
        dnmf.NMF(solver="mu", beta_loss="kullback-leibler", factor_store=str(tmp_path / "f")).fit(data())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"^factor_store=.*busy' already holds other files; pass a new"):
        dnmf.NMF(factor_store=str(tmp_path / "busy")).fit(data())
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^factor_store=.*file' is a file; pass a directory"):
        dnmf.NMF(factor_store=str(tmp_path / "file")).fit(data())
    with pytest.raises(ValueError, match="'factor_store' parameter of NMF must be"):
        dnmf.NMF(factor_store=3).fit(data())


def test_an_earlier_fits_store_is_never_written_over(tmp_path):
    fit(3, factor_store=str(tmp_path / "f"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").rglob("*")}
    with pytest.raises(ValueError, match="already holds the factors of another fit; pass a new .* or resume="):
        fit(3, factor_store=str(tmp_path / "f"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").rglob("*")} == before


def test_resume_with_another_factor_store_is_refused(tmp_path):
    fit(3, factor_store=str(tmp_path / "f"), checkpoint=str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="parameter 'factor_store' differs"):
        dnmf.NMF(max_iter=6, factor_store=str(tmp_path / "g"), **PARAMS).fit(data(), resume=str(tmp_path / "ck"))


# ------------------------------------------------------------ processes and kills


def test_on_worker_processes_the_bits_are_the_same(tmp_path, dist_client):
    W_ref, ref = reference(10)
    W, m = fit(10, client=dist_client, factor_store=str(tmp_path / "f"))
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)


@pytest.mark.cluster
@pytest.mark.slow
def test_after_a_killed_worker_the_bits_are_the_same(tmp_path):
    """Slow (a cluster of its own, whose worker it kills: 30-60 s on a loaded 2-core machine)."""
    W_ref, ref = reference(10)
    with cluster_losing_a_worker(at=4) as (client, on_iteration), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(
            max_iter=10,
            client=client,
            factor_store=str(tmp_path / "killed"),
            checkpoint=str(tmp_path / "ck"),
            checkpoint_every=3,
            **PARAMS,
        )
        W = m.fit_transform(data(), callback=on_iteration)
    assert m.n_iter_ == 10
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time, warnings
    sys.path.insert(0, {root!r})
    import dnmf
    from dnmf.storage import factors
    from tests.nmf.test_factor_store import PARAMS, data
    warnings.simplefilter("ignore")
    mode, store, ck = sys.argv[1:4]
    if mode == "crash-mid-write":
        # Die after two of the five blocks of W of generation 5 are written.
        real, calls = factors.write_block, []
        def write_block(root, generation, factor, index, block, storage_options=None):
            if generation == 5 and factor == "W":
                calls.append(index)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(root, generation, factor, index, block, storage_options)
        factors.write_block = write_block
    m = dnmf.NMF(max_iter=40, factor_store=store, checkpoint=ck, checkpoint_every=3, **PARAMS)
    m.fit(data(), callback=lambda it, el, loss: time.sleep(0.1 if mode == "slow" else 0))
    """
)


def run_script(tmp_path, mode):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(root=str(REPO_ROOT)))
    args = [sys.executable, str(script), mode, str(tmp_path / "f"), str(tmp_path / "ck")]
    return subprocess.Popen(args, env={**os.environ, "DASK_SCHEDULER": "sync"})


def resume(tmp_path, max_iter=40):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.NMF(max_iter=max_iter, factor_store=str(tmp_path / "f"), **PARAMS)
        return m.fit_transform(data(), resume=str(tmp_path / "ck")), m


@pytest.mark.subprocess
def test_killed_driver_resumes_bit_identical(tmp_path):
    proc = run_script(tmp_path, "slow")
    assert kill_after_checkpoint(proc, tmp_path / "ck") < 40
    W, m = resume(tmp_path)
    W_ref, ref = reference(40)
    assert m.n_iter_ == 40 and len(m.loss_history_) == 40
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)


@pytest.mark.subprocess
def test_a_crash_in_the_middle_of_writing_w_leaves_the_last_committed_iteration_readable(tmp_path):
    proc = run_script(tmp_path, "crash-mid-write")
    assert proc.wait(timeout=120) == -signal.SIGKILL
    store = str(tmp_path / "f")
    pointer = factors.read_pointer(store)
    assert pointer["current"] == 4
    # Generation 5 was being written: some of its blocks are there, not all.
    written = sorted(p.name for p in (tmp_path / "f" / "g-00000005" / "W").iterdir())
    assert 0 < len(written) < 5
    W, Ht, _ = factors.open_generation(store, 4, factors.Layout.from_json(pointer["layout"]))
    W_ref, ref = reference(4)
    np.testing.assert_array_equal(W.compute(), W_ref)
    np.testing.assert_array_equal(Ht.compute().T, ref.components_)
    # ...and the checkpoint of iteration 3 resumes to the uninterrupted fit's bits.
    W, m = resume(tmp_path, max_iter=8)
    W_ref, _ = reference(8)
    np.testing.assert_array_equal(W, W_ref)


def test_restarts_each_keep_their_factors_in_their_own_directory(tmp_path):
    W_ref, ref = reference(5, n_init=2)
    W, m = fit(5, n_init=2, factor_store=str(tmp_path / "f"))
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(m.components_, ref.components_)
    assert m.init_errors_.tolist() == ref.init_errors_.tolist()
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["init-0", "init-1"]
    assert all(factors.read_pointer(str(tmp_path / "f" / f"init-{i}"))["current"] == 5 for i in range(2))
