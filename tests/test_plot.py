"""Plotting: colours centred on zero, per-image normalisation, finite zero maps, atomic PNGs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrpjax.lab import plot


def _ax():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def _rgba(im, values):
    return im.cmap(im.norm(np.asarray(values, dtype=float)))


def test_heatmap_colours_centred_on_zero():
    R = np.array([[2.0, -1.0], [0.0, 0.5]])
    im = plot.heatmap(_ax(), R)
    red, blue, white = _rgba(im, [2.0, -2.0, 0.0])
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    assert blue[2] > 0.9 and blue[0] < 0.1 and blue[1] < 0.1
    np.testing.assert_allclose(white[:3], 1.0, atol=0.01)
    assert im.norm.vmin == -2.0 and im.norm.vmax == 2.0


def test_heatmap_normalised_per_image():
    small, large = np.full((4, 4), 0.01), np.full((4, 4), 100.0)
    small[0, 0] = large[0, 0] = -1e-4
    fig = plot.grid([[small, large]])
    a, b = (ax.images[0] for ax in fig.axes)
    assert a.norm.vmax == pytest.approx(0.01) and b.norm.vmax == pytest.approx(100.0)
    np.testing.assert_allclose(_rgba(a, [0.01]), _rgba(b, [100.0]))


def test_zero_heatmap_is_finite_and_white():
    im = plot.heatmap(_ax(), np.zeros((28, 28)))
    assert np.isfinite(im.norm.vmax) and im.norm.vmax > 0
    rgba = im.to_rgba(im.get_array())
    assert np.all(np.isfinite(rgba))
    np.testing.assert_allclose(rgba[..., :3], 1.0, atol=0.01)


def test_shapes_accepted():
    for shape in [(28, 28), (28, 28, 1), (1, 28, 28, 1)]:
        assert plot.heatmap(_ax(), np.ones(shape)).get_array().shape == (28, 28)
        assert plot.image(_ax(), np.ones(shape)).get_array().shape == (28, 28)
    with pytest.raises(ValueError, match="single image"):
        plot.heatmap(_ax(), np.ones((2, 28, 28, 1)))


def test_grid_titles_labels_and_kinds():
    x = np.random.default_rng(0).uniform(size=(8, 8, 1))
    fig = plot.grid([[x, x - 0.5], [x, None]], titles=["digit", "R"], row_labels=["a", "b"],
                    kind=["image", "heatmap"])
    axes = fig.axes
    assert axes[0].get_title() == "digit" and axes[1].get_title() == "R"
    assert axes[2].get_title() == "" and axes[0].get_ylabel() == "a"
    assert axes[0].images[0].get_cmap().name == "gray"
    assert axes[1].images[0].get_cmap().name == plot.HEATMAP_CMAP
    assert not axes[3].axison
    cells = plot.grid([[x, x]], titles=[["p1", "p2"]], kind="image")
    assert [ax.get_title() for ax in cells.axes] == ["p1", "p2"]
    with pytest.raises(ValueError, match="kind"):
        plot.grid([[x]], kind="contour")


def test_save_figure_writes_png_atomically(tmp_path):
    fig = plot.grid([[np.eye(5), -np.eye(5)]], titles=["+", "-"])
    path = tmp_path / "sub" / "fig.png"
    assert plot.save_figure(fig, path) == path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    assert os.listdir(path.parent) == ["fig.png"]  # no temporary file left behind
    assert not fig.axes  # closed / cleared


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    fig = plot.grid([[np.eye(3)]])

    def broken(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot.save_figure(fig, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]
