"""Heatmaps and digit grids for the figures (matplotlib, Agg canvas, no display needed).

Relevance heatmaps use a diverging colormap centred on zero: red for positive relevance
(evidence for the class), blue for negative (evidence against), white for none. Each heatmap is
normalised on its own by max|R| (Montavon et al. 2018 show heatmaps this way), so images with
different total relevance remain comparable in shape. Figures are made with
``matplotlib.figure.Figure`` and an Agg canvas, never through pyplot's global state.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from lrpjax.files import atomic_write_bytes

__all__ = ["HEATMAP_CMAP", "as_2d", "grid", "heatmap", "image", "save_figure"]

HEATMAP_CMAP = "bwr"  # blue (R < 0) - white (R = 0) - red (R > 0)
TINY = 1e-12


def as_2d(a: Any, *, reduce: str = "sum") -> np.ndarray:
    """Return ``a`` as an H x W array: drops a batch axis of size 1 and a channel axis.

    Accepts H x W, H x W x C and 1 x H x W x C. Channels are summed (``reduce="sum"``,
    right for relevance, which is additive) or averaged (``"mean"``, for images).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of shape {a.shape}")
        a = a[0]
    if a.ndim == 3:
        a = a.sum(-1) if reduce == "sum" else a.mean(-1)
    if a.ndim != 2:
        raise ValueError(f"expected H x W, H x W x C or 1 x H x W x C, got shape {a.shape}")
    return a


def heatmap(ax: Axes, R: Any, *, title: str | None = None, cmap: str = HEATMAP_CMAP) -> AxesImage:
    """Draw relevance ``R`` on ``ax``, colours centred on 0 and scaled by this image's max|R|."""
    R = as_2d(R, reduce="sum")
    vmax = max(float(np.abs(R[np.isfinite(R)]).max(initial=0.0)), TINY)
    im = ax.imshow(R, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    _decorate(ax, title)
    return im


def image(
    ax: Axes,
    x: Any,
    *,
    title: str | None = None,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "gray",
) -> AxesImage:
    """Draw image ``x`` in greyscale (pixel range [vmin, vmax], default [0, 1]); RGB if 3 channels."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[-1] == 3:
        lo = 0.0 if vmin is None else vmin
        hi = 1.0 if vmax is None else vmax
        im = ax.imshow(np.clip((x - lo) / max(hi - lo, TINY), 0, 1), interpolation="nearest")
    else:
        im = ax.imshow(as_2d(x, reduce="mean"), cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
    _decorate(ax, title)
    return im


def _decorate(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)


def _cell_title(titles: Any, r: int, c: int) -> str | None:
    """Column titles (list of str, shown on the first row) or per-cell titles (list of lists)."""
    if titles is None:
        return None
    if titles and not isinstance(titles[0], str) and isinstance(titles[0], Sequence):
        row = titles[r] if r < len(titles) else ()
        return row[c] if c < len(row) else None
    return titles[c] if r == 0 and c < len(titles) else None


def grid(
    images_or_heatmaps: Sequence[Sequence[Any]],
    *,
    titles: Sequence[str] | Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    kind: str | Sequence[str] = "heatmap",
    cell_size: float = 1.5,
) -> Figure:
    """A figure with one panel per entry of the nested list ``rows[r][c]``.

    ``kind`` is "heatmap" or "image", or one of these per column (e.g. the digit first, then
    its heatmaps). ``titles``: one per column (first row) or one per cell. ``row_labels``
    go on the left of each row. Missing cells (``None``) are left blank.
    """
    rows = [list(r) for r in images_or_heatmaps]
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("grid needs at least one image")
    kinds = [kind] * n_cols if isinstance(kind, str) else list(kind)
    if len(kinds) != n_cols or any(k not in ("heatmap", "image") for k in kinds):
        raise ValueError(f"kind must be 'heatmap', 'image' or a list of those per column, got {kind!r}")
    fig = Figure(figsize=(cell_size * n_cols, cell_size * n_rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax, cell = axes[r, c], row[c] if c < len(row) else None
            title = _cell_title(titles, r, c)
            if cell is None:
                ax.set_axis_off()
            elif kinds[c] == "heatmap":
                heatmap(ax, cell, title=title)
            else:
                image(ax, cell, title=title)
        if row_labels is not None and r < len(row_labels):
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (render to memory, then rename) and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    out = atomic_write_bytes(path, buffer.getvalue())
    _close(fig)
    return out


def _close(fig: Figure) -> None:
    """Release ``fig``; pyplot-managed figures are closed through pyplot (if it was imported)."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    fig.clear()
