"""Warnings attributed to the user's line of code, however deep in dnmf they are raised.

A fixed ``stacklevel`` points into dnmf as soon as a call path changes (a fit through
``fit_transform``, ``select_rank`` or a job): the warning then names a dnmf file and
``python -W error`` filters by module stop matching. ``warn`` walks up the stack to the first
frame outside the dnmf package instead. Outside the layers: every layer may use it.
"""

from __future__ import annotations

import sys
import warnings

# Frames skipped on the way up: dnmf's own, and scikit-learn's wrapper of fit_transform/transform
# (set_output), which sits between the user's call and dnmf's estimator.
_SKIPPED = ("dnmf", "sklearn.utils._set_output")


def _skipped(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in _SKIPPED)


def stacklevel_outside_dnmf() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by our caller, name the first frame outside dnmf.

    Frames of scikit-learn's ``set_output`` wrapper are skipped as well.
    """
    level = 2  # 1 would be our caller, the function that calls warnings.warn
    frame = sys._getframe(2)
    while frame is not None and _skipped(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside the dnmf package."""
    warnings.warn(message, category, stacklevel=stacklevel_outside_dnmf())
