"""NLS: negative label smoothing (Struppek et al., 2024, "Be careful what you smooth for").

What the reference does: label smoothing with a *negative* factor ``alpha``.  With smoothed targets
``(1 - alpha) * onehot + alpha / C`` the cross-entropy is

    loss = (1 - alpha) * (-log p_y) + alpha * mean_c(-log p_c)

(``torch``'s ``label_smoothing`` only accepts [0, 1], so it is written out here).  A negative alpha
pushes non-target log-probabilities down and makes the model's confidence landscape harder to invert.
Training starts with plain CE: alpha is 0 for the first half of training and ramps linearly to its
final value (reference schedule: epochs 50 -> 75 of 100).

Defaults: ``alpha = -0.05``, ramp from ``start = 0.5`` to ``end = 0.75`` of the run (fractions, so
the same schedule scales to short runs).  For a 0-based epoch ``e`` of ``E`` epochs::

    alpha(e) = alpha * clip((e - start*E) / ((end - start)*E), 0, 1)     (a step at start*E if end == start)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from ._check import number
from .base import DEFENSES, Defense


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * (-log p_y) + alpha * mean_c(-log p_c), averaged over the batch."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, y.long().view(-1, 1)).squeeze(1)
    uniform = -logp.mean(dim=1)
    return ((1.0 - alpha) * nll + alpha * uniform).mean()


class NLS(Defense):
    """Negative label smoothing with the delayed linear ramp of the reference schedule."""

    name = "nls"

    def __init__(self, alpha: float = -0.05, start: float = 0.5, end: float = 0.75):
        alpha, start, end = (number("nls", k, v) for k, v in (("alpha", alpha), ("start", start), ("end", end)))
        if not -1.0 <= alpha < 1.0:
            raise ArgumentError(f"nls: alpha must lie in [-1, 1) (negative for NLS, e.g. -0.05), got {alpha}")
        if not 0.0 <= start <= end <= 1.0:
            raise ArgumentError(
                f"nls: the ramp needs 0 <= start <= end <= 1 (fractions of training, e.g. 0.5 and 0.75), "
                f"got start={start}, end={end}")
        self.alpha = float(alpha)
        self.start = float(start)
        self.end = float(end)
        self.current_alpha = self.alpha_at(0, 1)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "start": self.start, "end": self.end}

    def alpha_at(self, epoch: int, epochs: int) -> float:
        """Smoothing factor used during 0-based ``epoch`` of ``epochs``."""
        s, t = self.start * epochs, self.end * epochs
        if epoch < s:
            return 0.0
        if t <= s or epoch >= t:
            return self.alpha
        return self.alpha * (epoch - s) / (t - s)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.current_alpha = self.alpha_at(epoch, epochs)

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return smoothed_ce(logits, y, self.current_alpha)


@DEFENSES.register("nls", family="baseline")
def _nls(alpha: float = -0.05, start: float = 0.5, end: float = 0.75) -> Defense:
    """NLS: negative label smoothing, alpha ramped from 0 over [start, end] of training."""
    return NLS(alpha=alpha, start=start, end=end)
