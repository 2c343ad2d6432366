"""describe() shows which layers use a cheaper exact form, and why (lrpjax.signs' facts)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lrp_nets import SpecNet, linen_model, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import rules as R
from lrpjax import signs


def _proven(cov) -> dict[str, str]:
    return {r.path: r.proven for r in cov.rows if r.kind in ("dense", "conv")}


def _cnn():
    rng = np.random.default_rng(0)
    net, shape = random_net(rng, "cnn")  # conv relu pool conv relu pool flatten dense relu dense
    return net, jnp.asarray(rng.uniform(0, 1, size=(2, *shape)), jnp.float32)


def test_nnx_linen_and_jaxpr_front_ends_report_the_same_facts():
    net, x = _cnn()
    comp = C.EpsilonGammaBox(0.0, 1.0)  # ZBox, Gamma on the second conv, epsilon on the dense
    model = SpecNet(net)
    nnx_facts = list(_proven(lrpjax.describe(model, comp, x)).values())
    assert nnx_facts == ["", "input >= 0, gated", "", ""]
    linen, variables = linen_model(net)
    assert list(_proven(lrpjax.describe(linen, comp, x, variables=variables)).values()) == \
        nnx_facts
    graphdef, state = nnx.split(model)
    fn_cov = lrpjax.describe(lambda p, a: nnx.merge(graphdef, p)(a), comp, x, params=state)
    assert list(_proven(fn_cov).values()) == nnx_facts
    # z+ uses the input signs but has no gated form; epsilon uses neither
    plus = lrpjax.describe(model, C.Composite(C.by_type({"conv": R.ZPlus()})), x)
    assert list(_proven(plus).values())[:2] == ["", "input >= 0"]
    text = str(lrpjax.describe(model, comp, x))
    assert "proven" in text.splitlines()[1] and "input >= 0, gated" in text


def test_nothing_proven_with_the_analysis_off():
    net, x = _cnn()
    with signs.disabled():
        cov = lrpjax.describe(SpecNet(net), C.EpsilonGammaBox(0.0, 1.0), x)
    assert set(_proven(cov).values()) == {""}
    assert "proven" not in str(cov)


class Shared(nnx.Module):
    """One Linear applied twice, to f(h) and g(h) (h = a(x) has no known sign)."""

    def __init__(self, f, g, rngs: nnx.Rngs):
        self.a = nnx.Linear(4, 4, rngs=rngs)
        self.b = nnx.Linear(4, 3, rngs=rngs)
        self.f, self.g = f, g

    def __call__(self, x):
        h = self.a(x)
        return self.b(self.f(h)) + self.b(self.g(h))


def test_a_layer_called_twice_needs_the_fact_at_every_call():
    x = jnp.ones((2, 4))
    comp = C.Composite(C.by_type({"dense": R.ZPlus()}))
    relu, ident = jax.nn.relu, (lambda h: h)
    for f, g in ((relu, ident), (ident, relu)):  # proven at one call only, first or last
        assert _proven(lrpjax.describe(Shared(f, g, nnx.Rngs(0)), comp, x))["b"] == ""
    both = Shared(relu, lambda h: relu(-h), nnx.Rngs(0))
    assert _proven(lrpjax.describe(both, comp, x))["b"] == "input >= 0"


RECEIVED: dict[str, set] = {}


@dataclasses.dataclass(frozen=True)
class RecordingGamma(R.Gamma):
    """Gamma that records the facts relevance() hands it."""

    tag: str = ""

    def __call__(self, fwd, params, inputs, z, Rr, *, nonneg=(False,), gated=False):
        RECEIVED.setdefault(self.tag, set()).add((all(nonneg), bool(gated)))
        return super().__call__(fwd, params, inputs, z, Rr, nonneg=nonneg, gated=gated)


@dataclasses.dataclass(frozen=True)
class OldGamma(R.Gamma):
    """A user's subclass written before rules received facts: gets none."""

    def __call__(self, fwd, params, inputs, z, Rr):
        return super().__call__(fwd, params, inputs, z, Rr)


class Scaled(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.c1, self.c2, self.c3 = (nnx.Conv(c, 4, (3, 3), rngs=rngs) for c in (1, 4, 4))
        self.scale = nnx.Param(jnp.ones(4))  # >= 0 by value only: relevance() traces it
        self.dense = nnx.Linear(4 * 36, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c1(x))  # input x: sign unknown; output feeds a ReLU
        h = jax.nn.relu(self.c2(h))  # input >= 0, output feeds a ReLU
        h = jax.nn.relu(self.c3(h * self.scale))
        return self.dense(h.reshape(h.shape[0], -1))


def test_the_column_shows_what_the_rule_receives_and_uses():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    model = Scaled(nnx.Rngs(0))
    recording = {"c1": RecordingGamma(tag="c1"), "c2": RecordingGamma(tag="c2", zero_bias=True),
                 "c3": RecordingGamma(tag="c3")}
    comp = C.Composite(C.by_path(recording), C.by_type({"dense": R.Epsilon()}))
    RECEIVED.clear()
    lrpjax.relevance(model, x, composite=comp, target=0)
    used = {}  # Gamma's cheaper forms: a >= 0; then, with the bias kept, the gate
    for tag, got in RECEIVED.items():
        ((nonneg, gated),) = got
        facts = ["input >= 0"] * nonneg + ["gated"] * (nonneg and gated and tag != "c2")
        used[tag] = ", ".join(facts)
    assert used == {"c1": "", "c2": "input >= 0", "c3": ""}  # c1 and c2 receive gated=True
    assert _proven(lrpjax.describe(model, comp, x)) == used | {"dense": ""}
    old = C.Composite(C.by_type({"conv": OldGamma(), "dense": R.Epsilon()}))
    assert set(_proven(lrpjax.describe(model, old, x)).values()) == {""}
