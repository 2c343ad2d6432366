"""Canonizers: pure transforms that make a model LRP-ready without changing its function.

LRP's rules are defined for linear layers z = W a + b followed by elementwise activations
(Montavon et al. 2018, Sec. 5). Batch normalization (Ioffe & Szegedy 2015) in inference mode is
an affine map per channel,

    BN(z) = (z - mu) * gamma / sqrt(sigma^2 + eps) + beta,

so when it directly follows a linear layer z = W a + b, the pair is one linear layer

    W' = W * gamma / sqrt(sigma^2 + eps),     b' = (b - mu) * gamma / sqrt(sigma^2 + eps) + beta

(scaling the output channel, the last kernel axis, of ``nnx.Linear`` and ``nnx.Conv``). Folding
before explaining gives the rules the layer they were derived for; propagating through the BN as
a separate layer instead lets its shift absorb or inject relevance (the "BatchNorm breaks
conservation" reports of other libraries).

``fold_batchnorm`` returns a *new* model (``nnx.clone``; the original keeps its Variables) in
which each folded ``BatchNorm`` is replaced by :class:`Identity`. Which layer a BN follows is
read from one abstract forward pass on an example input: the BN must be the next module called
after a Linear/Conv *and* receive exactly that layer's output (the same traced value), both
called once. Anything else (an activation or a residual sum in between, a shared layer, BN in
training mode, BN over a non-last axis) raises :class:`CanonizerError` naming the layer.

For a Flax Linen model, ``fold_batchnorm(model, x, variables=...)`` returns a
:class:`FoldedLinen` (the same module, its folded BatchNorm calls the identity) and its folded
variables.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import layers
from .frontends import calls as recorder
from .frontends.calls import LeafCall, nnx_path

__all__ = ["CanonizerError", "FoldedLinen", "Identity", "batchnorm_pairs", "fold_batchnorm"]

_LINEAR = (nnx.Linear, nnx.Conv)


Identity = layers.Identity


class CanonizerError(ValueError):
    """A model cannot be canonized as requested (the message names the layer and why)."""


def _trace(model: nnx.Module, x: Any) -> list[LeafCall]:
    """Leaf-module calls of ``model(x)`` in forward order (one abstract evaluation)."""
    for parts, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm) and node.use_running_average is not True:
            raise CanonizerError(f"cannot fold BatchNorm {nnx_path(parts)!r}: it is in training "
                                 "mode (batch statistics); call model.eval() first")
    spec = jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    try:
        return recorder.nnx_leaf_calls(model, spec)
    except Exception as err:
        raise ValueError(f"the model cannot be evaluated on an input of shape {spec.shape} and "
                         f"dtype {spec.dtype}: {type(err).__name__}: {err}") from err


def _check_pair(calls: list[LeafCall], i: int, counts: Counter) -> str:
    """Why the BatchNorm call ``calls[i]`` cannot be folded ("" when it can)."""
    bn = calls[i]
    m: nnx.BatchNorm = bn.module
    if counts[bn.path] > 1:
        return f"it is called {counts[bn.path]} times"
    if bn.kwargs.get("use_running_average", m.use_running_average) is not True:
        return "it is in training mode (batch statistics); call model.eval() first"
    if bn.kwargs.get("mask") is not None:
        return "it is called with a mask"
    ndim = len(bn.args[0].shape) if bn.args else 0
    if m.axis not in (-1, ndim - 1):
        return f"it normalizes axis {m.axis}, not the last (channel) axis"
    prev = calls[i - 1] if i > 0 else None
    if prev is None or not isinstance(prev.module, _LINEAR):
        what = "nothing" if prev is None else f"{prev.path!r} ({type(prev.module).__name__})"
        return (f"it does not directly follow a Linear/Conv layer (the module called before it "
                f"is {what}); folding into a following layer is not implemented")
    if not bn.args or bn.args[0] is not prev.out:
        return (f"its input is not the output of {prev.path!r}: something happens in between "
                "(e.g. an activation or a sum)")
    if counts[prev.path] > 1:
        return f"the layer before it, {prev.path!r}, is called {counts[prev.path]} times"
    if prev.module.kernel.shape[-1] != m.num_features:
        return (f"{prev.path!r} has {prev.module.kernel.shape[-1]} outputs, the BatchNorm "
                f"{m.num_features} features")
    return ""


def batchnorm_pairs(model: nnx.Module, x: Any) -> list[tuple[str, str]]:
    """``[(linear_path, batchnorm_path), ...]`` in forward order: the folds ``fold_batchnorm``
    makes. ``x`` is an example input (an array or a ``jax.ShapeDtypeStruct``).

    Raises :class:`CanonizerError` for a BatchNorm that cannot be folded.
    """
    calls = _trace(model, x)
    counts = Counter(c.path for c in calls)
    pairs, seen = [], set()
    for i, call in enumerate(calls):
        if not isinstance(call.module, nnx.BatchNorm) or call.path in seen:
            continue
        seen.add(call.path)
        why = _check_pair(calls, i, counts)
        if why:
            raise CanonizerError(f"cannot fold BatchNorm {call.path!r} into a linear layer: {why}")
        pairs.append((calls[i - 1].path, call.path))
    return pairs


def _fold(linear: nnx.Module, bn: nnx.BatchNorm) -> None:
    """Fold ``bn`` into ``linear`` in place (``linear`` belongs to the cloned model).

    Computed in float64 NumPy for concrete parameters (exact and no compilation), in JAX when
    traced (folding inside ``jit``)."""
    leaves = [linear.kernel[...], bn.mean[...], bn.var[...]]
    dtype = leaves[0].dtype
    if any(isinstance(v, jax.core.Tracer) for v in leaves):
        xp, work = jnp, jnp.promote_types(dtype, jnp.float32)
        cast = lambda v: jnp.asarray(v, dtype)
    else:
        xp, work = np, np.float64
        cast = lambda v: jax.device_put(np.asarray(v).astype(dtype))
    kernel, mean, var = (xp.asarray(v, work) for v in leaves)
    gamma = xp.asarray(bn.scale[...], work) if bn.scale is not None else xp.ones_like(mean)
    beta = xp.asarray(bn.bias[...], work) if bn.bias is not None else xp.zeros_like(mean)
    b = xp.asarray(linear.bias[...], work) if linear.bias is not None else xp.zeros_like(mean)
    scale = gamma / xp.sqrt(var + bn.epsilon)
    linear.kernel[...] = cast(kernel * scale)
    new_bias = cast((b - mean) * scale + beta)
    if linear.bias is not None:
        linear.bias[...] = new_bias
    else:
        linear.bias = nnx.Param(new_bias)
        linear.use_bias = True


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


def fold_batchnorm(model: Any, x: Any, *, variables: Any = None, check: bool = True) -> Any:
    """A copy of ``model`` with every BatchNorm folded into the Linear/Conv layer before it.

    For a Flax Linen module pass its ``variables``; the result is then ``(folded_module,
    folded_variables)`` (:class:`FoldedLinen`: the BatchNorm calls become the identity).

    ``x`` is an example input (array or ``jax.ShapeDtypeStruct``), used to find the call
    order. The model must be in inference mode (``model.eval()``). The returned model computes
    the same function (up to float rounding) with each BN replaced by :class:`Identity`; the
    original is not modified. With ``check`` and a concrete ``x`` both models are run on ``x``
    and a mismatch (e.g. the linear layer's output is also used elsewhere) raises
    :class:`CanonizerError`. Models without BatchNorm come back as an unchanged copy.
    """
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen module needs its variables: pass variables=...")
        return _fold_linen(model, variables, x, check)
    pairs = batchnorm_pairs(model, x)
    folded = nnx.clone(model)
    if not pairs:
        return folded
    linear_of = {bn: lin for lin, bn in pairs}  # bn path -> linear path
    modules = {nnx_path(p): n for p, n in nnx.iter_graph(folded) if isinstance(n, nnx.Module)}
    for bn_path, lin_path in linear_of.items():
        _fold(modules[lin_path], modules[bn_path])

    def replace(parts: tuple, node: Any) -> Any:
        return Identity() if nnx_path(parts) in linear_of else node

    folded = nnx.recursive_map(replace, folded)
    if check and not isinstance(x, jax.core.Tracer) and hasattr(x, "__array__"):
        before, after = (np.asarray(_forward(*nnx.split(m), x)) for m in (model, folded))
        scale = max(float(np.max(np.abs(before), initial=0.0)), 1.0)
        err = float(np.max(np.abs(before - after), initial=0.0))
        if not err <= 1e-4 * scale:
            raise CanonizerError(
                f"folding {pairs} changed the model output by {err:.3g} (scale {scale:.3g}): "
                "a folded layer's output is probably also used elsewhere; fold by hand")
    return folded


# ---------------------------------------------------------------- Flax Linen
class FoldedLinen(nn.Module):
    """``inner`` with the BatchNorm calls at ``identity`` (paths) replaced by the identity: what
    :func:`fold_batchnorm` returns for a Linen model, its variables under ``inner``."""

    inner: nn.Module
    identity: tuple[str, ...]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with recorder.linen_as_identity(frozenset(f"inner/{p}" for p in self.identity)):
            return self.inner(*args, **kwargs)


def _fold_linen(model: nn.Module, variables: Any, x: Any, check: bool) -> tuple[Any, Any]:
    calls = recorder.linen_leaf_calls(model, variables,
                                      jax.ShapeDtypeStruct(np.shape(x), x.dtype))
    params = jax.tree.map(np.asarray, dict(variables.get("params", {})))
    identity = []
    for i, call in enumerate(calls):
        if not isinstance(call.module, nn.BatchNorm):
            continue
        bn, prev = call.module, calls[i - 1] if i > 0 else None
        why = ""
        if not (call.kwargs.get("use_running_average", bn.use_running_average) is True):
            why = "it is in training mode: build it with use_running_average=True"
        elif prev is None or not isinstance(prev.module, (nn.Dense, nn.Conv)):
            why = "it does not directly follow a Dense/Conv layer"
        elif not call.args or call.args[0] is not prev.out:
            why = f"its input is not the output of {prev.path!r}"
        elif bn.axis not in (-1, len(call.args[0].shape) - 1):
            why = f"it normalizes axis {bn.axis}, not the last (feature) axis"
        elif not prev.module.use_bias:
            why = (f"{prev.path!r} has no bias to absorb the shift: build it with "
                   "use_bias=True")
        if why:
            raise CanonizerError(f"cannot fold BatchNorm {call.path!r}: {why}")
        lin, bnp = _at(params, prev.path), _at(params, call.path)
        stats = _at(jax.tree.map(np.asarray, dict(variables["batch_stats"])), call.path)
        mean, var = np.float64(stats["mean"]), np.float64(stats["var"])
        gamma = np.float64(bnp["scale"]) if bn.use_scale else np.ones_like(mean)
        beta = np.float64(bnp["bias"]) if bn.use_bias else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + bn.epsilon)
        dtype = lin["kernel"].dtype
        lin["kernel"] = (np.float64(lin["kernel"]) * scale).astype(dtype)
        lin["bias"] = ((np.float64(lin["bias"]) - mean) * scale + beta).astype(dtype)
        identity.append(call.path)
    folded = FoldedLinen(model, tuple(identity))
    new = {k: {"inner": v} for k, v in dict(variables).items() if k != "params"}
    new["params"] = {"inner": jax.tree.map(jnp.asarray, params)}
    if check and not isinstance(x, jax.core.Tracer) and hasattr(x, "__array__"):
        before, after = np.asarray(model.apply(variables, x)), np.asarray(folded.apply(new, x))
        scale_ = max(float(np.max(np.abs(before), initial=0.0)), 1.0)
        if not float(np.max(np.abs(before - after), initial=0.0)) <= 1e-4 * scale_:
            raise CanonizerError(f"folding {identity} changed the model output; fold by hand")
    return folded, new


def _at(tree: dict, path: str) -> dict:
    """The sub-dict of ``tree`` at a '/'-joined module path (copied, so it can be changed)."""
    node = tree
    parts = path.split("/")
    for p in parts[:-1]:
        node[p] = dict(node[p])
        node = node[p]
    node[parts[-1]] = dict(node[parts[-1]])
    return node[parts[-1]]
