"""Masked NMF of ratings (observed entries only) and implicit feedback: kernels, step graphs, ``RatingsNMF``."""
