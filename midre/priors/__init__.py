"""Attack priors trained on PUBLIC data only, cached in a directory and resumable; one file per kind.

==============  ===========  ====================================================================================
kind            per target   what it is (used by)
==============  ===========  ====================================================================================
``gan``         no           DCGAN generator + critic trained with WGAN-GP on public images (GMI, BREP-MI,
                             RLB-MI, LOMMA+GMI): :mod:`midre.priors.gan`
``kedmi``       yes          inversion-specific GAN: (K+1)-output discriminator trained with the target's soft
                             labels (KedMI, LOMMA+KedMI): :mod:`midre.priors.kedmi`
``cgan``        yes          conditional GAN on public images pseudo-labelled by the target + alpha x its
                             max-margin loss (PLG-MI): :mod:`midre.priors.cgan`
``lomma``       yes          augmented models distilled from the target + p_reg (LOMMA): :mod:`midre.priors.lomma`
``stylegan2``   no           StyleGAN2 generator: converted official weights (``path``) or trained on public
                             images (PPA, IF-GMI, MIRROR): :mod:`midre.priors.stylegan2`
``tacgan``      yes          LOKT's T-ACGAN trained with the target's top-1 labels only (counted queries) +
                             surrogate models trained on its labelled samples (LOKT): :mod:`midre.priors.tacgan`
``c2fmi``       yes          C2FMI's embedding model (public identities) + inverse model from the target's
                             prediction to its logits, the target queried through a counting oracle (C2FMI, with
                             ``stylegan2``): :mod:`midre.priors.c2fmi`
``secretgen``   yes          SecretGen's inpainting GAN (context net + identity generator, global and local
                             WGAN-GP critics), diversity on the target's features; its black-box twin
                             ``secretgen_bb`` (shared, a public model's features): :mod:`midre.priors.secretgen`
==============  ===========  ====================================================================================

Every kind is a :class:`PriorKind` registered in :data:`PRIORS` (``@register_prior``); plugins add kinds
through the entry-point group ``midre.priors`` (docs/plugins.md, "Adding a prior kind").  Attacks name the
kinds they need in ``prior_kinds``.

The target is only ever *queried on public images*; no private image reaches a prior (see
:func:`assert_public_only`, used by ``midre attack`` and the pipeline).

Caching: ``train_prior`` stores a prior in ``out_dir/<kind>-<key>/`` where ``key`` hashes the kind, the
public data (image bytes), the target's weights, the resolved config and the seed.  A second call with
the same inputs loads it.  During training a resume state (weights, optimizer moments, RNG state,
iteration) is written every ``ckpt_every`` iterations; an interrupted call continues from it and ends
with the same weights as an uninterrupted one.

Presets: ``"paper"`` = the 64 px CelebA settings of protocols.md; ``"quick"`` = scaled down for the
embedded 32 px synthetic benchmark on 2 CPU cores (each prior trains in about a minute).
"""
from . import c2fmi, cgan, gan, kedmi, lomma, secretgen, stylegan2, tacgan  # noqa: F401,E402  (register the built-in kinds)
from .adversarial import AdversarialPrior  # noqa: F401
from .base import PRESETS, PRIOR_FORMAT, PRIORS, Prior, PriorConfig, PriorKind, get_prior, prior_key, register_prior  # noqa: F401
from .data import PublicImages, assert_public_only, data_fingerprint, data_summary  # noqa: F401
from .train import load_prior, prepare_priors, prior_config, train_prior  # noqa: F401
