"""RatingsNMF with its users' factors in a factor store: the same bits as in memory, and crash safety.

The streamed item half-step against the one-pass kernel, then whole fits on
threads and on real worker processes, checkpoints that refer to generations,
a real SIGKILL of a worker and of the driver.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

import dnmf
from dnmf.masked import kernels as masked
from dnmf.storage import checkpoints as ckpt_store
from dnmf.storage import factors
from tests.helpers import REPO_ROOT, cluster_losing_a_worker, kill_after_checkpoint
from tests.masked.helpers import ratings

PARAMS = dict(n_components=4, random_state=3, tol=0, chunks=(70, 45))


def data():
    return ratings(300, 130, 0.08, seed=5)[0]


def fit(max_iter=6, feedback="explicit", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dnmf.RatingsNMF(max_iter=max_iter, feedback=feedback, **{**PARAMS, **kw}).fit(data())


def assert_same_fit(m, ref):
    np.testing.assert_array_equal(np.asarray(m.user_factors_), np.asarray(ref.user_factors_))
    np.testing.assert_array_equal(m.components_, ref.components_)
    if ref.user_bias_ is not None:
        np.testing.assert_array_equal(m.user_bias_, ref.user_bias_)
        np.testing.assert_array_equal(m.item_bias_, ref.item_bias_)
    assert m.loss_history_.tolist() == ref.loss_history_.tolist()


def generations(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("g-"))


# ------------------------------------------------------------ the streamed kernel

MODELS = {
    "explicit, biases": dict(feedback="explicit", biases=True, global_mean=3.1, count_scaled=True),
    "explicit": dict(feedback="explicit", biases=False, count_scaled=True),
    "implicit": dict(feedback="implicit", biases=False, confidence=2.0),
    "implicit, proportional": dict(feedback="implicit", biases=False, confidence=0.6, confidence_form="proportional"),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(sorted(MODELS)),
    cuts=st.lists(st.integers(1, 119), max_size=5, unique=True),
    table=st.booleans(),
    batch=st.sampled_from([None, 1_500, 20_000]),
    group=st.sampled_from([None, 1, 7, 29]),
    seed=st.integers(0, 2**16),
)
def test_streamed_item_update_equals_the_one_pass_update(monkeypatch, model, cuts, table, batch, group, seed):
    """Grams accumulated over the users' blocks, in any blocking, batching and grouping of the
    items, give the one-pass bits."""
    X = ratings(120, 30, 0.15, seed)[0]
    p = masked.MaskedParams(k=4, l2=0.05, l1=0.01, l2_bias=0.02, **MODELS[model])
    rng = np.random.default_rng(seed)
    U = np.abs(rng.standard_normal((120, p.q)))
    V = np.abs(rng.standard_normal((30, p.q)))
    G = U[:, : p.k].T @ U[:, : p.k] if p.feedback == "implicit" else None
    band = masked.col_band([X])
    offsets = np.array([0, *sorted(cuts), 120])
    with monkeypatch.context() as mp:
        if not table:
            mp.setattr(masked, "TABLE_BYTES", 0)
        if batch is not None:
            mp.setattr(masked, "BATCH_BYTES", batch)
        if group is not None:
            mp.setattr(masked, "GRAM_BYTES", group * 8 * p.q * p.q)
        ref, ref_loss = masked.update_with_loss(band, V, U, p, G)
        reads = []

        def read(i):
            reads.append(i)
            return U[offsets[i] : offsets[i + 1]]

        out, loss = masked.update_streamed(band, V, read, offsets, p, G)
    np.testing.assert_array_equal(out, ref)
    assert loss == ref_loss
    # Each block is read once per group of items whose Grams fit GRAM_BYTES, then once for the loss.
    groups = 1 if group is None else -(-30 // group)
    assert max(reads.count(i) for i in set(reads)) <= groups + 1
    assert sorted(set(reads)) == [i for i in range(len(offsets) - 1) if offsets[i + 1] > offsets[i]]


def test_streamed_update_refuses_what_it_cannot_do():
    X = ratings(20, 8, 0.3, 1)[0]
    band = masked.col_band([X])
    U, V = np.ones((20, 3)), np.ones((8, 3))
    p = masked.MaskedParams(k=3, solver="ccd")
    with pytest.raises(ValueError, match="needs solver='als'; got 'ccd'"):
        masked.update_streamed(band, V, lambda i: U, np.array([0, 20]), p)
    p = masked.MaskedParams(k=3)
    with pytest.raises(ValueError, match="cover 19 columns; the band has 20"):
        masked.update_streamed(band, V, lambda i: U, np.array([0, 19]), p)
    with pytest.raises(ValueError, match=r"Block 0 of the other side is \(20, 2\); expected \(20, 3\)"):
        masked.update_streamed(band, V, lambda i: U[:, :2], np.array([0, 20]), p)


# ------------------------------------------------------------ whole fits


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_store_backed_fit_equals_the_in_memory_fit_on_threads(tmp_path, feedback):
    ref = fit(6, feedback)
    m = fit(6, feedback, factor_store=str(tmp_path / "f"))
    assert_same_fit(m, ref)
    pointer = factors.read_pointer(str(tmp_path / "f"))
    assert pointer["current"] == 6
    assert pointer["layout"]["gram"] == (4 if feedback == "implicit" else 0)
    assert generations(tmp_path / "f") == ["g-00000006"]
    gram_dir = tmp_path / "f" / "g-00000006" / "HHt"
    assert gram_dir.exists() == (feedback == "implicit")


def test_a_dask_x_gets_the_user_factors_back_as_a_lazy_read_of_the_store(tmp_path):
    ref = fit(5)
    X = da.from_array(data(), chunks=(70, 45))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.RatingsNMF(max_iter=5, factor_store=str(tmp_path / "f"), **PARAMS).fit(X)
    assert isinstance(m.user_factors_, da.Array)
    np.testing.assert_array_equal(m.user_factors_.compute(), ref.user_factors_)
    np.testing.assert_array_equal(m.components_, ref.components_)
    assert m.loss_history_.tolist() == ref.loss_history_.tolist()
    # Scores come from the stored factors: the same recommendations as the in-memory model.
    np.testing.assert_array_equal(m.predict([0, 5, 299], [1, 2, 129]), ref.predict([0, 5, 299], [1, 2, 129]))


def test_checkpoints_refer_to_a_pinned_generation_and_resume_bit_identically(tmp_path):
    ref = fit(9, "implicit")
    store, ck = tmp_path / "f", tmp_path / "ck"
    fit(5, "implicit", factor_store=str(store), checkpoint=str(ck), checkpoint_every=2, keep_checkpoints=2)
    info = ckpt_store.read_latest(str(ck))
    assert info.state["factor_store"]["generation"] == 5
    assert sorted(p.name for p in (ck / info.name).iterdir()) == ["zarr.json"]
    assert generations(store) == ["g-00000004", "g-00000005"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.RatingsNMF(max_iter=9, feedback="implicit", factor_store=str(store), **PARAMS)
        m.fit(data(), resume=str(ck))
    assert_same_fit(m, ref)


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize("solver", ["ccd", "cg"])
def test_solvers_that_cannot_stream_are_refused_before_any_work(tmp_path, solver):
    with pytest.raises(ValueError, match=rf"^factor_store needs solver='als'; got solver='{solver}'"):
        dnmf.RatingsNMF(solver=solver, factor_store=str(tmp_path / "f")).fit(data())
    assert not (tmp_path / "f").exists()


def test_an_earlier_fits_store_is_never_written_over(tmp_path):
    fit(2, factor_store=str(tmp_path / "f"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").rglob("*")}
    with pytest.raises(ValueError, match="already holds the factors of another fit; pass a new .* or resume="):
        fit(2, factor_store=str(tmp_path / "f"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").rglob("*")} == before
    with pytest.raises(ValueError, match="'factor_store' parameter of RatingsNMF must be"):
        dnmf.RatingsNMF(factor_store=3).fit(data())


# ------------------------------------------------------------ processes and kills


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_on_worker_processes_the_bits_are_the_same(tmp_path, dist_client, feedback):
    ref = fit(5, feedback)
    m = fit(5, feedback, client=dist_client, factor_store=str(tmp_path / "f"))
    assert_same_fit(m, ref)


@pytest.mark.cluster
@pytest.mark.slow
def test_after_a_killed_worker_the_bits_are_the_same(tmp_path):
    """Slow (a cluster of its own, whose worker it kills: 30-60 s on a loaded 2-core machine)."""
    ref = fit(8)
    with cluster_losing_a_worker(at=3) as (client, on_iteration), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.RatingsNMF(
            max_iter=8,
            client=client,
            factor_store=str(tmp_path / "killed"),
            checkpoint=str(tmp_path / "ck"),
            checkpoint_every=2,
            **PARAMS,
        )
        m.fit(data(), callback=on_iteration)
    assert m.n_iter_ == 8
    assert_same_fit(m, ref)


SCRIPT = textwrap.dedent(
    """
    import sys, time, warnings
    sys.path.insert(0, {root!r})
    import dnmf
    from tests.masked.test_factor_store import PARAMS, data
    warnings.simplefilter("ignore")
    store, ck = sys.argv[1:3]
    m = dnmf.RatingsNMF(max_iter=30, factor_store=store, checkpoint=ck, checkpoint_every=3, **PARAMS)
    m.fit(data(), callback=lambda it, el, loss: time.sleep(0.1))
    """
)


@pytest.mark.subprocess
def test_killed_driver_resumes_bit_identical(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(root=str(REPO_ROOT)))
    args = [sys.executable, str(script), str(tmp_path / "f"), str(tmp_path / "ck")]
    proc = subprocess.Popen(args, env={**os.environ, "DASK_SCHEDULER": "sync"})
    assert kill_after_checkpoint(proc, tmp_path / "ck") < 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = dnmf.RatingsNMF(max_iter=30, factor_store=str(tmp_path / "f"), **PARAMS)
        m.fit(data(), resume=str(tmp_path / "ck"))
    assert m.n_iter_ == 30 and len(m.loss_history_) == 30
    assert_same_fit(m, fit(30))
