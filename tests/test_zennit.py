"""lrpjax against Zennit 0.5.1 (PyTorch) on the same weights.

The fixtures in tests/fixtures/zennit_*.npz were written by tests/zennit/make_fixtures.py in a
separate venv (torch 2.13.0 CPU + zennit 0.5.1, float64); lrpjax never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_nets import SpecNet

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["zennit_mlp", "zennit_mlp_nobias", "zennit_mlp_signed", "zennit_cnn",
         "zennit_cnn_nobias", "zennit_cnn_maxpool"]

COMPOSITES = {
    "epsilon": lambda: C.Uniform(R.Epsilon(0.25)),
    "epsilon_small": lambda: C.Uniform(R.Epsilon(1e-6)),
    "epsilon_zero_bias": lambda: C.Uniform(R.Epsilon(0.25, zero_bias=True)),
    "zplus": lambda: C.Uniform(R.ZPlus()),
    "alpha2beta1": lambda: C.AlphaBetaAll(2.0, 1.0),
    "alpha1beta0": C.Alpha1Beta0,
    "gamma": lambda: C.Uniform(R.Gamma(0.25)),
    "flat": lambda: C.Uniform(R.Flat()),
    "wsquare": lambda: C.Uniform(R.WSquare()),
    "zbox_first": lambda: C.Composite(C.first(R.ZBox(0.0, 1.0)), C.by_type({
        "dense": R.Epsilon(1e-6), "conv": R.Epsilon(1e-6)})),
    "epsilon_plus": C.EpsilonPlus,
    "epsilon_plus_flat": C.EpsilonPlusFlat,
    "epsilon_alpha2beta1": C.EpsilonAlpha2Beta1,
    "epsilon_alpha2beta1_flat": C.EpsilonAlpha2Beta1Flat,
    "epsilon_gamma_box": lambda: C.EpsilonGammaBox(0.0, 1.0),
    # the zero_bias variant of every rule that has one (Zennit's zero_params="bias")
    "zplus_zero_bias": lambda: C.Uniform(R.ZPlus(zero_bias=True)),
    "alpha2beta1_zero_bias": lambda: C.Uniform(R.AlphaBeta(2.0, 1.0, zero_bias=True)),
    "gamma_zero_bias": lambda: C.Uniform(R.Gamma(0.25, zero_bias=True)),
    "wsquare_zero_bias": lambda: C.Uniform(R.WSquare(zero_bias=True)),
    "zbox_first_zero_bias": lambda: C.Composite(C.first(R.ZBox(0.0, 1.0, zero_bias=True)),
                                                C.by_type({"dense": R.Epsilon(1e-6),
                                                           "conv": R.Epsilon(1e-6)})),
}


def load(name: str):
    data = np.load(FIXTURES / f"{name}.npz")
    meta = json.loads(str(data["meta"]))
    net = []
    for layer in meta["architecture"]:
        t = layer["type"]
        if t in ("Dense", "Conv"):
            kind = "dense" if t == "Dense" else "conv"
            net.append((kind, data[f"{layer['name']}_kernel"], data[f"{layer['name']}_bias"]))
        elif t == "ReLU":
            net.append(("relu",))
        elif t in ("AvgPool2d", "MaxPool2d"):
            net.append(("avgpool" if t == "AvgPool2d" else "maxpool", layer["window"][0]))
        elif t == "Flatten":
            net.append(("flatten",))
        else:
            raise ValueError(t)
    return data, meta, net


def _cases():
    for name in NAMES:
        _, meta, _ = load(name)
        for ruleset in meta["rulesets"]:
            yield name, ruleset


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name,ruleset", list(_cases()))
def test_matches_zennit_float64(name, ruleset):
    data, meta, net = load(name)
    comp = COMPOSITES[ruleset]()
    with jax.enable_x64(True):
        model = SpecNet(net, dtype=jnp.float64)
        x = jnp.asarray(data["x"])
        target = jnp.asarray(data["target"])
        np.testing.assert_allclose(np.asarray(model(x)), data["logits"], rtol=1e-12, atol=1e-12)
        if ruleset.startswith("zbox") and np.min(data["x"]) < 0:
            # x in [-1, 1) lies outside ZBox(0, 1)'s box: concrete inputs raise; under jax.jit
            # the rule computes its formula as written, as Zennit does
            with pytest.raises(ValueError, match="outside the box"):
                lrpjax.relevance(model, x, composite=comp, target=target)
            Rx = jax.jit(lambda a, t: lrpjax.relevance(model, a, composite=comp, target=t))(
                x, target)
        else:
            Rx = lrpjax.relevance(model, x, composite=comp, target=target)
        coverage = lrpjax.describe(model, x, composite=comp)
    # the same rule class reached every layer as in Zennit
    zennit_rules = [layer["rule"] for layer in meta["rulesets"][ruleset]["per_layer"]]
    ours = [type(row.rule).__name__ for row in coverage.rows]
    expected = [{"Pass": "Pass", "Norm": "Norm"}.get(r, r) for r in zennit_rules]
    expected = ["Gradient" if r.startswith("none") and k == "maxpool" else
                ("Pass" if r.startswith("none") else r)
                for r, k in zip(expected, [row.kind for row in coverage.rows], strict=True)]
    ours = ["AlphaBeta" if o == "ZPlus" and e == "AlphaBeta" else o
            for o, e in zip(ours, expected, strict=True)]
    assert ours == expected
    assert _rel(Rx, data[f"R__{ruleset}"]) <= 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_matches_zennit_float32(name):
    data, _, net = load(name)
    model = SpecNet(net)
    x = jnp.asarray(data["x"], jnp.float32)
    for ruleset in ("epsilon", "zplus", "alpha2beta1", "epsilon_plus_flat", "epsilon_gamma_box"):
        Rx = lrpjax.relevance(model, x, composite=COMPOSITES[ruleset](),
                              target=jnp.asarray(data["target"]))
        assert _rel(Rx, data[f"R__{ruleset}"]) <= 1e-5, ruleset
