"""Drawing primitives of the synthetic face renderers (v1: :mod:`midre.data.synthetic`, v2:
:mod:`midre.data.facerender`): the shared colour ramps, broadcasting helpers, alpha compositing and the
posed pixel grid with its soft shapes and strokes.  Everything works on a whole chunk of images at once
(B, C, H, W); no function mixes images."""
from __future__ import annotations

import torch

SKIN_DARK = (0.30, 0.18, 0.12)
SKIN_LIGHT = (0.97, 0.82, 0.72)
HAIR_PALETTE = ((0.05, 0.04, 0.04), (0.22, 0.13, 0.08), (0.45, 0.29, 0.16), (0.82, 0.67, 0.42))
IRIS_PALETTE = ((0.22, 0.12, 0.06), (0.30, 0.36, 0.45), (0.25, 0.33, 0.20))


def palette(t: torch.Tensor, colours: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    """Piecewise-linear colour ramp: t in [0, 1] (B,) -> (B, 3)."""
    pal = torch.tensor(colours, dtype=torch.float32)
    x = t.clamp(0, 1) * (len(colours) - 1)
    i = x.floor().long().clamp(max=len(colours) - 2)
    f = (x - i.float()).unsqueeze(1)
    return pal[i] * (1 - f) + pal[i + 1] * f


def per_image(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting against (B, 1, H, W) maps."""
    return t.reshape(-1, 1, 1, 1)


def rgb(t: torch.Tensor) -> torch.Tensor:
    """(B, 3) -> (B, 3, 1, 1)."""
    return t.reshape(-1, 3, 1, 1)


def over(img: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Alpha-composite ``colour`` (B,3,1,1 or B,3,H,W) over ``img`` with ``mask`` (B,1,H,W)."""
    return img.lerp_(colour, mask)


class PosedGrid:
    """Posed pixel coordinates of a chunk (u, v in the canonical face frame) and the soft-shape helpers
    that both renderers draw with."""

    def __init__(self, p: dict[str, torch.Tensor], res: int):
        lin = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
        Y, X = torch.meshgrid(lin, lin, indexing="ij")
        self.X, self.Y = X.view(1, 1, res, res), Y.view(1, 1, res, res)
        s = per_image(p["scale"])
        cr, sr = per_image(torch.cos(p["rot"])), per_image(torch.sin(p["rot"]))
        px, py = self.X - per_image(p["tx"]), self.Y - per_image(p["ty"])
        self.u = (cr * px + sr * py) / s
        self.v = (-sr * px + cr * py) / s
        self.e = 1.0 / (res * s)        # half a pixel in face units
        self._k = -1.0 / (2 * self.e)

    def soft(self, d: torch.Tensor) -> torch.Tensor:
        """Coverage of a shape with signed distance ``d`` (negative inside): a one-pixel linear ramp."""
        return (d * self._k).add_(0.5).clamp_(0, 1)

    def stroke(self, across: torch.Tensor, hw: torch.Tensor, outside: torch.Tensor | None = None) -> torch.Tensor:
        """Coverage of a line of half-width ``hw`` (``across`` = distance to its centre line); lines thinner
        than a pixel are drawn one pixel wide with proportionally less opacity, so ink is conserved."""
        d = across - torch.clamp(hw, min=self.e)
        if outside is not None:
            d = torch.maximum(d, outside)
        return self.soft(d) * (hw / self.e).clamp(max=1)
