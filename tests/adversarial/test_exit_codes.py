"""Item 7: input/environment errors exit 2 with one line in CLI words; no tracebacks or Dask noise
without --verbose; Ctrl-C is one line and exit 130."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dnmf.storage import arrays as io

from .helpers import dnmf_run, invoke, one_error_line, ratings_csv

pytestmark = pytest.mark.adversarial


@pytest.fixture
def store(tmp_path):
    ratings_csv(tmp_path / "r.csv")
    io.ingest(tmp_path / "r.csv", tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


def test_ingest_onto_existing_store_names_the_option(store, tmp_path):
    res = invoke("ingest", tmp_path / "r.csv", "-o", store)
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert "--overwrite" in line and "overwrite=True" not in line and str(store) in line


def test_directory_as_input_file(tmp_path):
    (tmp_path / "adir").mkdir()
    res = invoke("ingest", tmp_path / "adir", "-o", tmp_path / "x.zarr")
    assert res.exit_code == 2 and "adir" in one_error_line(res.stderr)
    res = invoke("fit", tmp_path / "adir", "-k", 2, "-o", tmp_path / "m", "--max-iter", 2, "-q")
    assert res.exit_code == 2 and "adir" in one_error_line(res.stderr)


def test_ingest_a_store_says_it_is_a_store(store, tmp_path):
    res = invoke("ingest", store, "-o", tmp_path / "x.zarr")
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert "already a Zarr store" in line and ".parquet" not in line


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "workers",
    [pytest.param([], id="threads"), pytest.param(["--workers", "2"], id="processes", marks=pytest.mark.cluster)],
)
def test_deleted_block_group_exit_2_one_line_no_worker_traceback(store, tmp_path, workers):
    shutil.rmtree(store / "blocks" / "0_0")
    proc = dnmf_run("fit", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 2, "-q", *workers)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "damaged" in line and "dnmf.io" not in line and "Compute Failed" not in proc.stderr
    assert not (tmp_path / "m").exists()
    verbose = dnmf_run("fit", store, "-k", 2, "-o", tmp_path / "m", "--max-iter", 2, "--verbose", *workers)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


@pytest.mark.subprocess
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    ratings_csv(tmp_path / "big.csv", n_users=3000, n_items=500, n=60000)
    exe = os.path.join(os.path.dirname(sys.executable), "dnmf")
    proc = subprocess.Popen(
        [exe, "fit", str(tmp_path / "big.csv"), "-k", "8", "-o", str(tmp_path / "m"), "--max-iter", "100000"]
        + ["--tol", "0", "--log-json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the iterations to run
        line = proc.stdout.readline()
        if '"iteration": 3' in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert "Task exception was never retrieved" not in err and "Traceback" not in err, err
