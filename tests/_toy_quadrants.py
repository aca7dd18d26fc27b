"""A tiny registered dataset for the gates / zoo / fine-tuning tests: 4 private classes = (bright half:
top / bottom) x (bright channel: red / green), flip-invariant and learnable in one epoch; public images
use the same cues in other combinations (both channels, or blue) so a GAN prior can draw them; a
pretraining pool of 6 further classes (left / right halves).  16 px, all generated from a seed."""
from __future__ import annotations

import torch

from midre.data.base import DATASETS, MISplits, TensorImageSet
from midre.errors import ArgumentError

NAME = "toy-quadrants"


def _make(n: int, kinds: list[tuple[int, list[int]]], g: torch.Generator) -> TensorImageSet:
    y = torch.arange(n) % len(kinds)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.3
    for i in range(n):
        half, chans = kinds[int(y[i])]
        for c in chans:
            if half < 2:
                x[i, c, half * 8:(half + 1) * 8, :] += 0.6
            else:
                x[i, c, :, (half - 2) * 8:(half - 1) * 8] += 0.6
    return TensorImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8), y)


if NAME not in DATASETS:
    @DATASETS.register(NAME, kind="embedded", needs_root=False, options={"n": "images per private split"})
    def _toy(root=None, resolution=None, seed=0, n: int = 96, **unknown) -> MISplits:
        if unknown:   # like every registered family: an unknown option is a user error
            raise ArgumentError(f"dataset '{NAME}' has no option '{next(iter(unknown))}'; it takes: n")
        g = torch.Generator().manual_seed(int(seed))
        private = [(0, [0]), (0, [1]), (1, [0]), (1, [1])]
        public = [(0, [0, 1]), (1, [0, 1]), (0, [2]), (1, [2])]
        pool = [(2, [0]), (2, [1]), (2, [2]), (3, [0]), (3, [1]), (3, [2])]
        s = MISplits(NAME, 16, 4, _make(n, private, g), _make(n // 2, private, g), _make(2 * n, public, g),
                     class_names=[f"c{i}" for i in range(4)])
        s.pretrain = _make(3 * n, pool, g)
        return s
