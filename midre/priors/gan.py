"""``gan``: a DCGAN generator + critic trained with WGAN-GP on public images (GMI, BREP-MI, RLB-MI, LOMMA+GMI).

One prior shared by all targets (trained without the target).  GMI trains it with Adam 2e-4,
betas (0.5, 0.999), batch 64 and 5 critic steps per generator step (protocols.md), on public images that
are never flipped (the GMI, KedMI and Re-thinking_MI loaders flip only in their classifier-training mode).
The ``paper`` preset's 30,000 generator steps are the ToolBox's 150,000 critic iterations (its loop counts
critic steps and steps G on every 5th)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.generators import DCGANDiscriminator, DCGANGenerator
from .adversarial import AdversarialPrior, noise
from .base import PriorConfig, register_prior
from .data import PublicImages


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """WGAN-GP: (||grad D(x_hat)|| - 1)^2 at random interpolates of real and fake images."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    xh = (eps * real + (1 - eps) * fake).requires_grad_(True)
    g, = torch.autograd.grad(D(xh).sum(), xh, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


@register_prior
class GanPrior(AdversarialPrior):
    """DCGAN + WGAN-GP on public images (GMI's prior), shared by all targets."""

    name = "gan"
    needs_target = False
    preset_versions = {"paper": 2}          # issue 24's review: 30,000 G steps, no flip
    presets = {
        "paper": {"iterations": 30000, "z_dim": 100, "hflip": False},
        "quick": {"iterations": 200, "width": 16, "n_critic": 2, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    }

    def build(self, cfg: PriorConfig, data: PublicImages, target: nn.Module | None):
        G = DCGANGenerator(cfg.z_dim, data.resolution, data.channels, cfg.width)
        D = DCGANDiscriminator(data.resolution, data.channels, cfg.width, 1)
        return G, D, {}, {}

    def critic_loss(self, cfg, G, D, data, gen, ctx):
        real, _ = data.sample(cfg.batch_size, gen)
        z = noise(gen, cfg.batch_size, cfg.z_dim, data.device)
        with torch.no_grad():
            fake = G(z)
        return D(fake).mean() - D(real).mean() + cfg.gp_weight * gradient_penalty(D, real, fake, gen)

    def generator_loss(self, cfg, G, D, data, gen, ctx, target, z):
        return -D(G(z)).mean()
