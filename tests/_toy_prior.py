"""A toy-but-real prior kind and an attack that uses it, defined OUTSIDE midre (tests only).

``pca``: probabilistic PCA of the public images -- the generator maps z ~ N(0, I) to
mean + sum_i z_i * s_i / sqrt(n - 1) * v_i (clamped to [0, 1]), with v_i, s_i the top right-singular
vectors and singular values of the centred public images.  Trained from public data only, shared by all
targets, saved / reloaded through midre's prior cache, and its samples' quality is gated.
``pca_gmi``: GMI's identity loss searched in that latent space (no discriminator term).

:func:`register` registers both in this process; tests/test_prior_registry.py also installs them as a plugin
(entry points ``midre.priors`` / ``midre.attacks``) without calling it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from midre.attacks import ATTACKS, GMI
from midre.attacks.base import register_attack
from midre.gan_state import load_module
from midre.priors import Prior, PriorKind, register_prior


class PCAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    components: int = Field(8, ge=1)
    hflip: bool = False


class PCAGenerator(nn.Module):
    def __init__(self, shape: list[int], z_dim: int):
        super().__init__()
        self.shape, self.z_dim = list(shape), int(z_dim)
        self.config = {"shape": self.shape, "z_dim": self.z_dim}
        d = math.prod(self.shape)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(self.z_dim, d))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.mean + z @ self.basis).clamp(0, 1).view(-1, *self.shape)


class PCAPrior(PriorKind):
    """Probabilistic PCA of the public images (test-only toy kind)."""

    name = "pca"
    needs_target = False
    quality_gate = True
    config_model = PCAConfig
    presets = {"paper": {"components": 16}, "quick": {"components": 8}}

    def train(self, cfg, data, target, root, gen, progress, until, meta):
        x = torch.cat(list(data.all_batches(256))).flatten(1).double()
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(cfg.components, x.shape[0] - 1)
        G = PCAGenerator([data.channels, data.resolution, data.resolution], k)
        G.mean.copy_(mean.float())
        G.basis.copy_((vh[:k] * (s[:k] / math.sqrt(x.shape[0] - 1)).unsqueeze(1)).float())
        meta["generator"] = {"config": G.config}
        return Prior(self.name, generator=G.eval()), {"explained": float(s[:k].square().sum() / s.square().sum())}, True

    def load(self, meta, state, where):
        G = load_module(PCAGenerator(**meta["generator"]["config"]), state, "G.", where)
        return Prior(self.name, generator=G, meta=meta)


class PcaGMI(GMI):
    """GMI's identity loss in the latent space of the ``pca`` prior (test-only toy attack)."""

    name = "pca_gmi"
    strength = None
    prior_kinds = ("pca",)
    defaults = {**GMI.defaults, "lambda_prior": 0.0}

    def prior_loss(self, prior, x):
        return x.new_zeros(())


def register(prior: bool = True) -> None:
    """Register the attack (and, unless ``prior`` is False, the prior kind) in this process."""
    if prior:
        register_prior(PCAPrior)
    if "pca_gmi" not in ATTACKS:
        register_attack(PcaGMI)
