"""layer_relevance / relevance_sums: the arrays at each layer, checked like relevance()."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax.layerwise import layer_relevance, relevance_sums


class Two(nnx.Module):
    """y = W2 relu(W1 x + b1): the first layer's terms a_j w_jk are +-1e33 and cancel."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray) -> None:
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(2, 1, rngs=rngs)
        self.fc2 = nnx.Linear(1, 2, use_bias=False, rngs=rngs)
        self.fc1.kernel[...] = jnp.asarray(w1, jnp.float32)
        self.fc1.bias[...] = jnp.asarray(b1, jnp.float32)
        self.fc2.kernel[...] = jnp.ones((1, 2), jnp.float32)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


def test_overflow_raises_naming_the_layer_where_it_began():
    """R_j = a_j w_jk R_k / eps with a_j w_jk = 1e33 and eps = 1e-6 is 1e39 > float32's max:
    the error names fc1's input (fc2 and fc1's output are finite), never a silent NaN."""
    model = Two(np.array([[1e33], [-1e33]]), np.array([1.0]))
    x = jnp.ones((1, 2))
    comp = C.Uniform(R.Epsilon(1e-6, zero_bias=True))
    with pytest.raises(ValueError, match="overflowed"):
        lrpjax.relevance(model, x, composite=comp, target=0)
    with pytest.raises(ValueError, match=r"relevance at the input of 'fc1' is not finite "
                                         r"although x and f\(x\) are"):
        layer_relevance(model, x, composite=comp, target=0)
    with pytest.raises(ValueError, match="input of 'fc1'"):
        relevance_sums(model, x, composite=comp, target=0)


def test_rows_are_exact_and_agree_with_relevance():
    """Small weights: the rows are the epsilon rule's closed form and the heatmap is relevance()'s."""
    w1, b1 = np.array([[2.0], [-0.5]]), np.array([0.25])
    model = Two(w1, b1)
    x = np.array([[1.0, 2.0]])
    eps = 0.1
    comp = C.Uniform(R.Epsilon(eps))
    rows, heat = layer_relevance(model, jnp.asarray(x, jnp.float32), composite=comp, target=1)
    z1 = x @ w1 + b1                               # 1.25, relu keeps it
    y = z1 @ np.ones((1, 2))                        # both logits 1.25
    r_fc1_out = z1 * y[:, 1:] / (y[:, 1:] + eps)    # fc2: R_j = a_j w_jk R_k / (z_k + eps)
    r_x = x * w1[:, 0] * r_fc1_out / (z1 + eps)
    by_path = {r.path: r for r in rows}
    np.testing.assert_allclose(by_path["fc2"].r_out, [[0.0, 1.25]], rtol=1e-6)
    np.testing.assert_allclose(by_path["fc2"].r_in[0], r_fc1_out, rtol=1e-6)
    np.testing.assert_allclose(by_path["fc1"].r_in[0], r_x, rtol=1e-6)
    np.testing.assert_allclose(heat, r_x, rtol=1e-6)
    np.testing.assert_allclose(heat, lrpjax.relevance(model, jnp.asarray(x, jnp.float32),
                                                      composite=comp, target=1), rtol=1e-6)


def test_bad_targets_and_half_precision():
    model = Two(np.array([[2.0], [-0.5]]), np.array([0.25]))
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match="out of range"):
        layer_relevance(model, x, composite=C.Uniform(R.Epsilon()), target=2)
    rows, heat = layer_relevance(model, x.astype(jnp.float16), composite=C.Uniform(R.Epsilon()),
                                 target=0)
    assert heat.dtype == np.float32 and all(r.r_out.dtype == np.float32 for r in rows)
