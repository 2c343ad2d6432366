"""Independent re-derivation of the Zennit fixtures from the equations in SEMANTICS.md.

Pure numpy (no torch, no zennit, no lrpjax): for every tests/fixtures/zennit_*.npz it rebuilds
the forward pass from the stored Flax-layout weights, applies the rules listed per layer in the
fixture's ``meta`` (exactly as written in SEMANTICS.md) and compares with every ``R__<ruleset>``.
A pass means SEMANTICS.md describes what Zennit 0.5.1 computed, to float64 round-off.

Run with any Python that has numpy, e.g.::

    .zennit-venv/bin/python tests/zennit/check_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RTOL = 1e-9


def stab(z, eps):
    """Zennit's Stabilizer: z + eps * sign(z), with sign(0) := +1."""
    return z + eps * (np.sign(z) + (z == 0))


# ---------------------------------------------------------------- linear ops (Dense and Conv)
class Dense:
    def __init__(self, kernel, bias):
        self.W, self.b = kernel, bias

    def fwd(self, a, W, b):
        return a @ W + b

    def bwd(self, g, W):  # W^T g
        return g @ W.T


class Conv:
    """3x3, stride 1, zero padding 1 ('SAME'), NHWC / HWIO."""

    def __init__(self, kernel, bias):
        self.W, self.b = kernel, bias

    @staticmethod
    def _patches(a, kh, kw):
        n, h, w, c = a.shape
        p = np.pad(a, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        cols = np.stack([p[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=3)
        return cols.reshape(n, h, w, kh * kw * c)

    def fwd(self, a, W, b):
        kh, kw, ci, co = W.shape
        return self._patches(a, kh, kw) @ W.reshape(kh * kw * ci, co) + b

    def bwd(self, g, W):
        kh, kw, ci, co = W.shape
        n, h, w, _ = g.shape
        cols = (g @ W.reshape(kh * kw * ci, co).T).reshape(n, h, w, kh, kw, ci)
        p = np.zeros((n, h + kh - 1, w + kw - 1, ci))
        for i in range(kh):
            for j in range(kw):
                p[:, i:i + h, j:j + w, :] += cols[:, :, :, i, j, :]
        return p[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w, :]


def pos(t):
    return np.clip(t, 0, None)


def neg(t):
    return np.clip(t, None, 0)


# ---------------------------------------------------------------- rules on z = W a + b
def rule_linear(name, p, L, a, R):
    W, b_real = L.W, L.b
    f, bt = L.fwd, L.bwd
    zero = np.zeros_like(b_real)
    # zero_params='bias': b := 0 inside the rule (the forward pass keeps it)
    b = zero if p.get("zero_params") == "bias" else b_real
    if name == "Epsilon":
        g = R / stab(f(a, W, b), p["epsilon"])
        return a * bt(g, W)
    eps = p["stabilizer"]
    if name == "ZPlus":
        z = f(pos(a), pos(W), pos(b)) + f(neg(a), neg(W), zero)
        g = R / stab(z, eps)
        return pos(a) * bt(g, pos(W)) + neg(a) * bt(g, neg(W))
    if name == "AlphaBeta":
        al, be = p["alpha"], p["beta"]
        zp = f(pos(a), pos(W), pos(b)) + f(neg(a), neg(W), zero)
        zn = f(pos(a), neg(W), neg(b)) + f(neg(a), pos(W), zero)
        gp, gn = R / stab(zp, eps), R / stab(zn, eps)
        return (al * (pos(a) * bt(gp, pos(W)) + neg(a) * bt(gp, neg(W)))
                - be * (pos(a) * bt(gn, neg(W)) + neg(a) * bt(gn, pos(W))))
    if name == "Gamma":
        gam = p["gamma"]
        Wp, Wn = W + gam * pos(W), W + gam * neg(W)
        bp, bn = b + gam * pos(b), b + gam * neg(b)
        z = f(a, W, b_real)  # the mask: the real output, bias included, also for zero_params
        zp = f(pos(a), Wp, bp) + f(neg(a), Wn, zero)
        zn = f(pos(a), Wn, bn) + f(neg(a), Wp, zero)
        gp = (z > 0) * R / stab(zp, eps)
        gn = (z < 0) * R / stab(zn, eps)
        return (pos(a) * bt(gp, Wp) + neg(a) * bt(gp, Wn)
                + pos(a) * bt(gn, Wn) + neg(a) * bt(gn, Wp))
    if name == "ZBox":
        lo = np.full_like(a, p["low"])
        hi = np.full_like(a, p["high"])
        z = f(a, W, b) - f(lo, pos(W), pos(b)) - f(hi, neg(W), neg(b))  # bias cancels
        g = R / stab(z, eps)
        return a * bt(g, W) - lo * bt(g, pos(W)) - hi * bt(g, neg(W))
    if name == "WSquare":
        z = f(np.ones_like(a), W ** 2, b ** 2)
        return bt(R / stab(z, eps), W ** 2)
    if name == "Flat":
        ones_w = np.ones_like(W)
        z = f(np.ones_like(a), ones_w, zero)
        return bt(R / stab(z, eps), ones_w)
    raise ValueError(name)


def avgpool(a):
    n, h, w, c = a.shape
    return a.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def avgpool_T(g):  # adjoint of avgpool
    return np.repeat(np.repeat(g, 2, axis=1), 2, axis=2) / 4.0


def maxpool_fwd(a):
    n, h, w, c = a.shape
    win = a.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // 2, w // 2, c, 4)
    idx = np.argmax(win, axis=-1)  # first maximal element, row-major inside the window
    return win.max(-1), idx


def maxpool_T(g, idx, shape):
    n, h, w, c = shape
    out = np.zeros((n, h // 2, w // 2, c, 4))
    np.put_along_axis(out, idx[..., None], g[..., None], axis=-1)
    return out.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(shape)


# ---------------------------------------------------------------- network
def run(d, meta, per_layer):
    layers, acts = [], []
    a = d["x"]
    for spec in per_layer:
        name = spec["layer"]
        acts.append(a)
        if name.startswith("dense"):
            if a.ndim == 4:  # NHWC flatten happened in 'flatten0'
                raise AssertionError
            L = Dense(d[f"{name}_kernel"], d[f"{name}_bias"])
            a = L.fwd(a, L.W, L.b)
        elif name.startswith("conv"):
            L = Conv(d[f"{name}_kernel"], d[f"{name}_bias"])
            a = L.fwd(a, L.W, L.b)
        elif name.startswith("relu"):
            L, a = None, np.maximum(a, 0)
        elif name.startswith("avgpool"):
            L, a = None, avgpool(a)
        elif name.startswith("maxpool"):
            a, idx = maxpool_fwd(a)
            L = idx
        elif name.startswith("flatten"):
            L, a = acts[-1].shape, a.reshape(a.shape[0], -1)
        layers.append(L)
    np.testing.assert_allclose(a, d["logits"], rtol=1e-12, atol=1e-12)

    R = d["attr_output"]
    for spec, L, a_in in reversed(list(zip(per_layer, layers, acts))):
        name, rule, p = spec["layer"], spec["rule"], spec["params"]
        if name.startswith(("dense", "conv")):
            R = rule_linear(rule, p, L, a_in, R)
        elif name.startswith("relu"):
            assert rule == "Pass"
        elif name.startswith("avgpool"):
            assert rule == "Norm"
            R = a_in * avgpool_T(R / stab(avgpool(a_in), p["stabilizer"]))
        elif name.startswith("maxpool"):
            assert rule.startswith("none")
            R = maxpool_T(R, L, a_in.shape)
        elif name.startswith("flatten"):
            R = R.reshape(L)
    return R


def main():
    files = sorted(FIXTURES.glob("zennit_*.npz"))
    assert files, "no fixtures"
    worst = 0.0
    for path in files:
        d = np.load(path)
        meta = json.loads(str(d["meta"]))
        for rs, info in meta["rulesets"].items():
            ref = d[f"R__{rs}"]
            got = run(d, meta, info["per_layer"])
            err = np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300)
            worst = max(worst, err)
            status = "ok" if err < RTOL else "MISMATCH"
            if status != "ok":
                print(f"{path.name:28s} {rs:26s} rel.err {err:.2e} {status}")
        print(f"{path.name}: {len(meta['rulesets'])} rule sets checked")
    print(f"worst relative error {worst:.2e}")
    return 0 if worst < RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
