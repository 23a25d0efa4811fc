"""Metagenes and sample classes: NMF of a gene expression matrix, rank by consensus clustering.

Brunet et al. (2004, "Metagenes and molecular pattern discovery using matrix
factorization", PNAS) factorize a genes x samples expression matrix A ≈ W H
into k *metagenes* (columns of W: positive combinations of genes) and their
expression in every sample (columns of H), assign each sample to its
dominant metagene, and choose k by *consensus clustering*: the sample
clustering is repeated from several random starts, the consensus matrix
(how often two samples share a cluster) is built, and its cophenetic
correlation says how reproducible the clustering of rank k is.

``dnmf`` factorizes rows x columns and clusters the *rows*, so this example
passes the samples x genes matrix Aᵀ: ``W`` (samples x k) holds each
sample's metagene expression and ``components_`` (k x genes) the metagenes.

1. ``dnmf.select_rank(Aᵀ, ks, method="consensus", n_repeats=...)`` fits
   every k from random starts and returns the cophenetic correlation per k
   and the chosen k: among the stable ranks (cophenetic correlation within
   0.005 of the best), the smallest that fits about as well as any of them.
2. The chosen k is fitted again from as many random starts; the consensus
   matrix of their clusterings is drawn (reordered by the average-linkage
   tree, as in Brunet's figures) and the restart with the lowest loss is
   kept.
3. Samples are clustered by their dominant component and compared with the
   known classes (adjusted Rand index); every component's top marker genes
   are printed (genes whose share of that metagene most exceeds their share
   of any other).

By default the data are generated: 4 planted sample classes, each with its
own marker genes (up-regulated about 4-fold over every gene's baseline,
which all samples share), samples that also express the other classes'
programs a little, per-sample library sizes, and negative-binomial counts.

Writes ``gene_rank.png`` (cophenetic correlation and error per k),
``gene_consensus.png`` (consensus matrix at the chosen k),
``gene_metagenes.png`` (expression, metagenes and sample loadings, sorted),
``gene_markers.csv`` (top genes per component) and ``gene_summary.json``
under ``--out``.

    python examples/gene_expression.py           # 2,000 genes x 80 samples, k = 2..7, 10 restarts (~1 min)
    python examples/gene_expression.py --quick   # 500 genes x 36 samples, 3 classes, k = 2..5 (CI)
    python examples/gene_expression.py --csv expression.tsv --groups classes.csv --ks 2 3 4 5 6
        # genes x samples (first column gene IDs, header sample IDs; --transpose if
        # samples are rows); --groups: a CSV of sample ID, class for the ARI
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


def planted_expression(
    n_genes: int, n_samples: int, n_groups: int, n_markers: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(counts of shape (genes, samples), gene IDs, sample class, marker genes of each class)."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.arange(n_samples) % n_groups)
    baseline = 0.5 * rng.lognormal(0.0, 1.0, n_genes)  # every gene's expression in every sample
    W = np.tile(baseline[:, None], (1, n_groups))
    markers = rng.permutation(n_genes)[: n_groups * n_markers].reshape(n_groups, n_markers)
    for j in range(n_groups):
        W[markers[j], j] += rng.lognormal(np.log(4.0), 0.5, n_markers)  # class j's program
    H = rng.uniform(0.0, 0.15, (n_groups, n_samples))  # a little of every program...
    H[groups, np.arange(n_samples)] = 1.0  # ...and all of the sample's own
    H *= rng.lognormal(0.0, 0.2, n_samples)  # library size
    mean = 200.0 * W @ H
    counts = rng.poisson(rng.gamma(100.0, mean / 100.0)).astype(np.float64)  # negative binomial
    genes = np.array([f"GENE{g:04d}" for g in range(n_genes)])
    return counts, genes, groups, [np.sort(m) for m in markers]


def read_table(path: str, transpose: bool):
    """(A of shape (genes, samples), gene IDs, sample IDs) from a CSV/TSV with IDs in the first column."""
    import pandas as pd

    sep = "\t" if path.endswith((".tsv", ".tab", ".txt")) else None
    df = pd.read_csv(path, sep=sep, index_col=0, engine="python" if sep is None else "c")
    if transpose:
        df = df.T
    df = df.apply(pd.to_numeric, errors="coerce")
    if df.isna().any().any():
        raise SystemExit(f"{path}: non-numeric or missing values in {int(df.isna().sum().sum())} cells.")
    A = df.to_numpy(dtype=np.float64)
    if A.min() < 0:
        raise SystemExit(
            f"{path}: NMF needs non-negative expression values; the minimum is {A.min():g} "
            "(log ratios? give the un-logged values)."
        )
    return A, df.index.astype(str).to_numpy(), df.columns.astype(str).to_numpy()


def marker_genes(H: np.ndarray, top: int) -> list[np.ndarray]:
    """Per component, the genes whose share of its metagene most exceeds their share of any other."""
    share = H / np.maximum(H.sum(axis=1, keepdims=True), 1e-300)
    out = []
    for c in range(H.shape[0]):
        others = np.delete(share, c, axis=0).max(axis=0) if H.shape[0] > 1 else 0.0
        score = share[c] - others
        out.append(np.argsort(-score, kind="stable")[:top])
    return out


def consensus_order(C: np.ndarray) -> np.ndarray:
    """Leaf order of the average-linkage tree of 1 − C (Brunet's reordering)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if C.shape[0] < 3:
        return np.arange(C.shape[0])
    return leaves_list(linkage(squareform(1.0 - C, checks=False), method="average"))


def plot_rank(path, selection):
    import matplotlib.pyplot as plt

    from dnmf.plot import rank_curve

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    rank_curve(selection, ax=ax)
    ax2 = ax.twinx()
    ax2.plot(selection.ks, selection.scores.mean(axis=1), color="tab:orange", marker="s", lw=1, label="error")
    ax2.set_ylabel("relative reconstruction error", color="tab:orange")
    ax.set_title("Consensus clustering: cophenetic correlation per k", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_consensus(path, C, order, k, coph):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(C[np.ix_(order, order)], cmap="RdBu_r", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="same cluster (fraction of restarts)")
    ax.set_title(f"Consensus matrix, k = {k} (cophenetic {coph:.4f})", fontsize=10)
    ax.set_xlabel("samples (reordered)")
    ax.set_ylabel("samples (reordered)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_metagenes(path, A, W, H, labels, classes, markers):
    """Expression of the marker genes, metagenes and sample loadings, samples sorted by cluster."""
    import matplotlib.pyplot as plt

    k = H.shape[0]
    samples = np.lexsort((-W.max(axis=1), labels))
    genes = np.concatenate(markers)
    Z = np.log1p(A[np.ix_(genes, samples)])
    Z = (Z - Z.mean(axis=1, keepdims=True)) / np.maximum(Z.std(axis=1, keepdims=True), 1e-12)

    fig = plt.figure(figsize=(11, 6.5))
    grid = fig.add_gridspec(3, 2, width_ratios=[4, 1], height_ratios=[0.35, 1.4, 5], wspace=0.05, hspace=0.08)
    ax_cls = fig.add_subplot(grid[0, 0])
    ax_w = fig.add_subplot(grid[1, 0], sharex=ax_cls)
    ax_x = fig.add_subplot(grid[2, 0], sharex=ax_cls)
    ax_h = fig.add_subplot(grid[2, 1], sharey=ax_x)

    row = [labels[samples]] if classes is None else [labels[samples], classes[samples]]
    ax_cls.imshow(np.array(row), aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    ax_cls.set_yticks(range(len(row)), ["cluster", "class"][: len(row)], fontsize=8)
    ax_cls.tick_params(labelbottom=False, bottom=False)
    ax_cls.set_title("Samples sorted by dominant component; marker genes of each component", fontsize=10)

    Wn = (W / np.maximum(W.max(axis=0), 1e-300))[samples].T
    ax_w.imshow(Wn, aspect="auto", cmap="Greys", interpolation="nearest")
    ax_w.set_yticks(range(k), [f"{c + 1}" for c in range(k)], fontsize=8)
    ax_w.set_ylabel("W", fontsize=9, rotation=0, labelpad=12, va="center")
    ax_w.tick_params(labelbottom=False, bottom=False)

    ax_x.imshow(Z, aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5, interpolation="nearest")
    ax_x.set_xlabel("samples")
    ax_x.set_ylabel(f"top {len(markers[0])} marker genes per component\n(log expression, standardised)", fontsize=9)
    ax_x.set_yticks([])

    Hn = H / np.maximum(H.max(axis=1, keepdims=True), 1e-300)
    ax_h.imshow(Hn[:, genes].T, aspect="auto", cmap="Greys", interpolation="nearest")
    ax_h.set_xticks(range(k), [f"{c + 1}" for c in range(k)], fontsize=8)
    ax_h.set_xlabel("metagenes (H)", fontsize=9)
    ax_h.tick_params(labelleft=False)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", default=None, help="genes x samples CSV/TSV (default: generated)")
    parser.add_argument("--transpose", action="store_true", help="the --csv table has samples as rows")
    parser.add_argument("--groups", default=None, help="CSV of sample ID, known class (for the ARI with --csv)")
    parser.add_argument(
        "--ks", type=int, nargs="+", default=None, help="candidate ranks (default 2..7; 2..5 with --quick)"
    )
    parser.add_argument("--restarts", type=int, default=None, help="random starts per k (default 10; 5 with --quick)")
    parser.add_argument("--max-genes", type=int, default=None, help="keep the genes of largest variance (log scale)")
    parser.add_argument("--max-iter", type=int, default=None, help="iterations per fit of select_rank (default 100)")
    parser.add_argument("--tol", type=float, default=1e-3, help="stopping tolerance of every fit (default 1e-3)")
    parser.add_argument("--top", type=int, default=8, help="marker genes printed per component")
    parser.add_argument("--out", default=os.path.join("examples", "output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="small and fast (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ks = sorted(set(args.ks or (range(2, 6) if args.quick else range(2, 8))))
    restarts = args.restarts or (5 if args.quick else 10)
    max_iter = args.max_iter or 100

    import dnmf

    timings: dict[str, float] = {}
    t = time.perf_counter()
    planted_k, markers_true, classes = None, None, None
    if args.csv:
        A, genes, sample_ids = read_table(args.csv, args.transpose)
        source = args.csv
        if args.groups:
            import pandas as pd

            known = pd.read_csv(args.groups, index_col=0).iloc[:, 0].astype(str)
            missing = [s for s in sample_ids if s not in known.index]
            if missing:
                raise SystemExit(f"{args.groups}: no class for {len(missing)} samples, e.g. {missing[:3]}")
            names, classes = np.unique(known.loc[sample_ids].to_numpy(), return_inverse=True)
            planted_k = len(names)
    else:
        n_genes, n_samples, n_groups, n_markers = (500, 36, 3, 30) if args.quick else (2000, 80, 4, 50)
        A, genes, classes, markers_true = planted_expression(n_genes, n_samples, n_groups, n_markers, args.seed)
        sample_ids = np.array([f"sample{s + 1:02d}" for s in range(n_samples)])
        planted_k = n_groups
        source = f"generated, {n_groups} planted sample classes with {n_markers} marker genes each"
    keep = A.sum(axis=1) > 0
    if args.max_genes and keep.sum() > args.max_genes:
        var = np.log1p(A).var(axis=1)
        var[~keep] = -1
        keep = np.zeros(A.shape[0], dtype=bool)
        keep[np.argsort(-var)[: args.max_genes]] = True
    gene_index = np.flatnonzero(keep)
    A, genes = A[keep], genes[keep]
    if markers_true is not None:  # re-index the planted markers among the kept genes
        position = {g: i for i, g in enumerate(gene_index)}
        markers_true = [np.array([position[g] for g in m if g in position]) for m in markers_true]
    timings["data"] = time.perf_counter() - t
    print(f"data: {source}: {A.shape[0]:,} genes x {A.shape[1]} samples")
    if max(ks) > min(A.shape):
        raise SystemExit(f"k = {max(ks)} is more than min(genes, samples) = {min(A.shape)}; give smaller --ks.")

    # 1. Rank by consensus clustering of the samples (rows of Aᵀ).
    X = A.T
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the capped fits
        selection = dnmf.select_rank(
            X,
            ks,
            method="consensus",
            n_repeats=restarts,
            solver="cd",
            tol=args.tol,
            max_iter=max_iter,
            random_state=args.seed,
        )
    timings["select_rank"] = time.perf_counter() - t
    k = selection.chosen_k
    print(
        f"\nconsensus clustering, {restarts} random starts per k "
        f"(dnmf.select_rank, method='consensus'; {timings['select_rank']:.1f} s):"
    )
    print(f"{'k':>4}  {'cophenetic':>10}  {'rel. error':>10}  {'iterations':>10}")
    for i, kk in enumerate(selection.ks):
        mark = "  <- chosen" if kk == k else ""
        print(
            f"{kk:>4}  {selection.cophenetic[i]:>10.4f}  {selection.scores[i].mean():>10.4f}  "
            f"{selection.n_iter[i].mean():>10.0f}{mark}"
        )
    planted = "" if planted_k is None else f" ({'known classes' if args.csv else 'planted'}: {planted_k})"
    print(f"chosen rank: {k}{planted}")

    # 2. The chosen k from as many random starts: consensus matrix, lowest loss kept.
    from dnmf.nmf.selection import consensus_matrix, cophenetic_correlation

    t = time.perf_counter()
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(restarts):
            model = dnmf.NMF(
                k,
                solver="cd",
                init="random",
                tol=args.tol / 10,
                max_iter=max_iter * 2,
                random_state=args.seed * 1000 + r,
            )
            W = np.asarray(model.fit_transform(X))
            fits.append((model.reconstruction_err_, r, W, model))
    timings["final fits"] = time.perf_counter() - t
    C = consensus_matrix([f[2].argmax(axis=1) for f in fits])
    coph = cophenetic_correlation(C)
    _, best_r, W, model = min(fits, key=lambda f: f[0])
    H = model.components_
    labels = W.argmax(axis=1)
    print(
        f"k = {k} from {restarts} random starts ({timings['final fits']:.1f} s): cophenetic {coph:.4f}; "
        f"kept start {best_r}, relative error {model.reconstruction_err_ / np.linalg.norm(X):.4f}"
    )

    # 3. Clusters vs known classes, marker genes.
    summary: dict = {
        "input": source,
        "shape": {"genes": int(A.shape[0]), "samples": int(A.shape[1])},
        "ks": [int(x) for x in selection.ks],
        "restarts": restarts,
        "cophenetic": [float(x) for x in selection.cophenetic],
        "reconstruction_error": [float(x) for x in selection.scores.mean(axis=1)],
        "chosen_k": int(k),
        "planted_k": planted_k,
        "cluster_sizes": np.bincount(labels, minlength=k).tolist(),
    }
    if classes is not None:
        from sklearn.metrics import adjusted_rand_score

        ari = adjusted_rand_score(classes, labels)
        summary["ari"] = float(ari)
        print(f"samples by dominant component vs known classes: adjusted Rand index ARI = {ari:.3f}")
    top = marker_genes(H, max(args.top, 20))
    print()
    header = f"{'component':>9}  {'samples':>7}  {'class':>5}  top {args.top} marker genes"
    if markers_true is not None:
        header += "  (planted markers of the class in the top 20)"
    print(header)
    rows = []
    for c in range(k):
        members = labels == c
        major = int(np.bincount(classes[members]).argmax()) if classes is not None and members.any() else None
        cls = "-" if major is None else (chr(ord("A") + major) if args.csv is None else str(names[major]))
        line = f"{c + 1:>9}  {int(members.sum()):>7}  {cls:>5}  " + " ".join(genes[top[c][: args.top]])
        hit = None
        if markers_true is not None and major is not None:
            hit = int(np.isin(top[c][:20], markers_true[major]).sum())
            line += f"  {hit}/20"
        print(line)
        rows.append({"component": c + 1, "samples": int(members.sum()), "class": cls, "planted_markers_top20": hit})
        rows[-1]["genes"] = genes[top[c]].tolist()
    summary["components"] = rows

    os.makedirs(args.out, exist_ok=True)
    written = []
    path = os.path.join(args.out, "gene_markers.csv")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("component,rank,gene,weight\n")
        for c in range(k):
            for i, g in enumerate(top[c]):
                fh.write(f"{c + 1},{i + 1},{genes[g]},{H[c, g]:.6g}\n")
    written.append(path)
    t = time.perf_counter()
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        path = os.path.join(args.out, "gene_rank.png")
        plot_rank(path, selection)
        written.append(path)
        path = os.path.join(args.out, "gene_consensus.png")
        plot_consensus(path, C, consensus_order(C), k, coph)
        written.append(path)
        path = os.path.join(args.out, "gene_metagenes.png")
        plot_metagenes(path, A, W, H, labels, classes, [m[: args.top] for m in top])
        written.append(path)
    except ImportError:
        print("matplotlib is not installed: no figures (pip install dnmf[plot])")
    timings["figures"] = time.perf_counter() - t
    summary["timings"] = timings
    path = os.path.join(args.out, "gene_summary.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    written.append(path)
    print()
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
