"""``cgan``: PLG-MI's conditional GAN (Yuan et al. 2023), one per target.

A conditional-BN generator and a projection discriminator with the hinge loss, trained on public images
pseudo-labelled by the target (the top-k most confident per class), plus alpha x the target's max-margin
loss on randomly augmented generated images (the release's training views: crop 0.8-1, colour jitter 0.2 with
probability 0.5, flip, rotation 5 degrees with probability 0.5).  Paper settings: top-30 per class, Adam 2e-4
betas (0, 0.9), alpha 0.2, 30k generator steps of 5 critic steps (the ToolBox's 150k critic iterations), z 128,
public images not flipped."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks.plgmi import random_views
from ..losses import max_margin_loss
from ..models.generators import CondGenerator, ProjectionDiscriminator
from .adversarial import AdversarialPrior, noise, target_probs
from .base import PriorConfig, register_prior
from .data import PublicImages


@register_prior
class CganPrior(AdversarialPrior):
    """PLG-MI's cGAN on public images pseudo-labelled by the target; one per target."""

    name = "cgan"
    needs_target = True
    version = 2                 # issue 24's review: the inversion loss on augmented fakes
    preset_versions = {"paper": 2}          # and g_width 128, no flip
    presets = {
        # g_width 128: the release's generator channels (nf 64: 1024 x 4 x 4 -> ... -> 64); D keeps width 64
        "paper": {"iterations": 30000, "z_dim": 128, "betas": (0.0, 0.9), "n_critic": 5, "topk": 30, "alpha": 0.2,
                  "g_width": 128, "hflip": False},
        "quick": {"iterations": 300, "z_dim": 128, "width": 16, "betas": (0.0, 0.9), "n_critic": 1, "topk": 20,
                  "alpha": 0.2, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    }

    def build(self, cfg: PriorConfig, data: PublicImages, target: nn.Module | None):
        K = int(target.num_classes)
        G = CondGenerator(K, cfg.z_dim, data.resolution, data.channels, cfg.g_width or cfg.width)
        D = ProjectionDiscriminator(K, data.resolution, data.channels, cfg.width)
        probs = target_probs(target, data)
        k = min(cfg.topk, data.n)
        top = probs.topk(k, dim=0).indices.T.cpu()                     # (K, k) public indices per class
        ctx = {"K": K, "pool_idx": top.reshape(-1), "pool_lab": torch.arange(K).repeat_interleave(k)}
        return G, D, ctx, {"pseudo_label_confidence": float(probs.topk(k, dim=0).values.mean())}

    def critic_loss(self, cfg, G, D, data, gen, ctx):
        bs, dev = cfg.batch_size, data.device
        real, j = data.sample(bs, gen, ctx["pool_idx"])      # top-k pseudo-labelled public images
        y_real = ctx["pool_lab"][j].to(dev)
        z = noise(gen, bs, cfg.z_dim, dev)
        yf = torch.randint(ctx["K"], (bs,), generator=gen).to(dev)
        with torch.no_grad():
            fake = G(z, yf)
        return F.relu(1 - D(real, y_real)).mean() + F.relu(1 + D(fake, yf)).mean()

    def generator_loss(self, cfg, G, D, data, gen, ctx, target, z):
        yf = torch.randint(ctx["K"], (cfg.batch_size,), generator=gen).to(data.device)
        fake = G(z, yf)
        g_loss = -D(fake, yf).mean()
        if cfg.alpha > 0:        # on augmented fakes, as the release's train_cgan.py (and the ToolBox) do
            views = random_views(fake, gen, (0.8, 1.0), 0.2, 5.0, rotation_p=0.5, jitter_p=0.5)
            g_loss = g_loss + cfg.alpha * max_margin_loss(target(views), yf).mean()
        return g_loss
