"""Plots of dnmf results. matplotlib is optional: ``pip install dnmf[plot]``.

Every helper draws on a new figure (or on the ``ax`` given), returns the
matplotlib ``Figure`` and, with ``path=``, also saves it as a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["component_grid", "loss_curve", "rank_curve", "save_png"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "dnmf.plot needs matplotlib, which is not installed. Install it with "
            "`pip install dnmf[plot]` (or `pip install matplotlib`)."
        ) from exc
    return plt


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> str:
    """Save ``fig`` as a PNG at ``path`` (parent folders are created).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
        Where to write; the format is PNG whatever the suffix.
    dpi : int, default=100
        Pixels per inch: a 6 x 4 inch figure is 600 x 400 pixels at 100.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _histories(source: Any, stationarity: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(loss, stationarity) arrays from a fitted model or plain sequences."""
    if hasattr(source, "loss_history_"):
        loss = source.loss_history_
        if isinstance(stationarity, str) and stationarity == "auto":
            stationarity = getattr(source, "stationarity_history_", None)
    else:
        loss = source
        if isinstance(stationarity, str) and stationarity == "auto":
            stationarity = None
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if loss.size == 0:
        raise ValueError(
            "loss_curve needs at least one loss value; got an empty history. Fit the "
            "model first (loss_history_ is filled by fit) or pass a non-empty sequence."
        )
    if stationarity is not None:
        stationarity = np.asarray(stationarity, dtype=np.float64).ravel()
        # Solvers that do not measure stationarity leave it empty or NaN.
        if stationarity.size == 0 or not np.isfinite(stationarity).any():
            stationarity = None
    return loss, stationarity


def _plot_positive(ax, values: np.ndarray, **kwargs) -> None:
    """Plot against iterations 1..n on a log scale when every value is > 0."""
    its = np.arange(1, values.size + 1)
    ax.plot(its, values, **kwargs)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.grid(True, alpha=0.3)


def loss_curve(
    model: Any,
    *,
    stationarity: Any = "auto",
    ax: Axes | Sequence[Axes] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """The loss of every iteration, and the stationarity measure beside it.

    Parameters
    ----------
    model : fitted dnmf.NMF (or any object with ``loss_history_``) or array-like of shape (n_iter,)
        Where the loss history comes from: ``model.loss_history_``
        (``reconstruction_err_``'s measure after every iteration), or the
        values themselves.
    stationarity : "auto", array-like of shape (n_iter,) or None, default="auto"
        Relative projected-gradient norm per iteration. "auto" takes the
        model's ``stationarity_history_`` when it has a finite value; None
        draws the loss alone.
    ax : matplotlib Axes or a pair of Axes, optional
        Draw the loss there (the stationarity measure then goes on a twin
        y axis), or, given two axes, the loss on the first and the
        stationarity measure on the second; by default a new figure with
        one panel per curve.
    path : str or path-like, optional
        Also save the figure there as a PNG.
    title : str, optional
        Title over the loss panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    loss, stat = _histories(model, stationarity)
    twin = ax is not None and not isinstance(ax, (list, tuple, np.ndarray))
    if ax is None:
        plt = _pyplot()
        ncols = 2 if stat is not None else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5.0 * ncols, 3.5), squeeze=False)
        ax_loss, ax_stat = axes[0, 0], (axes[0, 1] if stat is not None else None)
    elif isinstance(ax, (list, tuple, np.ndarray)):
        ax_loss, ax_stat = ax[0], (ax[1] if stat is not None else None)
        fig = ax_loss.figure
        if stat is None:
            ax[1].set_axis_off()
    else:
        fig, ax_loss = ax.figure, ax
        ax_stat = ax.twinx() if stat is not None else None
    _plot_positive(ax_loss, loss, marker="o" if loss.size <= 30 else None, markersize=3, color="C0", label="loss")
    ax_loss.set_ylabel("loss (reconstruction error)")
    ax_loss.set_title(title or f"loss over {loss.size} iteration{'s' if loss.size != 1 else ''}")
    if ax_stat is not None:
        _plot_positive(
            ax_stat, stat, marker="o" if stat.size <= 30 else None, markersize=3, color="C1", label="stationarity"
        )
        ax_stat.set_ylabel("stationarity (relative to iteration 1)")
        if not twin:
            ax_stat.set_title("projected-gradient stationarity")
    if ax is None:
        fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig


def _grid_shape(count: int, n_cols: int | None) -> tuple[int, int]:
    """(rows, cols) of a grid of ``count`` images: about square, fewest blank cells."""
    if n_cols:
        cols = max(1, min(int(n_cols), count))
    else:
        choices = range(math.ceil(math.sqrt(count)), math.ceil(math.sqrt(2 * count)) + 1)
        cols = min(choices, key=lambda c: (math.ceil(count / c) * c - count, c))
    return math.ceil(count / cols), cols


def component_grid(
    components: Any,
    image_shape: Sequence[int],
    *,
    n_cols: int | None = None,
    titles: Sequence[str] | None = None,
    label: str = "NMF",
    compare: Any = None,
    compare_label: str = "PCA",
    cmap: str = "gray_r",
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Each component (a row of ``components``) shown as an image, in a grid.

    Parameters
    ----------
    components : array-like of shape (n_components, n_features)
        E.g. ``model.components_``; ``n_features`` must equal
        ``prod(image_shape)``.
    image_shape : (height, width)
        How one row is reshaped (C order) into an image.
    n_cols : int, optional
        Images per row of the grid (default: between sqrt(n) and sqrt(2n),
        leaving the fewest blank cells).
    titles : sequence of str, optional
        One caption per component (default: "NMF 1", "NMF 2", ...).
    label : str, default="NMF"
        Name of ``components`` in the panel title and default captions.
    compare : array-like of shape (n_other, n_features), optional
        A second set drawn to the right in the same layout, e.g. PCA's
        ``components_``. Signed values use a diverging colour map centred
        on zero; non-negative ones ``cmap``.
    compare_label : str, default="PCA"
        Name of ``compare``.
    cmap : str, default="gray_r"
        Colour map of non-negative images (each scaled to its own maximum).
    path : str or path-like, optional
        Also save the figure there as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    height, width = (int(v) for v in image_shape)
    sets = [(label, np.asarray(components, dtype=np.float64), titles)]
    if compare is not None:
        sets.append((compare_label, np.asarray(compare, dtype=np.float64), None))
    for name, arr, _ in sets:
        if arr.ndim != 2 or arr.shape[1] != height * width:
            raise ValueError(
                f"component_grid: {name} components have shape {arr.shape}, which does not "
                f"reshape into images of {height} x {width} = {height * width} pixels per row. "
                "Pass image_shape with height * width == n_features."
            )
        if arr.shape[0] == 0:
            raise ValueError(f"component_grid: {name} has no components (shape {arr.shape}).")
    plt = _pyplot()
    grids = [_grid_shape(arr.shape[0], n_cols) for _, arr, _ in sets]
    rows = max(r for r, _ in grids)
    cols_total = sum(c for _, c in grids) + (len(sets) - 1)  # one blank column between panels
    cell = 1.2  # inches per image width
    fig = plt.figure(figsize=(cell * cols_total + 0.2, rows * (cell * height / width + 0.3) + 0.5))
    outer = fig.add_gridspec(1, len(sets), width_ratios=[c for _, c in grids], wspace=0.15)
    for p, ((name, arr, caps), (_, c)) in enumerate(zip(sets, grids, strict=True)):
        inner = outer[0, p].subgridspec(rows, c, wspace=0.08, hspace=0.3)
        signed = arr.min() < 0
        for i in range(rows * c):
            ax = fig.add_subplot(inner[i // c, i % c])
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= arr.shape[0]:
                ax.set_axis_off()
                continue
            img = arr[i].reshape(height, width)
            if signed:
                lim = float(np.abs(img).max()) or 1.0
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                ax.imshow(img, cmap=cmap, vmin=0, vmax=float(img.max()) or 1.0, interpolation="nearest")
            caption = caps[i] if caps is not None and i < len(caps) else f"{name} {i + 1}"
            ax.set_title(caption, fontsize=8)
        bbox = outer[0, p].get_position(fig)
        fig.text(
            (bbox.x0 + bbox.x1) / 2,
            0.985,
            f"{name} ({arr.shape[0]} components)",
            ha="center",
            va="top",
            fontsize=11,
            weight="bold",
        )
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.55 / fig.get_figheight())
    if path is not None:
        save_png(fig, path)
    return fig


def rank_curve(result: Any, ax: Axes | None = None, *, path: str | os.PathLike[str] | None = None) -> Figure:
    """Score against k for a ``select_rank`` result, with the chosen k marked.

    "cv": mean held-out error with one standard error bars; "consensus": the
    cophenetic correlation.

    Parameters
    ----------
    result : dnmf.RankSelection
    ax : matplotlib Axes, optional
        Draw there; by default on a new figure.
    path : str or path-like, optional
        Also save the figure there as a PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes(ax, (5.5, 3.5))
    ks = list(result.ks)
    if result.method == "cv":
        n = max(result.scores.shape[1], 1)
        ax.errorbar(ks, result.mean, yerr=result.std / n**0.5, marker="o", capsize=3, label="held-out error")
        ax.set_ylabel("held-out relative error")
    else:
        ax.plot(ks, result.cophenetic, marker="o", label="cophenetic correlation")
        ax.set_ylabel("cophenetic correlation")
    ax.axvline(result.chosen_k, color="0.4", linestyle="--", label=f"chosen k = {result.chosen_k}")
    ax.set_xlabel("k (n_components)")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig
