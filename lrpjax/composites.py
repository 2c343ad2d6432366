"""Composites: which rule goes to which layer (Montavon et al. 2018, Sec. 6; Kohlbrenner 2020).

A composite is data: an ordered tuple of *matchers*, each a function ``LayerInfo -> Rule | None``;
the first matcher that returns a rule wins. Layers no matcher claims get the defaults
(avg/sum pooling and residual adds: ``Norm``; max pooling: winner-take-all; flatten: ``Pass``),
and a linear layer nothing claims gets LRP-0 — ``describe`` shows every such choice.

Matchers select by layer kind or type (:func:`by_type`), by path glob (:func:`by_path`), by
position among the linear layers (:func:`first`, :func:`last`), or by any callable
(:func:`where`). Presets reproduce Zennit's and the LRP tutorial's composites.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .rules import AlphaBeta, Epsilon, Flat, Gamma, Gradient, Norm, Pass, ZBox, ZPlus

__all__ = [
    "LINEAR_KINDS",
    "Alpha1Beta0",
    "AlphaBetaAll",
    "Composite",
    "DeepTaylor",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "LRPTutorial",
    "LayerInfo",
    "Uniform",
    "by_path",
    "by_type",
    "default_rule",
    "first",
    "last",
    "where",
]

LINEAR_KINDS = ("dense", "conv")


@dataclass(frozen=True)
class LayerInfo:
    """What a matcher sees of a layer.

    ``kind`` is one of "dense", "conv", "avgpool", "maxpool", "flatten", "add", "activation",
    "batchnorm", "dropout", "unsupported". ``index`` counts linear layers (dense/conv) in forward order from 0
    (-1 for other layers); ``n_linear`` is their number.
    """

    path: str
    kind: str
    module_type: type
    index: int = -1
    n_linear: int = 0
    module: Any = field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_linear(self) -> bool:
        return self.kind in LINEAR_KINDS


Matcher = Callable[[LayerInfo], Any]


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def _check_rule(rule: Any, where: str) -> Any:
    """``rule`` if it is a rule (a callable instance, see :class:`lrpjax.core.Rule`), else a
    TypeError that says ``where`` it came from."""
    if isinstance(rule, type):
        raise TypeError(f"{where}: got the class {rule.__name__}, not a rule: pass an instance, "
                        f"e.g. {rule.__name__}()")
    if not callable(rule):
        raise TypeError(f"{where}: got {rule!r} (a {type(rule).__name__}), not a rule: expected "
                        "an lrpjax rule such as rules.Epsilon() (or None from a matcher)")
    return rule


def _check_table(table: Mapping[Any, Any], what: str) -> tuple:
    if not isinstance(table, Mapping):
        raise TypeError(f"{what} takes a mapping, got {type(table).__name__}")
    for key, rule in table.items():
        if rule is not None:
            _check_rule(rule, f"{what}, the rule for {key!r}")
    return tuple(table.items())


@dataclass(frozen=True)
class _ByType:
    table: tuple[tuple[Any, Any], ...]

    def __call__(self, info: LayerInfo) -> Any:
        for key, rule in self.table:
            if isinstance(key, str):
                if info.kind == key:
                    return rule
            elif isinstance(key, type) and issubclass(info.module_type, key):
                return rule
        return None


def by_type(table: Mapping[Any, Any]) -> Matcher:
    """Rules by layer kind ("dense", "conv", "avgpool", ...) or by module class (incl. subclasses)."""
    for key in table if isinstance(table, Mapping) else ():
        if not isinstance(key, (str, type)):
            raise TypeError(f"by_type keys are layer kinds (str) or module classes, got {key!r}")
    return _ByType(_check_table(table, "by_type"))


@dataclass(frozen=True)
class _ByPath:
    table: tuple[tuple[str, Any], ...]

    def __call__(self, info: LayerInfo) -> Any:
        for pattern, rule in self.table:
            if fnmatch.fnmatchcase(info.path, pattern):
                return rule
        return None


def by_path(table: Mapping[str, Any]) -> Matcher:
    """Rules by glob on the layer path, e.g. ``{"features/*": ZPlus(), "dense3": Epsilon(0)}``."""
    for key in table if isinstance(table, Mapping) else ():
        if not isinstance(key, str):
            raise TypeError(f"by_path keys are glob strings, got {key!r}")
    return _ByPath(_check_table(table, "by_path"))


@dataclass(frozen=True)
class _Position:
    rule: Any
    position: int

    def __call__(self, info: LayerInfo) -> Any:
        if not info.is_linear:
            return None
        target = self.position if self.position >= 0 else info.n_linear + self.position
        return self.rule if info.index == target else None


def first(rule: Any) -> Matcher:
    """The rule for the first linear layer in forward order (the input layer)."""
    return _Position(_check_rule(rule, "first()"), 0)


def last(rule: Any) -> Matcher:
    """The rule for the last linear layer in forward order (the output layer)."""
    return _Position(_check_rule(rule, "last()"), -1)


@dataclass(frozen=True)
class _Where:
    fn: Callable[[str, Any], Any]

    def __call__(self, info: LayerInfo) -> Any:
        return self.fn(info.path, info.module)


def where(fn: Callable[[str, Any], Any]) -> Matcher:
    """Rules from any callable ``fn(path, module) -> Rule | None``."""
    if not callable(fn):
        raise TypeError(f"where() takes a callable fn(path, module), got {fn!r}")
    return _Where(fn)


def default_rule(info: LayerInfo) -> Any:
    """Rules for layers no matcher claims: Norm for sum/avg pooling and residual adds,
    winner-take-all (plain gradient) for max pooling, Pass for activations, flatten, dropout,
    LRP-0 for unclaimed linear layers; None (unsupported) otherwise."""
    return {
        "avgpool": Norm(), "add": Norm(), "maxpool": Gradient(), "flatten": Pass(),
        "dropout": Pass(), "activation": Pass(), "scale": Pass(), "dense": Epsilon(0.0),
        "conv": Epsilon(0.0),
    }.get(info.kind)


@dataclass(frozen=True)
class Composite:
    """An ordered tuple of matchers; the first that returns a rule wins."""

    matchers: tuple[Matcher, ...] = ()
    name: str = "Composite"

    def __init__(self, *matchers: Matcher, name: str = "Composite"):
        for k, m in enumerate(matchers):
            if not callable(m) or isinstance(m, type):
                raise TypeError(f"Composite: matcher {k} is {m!r}, not a callable LayerInfo -> "
                                "rule or None (wrap a rule with by_type, by_path, first, last)")
        object.__setattr__(self, "matchers", tuple(matchers))
        object.__setattr__(self, "name", str(name))

    def rule_for(self, info: LayerInfo) -> tuple[Any, str]:
        """Return ``(rule, source)``; source is "composite", "default" or "unsupported"."""
        for matcher in self.matchers:
            rule = matcher(info)
            if rule is not None:
                _check_rule(rule, f"matcher {_name(matcher)} of {self.name}, for layer "
                                  f"{info.path!r} (kind {info.kind})")
                return rule, "composite"
        rule = default_rule(info)
        return (rule, "default") if rule is not None else (None, "unsupported")

    def __repr__(self) -> str:
        return f"{self.name}({len(self.matchers)} matchers)"


# ------------------------------------------------------------------ presets
def _preset(fn: Callable[..., Composite]) -> Callable[..., Composite]:
    """Build every rule when the preset is called; a bad parameter raises naming the preset."""
    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Composite:
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fn.__name__}: {err}") from err
    return build


@dataclass(frozen=True)
class _FirstConv:
    rule: Any

    def __call__(self, info: LayerInfo) -> Any:
        return self.rule if info.kind == "conv" and info.index == 0 else None


@_preset
def Uniform(rule: Any) -> Composite:
    """The same rule on every dense and convolutional layer."""
    _check_rule(rule, "Uniform()")
    return Composite(by_type({"dense": rule, "conv": rule}), name=f"Uniform[{rule}]")


@_preset
def EpsilonPlus(epsilon: float = 1e-6) -> Composite:
    """z+ on convolutions, epsilon on dense layers."""
    return Composite(by_type({"conv": ZPlus(), "dense": Epsilon(epsilon)}), name="EpsilonPlus")


@_preset
def EpsilonPlusFlat(epsilon: float = 1e-6) -> Composite:
    """Flat on the first layer, z+ on convolutions, epsilon on dense layers."""
    return Composite(first(Flat()), by_type({"conv": ZPlus(), "dense": Epsilon(epsilon)}),
                     name="EpsilonPlusFlat")


@_preset
def EpsilonGammaBox(low: Any, high: Any, gamma: float = 0.25, epsilon: float = 1e-6) -> Composite:
    """z^B on the first convolution, gamma on the other convolutions, epsilon on dense layers.

    As in Zennit, z^B and gamma apply to convolutions only: on an MLP this is epsilon everywhere.
    """

    return Composite(_FirstConv(ZBox(low, high)),
                     by_type({"conv": Gamma(gamma), "dense": Epsilon(epsilon)}),
                     name="EpsilonGammaBox")


@_preset
def EpsilonAlpha2Beta1(epsilon: float = 1e-6) -> Composite:
    """alpha2-beta1 on convolutions, epsilon on dense layers."""
    return Composite(by_type({"conv": AlphaBeta(2.0, 1.0), "dense": Epsilon(epsilon)}),
                     name="EpsilonAlpha2Beta1")


@_preset
def EpsilonAlpha2Beta1Flat(epsilon: float = 1e-6) -> Composite:
    """Flat on the first layer, alpha2-beta1 on convolutions, epsilon on dense layers."""
    return Composite(first(Flat()), by_type({"conv": AlphaBeta(2.0, 1.0), "dense": Epsilon(epsilon)}),
                     name="EpsilonAlpha2Beta1Flat")


@_preset
def AlphaBetaAll(alpha: float, beta: float) -> Composite:
    """alpha-beta on every dense and convolutional layer (alpha - beta = 1)."""
    rule = AlphaBeta(alpha, beta)
    return Composite(by_type({"dense": rule, "conv": rule}),
                     name=f"Alpha{rule.alpha:g}Beta{rule.beta:g}")


@_preset
def Alpha1Beta0() -> Composite:
    """The paper's default (Sec. 6): LRP-alpha1-beta0 (= z+) on every layer."""
    return AlphaBetaAll(1.0, 0.0)


@_preset
def DeepTaylor(low: Any = None, high: Any = None) -> Composite:
    """Deep Taylor decomposition for ReLU nets (Montavon et al. 2017): z+ on hidden layers,
    and at the input z^B for a pixel box [low, high] (or z+ when no box is given)."""
    matchers: list[Matcher] = []
    if low is not None or high is not None:
        matchers.append(first(ZBox(0.0 if low is None else low, 1.0 if high is None else high)))
    matchers.append(by_type({"dense": ZPlus(), "conv": ZPlus()}))
    return Composite(*matchers, name="DeepTaylor")


@_preset
def LRPTutorial(low: Any = -1.0, high: Any = 1.0, gamma: float = 0.1, epsilon: float = 0.1) -> Composite:
    """The LRP tutorial composite (Montavon et al. 2019): LRP-0 on the top layer, epsilon =
    ``epsilon`` x RMS(z) on the upper middle layers, gamma on the lower middle layers, z^B at the
    input. The middle layers 1..L-2 are split in half, the lower floor((L-2)/2) getting gamma:
    784-300-100-10 MLP -> z^B, eps, LRP-0; 4 linear layers -> z^B, gamma, eps, LRP-0."""

    box, top, lower, upper = ZBox(low, high), Epsilon(0.0), Gamma(gamma), Epsilon(epsilon, rms=True)

    def rule(info: LayerInfo) -> Any:
        if not info.is_linear:
            return None
        i, n = info.index, info.n_linear
        if i == 0:
            return box
        if i == n - 1:
            return top
        n_gamma = (n - 2) // 2
        return lower if i <= n_gamma else upper

    return Composite(rule, name="LRPTutorial")
