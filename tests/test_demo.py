"""The README's first command, `python -m dnmf`, run for real (small size)."""

import re
import subprocess
import sys


def test_python_m_dnmf_prints_losses_and_relative_error():
    out = subprocess.run(
        [sys.executable, "-m", "dnmf", "--rows", "3000", "--cols", "400", "--density", "0.02",
         "-k", "4", "--max-iter", "5", "--workers", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    losses = [float(v) for v in re.findall(r"iteration\s+\d+\s+loss\s+([0-9.e+-]+)", out)]
    assert len(losses) >= 2 and losses[-1] <= losses[0]
    rel = float(re.search(r"relative error ([0-9.]+)", out).group(1))
    assert 0 <= rel < 0.5, out
