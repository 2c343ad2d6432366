"""Activation maximization (Montavon, Samek & Mueller 2018, Part A): prototypes of classes.

* plain AM: x* = argmax_x log p(ω_c|x) − λ‖x‖² (Simonyan et al. 2013 use the logit z_c);
* AM with an expert: x* = argmax_x log p(ω_c|x) + β log p(x), p a Gaussian-Bernoulli RBM;
* AM in code space: z* = argmax_z log p(ω_c|g(z)) − λ‖z‖², x* = g(z*), g a GAN generator
  (Nguyen et al. 2016; here a self-conditioned DCGAN with a Gaussian-mixture code prior);
* from global to local: an extra −η‖x − x₀‖².

One optax loop, ``jit(vmap(vmap(scan)))`` over targets and restarts: :func:`activation_maximization`;
:func:`weighted_terms` puts a regularizer's weight into the target, so a sweep over λ or β is one
vmapped run too. Submodules: ``loop``, ``objectives``, ``rbm`` (GB-RBM expert), ``gan`` (code
space), ``cluster`` (k-means pseudo-labels for the GAN), ``density`` (naturalness scores: PPCA,
nearest digit, pixel statistics), ``cache`` (config-hashed checkpoints).
"""

from lrpjax.maximize.density import (
    PPCA,
    SCORES,
    NaturalnessJudge,
    fit_judge,
    fit_ppca,
    intensity_w1,
    naturalness,
    nearest_cosine,
    nearest_distance,
    ppca_log_prob,
)
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
    weighted_terms,
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
    "SCORES",
    "AMProgram",
    "AMResult",
    "GANParams",
    "NaturalnessJudge",
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
    "fit_judge",
    "fit_ppca",
    "free_energy",
    "generator",
    "intensity_w1",
    "l2_regularizer",
    "load_or_train_gan",
    "load_or_train_rbm",
    "local_regularizer",
    "naturalness",
    "nearest_cosine",
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
    "weighted_terms",
]
