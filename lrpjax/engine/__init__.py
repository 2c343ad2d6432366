"""The LRP engine: one interpreter over a model's jaxpr, for every front-end.

A model (NNX, Linen, a function or a callable pytree; :mod:`lrpjax.frontends`) is traced to a
jaxpr. :func:`plan` walks its equations once, statically, and gives every equation whose
result carries relevance (depends on x, floating point) its handling from the rule table
(:mod:`lrpjax.ops`): a *site* (a row of :func:`lrpjax.describe`) with a rule, or an exact
structural move, or an error naming the primitive, the layer path and the user's source line.
:func:`run` then evaluates the jaxpr with every site as a :func:`lrpjax.core.apply_rule` layer,
so one ``jax.vjp`` of the result propagates relevance (Montavon et al. 2018, Sec. 5.2).

Module front-ends mark each leaf module call as a named jit call (:data:`MARK`); the engine
reads the layer path and type from it, so composites choose rules by type, path, position or
callable, while everything between the modules (function-style pooling, a bare ``+``, a bare
``tanh``) is seen equation by equation.
"""

from ..coverage import UnsupportedLayerError
from .graph import MARK, SCOPE, Mark, Plan, Site, UnsupportedPrimitiveError, where
from .plan import plan
from .run import Taps, run

__all__ = ["MARK", "SCOPE", "Mark", "Plan", "Site", "Taps", "UnsupportedLayerError",
           "UnsupportedPrimitiveError", "plan", "run", "where"]

