"""The `dnmf` executable, run for real in subprocesses."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.cli.helpers import BIN, dnmf, write_ratings
from tests.helpers import free_port

pytestmark = pytest.mark.subprocess

SUBCOMMANDS = [
    "ingest",
    "fit",
    "submit",
    "status",
    "cancel",
    "resume",
    "info",
    "transform",
    "export",
    "select-rank",
    "demo",
]


def test_help_of_every_subcommand():
    top = dnmf("--help").stdout
    for name in SUBCOMMANDS:
        assert name in top
        out = dnmf(name, "--help").stdout
        assert out.startswith(f"Usage: dnmf {name}"), out
        assert "--help" in out


def test_ingest_fit_info_export_flow(tmp_path):
    df = write_ratings(tmp_path / "ratings.csv")
    store = tmp_path / "ratings.zarr"
    out = dnmf("ingest", tmp_path / "ratings.csv", "-o", store, "--json")
    meta = json.loads(out.stdout)
    pairs = df.groupby(["user", "item"]).size()
    assert meta["shape"] == [df.user.nunique(), df.item.nunique()]
    assert meta["nnz"] == len(pairs)

    model = tmp_path / "model"
    # piped: no progress bar, the result on stdout, progress lines on stderr
    fit = dnmf("fit", store, "-k", 3, "-o", model, "--max-iter", 15, "--tol", 0, "--seed", 1)
    assert "model saved to" in fit.stdout and "15 iterations" in fit.stdout
    assert "\r" not in fit.stderr and "it/s" not in fit.stderr
    assert "iteration 1/15" in fit.stderr and "dashboard" in fit.stderr

    info = json.loads(dnmf("info", model, "--json").stdout)
    assert info["kind"] == "model" and info["n_components"] == 3 and info["n_iter"] == 15
    assert len(info["loss_history"]) == 15
    assert info["loss_history"][-1] <= info["loss_history"][0]
    minfo = json.loads(dnmf("info", store, "--json").stdout)
    assert minfo["kind"] == "matrix" and minfo["nnz"] == meta["nnz"]
    assert "matrix store" in dnmf("info", store).stdout

    dnmf("export", model, "--format", "csv", "-o", tmp_path / "csv")
    dnmf("export", model, "--format", "npy", "-o", tmp_path / "npy")
    W = pd.read_csv(tmp_path / "csv" / "W.csv")
    H = pd.read_csv(tmp_path / "csv" / "H.csv")
    assert list(W.columns) == ["id", "c0", "c1", "c2"]
    assert sorted(W["id"]) == sorted(df.user.unique()) and sorted(H["id"]) == sorted(df.item.unique())
    Wn, Hn = np.load(tmp_path / "npy" / "W.npy"), np.load(tmp_path / "npy" / "H.npy")
    np.testing.assert_allclose(W[["c0", "c1", "c2"]].to_numpy(), Wn, rtol=1e-6)
    np.testing.assert_allclose(H[["c0", "c1", "c2"]].to_numpy(), Hn.T, rtol=1e-6)
    # the exported factors reproduce the data the model was fitted to, as well as the fit says
    X = np.zeros((len(W), len(H)))
    row = {u: i for i, u in enumerate(W["id"])}
    col = {c: j for j, c in enumerate(H["id"])}
    for (u, it), v in df.groupby(["user", "item"]).rating.sum().items():
        X[row[u], col[it]] = v
    err = np.linalg.norm(X - Wn @ Hn)
    assert err == pytest.approx(info["reconstruction_err"], rel=1e-4)

    # transform: W for "new" rows given as a ratings file; unknown items are dropped
    new = df[df.user.isin(["u1", "u2"])].copy()
    new.loc[new.index[0], "item"] = 99999
    new.to_csv(tmp_path / "new.csv", index=False)
    tr = dnmf("transform", model, tmp_path / "new.csv", "-o", tmp_path / "Wnew.parquet")
    assert "dropped 1 entries" in tr.stderr
    Wnew = pd.read_parquet(tmp_path / "Wnew.parquet")
    assert sorted(Wnew["id"]) == ["u1", "u2"] and (Wnew[["c0", "c1", "c2"]].to_numpy() >= 0).all()


def test_config_file_and_log_json(tmp_path):
    write_ratings(tmp_path / "r.csv", n=1500)
    (tmp_path / "fit.toml").write_text('k = 2\nmax-iter = 50\nsolver = "mu"\ntol = 0.0\n')
    out = dnmf(
        "fit",
        tmp_path / "r.csv",
        "-o",
        tmp_path / "m",
        "--config",
        tmp_path / "fit.toml",
        "--max-iter",
        4,
        "--log-json",
        "--report",
        tmp_path / "report.html",
    )
    records = [json.loads(line) for line in out.stdout.splitlines()]
    its = [r for r in records if r["event"] == "iteration"]
    # the command line (4) overrides the file (50); the file's k and solver hold
    assert [r["iteration"] for r in its] == [1, 2, 3, 4]
    assert records[-1]["event"] == "finished" and records[-1]["n_iter"] == 4
    info = json.loads(dnmf("info", tmp_path / "m", "--json").stdout)
    assert info["n_components"] == 2 and info["params"]["solver"] == "mu"
    html = (tmp_path / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in html
    assert "kullback" not in html and "mu" in html and "open input" in html and "embedded" in html
    (tmp_path / "bad.yaml").write_text("max_iter: 5\nmax_itter: 3\n")
    bad = dnmf(
        "fit", tmp_path / "r.csv", "-k", 2, "-o", tmp_path / "m2", "--config", tmp_path / "bad.yaml", check=False
    )
    assert bad.returncode == 2 and "max_itter" in bad.stderr


def _one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    write_ratings(tmp_path / "neg.csv", n=500, negative=True)
    bad_option = dnmf("fit", "x.zarr", "-k", 2, "-o", "m", "--max-iter", "-3", check=False)
    assert bad_option.returncode == 2 and "--max-iter" in _one_error_line(bad_option)
    unknown = dnmf("fit", "--no-such-option", check=False)
    assert unknown.returncode == 2 and "no-such-option" in _one_error_line(unknown)
    missing = dnmf("fit", tmp_path / "nope.csv", "-k", 2, "-o", tmp_path / "m", check=False)
    assert missing.returncode == 2 and "does not exist" in _one_error_line(missing)
    negative = dnmf("fit", tmp_path / "neg.csv", "-k", 2, "-o", tmp_path / "m", check=False)
    line = _one_error_line(negative)
    assert negative.returncode == 2 and "negative" in line.lower(), negative.stderr
    assert not (tmp_path / "m").exists()
    unreachable = dnmf(
        "fit",
        tmp_path / "neg.csv",
        "-k",
        2,
        "-o",
        tmp_path / "m",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--connect-timeout",
        1,
        check=False,
    )
    line = _one_error_line(unreachable)
    assert unreachable.returncode == 2 and "127.0.0.1:9" in line, unreachable.stderr
    no_job = dnmf("status", tmp_path / "nothing-here", check=False)
    assert no_job.returncode == 2 and "Unknown job" in _one_error_line(no_job)


def test_progress_bar_only_in_a_terminal(tmp_path):
    write_ratings(tmp_path / "r.csv", n=1500)
    dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr")
    args = [BIN, "fit", str(tmp_path / "r.zarr"), "-k", "2", "-o", str(tmp_path / "m"), "--max-iter", "8", "--tol", "0"]
    main, child = os.openpty()
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    # tqdm redraws one line with carriage returns: "fit: 100%|██████| 8/8 [..., loss ..., change ...]"
    assert "\r" in screen and re.search(r"fit:\s+100%\|", screen), screen
    assert "8/8" in screen and "loss" in screen
    # piped (the same command with pipes): no bar
    piped = dnmf(*args[1:3], "-k", "2", "-o", tmp_path / "m2", "--max-iter", "8", "--tol", "0")
    assert "%|" not in piped.stderr and "\r" not in piped.stderr


# ----------------------------------------------------------------- submit / status / cancel / resume


@pytest.fixture
def real_cluster(tmp_path):
    """`dask scheduler` and one `dask worker` (2 threads) as separate processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "s.log", "w") as s_log, open(logs / "w.log", "w") as w_log:
        sched = subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=s_log,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [dask, "worker", address, "--nthreads", "2", "--nworkers", "1", "--no-dashboard", "--memory-limit", "2GiB"],
            stdout=w_log,
            stderr=subprocess.STDOUT,
        )
    try:
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_state(job_dir, states, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = json.loads(dnmf("status", job_dir, "--json").stdout)
        if st["state"] in states:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job {job_dir} not in {states} after {timeout} s: {st}")


@pytest.mark.cluster
def test_submit_status_cancel_resume_on_a_real_cluster(tmp_path, real_cluster):
    from dnmf import load

    env = dict(os.environ, DNMF_HOME=str(tmp_path / "home"))
    write_ratings(tmp_path / "r.csv", n_users=800, n_items=100, n=12000)
    dnmf("ingest", tmp_path / "r.csv", "-o", tmp_path / "r.zarr")

    # 1. a job that finishes after the submitting process has exited
    sub = dnmf(
        "submit",
        tmp_path / "r.zarr",
        "-k",
        3,
        "-o",
        tmp_path / "m1",
        "--max-iter",
        20,
        "--tol",
        0,
        "--scheduler",
        real_cluster,
        env=env,
    )
    job_id = re.search(r"submitted job (\S+)", sub.stdout).group(1)
    job_dir = str(tmp_path / "m1.job")
    assert job_dir in sub.stdout
    st = _wait_state(job_dir, {"finished", "failed"})
    assert st["state"] == "finished", st
    assert st["iteration"] == 20 and st["loss"] > 0
    # the id works too, on the machine that submitted it
    text = dnmf("status", job_id, env=env).stdout
    assert f"job {job_id}: finished, iteration 20/20" in text
    model = load(tmp_path / "m1")
    assert model.n_iter_ == 20 and model.loss_history_[-1] == pytest.approx(st["loss"])

    # 2. cancel a second job, then resume it to the end
    dnmf(
        "submit",
        tmp_path / "r.zarr",
        "-k",
        3,
        "-o",
        tmp_path / "m2",
        "--max-iter",
        400,
        "--tol",
        0,
        "--checkpoint-every",
        5,
        "--scheduler",
        real_cluster,
        env=env,
    )
    job2 = str(tmp_path / "m2.job")
    deadline = time.monotonic() + 120
    while json.loads(dnmf("status", job2, "--json").stdout)["iteration"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    out = dnmf("cancel", job2, "--timeout", 120)
    assert "cancelled" in out.stdout, out.stdout
    st = json.loads(dnmf("status", job2, "--json").stdout)
    assert st["state"] == "cancelled" and 3 <= st["iteration"] < 400
    assert not (tmp_path / "m2").exists()
    # The job stops after the iteration it is in when the request arrives (a checkpoint
    # is written there): on a slow machine that can be well past iteration 3.
    done = st["iteration"]
    # a limit below what the checkpoint holds would "finish" without the iterations asked for
    bad = dnmf("resume", job2, "--scheduler", real_cluster, "--max-iter", done - 1, check=False)
    assert bad.returncode == 2 and "--max-iter" in bad.stderr and f"at ({done})" in bad.stderr, bad.stderr
    assert json.loads(dnmf("status", job2, "--json").stdout)["state"] == "cancelled"
    target = done + 10
    res = dnmf("resume", job2, "--scheduler", real_cluster, "--max-iter", target)
    assert "model saved to" in res.stdout
    assert json.loads(dnmf("status", job2, "--json").stdout)["state"] == "finished"
    m2 = load(tmp_path / "m2")
    assert m2.n_iter_ == target and len(m2.loss_history_) == target

    # the resumed job ends with the factors of an uninterrupted run
    ref = dnmf(
        "fit",
        tmp_path / "r.zarr",
        "-k",
        3,
        "-o",
        tmp_path / "ref",
        "--max-iter",
        target,
        "--tol",
        0,
        "--checkpoint-every",
        5,
        "--scheduler",
        real_cluster,
    )
    assert "model saved" in ref.stdout
    np.testing.assert_array_equal(load(tmp_path / "ref").components_, m2.components_)


def test_select_rank_finds_a_planted_rank(tmp_path):
    import scipy.sparse as sp

    from dnmf.cli.demo import planted_sparse

    sp.save_npz(tmp_path / "x.npz", planted_sparse(1500, 150, 0.08, 4, seed=3))
    out = dnmf("select-rank", tmp_path / "x.npz", "--ks", "2:6:2", "--repeats", 1, "--max-iter", 50, "--json")
    result = json.loads(out.stdout)
    assert [r["k"] for r in result["scores"]] == [2, 4, 6]
    assert result["chosen_k"] == 4, result


def test_select_rank_early_stopping_option(tmp_path):
    """--early-stopping reaches select_rank: 'none' scores the last iterates as before; a bad value is one line, exit 2."""
    import scipy.sparse as sp

    from dnmf.cli.demo import planted_sparse
    from dnmf.nmf.selection import select_rank

    X = planted_sparse(300, 60, 0.1, 3, seed=1)
    sp.save_npz(tmp_path / "x.npz", X)
    args = ("select-rank", tmp_path / "x.npz", "--ks", "2,3", "--repeats", 1, "--max-iter", 20, "--json")
    out = json.loads(dnmf(*args, "--early-stopping", "none").stdout)
    expected = select_rank(X, [2, 3], n_repeats=1, max_iter=20, random_state=0, early_stopping=None)
    assert [r["mean"] for r in out["scores"]] == pytest.approx(list(expected.mean), rel=1e-9)
    bad = dnmf(*args, "--early-stopping", "2", check=False)
    assert bad.returncode == 2 and "--early-stopping" in bad.stderr and "[0, 1)" in bad.stderr
