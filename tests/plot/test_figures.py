"""dnmf.plot: the figures draw the data they are given and save PNGs that decode."""

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt

import dnmf
from dnmf import plot
from dnmf.nmf.selection import RankSelection


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted():
    X = np.abs(np.random.default_rng(0).standard_normal((60, 25)))
    return dnmf.NMF(3, random_state=0, max_iter=40, tol=0).fit(X)


def assert_png(path, min_size=(100, 100)):
    """The file decodes as an image of at least min_size (h, w) with a drawing on it."""
    img = mpimg.imread(path)
    assert img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1], img.shape
    rgb = img[..., :3]
    ink = np.mean(rgb.min(axis=2) < 0.9)  # not white-ish
    assert 0.005 < ink < 0.9, ink
    return img


def test_loss_curve_of_a_fitted_model_draws_both_histories(fitted, tmp_path):
    path = tmp_path / "sub" / "loss.png"
    fig = plot.loss_curve(fitted, path=path)
    ax_loss, ax_stat = fig.axes
    np.testing.assert_array_equal(ax_loss.lines[0].get_ydata(), fitted.loss_history_)
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), np.arange(1, fitted.n_iter_ + 1))
    np.testing.assert_array_equal(ax_stat.lines[0].get_ydata(), fitted.stationarity_history_)
    assert ax_stat.get_yscale() == "log"  # the stationarity measure spans decades
    img = assert_png(path)
    w, h = fig.get_size_inches() * 100
    assert img.shape[:2] == (round(h), round(w))


def test_loss_curve_of_plain_values_and_on_given_axes():
    values = [5.0, 3.0, 2.5, 2.4]
    fig = plot.loss_curve(values)
    assert len(fig.axes) == 1
    assert list(fig.axes[0].lines[0].get_ydata()) == values

    fig2, ax = plt.subplots()
    out = plot.loss_curve(values, stationarity=[1.0, 0.1, 0.01, 0.001], ax=ax)
    assert out is fig2
    assert len(fig2.axes) == 2  # a twin axis for stationarity
    assert list(fig2.axes[1].lines[0].get_ydata()) == [1.0, 0.1, 0.01, 0.001]

    _, (a, b) = plt.subplots(1, 2)
    plot.loss_curve(values, stationarity=None, ax=[a, b])
    assert len(a.lines) == 1 and not b.axison  # nothing to show on the second panel


def test_loss_curve_ignores_all_nan_stationarity_and_rejects_empty():
    fig = plot.loss_curve([3.0, 2.0], stationarity=[np.nan, np.nan])
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="empty history"):
        plot.loss_curve([])


def test_component_grid_shows_each_component_next_to_pca(tmp_path):
    rng = np.random.default_rng(1)
    nmf = rng.random((6, 12))
    pca = rng.standard_normal((4, 12))
    path = tmp_path / "grid.png"
    fig = plot.component_grid(nmf, (3, 4), compare=pca, path=path, titles=[f"c{i}" for i in range(6)])
    with_images = [ax for ax in fig.axes if ax.images]
    assert len(with_images) == 6 + 4
    for i, ax in enumerate(with_images[:6]):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), nmf[i].reshape(3, 4))
        assert ax.get_title() == f"c{i}"
        assert ax.images[0].get_clim() == (0.0, nmf[i].max())
    for i, ax in enumerate(with_images[6:]):
        lo, hi = ax.images[0].get_clim()
        assert lo == -hi == -np.abs(pca[i]).max()  # signed: centred on zero
        assert ax.get_title() == f"PCA {i + 1}"
    texts = [t.get_text() for t in fig.texts]
    assert "NMF (6 components)" in texts and "PCA (4 components)" in texts
    assert_png(path)


def test_component_grid_rejects_a_wrong_image_shape():
    with pytest.raises(ValueError, match=r"3 x 5 = 15 pixels.*image_shape"):
        plot.component_grid(np.ones((2, 12)), (3, 5))


@given(count=st.integers(1, 200), n_cols=st.one_of(st.none(), st.integers(1, 30)))
def test_grid_shape_fits_every_image_with_less_than_a_row_blank(count, n_cols):
    rows, cols = plot._grid_shape(count, n_cols)
    assert 1 <= cols <= count and rows * cols >= count
    assert rows * cols - count < cols  # no empty row
    if n_cols is None:
        assert cols * cols >= count  # about square, never a tall column
        assert cols <= np.ceil(np.sqrt(2 * count))


def test_rank_curve_still_draws_and_saves(tmp_path):
    res = RankSelection(
        method="cv",
        ks=[2, 3, 4],
        chosen_k=3,
        scores=np.array([[0.5, 0.52], [0.3, 0.31], [0.29, 0.33]]),
        mean=np.array([0.51, 0.305, 0.31]),
        std=np.array([0.01, 0.005, 0.02]),
    )
    fig = plot.rank_curve(res, path=tmp_path / "rank.png")
    ax = fig.axes[0]
    assert "chosen k = 3" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert_png(tmp_path / "rank.png")


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install dnmf\[plot\]"):
        plot.loss_curve([1.0, 0.5])
