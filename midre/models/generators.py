"""GAN generators and discriminators for the attack priors (32 px and 64 px, any power of two >= 8).

* :class:`DCGANGenerator` / :class:`DCGANDiscriminator`: GMI's prior (Zhang et al. 2020), trained with
  WGAN-GP.  The critic uses InstanceNorm (no BatchNorm: the gradient penalty is per sample).  With
  ``num_outputs = K + 1`` the same discriminator is KedMI's inversion-specific discriminator
  (Chen et al. 2021): K identity logits plus one "fake" logit.
* :class:`CondGenerator` / :class:`ProjectionDiscriminator`: PLG-MI's conditional GAN (Yuan et al. 2023):
  conditional BatchNorm generator and a spectrally normalised projection discriminator.

Generators output images in [0, 1] (midre's convention), through a sigmoid.  Every module records its
constructor arguments in ``config`` so a prior checkpoint (safetensors + JSON) rebuilds it exactly.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ArgumentError
from . import stylegan2 as _sg2
from .tacgan import ACGANDiscriminator


def _levels(resolution: int) -> int:
    n = math.log2(resolution / 4) if resolution > 0 else -1
    if resolution < 8 or n != int(n):
        raise ArgumentError(f"GAN priors need a power-of-two resolution >= 8 (e.g. 32 or 64), got {resolution}")
    return int(n)


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> image (B, C, R, R) in [0, 1]; Linear -> 4x4 -> (ConvT, BN, ReLU) x log2(R/4)."""

    def __init__(self, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        self.config = {"z_dim": z_dim, "resolution": resolution, "channels": channels, "width": width}
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        n = _levels(resolution)
        ch = [width * 2 ** (n - 1 - i) for i in range(n)] + [width // 2 if width >= 2 else 1]
        self.fc = nn.Sequential(nn.Linear(z_dim, ch[0] * 16, bias=False), nn.BatchNorm1d(ch[0] * 16), nn.ReLU(True))
        layers: list[nn.Module] = []
        for i in range(n):
            out = ch[i + 1] if i < n - 1 else max(width // 2, 8)
            layers += [nn.ConvTranspose2d(ch[i], out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            last = out
        layers += [nn.Conv2d(last, channels, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        self._c0 = ch[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self._c0, 4, 4)
        return torch.sigmoid(self.net(h))


class DCGANDiscriminator(nn.Module):
    """image -> (B, num_outputs) scores; ``features(x)`` gives the penultimate features (feature matching).

    ``num_outputs=1``: WGAN critic (GMI).  ``num_outputs=K+1``: KedMI's discriminator, where
    :meth:`class_logits` returns the K identity logits relative to the fake logit (Salimans et al.'s
    semi-supervised GAN: p(real | x) = sigmoid(LSE(class_logits))).
    """

    def __init__(self, resolution: int = 64, channels: int = 3, width: int = 64, num_outputs: int = 1):
        super().__init__()
        self.config = {"resolution": resolution, "channels": channels, "width": width, "num_outputs": num_outputs}
        n = _levels(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for _ in range(n - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.InstanceNorm2d(c * 2, affine=True), nn.LeakyReLU(0.2, True)]
            c *= 2
        self.net = nn.Sequential(*layers)
        self.feature_dim = c * 16
        self.out = nn.Linear(self.feature_dim, num_outputs)
        self.num_outputs = num_outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """K identity logits with the (K+1)-th fake logit subtracted (only for num_outputs = K + 1)."""
        out = self(x)
        return out[:, :-1] - out[:, -1:]


class CondBatchNorm2d(nn.Module):
    """BatchNorm without affine + a per-class gain and bias (conditional BatchNorm)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class _CondUpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1 = CondBatchNorm2d(cin, num_classes)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2 = CondBatchNorm2d(cout, num_classes)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CondGenerator(nn.Module):
    """(z, y) -> image in [0, 1]: residual up-blocks with conditional BatchNorm (SNGAN-style, PLG-MI)."""

    def __init__(self, num_classes: int, z_dim: int = 128, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        self.config = {"num_classes": num_classes, "z_dim": z_dim, "resolution": resolution,
                       "channels": channels, "width": width}
        self.z_dim, self.resolution, self.channels, self.num_classes = z_dim, resolution, channels, num_classes
        n = _levels(resolution)
        ch = [width * 2 ** max(n - 1 - i, 0) for i in range(n + 1)]
        ch[-1] = max(width // 2, 8)
        self._c0 = ch[0]
        self.fc = nn.Linear(z_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(_CondUpBlock(ch[i], ch[i + 1], num_classes) for i in range(n))
        self.bn = nn.BatchNorm2d(ch[n])
        self.conv = nn.Conv2d(ch[n], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self._c0, 4, 4)
        for blk in self.blocks:
            h = blk(h, y)
        return torch.sigmoid(self.conv(F.relu(self.bn(h))))


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> with spectrally normalised layers (Miyato & Koyama)."""

    def __init__(self, num_classes: int, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        self.config = {"num_classes": num_classes, "resolution": resolution, "channels": channels, "width": width}
        n = _levels(resolution)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for i in range(n):
            layers += [spectral_norm(nn.Conv2d(c_in, c, 3, 1, 1)), nn.LeakyReLU(0.1, True),
                       spectral_norm(nn.Conv2d(c, c, 4, 2, 1)), nn.LeakyReLU(0.1, True)]
            c_in, c = c, min(c * 2, width * 8)
        self.net = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.psi = spectral_norm(nn.Linear(c_in, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, c_in))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(x * 2 - 1).sum(dim=(2, 3))
        return self.psi(h).squeeze(1) + (self.embed(y) * h).sum(1)


GENERATORS: dict[str, type] = {
    "DCGANGenerator": DCGANGenerator,
    "DCGANDiscriminator": DCGANDiscriminator,
    "CondGenerator": CondGenerator,
    "ProjectionDiscriminator": ProjectionDiscriminator,
    "ACGANDiscriminator": ACGANDiscriminator,        # LOKT's T-ACGAN (models/tacgan.py)
    "StyleGAN2Generator": _sg2.Generator,            # config = the official-style init kwargs
    "StyleGAN2Discriminator": _sg2.Discriminator,
}


def build_gan_module(cls_name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a generator / discriminator from its class name and ``config`` (prior checkpoints)."""
    if cls_name not in GENERATORS:
        raise ArgumentError(f"unknown GAN module '{cls_name}'; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[cls_name](**config)
