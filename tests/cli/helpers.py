"""Helpers of the command-line tests: the real ``dnmf`` executable, and ratings files to feed it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd

#: The ``dnmf`` console script of this interpreter's environment.
BIN = os.path.join(os.path.dirname(sys.executable), "dnmf")


def dnmf(*args, check=True, timeout=300, env=None, **kw):
    """Run ``dnmf ARGS`` in a subprocess; unless ``check=False``, a non-zero exit fails with its output."""
    proc = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"dnmf {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_ratings(path, n_users=300, n_items=60, n=4000, seed=0, negative=False):
    """A ratings CSV (user, item, rating) at ``path``; ``negative`` puts one rating of -2 in it."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, n_users, n)],
            "item": rng.integers(1000, 1000 + n_items, n),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    if negative:
        df.loc[7, "rating"] = -2.0
    df.to_csv(path, index=False)
    return df
