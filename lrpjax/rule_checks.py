"""Validation of rule parameters at construction, z^B's box check at run time, and the guarded
arithmetic of the rules (quotients and products that never turn 0 * inf or x / 0 into NaN).

Rules are frozen dataclasses used as ``jax.jit`` static arguments, so their parameters are
checked once, when the rule is built, and stored as plain Python floats (hashable, immutable)
or read-only NumPy copies (array bounds): a caller who later changes their own array in place
changes nothing here. Every error names the rule and the parameter.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["OUTSIDE_BOX", "bound", "box_bounds", "box_key", "check_box", "divide", "fields", "flag",
           "number", "outside_box", "share", "stabilize", "times", "validator"]


# ------------------------------------------------------------------ guarded arithmetic
def stabilize(z: jax.Array, epsilon: float | jax.Array) -> jax.Array:
    """stab(z) = z + epsilon * sign(z), with sign(0) := +1 (Zennit's convention)."""
    return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def divide(R: jax.Array, d: jax.Array) -> jax.Array:
    """s = R / d with s := 0 where d == 0 (dead neurons give zeros, never NaN)."""
    zero = d == 0
    return jnp.where(zero, jnp.zeros_like(R), R / jnp.where(zero, jnp.ones_like(d), d))


def times(a: jax.Array, t: jax.Array) -> jax.Array:
    """a * t, and 0 where a == 0: an input that contributes nothing gets nothing, never
    0 * inf = NaN where a transposed product W^T s overflowed."""
    return jnp.where(a == 0, jnp.zeros_like(t), a * t)


def share(R: jax.Array, d: jax.Array, epsilon: float) -> jax.Array:
    """s = R / stab(d), and s := 0 where d == 0. For a sum d of same-signed terms (z+, alpha-beta)
    d == 0 means every numerator is 0: the share is 0, never 0 * (R / eps) (inf for large R)."""
    return divide(R, jnp.where(d == 0, jnp.zeros_like(d), stabilize(d, epsilon)))


# ------------------------------------------------------------------ parameters
def validator(numbers: dict[str, float | None], flags: tuple[str, ...] = ()) -> Callable:
    """A dataclass ``__post_init__`` that runs :func:`fields` with these specifications."""
    def __post_init__(self: Any) -> None:
        fields(self, numbers, flags)
    return __post_init__


def fields(rule: Any, numbers: dict[str, float | None] | None = None,
           flags: tuple[str, ...] = ()) -> None:
    """Validate and normalise a frozen rule's fields in place: ``numbers`` maps a field to its
    minimum (None: any finite number), ``flags`` are booleans."""
    owner = type(rule).__name__
    for name, minimum in (numbers or {}).items():
        object.__setattr__(rule, name, number(owner, name, getattr(rule, name), minimum=minimum))
    for name in flags:
        object.__setattr__(rule, name, flag(owner, name, getattr(rule, name)))


def number(owner: str, name: str, value: Any, *, minimum: float | None = 0.0) -> float:
    """``value`` as a finite Python float >= ``minimum`` (no bound for None)."""
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}") from err
    if not math.isfinite(out):
        raise ValueError(f"{owner}: {name} must be finite, got {out}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum:g}, got {out:g}")
    return out


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a Python bool (True/False only)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def bound(owner: str, name: str, value: Any) -> float | np.ndarray | jax.core.Tracer:
    """A box bound: a finite float, or a finite read-only NumPy copy of an array (a traced
    bound, only possible under ``jax.jit``, is kept as it is)."""
    if isinstance(value, jax.core.Tracer):
        return value
    if np.ndim(value) == 0:
        return number(owner, name, value, minimum=None)
    try:
        arr = np.array(value)  # a copy, never a view of the caller's array
    except Exception as err:  # anything that is no array of numbers
        raise TypeError(f"{owner}: {name} must be a number or an array, got {value!r}") from err
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{owner}: {name} must be real numbers, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{owner}: {name} must be real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{owner}: {name} must be finite, got {arr.size - np.isfinite(arr).sum()}"
                         " NaN or infinite entries")
    arr.setflags(write=False)
    return arr


def check_box(owner: str, low: Any, high: Any) -> None:
    """``low <= high`` elementwise (after broadcasting)."""
    if isinstance(low, jax.core.Tracer) or isinstance(high, jax.core.Tracer):
        return
    lo, hi = np.asarray(low), np.asarray(high)
    try:
        bad = np.broadcast_to(lo > hi, np.broadcast_shapes(lo.shape, hi.shape))
    except ValueError as err:
        raise ValueError(f"{owner}: low of shape {lo.shape} and high of shape {hi.shape} do not "
                         "broadcast together") from err
    if np.any(bad):
        where = np.argwhere(bad)[0]
        at = f" at index {tuple(int(i) for i in where)}" if bad.ndim else ""
        lo_v = np.broadcast_to(lo, bad.shape)[tuple(where)]
        hi_v = np.broadcast_to(hi, bad.shape)[tuple(where)]
        raise ValueError(f"{owner}: low must be <= high, got low={lo_v:g} > high={hi_v:g}{at}")


def box_key(value: Any) -> tuple:
    """A hashable key equal for equal bounds: the float, or an array's shape, dtype and the
    sha256 of its bytes (traced bounds: their identity)."""
    if isinstance(value, float):
        return ("scalar", value)
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("array", value.shape, value.dtype.str, digest)
    return ("id", id(value))


def box_bounds(rule: str, low: Any, high: Any, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """low and high in a's dtype, broadcast to a's shape; a bound that the dtype cannot hold
    (1e30 in float16) raises."""
    for name, b in (("low", low), ("high", high)):
        if not isinstance(b, jax.core.Tracer):
            with np.errstate(over="ignore", invalid="ignore"):
                cast = np.asarray(b, dtype=jnp.dtype(a.dtype))
            if not np.all(np.isfinite(cast)):
                raise ValueError(f"{rule}: {name} is not finite in the layer input's dtype "
                                 f"{a.dtype} (largest {float(jnp.finfo(a.dtype).max):g})")
    try:
        return (jnp.broadcast_to(jnp.asarray(low, a.dtype), a.shape),
                jnp.broadcast_to(jnp.asarray(high, a.dtype), a.shape))
    except ValueError as err:
        raise ValueError(f"{rule}: bounds of shapes {np.shape(low)} / {np.shape(high)} do not "
                         f"broadcast to the layer input of shape {a.shape}") from err


OUTSIDE_BOX = ("lies outside the box [low, high]; z^B assumes low <= input <= high. Pass the "
               "range of the model's input as the box, or use another rule (under jax.jit "
               "without checks the rule computes its formula as written)")


def outside_box(a: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Per entry of a (flattened): below low or above high by more than a few roundings."""
    scale = jnp.maximum(jnp.maximum(jnp.abs(low), jnp.abs(high)), 1.0)
    tol = 16 * jnp.finfo(a.dtype).eps * scale
    return ((a < low - tol) | (a > high + tol)).reshape(-1)
