"""Parts of images: NMF components of handwritten digits, next to PCA's.

NMF's components are non-negative and add up, so each one is a *part* of a
digit (a stroke, a loop); PCA's components are signed "eigen-digits" that
cancel each other out. This example factorizes scikit-learn's bundled digits
(1,797 images of 8 x 8 pixels, no download) with ``dnmf.NMF`` and writes:

- ``digits_components.png``: the k NMF components as images, PCA's beside them;
- ``digits_loss.png``: the loss (and stationarity) of every iteration;
- ``digits_report.html``: the single-file HTML report of the fit.

Run (about 10 seconds)::

    python examples/faces_digits.py                 # k = 16
    python examples/faces_digits.py --quick         # k = 8, fewer iterations (CI)
    python examples/faces_digits.py --images faces.npy -k 25   # your own images

``--images`` takes a ``.npy`` file holding an array of shape
(n_images, height, width) (or (n_images, height * width) with ``--shape H W``)
of non-negative pixel values, e.g. ``np.save("faces.npy",
sklearn.datasets.fetch_olivetti_faces().images)`` on a machine with internet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


def load_images(path: str | None, shape: list[int] | None) -> tuple[np.ndarray, tuple[int, int], str]:
    """(X of shape (n_images, height * width), (height, width), name)."""
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data.astype(np.float64), (8, 8), "digits"
    images = np.load(path)
    if images.ndim == 3:
        hw = images.shape[1:]
    elif images.ndim == 2 and shape:
        hw = tuple(shape)
    else:
        raise SystemExit(
            f"{path}: expected an array of shape (n_images, height, width), got {images.shape}; "
            "for flat rows pass --shape HEIGHT WIDTH."
        )
    X = images.reshape(images.shape[0], -1).astype(np.float64)
    if X.min() < 0:
        raise SystemExit(f"{path}: NMF needs non-negative pixels; the minimum is {X.min():g}.")
    return X, (int(hw[0]), int(hw[1])), os.path.splitext(os.path.basename(path))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--n-components", type=int, default=None, help="components (default 16; 8 with --quick)")
    parser.add_argument("--max-iter", type=int, default=None, help="iterations (default 400; 60 with --quick)")
    parser.add_argument("--images", default=None, help=".npy file of images (default: scikit-learn's digits)")
    parser.add_argument(
        "--shape", type=int, nargs=2, default=None, metavar=("H", "W"), help="image shape when --images holds flat rows"
    )
    parser.add_argument("--out", default=os.path.join("examples", "output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="small and fast (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    k = args.n_components or (8 if args.quick else 16)
    max_iter = args.max_iter or (60 if args.quick else 400)

    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    from sklearn.decomposition import PCA

    import dnmf
    from dnmf.cli.report import cluster_info, write_report
    from dnmf.plot import component_grid, loss_curve

    timings: dict[str, float] = {}
    t = time.perf_counter()
    X, hw, name = load_images(args.images, args.shape)
    timings["load"] = time.perf_counter() - t
    print(f"{name}: {X.shape[0]} images of {hw[0]} x {hw[1]} pixels; k = {k}")

    t = time.perf_counter()
    # Local threads: a 1,797 x 64 matrix is one small block; a cluster would only add overhead.
    model = dnmf.NMF(k, init="nndsvda", solver="cd", max_iter=max_iter, tol=1e-5, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning in --quick mode is expected
        W = model.fit_transform(X)
    timings["nmf fit"] = time.perf_counter() - t
    t = time.perf_counter()
    pca = PCA(k, random_state=args.seed).fit(X)
    timings["pca fit"] = time.perf_counter() - t

    norm = np.linalg.norm(X)
    nmf_err = np.linalg.norm(X - W @ model.components_) / norm
    pca_err = np.linalg.norm(X - pca.inverse_transform(pca.transform(X))) / norm

    # Parts are sparse: the share of pixels under 5% of each component's maximum.
    def sparsity(C):
        return float(np.mean(np.abs(C) < 0.05 * np.abs(C).max(axis=1, keepdims=True)))

    print(f"{'method':<6} {'relative error':>15} {'near-zero pixels':>17} {'negative entries':>17}")
    print(f"{'NMF':<6} {nmf_err:>15.4f} {sparsity(model.components_):>17.0%} {np.mean(model.components_ < 0):>17.0%}")
    print(f"{'PCA':<6} {pca_err:>15.4f} {sparsity(pca.components_):>17.0%} {np.mean(pca.components_ < 0):>17.0%}")
    print(f"NMF: {model.n_iter_} iterations in {timings['nmf fit']:.2f} s")

    os.makedirs(args.out, exist_ok=True)
    t = time.perf_counter()
    grid = os.path.join(args.out, f"{name}_components.png")
    component_grid(model.components_, hw, compare=pca.components_, label="NMF", compare_label="PCA", path=grid)
    loss_png = os.path.join(args.out, f"{name}_loss.png")
    loss_curve(model, path=loss_png, title=f"NMF of {name}, k = {k}")
    timings["figures"] = time.perf_counter() - t
    report = os.path.join(args.out, f"{name}_report.html")
    write_report(
        report,
        model,
        timings=timings,
        cluster=cluster_info(None),
        title=f"dnmf: NMF of {name} images",
        extra={
            "data": args.images or "sklearn.datasets.load_digits()",
            "images": X.shape[0],
            "image shape": f"{hw[0]} x {hw[1]}",
            "NMF relative error": nmf_err,
            "PCA relative error": pca_err,
        },
    )
    for path in (grid, loss_png, report):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
