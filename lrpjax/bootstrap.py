"""Percentile bootstrap over images: confidence intervals of a mean and of paired differences.

Used to rank explanation methods by a per-image score (pixel-flipping AUC, AOPC): resample the
N images with replacement B times (Efron & Tibshirani 1993, Sec. 13.3), take the mean of each
resample and report the (1-level)/2 and (1+level)/2 percentiles. Two methods scored on the same
images are compared on the paired differences d_i = a_i - b_i; they *differ significantly* when
the bootstrap interval of mean(d) excludes 0. The resamples depend only on (N, B, seed), so
every quantity computed with one seed uses the same resamples. No correction for multiple
comparisons is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BootstrapCI", "PairedDifference", "bootstrap_ci", "paired_bootstrap",
           "pairwise_differences"]


class BootstrapCI(NamedTuple):
    """Mean over the images and its percentile-bootstrap interval (same trailing shape)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


class PairedDifference(NamedTuple):
    """mean(a - b) over the images, its bootstrap interval, and whether it excludes 0."""

    diff: float
    low: float
    high: float
    differs: bool


def _check(values: Any, name: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim < 1 or v.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 values along axis 0 (the images), got shape "
                         f"{v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(v)).sum())} entries)")
    return v


@lru_cache(maxsize=4)
def _counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, N) resample counts ~ Multinomial(N, 1/N): the same for every call with (N, B, seed)."""
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    counts = counts.astype(np.float64)
    counts.flags.writeable = False
    return counts


def _resample_means(v: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(B, ...) means of B resamples of the rows of v: counts . v / N."""
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    return np.tensordot(_counts(v.shape[0], int(n_boot), int(seed)), v, axes=(1, 0)) / v.shape[0]


def _level(level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return 50.0 * (1.0 - level), 50.0 * (1.0 + level)


def bootstrap_ci(values: Any, *, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> BootstrapCI:
    """Percentile-bootstrap interval of the mean over axis 0 (the images).

    values: (N, ...) finite, N >= 2. Returns mean, low, high with the trailing shape.
    """
    v = _check(values, "values")
    lo, hi = _level(level)
    means = _resample_means(v, n_boot, seed)
    return BootstrapCI(v.mean(0), np.percentile(means, lo, axis=0),
                       np.percentile(means, hi, axis=0))


def paired_bootstrap(a: Any, b: Any, *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> PairedDifference:
    """Bootstrap interval of mean_i (a_i - b_i) over paired per-image values (N,).

    ``differs`` is True when the interval excludes 0 (low > 0 or high < 0).
    """
    av, bv = _check(a, "a"), _check(b, "b")
    if av.shape != bv.shape or av.ndim != 1:
        raise ValueError(f"a and b must be paired 1-D arrays of one length, got {av.shape} and "
                         f"{bv.shape}")
    ci = bootstrap_ci(av - bv, level=level, n_boot=n_boot, seed=seed)
    low, high = float(ci.low), float(ci.high)
    return PairedDifference(float(ci.mean), low, high, bool(low > 0.0 or high < 0.0))


def pairwise_differences(values: Mapping[str, Any], *, level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> dict[tuple[str, str], PairedDifference]:
    """:func:`paired_bootstrap` for every pair (a, b) of ``values`` (name -> (N,) per image),
    in insertion order: ``{(a, b): PairedDifference of a - b}`` (one set of resamples)."""
    if len(values) < 2:
        raise ValueError(f"pairwise_differences needs at least 2 methods, got {len(values)}")
    arrays = {k: _check(v, k) for k, v in values.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) != 1 or next(iter(shapes)) != (next(iter(arrays.values())).shape[0],):
        raise ValueError(f"values must be paired 1-D arrays of one length, got shapes "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    pairs = list(combinations(arrays, 2))
    d = np.stack([arrays[a] - arrays[b] for a, b in pairs], axis=1)
    ci = bootstrap_ci(d, level=level, n_boot=n_boot, seed=seed)
    return {pair: PairedDifference(float(m), float(lo), float(hi), bool(lo > 0.0 or hi < 0.0))
            for pair, m, lo, hi in zip(pairs, ci.mean, ci.low, ci.high)}
