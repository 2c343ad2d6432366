"""Tests for lrpjax.evaluate: pixel flipping / AOPC (Samek et al. 2017) and continuity
(Montavon et al. 2018, Sec. 7.1), each on a case whose answer is known in closed form.
Region perturbation, class scores and the bootstrap: tests/test_selectivity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpjax.evaluate import (
    continuity,
    curve_aopc,
    curve_auc,
    flip_order,
    patch_relevance,
    pixel_flipping,
    shift_image,
    shift_protocol,
    translations,
)

RNG = np.random.default_rng(0)


def linear(w: np.ndarray):
    """f(x) = sum_i w_i x_i per image, and its gradient x input relevance R_i = w_i x_i."""
    wj = jnp.asarray(w)
    return (lambda x: (x * wj).sum(axis=(1, 2, 3))), (lambda x: x * wj)


def patch_sums(a: np.ndarray, p: int) -> np.ndarray:
    """Reference patch sums (H/p * W/p,) of one (H, W, C) array, by explicit loops."""
    h, w, _ = a.shape
    return np.array([a[i:i + p, j:j + p].sum() for i in range(0, h, p) for j in range(0, w, p)])


# ----------------------------------------------------------------------------- helpers
def test_patch_relevance_and_order():
    r = RNG.normal(size=(2, 8, 12, 3)).astype(np.float32)
    pr = np.asarray(patch_relevance(jnp.asarray(r), 4)).reshape(2, -1)
    np.testing.assert_allclose(pr[1], patch_sums(r[1], 4), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(flip_order(jnp.asarray(r), 4)[0], np.argsort(-pr[0]))
    ties = jnp.zeros((1, 4, 4, 1))  # equal relevance: lower index first
    np.testing.assert_array_equal(flip_order(ties, 2)[0], [0, 1, 2, 3])


def test_auc_aopc_hand_computed():
    c = jnp.array([[1.0, 0.5, 0.25, 0.0]])
    # AUC = 1/3 * ((1+.5)/2 + (.5+.25)/2 + (.25+0)/2) = 1.25/3; AOPC = (0+.5+.75+1)/4
    np.testing.assert_allclose(curve_auc(c), [1.25 / 3], rtol=1e-6)
    np.testing.assert_allclose(curve_aopc(c), [0.5625], rtol=1e-6)
    # 2x2 image, 1x1 patches, f = sum, R = x: flips 4, 3, 2, 1 -> curve 10, 6, 3, 1, 0
    x = jnp.array([4.0, 3.0, 1.0, 2.0]).reshape(1, 2, 2, 1)
    res = pixel_flipping(lambda z: z.sum(axis=(1, 2, 3)), x, x, patch=1)
    np.testing.assert_allclose(res.curves[0], [10, 6, 3, 1, 0], atol=1e-6)
    np.testing.assert_array_equal(res.order[0], [0, 1, 3, 2])
    np.testing.assert_allclose(res.aopc, [(0 + 4 + 7 + 9 + 10) / 5], rtol=1e-6)
    np.testing.assert_allclose(res.auc, [(16 + 9 + 4 + 1) / 2 / 4], rtol=1e-6)
    np.testing.assert_allclose(res.mean_curve, res.curves[0])
    assert not bool(res.nan_mask.any())


# ----------------------------------------------------------------------------- selectivity
def test_linear_model_optimal_order_and_closed_form():
    w = RNG.normal(size=(16, 16, 1)).astype(np.float32)  # positive and negative weights
    x = RNG.uniform(size=(1, 16, 16, 1)).astype(np.float32)  # x >= 0, black = 0
    f, explain = linear(w)
    s = patch_sums(x[0] * w, 4)
    # one call, three relevance maps for the same image: w*x (optimal), -(w*x), w alone
    three = pixel_flipping(f, np.repeat(x, 3, 0), np.concatenate([x * w, -(x * w), w[None]]))
    best, rev, by_w = (jax.tree.map(lambda a, i=i: np.asarray(a)[i:i + 1], three)
                       for i in range(3))
    np.testing.assert_array_equal(best.order[0], np.argsort(-s))
    # explain inside the jitted loop on 1 image vs precomputed relevance in a batch of 3: the
    # same sums, possibly reordered by XLA (float32: rtol 1e-6 of the curve's scale)
    np.testing.assert_allclose(pixel_flipping(f, x, explain=explain).curves, best.curves,
                               rtol=1e-6, atol=1e-6 * float(np.abs(best.curves).max()))
    rand = pixel_flipping(f, np.repeat(x, 60, 0), order="random", key=jax.random.key(1))
    assert len({tuple(o) for o in np.asarray(rand.order)}) == 60  # one permutation per image
    assert np.all(np.asarray(rand.auc) >= float(best.auc[0]) - 1e-6)
    assert np.mean(np.asarray(rand.auc) > float(best.auc[0]) + 1e-3) > 0.9
    assert float(rev.auc[0]) > float(best.auc[0]) + 1e-3
    assert float(by_w.auc[0]) >= float(best.auc[0]) - 1e-6
    assert float(best.aopc[0]) >= float(np.asarray(rand.aopc).max()) - 1e-6
    f0 = float((x * w).sum())
    for res in (best, rand, rev, by_w):  # curve after flipping S = f(x) - sum_{i in S} w_i x_i
        for curve, order in zip(np.asarray(res.curves), np.asarray(res.order)):
            expected = f0 - np.concatenate([[0.0], np.cumsum(s[order])])
            np.testing.assert_allclose(curve, expected, atol=1e-5)


def test_steps_and_batch_size_one():
    w = RNG.normal(size=(8, 8, 1)).astype(np.float32)
    x = RNG.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    f, explain = linear(w)
    full = pixel_flipping(f, x, explain=explain, batch_size=2)
    one = pixel_flipping(f, x, explain=explain, batch_size=1)
    np.testing.assert_allclose(one.curves, full.curves, atol=1e-6)
    np.testing.assert_array_equal(one.order, full.order)
    single = pixel_flipping(f, x[:1], explain(x[:1]), steps=2)
    assert single.curves.shape == (1, 3) and single.order.shape == (1, 2)
    np.testing.assert_allclose(single.curves[0], full.curves[0, :3], atol=1e-6)


def test_recompute_linear_equals_static():
    w = RNG.normal(size=(12, 12, 1)).astype(np.float32)
    x = RNG.uniform(size=(4, 12, 12, 1)).astype(np.float32)
    f, explain = linear(w)
    static = pixel_flipping(f, x, explain=explain, patch=3)
    greedy = pixel_flipping(f, x, explain=explain, patch=3, recompute=True)
    np.testing.assert_array_equal(greedy.order, static.order)
    np.testing.assert_allclose(greedy.curves, static.curves, atol=1e-5)


def test_recompute_follows_greedy_definition():
    # f = max over 2x2 patch sums; gradient x input puts all relevance on the arg-max patch,
    # so the static order is [argmax, 0, 1, ...] while the greedy one follows the patch sums.
    x = RNG.uniform(0.1, 1.0, size=(2, 6, 6, 1)).astype(np.float32)

    def f(z):
        return patch_relevance(z, 2).reshape(z.shape[0], -1).max(axis=1)

    def explain(z):
        return jax.grad(lambda a: f(a).sum())(z) * z

    static = pixel_flipping(f, x, explain=explain, patch=2)
    greedy = pixel_flipping(f, x, explain=explain, patch=2, recompute=True)
    explain = jax.jit(explain)
    for i in range(2):
        s = patch_sums(x[i], 2)
        top = int(np.argmax(s))
        np.testing.assert_array_equal(static.order[i], [top] + [j for j in range(9) if j != top])
        xk, flipped, ref = x[i:i + 1].copy(), np.zeros(9, bool), []  # greedy by hand
        for _ in range(9):
            pr = np.where(flipped, -np.inf, np.asarray(patch_relevance(explain(xk), 2)).ravel())
            j = int(np.argmax(pr))
            flipped[j] = True
            ref.append(j)
            xk[0, 2 * (j // 3):2 * (j // 3) + 2, 2 * (j % 3):2 * (j % 3) + 2] = 0.0
        np.testing.assert_array_equal(greedy.order[i], ref)
        np.testing.assert_array_equal(ref, np.argsort(-s))
        np.testing.assert_allclose(greedy.curves[i, 1:-1], np.sort(s)[::-1][1:], rtol=1e-5)
    assert np.all(np.asarray(greedy.auc) < np.asarray(static.auc))


# ----------------------------------------------------------------------------- replacements
def test_replacement_mean_and_constant():
    w = RNG.normal(size=(8, 8, 2)).astype(np.float32)
    x = RNG.uniform(size=(2, 8, 8, 2)).astype(np.float32)
    mean = RNG.uniform(size=(8, 8, 2)).astype(np.float32)
    f, explain = linear(w)
    res = pixel_flipping(f, x, explain=explain, replacement="mean", data_mean=mean)
    for i in range(2):
        first = int(res.order[i, 0])
        delta = patch_sums((x[i] - mean) * w, 4)[first]
        np.testing.assert_allclose(res.curves[i, 1], (x[i] * w).sum() - delta, atol=1e-5)
        np.testing.assert_allclose(res.curves[i, -1], (mean * w).sum(), atol=1e-5)
    const = pixel_flipping(f, x, explain=explain, replacement=0.5)
    np.testing.assert_allclose(const.curves[:, -1], [(0.5 * w).sum()] * 2, atol=1e-5)
    with pytest.raises(ValueError, match="data_mean"):
        pixel_flipping(f, x, explain=explain, replacement="mean")


def test_black_perturbs_all_channels():
    x = jnp.ones((1, 8, 8, 3))
    res = pixel_flipping(lambda z: z.sum(axis=(1, 2, 3)), x, x, data_min=-1.0)
    # every flip replaces 4x4 pixels x 3 channels: 1 -> -1 changes the sum by -2 * 48
    np.testing.assert_allclose(res.curves[0], 192.0 - 96.0 * np.arange(5), atol=1e-5)


def test_noise_per_pixel_channel_and_image():
    x = np.full((8, 8, 8, 3), 0.5, np.float32)  # eight identical images, C = 3
    kw = {"relevance": x, "replacement": "noise", "key": jax.random.key(3), "data_min": -1.0,
          "data_max": 2.0}

    def probe(z):  # image i reports statistic i % 4 of itself
        stats = jnp.stack([z[..., 0].std(axis=(1, 2)), z.std(axis=3).mean(axis=(1, 2)),
                           z.min(axis=(1, 2, 3)), z.max(axis=(1, 2, 3))], axis=1)
        return stats[jnp.arange(z.shape[0]), jnp.arange(z.shape[0]) % 4]

    last = np.asarray(pixel_flipping(probe, x, **kw).curves[:, -1]).reshape(2, 4)
    assert np.all(last[:, 0] > 0.5)  # varies over pixels: U[-1, 2] has std 3/sqrt(12) = 0.87
    assert np.all(last[:, 1] > 0.3)  # varies over channels
    assert np.all(last[:, 2] >= -1.0) and np.all(last[:, 3] <= 2.0)
    assert len(set(last.ravel().tolist())) == 8
    mean = pixel_flipping(lambda z: z.mean(axis=(1, 2, 3)), x, **kw, batch_size=1)
    assert len(set(np.asarray(mean.curves[:, -1]).tolist())) == 8  # differs per image
    again = pixel_flipping(lambda z: z.mean(axis=(1, 2, 3)), x, **kw, batch_size=3)
    np.testing.assert_allclose(again.curves, mean.curves, rtol=1e-6)  # same for any batch_size


# ----------------------------------------------------------------------------- errors / NaN
def test_errors():
    x = jnp.ones((2, 8, 8, 1))
    f, _ = linear(np.ones((8, 8, 1), np.float32))
    cases = [
        ({"relevance": jnp.ones((2, 8, 8, 3))}, "differs from x shape"),
        ({"relevance": x, "patch": 3}, "does not divide"),
        ({"relevance": x.at[1, 0, 0, 0].set(jnp.nan)}, "relevance contains NaN"),
        ({"order": "random"}, "needs a PRNG key"),
        ({"relevance": x, "replacement": "noise"}, "needs a PRNG key"),
        ({"relevance": x, "replacement": "white"}, "unknown replacement"),
        ({"relevance": x, "order": "lowest"}, "unknown order"),
        ({"relevance": x, "steps": 5}, "steps must be"),
        ({}, "exactly one of"),
        ({"relevance": x, "recompute": True}, "recompute=True needs explain"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            pixel_flipping(f, x, **kwargs)
    with pytest.raises(ValueError, match="must return shape"):
        pixel_flipping(lambda z: z.sum(axis=(2, 3)), x, x)


def test_nan_policy():
    x = RNG.uniform(size=(3, 4, 4, 1)).astype(np.float32)
    x[1] += 10.0

    def f(z):  # NaN for the bright image once anything is flipped
        s = z.sum(axis=(1, 2, 3))
        return jnp.where((s > 100.0) & (s < 170.0), jnp.nan, s)

    with pytest.raises(ValueError, match=r"f returned NaN or inf for 1 image\(s\), indices \[1\]"):
        pixel_flipping(f, x, x, patch=2)
    res = pixel_flipping(f, x, x, patch=2, nan_policy="mask")
    np.testing.assert_array_equal(res.nan_mask, [False, True, False])
    assert np.isnan(res.auc[1]) and np.isfinite(np.asarray(res.auc)[[0, 2]]).all()
    np.testing.assert_allclose(res.mean_curve, res.curves[np.array([0, 2])].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="explain returned NaN"):
        pixel_flipping(f, x, explain=lambda z: jnp.log(z - 0.5), patch=2, recompute=True)


# ----------------------------------------------------------------------------- continuity
def test_shift_image_integer_zero_and_subpixel():
    x = jnp.asarray(RNG.uniform(size=(2, 7, 9, 3)).astype(np.float32))
    np.testing.assert_array_equal(shift_image(x, 0, 0), x)
    ref = jnp.roll(x, (-2, 3), axis=(1, 2)).at[:, -2:].set(0.0).at[:, :, :3].set(0.0)
    np.testing.assert_array_equal(shift_image(x, 3, -2), ref)
    half = shift_image(x, 0.5, 0.0)
    np.testing.assert_allclose(half[:, :, 1:], (x[:, :, 1:] + x[:, :, :-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(half[:, :, 0], x[:, :, 0] / 2, atol=1e-6)
    assert not bool(shift_image(x, 9, 0).any())  # moved out of the field
    t = translations(x, [[1, 0], [0, 2]])
    assert t.shape == (2, 2, 7, 9, 3)
    # vmapped over shifts vs one call: float32 reordering of the same einsum allowed
    np.testing.assert_allclose(t[:, 1], shift_image(x, 0, 2), rtol=1e-6, atol=1e-7)


def test_continuity_scaled_identity_exact():
    x = jnp.asarray(RNG.uniform(size=(2, 6, 6, 1)).astype(np.float32))
    pert = translations(x, [-1.0, 0.5, 2.0])
    res = continuity(lambda z: 2.5 * z, x, pert)
    pts = np.concatenate([np.asarray(x)[:, None], np.asarray(pert)], 1).reshape(2, 4, -1)
    for i in range(2):  # c ||dx||_1 / ||dx||_2, maximised over all pairs
        exp = max(2.5 * np.abs(pts[i, a] - pts[i, b]).sum() / np.linalg.norm(pts[i, a] - pts[i, b])
                  for a in range(4) for b in range(a + 1, 4))
        np.testing.assert_allclose(res.scores[i], exp, rtol=1e-5)
    assert res.max == pytest.approx(float(np.max(res.scores)))
    ref = continuity(lambda z: 2.5 * z, x, pert, pairs="reference")
    assert np.all(np.asarray(ref.scores) <= np.asarray(res.scores) + 1e-6)


def test_continuity_linear_map_bound_and_attained():
    # R(x) = A x: ||A d||_1 = sum_i |a_i . d| <= (sum_i ||a_i||_2) ||d||_2  (Cauchy-Schwarz per row)
    # and ||A d||_1 <= sqrt(D) ||A d||_2 <= sqrt(D) sigma_max(A) ||d||_2.
    d = 16
    a = RNG.normal(size=(d, d)).astype(np.float32)

    def explain(z):
        return (z.reshape(z.shape[0], d) @ jnp.asarray(a).T).reshape(z.shape)

    x = jnp.asarray(RNG.uniform(size=(3, 4, 4, 1)).astype(np.float32))
    pert = x[:, None] + 0.3 * RNG.normal(size=(3, 20, 4, 4, 1)).astype(np.float32)
    res = continuity(explain, x, pert)
    bound = min(np.linalg.norm(a, axis=1).sum(), np.sqrt(d) * np.linalg.norm(a, 2))
    assert 0 < res.max <= bound * (1 + 1e-5)
    # rank one A = u v^T: the bound ||u||_1 ||v||_2 is attained along d = t v
    u, v = RNG.normal(size=d), RNG.normal(size=d)
    a = np.outer(u, v).astype(np.float32)
    along = x[:, None] + jnp.asarray(np.array([0.1, -0.7]))[None, :, None, None, None] * \
        jnp.asarray(v.reshape(4, 4, 1), jnp.float32)
    res = continuity(explain, x, along)
    np.testing.assert_allclose(res.scores, np.abs(u).sum() * np.linalg.norm(v), rtol=1e-4)


def test_shift_protocol():
    x = np.zeros((8, 8, 1), np.float32)
    x[2:6, 1:3] = 1.0  # a bar on the left half
    shifts = jnp.arange(0.0, 5.0)

    def f(z):
        return z[:, :, 4:].sum(axis=(1, 2, 3))  # evidence in the right half

    res = shift_protocol(f, lambda z: 2.0 * z, jnp.asarray(x), shifts)
    assert res.relevance.shape == (5, 8, 8, 1) and res.quadrants.shape == (5, 4)
    np.testing.assert_allclose(res.quadrants.sum(1), res.relevance.sum((1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(res.quadrants[0], [8.0, 0.0, 8.0, 0.0])  # left quadrants
    np.testing.assert_allclose(res.quadrants[4], [0.0, 8.0, 0.0, 8.0])  # moved to the right
    np.testing.assert_allclose(res.scores, [0, 0, 4, 8, 8])
    # one-pixel move of a 4x2 bar: dx has 8 entries of +-1 -> 2 * 8 / sqrt(8)
    np.testing.assert_allclose(res.ratios, 2.0 * np.sqrt(8.0), rtol=1e-5)
    assert res.continuity == pytest.approx(2.0 * np.sqrt(8.0), rel=1e-5)
    with pytest.raises(ValueError, match="one image"):
        shift_protocol(f, lambda z: z, jnp.asarray(x)[None], shifts)
