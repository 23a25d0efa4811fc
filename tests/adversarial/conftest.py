"""The adversarial suite: data loss, leaked tracebacks, listeners, hostile inputs.

Run it alone with ``pytest -m adversarial tests/adversarial``.
"""

import os
import sys

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "adversarial: hardening tests (data loss, exit codes, tracebacks, network exposure, fuzzing)"
    )


@pytest.fixture
def dnmf_cmd():
    """The ``dnmf`` executable (the one of this interpreter's environment)."""
    exe = os.path.join(os.path.dirname(sys.executable), "dnmf")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "dnmf"]
