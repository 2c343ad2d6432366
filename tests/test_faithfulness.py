"""lrpjax.faithfulness (AttnLRP's perturbation protocol) against closed forms, and the
docstring prompt builder lrpjax.lab.prompts.

On a linear model f(x) = sum_t <w_t, x_t> + b, zeroing token t removes exactly its contribution
c_t = <w_t, x_t>: the MoRF / LeRF curves are f minus cumulative sums of c in the removal order,
computed here in float64 NumPy, independently of the library's batching."""

from __future__ import annotations

import itertools
import re
import sys
import types
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrpjax import faithfulness as F
from lrpjax.lab import prompts as P


def linear_model(rng: np.random.Generator, n: int, t: int, d: int):
    w, b = rng.normal(size=(t, d)), 0.3
    x = rng.normal(size=(n, t, d))
    c = np.einsum("ntd,td->nt", x, w)  # the token contributions

    def score(xb: jax.Array) -> jax.Array:
        return jnp.einsum("ntd,td->n", xb, jnp.asarray(w, xb.dtype)) + b

    return x, c, c.sum(1) + b, score


def reference_curves(c, f, rel, mask, steps):
    """(morf, lerf) by Python sorting and cumulative sums; k_j = floor(j n / S + 1/2)."""
    morf, lerf = [], []
    for ci, fi, ri, mi in zip(c, f, rel, mask, strict=True):
        tokens = [t for t in range(len(ci)) if mi[t]]
        n = len(tokens)
        ks = [int(Fraction(j * n, steps) + Fraction(1, 2)) for j in range(steps + 1)]
        for out, sign in ((morf, -1), (lerf, 1)):
            order = sorted(tokens, key=lambda t, s=sign: s * ri[t])  # stable: ties by position
            out.append([fi - sum(ci[t] for t in order[:k]) for k in ks])
    return np.array(morf), np.array(lerf)


def trapezoid_abc(morf, lerf):
    phi = np.linspace(0, 1, morf.shape[1])
    return np.trapezoid(lerf, phi, axis=1) - np.trapezoid(morf, phi, axis=1)


@pytest.mark.parametrize("steps", [None, 3])
def test_linear_model_curves_match_closed_form(steps):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x, c, f, score = linear_model(rng, 5, 7, 3)
        mask = np.ones((5, 7), bool)
        mask[1, [0, 6]] = mask[3, 2] = mask[4, :4] = False  # 5, 6 and 3 removable tokens
        rel = {"exact": c, "random": rng.normal(size=(5, 7)),
               "tied": np.round(rng.normal(size=(5, 7)))}
        out = F.perturbation_curves(score, x, rel, mask=mask, steps=steps, batch=2)
    s = 7 if steps is None else steps
    for name, r in rel.items():
        morf, lerf = reference_curves(c, f, r, mask, s)
        np.testing.assert_allclose(out[name].morf, morf, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[name].lerf, lerf, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[name].abc, trapezoid_abc(morf, lerf), atol=1e-12)
        np.testing.assert_array_equal(out[name].fractions, np.arange(s + 1) / s)
    # gradient x input is exact on a linear model: no order separates the curves more
    assert np.all(out["exact"].abc >= out["random"].abc - 1e-12)
    assert np.all(out["exact"].abc >= out["tied"].abc - 1e-12)


def test_three_tokens_by_hand():
    c = np.array([[3.0, 1.0, -2.0]])
    score = lambda xb: xb[..., 0].sum(-1)  # f = sum of the tokens' first coordinates
    x = np.stack([c, np.full_like(c, 7.0)], -1)
    cur = F.perturbation_curves(score, x, c)
    np.testing.assert_allclose(cur.morf, [[2, -1, -2, 0]])
    np.testing.assert_allclose(cur.lerf, [[2, 4, 3, 0]])
    # AUC(MoRF) = (0.5 - 1.5 - 1) / 3 = -2/3, AUC(LeRF) = (3 + 3.5 + 1.5) / 3 = 8/3
    np.testing.assert_allclose(cur.abc, [10 / 3], rtol=1e-6)
    # a baseline other than 0: a removed token's coordinates become (1, 1), adding 1 each
    cur = F.perturbation_curves(score, x, c, baseline=jnp.ones(2))
    np.testing.assert_allclose(cur.morf, [[2, 1 + 1 - 2, 1 + 1 - 2, 1 + 1 + 1]])


def test_random_orders_average_to_zero_area():
    """Over all T! orders the MoRF and LeRF curves have the same mean: E[ABC] = 0."""
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x, _, _, score = linear_model(rng, 1, 4, 2)
        perms = list(itertools.permutations(range(4)))
        rel = {str(p): np.asarray(p, np.float64)[None] for p in perms}
        out = F.perturbation_curves(score, x, rel)
    abc = np.array([out[str(p)].abc[0] for p in perms])
    assert abs(abc.mean()) < 1e-12 and abc.std() > 0.1


def test_batching_and_context_do_not_change_the_curves():
    rng = np.random.default_rng(2)
    x, c, _, _ = linear_model(rng, 5, 6, 4)
    shift = rng.normal(size=5)  # a per-prompt offset passed as context
    score = lambda xb, s: xb.sum((1, 2)) + s
    runs = [F.perturbation_curves(score, x, c, context=(shift,), batch=b, steps=4)
            for b in (1, 2, 3, 5, 9)]
    for run in runs[1:]:
        np.testing.assert_allclose(run.morf, runs[0].morf, rtol=1e-6)
        np.testing.assert_allclose(run.lerf, runs[0].lerf, rtol=1e-6)
    np.testing.assert_allclose(runs[0].morf[:, 0], x.sum((1, 2)) + shift, rtol=1e-5)
    np.testing.assert_allclose(runs[0].morf[:, -1], shift, rtol=1e-5, atol=1e-6)


def test_removal_counts_and_ranks():
    np.testing.assert_array_equal(F.removal_counts([16], 8), [list(range(0, 17, 2))])
    np.testing.assert_array_equal(F.removal_counts([5, 3], 4), [[0, 1, 3, 4, 5],  # 1.25, 2.5
                                                                [0, 1, 2, 2, 3]])  # .75, 2.25
    ranks = F.removal_ranks([[0.5, 2.0, -1.0, 2.0]], [[True, True, True, False]])
    np.testing.assert_array_equal(ranks, [[1, 0, 2, 3]])  # masked last, whatever its value
    np.testing.assert_array_equal(F.removal_ranks([[0.5, 2.0, -1.0, 2.0]], None, False),
                                  [[1, 2, 0, 3]])  # ties: the earlier token first
    np.testing.assert_allclose(F.curve_area([[0, 0.25, 0.5, 0.75, 1.0]], np.linspace(0, 1, 5)),
                               [0.5])


def test_bad_inputs_raise():
    x, r = np.ones((2, 3, 4)), np.ones((2, 3))
    score = lambda xb: xb.sum((1, 2))
    with pytest.raises(ValueError, match=r"expected one value per token \(2, 3\)"):
        F.perturbation_curves(score, x, np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="not finite"):
        F.perturbation_curves(score, x, np.array([[1, np.nan, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="no removable token"):
        F.perturbation_curves(score, x, r, mask=[[1, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="steps must be"):
        F.perturbation_curves(score, x, r, steps=0)
    with pytest.raises(ValueError, match="baseline of shape"):
        F.perturbation_curves(score, x, r, baseline=np.zeros(3))
    with pytest.raises(ValueError, match="leading axis of 2"):
        F.perturbation_curves(lambda xb, s: xb.sum((1, 2)) + s, x, r, context=(np.ones(3),))
    with pytest.raises(ValueError, match="one value per input"):
        F.perturbation_curves(lambda xb: xb.sum(2), x, r)
    with pytest.raises(ValueError, match="batch must be"):
        F.perturbation_curves(score, x, r, batch=0)
    with pytest.raises(ValueError, match="no relevance"):
        F.perturbation_curves(score, x, {})


# ---------------------------------------------------------------- prompts
def test_docstring_sentences_are_plain_and_deterministic():
    s = P.sentences()
    assert len(s) >= 500 and s == P.sentences()
    assert len({t.text for t in s}) == len(s)
    for src, text in s:
        assert src.split(".")[0] in {m.split(".")[0] for m in P.MODULES}
        assert 50 <= len(text) <= 200 and text[0].isupper() and text.endswith(".")
        assert re.fullmatch(r"[A-Za-z0-9 ,.;:'\-]+", text) and len(text.split()) >= 8
    pairs = P.sentence_pairs()
    assert len(pairs) >= 150
    texts = {t.text for t in s}
    for a, b in pairs:
        assert a.source == b.source and a.text != b.text and {a.text, b.text} <= texts


def test_sample_is_seeded_and_distinct():
    items = list(range(50))
    a = P.sample(items, 20, seed=3)
    assert a == P.sample(items, 20, seed=3) and a != P.sample(items, 20, seed=4)
    assert len(set(a)) == 20
    with pytest.raises(ValueError, match="only 50 available"):
        P.sample(items, 51)
    assert P.digest(["a", "b"]) == P.digest(["a", "b"]) != P.digest(["a b"])


def test_stripped_docstrings_raise(monkeypatch):
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(optimize=2))
    with pytest.raises(RuntimeError, match="-OO"):
        P.sentences()


# ---------------------------------------------------------------- token strip
def test_token_strip_colours_and_wraps():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lrpjax.lab.textplot import token_line, token_strip

    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    tokens = ["The", " cat", " sat", "\n", " on", " the", " mat", " today"] * 2
    r = np.linspace(-1, 2, len(tokens))
    lines = token_strip(ax, tokens, r)
    texts = ax.texts
    assert [t.get_text() for t in texts] == [t.replace("\n", "\u21b5") for t in tokens]
    assert lines >= 2 and len({round(t.get_position()[1], 6) for t in texts}) == lines
    face = [t.get_bbox_patch().get_facecolor() for t in texts]
    assert face[-1][0] > 0.9 and face[-1][2] < 0.1  # the largest R: saturated red
    assert face[0][2] > 0.9 and face[0][0] < 0.6  # negative: blue, half of max |R|
    assert token_line(["a", " b"], [0.5, -0.25]) == "a(+0.50) b(-0.25)"
    with pytest.raises(ValueError, match="2 tokens but 3"):
        token_strip(ax, ["a", "b"], [1, 2, 3])
