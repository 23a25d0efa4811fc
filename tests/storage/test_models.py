"""Models on disk: round trips, clear errors, and atomic replacement under crashes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dnmf.storage import (
    DeferredArray,
    StoreError,
    read_model,
    read_model_info,
    write_model,
    write_model_block,
)
from tests.helpers import REPO_ROOT

REPO = str(REPO_ROOT)


def snapshot(root) -> dict[str, tuple[int, str]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def _model(version: int):
    rng = np.random.default_rng(version)
    return {"W": rng.random((50, 4)), "H": rng.random((4, 30)).astype("float32")}


def _check(path, version):
    arrays, attrs = read_model(path)
    expected = _model(version)
    assert attrs["version_tag"] == version
    for k, v in expected.items():
        np.testing.assert_array_equal(arrays[k], v)
        assert arrays[k].dtype == v.dtype


def _leftovers(tmp_path):
    return sorted(p for p in os.listdir(tmp_path) if p.startswith("."))


def test_round_trip_and_attrs(tmp_path):
    path = tmp_path / "model"
    attrs = {
        "version_tag": 1,
        "n_iter": np.int64(7),
        "loss": [np.float32(1.5), 0.25],
        "params": {"solver": "cd", "alpha": None},
    }
    write_model(path, _model(1), attrs, chunks={"W": (16, 4)})
    arrays, back = read_model(path)
    assert back == {
        "version_tag": 1,
        "n_iter": 7,
        "loss": [1.5, 0.25],
        "params": {"solver": "cd", "alpha": None},
    }
    assert read_model_info(path).arrays["W"]["chunks"] == (16, 4)
    only, _ = read_model(path, names=["H"])
    assert list(only) == ["H"]
    # No pickle anywhere: all metadata is JSON.
    with open(path / "zarr.json") as f:
        assert json.load(f)["attributes"]["dnmf_format"] == "dnmf-model"


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match=r"attrs\['f'\] is a builtin"):
        write_model(tmp_path / "m", {"W": np.ones(2)}, {"f": print})
    with pytest.raises(ValueError, match="identifiers"):
        write_model(tmp_path / "m", {"W/x": np.ones(2)})
    with pytest.raises(ValueError, match="local"):
        write_model("s3://bucket/model", {"W": np.ones(2)})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="never deletes foreign data"):
        write_model(tmp_path / "docs", {"W": np.ones(2)})
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "model"
    write_model(path, _model(1), {"version_tag": 1})
    write_model(path, _model(2), {"version_tag": 2})
    _check(path, 2)
    assert _leftovers(tmp_path) == []


def test_deferred_array_written_block_by_block(tmp_path):
    W = np.arange(70.0).reshape(35, 2)

    def fill(location):
        for b in range(4):  # blocks of 10 rows, the last one ragged
            write_model_block(location, (b, 0), W[10 * b : 10 * (b + 1)])

    write_model(tmp_path / "m", {"W": DeferredArray((35, 2), "float64", (10, 2), fill)})
    np.testing.assert_array_equal(read_model(tmp_path / "m")[0]["W"], W)


def test_failure_before_swap_keeps_old_model(tmp_path):
    path = tmp_path / "model"
    write_model(path, _model(1), {"version_tag": 1})
    before = snapshot(path)

    def fill(location):
        write_model_block(location, (0, 0), np.ones((10, 2)))
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        write_model(path, {"W": DeferredArray((20, 2), "float64", (10, 2), fill)}, {"version_tag": 2})
    _check(path, 1)
    assert snapshot(path) == before and _leftovers(tmp_path) == []

    def partial(location):  # forgets a block: refused, old model kept
        write_model_block(location, (0, 0), np.ones((10, 2)))

    with pytest.raises(RuntimeError, match=r"1 block\(s\) were not written"):
        write_model(path, {"W": DeferredArray((20, 2), "float64", (10, 2), partial)})
    _check(path, 1)


def _run_writer(path, version, crash_code):
    """Save model ``version`` at ``path`` in a subprocess that runs ``crash_code`` first."""
    code = textwrap.dedent(f"""
        import os, shutil, sys, time
        import numpy as np
        sys.path.insert(0, {REPO!r})
        from dnmf.storage import models
        {crash_code}
        rng = np.random.default_rng({version})
        model = {{"W": rng.random((50, 4)), "H": rng.random((4, 30)).astype("float32")}}
        models.write_model({str(path)!r}, model, {{"version_tag": {version}}})
    """)
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.subprocess
def test_sigkill_while_writing_keeps_old_model(tmp_path):
    path = tmp_path / "model"
    write_model(path, _model(1), {"version_tag": 1})
    ready = tmp_path / "ready"
    # The writer announces it is mid-write (new data in the temporary
    # directory, no swap yet), then waits to be killed.
    crash = textwrap.dedent(f"""
        real = models._fsync_tree
        def slow(root):
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        models._fsync_tree = slow
    """).replace("\n", "\n        ")
    proc = _run_writer(path, 2, crash)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _check(path, 1)
    assert any(".dnmf-tmp-" in p for p in _leftovers(tmp_path))  # debris only
    write_model(path, _model(3), {"version_tag": 3})  # the next save cleans up
    _check(path, 3)
    assert _leftovers(tmp_path) == []


@pytest.mark.subprocess
@pytest.mark.parametrize("moment", ["between_renames", "before_cleanup"])
def test_crash_during_swap(tmp_path, moment):
    path = tmp_path / "model"
    write_model(path, _model(1), {"version_tag": 1})
    # Die right after the old model is moved aside (first rename), or after
    # the new one is in place but before the old one is deleted (second).
    renames = 1 if moment == "between_renames" else 2
    crash = textwrap.dedent(f"""
        real, done = os.rename, []
        def rename(a, b):
            real(a, b)
            done.append(b)
            if len(done) == {renames}:
                os._exit(9)
        os.rename = rename
    """).replace("\n", "\n        ")
    proc = _run_writer(path, 2, crash)
    assert proc.wait() == 9
    expected = 1 if moment == "between_renames" else 2
    before = snapshot(tmp_path)
    _check(path, expected)  # readers find the committed model...
    assert snapshot(tmp_path) == before  # ...without touching anything
    write_model(path, _model(3), {"version_tag": 3})
    _check(path, 3)
    assert _leftovers(tmp_path) == []


def test_foreign_and_corrupt_models(tmp_path):
    with pytest.raises(StoreError, match="nothing exists"):
        read_model(tmp_path / "none")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a Zarr store"):
        read_model(tmp_path / "plain")
    import zarr

    zarr.open_group(tmp_path / "group", mode="w")
    with pytest.raises(StoreError, match="not a dnmf model"):
        read_model(tmp_path / "group")
    import scipy.sparse as sp

    from dnmf.storage import arrays as io

    io.write_matrix(sp.eye(3, format="csr"), tmp_path / "matrix.zarr")
    with pytest.raises(StoreError, match="names another layout"):
        read_model(tmp_path / "matrix.zarr")

    path = tmp_path / "model"
    write_model(path, _model(1), {"version_tag": 1})
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["version"] = 7
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="model version 7 is not supported"):
        read_model(path)
    meta["attributes"]["version"] = 1
    (path / "zarr.json").write_text(json.dumps(meta))
    os.remove(path / "W" / "c" / "0" / "0")
    with pytest.raises(StoreError, match=r"model.W.*block \(0, 0\) is missing"):
        read_model(path)
    chunk = path / "H" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(StoreError, match=r"H.*cannot be decoded"):
        read_model(path, names=["H"])
