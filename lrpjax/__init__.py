"""lrpjax: interpreting and explaining deep neural networks in JAX/Flax.

Implements the methods of Montavon, Samek & Mueller, "Methods for interpreting and
understanding deep neural networks", Digital Signal Processing 73 (2018).
"""

from . import attribution, canonizers, composites, facts, layers, ops, rules, transformer
from .attribution import integrated_gradients, smoothgrad
from .composites import Composite
from .explain import describe, gradient, gradient_x_input, relevance, sensitivity
from .layerwise import layer_relevance
from .xla import cpu_compiler_options

__version__ = "0.1.0"

__all__ = [
    "Composite",
    "attribution",
    "canonizers",
    "composites",
    "cpu_compiler_options",
    "describe",
    "facts",
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "layer_relevance",
    "layers",
    "ops",
    "relevance",
    "rules",
    "sensitivity",
    "smoothgrad",
    "transformer",
]
