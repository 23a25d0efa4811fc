"""Masked NMF of ratings (observed entries only) and implicit feedback: kernels, step graphs, ``RatingsNMF``.

Before the package was split into layers, ``dnmf.masked`` was the module of the kernels; its
names still resolve here (``from dnmf.masked import MaskedParams``), with a DeprecationWarning
that names :mod:`dnmf.masked.kernels`.
"""

from __future__ import annotations

import warnings
from typing import Any

#: The names of the old ``dnmf.masked`` module, now in ``dnmf.masked.kernels``.
_KERNEL_NAMES = frozenset(
    {
        "MaskedParams",
        "exact_sum",
        "exact_add",
        "exact_value",
        "observed",
        "row_band",
        "col_band",
        "block_summary",
        "combine_summaries",
        "update",
        "nnls_rows",
        "band_loss",
        "penalty",
        "gram",
        "predict",
    }
)


def __getattr__(name: str) -> Any:
    if name in _KERNEL_NAMES:
        warnings.warn(
            f"dnmf.masked.{name} moved to dnmf.masked.kernels.{name}; import it from there "
            "(the old path will be removed).",
            DeprecationWarning,
            stacklevel=2,
        )
        from . import kernels

        return getattr(kernels, name)
    raise AttributeError(f"module 'dnmf.masked' has no attribute {name!r}")
