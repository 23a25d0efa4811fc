"""Plain NMF (missing means zero): per-block kernels, step graphs, initialisation, the estimator, rank selection.

kernels/nnls (pure NumPy/SciPy) -> graph, init, stats (Dask graphs) -> estimator, selection.
"""
