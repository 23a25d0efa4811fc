"""Checkpoints and matrix stores on an S3-compatible server (moto, on 127.0.0.1) through s3:// URLs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import dnmf
from tests.helpers import free_port, planted

s3fs = pytest.importorskip("s3fs", reason="s3fs is needed for s3:// URLs (pip install -e '.[test]')")
pytest.importorskip("moto.server", reason="moto's server mode is needed (pip install -e '.[test]')")
pytest.importorskip("flask", reason="moto's server mode needs flask (pip install -e '.[test]')")

pytestmark = pytest.mark.subprocess  # every test uses the moto server process (s3)

BUCKET = "dnmf-test"


@pytest.fixture(scope="module")
def s3():
    """A real S3 API server process on 127.0.0.1 and the storage_options that reach it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start on port {port} (exit code {server.poll()})")
                time.sleep(0.05)
        # Credentials go in storage_options only (not the environment), so the test also shows
        # they reach the workers that read and write the blocks.
        options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        yield fs, options
    finally:
        server.terminate()
        server.wait(10)


PARAMS = dict(n_components=4, solver="cd", init="random", random_state=0, tol=0.0)


def test_checkpoint_and_resume_on_s3(s3, dist_client):
    fs, options = s3
    X = planted(m=200, n=80)
    url = f"s3://{BUCKET}/runs/job1"
    common = dict(PARAMS, client=dist_client, chunks=100, storage_options=options)

    full = dnmf.NMF(max_iter=6, **common).fit(X)

    # The "interrupted" run: stops at iteration 3, the last checkpoint is on S3.
    dnmf.NMF(max_iter=3, checkpoint=url, checkpoint_every=3, **common).fit(X)
    pointer = json.loads(fs.cat(f"{BUCKET}/runs/job1/LATEST.json"))
    assert pointer["iteration"] == 3
    assert fs.ls(f"{BUCKET}/runs/job1/{pointer['current']}/W")  # blocks written by the workers

    resumed = dnmf.NMF(max_iter=6, checkpoint=url, checkpoint_every=3, **common).fit(X, resume=url)
    assert resumed.n_iter_ == 6
    np.testing.assert_array_equal(resumed.components_, full.components_)
    np.testing.assert_array_equal(resumed.loss_history_, full.loss_history_)


def test_matrix_store_written_and_read_on_s3(s3, dist_client, tmp_path):
    fs, options = s3
    rng = np.random.default_rng(3)
    ratings = pd.DataFrame(
        {
            "user": rng.choice([f"u{i}" for i in range(50)], 400),
            "item": rng.integers(1000, 1040, 400),
            "rating": rng.integers(1, 6, 400) / 1.0,
        }
    )
    ratings = ratings.drop_duplicates(["user", "item"])
    csv = tmp_path / "ratings.csv"
    ratings.to_csv(csv, index=False)

    url = f"s3://{BUCKET}/stores/ratings.zarr"
    dnmf.ingest(str(csv), url, user_col="user", item_col="item", value_col="rating", storage_options=options)
    assert fs.exists(f"{BUCKET}/stores/ratings.zarr/zarr.json")
    local = dnmf.ingest(str(csv), tmp_path / "ratings.zarr", user_col="user", item_col="item", value_col="rating")

    store = dnmf.open_matrix(url, storage_options=options)
    assert store.shape == (ratings.user.nunique(), ratings.item.nunique())
    assert list(store.row_ids) == sorted(ratings.user.unique())
    dense = store.data.compute().toarray() if hasattr(store.data.compute(), "toarray") else store.data.compute()
    oracle = ratings.pivot(index="user", columns="item", values="rating").fillna(0.0).to_numpy()
    np.testing.assert_array_equal(dense, oracle)

    # A fit straight from the s3:// URL (its blocks read by the workers) equals the fit from disk.
    from_s3 = dnmf.NMF(max_iter=3, client=dist_client, storage_options=options, **PARAMS).fit(url)
    from_disk = dnmf.NMF(max_iter=3, client=dist_client, **PARAMS).fit(local.path)
    np.testing.assert_array_equal(from_s3.components_, from_disk.components_)
    assert list(from_s3.feature_ids_) == sorted(ratings.item.unique())

    # A matrix written from memory round-trips too.
    X = planted(m=90, n=40)
    dnmf.write_matrix(X, f"s3://{BUCKET}/stores/X.zarr", chunks=(30, 40), storage_options=options)
    back = dnmf.open_matrix(f"s3://{BUCKET}/stores/X.zarr", storage_options=options).data.compute()
    np.testing.assert_array_equal(back.toarray(), X.toarray())


def test_saving_a_model_to_s3_is_refused_with_the_fix(s3):
    _, options = s3
    model = dnmf.NMF(max_iter=2, **PARAMS).fit(planted(m=30, n=20))
    with pytest.raises(ValueError, match="local .*filesystem.*Save to a local path"):
        model.save(f"s3://{BUCKET}/models/m.zarr")
