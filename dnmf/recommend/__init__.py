"""Recommendations from fitted factors: top-n kernels, ``Factors`` and its queries, splits and metrics.

The public names of :mod:`dnmf.recommend.factors` are also importable from here, as they were
when ``dnmf.recommend`` was a single module (``from dnmf.recommend import recommend_all``).
They load on first use, so that importing the kernels does not import Dask.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Factors",
    "UnknownIDError",
    "item_popularity",
    "popular_items",
    "popularity_baseline",
    "recommend",
    "recommend_all",
    "similar_items",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import factors

        return getattr(factors, name)
    raise AttributeError(f"module 'dnmf.recommend' has no attribute {name!r}")
