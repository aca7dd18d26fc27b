"""MID: mutual-information regularisation with a variational bottleneck (Wang et al., 2021).

What the reference does: the classifier's last layer is replaced by a variational information
bottleneck on the penultimate features ``f``: ``Linear(feature_dim -> 2K)`` gives ``mu`` (first K) and
a raw scale (last K); ``sigma = softplus(raw - 5)``; during training ``z = mu + sigma * eps`` with
``eps ~ N(0, I)``; ``Linear(K -> C)`` maps ``z`` to logits.  The loss is
``CE + beta * KL(N(mu, sigma^2) || N(0, I))``, the KL summed over the K code dimensions and averaged
over the batch.  Reference values: ``beta = 0.003`` (VGG16 on CelebA) and ``K = feature_dim // 2`` (the
release's VGG16: 2048 -> 1024; the ToolBox's ``VibWrapper`` and TL-DMI's IR152 the same rule, 512 -> 256).

Choices made here (documented, parameters):

- ``k`` (default: half the feature dimension, the references' rule) is a parameter; before issue 24's review
  the default was a fixed 1024, which widens rather than halves 512-d features.
- Prediction at test time: by default the code is SAMPLED, ``z = mu + sigma * eps``, in eval mode too
  (``sample_at_test=True``), because the reference's forward samples in every mode: the MID model
  that published attacks faced (and whose accuracy the papers report) is the stochastic one, and the
  noise in its logits and input gradients is part of what the defense does to an attacker.  Runs stay
  reproducible: eps comes from torch's global generator, which every midre stage seeds.
  ``sample_at_test=False`` predicts with the mean ``z = mu``: one fixed function (deterministic
  logits, e.g. for deployment or for isolating the bottleneck's effect from the sampling noise).
  A checkpoint records the choice in its defense parameters and is reloaded with it.
- ``wrap_model`` only builds the bottleneck head (architecture); :func:`midre.loading.load_model`
  re-applies it before loading the weights, so a MID checkpoint round-trips.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError
from ._check import integer, number
from .base import DEFENSES, Defense, StepContext


class VIBHead(nn.Module):
    """Variational bottleneck head: features (B, D) -> logits (B, C); keeps the last (mu, sigma)."""

    def __init__(self, feature_dim: int, num_classes: int, k: int = 1024, sample_at_test: bool = True):
        super().__init__()
        self.k = int(k)
        self.sample_at_test = bool(sample_at_test)
        self.encoder = nn.Linear(int(feature_dim), 2 * self.k)
        self.classifier = nn.Linear(self.k, int(num_classes))
        self.last_mu: torch.Tensor | None = None
        self.last_sigma: torch.Tensor | None = None

    def stats(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of the code for features ``f``; sigma = softplus(raw - 5)."""
        h = self.encoder(f)
        mu, raw = h[:, :self.k], h[:, self.k:]
        return mu, F.softplus(raw - 5.0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.stats(f)
        if self.training or self.sample_at_test:
            z = mu + sigma * torch.randn_like(sigma)
        else:
            z = mu
        if self.training:
            self.last_mu, self.last_sigma = mu, sigma
        return self.classifier(z)

    def extra_repr(self) -> str:
        return f"k={self.k}, sample_at_test={self.sample_at_test}"


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over code dimensions, averaged over the batch."""
    mu, sigma = mu.float(), sigma.float()
    log_sigma = torch.log(sigma.clamp_min(1e-12))
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * log_sigma)
    return kl.sum(dim=1).mean()


class MID(Defense):
    """MID: variational bottleneck head + beta * KL regulariser."""

    name = "mid"

    def __init__(self, beta: float = 0.003, k: int | None = None, sample_at_test: bool = True):
        beta = number("mid", "beta", beta)
        if not beta >= 0:
            raise ArgumentError(f"mid: beta must be a number >= 0 (e.g. 0.003), got {beta!r}")
        k = None if k is None else integer("mid", "k (bottleneck size)", k, 1)
        if not isinstance(sample_at_test, bool):
            raise ArgumentError(f"mid: sample_at_test must be true or false, got {sample_at_test!r}")
        self.beta = float(beta)
        self.k = k                  # None: half the model's feature dimension
        self.sample_at_test = sample_at_test

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "k": self.k, "sample_at_test": self.sample_at_test}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "head", None)
        if isinstance(head, VIBHead):
            if self.k is not None and head.k != self.k:
                raise ArgumentError(f"mid: the model already has a bottleneck of size {head.k}, not {self.k}")
            head.sample_at_test = self.sample_at_test
            return model
        feature_dim = getattr(model, "feature_dim", None)
        num_classes = getattr(model, "num_classes", None)
        if head is None or feature_dim is None or num_classes is None:
            raise ArgumentError(
                f"mid needs a midre Classifier (with head, feature_dim, num_classes), got {type(model).__name__}")
        k = self.k if self.k is not None else max(1, int(feature_dim) // 2)
        model.head = VIBHead(int(feature_dim), int(num_classes), k, self.sample_at_test)
        return model

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        from ..utils import unwrap

        head = getattr(unwrap(ctx.model), "head", None)
        if not isinstance(head, VIBHead):
            raise ArgumentError("mid: the model has no bottleneck head; build it with MID.wrap_model first")
        if head.last_mu is None:
            return None
        kl = gaussian_kl(head.last_mu, head.last_sigma)
        head.last_mu = head.last_sigma = None   # consumed: never reuse a stale code
        return self.beta * kl


@DEFENSES.register("mid", family="baseline")
def _mid(beta: float = 0.003, k: int | None = None, sample_at_test: bool = True) -> Defense:
    """MID: variational information bottleneck on the penultimate features, CE + beta * KL."""
    return MID(beta=beta, k=k, sample_at_test=sample_at_test)
