"""DP-SGD through Opacus (Abadi et al., 2016; the DP baseline of the MI-defense literature).

What the reference does: per-sample gradients are clipped to norm ``max_grad_norm`` (C), summed,
Gaussian noise ``N(0, (noise_multiplier * C)^2)`` is added, and the sum is divided by the expected
batch size; batches are Poisson-sampled.  The privacy spent is ``epsilon`` at a chosen ``delta``
(RDP accountant).

How it attaches here (Opacus' own "wrap, don't fork" pattern):

- ``wrap_model``: every BatchNorm is replaced by GroupNorm with Opacus' registered fixer (the one
  ``ModuleValidator.fix`` uses), *in place* -- Opacus' ``fix`` would clone the model through a pickle
  round-trip, which midre never does -- and in-place activations are switched to out-of-place (Opacus'
  hooks forbid in-place edits of hooked outputs).  The replacement is deterministic, so
  ``load_model`` rebuilds the same architecture; remaining incompatibilities raise one ArgumentError.
- ``wrap_training``: ``PrivacyEngine.make_private`` (given ``noise_multiplier``) or
  ``make_private_with_epsilon`` (given ``target_epsilon``; the noise is calibrated for the run's
  epochs and ``delta``).  The trainer saves the unwrapped model (``GradSampleModule._module``).
- ``report``: ``{"epsilon", "delta", "noise_multiplier", "max_grad_norm"}``.  Epsilon is computed by
  the RDP accountant from (noise multiplier, sample rate, steps = finished epochs x steps per epoch),
  so it is also right after a resumed run.

DP-SGD trains in float32: ``prepare`` turns the trainer's mixed precision off for the run (fp16 loss
scaling would be clipped instead of the gradients); the saved ``train_config`` says ``amp: false``.
Opacus' ``secure_mode`` is off: the noise comes from torch's RNG, which the trainer seeds, so runs are
reproducible (turn to a cryptographic RNG for a production release).

Defaults: ``noise_multiplier = 1.0``, ``max_grad_norm = 1.0``, ``delta = 1e-5``, Poisson sampling on.
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

from ..errors import ArgumentError
from ._check import number
from .base import DEFENSES, Defense, TrainContext


def replace_batchnorm(model: nn.Module) -> nn.Module:
    """Replace BatchNorm layers by GroupNorm in place with Opacus' fixers; returns ``model``."""
    from opacus.validators import ModuleValidator

    fixers = ModuleValidator.FIXERS
    names = [name for name, m in model.named_modules() if name and type(m) in fixers]
    for name in names:
        parent = model
        *path, leaf = name.split(".")
        for p in path:
            parent = parent._modules[p]
        old = parent._modules[leaf]
        new = fixers[type(old)](old)
        ref = next(old.parameters(), None)
        if ref is not None:
            new = new.to(ref.device)
        parent._modules[leaf] = new
    return model


class DPSGD(Defense):
    """DP-SGD with per-sample clipping and Gaussian noise (Opacus)."""

    name = "dp"

    def __init__(self, noise_multiplier: float | None = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 target_epsilon: float | None = None, poisson_sampling: bool = True):
        noise_multiplier = number("dp", "noise_multiplier", noise_multiplier, allow_none=True)
        target_epsilon = number("dp", "target_epsilon", target_epsilon, allow_none=True)
        max_grad_norm, delta = number("dp", "max_grad_norm", max_grad_norm), number("dp", "delta", delta)
        if target_epsilon is not None:
            if not target_epsilon > 0:
                raise ArgumentError(f"dp: target_epsilon must be > 0 (e.g. 8), got {target_epsilon}")
            noise_multiplier = None   # calibrated from the budget
        elif noise_multiplier is None or noise_multiplier < 0:
            raise ArgumentError(f"dp: give noise_multiplier >= 0 (e.g. 1.0) or a target_epsilon, got {noise_multiplier!r}")
        if not max_grad_norm > 0:
            raise ArgumentError(f"dp: max_grad_norm (clipping bound C) must be > 0 (e.g. 1.0), got {max_grad_norm}")
        if not 0 < delta < 1:
            raise ArgumentError(f"dp: delta must lie in (0, 1), typically < 1/N (e.g. 1e-5), got {delta}")
        if not isinstance(poisson_sampling, bool):
            raise ArgumentError(f"dp: poisson_sampling must be true or false, got {poisson_sampling!r}")
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.poisson_sampling = poisson_sampling
        self._epochs: int | None = None
        self._current_epoch: int | None = None
        self._resumed_epochs = 0
        self._sample_rate: float | None = None
        self._steps_per_epoch = 0
        self._used_noise: float | None = noise_multiplier
        self.engine = None
        self.optimizer = None

    def params(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm, "delta": self.delta,
                "target_epsilon": self.target_epsilon, "poisson_sampling": self.poisson_sampling}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        from opacus.validators import ModuleValidator

        model = replace_batchnorm(model)
        # Opacus' backward hooks return views: an in-place activation right after a hooked layer
        # (conv -> GroupNorm -> ReLU(inplace=True)) would corrupt them, so activations run out of place.
        for m in model.modules():
            if isinstance(getattr(m, "inplace", None), bool):
                m.inplace = False
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            first = str(errors[0]).splitlines()[0][:160]
            raise ArgumentError(f"dp: the model cannot be trained with DP-SGD ({first}); choose another architecture")
        return model

    def prepare(self, ctx: TrainContext) -> None:
        cfg = ctx.config
        self._epochs = int(getattr(cfg, "epochs", 1) or 1)
        self._resumed_epochs = 0
        if ctx.extra.get("resuming") and ctx.out_dir is not None:
            # epochs already spent by the run being resumed (if this call trains none, report() still counts them)
            import json
            from pathlib import Path

            try:
                self._resumed_epochs = int(json.loads((Path(ctx.out_dir) / "model.json").read_text()).get("epoch", 0))
            except (OSError, ValueError, TypeError):
                self._resumed_epochs = 0
        if cfg is not None and getattr(cfg, "amp", False):
            # per-sample clipping must see unscaled float32 gradients: fp16 loss scaling would be
            # clipped instead of the gradients.  The run's own config copy records amp=false.
            cfg.amp = False

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self._epochs = epochs
        self._current_epoch = epoch

    def wrap_training(self, model, optimizer, loader):
        import warnings

        from opacus import PrivacyEngine

        # Opacus' hooks fire on module outputs when the images need no gradient: expected, not a problem
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed "
                                "with respect to module outputs")
        with warnings.catch_warnings():   # secure_mode off on purpose: noise follows midre's seeds
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant="rdp")
        common = dict(module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=self.max_grad_norm,
                      poisson_sampling=self.poisson_sampling)
        if self.target_epsilon is not None:
            model, optimizer, loader = engine.make_private_with_epsilon(
                target_epsilon=self.target_epsilon, target_delta=self.delta, epochs=self._epochs or 1, **common)
        else:
            model, optimizer, loader = engine.make_private(noise_multiplier=self.noise_multiplier, **common)
        self.engine, self.optimizer = engine, optimizer
        self._used_noise = float(optimizer.noise_multiplier)
        self._steps_per_epoch = len(loader)
        self._sample_rate = 1.0 / max(len(loader), 1)
        self._current_epoch = None
        return model, optimizer, loader

    def epsilon(self, steps: int | None = None) -> float:
        """Epsilon spent at ``delta`` after ``steps`` noisy steps (default: the finished training)."""
        if self._sample_rate is None:
            return 0.0
        if steps is None:
            steps = self._steps_done()
        if steps <= 0:
            return 0.0
        if not self._used_noise:
            return math.inf
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [(self._used_noise, self._sample_rate, int(steps))]
        return float(acc.get_epsilon(delta=self.delta))

    def _steps_done(self) -> int:
        # on_epoch_start(e) runs before epoch e; report() runs at the end of an epoch, so
        # e + 1 epochs of ``steps_per_epoch`` Poisson-sampled steps have been spent by then.
        if self._current_epoch is None:
            return self._resumed_epochs * self._steps_per_epoch
        return (self._current_epoch + 1) * self._steps_per_epoch

    def report(self) -> dict[str, Any]:
        eps = self.epsilon()
        return {"epsilon": eps if math.isfinite(eps) else None, "delta": self.delta,
                "noise_multiplier": self._used_noise, "max_grad_norm": self.max_grad_norm}


@DEFENSES.register("dp", family="baseline")
def _dp(noise_multiplier: float | None = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
        target_epsilon: float | None = None, poisson_sampling: bool = True) -> Defense:
    """DP-SGD (Opacus): per-sample clipping + Gaussian noise; reports epsilon at delta."""
    return DPSGD(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta,
                 target_epsilon=target_epsilon, poisson_sampling=poisson_sampling)
