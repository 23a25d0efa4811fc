"""Helpers shared by the tests of dnmf.nmf."""

from __future__ import annotations

from dnmf.nmf.step import LoopConfig


def loop_config(**changes) -> LoopConfig:
    """A plain Frobenius "cd" loop (no regularization, tol 0, 3 iterations), with ``changes``."""
    base = dict(
        solver="cd",
        beta=2.0,
        tol=0.0,
        max_iter=3,
        max_time=None,
        l1_reg_W=0.0,
        l1_reg_H=0.0,
        l2_reg_W=0.0,
        l2_reg_H=0.0,
        update_H=True,
        sq_norm_x=1.0,
    )
    return LoopConfig(**{**base, **changes})
