"""A self-contained demonstration: ``python -m dnmf``.

Generates a sparse non-negative matrix with a planted rank-k structure and
power-law row/column popularity, starts an embedded local Dask cluster,
factorizes it and prints the loss of every iteration and the final relative
error ``||X - W H||_F / ||X||_F``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

from .estimator import NMF


def planted_sparse(m: int, n: int, density: float, k: int, seed: int = 0) -> sp.csr_matrix:
    """Sparse X ≈ W H of rank k plus 5% noise: each row mixes two of k
    "topics", each topic covers a Zipf-popular set of about density*n/2
    columns (like ratings or word counts)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(m), 2)
    # two distinct topics per row (k >= 2); with k == 1 both entries add up
    first = rng.integers(0, k, size=m)
    second = (first + rng.integers(1, max(k, 2), size=m)) % k
    comps = np.stack([first, second], axis=1).ravel()
    W = sp.csr_matrix((rng.gamma(2.0, 1.0, size=2 * m), (rows, comps)), shape=(m, k))
    per_topic = max(1, int(density * n / 2))
    pop = 1.0 / np.arange(1, n + 1) ** 0.8
    pop /= pop.sum()
    h_rows, h_cols = [], []
    for t in range(k):
        cols = np.unique(rng.choice(n, size=per_topic, p=pop))
        h_rows.append(np.full(cols.shape[0], t))
        h_cols.append(cols)
    h_rows, h_cols = np.concatenate(h_rows), np.concatenate(h_cols)
    H = sp.csr_matrix((rng.gamma(2.0, 1.0, size=h_rows.shape[0]), (h_rows, h_cols)), shape=(k, n))
    X = (W @ H).tocsr()
    X.data *= np.abs(1 + 0.05 * rng.standard_normal(X.data.shape[0]))
    return X


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnmf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--cols", type=int, default=5_000)
    parser.add_argument("--density", type=float, default=0.002)
    parser.add_argument("-k", "--n-components", type=int, default=16)
    parser.add_argument("--solver", choices=["cd", "mu"], default="cd")
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    n_workers = args.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    X = planted_sparse(args.rows, args.cols, args.density, args.n_components, args.seed)
    print(f"X: {X.shape[0]} x {X.shape[1]}, {X.nnz} non-zeros ({time.perf_counter() - t0:.1f} s to generate)")
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        print(f"cluster: {n_workers} worker process(es), dashboard {client.dashboard_link}")
        model = NMF(
            args.n_components, solver=args.solver, init="nndsvda", max_iter=args.max_iter,
            tol=1e-4, random_state=args.seed, client=client,
        )

        def show(iteration: int, elapsed: float, loss: float) -> None:
            print(f"iteration {iteration:4d}  loss {loss:.6g}  ({elapsed:.2f} s)", flush=True)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, callback=show)
    rel = model.reconstruction_err_ / np.sqrt((X.data.astype(np.float64) ** 2).sum())
    print(f"done: {model.n_iter_} iterations, relative error {rel:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
