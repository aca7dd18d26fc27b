"""Gaussian input noise: a training-time defense through midre's ``transform_batch`` hook."""
from __future__ import annotations

import torch

from midre.defenses import Defense
from midre.errors import ArgumentError


class GaussianNoise(Defense):
    """Gaussian input noise: x + N(0, std^2) per pixel, clamped to [0, 1], on every training batch."""

    name = "gaussian_noise"

    def __init__(self, std: float = 0.1):
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0.0 <= std <= 1.0:
            raise ArgumentError(f"defense 'gaussian_noise': std must be a number in [0, 1], got {std!r}")
        self.std = float(std)

    def params(self) -> dict:
        return {"std": self.std}

    def transform_batch(self, x, y, idx=None):
        # torch's global generator: the trainer seeds it from (seed, epoch), so runs repeat exactly
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype)
        return (x + self.std * noise).clamp(0.0, 1.0), y
