"""PLG-MI, Pseudo-Label Guided model inversion (Yuan et al., AAAI 2023).

White-box.  Prior kind ``cgan``: a conditional GAN trained on public images pseudo-labelled by the
target.  The attack optimises z of G(z, y) for the attacked class y with Adam and a max-margin loss on
two randomly augmented views per step (random resized crop 0.8-1, colour jitter 0.2/0.2, flip,
rotation 5 degrees with probability 0.5 as kornia's default; per-sample parameters, differentiable)::

    min_z  sum_{v=1,2} [ max_{c != y} T(A_v(G(z, y)))_c - T(A_v(G(z, y)))_y ]

Defaults (protocols.md): z dim 128, Adam lr 0.1, 600 iterations, 2 views.

Adaptive against a Trap-MID target (``trapdoor_aware``): the Trap-MID paper's PLG-MI++ latent search adds,
per view, the signature loss of :class:`~midre.defenses.trapmid.TrapdoorAdversary`,
``- 10 cos(g(v), S_aux[y]) + 10 cos(g(v), S_trap[yhat])`` on the target's penultimate features ``g``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from ..losses import max_margin_loss
from .base import Attack, register_attack


def random_views(x: torch.Tensor, gen: torch.Generator, scale=(0.8, 1.0), jitter: float = 0.2,
                 rotation: float = 5.0, flip: bool = True, rotation_p: float = 1.0,
                 jitter_p: float = 1.0) -> torch.Tensor:
    """Differentiable batched augmentation with independent parameters per image (from ``gen``): a square
    crop of ``scale`` of the area, a flip (p 0.5), a rotation within +-``rotation`` degrees applied with
    probability ``rotation_p`` (kornia's ``RandomRotation`` default: 0.5) and brightness / contrast jitter
    applied with probability ``jitter_p``.  A probability of 1 draws no coin (the stream of draws is then
    the one of the version without coins)."""
    b, dev = x.shape[0], x.device

    def u(lo, hi):
        return (torch.rand(b, generator=gen) * (hi - lo) + lo).to(dev)

    s = u(*scale).sqrt()                              # side of the crop relative to the image
    ang = u(-rotation, rotation) * math.pi / 180
    if rotation_p < 1:
        ang = ang * (u(0, 1) < rotation_p)
    tx, ty = u(-1, 1) * (1 - s), u(-1, 1) * (1 - s)   # keep the crop inside the image
    sx = s * torch.where(u(0, 1) < 0.5, -1.0, 1.0) if flip else s
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([sx * cos, -s * sin, tx], 1), torch.stack([sx * sin, s * cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter > 0:
        bright = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        contrast = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        if jitter_p < 1:
            off = (u(0, 1) >= jitter_p).view(b, 1, 1, 1)
            bright, contrast = bright.masked_fill(off, 1.0), contrast.masked_fill(off, 1.0)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = ((y * bright - mean) * contrast + mean)
    return y.clamp(0, 1)


class PLGMI(Attack):
    """PLG-MI: conditional-GAN prior, Adam on z, max-margin loss over two augmented views."""

    name = "plgmi"
    version = 2      # rotation with probability 0.5 (issue 24's review)
    strength = 100
    access = "white-box"
    trapdoor_aware = True
    prior_kinds = ("cgan",)
    defaults = {"iterations": 600, "lr": 0.1, "views": 2, "batch_size": 60, "crop_scale_min": 0.8,
                "jitter": 0.2, "rotation": 5.0, "rotation_p": 0.5}
    presets = {"quick": {"iterations": 100, "batch_size": 50}}

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.params["rotation_p"] <= 1:
            raise ArgumentError(f"attack 'plgmi': 'rotation_p' is a probability in [0, 1] (the release: 0.5), "
                                f"got {self.params['rotation_p']}")

    def init_latents(self, access, ids, prior, gen):
        G = prior["cgan"].generator
        return {"z": torch.randn(len(ids), G.z_dim, generator=gen).to(ids.device)}

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        G = prior["cgan"].generator
        p = self.params
        z = state["z"].clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=p["lr"])
        signature_loss = getattr(eraser, "signature_loss", None)    # PLG-MI++ against a Trap-MID target
        for _ in range(p["iterations"]):
            x = G(z, ids)
            loss = 0.0
            for _v in range(max(1, p["views"])):
                v = self.to_target(random_views(x, gen, (p["crop_scale_min"], 1.0), p["jitter"], p["rotation"],
                                                rotation_p=p["rotation_p"]), eraser)
                if signature_loss is None:
                    loss = loss + max_margin_loss(access(v), ids).mean()
                else:
                    logits, feats = access.forward_features(v)
                    loss = loss + max_margin_loss(logits, ids).mean() + signature_loss(feats, logits, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log(float(loss.detach()))
            tick()
        return {"z": z.detach()}

    def decode(self, prior, state, ids, gen):
        return prior["cgan"].generator(state["z"], ids)


register_attack(PLGMI)
