"""Per-sample identity losses on classifier logits, shared by the attacks and the priors that train
against a target (PLG-MI's cGAN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample max-margin loss: max_{c != y} logit_c - logit_y (PLG-MI)."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - real


def logit_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample LOMMA logit loss: -logit_y."""
    return -logits.gather(1, y[:, None]).squeeze(1)
