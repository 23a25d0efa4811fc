"""Helpers for the deploy/ tests: real `dask scheduler` / `dask worker` processes via deploy/local."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

DASK_LOCAL = REPO_ROOT / "deploy" / "local" / "dask-local"
MAKE_CERTS = REPO_ROOT / "deploy" / "tls" / "make-certs"


def dask_local(state_dir: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run deploy/local/dask-local with this interpreter (the test's environment)."""
    proc = subprocess.run(
        [sys.executable, str(DASK_LOCAL), "--dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dask-local {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_cluster(state_dir: Path, n_workers: int, *extra: str) -> str:
    """Start a scheduler and ``n_workers`` workers on free ports; returns the scheduler address."""
    out = dask_local(state_dir, "start", str(n_workers), "--port", "0", "--dashboard-port", "-1", *extra)
    return out.stdout.strip().splitlines()[-1]


def recorded_pids(state_dir: Path) -> list[int]:
    import json

    state = json.loads((state_dir / "cluster.json").read_text())
    return [state["scheduler"]["pid"], *(w["pid"] for w in state["workers"])]


def group_pids(leaders: list[int]) -> set[int]:
    """Every live, non-zombie process whose process group is one of ``leaders``."""
    import psutil

    out = set()
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) in leaders and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.add(proc.pid)
        except OSError:
            continue
    return out


def dnmf_executable() -> str | None:
    """The installed `dnmf` console script next to this interpreter, if its CLI works."""
    exe = Path(sys.executable).with_name("dnmf")
    path = str(exe) if exe.exists() else shutil.which("dnmf")
    if path is None:
        return None
    try:
        ok = subprocess.run([path, "fit", "--help"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if ok else None


def transitions(address: str, security=None) -> int:
    """How many task transitions the scheduler at ``address`` has made (grows when work runs there)."""
    from distributed import Client

    with Client(address, security=security, timeout=10, set_as_default=False) as client:
        # A lambda is pickled by value: the scheduler cannot import this test helper module.
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter))
