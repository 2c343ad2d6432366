"""Tests of lrpjax.translation.translation_trick: R̄(x) = 1/|T| sum_τ τ^{-1} R(τx)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax.composites import Alpha1Beta0
from lrpjax.lab.models import MLP
from lrpjax.translation import DEFAULT_SHIFTS, shift_set, translate, translation_trick

RNG = np.random.default_rng(0)


def bordered(n: int = 3, h: int = 10, w: int = 12, c: int = 1, border: int = 2) -> np.ndarray:
    """Random images (N, H, W, C) in [0, 1] with ``border`` rows/columns of zeros."""
    x = np.zeros((n, h, w, c), np.float32)
    x[:, border:h - border, border:w - border] = RNG.uniform(
        size=(n, h - 2 * border, w - 2 * border, c))
    return x


def square(a: jax.Array) -> jax.Array:
    """A translation-equivariant explain: R(x) = x^2 (pixel-wise)."""
    return a * a


def np_shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """NumPy reference: out[:, i, j] = x[:, i - dy, j - dx], zero fill."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[:, i, j] = x[:, i - dy, j - dx]
    return out


@pytest.mark.parametrize("dx,dy", [(1, 0), (-2, 1), (0, -3), (3, 2)])
def test_translate_matches_reference(dx: int, dy: int) -> None:
    x = RNG.normal(size=(2, 5, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(translate(jnp.asarray(x), dx, dy)), np_shift(x, dx, dy))


def test_zero_shift_only_is_explain() -> None:
    x = RNG.uniform(size=(4, 8, 8, 1)).astype(np.float32)
    explain = lambda a: jnp.sin(3 * a) * jnp.roll(a, 1, axis=1)
    got = translation_trick(explain, x, ((0, 0),))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(explain(jnp.asarray(x))))
    assert np.asarray(translation_trick(explain, x, 0)).tolist() == np.asarray(got).tolist()


@pytest.mark.parametrize("shifts", [DEFAULT_SHIFTS, 1, 2, ((2, -1), (-1, 2))])
def test_equivariant_explain_on_zero_border_is_exact(shifts) -> None:
    x = bordered(border=2)
    got = translation_trick(square, x, shifts)
    np.testing.assert_allclose(np.asarray(got), x * x, rtol=1e-6, atol=0)


def test_border_content_is_lost_with_zero_fill() -> None:
    # content on the edge: tau = move right by 1 drops the last column, tau^-1 cannot restore it
    x = RNG.uniform(size=(2, 5, 6, 1)).astype(np.float32)
    identity = lambda a: a
    one = np.asarray(translation_trick(identity, x, ((1, 0),)))
    expected = x.copy()
    expected[:, :, -1] = 0
    np.testing.assert_array_equal(one, expected)
    both = np.asarray(translation_trick(identity, x, ((1, 0), (0, 0))))
    np.testing.assert_allclose(both, (x + expected) / 2, rtol=1e-6)
    # a general explain: the mean of NumPy-shifted heatmaps
    shifts = ((-1, 0), (2, 1), (0, -2))
    ref = np.mean([np_shift(np.asarray(square(np_shift(x, dx, dy))), -dx, -dy)
                   for dx, dy in shifts], axis=0)
    np.testing.assert_allclose(np.asarray(translation_trick(square, x, shifts)), ref, rtol=1e-6)


def test_conservation_of_the_averaged_model() -> None:
    # linear f(x) = sum w x and R = w * x (zero on fill pixels): sum R̄ = f̄(x) = mean_τ f(τx)
    x = RNG.uniform(size=(3, 7, 7, 1)).astype(np.float32)  # content up to the edge
    w = jnp.asarray(RNG.normal(size=(7, 7, 1)).astype(np.float32))
    f = lambda a: (a * w).sum(axis=(1, 2, 3))
    shifts = shift_set(2)
    got = np.asarray(translation_trick(lambda a: a * w, x, shifts)).sum(axis=(1, 2, 3))
    fbar = np.mean([np.asarray(f(translate(jnp.asarray(x), dx, dy))) for dx, dy in shifts], 0)
    np.testing.assert_allclose(got, fbar, rtol=1e-5)


def test_target_is_fixed_and_tiled() -> None:
    x = bordered(n=3, border=2)
    t = np.array([2, 0, 1])
    seen = []

    def explain(a, target):
        seen.append(target.shape)
        return a * (1.0 + jnp.asarray(target, a.dtype))[:, None, None, None]

    got = translation_trick(explain, x, DEFAULT_SHIFTS, target=t)
    assert seen == [(len(DEFAULT_SHIFTS) * 3,)]  # one batched call, the target per copy
    np.testing.assert_allclose(np.asarray(got), x * (1.0 + t)[:, None, None, None], rtol=1e-6)
    scalar = translation_trick(explain, x, 1, target=2)
    np.testing.assert_allclose(np.asarray(scalar), 3 * x, rtol=1e-6)


def test_with_lrp_target_or_closure_agree() -> None:
    model = MLP(nnx.Rngs(0))
    x = bordered(n=2, h=28, w=28, border=3)
    t = np.array([3, 7])
    composite = Alpha1Beta0()
    with_target = translation_trick(
        lambda a, tt: lrpjax.relevance(model, a, composite=composite, target=tt), x, target=t)
    closure = translation_trick(
        lambda a: lrpjax.relevance(model, a, composite=composite, target=t), x)
    np.testing.assert_allclose(np.asarray(with_target), np.asarray(closure), rtol=1e-5, atol=1e-7)
    zero = translation_trick(lambda a, tt: lrpjax.relevance(model, a, composite=composite,
                                                             target=tt), x, ((0, 0),), target=t)
    np.testing.assert_allclose(np.asarray(zero),
                               np.asarray(lrpjax.relevance(model, x, composite=composite, target=t)),
                               rtol=1e-6, atol=1e-8)


def test_jit_and_vmap() -> None:
    x = RNG.uniform(size=(4, 2, 9, 9, 1)).astype(np.float32)
    eager = np.stack([np.asarray(translation_trick(square, xi, 1)) for xi in x])
    jitted = jax.jit(lambda a: translation_trick(square, a, 1))(x[0])
    np.testing.assert_allclose(np.asarray(jitted), eager[0], rtol=1e-6)
    mapped = jax.vmap(lambda a: translation_trick(square, a, 1))(x)
    np.testing.assert_allclose(np.asarray(mapped), eager, rtol=1e-6)
    t = np.array([1, 2])
    tgt = jax.jit(lambda a, tt: translation_trick(lambda b, s: b * s[:, None, None, None], a,
                                                  target=tt))(x[0], t)
    np.testing.assert_allclose(np.asarray(tgt), np.asarray(translation_trick(
        lambda b, s: b * s[:, None, None, None], x[0], target=t)), rtol=1e-6)


def test_shift_set() -> None:
    assert len(shift_set(0)) == 1 and len(shift_set(1)) == 9 and len(shift_set(2)) == 25
    assert set(shift_set(1, "cross")) == set(DEFAULT_SHIFTS)
    assert len(shift_set(2, "cross")) == 9
    with pytest.raises(ValueError, match="radius"):
        shift_set(-1)
    with pytest.raises(ValueError, match="pattern"):
        shift_set(1, "disk")


def test_errors() -> None:
    x = bordered()
    with pytest.raises(ValueError, match="batch of images"):
        translation_trick(square, np.zeros((5, 5), np.float32))
    with pytest.raises(TypeError, match="floating"):
        translation_trick(square, np.zeros((1, 5, 5), np.int32))
    with pytest.raises(ValueError, match=r"\(dx, dy\) pairs"):
        translation_trick(square, x, ((1, 0, 0),))
    with pytest.raises(ValueError, match=r"\(dx, dy\) pairs"):
        translation_trick(square, x, ())
    with pytest.raises(ValueError, match="integers"):
        translation_trick(square, x, ((0.5, 0),))
    with pytest.raises(ValueError, match="out of its"):
        translation_trick(square, x, ((12, 0),))
    with pytest.raises(ValueError, match="radius"):
        translation_trick(square, x, -1)
    with pytest.raises(ValueError, match="shaped like its input"):
        translation_trick(lambda a: a.sum(-1), x)
    with pytest.raises(ValueError, match="one entry per image"):
        translation_trick(lambda a, t: a, x, target=np.array([0, 1]))
