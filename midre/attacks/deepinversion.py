"""DeepInversion, data-free inversion by batch-norm statistics (Yin et al., CVPR 2020).

White-box, no prior, no GAN: the pixels themselves are optimised.  The target must have ``BatchNorm2d``
layers with running statistics (their running mean / variance summarise the private training data);
a target without them (e.g. a DP-SGD target, whose BatchNorm Opacus replaced by GroupNorm) is refused
before any work (:meth:`DeepInversion.check_target`).

The optimised tensor ``u`` lives in the target's NORMALISED input space (``(x - mean) / std`` with the
target's own mean / std), as the release's ``inputs``; the target sees the pixels ``u * std + mean``.
Per step, as the release's ``DeepInversionClass.get_images``:

* ``v`` = ``u`` (2x2 average-pooled in the low-resolution stage), rolled by random offsets (dx, dy) in
  [-lim, lim] (``lim = jitter // 2`` in the low-resolution stage) and, with ``flip``, flipped
  horizontally with probability 0.5 (one draw of each per step for the whole batch);
* loss = ``main_loss_multiplier`` CE(T(v), y) + ``r_feature`` sum_l s_l (||mu_l - mu^_l||_2 +
  ||var_l - var^_l||_2) + ``tv_l2`` TV2(v) + ``tv_l1`` TV1(v) + ``l2`` mean_i ||v_i||_2, where mu_l, var_l
  are the per-channel batch mean and biased variance of the INPUT of the l-th ``BatchNorm2d`` (module
  order), mu^_l, var^_l its running statistics, s_1 = ``first_bn_multiplier`` and s_l = 1 after;
  TV2 = the sum of the Frobenius norms of the differences to the right, down and both diagonal
  neighbours, TV1 = the sum of their mean absolute values (:func:`image_prior_losses`);
* Adam (betas ``beta1``, ``beta2``, eps 1e-8) with the learning rate set before each step by the
  release's ``lr_cosine_policy`` (``schedule: cosine``: linear warm-up over ``warmup`` steps, then a
  cosine to 0 over the stage) or kept constant (``schedule: constant``, the CIFAR-10 script);
* with ``clip``, after each step ``u`` is clamped to the valid pixel range [0, 1] (in normalised units).

``low_res_iterations`` > 0 first runs that many steps at half resolution (the release's setting 0:
2,000 low-resolution + 1,000 full-resolution steps, a fresh Adam and schedule per stage).  The result
is the LAST iterate, what the release's README command writes: its ImageNet script tracks the lowest-loss
batch (since commit cb22f73) but saves it only with ``--store_best_images``, which the command does not pass,
and its CIFAR-10 script keeps a reference to the live tensor.

Presets: ``paper`` = the release's ImageNet setting (README command: setting 0, lr 0.25, r_feature 0.01,
first-BN multiplier 10, TV-L2 1e-4, L2 1e-5, jitter 30 at 224 px, flip, clip, Adam betas (0.5, 0.9),
batch 152 as in the paper); ``cifar10`` = the release's 32-px CIFAR-10 script with the README's paper
parameters (2,000 steps, lr 0.05, r_feature 10, TV-L2 2.5e-5, jitter 2, no flip, no first-BN scaling,
constant lr, default Adam betas, no clip, batch 256); ``quick`` = ``cifar10`` with 300 steps and
batches of 50 identities, for the CPU.  One image per (identity, repeat); a batch holds one image per
identity of the chunk, so its BN statistics are over ``batch_size`` images.  docs/attacks.md lists the
deviations.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError
from .base import Attack, register_attack

SCHEDULES = ("cosine", "constant")


# ============================================================================ the update rule's pieces
def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The ``BatchNorm2d`` layers of ``model`` that carry running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
            and m.running_var is not None]


class BNStatistics:
    """Forward hooks on every ``BatchNorm2d``: after a forward pass, :meth:`loss` is
    sum_l s_l (||running_var_l - var_l||_2 + ||running_mean_l - mean_l||_2) over the layers' inputs
    (per-channel mean and biased variance over batch and space), s_1 = ``first_multiplier``, s_l = 1."""

    def __init__(self, model: nn.Module):
        self.layers = bn_layers(model)
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        def fn(module: nn.BatchNorm2d, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            mean = x.mean(dim=(0, 2, 3))
            var = x.transpose(0, 1).flatten(1).var(1, unbiased=False)
            self.terms[i] = (torch.linalg.vector_norm(module.running_var.to(var.dtype) - var)
                             + torch.linalg.vector_norm(module.running_mean.to(mean.dtype) - mean))
        return fn

    def loss(self, first_multiplier: float) -> torch.Tensor:
        if any(t is None for t in self.terms):
            raise RuntimeError("BNStatistics.loss() before a forward pass through every BatchNorm2d")
        return sum(t * (first_multiplier if i == 0 else 1.0) for i, t in enumerate(self.terms))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def image_prior_losses(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TV1, TV2) of a (B, C, H, W) batch: differences to the right, down and both diagonal neighbours;
    TV1 = the sum of their mean absolute values, TV2 = the sum of their Frobenius norms (whole batch)."""
    diffs = (v[:, :, :, :-1] - v[:, :, :, 1:], v[:, :, :-1, :] - v[:, :, 1:, :],
             v[:, :, 1:, :-1] - v[:, :, :-1, 1:], v[:, :, :-1, :-1] - v[:, :, 1:, 1:])
    return sum(d.abs().mean() for d in diffs), sum(torch.linalg.vector_norm(d) for d in diffs)


def cosine_lr(base: float, warmup: int, total: int, it: int) -> float:
    """The release's ``lr_cosine_policy`` at step ``it`` (0-based) of a stage of ``total`` steps."""
    if it < warmup:
        return base * (it + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup))) * base


def jitter_flip(v: torch.Tensor, lim: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Roll by offsets drawn uniformly from [-lim, lim] (rows, then columns), then flip horizontally when a
    U(0, 1) draw exceeds 0.5 and ``flip`` is on; one draw of each per call (the offsets first), the
    flip coin drawn whether or not ``flip`` is on."""
    off = torch.randint(-lim, lim + 1, (2,), generator=gen).tolist()
    coin = float(torch.rand(1, generator=gen)) > 0.5
    v = torch.roll(v, shifts=(off[0], off[1]), dims=(2, 3))
    return v.flip(3) if flip and coin else v


# ============================================================================ the attack
_CIFAR10 = {"iterations": 2000, "low_res_iterations": 0, "lr": 0.05, "beta1": 0.9, "beta2": 0.999,
            "schedule": "constant", "warmup": 0, "r_feature": 10.0, "first_bn_multiplier": 1.0, "tv_l1": 0.0,
            "tv_l2": 2.5e-5, "l2": 0.0, "jitter": 2, "flip": False, "clip": False, "batch_size": 256}


class DeepInversion(Attack):
    """DeepInversion: pixels optimised against the target's cross-entropy, its BN statistics and TV / L2."""

    name = "deepinversion"
    strength = 10
    access = "white-box"
    prior_kinds: tuple[str, ...] = ()
    defaults: dict[str, Any] = {
        "iterations": 1000, "low_res_iterations": 2000, "lr": 0.25, "beta1": 0.5, "beta2": 0.9,
        "schedule": "cosine", "warmup": 100, "main_loss_multiplier": 1.0, "r_feature": 0.01,
        "first_bn_multiplier": 10.0, "tv_l1": 0.0, "tv_l2": 1e-4, "l2": 1e-5, "jitter": 30, "flip": True,
        "clip": True, "target_resolution": 0, "batch_size": 152,
    }
    presets = {"cifar10": dict(_CIFAR10), "quick": {**_CIFAR10, "iterations": 300, "batch_size": 50}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p["schedule"] not in SCHEDULES:
            raise ArgumentError(f"attack '{self.name}': 'schedule' must be one of {', '.join(SCHEDULES)}, "
                                f"got {p['schedule']!r}")
        for k in ("beta1", "beta2"):
            if not p[k] < 1:
                raise ArgumentError(f"attack '{self.name}': '{k}' must be in [0, 1), got {p[k]}")

    def steps_per_batch(self) -> int:
        return int(self.params["low_res_iterations"] + self.params["iterations"])

    def check_target(self, target: nn.Module) -> None:
        if not bn_layers(target):
            raise ArgumentError(
                f"attack '{self.name}' needs BatchNorm2d layers with running statistics in the target and this target "
                "has none (a DP-SGD target's BatchNorm is replaced by GroupNorm); attack it with a GAN-prior attack "
                "instead, e.g. --attack gmi or plgmi")

    # ------------------------------------------------------------------ the target's input space
    @staticmethod
    def _norm(target: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = getattr(target, "mean", None), getattr(target, "std", None)
        if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
            return torch.zeros(1, 3, 1, 1, device=device), torch.ones(1, 3, 1, 1, device=device)
        return mean.detach().float().view(1, -1, 1, 1).to(device), std.detach().float().view(1, -1, 1, 1).to(device)

    def _resolution(self, target: nn.Module) -> int:
        r = int(self.params["target_resolution"] or getattr(target, "input_resolution", None) or 0)
        if r <= 0:
            raise ArgumentError(f"attack '{self.name}' needs the target's input size: set target_resolution "
                                "(midre attack and midre run set it from the target's checkpoint)")
        return r

    def init_latents(self, access, ids, prior, gen):
        mean, std = self._norm(access, ids.device)
        r = self._resolution(access)
        if self.params["low_res_iterations"] and r % 2:
            raise ArgumentError(f"attack '{self.name}': the low-resolution stage halves the image; the target's "
                                f"{r} px is odd, set low_res_iterations=0")
        u = torch.randn(len(ids), mean.shape[1], r, r, generator=gen).to(ids.device)
        return {"u": u, "mean": mean, "std": std}

    # ------------------------------------------------------------------ the optimisation
    def step_loss(self, access, u: torch.Tensor, ids: torch.Tensor, low_res: bool, gen: torch.Generator,
                  eraser: nn.Module | None, bn: BNStatistics, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The release's loss of one step on the current ``u`` (jitter / flip drawn from ``gen``)."""
        p = self.params
        v = F.avg_pool2d(u, 2) if low_res else u
        v = jitter_flip(v, p["jitter"] // (2 if low_res else 1), p["flip"], gen)
        out = access(self.to_target(v * std + mean, eraser))
        tv1, tv2 = image_prior_losses(v)
        l2 = torch.linalg.vector_norm(v.flatten(1), dim=1).mean()
        aux = p["tv_l2"] * tv2 + p["tv_l1"] * tv1 + p["r_feature"] * bn.loss(p["first_bn_multiplier"]) + p["l2"] * l2
        return p["main_loss_multiplier"] * F.cross_entropy(out, ids) + aux

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        p = self.params
        mean, std = state["mean"], state["std"]
        lo, hi = (0 - mean) / std, (1 - mean) / std
        u = state["u"].clone().requires_grad_(True)
        with BNStatistics(access) as bn:
            for n, low_res in ((p["low_res_iterations"], True), (p["iterations"], False)):
                if n == 0:
                    continue
                opt = torch.optim.Adam([u], lr=p["lr"], betas=(p["beta1"], p["beta2"]), eps=1e-8)
                for it in range(n):
                    for g in opt.param_groups:
                        g["lr"] = cosine_lr(p["lr"], p["warmup"], n, it) if p["schedule"] == "cosine" else p["lr"]
                    loss = self.step_loss(access, u, ids, low_res, gen, eraser, bn, mean, std)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if p["clip"]:
                        with torch.no_grad():
                            u.copy_(torch.maximum(torch.minimum(u, hi), lo))
                    log(float(loss.detach()))
                    tick()
        return {"u": u.detach(), "mean": mean, "std": std}

    def decode(self, prior, state, ids, gen):
        return state["u"] * state["std"] + state["mean"]


register_attack(DeepInversion)
