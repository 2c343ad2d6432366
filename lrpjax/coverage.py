"""Layer classification and the coverage report shared by the LRP front-ends.

Interceptors and module views see modules only. Every module call the front-end sees is
classified (dense, conv, pooling, ...) and given a rule; the :class:`Coverage` report lists, per
layer, the rule used or "plain gradient" and why, so no layer silently falls back to the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flax import linen as nn
from flax import nnx

from . import layers
from .composites import Composite, LayerInfo

__all__ = ["Coverage", "LayerRow", "UnsupportedLayerError", "assign_rules", "classify"]

_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nnx.Linear, nnx.LinearGeneral, nn.Dense, nn.DenseGeneral), "dense"),
    ((nnx.Conv, nn.Conv), "conv"),
    ((layers.AvgPool, layers.SumPool, layers.LinenAvgPool, layers.LinenSumPool), "avgpool"),
    ((layers.MaxPool, layers.LinenMaxPool), "maxpool"),
    ((layers.Flatten, layers.LinenFlatten), "flatten"),
    ((layers.Add, layers.LinenAdd), "add"),
    ((layers.ReLU, layers.LinenReLU, layers.Identity), "activation"),
    ((nnx.BatchNorm, nn.BatchNorm), "batchnorm"),
    ((nnx.Dropout, nn.Dropout), "dropout"),
)


class UnsupportedLayerError(ValueError):
    """A layer LRP has no rule for (and the composite assigned none)."""


def classify(module: Any) -> str:
    """The layer kind of a module; "unsupported" for unknown leaf modules."""
    for types, kind in _KINDS:
        if isinstance(module, types):
            return kind
    return "unsupported"


@dataclass(frozen=True)
class LayerRow:
    """One line of the coverage report."""

    path: str
    type_name: str
    kind: str
    rule: Any
    source: str  # "composite" | "default" | "table" | "unsupported"
    proven: str = ""  # facts lrpjax.facts proved that the rule uses (cheaper, exact forms)
    where: str = ""  # the user's source line, "file.py:12 (Block.__call__)"
    held: str = ""  # what the composite holds constant here, e.g. "normaliser held constant"

    @property
    def rule_name(self) -> str:
        if self.rule is None:
            return "plain gradient"
        if self.source == "table" and type(self.rule).__name__ == "Gradient":
            return "winner-take-all"
        return repr(self.rule)

    @property
    def note(self) -> str:
        if self.source == "unsupported":
            return "no rule: plain gradient"
        if self.source == "default":
            return "default" + (f"; {self.held}" if self.held else "")
        return self.held


@dataclass(frozen=True)
class Coverage:
    """The per-layer report: which rule reached which layer, in forward order."""

    rows: tuple[LayerRow, ...]
    composite: str = ""
    structural: tuple[tuple[str, int], ...] = ()  # (primitive, count) carried exactly

    @property
    def fallbacks(self) -> tuple[LayerRow, ...]:
        """Layers that got the plain gradient because no rule applies to them."""
        return tuple(r for r in self.rows if r.source == "unsupported")

    def rule(self, path: str) -> Any:
        for r in self.rows:
            if r.path == path:
                return r.rule
        raise KeyError(f"no layer with path {path!r}; layers: {[r.path for r in self.rows]}")

    def __str__(self) -> str:
        proven = any(r.proven for r in self.rows)
        head = ("layer", "type", "kind", "rule", *(("proven",) if proven else ()), "where",
                "note")
        body = [(r.path or "(root)", r.type_name, r.kind, r.rule_name,
                 *((r.proven,) if proven else ()), r.where, r.note) for r in self.rows]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=False)]
        lines = [f"composite: {self.composite}"] if self.composite else []
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines += [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        if self.structural:
            moved = ", ".join(f"{name} x{n}" for name, n in self.structural)
            lines.append(f"carried exactly (structural): {moved}")
        return "\n".join(line.rstrip() for line in lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython / notebooks
        p.text(str(self))


def assign_rules(
    calls: list[tuple[str, Any]], composite: Composite, *, strict: bool = True
) -> tuple[dict[str, LayerRow], Coverage]:
    """Give each called leaf module (``(path, module)`` in forward order) its rule.

    Raises :class:`UnsupportedLayerError` for unsupported layers when ``strict``.
    """
    seen: dict[str, Any] = {}
    for path, module in calls:
        seen.setdefault(path, module)
    linear = [p for p, m in seen.items() if classify(m) in ("dense", "conv")]
    rows: dict[str, LayerRow] = {}
    for path, module in seen.items():
        kind = classify(module)
        index = linear.index(path) if path in linear else -1
        info = LayerInfo(path=path, kind=kind, module_type=type(module), index=index,
                         n_linear=len(linear), module=module)
        rule, source = composite.rule_for(info)
        if rule is None and kind == "batchnorm":
            hint = "fold it into the adjacent linear layer first (lrpjax.canonizers)"
        else:
            hint = (f"assign a rule to it in the composite (e.g. by_path({{{path!r}: Gradient()}})) "
                    "or pass strict=False to let it use the plain gradient")
        if rule is None and strict:
            raise UnsupportedLayerError(
                f"layer {path!r} of type {type(module).__name__} is not supported by LRP: {hint}"
            )
        rows[path] = LayerRow(path, type(module).__name__, kind, rule, source)
    return rows, Coverage(tuple(rows.values()), composite=repr(composite))
