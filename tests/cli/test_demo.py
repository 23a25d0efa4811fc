"""The README's first command, `dnmf demo`, run for real (small size)."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

BIN = os.path.join(os.path.dirname(sys.executable), "dnmf")


def test_dnmf_demo_prints_losses_and_relative_error(tmp_path):
    # In tmp_path: the demo writes its report (dnmf-demo.html) to the working directory.
    out = subprocess.run(
        [BIN, "demo", "--rows", "3000", "--cols", "400", "--density", "0.02", "-k", "4", "--max-iter", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert "dashboard" in out
    losses = [float(v) for v in re.findall(r"iteration\s+\d+\s+loss\s+([0-9.e+-]+)", out)]
    assert len(losses) == 5 and losses[-1] <= losses[0]
    rel = float(re.search(r"relative error ([0-9.]+)", out).group(1))
    assert 0 <= rel < 0.5, out


def test_python_m_dnmf_is_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "dnmf", "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Usage: dnmf" in out or "Usage: python -m dnmf" in out
    assert "fit" in out and "submit" in out
