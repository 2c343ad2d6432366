"""The one mechanism behind every LRP rule: a layer whose backward pass is its rule.

Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2018, Sec. 5) redistributes
the relevance R_k of a layer's outputs onto its inputs, R_j = sum_k q_jk R_k. Written as a
``jax.custom_vjp``, a layer ``fwd(params, *inputs)`` runs normally forward, while its backward
receives the relevance of its outputs as the "cotangent" and returns the relevance of its inputs.
Chaining such layers, one ``jax.vjp`` of the whole model propagates relevance from the output to
the input at about the cost of a gradient (the implementation trick of Montavon et al. 2018,
Sec. 5.2: z = rho(W)^T a + eps; s = R / z; c = grad_a(z^T s); R = a * c).

Parameters are explicit arguments of ``fwd`` (never closed over), so the same code runs under
``jax.jit``, ``jax.vmap`` and ``nnx.jit``; parameter cotangents are zeros.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["LayerFn", "Rule", "apply_rule", "check", "checked_jit", "checks", "checks_enabled",
           "dispatch", "is_bias_path", "map_params", "rule_keywords", "vjp_input", "watching"]

_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("lrpjax_checks", default=False)
_WATCH: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("lrpjax_watch",
                                                                     default=None)

Array = jax.Array
Params = Any
LayerFn = Callable[..., Array]
"""A pure layer ``fwd(params, *inputs) -> z``; affine in each input for the linear rules."""


class Rule(Protocol):
    """A relevance rule: ``rule(fwd, params, inputs, z, R) -> relevances of the inputs``.

    A rule whose class sets ``uses_input_signs = True`` is also called with ``nonneg=(bool,
    ...)``: per input, True when :mod:`lrpjax.facts` proved it >= 0 for every input of the
    model (e.g. it comes out of a ReLU), so a cheaper, equal form applies. One that sets
    ``uses_output_gate = True`` is called with ``gated=True`` where the analysis proved that
    the relevance reaching the layer is zero wherever its output z < 0. Rules without the
    attributes never see the keywords.

    Memory: the backward pass keeps ``(params, inputs, z)`` by default. A rule that defines
    ``keep(fwd, params, inputs, z) -> kept`` and ``restore(fwd, kept, params, inputs, z) ->
    (params, inputs, z)`` keeps less and rebuilds the rest (``restore`` gets
    ``jax.ShapeDtypeStruct`` stand-ins for what it does not keep): :class:`~lrpjax.rules.Pass`
    keeps nothing, :class:`lrpjax.transformer.UniformProduct` recomputes z,
    :class:`lrpjax.transformer.SoftmaxTaylor` keeps s and a per-row constant instead of the
    T x T scores. The kept values reach ``restore`` through an optimization barrier together
    with R (as in ``jax.checkpoint``), so the rebuild runs once R is known.
    """

    def __call__(
        self, fwd: LayerFn, params: Params, inputs: tuple[Array, ...], z: Array, R: Array
    ) -> tuple[Array, ...]: ...


def apply_rule(fwd: LayerFn, rule: Rule, params: Params, *inputs: Array, name: str = "",
               facts: dict | None = None) -> Array:
    """Run ``fwd(params, *inputs)``; in reverse mode, map output relevance to input relevance.

    Forward: z = fwd(params, *inputs). Backward: (R_in_1, ..., R_in_n) = rule(fwd, params,
    inputs, z, R_out), and zero cotangents for ``params``. ``name`` (the layer path) labels the
    call in errors; ``facts`` (``{"nonneg": (bool, ...), "gated": bool}``, proven by
    :mod:`lrpjax.facts`) reach the rule where it opts in. Inside :func:`watching` a layer it
    names runs its rule's input check, ``rule.check_inputs(inputs)`` (z^B: inside the box).
    """
    known = rule_keywords(rule, facts or {})
    watch = _WATCH.get()
    if watch is not None and name in watch[0] and hasattr(rule, "check_inputs"):
        _check_inputs(rule, name, inputs, watch[1])

    @jax.custom_vjp
    def layer(p: Params, *xs: Array) -> Array:
        return fwd(p, *xs)

    keep, restore = getattr(rule, "keep", None), getattr(rule, "restore", None)
    like = jax.tree.map(_stand_in, (params, inputs))
    out_like: list = [None]

    def layer_fwd(p: Params, *xs: Array) -> tuple[Array, Any]:
        z = fwd(p, *xs)
        if keep is None:
            return z, (p, xs, z)
        out_like[0] = _stand_in(z)
        return z, keep(fwd, p, xs, z)

    def layer_bwd(res: Any, R: Array) -> tuple:
        if restore is not None:
            # rebuild only once R arrives: the barrier stops XLA from merging the rebuilt
            # values with the forward pass's (CSE) and so keeping those alive after all
            res, R = jax.lax.optimization_barrier((res, R))
        p, xs, z = res if restore is None else restore(fwd, res, *like, out_like[0])
        R_in = rule(fwd, p, xs, z, R, **known)
        if len(R_in) != len(xs):
            raise ValueError(f"{rule!r} at {name!r} returned {len(R_in)} relevances for "
                             f"{len(xs)} inputs")
        R_in = tuple(r.astype(x.dtype) for r, x in zip(R_in, like[1], strict=True))
        return (jax.tree.map(_zero_cotangent, like[0]), *R_in)

    layer.defvjp(layer_fwd, layer_bwd)
    return layer(params, *inputs)


@contextlib.contextmanager
def checks(on: bool = True) -> Iterator[None]:
    """While tracing inside, :func:`check` emits ``jax.experimental.checkify`` checks.

    A function traced with checks on must be run through ``checkify.checkify`` (JAX says so
    otherwise); :func:`dispatch` does that itself for concrete inputs that fail a check.
    """
    token = _CHECKS.set(bool(on))
    try:
        yield
    finally:
        _CHECKS.reset(token)


@contextlib.contextmanager
def watching(paths: Any) -> Iterator[list]:
    """Inside, :func:`apply_rule` runs the input check of the rules at the layer ``paths``: a
    checkify check when :func:`checks` are on, and a flag (True: passed) appended to the list
    this yields, for a caller that reads it without ``checkify``."""
    flags: list = []
    token = _WATCH.set((frozenset(paths), flags))
    try:
        yield flags
    finally:
        _WATCH.reset(token)


def _check_inputs(rule: Any, name: str, inputs: tuple, flags: list) -> None:
    """``rule.check_inputs(inputs)`` gives the bad entries of the first input (flat bool) and
    why they are bad; the flag and the check name the rule, the layer, a value and its row."""
    bad, why = rule.check_inputs(inputs)
    a = inputs[0]
    k = jnp.argmax(bad)
    flags.append(~jnp.any(bad))
    label = f"{rule!r} at layer '{name}'".replace("{", "{{").replace("}", "}}")
    check(~jnp.any(bad), label + ": its input {value} (row {row}) " + why,
          value=a.reshape(-1)[k], row=k // max(1, a.size // max(1, a.shape[0])))


def checks_enabled() -> bool:
    """Whether :func:`check` emits checks (inside :func:`checks`)."""
    return _CHECKS.get()


def check(pred: Any, msg: str, **fmt: Any) -> None:
    """``checkify.check(pred, msg, **fmt)`` when checks are on, else nothing."""
    if _CHECKS.get():
        checkify.check(pred, msg, **fmt)


def dispatch(plain: Callable, checked_fn: Callable, args: tuple, checked: bool,
             **static: Any) -> Any:
    """Run ``plain(*args, checked=, report=, **static)``, a jitted program of the explain API.

    Concrete arguments: the program also reports whether every check holds; if one fails, the
    checkified twin ``checked_fn`` (:func:`checked_jit`, compiled only then) says which, as a
    ValueError. Traced arguments: the plain program, its checks emitted when ``checked``.
    """
    if not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(args)):
        out, ok = plain(*args, checked=False, report=True, **static)
        if not isinstance(out, jax.core.Tracer):  # else: concrete values inside a trace
            if not bool(ok):
                msg = checked_fn(*args, **static)[0].get() or "a check failed (no message)"
                raise ValueError(msg.removesuffix(" (`check` failed)"))
            return out
    return plain(*args, checked=bool(checked), report=False, **static)


def checked_jit(impl: Callable, names: tuple[str, ...]) -> Callable:
    """``jax.jit`` of ``checkify.checkify(impl)`` with its checks on: returns ``(err, out)``."""
    def run(*args: Any, **static: Any) -> tuple:
        body = functools.partial(impl, checked=True, report=False, **static)
        return checkify.checkify(body, errors=checkify.user_checks)(*args)
    return jax.jit(run, static_argnames=names)


def rule_keywords(rule: Any, facts: dict) -> dict[str, Any]:
    """The proven facts a rule receives: ``nonneg`` where any input is proven >= 0 and the
    rule opts in; ``gated`` where proven, opted in, and the rule gets ``nonneg`` too."""
    known: dict[str, Any] = {}
    nonneg = tuple(facts.get("nonneg", ()))
    if any(nonneg) and _accepts(rule, "uses_input_signs", "nonneg"):
        known["nonneg"] = nonneg
    if facts.get("gated") and _accepts(rule, "uses_output_gate", "gated"):
        known["gated"] = True
    return known


@functools.cache
def _call_keywords(cls: type) -> frozenset[str]:
    try:
        params = inspect.signature(cls.__call__).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"*"})
    return frozenset(p.name for p in params)


def _accepts(rule: Any, flag: str, keyword: str) -> bool:
    """The rule opts in (class attribute ``flag``) and its ``__call__`` takes ``keyword`` (a
    user's subclass written before the keyword existed inherits the flag but not the
    parameter)."""
    if not getattr(rule, flag, False):
        return False
    names = _call_keywords(type(rule))
    return keyword in names or "*" in names


def _stand_in(leaf: Any) -> jax.ShapeDtypeStruct:
    """An array's shape and dtype, for what a rule's backward pass does not keep."""
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf))


def _zero_cotangent(leaf: Any) -> Any:
    """A zero cotangent for a parameter leaf (float0 for integer leaves such as RNG counters)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jnp.inexact)):
        return jnp.zeros(np.shape(leaf), dtype)
    return np.zeros(np.shape(leaf), dtype=jax.dtypes.float0)


def is_bias_path(path: tuple) -> bool:
    """True when a pytree path names a bias (a key or attribute called ``bias``)."""
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", None))
        if name == "bias":
            return True
    return False


def map_params(
    params: Params,
    weight: Callable[[Array], Array] | None = None,
    bias: Callable[[Array], Array] | None = None,
) -> Params:
    """Apply ``weight`` to every floating leaf that is not a bias and ``bias`` to the biases.

    ``None`` leaves a group unchanged. Integer leaves (counters, RNG state) are never touched.
    """

    def f(path: tuple, leaf: Any) -> Any:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        fn = bias if is_bias_path(path) else weight
        return leaf if fn is None else fn(leaf)

    return jax.tree_util.tree_map_with_path(f, params)


def vjp_input(fwd: LayerFn, params: Params, x: Array) -> tuple[Array, Callable[[Array], Array]]:
    """Return ``(fwd(params, x), s -> W^T s)``: the layer output and its transpose in ``x``."""
    z, pull = jax.vjp(lambda a: fwd(params, a), x)
    return z, lambda s: pull(s)[0]
