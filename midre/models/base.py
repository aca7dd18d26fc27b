"""Classifier contract.

Every classifier in midre takes [0, 1] images, normalises them itself, and exposes:

- ``forward(x) -> logits``
- ``features(x) -> (B, feature_dim)`` penultimate features (KNN distance, LOMMA, BiDO, analysis)
- ``forward_features(x) -> (logits, features)`` in one pass
- ``blocks`` -- ordered list of intermediate modules from input to output (BiDO hooks, TL-DMI freezing)
- ``head`` -- the final module mapping features -> logits (MID replaces it)

If ``input_resolution`` is set and differs from the input's size, inputs are bilinearly resized first
(e.g. the 112-px evaluation model reading 64-px reconstructions).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, *,
                 blocks: Sequence[nn.Module] = (), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, input_resolution: int | None = None,
                 arch: str = "", head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone            # normalised image -> (B, feature_dim)
        self.head = head if head is not None else nn.Linear(feature_dim, num_classes)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.input_resolution = input_resolution
        self.arch = arch
        self._blocks = list(blocks)
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_resolution is not None and x.shape[-1] != self.input_resolution:
            x = F.interpolate(x, size=(self.input_resolution, self.input_resolution), mode="bilinear",
                              align_corners=False)
        if x.shape[1] != self.mean.shape[1]:
            if x.shape[1] == 1 and self.mean.shape[1] == 3:
                x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare_input(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: Registry[Callable[..., Classifier]] = Registry("architecture", group="midre.models")


def create_model(name: str, num_classes: int, resolution: int = 64, weights: str | None = None,
                 **kwargs: Any) -> Classifier:
    """Build a registered classifier; ``weights`` is a LOCAL file (safetensors or torch state dict)."""
    from ..errors import ArgumentError

    if not isinstance(num_classes, int) or num_classes < 2:
        raise ArgumentError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    model = MODELS.get(name)(num_classes=num_classes, resolution=resolution, **kwargs)
    model.arch = name.lower()
    # the image size it was built for (Trap-MID sizes its triggers by it)
    model.resolution = int(resolution) if resolution is not None else None
    if weights is not None:
        from .weights import load_pretrained

        load_pretrained(model, weights)
    return model
