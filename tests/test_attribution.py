"""SmoothGrad and Integrated Gradients: completeness, closed forms, sigma -> 0, jit/vmap, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_nets import SpecNet, linen_model, random_net

import lrpjax
from lrpjax import attribution as A
from lrpjax import composites as C
from lrpjax.lab import models


def _reference_cnn():
    """The experiments' CNN (lrpjax.lab.models.CNN) with random weights and random biases."""
    model = models.CNN(rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, (nnx.Linear, nnx.Conv)):
            m.bias[...] = jnp.asarray(rng.normal(0, 0.1, m.bias.shape), jnp.float32)
    return model


def test_ig_completeness_reference_cnn():
    model = _reference_cnn()
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 28, 28, 1)), jnp.float32)
    ig, delta = A.integrated_gradients(model, x, steps=256, return_delta=True)
    y, y0 = np.asarray(model(x)), np.asarray(model(jnp.zeros_like(x)))
    c = y.argmax(axis=1)
    gap = y[np.arange(2), c] - y0[np.arange(2), c]
    total = np.asarray(ig).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(np.asarray(delta), total - gap, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(total - gap) <= 1e-3), (total, gap)


def _quadratic(Q):
    """f_c(x) = x^T Q_c x (symmetric Q_c): the gradient is linear along the path."""
    return lambda x: jnp.einsum("ni,cij,nj->nc", x, Q, x)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_middle", "gausslegendre"])
def test_ig_exact_on_quadratic_and_converges_on_tanh(method):
    rng = np.random.default_rng(2)
    Q = rng.normal(size=(3, 5, 5))
    Q = jnp.asarray(Q + Q.transpose(0, 2, 1), jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    base = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    # baseline x': grad f = 2 Q a on a = x' + t (x - x'); int_0^1 = Q (x + x')
    ig = A.integrated_gradients(_quadratic(Q), x, baseline=base, steps=4, target=1,
                                method=method)
    exact = (x - base) * ((x + base) @ Q[1])
    np.testing.assert_allclose(ig, exact, rtol=1e-5, atol=1e-5)
    W = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    _, delta = A.integrated_gradients(lambda a: jnp.tanh(a @ W), x, steps=64, method=method,
                                      return_delta=True)
    assert np.abs(np.asarray(delta)).max() <= 1e-3


def test_ig_linear_closed_form_baselines_and_frontends():
    lin = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
    W = np.asarray(lin.kernel[...])
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    for base in (0.5, rng.normal(size=(6,)), rng.normal(size=(4, 6))):
        ig = A.integrated_gradients(lin, x, baseline=base, steps=2, target=2)
        np.testing.assert_allclose(ig, (np.asarray(x) - base) * W[:, 2], rtol=1e-5, atol=1e-6)
    c = jax.jit(lambda a: A.integrated_gradients(lambda v: lin(v), a, steps=2, target=2))(x)
    np.testing.assert_allclose(c, np.asarray(x) * W[:, 2], rtol=1e-5, atol=1e-6)  # callable, jit
    rng = np.random.default_rng(4)
    net, shape = random_net(rng, "cnn")
    xs = jnp.asarray(rng.uniform(0, 1, size=(2, *shape)), jnp.float32)
    linen, variables = linen_model(net)
    kw = {"steps": 16, "target": jnp.array([1, 3])}
    a = A.integrated_gradients(SpecNet(net), xs, **kw)
    b = A.integrated_gradients(linen, xs, variables=variables, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_ig_jit_vmap_and_chunking():
    rng = np.random.default_rng(5)
    net, shape = random_net(rng, "cnn")
    model = SpecNet(net)
    x = jnp.asarray(rng.uniform(0, 1, size=(4, *shape)), jnp.float32)
    eager = A.integrated_gradients(model, x, steps=32, target=0)
    chunked = A.integrated_gradients(model, x, steps=32, target=0, batch=16)
    groups = x.reshape(2, 2, *shape)
    vm = jax.vmap(lambda a: A.integrated_gradients(model, a, steps=32, target=0))(groups)
    for other in (chunked, vm.reshape(x.shape)):
        np.testing.assert_allclose(other, eager, rtol=1e-4, atol=1e-6)


def _explain_fns():
    rng = np.random.default_rng(6)
    net, shape = random_net(rng, "cnn")
    model = SpecNet(net)
    x = jnp.asarray(rng.uniform(0, 1, size=(3, *shape)), jnp.float32)
    t = jnp.array([0, 1, 2])  # fixed targets: every noisy copy explains the same class
    comp = C.EpsilonGammaBox(0.0, 1.0)  # built once: each instance is a new jit cache key
    return x, lambda a: lrpjax.relevance(model, a, composite=comp, target=t)


def test_smoothgrad_sigma_zero_is_the_method_and_batch_independent():
    x, lrp = _explain_fns()
    key = jax.random.key(0)
    sg0 = A.smoothgrad(lrp, x, key=key, n=3, sigma=0.0)
    np.testing.assert_allclose(sg0, lrp(x), rtol=1e-5, atol=1e-7)
    sg = A.smoothgrad(lrp, x, key=key, n=6, sigma=0.2, batch=3)
    span = np.ptp(np.asarray(x).reshape(3, -1), axis=1).reshape(3, 1, 1, 1)
    lrp_jit = jax.jit(lrp)  # traced like smoothgrad's draws (eager calls check the z^B box)
    loop = np.mean([lrp_jit(x + 0.2 * span * jax.random.normal(jax.random.fold_in(key, i), x.shape))
                    for i in range(6)], axis=0)  # draw i uses fold_in(key, i), as documented
    np.testing.assert_allclose(sg, loop, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(sg - lrp(x)))) > 1e-4  # the noise does something
    # jit and vmap (a cheap explain; the data range is per sample, so vmap == loop)
    f = jax.jit(lambda a: A.smoothgrad(lambda b: jnp.sin(b) ** 2, a, key=key, n=4, sigma=0.1))
    groups = x.reshape(3, 1, *x.shape[1:])
    vm = jax.jit(jax.vmap(f))(groups)
    np.testing.assert_allclose(vm, jnp.stack([f(g) for g in groups]), rtol=1e-5, atol=1e-7)


def test_smoothgrad_noise_scale_is_relative_to_the_data_range():
    x = jnp.stack([jnp.linspace(0.0, 1.0, 16), jnp.linspace(-2.0, 2.0, 16)])  # ranges 1 and 4
    sq = A.smoothgrad(lambda a: (a - x) ** 2, x, key=jax.random.key(1), n=4000, sigma=0.1)
    np.testing.assert_allclose(np.asarray(sq).mean(axis=1), [0.1**2, 0.4**2], rtol=0.05)
    fixed = A.smoothgrad(lambda a: (a - x) ** 2, x, key=jax.random.key(1), n=4000, sigma=0.1,
                         data_range=(0.0, 2.0))
    np.testing.assert_allclose(np.asarray(fixed).mean(axis=1), [0.2**2, 0.2**2], rtol=0.05)


def test_clear_errors():
    x = jnp.ones((2, 4))
    key = jax.random.key(0)
    lrp = jnp.sin
    lin = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
    xl = jnp.ones((2, 6))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        A.smoothgrad(lrp, x, key=key, n=0)
    with pytest.raises(ValueError, match="batch must be"):
        A.smoothgrad(lrp, x, key=key, n=2, batch=0)
    with pytest.raises(ValueError, match="sigma"):
        A.smoothgrad(lrp, x, key=key, sigma=-0.1)
    with pytest.raises(TypeError, match="callable"):
        A.smoothgrad(None, x, key=key)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        A.integrated_gradients(lin, xl, steps=0)
    with pytest.raises(ValueError, match="steps >= 2"):
        A.integrated_gradients(lin, xl, steps=1)
    with pytest.raises(ValueError, match="unknown method"):
        A.integrated_gradients(lin, xl, method="simpson")
    with pytest.raises(ValueError, match="baseline of shape"):
        A.integrated_gradients(lin, xl, baseline=jnp.zeros(5))
    with pytest.raises(ValueError, match="out of range"):
        A.integrated_gradients(lin, xl, target=3)
    assert A.integrated_gradients(lin, xl, steps=1, method="riemann_middle").shape == (2, 6)
