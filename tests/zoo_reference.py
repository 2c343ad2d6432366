"""A float64 NumPy reference LRP for the model zoo (tests/zoo.py), written from the equations.

No JAX anywhere in this file. A model's reference is a forward function ``ref(T, params, x)``
written against a small :class:`Tape`: every op computes its value in NumPy and records how it
hands relevance back to its operands. :func:`lrp` runs the forward, puts one-hot(target) x
logit on the output and walks the tape backwards in reverse creation order (a value used twice,
e.g. the skip input of a residual, gets the sum of the relevance from both uses).

Semantics (the ones the lrpjax engine implements):

* dense / conv (any stride, SAME/VALID padding, ``feature_group_count``) with their bias: the
  composite's rule for the layer kind, computed by :func:`reference_lrp.dense_rule` on im2col
  patches (one dense layer per group);
* elementwise activations and multiplication by a constant (``x / 4``, LayerScale's gamma):
  relevance passes unchanged;
* sum / average pooling and sums over axes: R_j = a_j R_k / stab(sum_{j in k} a_j, eps_pool),
  the stabiliser on the *sum* (an average is a sum followed by a constant scale);
  ``Rules(avg_stab="mean")`` stabilises an average's mean instead (Zennit's convention);
* max pooling: winner-take-all (all of R_k to the window's maximum);
* z = x + y / x - y of two relevance-carrying values: R_x = x R / stab(z, eps_add),
  R_y = +-y R / stab(z, eps_add); nested sums are nested pairwise steps;
* concatenate / reshape: relevance carried exactly.

``stab(z, e) = z + e sign(z)`` with sign(0) = +1; divisions are zero-safe (s = 0 where the
denominator is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from reference_lrp import dense_rule, div, stab

__all__ = ["REFERENCE", "Rules", "Tape", "fold_bn", "forward", "lrp"]


# ------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rules:
    """Rule tuples as in reference_lrp (("eps", e), ("zplus",), ...) for the linear layers;
    ``last`` (optional) overrides the rule of the last linear layer in forward order;
    ``pool`` and ``add`` are the Norm stabilisers of sum/avg pooling and of residual adds.

    ``avg_stab``: where an *average* (avg pooling, mean over axes) is stabilised. "sum" (the
    engine's specified semantics): R_j = a_j R_k / stab(S_k, eps), S_k the window sum; "mean"
    (Zennit's Norm on an AvgPool layer, tests/reference_lrp.py):
    R_j = a_j R_k / (n stab(S_k / n, eps)) = a_j R_k / (S_k + n eps sign(S_k)), n the window
    size. The two differ by about n eps / |S_k| (1e-5 relative for eps = 1e-6), and not at
    all for eps = 0."""

    dense: tuple = ("eps", 0.0)
    conv: tuple = ("eps", 0.0)
    last: tuple | None = None
    pool: float = 1e-6
    add: float = 1e-6
    avg_stab: str = "sum"

    def pool_denominator(self, S: np.ndarray, n: int) -> np.ndarray:
        """The stabilised denominator of a sum S (``n`` > 1: S is an average's sum over n)."""
        if n == 1 or self.avg_stab == "sum":
            return stab(S, self.pool)
        if self.avg_stab == "mean":
            return n * stab(S / n, self.pool)
        raise ValueError(f"avg_stab must be 'sum' or 'mean', got {self.avg_stab!r}")


# ------------------------------------------------------------------ windows (im2col)
def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """XLA's SAME padding: out = ceil(n / s), the extra row/column goes to the end."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pads(padding: str | tuple, shape: tuple, kh: int, kw: int, s: tuple) -> tuple:
    if isinstance(padding, str):
        if padding == "SAME":
            return same_pads(shape[1], kh, s[0]), same_pads(shape[2], kw, s[1])
        if padding == "VALID":
            return (0, 0), (0, 0)
        raise ValueError(padding)
    return tuple(tuple(p) for p in padding)


def patches(a: np.ndarray, kh: int, kw: int, s: tuple, pads: tuple) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, kh, kw, C): the (zero-padded) window of every output."""
    (pt, pb), (pl, pr) = pads
    p = np.pad(a, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (p.shape[1] - kh) // s[0] + 1
    ow = (p.shape[2] - kw) // s[1] + 1
    cols = np.empty((a.shape[0], oh, ow, kh, kw, a.shape[3]), dtype=a.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = p[:, i:i + s[0] * (oh - 1) + 1:s[0],
                                       j:j + s[1] * (ow - 1) + 1:s[1], :]
    return cols


def patches_T(cols: np.ndarray, shape: tuple, s: tuple, pads: tuple) -> np.ndarray:
    """The adjoint of :func:`patches`: scatter-add window entries back onto the input."""
    (pt, pb), (pl, pr) = pads
    n, h, w, c = shape
    _, oh, ow, kh, kw, _ = cols.shape
    p = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            p[:, i:i + s[0] * (oh - 1) + 1:s[0], j:j + s[1] * (ow - 1) + 1:s[1], :] += \
                cols[:, :, :, i, j, :]
    return p[:, pt:pt + h, pl:pl + w, :]


# ------------------------------------------------------------------ elementwise functions
def relu(x):
    return np.maximum(x, 0.0)


def leaky_relu(x, slope=0.01):
    return np.where(x >= 0, x, slope * x)


def gelu(x):  # jax.nn.gelu / nnx.gelu / nn.gelu default: the tanh approximation
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def softplus(x):
    return np.logaddexp(x, 0.0)


ACTS: dict[str, Callable] = {"relu": relu, "tanh": np.tanh, "leaky_relu": leaky_relu,
                             "gelu": gelu, "sigmoid": sigmoid, "silu": silu, "elu": elu,
                             "softplus": softplus}


# ------------------------------------------------------------------ the tape
class Node:
    __slots__ = ("back", "i", "parents", "v")

    def __init__(self, i: int, v: np.ndarray, parents: tuple, back: Callable | None):
        self.i, self.v, self.parents, self.back = i, v, parents, back


class Tape:
    """Records a forward pass; every op returns a :class:`Node` (its value in ``.v``).

    ``back(R, rules)`` of a node returns the relevance of each of its parents."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.n_linear = 0

    def _add(self, v: np.ndarray, parents: tuple, back: Callable | None) -> Node:
        node = Node(len(self.nodes), np.asarray(v, np.float64), parents, back)
        self.nodes.append(node)
        return node

    def input(self, x: np.ndarray) -> Node:
        return self._add(np.asarray(x, np.float64), (), None)

    # ---- linear layers
    def _linear_rule(self, kind: str, index: int, rules: Rules) -> tuple:
        if rules.last is not None and index == self.n_linear - 1:
            return rules.last
        return rules.dense if kind == "dense" else rules.conv

    def dense(self, a: Node, p: dict) -> Node:
        W, b = np.asarray(p["kernel"], float), _bias(p, p["kernel"].shape[-1])
        index = self.n_linear
        self.n_linear += 1

        def back(R, rules):
            rule = self._linear_rule("dense", index, rules)
            x2 = a.v.reshape(-1, W.shape[0])
            return (dense_rule(rule, x2, W, b, R.reshape(-1, W.shape[1])).reshape(a.v.shape),)

        return self._add(a.v @ W + b, (a,), back)

    def conv(self, a: Node, p: dict, strides: int | tuple = 1, padding: Any = "SAME",
             groups: int = 1) -> Node:
        K, b = np.asarray(p["kernel"], float), _bias(p, p["kernel"].shape[-1])
        kh, kw, cg, o = K.shape
        s = (strides, strides) if isinstance(strides, int) else tuple(strides)
        pads = _pads(padding, a.v.shape, kh, kw, s)
        assert a.v.shape[3] == cg * groups and o % groups == 0, (a.v.shape, K.shape, groups)
        og = o // groups
        cols = patches(a.v, kh, kw, s, pads)
        n, oh, ow = cols.shape[:3]
        m = n * oh * ow

        def group(g):
            c = cols[..., g * cg:(g + 1) * cg].reshape(m, kh * kw * cg)
            return c, K[..., g * og:(g + 1) * og].reshape(kh * kw * cg, og), b[g * og:(g + 1) * og]

        z = np.concatenate([c @ Kg + bg for c, Kg, bg in map(group, range(groups))], axis=-1)
        index = self.n_linear
        self.n_linear += 1

        def back(R, rules):
            rule = self._linear_rule("conv", index, rules)
            Rcols = np.zeros_like(cols)
            for g in range(groups):
                c, Kg, bg = group(g)
                Rg = dense_rule(rule, c, Kg, bg, R[..., g * og:(g + 1) * og].reshape(m, og))
                Rcols[..., g * cg:(g + 1) * cg] = Rg.reshape(n, oh, ow, kh, kw, cg)
            return (patches_T(Rcols, a.v.shape, s, pads),)

        return self._add(z.reshape(n, oh, ow, o), (a,), back)

    # ---- relevance passes unchanged
    def act(self, a: Node, f: str | Callable) -> Node:
        f = ACTS[f] if isinstance(f, str) else f
        return self._add(f(a.v), (a,), lambda R, rules: (R,))

    def scale(self, a: Node, c: Any) -> Node:
        """x * c for a constant c (broadcast): relevance passes unchanged."""
        return self._add(a.v * np.asarray(c, float), (a,), lambda R, rules: (R,))

    # ---- sums: Norm
    def sum(self, a: Node, axes: tuple, _avg_n: int = 1) -> Node:
        S = a.v.sum(axis=axes, keepdims=True)

        def back(R, rules):
            return (a.v * div(R.reshape(S.shape), rules.pool_denominator(S, _avg_n)),)

        return self._add(S.squeeze(axis=axes), (a,), back)

    def mean(self, a: Node, axes: tuple) -> Node:
        """A sum, then the constant scale 1/n (which passes relevance unchanged)."""
        n = math.prod(a.v.shape[i] for i in axes)
        return self.scale(self.sum(a, axes, _avg_n=n), 1.0 / n)

    def sumpool(self, a: Node, k: int, stride: int | None = None, _avg_n: int = 1) -> Node:
        s = (stride or k,) * 2
        pads = ((0, 0), (0, 0))
        cols = patches(a.v, k, k, s, pads)
        S = cols.sum(axis=(3, 4))

        def back(R, rules):
            q = div(R, rules.pool_denominator(S, _avg_n))[:, :, :, None, None, :]
            return (a.v * patches_T(np.broadcast_to(q, cols.shape).copy(), a.v.shape, s, pads),)

        return self._add(S, (a,), back)

    def avgpool(self, a: Node, k: int, stride: int | None = None) -> Node:
        """Window sums, then the constant scale 1/k^2 (which passes relevance unchanged)."""
        return self.scale(self.sumpool(a, k, stride, _avg_n=k * k), 1.0 / (k * k))

    def maxpool(self, a: Node, k: int, stride: int | None = None) -> Node:
        s = (stride or k,) * 2
        pads = ((0, 0), (0, 0))
        cols = patches(a.v, k, k, s, pads)
        n, oh, ow, _, _, c = cols.shape
        flat = cols.reshape(n, oh, ow, k * k, c)
        win = np.argmax(flat, axis=3)  # random inputs: no ties that carry relevance
        mask = (np.arange(k * k)[None, None, None, :, None] == win[:, :, :, None, :])

        def back(R, rules):
            Rc = (mask * R[:, :, :, None, :]).reshape(cols.shape)
            return (patches_T(Rc, a.v.shape, s, pads),)

        return self._add(flat.max(axis=3), (a,), back)

    # ---- residual adds: Norm
    def add(self, x: Node, y: Node) -> Node:
        z = x.v + y.v

        def back(R, rules):
            q = div(R, stab(z, rules.add))
            return x.v * q, y.v * q

        return self._add(z, (x, y), back)

    def sub(self, x: Node, y: Node) -> Node:
        z = x.v - y.v

        def back(R, rules):
            q = div(R, stab(z, rules.add))
            return x.v * q, -y.v * q

        return self._add(z, (x, y), back)

    # ---- data movement
    def concat(self, xs: list[Node], axis: int = -1) -> Node:
        sizes = [x.v.shape[axis] for x in xs]
        cuts = np.cumsum(sizes)[:-1]

        def back(R, rules):
            return tuple(np.split(R, cuts, axis=axis))

        return self._add(np.concatenate([x.v for x in xs], axis=axis), tuple(xs), back)

    def reshape(self, a: Node, shape: tuple) -> Node:
        return self._add(a.v.reshape(shape), (a,), lambda R, rules: (R.reshape(a.v.shape),))

    def flatten(self, a: Node) -> Node:
        return self.reshape(a, (a.v.shape[0], -1))


def _bias(p: dict, n: int) -> np.ndarray:
    b = p.get("bias")
    return np.zeros(n) if b is None else np.asarray(b, float)


# ------------------------------------------------------------------ running a model
def forward(ref: Callable, params: Any, x: np.ndarray) -> np.ndarray:
    """The model's output (float64)."""
    T = Tape()
    return ref(T, params, T.input(x)).v


def lrp(ref: Callable, params: Any, x: np.ndarray, target: Any, rules: Rules = Rules(),
        mode: str = "logit") -> np.ndarray:
    """Relevance of ``x`` for ``ref(T, params, x_node)``; output relevance one-hot(target) x y
    ("logit") or one-hot(target) ("onehot")."""
    T = Tape()
    xin = T.input(np.asarray(x, np.float64))
    out = ref(T, params, xin)
    y = out.v
    onehot = np.eye(y.shape[1])[np.broadcast_to(np.asarray(target), (y.shape[0],))]
    R = {out.i: onehot * y if mode == "logit" else onehot}
    for node in reversed(T.nodes[xin.i + 1:]):
        r = R.pop(node.i, None)
        if r is None:  # nothing reached it (an unused value)
            continue
        for parent, rp in zip(node.parents, node.back(r, rules), strict=True):
            R[parent.i] = R[parent.i] + rp if parent.i in R else rp
    return R.get(xin.i, np.zeros_like(xin.v))


# ------------------------------------------------------------------ canonical parameters
def fold_bn(conv: dict, bn: dict, eps: float = 1e-5) -> dict:
    """Conv followed by inference BatchNorm -> one conv (float64)."""
    scale = np.asarray(bn["scale"], float) / np.sqrt(np.asarray(bn["var"], float) + eps)
    b = _bias(conv, conv["kernel"].shape[-1])
    return {"kernel": np.asarray(conv["kernel"], float) * scale,
            "bias": (b - np.asarray(bn["mean"], float)) * scale + np.asarray(bn["bias"], float)}


# ------------------------------------------------------------------ the zoo's references
# Parameters are the canonical dicts of tests/zoo.py (name -> {"kernel", "bias"}, ...) in the
# form of the Linen / function twins (zoo.twin_params: BatchNorm already folded by fold_bn).
def ref_small_cnn(T: Tape, p: dict, x: Node) -> Node:
    """(a) and (b): conv-relu-avgpool twice, flatten, dense-relu, dense."""
    h = T.avgpool(T.act(T.conv(x, p["conv1"]), "relu"), 2)
    h = T.avgpool(T.act(T.conv(h, p["conv2"]), "relu"), 2)
    h = T.act(T.dense(T.flatten(h), p["dense1"]), "relu")
    return T.dense(h, p["dense2"])


def ref_strided_bn_cnn(T: Tape, p: dict, x: Node) -> Node:
    """(c) with the BatchNorm folded: conv stride 2 SAME, relu, maxpool, dense-relu, dense."""
    h = T.conv(x, p["conv"], strides=2, padding="SAME")
    h = T.maxpool(T.act(h, "relu"), 2)
    h = T.act(T.dense(T.flatten(h), p["dense1"]), "relu")
    return T.dense(h, p["dense2"])


def ref_residual_mlp(T: Tape, p: dict, x: Node) -> Node:
    """(d) o(relu(d(x)) + x)."""
    return T.dense(T.add(T.act(T.dense(x, p["d"]), "relu"), x), p["o"])


def ref_residual_cnn(T: Tape, p: dict, x: Node) -> Node:
    """(d) h = relu(conv1 x); h = h + relu(conv2 h) - relu(conv3 h); mean over H, W; dense."""
    h = T.act(T.conv(x, p["conv1"]), "relu")
    h = T.sub(T.add(h, T.act(T.conv(h, p["conv2"]), "relu")),
              T.act(T.conv(h, p["conv3"]), "relu"))
    return T.dense(T.mean(h, (1, 2)), p["head"])


def make_ref_act_mlp(acts: tuple[str, ...]) -> Callable:
    """(e) dense-act per hidden layer, then a dense output layer."""
    def ref(T: Tape, p: dict, x: Node) -> Node:
        h = x
        for i, act in enumerate(acts):
            h = T.act(T.dense(h, p[f"dense{i}"]), act)
        return T.dense(h, p[f"dense{len(acts)}"])
    return ref


def ref_concat_cnn(T: Tape, p: dict, x: Node) -> Node:
    """(f) two conv branches concatenated on the channel axis, avgpool, flatten, dense."""
    a = T.act(T.conv(x, p["branch_a"]), "relu")
    b = T.act(T.conv(x, p["branch_b"]), "relu")
    h = T.avgpool(T.concat([a, b], axis=-1), 2)
    return T.dense(T.flatten(h), p["head"])


def ref_layerscale_mlp(T: Tape, p: dict, x: Node) -> Node:
    """(g) x + gamma * relu(dense(x)), then dense."""
    h = T.add(x, T.scale(T.act(T.dense(x, p["dense"]), "relu"), p["gamma"]))
    return T.dense(h, p["head"])


def ref_grouped_cnn(T: Tape, p: dict, x: Node) -> Node:
    """(h) stem conv, depthwise conv (4 groups, multiplier 2), grouped VALID conv (2 groups),
    maxpool, flatten, dense."""
    h = T.act(T.conv(x, p["stem"]), "relu")
    h = T.act(T.conv(h, p["depthwise"], groups=4), "relu")
    h = T.act(T.conv(h, p["grouped"], padding="VALID", groups=2), "relu")
    return T.dense(T.flatten(T.maxpool(h, 2)), p["head"])


REFERENCE: dict[str, Callable] = {
    "seq_cnn": ref_small_cnn,
    "linen_mnist_cnn": ref_small_cnn,
    "strided_bn_cnn": ref_strided_bn_cnn,
    "residual_mlp": ref_residual_mlp,
    "residual_cnn": ref_residual_cnn,
    "tanh_mlp": make_ref_act_mlp(("tanh", "tanh")),
    "leaky_relu_mlp": make_ref_act_mlp(("leaky_relu", "leaky_relu")),
    "gelu_mlp": make_ref_act_mlp(("gelu", "gelu")),
    "mixed_act_mlp": make_ref_act_mlp(("silu", "elu", "softplus", "sigmoid")),
    "concat_cnn": ref_concat_cnn,
    "layerscale_mlp": ref_layerscale_mlp,
    "grouped_cnn": ref_grouped_cnn,
}


# ------------------------------------------------------------------ hypothesis blocks
def ref_block(T: Tape, spec: tuple, p: dict, h: Node) -> Node:
    """One block of the random compositions (tests/zoo.py BLOCKS): same spec, same params."""
    kind = spec[0]
    if kind == "dense_act":
        return T.act(T.dense(h, p["dense"]), spec[1])
    if kind == "residual":
        return T.add(h, T.act(T.dense(h, p["dense"]), "relu"))
    if kind == "residual_sub":
        return T.sub(h, T.act(T.dense(h, p["dense"]), "tanh"))
    if kind == "layerscale":
        return T.add(h, T.scale(T.act(T.dense(h, p["dense"]), "relu"), p["gamma"]))
    if kind == "concat":
        return T.concat([T.act(T.dense(h, p["a"]), "relu"), T.act(T.dense(h, p["b"]), "tanh")])
    if kind == "conv":  # ("conv", stride, groups, channels)
        stride, groups = spec[1], spec[2]
        return T.act(T.conv(h, p["conv"], strides=stride, padding="SAME", groups=groups), "relu")
    if kind == "resconv":
        return T.add(h, T.act(T.conv(h, p["conv"]), "relu"))
    if kind == "avgpool":
        return T.avgpool(h, 2)
    if kind == "maxpool":
        return T.maxpool(h, 2)
    if kind == "flatten":
        return T.flatten(h)
    if kind == "gap":
        return T.mean(h, (1, 2))
    if kind == "dense":
        return T.dense(h, p["dense"])
    raise ValueError(spec)


def make_ref_composed(specs: tuple) -> Callable:
    def ref(T: Tape, p: dict, x: Node) -> Node:
        h = x
        for i, spec in enumerate(specs):
            h = ref_block(T, spec, p.get(f"block{i}", {}), h)
        return h
    return ref
