"""The discriminator of LOKT's target-conditioned ACGAN (T-ACGAN, Nguyen et al., NeurIPS 2023).

The reference's D is the SNGAN ResNet discriminator (spectrally normalised residual down-blocks, the
first one "optimised": conv-conv-pool with a pooled 1x1 shortcut; ReLU, global SUM pooling) with two
plain linear heads: a real/fake score (sigmoid in the reference; here the logit, the sigmoid lives in the
loss) and a K-way class head trained on the target's hard labels of generated images.  Blocks go down
to 2 x 2 (five at 64 px, four at 32 px), widths ``width * (1, 2, 4, 8, 16)``.  The generator is PLG-MI's
conditional-BatchNorm ResNet generator (:class:`midre.models.generators.CondGenerator`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ArgumentError


def _sn_conv(cin: int, cout: int, k: int, gain: float = 1.0) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, 1, k // 2)
    nn.init.xavier_uniform_(conv.weight, gain)
    return spectral_norm(conv)


class _DownBlock(nn.Module):
    """Residual block: [act] conv3 - act - conv3 - avgpool  +  conv1 shortcut - avgpool (SNGAN)."""

    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first
        self.c1 = _sn_conv(cin, cout, 3, math.sqrt(2))
        self.c2 = _sn_conv(cout, cout, 3, math.sqrt(2))
        self.c_sc = _sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x if self.first else F.relu(x))
        h = F.avg_pool2d(self.c2(F.relu(h)), 2)
        sc = self.c_sc(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.c_sc(x), 2)
        return h + sc


class ACGANDiscriminator(nn.Module):
    """image in [0, 1] -> (real/fake logit (B,), class logits (B, K))."""

    def __init__(self, num_classes: int, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        n = math.log2(resolution / 2) if resolution > 0 else -1
        if resolution < 8 or n != int(n):
            raise ArgumentError(f"the T-ACGAN needs a power-of-two resolution >= 8 (e.g. 32 or 64), got {resolution}")
        self.config = {"num_classes": num_classes, "resolution": resolution, "channels": channels, "width": width}
        self.num_classes = num_classes
        widths = [width * 2 ** i for i in range(int(n))]
        self.blocks = nn.Sequential(*[_DownBlock(channels if i == 0 else widths[i - 1], w, i == 0)
                                      for i, w in enumerate(widths)])
        self.feature_dim = widths[-1]
        self.l_real = nn.Linear(self.feature_dim, 1)
        self.l_y = nn.Linear(self.feature_dim, num_classes)
        nn.init.xavier_uniform_(self.l_real.weight)
        nn.init.xavier_uniform_(self.l_y.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.blocks(x * 2 - 1)).sum(dim=(2, 3))
        return self.l_real(h).squeeze(1), self.l_y(h)
