"""Shared helpers of the adversarial suite."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd


def tree_hashes(root) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def ratings_csv(path, n_users=12, n_items=9, n=80, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "user": rng.integers(0, n_users, n),
            "item": rng.integers(0, n_items, n) + 100,
            "rating": rng.integers(1, 6, n).astype(float),
        }
    ).drop_duplicates(["user", "item"])
    df.to_csv(path, index=False)
    return df


def dnmf_run(*args, timeout=240, env=None):
    """Run the ``dnmf`` executable of this environment."""
    exe = os.path.join(os.path.dirname(sys.executable), "dnmf")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "dnmf"]
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy()
    )


def invoke(*args):
    """Run the click command in-process; returns click's Result (stdout/stderr separate)."""
    from click.testing import CliRunner

    from dnmf.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]
