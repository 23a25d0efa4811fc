"""Item 12: concurrent saves to one model path: every writer succeeds (the last rename wins) or
fails with a clear "another writer" error; the result is always one complete model."""

import multiprocessing as mp
import os

import numpy as np
import pytest

from dnmf.storage import models

pytestmark = pytest.mark.adversarial


def _save(path, seed, rounds, queue):
    errors = []
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        try:
            models.write_model(path, {"W": rng.random((200, 8)), "H": rng.random((8, 50))}, {"seed": seed})
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    queue.put(errors)


@pytest.mark.subprocess
def test_concurrent_saves_succeed_or_fail_clearly(tmp_path):
    path = str(tmp_path / "model")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_save, args=(path, s, 15, queue)) for s in range(4)]
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in queue.get(timeout=300)]
    for p in procs:
        p.join(60)
    for e in errors:
        assert "another writer" in e, errors
    info = models.read_model_info(path)
    assert set(info.arrays) == {"W", "H"} and info.attrs["seed"] in range(4)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".") and True]
