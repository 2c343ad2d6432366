"""The explain API: relevance (LRP), sensitivity, gradient and simple Taylor.

All functions take a batch ``x`` of N inputs and return N heatmaps shaped like ``x``; they are
pure JAX and compose with ``jax.jit`` and ``jax.vmap``. ``model`` is a Flax NNX module, a Flax
Linen module together with ``variables``, or (for the gradient methods) any callable
``x -> output``.

Targets (which output is explained): ``None`` = the predicted class, an ``int``, an int array
with one class per sample, or a callable ``output -> initial relevance`` (same shape as the
output).

Precision and bad inputs. Half-precision inputs (float16, bfloat16) and half-precision parameters
are computed in float32 and the heatmap is float32 (a Flax module that fixes its computation
``dtype`` keeps it inside its layers). Called with concrete arrays, every function raises a
ValueError for an out-of-range target, a non-finite or empty input, an input outside the box of
a z^B rule on the input layer, or a heatmap row that is not finite where x and f(x) are (an
overflow). Under ``jax.jit`` / ``jax.vmap`` nothing can raise: a row whose target is out of
range or whose input is not finite comes back as NaN, and overflows stay inf. ``checked=True``
adds ``jax.experimental.checkify`` checks for all of the above; run the jitted function through
``checkify.checkify`` and call ``err.throw()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import core, engine, facts, frontends
from .composites import Composite
from .coverage import Coverage

__all__ = [
    "describe",
    "forward_fn",
    "gradient",
    "gradient_x_input",
    "output_relevance",
    "relevance",
    "sensitivity",
]

Array = jax.Array
Target = None | int | Array | Callable[[Array], Array]


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _all_finite(x: Array) -> bool:
    """Eagerly, also while a ``jax.jit`` traces a function that closes over a concrete x."""
    with jax.ensure_compile_time_eval():
        return bool(jnp.all(jnp.isfinite(x)))


def _check_input(x: Any) -> Array:
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype} "
                        "(convert images to float, e.g. x / 255)")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch axis (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}): nothing to explain")
    x = jnp.asarray(x)
    if _concrete(x) and not _all_finite(x):
        raise ValueError("x contains NaN or infinite values")
    return x


def forward_fn(model: Any, variables: Any = None, *, params: Any = None,
               model_kwargs: dict | None = None) -> Callable[[Array], Array]:
    """The plain forward ``x -> output`` of any model :mod:`lrpjax.frontends` accepts."""
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    return frontends.build(static, dynamic)


def lrp_function(static: Any, dynamic: Any, composite: Composite, x: Array, *,
                 strict: bool = True, on_unsupported: str = "raise", with_facts: bool = True
                 ) -> tuple[Callable[[Array], Any], engine.Plan]:
    """``(f, plan)``: ``f(x)`` equals the model's output and its VJP propagates relevance.

    The model (``frontends.split``'s ``static, dynamic``) is traced once with its leaf module
    calls marked, and :func:`lrpjax.engine.plan` gives each operation its rule.
    """
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be an lrpjax Composite, got {type(composite).__name__}")
    marks: list = []
    token = frontends.new_token()
    try:
        closed, out_shape = jax.make_jaxpr(
            lambda d, a: frontends.build(static, d, marks, token)(a), return_shape=True
        )(dynamic, x)
    except (engine.UnsupportedLayerError, TypeError):
        raise
    except Exception as err:  # a shape/dtype problem of the input, or a model error: say so
        hint = ("; a module in training mode needs random numbers: explain it in inference "
                "mode (NNX: model.eval(); Linen: model_kwargs such as {'train': False} or "
                "deterministic=True)" if "PRNG" in str(err) or "Rng" in type(err).__name__
                else "")
        raise ValueError(
            f"the model cannot be evaluated on an input of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(err).__name__}: {err}{hint}") from err
    n = len(jax.tree.leaves(dynamic))
    plan = engine.plan(closed, [False] * n + [True], composite, marks, token,
                       on_unsupported=on_unsupported, strict=strict, with_facts=with_facts)
    tree = jax.tree.structure(out_shape)

    def f(a: Array) -> Any:
        return jax.tree.unflatten(tree, engine.run(plan, [*jax.tree.leaves(dynamic), a]))

    return f, plan


def output_relevance_check(out: Any, target: Array) -> None:
    """Check an int target against an output of shape (N, classes) (shapes only)."""
    output_relevance(jnp.zeros(out.shape, out.dtype), target, "onehot")


def output_relevance(
    y: Array, target: Target = None, mode: Literal["logit", "onehot"] = "logit"
) -> Array:
    """The relevance put on the output: one-hot(target) x logit ("logit") or one-hot ("onehot").

    A traced int target out of range gives a NaN row (a concrete one raises).
    """
    if callable(target):
        r = jnp.asarray(target(y))
        if r.shape != y.shape:
            raise ValueError(f"a callable target must return the output's shape {y.shape}, "
                             f"got {r.shape}")
        return r.astype(y.dtype)
    if y.ndim != 2:
        raise ValueError(f"class targets need an output of shape (N, classes), got {y.shape}; "
                         "pass a callable target for other outputs")
    n, k = y.shape
    if target is None:
        idx = jnp.argmax(y, axis=-1)
    else:
        idx = jnp.asarray(target)
        if not jnp.issubdtype(idx.dtype, jnp.integer):
            raise TypeError(f"target must be an int or int array, got dtype {idx.dtype}")
        if idx.ndim > 1 or (idx.ndim == 1 and idx.shape[0] != n):
            raise ValueError(f"target must be an int or have one entry per sample ({n}), "
                             f"got shape {idx.shape}")
        if _concrete(idx):
            bad = np.asarray(idx)[(np.asarray(idx) < 0) | (np.asarray(idx) >= k)]
            if bad.size:
                raise ValueError(f"target {bad.tolist()} out of range for {k} classes")
        idx = jnp.broadcast_to(idx, (n,))
    onehot = jax.nn.one_hot(idx, k, dtype=y.dtype)
    if target is not None:  # a traced target out of range: a NaN row (concrete ones raised)
        onehot = jnp.where(((idx >= 0) & (idx < k))[:, None], onehot, jnp.nan)
    if mode == "logit":
        return onehot * y
    if mode == "onehot":
        return onehot
    raise ValueError(f"output_relevance must be 'logit' or 'onehot', got {mode!r}")


def relevance(
    model: Any, x: Array, *, composite: Composite, target: Target = None, variables: Any = None,
    params: Any = None, output_relevance: Literal["logit", "onehot"] = "logit",
    strict: bool = True, on_unsupported: Literal["raise", "warn"] = "raise",
    model_kwargs: dict | None = None, checked: bool = False,
) -> Array:
    """LRP heatmaps R (shaped like x): relevance propagated from the output to the input.

    ``model``: an ``nnx.Module``; a Linen module with ``variables``; or any JAX function
    ``fn(params, x)`` (or ``fn(x)``); a callable pytree. Every route runs one interpreter over
    the model's jaxpr (:mod:`lrpjax.engine`): operations without a rule in :mod:`lrpjax.ops`
    raise naming the primitive, layer path and source line, or warn once each and use the
    plain gradient with ``on_unsupported="warn"``. ``model_kwargs``: keywords for a Flax
    module's ``__call__`` (e.g. ``{"train": False}``).
    The output relevance is one-hot(target) x f(x) (so sum_i R_i ~ f_c(x) where rules
    conserve) or one-hot(target). Raises for unsupported layers unless ``strict=False``.
    Half-precision inputs or parameters are computed in float32 (float32 heatmap). Concrete
    inputs are checked (see the module docstring: out-of-range targets, non-finite inputs,
    inputs outside a z^B box, overflow); under ``jax.jit`` invalid rows are NaN, and
    ``checked=True`` adds ``checkify`` checks instead.
    Compiled once per model structure, composite and input shape (``jax.jit`` inside) and
    matmul precision: on Ampere and later GPUs JAX's default float32 products are TF32, which
    moved heatmaps by 2e-4 (small nets) to 0.17 (random VGG-16) on an H100; call inside
    ``jax.default_matmul_precision("highest")`` for float32-exact heatmaps.
    """
    x = _check_input(x)
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be an lrpjax Composite, got {type(composite).__name__}")
    if output_relevance not in ("logit", "onehot"):
        raise ValueError(f"output_relevance must be 'logit' or 'onehot', got {output_relevance!r}")
    if on_unsupported not in ("raise", "warn"):
        raise ValueError(f"on_unsupported must be 'raise' or 'warn', got {on_unsupported!r}")
    if not strict:  # every operation and layer without a rule: its gradient, with a warning
        on_unsupported = "warn"
    target_fn, target_arr = _split_target(target)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    x, dynamic = _float32_for_half(x, dynamic)
    _check_target(static, dynamic, x, target_arr)
    return core.dispatch(_relevance, _relevance_checked, (dynamic, x, target_arr), checked,
                     static=static, composite=composite, mode=output_relevance, strict=strict,
                     target_fn=target_fn, on_unsupported=on_unsupported,
                     with_facts=facts.enabled())


def _check_target(static: Any, dynamic: Any, x: Array, target_arr: Any) -> None:
    if target_arr is not None and _concrete(target_arr):
        out = jax.eval_shape(frontends.build(static, dynamic), x)
        output_relevance_check(out, target_arr)


_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _float32_for_half(x: Array, dynamic: Any) -> tuple[Array, Any]:
    """x and the floating parameters as float32 where they are float16 / bfloat16."""
    def up(a: Any) -> Any:
        return a.astype(jnp.float32) if getattr(a, "dtype", None) in _HALF else a
    return up(x), jax.tree.map(up, dynamic)


def _x_rows(x: Array) -> Array:
    """Per row of x: finite (a check under :func:`lrpjax.core.checks`)."""
    x_ok = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    core.check(jnp.all(x_ok), "x row {i} contains NaN or infinite values", i=jnp.argmin(x_ok))
    return x_ok


def _target_rows(x: Array, y: Any, target_arr: Any) -> Array | None:
    """Per row: a valid class target (a check); None where no int target applies."""
    n = x.shape[0]
    if target_arr is None or getattr(y, "ndim", 0) != 2 or y.shape[0] != n:
        return None
    t = jnp.broadcast_to(target_arr, (n,))
    t_ok = (t >= 0) & (t < y.shape[1])
    i = jnp.argmin(t_ok)
    core.check(jnp.all(t_ok), f"target {{t}} at row {{i}} is out of range for {y.shape[1]} "
               "classes", t=t[i], i=i)
    return t_ok


def _pull_scaled(pull: Callable, r: Array) -> Array:
    """pull(r) computed as pull(r 2^-k) 2^k with max |r 2^-k| <= 1: every rule is linear in the
    relevance and powers of two scale exactly, so only overflow of intermediate quotients
    R / stab(z) (up to R / epsilon) is avoided. k <= half the dtype's exponent range."""
    m = jnp.max(jnp.where(jnp.isfinite(r), jnp.abs(r), 0))
    k_max = jnp.finfo(r.dtype).maxexp // 2
    k = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(m, 1))), 0, k_max).astype(jnp.int32)
    one = jnp.ones((), r.dtype)
    (R,) = pull(r * jnp.ldexp(one, -k))
    return R * jnp.ldexp(jnp.ones((), R.dtype), k)


def _finish(R: Array, x: Array, y: Any, x_ok: Array, t_ok: Array | None,
            what: str) -> tuple[Array, Array]:
    """The overflow check (under :func:`lrpjax.core.checks`: R finite where x and f(x) are),
    then NaN rows where the input is not finite or the target is out of range. Returns that
    and whether every check holds."""
    n = x.shape[0]
    ok = x_ok if t_ok is None else x_ok & t_ok
    if getattr(y, "ndim", 0) >= 1 and y.shape[0] == n:
        f_ok = jnp.all(jnp.isfinite(y.reshape(n, -1)), axis=1)
    else:
        f_ok = jnp.all(jnp.array([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(y)]))
    bad = ok & f_ok & ~jnp.all(jnp.isfinite(R.reshape(n, -1)), axis=1)
    core.check(~jnp.any(bad), f"the {what} of row {{i}} is not finite although x and f(x) "
               f"are: a value overflowed its dtype (the heatmap is {R.dtype}); rescale the "
               "input or the model, or compute in float64 (jax_enable_x64)", i=jnp.argmax(bad))
    return (jnp.where(ok.reshape(n, *[1] * (R.ndim - 1)), R, jnp.nan),
            jnp.all(ok) & ~jnp.any(bad))


_REL_STATIC = ("static", "composite", "mode", "strict", "target_fn", "on_unsupported",
               "with_facts")


def _relevance_impl(dynamic: Any, x: Array, target_arr: Any, *, static: Any,
                    composite: Composite, mode: str, strict: bool, target_fn: Any,
                    on_unsupported: str, with_facts: bool, checked: bool,
                    report: bool) -> Array | tuple[Array, Array]:
    with core.checks(checked):
        f, plan = lrp_function(static, dynamic, composite, x, strict=strict,
                               on_unsupported=on_unsupported, with_facts=with_facts)
        first = [s.path for s in plan.sites if s.kind in ("dense", "conv")][:1]

        def f_flags(a: Array) -> tuple[Any, list]:
            with core.watching(first) as flags:  # the input layer's rule checks x (z^B's box)
                return f(a), flags

        x_ok = _x_rows(x)
        y, pull, flags = jax.vjp(f_flags, x, has_aux=True)
        t_ok = _target_rows(x, y, target_arr)
        r = output_relevance(y, target_fn if target_fn is not None else target_arr, mode)
        if t_ok is not None:
            r = jnp.where(t_ok[:, None], r, 0)  # NaN rows: set again at the end
        R, ok = _finish(_pull_scaled(pull, r), x, y, x_ok, t_ok, "relevance")
        return (R, ok & jnp.all(jnp.array([True, *flags]))) if report else R


_relevance = jax.jit(_relevance_impl, static_argnames=(*_REL_STATIC, "checked", "report"))
_relevance_checked = core.checked_jit(_relevance_impl, _REL_STATIC)


def _split_target(target: Target) -> tuple[Callable | None, Array | None]:
    """(static callable, array) parts of a target; int targets become int32 arrays."""
    if target is None:
        return None, None
    if callable(target):
        return target, None
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"target must be an int or int array, got dtype {t.dtype}")
    return None, t


def _gradient_method(method: str, model: Any, x: Array, target: Target, variables: Any,
                     params: Any, model_kwargs: dict | None, checked: bool) -> Array:
    x = _check_input(x)
    target_fn, target_arr = _split_target(target)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    x, dynamic = _float32_for_half(x, dynamic)
    _check_target(static, dynamic, x, target_arr)
    return core.dispatch(_gradient, _gradient_checked, (dynamic, x, target_arr), checked,
                     static=static, target_fn=target_fn, method=method)


def _gradient_impl(dynamic: Any, x: Array, target_arr: Any, *, static: Any, target_fn: Any,
                   method: str, checked: bool, report: bool) -> Array | tuple[Array, Array]:
    with core.checks(checked):
        x_ok = _x_rows(x)
        y, pull = jax.vjp(frontends.build(static, dynamic), x)
        t_ok = _target_rows(x, y, target_arr)
        ct = output_relevance(y, target_fn if target_fn is not None else target_arr, "onehot")
        if t_ok is not None:
            ct = jnp.where(t_ok[:, None], ct, 0)
        (g,) = pull(ct)
        R = {"gradient": g, "sensitivity": jnp.square(g), "gradient x input": x * g}[method]
        R, ok = _finish(R, x, y, x_ok, t_ok, method)
        return (R, ok) if report else R


_gradient = jax.jit(_gradient_impl, static_argnames=("static", "target_fn", "method", "checked",
                                                     "report"))
_gradient_checked = core.checked_jit(_gradient_impl, ("static", "target_fn", "method"))


def gradient(model: Any, x: Array, *, target: Target = None, variables: Any = None,
             params: Any = None, model_kwargs: dict | None = None, checked: bool = False) -> Array:
    """The gradient df_c/dx of the target output (callable targets give the output cotangent).

    Compiled once per model structure and input shape; checks and precision as
    :func:`relevance`.
    """
    return _gradient_method("gradient", model, x, target, variables, params, model_kwargs,
                            checked)


def sensitivity(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                params: Any = None, model_kwargs: dict | None = None,
                checked: bool = False) -> Array:
    """Sensitivity analysis (Montavon et al. 2018, Sec. 4.1): R_i = (df_c/dx_i)^2."""
    return _gradient_method("sensitivity", model, x, target, variables, params, model_kwargs,
                            checked)


def gradient_x_input(model: Any, x: Array, *, target: Target = None, variables: Any = None,
                     params: Any = None, model_kwargs: dict | None = None,
                     checked: bool = False) -> Array:
    """Simple Taylor decomposition at the root 0 (Sec. 4.2): R_i = x_i df_c/dx_i."""
    return _gradient_method("gradient x input", model, x, target, variables, params,
                            model_kwargs, checked)


def describe(model: Any, x: Array, *, composite: Composite, variables: Any = None,
             params: Any = None, model_kwargs: dict | None = None,
             strict: bool = False) -> Coverage:
    """The coverage report of :func:`relevance`: every relevance-carrying operation in
    forward order (layers and the glue between them), its kind, the rule it gets (or "plain
    gradient" and why) and the user's source line. ``print(describe(...))`` shows a table;
    operations without a rule are reported, not raised (``strict=True`` raises).
    """
    if isinstance(x, Composite):
        raise TypeError("describe takes its arguments in the order relevance does: "
                        "describe(model, x, composite=...)")
    x = _check_input(x)
    static, dynamic = frontends.split(model, variables, params, model_kwargs)
    _, plan = lrp_function(static, dynamic, composite, x, strict=strict,
                           on_unsupported="raise" if strict else "ignore",
                           with_facts=facts.enabled())
    return plan.coverage(composite)
