"""AttnLRP and CP-LRP on the engine: tiny random transformers against an independent float64
reference written the way AttnLRP's own library computes it (modified gradient x input:
normaliser detached, products with halved gradients, activations with the identity rule)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrpjax
from lrpjax import transformer as T
from lrpjax.coverage import UnsupportedLayerError

SG = jax.lax.stop_gradient
D, H, C = 8, 16, 3


def init(seed: int, gated: bool) -> dict:
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(size=s) / np.sqrt(s[0])
    p = {"wq": w(D, D), "wk": w(D, D), "wv": w(D, D), "wo": w(D, D), "w1": w(D, H),
         "w2": w(H, D), "head": w(D, C), "b1": rng.normal(size=H) * 0.1,
         "g1": 1 + 0.1 * rng.normal(size=D), "c1": 0.1 * rng.normal(size=D),
         "g2": 1 + 0.1 * rng.normal(size=D), "c2": 0.1 * rng.normal(size=D)}
    if gated:
        p["wg"] = w(D, H)
    return jax.tree.map(jnp.asarray, p)


def make(gated: bool, mode: str | None):
    """The block; ``mode`` None: the model itself; "attn" / "cp": the reference's forms."""
    def bilinear(spec, a, b, a_weight):
        if mode == "attn":  # the gradient of each factor halved
            return 0.5 * (jnp.einsum(spec, a, SG(b)) + jnp.einsum(spec, SG(a), b))
        if mode == "cp" and a_weight:  # attention weights / gates held constant
            return jnp.einsum(spec, SG(a), b)
        return jnp.einsum(spec, a, b)

    def act(f, x):  # the identity rule: value f(x), gradient f(x) / x
        return f(x) if mode is None else x * SG(f(x) / x)

    def norm(x, g, c):
        xc = x - x.mean(-1, keepdims=True)
        inv = jax.lax.rsqrt((xc ** 2).mean(-1, keepdims=True) + 1e-5)
        return xc * (inv if mode is None else SG(inv)) * g + c

    def f(p, x):
        h = norm(x, p["g1"], p["c1"])
        q, k, v = h @ p["wq"], h @ p["wk"], h @ p["wv"]
        s = bilinear("ntd,nsd->nts", q, k, False) / np.sqrt(D)
        a = jax.nn.softmax(s, axis=-1)
        x = x + bilinear("nts,nsd->ntd", a, v, True) @ p["wo"]
        h = norm(x, p["g2"], p["c2"])
        if gated:  # SwiGLU: silu(gate) * up
            u = bilinear("nth,nth->nth", act(jax.nn.silu, h @ p["wg"]), h @ p["w1"], True)
        else:
            u = act(jax.nn.gelu, h @ p["w1"] + p["b1"])
        x = x + u @ p["w2"]
        return x.mean(axis=1) @ p["head"]
    return f


def reference(gated: bool, mode: str, p: dict, x: jax.Array, target: int) -> jax.Array:
    g = jax.grad(lambda a: make(gated, mode)(p, a)[:, target].sum())(x)
    return x * g * 1.0  # relevance = input x modified gradient (output relevance: the logit)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("preset,mode", [(T.AttnLRP, "attn"), (T.CPLRP, "cp")])
def test_matches_modified_gradient_reference_float64(gated, preset, mode):
    with jax.enable_x64(True):
        p = init(1, gated)
        x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, D)))
        # the initial relevance is one-hot x logit; the reference's gradient form starts at 1
        R = lrpjax.relevance(make(gated, None), x, params=p, composite=preset(), target=1)
        ref = reference(gated, mode, p, x, 1)
        assert R.dtype == jnp.float64
        err = float(jnp.max(jnp.abs(R - ref)) / jnp.max(jnp.abs(ref)))
        assert err <= 1e-10, err
        assert not np.allclose(ref, x * jax.grad(lambda a: make(gated, None)(p, a)[:, 1].sum())(x))


def test_default_composites_refuse_attention_and_name_it():
    p = init(1, False)
    x = jnp.ones((2, 5, D))
    with pytest.raises(UnsupportedLayerError, match="integer_pow.*make.<locals>.norm"):
        lrpjax.relevance(make(False, None), x, params=p,  # LayerNorm's variance comes first
                         composite=lrpjax.composites.EpsilonPlus(), target=0)
    attention = lambda a: jnp.einsum("ntd,nsd->nts", a, a).sum(axis=(1, 2))[:, None]
    with pytest.raises(UnsupportedLayerError, match="product of relevance-carrying values"):
        lrpjax.relevance(attention, x, composite=lrpjax.composites.EpsilonPlus(), target=0)


def test_describe_shows_attention_rows():
    p = init(1, True)
    x = jnp.ones((2, 5, D))
    cov = lrpjax.describe(make(True, None), x, params=p, composite=T.AttnLRP())
    kinds = [r.kind for r in cov.rows]
    assert kinds.count("product") == 3 and kinds.count("softmax") == 1  # qk, av, gate*up
    assert "UniformProduct" in str(cov) and "SoftmaxTaylor" in str(cov)
    assert not cov.fallbacks


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, D, decode=False, rngs=rngs)
        self.rms = nnx.RMSNorm(D, rngs=rngs)
        self.up = nnx.Linear(D, H, rngs=rngs)
        self.down = nnx.Linear(H, D, rngs=rngs)
        self.head = nnx.Linear(D, C, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln(x))
        x = x + self.down(nnx.gelu(self.up(self.rms(x))))
        return self.head(x.mean(axis=1))


def test_flax_attention_and_norm_modules_on_every_route():
    model = Block(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    for preset in (T.AttnLRP(), T.CPLRP()):
        R = lrpjax.relevance(model, x, composite=preset, target=2)
        graphdef, state = nnx.split(model)
        R_fn = lrpjax.relevance(lambda s, a, g=graphdef: nnx.merge(g, s)(a), x, params=state,
                                composite=preset, target=2)
        assert np.all(np.isfinite(R))
        np.testing.assert_allclose(R, R_fn, rtol=1e-5, atol=1e-6 * float(jnp.abs(R).max()))
    rows = lrpjax.describe(model, x, composite=T.AttnLRP()).rows
    assert any(r.kind == "softmax" and r.path.startswith("attn/") for r in rows)
    assert sum(r.kind == "product" and r.path.startswith("attn/") for r in rows) == 2
    with pytest.raises(UnsupportedLayerError, match="'ln/square/"):  # LayerNorm's variance
        lrpjax.relevance(model, x, composite=lrpjax.composites.EpsilonPlus(), target=2)


def test_describe_says_what_each_preset_holds_constant():
    """Issue 18, item 7: the norm rows say the normaliser is held (AttnLRP's identity rule);
    under CP-LRP the A.V row says the attention weights are held and no softmax row remains
    (no relevance reaches it)."""
    model = Block(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    for cp, preset in ((False, T.AttnLRP()), (True, T.CPLRP())):
        rows = lrpjax.describe(model, x, composite=preset).rows
        norm = [r for r in rows if r.path.startswith(("ln/", "rms/")) and r.kind == "affine"
                or r.path.startswith("rms/") and r.kind == "scale"]
        assert {r.path.split("/")[0] for r in norm} == {"ln", "rms"}, [r.path for r in rows]
        assert all("normaliser held constant" in r.note for r in norm)
        held_attn = [r for r in rows if "attention weights held constant" in r.note]
        softmax = [r for r in rows if r.kind == "softmax"]
        if cp:
            assert len(held_attn) == 1 and held_attn[0].path.startswith("attn/") and not softmax
        else:
            assert not held_attn and len(softmax) == 1
    text = str(lrpjax.describe(model, x, composite=T.CPLRP()))
    assert "attention weights held constant" in text and "normaliser held constant" in text


def _score_sized_residuals(f, x, t: int) -> int:
    """How many float (.., t, t) arrays JAX keeps from f's forward pass for its backward."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, x)
    return sum(1 for line in out.getvalue().splitlines()
               if line.startswith("f32[") and line.split("]")[0].endswith(f",{t},{t}"))


def _causal_attention(t: int, d: int) -> tuple:
    """(model, x, relevance function of AttnLRP): one causal attention, 2 heads, random weights."""
    from lrpjax import explain, frontends
    rng = np.random.default_rng(7)
    Wq, Wk, Wv = (jnp.asarray(rng.normal(size=(d, 2, d)) / 3, jnp.float32) for _ in range(3))

    def model(a):
        q, k, v = (jnp.einsum("ntd,dhe->nhte", a, W) for W in (Wq, Wk, Wv))
        s = jnp.einsum("nhte,nhse->nhts", q, k) * d ** -0.5
        att = jax.nn.softmax(jnp.where(np.tril(np.ones((t, t), bool)), s, -jnp.inf), axis=-1)
        return jnp.einsum("nhts,nhse->nhte", att, v).sum(axis=(1, 2, 3))[:, None]

    x = jnp.asarray(rng.normal(size=(1, t, d)), jnp.float32)
    static, dynamic = frontends.split(model, None, None, None)
    f, _ = explain.lrp_function(static, dynamic, T.AttnLRP(), x)
    return model, x, f


def test_attention_keeps_no_more_score_sized_arrays_than_the_gradient():
    """Memory on long inputs: the rules keep what the gradient keeps of the T x T scores.
    The product rule recomputes q k^T backward, the softmax rule keeps s and one constant per
    row (x = log s + c), a scale by 1 / sqrt(d) (relevance passes) keeps nothing. Before, the
    rules kept q k^T, the scaled scores, the softmax's input and output: 5 arrays, not 2."""
    t = 24
    model, x, f = _causal_attention(t, 8)
    ours, grad = (_score_sized_residuals(lambda a, g=g: g(a)[0, 0], x, t) for g in (f, model))
    assert 1 <= ours <= grad, (ours, grad)


def test_rebuilt_scores_wait_for_the_relevance():
    """What a rule rebuilds backward (q k^T, x = log s + c) is computed from the outputs of an
    optimization barrier that also takes the incoming relevance, as jax.checkpoint does: XLA
    can then neither hoist the rebuild into the forward pass nor merge it with the forward's
    q k^T (CSE), which would keep the T x T scores alive after all. (XLA:CPU drops barriers
    early, so only backends that keep them, GPU and TPU, see the saving.)"""
    t = 24
    _, x, f = _causal_attention(t, 8)
    jaxpr = jax.make_jaxpr(jax.grad(lambda a: f(a)[0, 0]))(x).jaxpr
    after: set = set()  # values computed from a barrier's outputs
    square = {True: [], False: []}  # T x T dot products and logs, after a barrier or not
    for e in jaxpr.eqns:
        late = e.primitive.name == "optimization_barrier" or any(
            not isinstance(v, jax.extend.core.Literal) and v in after for v in e.invars)
        if late:
            after.update(e.outvars)
        if e.primitive.name in ("dot_general", "log") \
                and tuple(e.outvars[0].aval.shape[-2:]) == (t, t):
            square[late].append(e.primitive.name)
    # before: the forward's q k^T and keep's log s; after: q k^T again, log s, and the
    # product rule's (R / z) v^T
    assert sorted(square[False]) == ["dot_general", "log"], square
    assert sorted(square[True]) == ["dot_general", "dot_general", "log"], square


def test_recomputed_product_depends_on_the_relevance():
    """The product rule recomputes z = q k^T from factors tied to R, so no backend can merge it
    with the forward's q k^T: XLA:CPU drops the optimization barrier before CSE (there the
    tie took one attention at T = 2,048 from 1.29x to 1.05x the gradient's temporaries)."""
    fwd = lambda p, a, b: a @ b.T
    q, k, R = (jnp.ones((6, 4)), jnp.ones((6, 4)), jnp.ones((6, 6)))
    jaxpr = jax.make_jaxpr(lambda r, a, b: T.UniformProduct()(fwd, None, (a, b), None, r))(
        R, q, k).jaxpr
    tied = {jaxpr.invars[0]}  # values computed from R
    for e in jaxpr.eqns:
        if any(not isinstance(v, jax.extend.core.Literal) and v in tied for v in e.invars):
            tied.update(e.outvars)
        if e.primitive.name == "dot_general":  # the first product is the recomputed z
            assert e.outvars[0] in tied
            break
    else:
        raise AssertionError("no product in the rule's jaxpr")


@pytest.mark.parametrize("case", ["masked", "two_axes"])
def test_softmax_rule_rebuilds_its_input_exactly(case, monkeypatch):
    """x = log s + c rebuilt backward gives the relevance of the kept x (rtol 1e-5): a causal
    -inf mask with scores so large that exp underflows (s = 0 at finite x), and a softmax
    over two axes."""
    rng = np.random.default_rng(3)
    V = jnp.asarray(rng.normal(size=(24, 1)), jnp.float32)
    mask = np.tril(np.ones((4, 6), bool), 2)
    softmax = ((lambda a: jax.nn.softmax(jnp.where(mask, a, -jnp.inf), axis=-1))
               if case == "masked" else (lambda a: jax.nn.softmax(a, axis=(1, 2))))
    x = jnp.asarray((30 if case == "masked" else 3) * rng.normal(size=(2, 4, 6)), jnp.float32)
    assert T._softmax_axes(lambda p, a: softmax(a), None, x) == (
        (2,) if case == "masked" else (1, 2))
    if case == "masked":
        s = softmax(x)
        assert bool(jnp.any((s == 0) & mask))  # underflowed at finite scores
    lrp = lambda: lrpjax.relevance(lambda a: softmax(a).reshape(a.shape[0], -1) @ V, x,
                                   composite=T.AttnLRP(), target=0)
    rebuilt = lrp()
    monkeypatch.setattr(T, "_softmax_axes", lambda *a: None)  # keep x itself
    kept = lrp()
    assert float(jnp.abs(kept).max()) > 1e-3
    np.testing.assert_allclose(rebuilt, kept, rtol=1e-5, atol=1e-6 * float(jnp.abs(kept).max()))
