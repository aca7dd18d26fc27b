"""Training-time image augmentation beyond the loop's flip: the released MIDRE / PPA 224-px recipe.

The release trains its 224-px FaceScrub targets (NoDef and MIDRE alike) with
``RandomResizedCrop(224, scale=(0.85, 1), ratio=1) -> ColorJitter(0.2, 0.2, 0.1, 0.1) -> RandomHorizontalFlip
-> Normalize -> RandomErasing`` (protocols.md, "MIDRE as released").  ``train.augment`` gives the first two, with
torchvision's semantics and per-image parameters, in front of the loop's flip and the defense's eraser::

    train: {augment: {crop_scale: [0.85, 1.0], color_jitter: [0.2, 0.2, 0.1, 0.1]}}

Every draw comes from the epoch's seeded generator, so a resumed run repeats it exactly.  Unset (the default),
nothing is drawn and the training is the one it always was.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator
from torchvision.transforms.v2 import functional as TF


class Augment(BaseModel):
    """``crop_scale``: RandomResizedCrop's area range with ratio 1 (a square of that share of the image, resized
    back to the image size); ``color_jitter``: ColorJitter's (brightness, contrast, saturation, hue)."""

    model_config = ConfigDict(extra="forbid")
    crop_scale: tuple[float, float] | None = None
    color_jitter: tuple[float, float, float, float] | None = None

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1 (the release: [0.85, 1]), got {list(v)}")
        return v

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is not None and (min(v) < 0 or v[3] > 0.5):
            raise ValueError("color_jitter is [brightness, contrast, saturation, hue], each >= 0 and hue <= 0.5 "
                             f"(the release: [0.2, 0.2, 0.1, 0.1]), got {list(v)}")
        return v


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """Per image: a square of U(scale) of the area (torchvision's side rounding), its corner uniform where it
    fits, resized back bilinearly to the image size."""
    h, w = x.shape[-2:]
    out = []
    for img in x:
        side = min(h, w, max(1, round(math.sqrt(_u(gen, *scale) * h * w))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[None, :, top:top + side, left:left + side]
        out.append(crop if side == h == w else F.interpolate(crop, size=(h, w), mode="bilinear",
                                                             align_corners=False, antialias=True))
    return torch.cat(out)


def color_jitter(x: torch.Tensor, jitter: tuple[float, float, float, float], gen: torch.Generator) -> torch.Tensor:
    """Per image, as torchvision's ColorJitter: brightness, contrast, saturation factors U[max(0, 1 - j), 1 + j] and a
    hue shift U[-h, h], applied in a random order (each skipped when its range is 0)."""
    b, c, s, hue = jitter
    ops = [(TF.adjust_brightness, b, False), (TF.adjust_contrast, c, False), (TF.adjust_saturation, s, False),
           (TF.adjust_hue, hue, True)]
    out = []
    for img in x:
        for k in torch.randperm(4, generator=gen).tolist():
            fn, j, is_hue = ops[k]
            if j > 0:
                img = fn(img, _u(gen, -j, j) if is_hue else _u(gen, max(0.0, 1 - j), 1 + j))
        out.append(img)
    return torch.stack(out)


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """The configured crop, then the colour jitter (the release's order), on a batch in [0, 1]."""
    if aug.crop_scale is not None:
        x = random_resized_crop(x, aug.crop_scale, gen)
    if aug.color_jitter is not None:
        x = color_jitter(x, aug.color_jitter, gen)
    return x
