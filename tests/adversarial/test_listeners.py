"""Item 4: every server the embedded cluster starts listens on 127.0.0.1 only; the printed link is local."""

import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from .helpers import ratings_csv

pytestmark = [pytest.mark.adversarial, pytest.mark.subprocess]

LOCAL = {"127.0.0.1", "::1"}


def _listeners(pids):
    out = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.add((c.laddr.ip, c.laddr.port))
    return out


def _tree(pid):
    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _watch(cmd, tmp_path):
    """Run ``cmd``; sample its (and its children's) listening sockets until it exits."""
    exe = os.path.join(os.path.dirname(sys.executable), "dnmf")
    log = tmp_path / "out.txt"
    with open(log, "w") as fh:
        # In tmp_path: `dnmf demo` writes its report (dnmf-demo.html) to the working directory.
        proc = subprocess.Popen(
            [exe, *map(str, cmd)], stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=tmp_path
        )
        seen = set()
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= _listeners(_tree(proc.pid))
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, log.read_text(), seen


def test_demo_listens_only_on_localhost_and_prints_the_local_link(tmp_path):
    rc, out, seen = _watch(["demo", "--rows", 3000, "--cols", 300, "--max-iter", 3], tmp_path)
    assert rc == 0, out
    assert seen, "no listening socket was observed"
    assert {ip for ip, _ in seen} <= LOCAL, seen
    link = re.search(r"dashboard (\S+)", out).group(1)
    assert link.startswith("http://127.0.0.1:"), out


@pytest.mark.cluster
def test_fit_with_worker_processes_listens_only_on_localhost(tmp_path):
    ratings_csv(tmp_path / "r.csv", n_users=300, n_items=80, n=4000)
    rc, out, seen = _watch(
        ["fit", tmp_path / "r.csv", "-k", 3, "-o", tmp_path / "m", "--max-iter", 5, "--workers", 2], tmp_path
    )
    assert rc == 0, out
    assert seen and {ip for ip, _ in seen} <= LOCAL, seen


@pytest.mark.cluster
def test_host_option_moves_every_listener_and_the_link(tmp_path):
    # 127.0.0.2 is another loopback address on Linux: a host other than the default, reachable only here.
    ratings_csv(tmp_path / "r.csv", n_users=300, n_items=80, n=4000)
    cmd = ["fit", tmp_path / "r.csv", "-k", 3, "-o", tmp_path / "m", "--max-iter", 5, "--workers", 2]
    rc, out, seen = _watch([*cmd, "--host", "127.0.0.2"], tmp_path)
    assert rc == 0, out
    assert seen and {ip for ip, _ in seen} == {"127.0.0.2"}, seen
    assert "dashboard: http://127.0.0.2:" in out, out


def test_no_dashboard_option(tmp_path):
    ratings_csv(tmp_path / "r.csv", n_users=300, n_items=80, n=4000)
    cmd = ["fit", tmp_path / "r.csv", "-k", 3, "-o", tmp_path / "m", "--max-iter", 5, "--no-dashboard"]
    rc, out, _ = _watch(cmd, tmp_path)
    assert rc == 0 and "dashboard: none" in out, out
