"""Recommendations from fitted factors: top-n kernels, ``Factors`` and its queries, splits and metrics."""
