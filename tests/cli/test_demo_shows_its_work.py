"""`dnmf demo` writes its HTML report, and in a terminal keeps the dashboard up until Enter."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.subprocess  # the demo's embedded cluster is a worker of threads in that process

BIN = os.path.join(os.path.dirname(sys.executable), "dnmf")
SMALL = ["demo", "--rows", "600", "--cols", "200", "--density", "0.05", "-k", "3", "--max-iter", "3"]


def test_piped_demo_writes_the_report_and_returns(tmp_path):
    report = tmp_path / "demo.html"
    out = subprocess.run(
        [BIN, *SMALL, "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    assert f"report: {report}" in out and "press Enter" not in out
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "dnmf demo" in html


def _read_until(fd: int, proc: subprocess.Popen, marker: str, timeout: float) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    return seen.decode(errors="replace")


def test_in_a_terminal_the_dashboard_stays_up_until_enter(tmp_path):
    report = tmp_path / "demo.html"
    main, child = os.openpty()
    proc = subprocess.Popen([BIN, *SMALL, "--report", str(report)], stdin=child, stdout=child, stderr=child)
    os.close(child)
    try:
        screen = _read_until(main, proc, "press Enter", 300)
        assert "press Enter to stop" in screen, screen
        assert "http://127.0.0.1:" in screen
        time.sleep(1.0)
        assert proc.poll() is None, "the demo did not wait for Enter"
        assert report.exists()
        os.write(main, b"\n")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
