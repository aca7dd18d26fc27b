"""GMI, the Generative Model-Inversion attack (Zhang et al., CVPR 2020).

White-box.  Search the latent space of a GAN trained on public data (prior kind ``gan``)::

    min_z  -D(G(z)) + lambda_iden * CE(T(G(z)), y)

The update is the reference release's momentum rule, in its Nesterov form (``v`` starts at 0)::

    v' = m v - lr g,    z <- clamp(z - m v + (1 + m) v', -1, 1)

which is exactly ``torch.optim.SGD(momentum=m, nesterov=True)`` followed by the clamp (the clamp never
touches ``v``).  The initial ``z ~ N(0, I)`` is NOT clamped (the reference clamps only after a step).

Defaults are the 64 px CelebA settings (protocols.md): 1500 iterations, lr 0.02, momentum 0.9,
lambda 100, z dim 100, identities in batches of 60.  Losses are batch means, as in the reference
(so the per-sample step depends on the batch size).  docs/attacks.md lists the remaining deviations.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Attack, latent_descent, register_attack


class GMI(Attack):
    """GMI: WGAN prior + identity cross-entropy, Nesterov momentum on z, z clamped to [-1, 1] after each step."""

    name = "gmi"
    strength = 30
    access = "white-box"
    prior_kinds = ("gan",)
    defaults = {"iterations": 1500, "lr": 0.02, "momentum": 0.9, "lambda_iden": 100.0, "lambda_prior": 1.0,
                "z_clip": 1.0, "batch_size": 60}
    presets = {"quick": {"iterations": 150, "batch_size": 50}}

    def generator(self, prior: Mapping[str, Any]) -> nn.Module:
        return prior[self.prior_kinds[0]].generator

    def init_latents(self, access, ids, prior, gen):
        G = self.generator(prior)
        return {"z": torch.randn(len(ids), G.z_dim, generator=gen).to(ids.device)}

    def prior_loss(self, prior: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
        return -prior[self.prior_kinds[0]].discriminator(x).mean()

    def identity_loss(self, target: nn.Module, prior: Mapping[str, Any], x: torch.Tensor, ids: torch.Tensor,
                      eraser: nn.Module | None) -> torch.Tensor:
        return F.cross_entropy(target(self.to_target(x, eraser)), ids)

    def objective(self, access, prior, x, ids, eraser) -> torch.Tensor:
        p = self.params
        return p["lambda_prior"] * self.prior_loss(prior, x) + p["lambda_iden"] * self.identity_loss(
            access, prior, x, ids, eraser)

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        G = self.generator(prior)
        return {"z": latent_descent(state["z"], lambda z: self.objective(access, prior, G(z), ids, eraser),
                                    self.params, log, tick, self.chunk.share(len(ids)))}

    def decode(self, prior, state, ids, gen):
        return self.generator(prior)(state["z"])


register_attack(GMI)
