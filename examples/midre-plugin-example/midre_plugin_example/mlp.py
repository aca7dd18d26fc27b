"""A two-layer perceptron on flattened pixels, behind midre's Classifier contract."""
from __future__ import annotations

import torch.nn as nn

from midre.models import Classifier


def mlp(num_classes: int, resolution: int = 32, channels: int = 3, hidden: int = 256) -> Classifier:
    """Two-layer perceptron: flatten -> Linear(hidden) -> ReLU, hidden-d features."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(channels * resolution * resolution, hidden), nn.ReLU(True))
    return Classifier(body, hidden, num_classes, blocks=[body], input_resolution=resolution, arch="mlp")


mlp.midre_info = {"family": "plugin", "resolution": 32}
