"""MIDRE (Model Inversion Defense via Random Erasing) and the paper's erasing ablations as defenses.

``midre`` erases one random square per training image on every training batch, on the device, through
``transform_batch`` (the paper's Algorithm 1, see :mod:`midre.erasing`).  Nothing changes at
evaluation: the model itself is untouched (``wrap_model`` is the identity).

Ablations (paper sec. 3.3, D.1): ``fixed_erasing`` (FE), ``entire_erasing`` (EE), ``pixel_masking`` and
``multi_patch``.  Every defense here draws its randomness from its own generator, re-seeded at every
epoch from ``(training seed, defense name, epoch)``, so runs are reproducible and resumable.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..erasing import (
    BatchEraser,
    BatchRandomErasing,
    EntireErasing,
    FixedErasing,
    MultiPatchErasing,
    RandomErasing,
    RandomPixelMasking,
    fill_param,
)
from ..errors import ArgumentError
from ..utils import derive_seed
from .base import DEFENSES, Defense, TrainContext, build_defense

__all__ = ["ErasingDefense", "MIDRE", "FixedErasingDefense", "EntireErasingDefense", "PixelMaskingDefense",
           "MultiPatchDefense", "eraser_for"]


def _pair(v: Sequence[float]) -> list[float]:
    return [float(a) for a in v]


class ErasingDefense(Defense):
    """A defense that applies a batched eraser to every training batch (base of this module's defenses)."""

    eraser: BatchEraser

    def __init__(self, eraser: BatchEraser, seed: int | None = None):
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ArgumentError(f"seed must be an int or None (derived from the training seed), got {seed!r}")
        self.eraser = eraser
        self.seed = seed
        self._base_seed: int | None = seed
        self._epoch = 0
        self._generators: dict[str, torch.Generator] = {}

    def prepare(self, ctx: TrainContext) -> None:
        if self.seed is None:
            train_seed = int(getattr(ctx.config, "seed", 0) or 0) if ctx.config is not None else 0
            self._base_seed = derive_seed(train_seed, self.name)
        self._generators.clear()

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self._epoch = int(epoch)
        self.eraser.set_epoch(epoch)
        self._generators.clear()   # re-seeded lazily from (base seed, epoch): resumable

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self._base_seed is None:
            return None            # not under the trainer and no seed: torch's global RNG
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self._base_seed, "epoch", self._epoch))
            self._generators[key] = g
        return g

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.eraser(x, y, idx, generator=self._generator(x.device)), y


@DEFENSES.register("midre", params="area, lower, fill, ratio, released, position, seed")
class MIDRE(ErasingDefense):
    """MIDRE: random square erasing (ImageNet-mean fill) of every training image, every batch.

    Args:
        area: a_e, the largest erased share (paper: 0.4 at 64 px; 0.4 / 0.8 at 224 px).
        lower: the smallest erased share (paper: 0.1).
        fill: 'mean' (pixel space, the paper's text), 'zero', 'one', 'random', 'inpaint', a number or a list.
        ratio: aspect-ratio range h/w (paper: [1, 1], squares).
        released: reproduce the released code's fill (erasing after Normalize(0.5, 0.5)).
        position: 'valid' (corner uniform where the square fits, s ~ U(lower, area): the released code)
            or 'any' (corner anywhere, re-drawn with s while the square sticks out: sec. 2.2's text).
        seed: eraser seed; None derives it from the training seed.
    """

    name = "midre"

    def __init__(self, area: float = 0.4, lower: float = 0.1, fill: str | float | Sequence[float] = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), released: bool = False, position: str = "valid",
                 seed: int | None = None):
        super().__init__(BatchRandomErasing(area=area, lower=lower, fill=fill, ratio=ratio, released=released,
                                            position=position), seed)

    def params(self) -> dict[str, Any]:
        e = self.eraser
        return {"area": e.area, "lower": e.lower, "fill": fill_param(e.fill), "ratio": _pair(e.ratio),
                "released": e.released, "position": e.position, "seed": self.seed}


@DEFENSES.register("fixed_erasing", params="area, lower, fill, ratio, seed")
class FixedErasingDefense(ErasingDefense):
    """Fixed Erasing ablation: one fixed region per training image for the whole training."""

    name = "fixed_erasing"

    def __init__(self, area: float = 0.4, lower: float = 0.1, fill: str | float | Sequence[float] = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), seed: int | None = None):
        super().__init__(FixedErasing(area=area, lower=lower, fill=fill, ratio=ratio, seed=seed or 0), seed)

    def prepare(self, ctx: TrainContext) -> None:
        super().prepare(ctx)
        self.eraser.seed = int(self._base_seed or 0)
        self.eraser._tables.clear()
        self.eraser._joined.clear()

    def params(self) -> dict[str, Any]:
        e = self.eraser
        return {"area": e.area, "lower": e.lower, "fill": fill_param(e.fill), "ratio": _pair(e.ratio),
                "seed": self.seed}


@DEFENSES.register("entire_erasing", params="share, mode, fill, seed")
class EntireErasingDefense(ErasingDefense):
    """Entire Erasing ablation: ``share`` of each identity's images per epoch are left out of training.

    ``mode``: 'drop' (the paper's sec. 3.3: "reduce the number of samples per ID" in each epoch; the chosen
    images leave their batch) or 'fill' (they stay in the batch as constant ``fill`` images with their labels:
    midre's rule before issue 24's review, which also dilutes the loss and shifts BatchNorm statistics)."""

    name = "entire_erasing"

    def __init__(self, share: float = 0.4, fill: str | float | Sequence[float] = "mean",
                 seed: int | None = None, mode: str = "drop"):
        if mode not in ("drop", "fill"):
            raise ArgumentError(f"entire_erasing: mode must be 'drop' (the paper) or 'fill', got {mode!r}")
        self.mode = mode
        self.kept: torch.Tensor | None = None     # drop: which images of the last batch stayed (Compose reads it)
        super().__init__(EntireErasing(share=share, fill=fill, seed=seed or 0), seed)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "fill":
            return super().transform_batch(x, y, idx)
        keep = ~self.eraser.sample_mask(x, y, idx)[:, 0, 0]        # the epoch's plan for these training images
        self.kept = keep
        return x[keep], y[keep]

    def prepare(self, ctx: TrainContext) -> None:
        super().prepare(ctx)
        if self.mode == "drop" and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ArgumentError("entire_erasing mode 'drop' is not supported under torchrun (the ranks would keep "
                                "batches of different sizes and stall); train it in one process or use mode 'fill'")
        targets = getattr(ctx.train_set, "targets", None)
        if targets is None:
            raise ArgumentError("entire_erasing needs a training set with a 'targets' tensor of labels "
                                "(every midre dataset has one)")
        self.eraser.seed = int(self._base_seed or 0)
        self.eraser.set_targets(targets)

    def params(self) -> dict[str, Any]:
        return {"share": self.eraser.share, "mode": self.mode, "fill": fill_param(self.eraser.fill), "seed": self.seed}


@DEFENSES.register("pixel_masking", params="fraction, fill, seed")
class PixelMaskingDefense(ErasingDefense):
    """Random-pixel masking ablation: a fraction (paper 0.1-0.6) of each image's pixels get random values."""

    name = "pixel_masking"

    def __init__(self, fraction: float = 0.4, fill: str | float | Sequence[float] = "random",
                 seed: int | None = None):
        super().__init__(RandomPixelMasking(fraction=fraction, fill=fill), seed)

    def params(self) -> dict[str, Any]:
        lo, hi = self.eraser.fraction
        return {"fraction": lo if lo == hi else [lo, hi], "fill": fill_param(self.eraser.fill), "seed": self.seed}


@DEFENSES.register("multi_patch", params="patches, area, lower, fill, ratio, seed")
class MultiPatchDefense(ErasingDefense):
    """Multi-patch ablation: 4 or 8 smaller squares whose areas sum to one MIDRE square."""

    name = "multi_patch"

    def __init__(self, patches: int = 4, area: float = 0.4, lower: float = 0.1,
                 fill: str | float | Sequence[float] = "mean", ratio: Sequence[float] = (1.0, 1.0),
                 seed: int | None = None):
        super().__init__(MultiPatchErasing(patches=patches, area=area, lower=lower, fill=fill, ratio=ratio), seed)

    def params(self) -> dict[str, Any]:
        e = self.eraser
        return {"patches": e.patches, "area": e.area, "lower": e.lower, "fill": fill_param(e.fill),
                "ratio": _pair(e.ratio), "seed": self.seed}


def eraser_for(defense: Any, batched: bool = True) -> BatchEraser | RandomErasing:
    """The eraser of an erasing defense (the adaptive attack and the feature-space analysis reuse it).

    Args:
        defense: a Defense, a Compose containing one erasing defense, or a spec (name / dict, e.g. a
            checkpoint's ``meta["defense"]``).
        batched: True -> a fresh batched eraser with the defense's arguments; False -> the per-image
            :class:`~midre.erasing.RandomErasing` (MIDRE only).
    """
    d = build_defense(defense)
    found = [m for m in d.members() if isinstance(m, ErasingDefense)]
    if not found:
        raise ArgumentError(f"defense '{d.name}' does not erase images; eraser_for needs midre or an erasing ablation")
    if len(found) > 1:
        raise ArgumentError(f"defense '{d.name}' holds several erasing defenses; pass the one you mean")
    e = found[0].eraser
    if isinstance(e, BatchRandomErasing):
        fresh = BatchRandomErasing(area=e.area, lower=e.lower, fill=fill_param(e.fill), ratio=e.ratio,
                                   released=e.released, p=e.p, max_attempts=e.max_attempts, size=e.size,
                                   inpaint_radius=e.inpaint_radius, position=e.position)
        return fresh if batched else fresh.single()
    if not batched:
        raise ArgumentError(f"only midre has a per-image eraser; '{found[0].name}' is batch-only (use batched=True)")
    return e
