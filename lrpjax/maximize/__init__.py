"""Activation maximization (Montavon, Samek & Mueller 2018, Part A): prototypes of classes.

* plain AM: x* = argmax_x log p(ω_c|x) − λ‖x − x̄‖² (Simonyan et al. 2013 use the logit z_c);
* AM with an expert: x* = argmax_x log p(ω_c|x) + β log p(x), p a Gaussian-Bernoulli RBM;
* AM in code space: z* = argmax_z log p(ω_c|g(z)) − λ‖z‖², x* = g(z*), g a GAN generator
  (Nguyen et al. 2016; here a self-conditioned DCGAN with a Gaussian-mixture code prior);
* from global to local: an extra −η‖x − x₀‖².

One optax loop, ``jit(vmap(vmap(scan)))`` over targets and restarts: :func:`activation_maximization`.
Submodules: ``loop``, ``objectives``, ``rbm`` (GB-RBM expert), ``gan`` (code space), ``cluster``
(k-means pseudo-labels for the GAN), ``density`` (PPCA naturalness score), ``cache``
(config-hashed checkpoints).
"""

from lrpjax.maximize.density import PPCA, fit_ppca, nearest_distance, ppca_log_prob
from lrpjax.maximize.gan import (
    GANParams,
    code_starts,
    generator,
    load_or_train_gan,
    prior_regularizer,
    sample,
    sample_codes,
    train_gan,
)
from lrpjax.maximize.loop import (
    AMProgram,
    AMResult,
    activation_maximization,
    am_program,
    default_unroll,
    random_starts,
)
from lrpjax.maximize.objectives import (
    channel,
    class_log_prob,
    class_logit,
    expert_regularizer,
    l2_regularizer,
    local_regularizer,
    nnx_features,
    nnx_logits,
    unit,
)
from lrpjax.maximize.rbm import (
    RBMParams,
    Standardizer,
    free_energy,
    load_or_train_rbm,
    pixel_log_prob,
    train_rbm,
)

__all__ = [
    "PPCA",
    "AMProgram",
    "AMResult",
    "GANParams",
    "RBMParams",
    "Standardizer",
    "activation_maximization",
    "am_program",
    "channel",
    "class_log_prob",
    "class_logit",
    "code_starts",
    "default_unroll",
    "expert_regularizer",
    "fit_ppca",
    "free_energy",
    "generator",
    "l2_regularizer",
    "load_or_train_gan",
    "load_or_train_rbm",
    "local_regularizer",
    "nearest_distance",
    "nnx_features",
    "nnx_logits",
    "pixel_log_prob",
    "ppca_log_prob",
    "prior_regularizer",
    "random_starts",
    "sample",
    "sample_codes",
    "train_gan",
    "train_rbm",
    "unit",
]
