"""An independent float64 NumPy LRP, layer by layer, written from the equations.

No JAX, no trick: convolutions are dense layers on im2col patches, and every rule is computed
term by term (the four sign-split products W+- a+- explicitly), so it shares no code path with
lrpjax.rules. Used as the test oracle together with the Zennit fixtures.

A network is a list of layers: ("dense", W (in,out), b), ("conv", K (kh,kw,in,out), b) with
SAME padding and stride 1, ("relu",), ("avgpool", w), ("maxpool", w), ("flatten",).
A rule is a tuple: ("eps", e), ("zplus",), ("ab", alpha, beta), ("gamma", g), ("zbox", l, h),
("flat",), ("wsquare",); every rule uses the stabilizer 1e-6 except "eps" (its own e).
"""

from __future__ import annotations

import numpy as np

STAB = 1e-6


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def div(r: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.zeros_like(r)
    np.divide(r, d, out=out, where=d != 0)
    return out


def pos(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


def neg(a: np.ndarray) -> np.ndarray:
    return np.minimum(a, 0)


# ------------------------------------------------------------- im2col for SAME convolutions
def gamma_four_terms(W: np.ndarray, a: np.ndarray, b: np.ndarray, R_out: np.ndarray,
                     gamma: float, eps: float, zero_bias: bool = False) -> np.ndarray:
    """Zennit's Gamma for a dense layer z = a W + b, the four terms written out: branches from
    the real z; ``zero_bias`` drops b from the denominators only."""
    ap, an = pos(a), neg(a)
    P, M = W + gamma * pos(W), W + gamma * neg(W)
    bb = np.zeros_like(b) if zero_bias else b
    bP, bM = bb + gamma * pos(bb), bb + gamma * neg(bb)
    z = a @ W + b
    s_p = np.where(z > 0, R_out / stab(ap @ P + an @ M + bP, eps), 0.0)
    s_n = np.where(z < 0, R_out / stab(ap @ M + an @ P + bM, eps), 0.0)
    return ap * (s_p @ P.T + s_n @ M.T) + an * (s_p @ M.T + s_n @ P.T)


def im2col(a: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """(N,H,W,C) -> (N*H*W, kh*kw*C) patches with zero padding (SAME, stride 1)."""
    n, h, w, c = a.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    p = np.pad(a, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    cols = np.empty((n, h, w, kh, kw, c), dtype=a.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = p[:, i:i + h, j:j + w, :]
    return cols.reshape(n * h * w, kh * kw * c)


def col2im(cols: np.ndarray, shape: tuple, kh: int, kw: int) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add patch entries back onto the input."""
    n, h, w, c = shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    p = np.zeros((n, h + kh - 1, w + kw - 1, c), dtype=cols.dtype)
    cols = cols.reshape(n, h, w, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            p[:, i:i + h, j:j + w, :] += cols[:, :, :, i, j, :]
    return p[:, ph:ph + h, pw:pw + w, :]


# ------------------------------------------------------------- one dense layer, every rule
def dense_rule(rule: tuple, a: np.ndarray, W: np.ndarray, b: np.ndarray, R: np.ndarray,
               low: np.ndarray | None = None, high: np.ndarray | None = None) -> np.ndarray:
    """R_in for z = a @ W + b, a (M, D), W (D, O), b (O,), R (M, O)."""
    name = rule[0]
    if name == "eps":
        z = a @ W + b
        return a * (div(R, stab(z, rule[1])) @ W.T)
    if name in ("zplus", "ab"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else (rule[1], rule[2])
        zp = pos(a) @ pos(W) + neg(a) @ neg(W) + pos(b)
        zn = pos(a) @ neg(W) + neg(a) @ pos(W) + neg(b)
        sp, sn = div(R, stab(zp, STAB)), div(R, stab(zn, STAB))
        rp = pos(a) * (sp @ pos(W).T) + neg(a) * (sp @ neg(W).T)
        rn = pos(a) * (sn @ neg(W).T) + neg(a) * (sn @ pos(W).T)
        return alpha * rp - beta * rn
    if name == "gamma":
        g = rule[1]
        P, M = W + g * pos(W), W + g * neg(W)
        bP, bM = b + g * pos(b), b + g * neg(b)
        z = a @ W + b
        out_p = (pos(a) @ P + bP) + neg(a) @ M
        out_n = (pos(a) @ M + bM) + neg(a) @ P
        sp = (z > 0) * div(R, stab(out_p, STAB))
        sn = (z < 0) * div(R, stab(out_n, STAB))
        return (pos(a) * (sp @ P.T) + neg(a) * (sp @ M.T)
                + pos(a) * (sn @ M.T) + neg(a) * (sn @ P.T))
    if name == "zbox":
        z = a @ W + b
        d = z - (low @ pos(W) + pos(b)) - (high @ neg(W) + neg(b))
        s = div(R, stab(d, STAB))
        return a * (s @ W.T) - low * (s @ pos(W).T) - high * (s @ neg(W).T)
    if name in ("flat", "wsquare"):
        V, c = (np.ones_like(W), 0 * b) if name == "flat" else (W ** 2, b ** 2)
        ones = np.ones_like(a)
        return div(R, stab(ones @ V + c, STAB)) @ V.T
    raise ValueError(rule)


# ------------------------------------------------------------- the network
def forward(net: list, x: np.ndarray) -> tuple[np.ndarray, list]:
    """Return the output and the input of every layer."""
    acts = []
    a = x
    for layer in net:
        acts.append(a)
        kind = layer[0]
        if kind == "dense":
            a = a @ layer[1] + layer[2]
        elif kind == "conv":
            K, b = layer[1], layer[2]
            kh, kw, c, o = K.shape
            n, h, w, _ = a.shape
            a = (im2col(a, kh, kw) @ K.reshape(-1, o) + b).reshape(n, h, w, o)
        elif kind == "relu":
            a = np.maximum(a, 0)
        elif kind in ("avgpool", "maxpool"):
            k = layer[1]
            n, h, w, c = a.shape
            blocks = a.reshape(n, h // k, k, w // k, k, c)
            a = blocks.mean(axis=(2, 4)) if kind == "avgpool" else blocks.max(axis=(2, 4))
        elif kind == "flatten":
            a = a.reshape(a.shape[0], -1)
        else:
            raise ValueError(kind)
    return a, acts


def lrp(net: list, x: np.ndarray, rules: list, target: np.ndarray,
        mode: str = "logit") -> np.ndarray:
    """Relevance of x. ``rules[i]`` is the rule of the i-th linear layer (dense/conv).

    ReLU passes relevance unchanged (Pass), avg pooling is proportional (Norm, stabilizer
    1e-6), max pooling is winner-take-all (ties: the first maximum in row-major order, as
    torch and Zennit do).
    """
    x = np.asarray(x, dtype=np.float64)
    y, acts = forward(net, x)
    onehot = np.eye(y.shape[1])[target]
    R = onehot * y if mode == "logit" else onehot
    linear_idx = [i for i, layer in enumerate(net) if layer[0] in ("dense", "conv")]
    for i in reversed(range(len(net))):
        layer, a = net[i], acts[i]
        kind = layer[0]
        if kind in ("dense", "conv"):
            rule = rules[linear_idx.index(i)]
            low = high = None
            if rule[0] == "zbox":
                low = np.broadcast_to(np.asarray(rule[1], float), a.shape)
                high = np.broadcast_to(np.asarray(rule[2], float), a.shape)
            if kind == "dense":
                R = dense_rule(rule, a, layer[1], layer[2], R, low, high)
            else:
                K, b = layer[1], layer[2]
                kh, kw, c, o = K.shape
                cols = im2col(a, kh, kw)
                if rule[0] == "zbox":
                    low, high = im2col(low, kh, kw), im2col(high, kh, kw)
                if rule[0] in ("flat", "wsquare"):
                    # the input is replaced by ones *inside* the image; padding stays zero
                    ones = im2col(np.ones_like(a), kh, kw)
                    V = np.ones_like(K.reshape(-1, o)) if rule[0] == "flat" else K.reshape(-1, o) ** 2
                    c = 0 * b if rule[0] == "flat" else b ** 2
                    s = div(R.reshape(-1, o), stab(ones @ V + c, STAB))
                    Rc = ones * (s @ V.T)
                else:
                    Rc = dense_rule(rule, cols, K.reshape(-1, o), b, R.reshape(-1, o), low, high)
                R = col2im(Rc, a.shape, kh, kw)
        elif kind == "relu":
            pass
        elif kind == "avgpool":
            k = layer[1]
            n, h, w, c = a.shape
            z = a.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))
            s = div(R, stab(z, STAB)) / (k * k)
            R = a * np.repeat(np.repeat(s, k, axis=1), k, axis=2)
        elif kind == "maxpool":
            k = layer[1]
            n, h, w, c = a.shape
            blocks = a.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4)
            first = blocks.reshape(n, h // k, w // k, c, k * k).argmax(axis=-1)  # first maximum
            win = np.eye(k * k)[first].reshape(n, h // k, w // k, c, k, k)
            R = (win * R[..., None, None]).transpose(0, 1, 4, 2, 5, 3).reshape(a.shape)
        elif kind == "flatten":
            R = R.reshape(a.shape)
    return R
