"""``kedmi``: KedMI's inversion-specific GAN (Chen et al. 2021), one per target (KedMI, LOMMA+KedMI).

The discriminator has K + 1 outputs and is trained with the target's soft labels on public images plus
0.5 x the unsupervised term; the generator by L1 feature matching + 1e-4 x the entropy of D's identity
prediction.  Paper settings: Adam 2e-4, betas (0.5, 0.999), batch 64 (protocols.md); ``n_critic`` 5 discriminator
steps per generator step and no flip of the public images, as in the release (``k+1_gan.py``: the generator steps
on every 5th batch; its GAN loader does not flip); 10,000 generator steps = the ToolBox's 50,000 discriminator
iterations (the release's 120 epochs give about 11,000 on its public set)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.generators import DCGANDiscriminator, DCGANGenerator
from .adversarial import AdversarialPrior, noise, target_probs
from .base import PriorConfig, register_prior
from .data import PublicImages


def kedmi_discriminator_loss(D: nn.Module, real: torch.Tensor, soft: torch.Tensor, unl: torch.Tensor,
                             fake: torch.Tensor) -> torch.Tensor:
    """KedMI's discriminator loss (reference release): soft cross-entropy to the target's soft labels on
    a labelled batch + 0.5 * [softplus(LSE) - LSE on an unlabelled batch + softplus(LSE) on fakes]."""
    sup = -(soft * F.log_softmax(D.class_logits(real), 1)).sum(1).mean()
    lse_u, lse_f = D.class_logits(unl).logsumexp(1), D.class_logits(fake).logsumexp(1)
    return sup + 0.5 * ((F.softplus(lse_u) - lse_u).mean() + F.softplus(lse_f).mean())


def kedmi_generator_loss(D: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """KedMI's generator loss (reference release): L1 feature matching of the mean discriminator
    features (mean over feature dims) + 1e-4 * the entropy of D's identity prediction on the fakes,
    summed over the batch (the release's HLoss)."""
    h = D.features(fake)
    match = (D.features(real).detach().mean(0) - h.mean(0)).abs().mean()
    out = D.out(h)                                   # one pass: class_logits = out[:, :K] - out[:, K]
    logits = out[:, :-1] - out[:, -1:]
    entropy = -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum()
    return match + 1e-4 * entropy


@register_prior
class KedmiPrior(AdversarialPrior):
    """KedMI's GAN: (K+1)-output discriminator on the target's soft labels; one per target."""

    name = "kedmi"
    needs_target = True
    preset_versions = {"paper": 2}          # issue 24's review: n_critic 5, 10,000 G steps, no flip
    presets = {
        "paper": {"iterations": 10000, "z_dim": 100, "n_critic": 5, "hflip": False},
        "quick": {"iterations": 300, "width": 16, "n_critic": 1, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    }

    def build(self, cfg: PriorConfig, data: PublicImages, target: nn.Module | None):
        K = int(target.num_classes)
        G = DCGANGenerator(cfg.z_dim, data.resolution, data.channels, cfg.width)
        D = DCGANDiscriminator(data.resolution, data.channels, cfg.width, K + 1)
        return G, D, {"K": K, "soft": target_probs(target, data)}, {}

    def critic_loss(self, cfg, G, D, data, gen, ctx):
        real, i = data.sample(cfg.batch_size, gen)
        z = noise(gen, cfg.batch_size, cfg.z_dim, data.device)
        with torch.no_grad():
            fake = G(z)
        unl, _ = data.sample(cfg.batch_size, gen)          # the reference's separate unlabelled batch
        return kedmi_discriminator_loss(D, real, ctx["soft"][i.to(data.device)], unl, fake)

    def generator_loss(self, cfg, G, D, data, gen, ctx, target, z):
        real, _ = data.sample(cfg.batch_size, gen)
        return kedmi_generator_loss(D, G(z), real)
