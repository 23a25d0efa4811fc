"""Benchmarks for dnmf (scripts; run them as ``python benchmarks/<name>.py``)."""
