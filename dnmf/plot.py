"""Plots of dnmf results. matplotlib is optional: ``pip install dnmf[plot]``."""

from __future__ import annotations


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "dnmf.plot needs matplotlib, which is not installed. Install it with "
            "`pip install dnmf[plot]` (or `pip install matplotlib`)."
        ) from exc
    return plt


def rank_curve(result, ax=None):
    """Score against k for a ``select_rank`` result, with the chosen k marked.

    "cv": mean held-out error with one standard error bars; "consensus": the
    cophenetic correlation.

    Parameters
    ----------
    result : dnmf.rank.RankSelection
    ax : matplotlib Axes, optional
        Draw there; by default on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
    else:
        fig = ax.figure
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
    return fig
