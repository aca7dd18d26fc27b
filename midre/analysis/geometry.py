"""Erasure geometry: how much of the identity-bearing face region MIDRE's square erases, per a_e.

MIDRE erases a square of area share s ~ U(0.1, a_e) of the *frame*.  What it removes from the identity
depends on how much of the frame the identity-bearing region occupies.  On the v2 synthetic faces identity
lives in the inner-face box (eyes to mouth; ``midre.data.synthetic2.INNER_BOX``, about 26 % of the frame:
71 % of the probe's identity signal lies inside it, 23 % outside).  On an aligned 64-px CelebA crop (the
paper's setup: 178x218 aligned image, centre crop 108 with offsets 55 top / 35 left, resized to 64) the
same eyes-to-mouth box covers far more of the frame.  This module measures, with MIDRE's own sampler
(midre.erasing.sample_boxes), the share of that box erased per image: its mean and the chance that more
than 80 % of the box is erased.

The CelebA box is built from approximate mean landmark positions of the aligned CelebA images (eyes
(69, 111) and (108, 111), mouth corners (72, 152) and (105, 152), in the 178x218 frame; midre never
downloads the dataset, so they are not read from it) with the synthetic box's own margins around its
eyes and mouth, measured in units of the eye-to-mouth distance; it is clipped to the frame (the 108 crop
ends about 11 px below the mouth).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..erasing import boxes_to_mask, sample_boxes

# synthetic2's canonical landmarks (means of its identity ranges): eye y, half eye separation, mouth y
_SYN_EYE_Y, _SYN_EYE_DX, _SYN_MOUTH_Y = -0.105, 0.285, 0.455
# approximate mean landmarks of aligned CelebA (178 x 218): eyes, mouth corners
_CELEBA_EYES = ((69.0, 111.0), (108.0, 111.0))
_CELEBA_MOUTH = ((72.0, 152.0), (105.0, 152.0))
_CROP = (35.0, 55.0, 108.0)      # left, top, side of the paper's centre crop


def synthetic_box() -> tuple[float, float, float, float]:
    from ..data.synthetic2 import INNER_BOX

    return tuple(float(v) for v in INNER_BOX)


def celeba_box() -> tuple[float, float, float, float]:
    """The eyes-to-mouth box of an aligned 64-px CelebA crop in [-1, 1] frame coordinates (see the module
    docstring), with synthetic2's margins scaled by the eye-to-mouth distance and clipped to the frame."""
    x0s, y0s, x1s, y1s = synthetic_box()
    d_syn = _SYN_MOUTH_Y - _SYN_EYE_Y
    top_m, bot_m = (_SYN_EYE_Y - y0s) / d_syn, (y1s - _SYN_MOUTH_Y) / d_syn
    side_m = (x1s - _SYN_EYE_DX) / d_syn
    left, top, side = _CROP

    def norm(v: float, off: float) -> float:
        return (v - off - side / 2) / (side / 2)

    eye_y = norm(sum(p[1] for p in _CELEBA_EYES) / 2, top)
    mouth_y = norm(sum(p[1] for p in _CELEBA_MOUTH) / 2, top)
    ex = [norm(p[0], left) for p in _CELEBA_EYES]
    d = mouth_y - eye_y
    box = (min(ex) - side_m * d, eye_y - top_m * d, max(ex) + side_m * d, mouth_y + bot_m * d)
    return tuple(max(-1.0, min(1.0, v)) for v in box)


def box_mask(box: Sequence[float], resolution: int) -> torch.Tensor:
    """The pixels of a [-1, 1] box at ``resolution`` (pixel centres inside the box)."""
    c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution * 2 - 1
    x0, y0, x1, y1 = box
    rows = (c >= y0) & (c <= y1)
    cols = (c >= x0) & (c <= x1)
    return rows[:, None] & cols[None, :]


def erased_share(box: Sequence[float], resolution: int, area: float, n: int = 20000, seed: int = 0) -> dict[str, float]:
    """Share of the box erased by MIDRE's square (s ~ U(0.1, area), fully inside the frame), over ``n`` draws."""
    gen = torch.Generator().manual_seed(seed)
    inside = box_mask(box, resolution)
    shares = []
    for start in range(0, n, 5000):
        m = boxes_to_mask(sample_boxes(min(5000, n - start), resolution, resolution, area=area, generator=gen),
                          resolution, resolution)
        shares.append((m & inside).flatten(1).sum(1).double() / inside.sum())
    s = torch.cat(shares)
    return {"mean": float(s.mean()), "over_80": float((s > 0.8).double().mean()),
            "box_frame_share": float(inside.double().mean())}


def geometry(areas: Sequence[float] = (0.2, 0.4, 0.6, 0.8), n: int = 20000, seed: int = 0) -> dict[str, Any]:
    """The table behind docs/frontier.md's erasure-geometry figure."""
    setups = [("synthetic2 inner face, 32 px", synthetic_box(), 32), ("synthetic2 inner face, 64 px", synthetic_box(), 64),
              ("aligned CelebA crop, 64 px (approx.)", celeba_box(), 64)]
    rows = []
    for name, box, res in setups:
        for a in areas:
            rows.append({"setup": name, "resolution": res, "box": list(box), "a_e": a,
                         **erased_share(box, res, a, n=n, seed=seed)})
    return {"format": "midre-geometry", "n": n, "seed": seed, "rows": rows}


def plot_geometry(res: dict[str, Any], path: Any) -> Any:
    from ..plotting import pyplot, save_fig

    fig, axes = pyplot().subplots(1, 2, figsize=(9.6, 3.8))
    for setup in dict.fromkeys(r["setup"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["setup"] == setup]
        a = [r["a_e"] for r in rs]
        axes[0].plot(a, [100 * r["mean"] for r in rs], marker="o",
                     label=f"{setup} (box = {100 * rs[0]['box_frame_share']:.0f} % of frame)")
        axes[1].plot(a, [100 * r["over_80"] for r in rs], marker="o", label=setup)
    axes[0].set_ylabel("mean share of the face box erased (%)")
    axes[1].set_ylabel("draws erasing > 80 % of the box (%)")
    for ax in axes:
        ax.set_xlabel("a_e (largest erased share of the frame)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("How much of the identity region MIDRE's square erases")
    fig.tight_layout()
    return save_fig(fig, path)
