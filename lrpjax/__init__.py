"""lrpjax: interpreting and explaining deep neural networks in JAX/Flax.

Implements the methods of Montavon, Samek & Mueller, "Methods for interpreting and
understanding deep neural networks", Digital Signal Processing 73 (2018).
"""

__version__ = "0.1.0"
