"""Token relevance as text: a coloured token strip (matplotlib) and a plain-text line.

Each token is drawn as its text on a box coloured by its relevance (``bwr``: red = evidence
for the explained output, blue = against, white = none; scaled by max |R| unless ``vmax`` is
given), left to right, wrapped at the axes' width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes

__all__ = ["shown", "token_line", "token_strip"]


def shown(token: str) -> str:
    """A token as it is drawn: line breaks and tabs as visible marks, nothing empty."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def token_strip(ax: Axes, tokens: list[str], relevance: Any, *, vmax: float | None = None,
                fontsize: float = 9.0, cmap: str = "bwr", title: str | None = None) -> int:
    """Draw ``tokens`` on boxes coloured by ``relevance`` (one value each) into ``ax``; returns
    the number of lines used. The axes are switched off; give them room for the lines
    (about ``fontsize * 2.2`` points per line)."""
    r = np.asarray(relevance, np.float64).ravel()
    if r.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {r.shape[0]} relevance values")
    if not np.isfinite(r).all():
        raise ValueError("relevance is not finite")
    top = float(np.abs(r).max()) if vmax is None else float(vmax)
    top = top if top > 0 else 1.0
    colours = colormaps[cmap]((np.clip(r / top, -1, 1) + 1) / 2)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 1, loc="left")
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    line_h = fontsize * 2.2 * fig.dpi / 72 / max(box.height, 1.0)  # in axes fractions
    x, y, lines, pad = 0.0, 1.0 - line_h / 2, 1, 2.0 / max(box.width, 1.0)
    for token, colour in zip(tokens, colours, strict=True):
        t = ax.text(x, y, shown(token), transform=ax.transAxes, fontsize=fontsize,
                    va="center", ha="left", family="DejaVu Sans",
                    bbox={"boxstyle": "square,pad=0.15", "facecolor": colour,
                          "edgecolor": "0.85", "linewidth": 0.5})
        width = t.get_window_extent(renderer).width / max(box.width, 1.0)
        if x > 0 and x + width > 1.0:  # wrap
            x, y, lines = 0.0, y - line_h, lines + 1
            t.set_position((x, y))
        x += width + pad
    return lines


def token_line(tokens: list[str], relevance: Any, digits: int = 2) -> str:
    """The tokens with their relevance as one line of text: ``tok(+0.12) tok(-0.03) ...``."""
    r = np.asarray(relevance, np.float64).ravel()
    if r.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {r.shape[0]} relevance values")
    return " ".join(f"{shown(t).strip() or repr(t)}({v:+.{digits}f})"
                    for t, v in zip(tokens, r, strict=True))
