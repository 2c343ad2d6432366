"""The stride artefact and the translation trick that removes it (Montavon et al. 2018, Sec. 6).

* ``stride_energy``: closed forms (a period-s pattern -> 1, a known mixture -> its variance share,
  a smooth image -> ~0, white noise -> (s^2 - 1)/(HW - 1)) and an independent float64 reference
  (the variance of the phase means, no FFT);
* ``stride_shifts`` with ``translation_trick``: an explain R(x) = x * p with p of period 2 gives
  R̄ = x * mean(p) exactly, while the ±1 px square leaves 1/9 of a checkerboard;
* ``CNNStrided``: a float64 NumPy forward pass, and the kernel coverage of its first layer (the
  cause of the artefact) counted by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrpjax.lab.models import STRIDE, CNNStrided
from lrpjax.translation import shift_set, stride_energy, stride_shifts, translation_trick

RNG = np.random.default_rng(0)
H = W = 28


def phase_share(r: np.ndarray, s: int) -> np.ndarray:
    """Reference without an FFT: var(phase means) / var(r), in float64, per image (N, H, W)."""
    r = np.asarray(r, np.float64)
    centred = r - r.mean((1, 2), keepdims=True)
    p = np.zeros_like(centred)
    for a in range(s):
        for b in range(s):
            p[:, a::s, b::s] = centred[:, a::s, b::s].mean((1, 2), keepdims=True)
    total = (centred ** 2).sum((1, 2))
    return np.where(total > 0, (p ** 2).sum((1, 2)) / np.where(total > 0, total, 1), 0.0)


def checkerboard(h: int = H, w: int = W) -> np.ndarray:
    i, j = np.mgrid[:h, :w]
    return (-1.0) ** (i + j)


@pytest.mark.parametrize("s", [2, 4, 7])
def test_any_pattern_of_period_s_has_share_one(s: int) -> None:
    tile = RNG.normal(size=(3, s, s))
    r = np.tile(tile, (1, H // s, W // s))
    np.testing.assert_allclose(stride_energy(r, s), 1.0, rtol=1e-12)
    # ... and a period-s pattern is also periodic for a multiple of s (when it divides 28)
    if 2 * s <= 14 and H % (2 * s) == 0:
        np.testing.assert_allclose(stride_energy(r, 2 * s), 1.0, rtol=1e-12)


def test_mixture_gives_its_variance_share() -> None:
    # r = a * checkerboard + b * cos(2 pi k j / W), k = 3: orthogonal, variances a^2 and b^2 / 2
    j = np.mgrid[:H, :W][1]
    for a, b in [(1.0, 1.0), (0.3, 2.0), (2.0, 0.1)]:
        r = a * checkerboard() + b * np.cos(2 * np.pi * 3 * j / W) + 5.0  # the mean is ignored
        expected = a ** 2 / (a ** 2 + b ** 2 / 2)
        np.testing.assert_allclose(stride_energy(r[None], 2), [expected], rtol=1e-10)
        # stripes of period 2 along one axis count too: (-1)^i is at frequency (14, 0)
        stripes = a * checkerboard()[:, :1].repeat(W, 1) + b * np.cos(2 * np.pi * 3 * j / W)
        np.testing.assert_allclose(stride_energy(stripes[None], 2), [expected], rtol=1e-10)


def test_smooth_image_has_almost_none() -> None:
    i, j = np.mgrid[:H, :W]
    blob = np.exp(-((i - 13.5) ** 2 + (j - 11.0) ** 2) / (2 * 3.0 ** 2))
    # not exactly 0: the blob is 1e-3 at the left edge, a jump for the periodic DFT
    assert stride_energy(blob[None], 2)[0] < 1e-8
    assert stride_energy(blob[None], 4)[0] < 1e-6


def test_white_noise_level_and_reference() -> None:
    r = RNG.normal(size=(4000, H, W))
    got = stride_energy(r, 2)
    # E_2 ~ Beta(3/2, 780/2) for Gaussian noise: mean 3/783, sd 0.0031; 4000 images -> se 5e-5
    assert abs(got.mean() - 3 / 783) < 4 * 0.0031 / np.sqrt(len(got))
    np.testing.assert_allclose(got[:50], phase_share(r[:50], 2), rtol=1e-10)
    np.testing.assert_allclose(stride_energy(r[:50], 4), phase_share(r[:50], 4), rtol=1e-10)


def test_channels_are_summed_stride_one_and_constant_give_zero() -> None:
    r = RNG.normal(size=(5, H, W, 3)).astype(np.float32)
    np.testing.assert_allclose(stride_energy(r, 2), stride_energy(r.sum(-1), 2), rtol=1e-6)
    np.testing.assert_allclose(stride_energy(r, 2), phase_share(r.sum(-1), 2), rtol=1e-5)
    assert np.all(stride_energy(r, 1) == 0)
    assert np.all(stride_energy(np.full((2, H, W), 0.7, np.float32), 2) == 0)


def test_errors() -> None:
    r = np.zeros((2, H, W), np.float32)
    with pytest.raises(ValueError, match="does not divide"):
        stride_energy(r, 3)
    with pytest.raises(ValueError, match="stride must be an int"):
        stride_energy(r, 0)
    with pytest.raises(ValueError, match="stride must be an int"):
        stride_energy(r, 2.0)
    with pytest.raises(ValueError, match="batch of heatmaps"):
        stride_energy(np.zeros((H, W)), 2)
    with pytest.raises(TypeError, match="floating"):
        stride_energy(np.zeros((1, H, W), np.int32), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        stride_energy(np.full((1, H, W), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="stride must be an int"):
        stride_shifts(-1)


def test_stride_shifts() -> None:
    assert stride_shifts(1) == ((0, 0),)
    assert stride_shifts(2) == ((0, 0), (1, 0), (0, 1), (1, 1))
    s3 = stride_shifts(3)
    assert len(s3) == 9 and {dx % 3 for dx, _ in s3} == {0, 1, 2}
    assert sorted(s3) == sorted((dx, dy) for dx in range(3) for dy in range(3))


def test_one_stride_period_cancels_a_periodic_modulation_exactly() -> None:
    # R(x) = x * p: tau^-1 R(tau x) = x * p(. + tau), so R̄ = x * mean_tau p(. + tau) where x is
    # zero on a 1-px border (nothing is lost to the zero fill).
    x = np.zeros((3, H, W, 1), np.float32)
    x[:, 2:-2, 2:-2] = RNG.uniform(size=(3, H - 4, W - 4, 1))
    m = 0.6
    p = jnp.asarray((1.0 + m * checkerboard())[None, :, :, None], jnp.float32)
    explain = lambda a: a * p
    raw = np.asarray(explain(x))
    period = np.asarray(translation_trick(explain, x, stride_shifts(2)))
    np.testing.assert_allclose(period, x, rtol=1e-6, atol=1e-7)  # mean of p over a period: 1
    # the symmetric 3 x 3 square weighs the phases 1/3 and 2/3 per axis: (1/3 (-1 + 1 - 1))^2
    square = np.asarray(translation_trick(explain, x, shift_set(1)))
    expected = x * (1.0 + m * checkerboard()[None, :, :, None] / 9)
    np.testing.assert_allclose(square, expected, rtol=1e-5, atol=1e-7)
    e_raw, e_period, e_square = (stride_energy(r, 2) for r in (raw, period, square))
    np.testing.assert_allclose(e_period, stride_energy(x, 2), rtol=1e-5)
    assert np.all(e_raw > 10 * e_square) and np.all(e_square > e_period)


def test_cnn_strided_first_layer_coverage() -> None:
    # how many kernel positions of conv1 (5 x 5, stride 2, SAME: pads 1 before, 2 after) reach
    # each input pixel: the VJP of a ones kernel, against a count by hand
    model = CNNStrided(rngs=nnx.Rngs(0))
    model.conv1.kernel[...] = jnp.ones_like(model.conv1.kernel[...])
    model.conv1.bias[...] = jnp.zeros_like(model.conv1.bias[...])
    x = jnp.ones((1, H, W, 1))
    out, vjp = jax.vjp(model.conv1, x)
    assert out.shape == (1, H // STRIDE, W // STRIDE, 16)
    (coverage,) = vjp(jnp.ones_like(out) / 16)
    per_axis = np.array([sum(1 for o in range(H // STRIDE) if 2 * o - 1 <= i <= 2 * o + 3)
                         for i in range(H)])
    np.testing.assert_allclose(np.asarray(coverage)[0, :, :, 0], np.outer(per_axis, per_axis))
    assert per_axis[2:-2].tolist() == [2, 3] * ((H - 4) // 2)  # alternate pixels: 2 and 3 taps
    assert stride_energy(np.outer(per_axis, per_axis)[None, 2:-2, 2:-2] * 1.0, 2)[0] > 0.99
    # averaged over one stride period, the interior coverage is constant
    avg = np.asarray(translation_trick(lambda a: a * coverage, np.ones((1, H, W, 1), np.float32),
                                       stride_shifts(2)))[0, 4:-4, 4:-4, 0]
    np.testing.assert_allclose(avg, 2.5 ** 2, rtol=1e-6)


def _conv_same(x: np.ndarray, k: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """float64 NumPy convolution (cross-correlation) with XLA's SAME padding, NHWC / HWIO."""
    n, h, w, _ = x.shape
    kh, kw, _, cout = k.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, i, j] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2])) + b
    return out


def test_cnn_strided_matches_float64_numpy() -> None:
    model = CNNStrided(rngs=nnx.Rngs(3))
    x = RNG.uniform(size=(2, H, W, 1)).astype(np.float32)
    p = {f"{layer}.{kind}": np.asarray(getattr(getattr(model, layer), kind)[...], np.float64)
         for layer in ("conv1", "conv2", "dense1", "dense2") for kind in ("kernel", "bias")}
    a = np.maximum(_conv_same(x.astype(np.float64), p["conv1.kernel"], p["conv1.bias"], 2), 0)
    a = np.maximum(_conv_same(a, p["conv2.kernel"], p["conv2.bias"], 1), 0)
    a = a.reshape(2, 7, 2, 7, 2, 32).mean((2, 4)).reshape(2, -1)  # 2 x 2 average pool, flatten
    a = np.maximum(a @ p["dense1.kernel"] + p["dense1.bias"], 0)
    ref = a @ p["dense2.kernel"] + p["dense2.bias"]
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=1e-4, atol=1e-5)
