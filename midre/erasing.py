"""Random Erasing as a model-inversion defense (MIDRE) and the paper's ablation erasers.

MIDRE's eraser is the paper's Algorithm 1 (sec. 2.2, A.3): for every image and every call, draw an
area share ``s ~ U(lower, a_e)`` (``lower`` = 0.1, ``a_e`` = ``area`` the one hyper-parameter) and an
aspect ratio ``r`` (log-uniform in ``ratio``, (1, 1) = square); the region is
``h = round(sqrt(s*H*W*r))`` by ``w = round(sqrt(s*H*W/r))`` at a uniformly random top-left corner such
that it lies fully inside the image; if it does not fit, draw again.  The region is filled with the
ImageNet mean ``(0.485, 0.456, 0.406)`` **in pixel space** (the paper's text; images in midre are
[0, 1] tensors and normalisation lives inside the model).

``released=True`` reproduces the released code instead: there the eraser runs after
``Normalize(0.5, 0.5)`` with the same numbers, so a constant fill ``v`` lands at pixel value
``0.5 + 0.5 * v`` (the mean becomes about (0.7425, 0.728, 0.703)).  ``max_attempts=10`` reproduces
torchvision's sampler (at most 10 draws, strict ``h < H and w < W`` test, image left unchanged when
every draw fails); the default ``max_attempts=None`` re-draws until the region fits (Algorithm 1).

Placement (``position``): the default ``"valid"`` draws ``s`` exactly from U(lower, a_e) and the corner
uniformly among the positions where the region fits (torchvision's sampler, i.e. the released code;
the erased share then has mean (lower + a_e) / 2).  ``"any"`` follows the literal wording of the
paper's sec. 2.2: the starting point is drawn uniformly over the WHOLE image, then ``s``, and both
are drawn again while the region sticks out.  That rejection favours small regions (a square of side
k is accepted with probability (H-k+1)(W-k+1)/(HW)), so its erased share is smaller on average.

Two forms with the same distribution:

- :class:`RandomErasing` -- one ``(C, H, W)`` image, a drop-in torchvision transform (literal scalar
  implementation of Algorithm 1);
- :class:`BatchRandomErasing` -- an independent region for every image of a ``(B, C, H, W)`` batch on
  the batch's own device, vectorised (only the failed draws are re-drawn, the mask comes from
  broadcast comparisons of ``arange`` grids).

Ablation erasers (paper sec. 3.3 and D.1): :class:`FixedErasing` (one region per training image for
the whole training), :class:`EntireErasing` (whole images, an exact share per identity per epoch),
:class:`RandomPixelMasking` (a fraction of the pixels) and :class:`MultiPatchErasing` (n squares
whose areas sum to one MIDRE square).  The fill and aspect-ratio variants are arguments of the main
eraser.  Every batched eraser has ``forward(x, y=None, idx=None)`` and ``sample_mask(...)``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from .errors import ArgumentError, did_you_mean
from .registry import Registry
from .utils import derive_seed

__all__ = [
    "IMAGENET_MEAN", "RELEASED_MEAN_PIXEL", "FILL_NAMES", "Boxes", "sample_boxes", "boxes_to_mask",
    "apply_fill", "constant_fill", "RandomErasing", "BatchRandomErasing", "FixedErasing", "EntireErasing",
    "RandomPixelMasking", "MultiPatchErasing", "ERASERS", "build_eraser",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: the released code's fill seen in pixel space: 0.5 + 0.5 * mean (erasing after Normalize(0.5, 0.5))
RELEASED_MEAN_PIXEL = tuple(0.5 + 0.5 * v for v in IMAGENET_MEAN)
FILL_NAMES = ("mean", "zero", "one", "random", "inpaint")
_FILL_ALIASES = {"0": "zero", "1": "one", "imagenet": "mean", "uniform": "random", "telea": "inpaint"}
_MAX_ROUNDS = 10000  # re-draw rounds before "this region practically never fits" (max_attempts=None)
POSITIONS = ("valid", "any")

Fill = str | float | int | Sequence[float]


class Boxes(NamedTuple):
    """Sampled regions: int64 tensors of equal shape; an empty box (h = w = 0) leaves the image as is."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor

    def area(self) -> torch.Tensor:
        return self.height * self.width


# ----------------------------------------------------------------------------------------- validation
def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _check_bounds(area: Any, lower: Any) -> tuple[float, float]:
    """``lower <= area``; ``lower == area`` is a fixed share (the paper's a_e sweep and its D.2 ablation)."""
    if not _is_number(lower) or not math.isfinite(lower):
        raise ArgumentError(f"lower must be a number in (0, area], got {lower!r}; the paper uses lower=0.1")
    if not _is_number(area) or not math.isfinite(area):
        raise ArgumentError(f"area (a_e) must be a number in [lower, 1], got {area!r}; the paper uses 0.4 (or 0.8 at 224 px)")
    if not 0.0 < float(lower) < 1.0:
        raise ArgumentError(f"lower must be in (0, area], got {lower}; the paper uses lower=0.1")
    if not float(lower) <= float(area) <= 1.0:
        raise ArgumentError(f"area (a_e) must be in [lower, 1] = [{lower}, 1], got {area}; the paper uses 0.4 (or 0.8 "
                            "at 224 px); lower = area erases a fixed share")
    return float(area), float(lower)


def _check_ratio(ratio: Any) -> tuple[float, float]:
    if _is_number(ratio):
        ratio = (ratio, ratio)
    try:
        r0, r1 = (float(v) for v in ratio)
        ok = all(_is_number(v) for v in ratio)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ArgumentError(f"ratio must be a pair (min, max) of aspect ratios h/w, got {ratio!r}; use (1.0, 1.0) for squares")
    if not (r0 > 0 and r1 > 0 and math.isfinite(r0) and math.isfinite(r1)):
        raise ArgumentError(f"ratio must be > 0, got ({r0}, {r1}); use e.g. (0.5, 0.5), (1.0, 1.0) or (2.0, 2.0)")
    if r0 > r1:
        raise ArgumentError(f"ratio must be ordered (min <= max), got ({r0}, {r1}); write ({r1}, {r0})")
    return r0, r1


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ArgumentError(f"size must be a positive int or a pair (h, w) of pixel sizes, got {size!r}")
    return int(h), int(w)


def _check_share(value: Any, name: str, hint: str) -> float:
    if not _is_number(value) or not 0.0 < float(value) < 1.0:
        raise ArgumentError(f"{name} must be a number in (0, 1), got {value!r}; {hint}")
    return float(value)


def _check_fill(fill: Any, released: bool) -> str | tuple[float, ...]:
    """Normalise a fill spec: a name from FILL_NAMES or a tuple of floats (one or one per channel)."""
    if not isinstance(released, bool):
        raise ArgumentError(f"released must be True or False, got {released!r}")
    lo, hi = (-1.0, 1.0) if released else (0.0, 1.0)
    space = "normalised Normalize(0.5, 0.5) space [-1, 1] (released=True)" if released else "pixel space [0, 1]"
    if isinstance(fill, str):
        key = fill.strip().lower()
        key = _FILL_ALIASES.get(key, key)
        if key not in FILL_NAMES:
            raise ArgumentError(f"unknown fill '{fill}'{did_you_mean(fill, FILL_NAMES)}; choose one of: "
                                f"{', '.join(FILL_NAMES)}, a number or a tuple with one value per channel")
        if released and key in ("random", "inpaint"):
            raise ArgumentError(f"released=True only applies to constant fills (mean, zero, one, numbers), not '{key}'; "
                                "drop released or pick a constant fill")
        if key == "zero":
            return (0.0,)
        if key == "one":
            return (1.0,)
        return key
    if _is_number(fill):
        fill = (fill,)
    if isinstance(fill, torch.Tensor):
        fill = tuple(fill.flatten().tolist())
    if not isinstance(fill, (tuple, list)) or not fill or not all(_is_number(v) for v in fill):
        raise ArgumentError(f"fill must be one of {', '.join(FILL_NAMES)}, a number or a tuple of numbers, got {fill!r}")
    vals = tuple(float(v) for v in fill)
    if any(not (lo <= v <= hi) for v in vals):
        raise ArgumentError(f"fill values must lie in {space}, got {vals}")
    return vals


def _fill_repr(fill: str | tuple[float, ...]) -> str:
    if isinstance(fill, str):
        return repr(fill)
    return repr(fill[0]) if len(fill) == 1 else repr(list(fill))


def fill_param(fill: str | tuple[float, ...]) -> Any:
    """JSON-able form of a normalised fill (round-trips through _check_fill)."""
    if isinstance(fill, str):
        return fill
    if fill == (0.0,):
        return "zero"
    if fill == (1.0,):
        return "one"
    return fill[0] if len(fill) == 1 else list(fill)


def constant_fill(fill: str | tuple[float, ...], channels: int, released: bool = False) -> tuple[float, ...] | None:
    """Pixel-space values (one per channel) of a constant fill, or None for 'random' / 'inpaint'.

    'mean' is the ImageNet mean for 3 channels and its average (0.449) for any other channel count.
    """
    if isinstance(fill, str) and fill not in ("mean",):
        return None
    if fill == "mean":
        vals = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3.0,) * channels
    else:
        vals = tuple(fill)  # type: ignore[arg-type]
        if len(vals) == 1:
            vals = vals * channels
        elif len(vals) != channels:
            raise ArgumentError(f"fill has {len(vals)} values but the images have {channels} channels; "
                                f"give one value or {channels} values")
    if released:
        vals = tuple(0.5 + 0.5 * v for v in vals)
    return tuple(float(v) for v in vals)


def _check_images(x: Any, ndim: int, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ArgumentError(f"{who} expects a torch.Tensor, got {type(x).__name__}; convert images with ToTensor / ToImage + ToDtype(float)")
    if not x.is_floating_point():
        raise ArgumentError(f"{who} expects float images in [0, 1], got dtype {x.dtype}; convert with x.float() / 255")
    if x.dim() != ndim:
        shape = "(C, H, W)" if ndim == 3 else "(B, C, H, W)"
        other = " (use BatchRandomErasing for batches)" if ndim == 3 and x.dim() == 4 else \
            " (use RandomErasing for a single image)" if ndim == 4 and x.dim() == 3 else ""
        raise ArgumentError(f"{who} expects a {shape} tensor, got shape {tuple(x.shape)}{other}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ArgumentError(f"{who} got an empty image of shape {tuple(x.shape)}")


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_position(position: Any) -> str:
    if position not in POSITIONS:
        raise ArgumentError(f"position must be 'valid' (corner uniform where the region fits, the released code) "
                            f"or 'any' (corner anywhere, re-draw when it sticks out: sec. 2.2's text), got {position!r}"
                            f"{did_you_mean(str(position), POSITIONS)}")
    return str(position)


def _check_max_attempts(max_attempts: Any) -> int | None:
    if max_attempts is None:
        return None
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ArgumentError(f"max_attempts must be a positive int or None (re-draw until it fits), got {max_attempts!r}")
    return max_attempts


def _check_p(p: Any) -> float:
    if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
        raise ArgumentError(f"p (probability of erasing an image) must be in [0, 1], got {p!r}; MIDRE uses p=1")
    return float(p)


def _check_fits(height: int, width: int, lower: float, ratio: tuple[float, float],
                size: tuple[int, int] | None, strict: bool) -> None:
    """Raise when no region of the requested sizes can ever fit an H x W image."""
    if size is not None:
        h, w = size
        fits = (h < height and w < width) if strict else (h <= height and w <= width)
        if not fits:
            raise ArgumentError(f"the erasing region {h}x{w} px is larger than the {height}x{width} image; "
                                "give a smaller size (or an area share instead)")
        return
    a = lower * height * width
    lo = max(ratio[0], a / (width + 0.5) ** 2)
    hi = min(ratio[1], (height + 0.5) ** 2 / a)
    possible = lo < hi or (ratio[0] == ratio[1] and a / (width + 0.5) ** 2 < ratio[0] < (height + 0.5) ** 2 / a)
    if not possible:
        raise ArgumentError(f"no region with area share >= lower={lower} and aspect ratio in {ratio} fits a "
                            f"{height}x{width} image; lower the area bounds or widen the ratio range")


# ----------------------------------------------------------------------------------------- sampling
def _rand(n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if lo == hi:
        return torch.full((n,), lo, device=device)
    return torch.empty(n, device=device).uniform_(lo, hi, generator=gen)


def _uniform_int(high: torch.Tensor, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One uniform integer in [0, high) per entry (high >= 1), vectorised."""
    u = torch.rand(high.shape, generator=gen, device=device)
    return torch.minimum((u * high).long(), high - 1)


def _draw_sizes(shape: tuple[int, ...], height: int, width: int, lower: float, upper: float,
                ratio: tuple[float, float], strict: bool, max_attempts: int | None,
                gen: torch.Generator | None, device: torch.device, parts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Region sizes (h, w) of shape ``shape + (parts,)``, re-drawing only the rows that do not fit.

    Each row shares one area share ``s`` split evenly over ``parts`` regions (each of area s*H*W/parts)
    with one aspect ratio per region; a row is re-drawn when any of its regions does not fit.  Rows
    still failing after ``max_attempts`` draws get h = w = 0 (torchvision: image left unchanged).
    """
    n = int(math.prod(shape))
    hw = height * width
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = _rand(m, lower, upper, gen, device) * (hw / parts)
        r = torch.exp(_rand(m * parts, lr0, lr1, gen, device)).view(m, parts)
        s = s.view(m, 1)
        return torch.round(torch.sqrt(s * r)).long(), torch.round(torch.sqrt(s / r)).long()

    def fits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ok = (h < height) & (w < width) if strict else (h <= height) & (w <= width)
        return ok.all(dim=1)

    h, w = draw(n)
    # The largest possible region fits -> every draw fits: no check, no device sync (the MIDRE default).
    big = math.sqrt(upper * hw / parts * ratio[1]) + 1e-3, math.sqrt(upper * hw / parts / ratio[0]) + 1e-3
    limit_h, limit_w = (height - 0.5, width - 0.5) if strict else (height + 0.5, width + 0.5)
    if not (big[0] < limit_h and big[1] < limit_w):
        ok = fits(h, w)
        pending = (~ok).nonzero().flatten()
        rounds = 1
        while pending.numel() > 0:
            if max_attempts is not None and rounds >= max_attempts:
                h[pending] = 0
                w[pending] = 0
                break
            if max_attempts is None and rounds >= _MAX_ROUNDS:
                raise ArgumentError(f"the erasing region almost never fits a {height}x{width} image "
                                    f"(area share in [{lower}, {upper}], ratio {ratio}); lower the area or widen the ratio")
            nh, nw = draw(pending.numel())
            good = fits(nh, nw)
            h[pending[good]] = nh[good]
            w[pending[good]] = nw[good]
            pending = pending[~good]
            rounds += 1
    return h.view(*shape, parts), w.view(*shape, parts)


def _draw_anywhere(n: int, height: int, width: int, lower: float, upper: float, ratio: tuple[float, float],
                   size: tuple[int, int] | None, strict: bool, max_attempts: int | None,
                   gen: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, ...]:
    """position='any': corner uniform over the whole image, then the size; re-draw both while it sticks out."""
    hw = height * width
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])

    def draw(m: int) -> tuple[torch.Tensor, ...]:
        t = _uniform_int(torch.full((m,), height, device=device), gen, device)
        l_ = _uniform_int(torch.full((m,), width, device=device), gen, device)
        if size is not None:
            h = torch.full((m,), size[0], dtype=torch.long, device=device)
            w = torch.full((m,), size[1], dtype=torch.long, device=device)
        else:
            s = _rand(m, lower, upper, gen, device) * hw
            r = torch.exp(_rand(m, lr0, lr1, gen, device))
            h, w = torch.round(torch.sqrt(s * r)).long(), torch.round(torch.sqrt(s / r)).long()
        return t, l_, h, w

    def fits(t, l_, h, w):
        inside = (t + h <= height) & (l_ + w <= width)
        return inside & (h < height) & (w < width) if strict else inside

    out = list(draw(n))
    pending = (~fits(*out)).nonzero().flatten()
    rounds = 1
    while pending.numel() > 0:
        if max_attempts is not None and rounds >= max_attempts:
            out[2][pending] = 0
            out[3][pending] = 0
            break
        if max_attempts is None and rounds >= _MAX_ROUNDS:
            raise ArgumentError(f"the erasing region almost never fits a {height}x{width} image with position='any'; "
                                "lower the area or use position='valid'")
        new = draw(pending.numel())
        good = fits(*new)
        for k in range(4):
            out[k][pending[good]] = new[k][good]
        pending = pending[~good]
        rounds += 1
    return tuple(out)


def sample_boxes(n: int, height: int, width: int, *, area: float = 0.4, lower: float = 0.1,
                 ratio: Sequence[float] = (1.0, 1.0), size: int | tuple[int, int] | None = None,
                 p: float = 1.0, max_attempts: int | None = None, position: str = "valid",
                 generator: torch.Generator | None = None, device: str | torch.device | None = None) -> Boxes:
    """Sample ``n`` independent erasing regions for ``height x width`` images (Algorithm 1, vectorised).

    Args:
        n: number of images.
        height: image height in pixels.
        width: image width in pixels.
        area: a_e, the largest area share; ``s ~ U(lower, area)``.
        lower: the smallest area share (paper: 0.1).
        ratio: (min, max) aspect ratio h/w, sampled log-uniformly; (1, 1) gives squares.
        size: explicit region size in pixels (int or (h, w)) instead of an area share.
        p: probability that an image is erased at all (MIDRE: 1).
        max_attempts: None re-draws until the region fits (Algorithm 1); an int reproduces torchvision
            (strict fit test, at most that many draws, empty box if all fail).
        position: 'valid' (corner uniform where the region fits; s ~ U(lower, area) exactly) or 'any'
            (corner uniform over the image, re-drawn with the size while the region sticks out).
        generator: optional torch.Generator; sampling runs on its device.
        device: where the returned tensors live (default: the generator's device, else CPU).

    Returns:
        :class:`Boxes` of int64 tensors of shape (n,).
    """
    area, lower = _check_bounds(area, lower)
    r = _check_ratio(ratio)
    sz = _check_size(size)
    p = _check_p(p)
    max_attempts = _check_max_attempts(max_attempts)
    position = _check_position(position)
    gen = _check_generator(generator)
    if not isinstance(n, int) or n < 0:
        raise ArgumentError(f"n must be a non-negative int, got {n!r}")
    if not all(isinstance(v, int) and v > 0 for v in (height, width)):
        raise ArgumentError(f"height and width must be positive ints, got {height!r}, {width!r}")
    strict = max_attempts is not None
    out_dev = torch.device(device) if device is not None else (gen.device if gen is not None else torch.device("cpu"))
    dev = gen.device if gen is not None else out_dev
    if position == "any":
        if sz is not None:
            _check_fits(height, width, lower, r, sz, strict)
        elif max_attempts is None:
            _check_fits(height, width, lower, r, None, strict=False)
        top, left, h, w = _draw_anywhere(n, height, width, lower, area, r, sz, strict, max_attempts, gen, dev)
    elif sz is not None:
        _check_fits(height, width, lower, r, sz, strict)
        h = torch.full((n,), sz[0], dtype=torch.long, device=dev)
        w = torch.full((n,), sz[1], dtype=torch.long, device=dev)
    else:
        if max_attempts is None:
            _check_fits(height, width, lower, r, None, strict=False)
        h, w = _draw_sizes((n,), height, width, lower, area, r, strict, max_attempts, gen, dev)
        h, w = h.view(n), w.view(n)
    if position == "valid":
        top = _uniform_int(height - h + 1, gen, dev)
        left = _uniform_int(width - w + 1, gen, dev)
    if p < 1.0:
        skip = torch.rand(n, generator=gen, device=dev) >= p
        h = h.masked_fill(skip, 0)
        w = w.masked_fill(skip, 0)
    return Boxes(top.to(out_dev), left.to(out_dev), h.to(out_dev), w.to(out_dev))


def boxes_to_mask(boxes: Boxes, height: int, width: int) -> torch.Tensor:
    """Boolean mask of shape ``boxes.top.shape[:1] + (H, W)``; extra box dims (patches) are OR-ed."""
    dev = boxes.top.device
    rows = torch.arange(height, device=dev)
    cols = torch.arange(width, device=dev)
    t, l_ = boxes.top.unsqueeze(-1), boxes.left.unsqueeze(-1)
    in_rows = ((rows >= t) & (rows < t + boxes.height.unsqueeze(-1))).to(torch.uint8)    # (..., H)
    in_cols = ((cols >= l_) & (cols < l_ + boxes.width.unsqueeze(-1))).to(torch.uint8)   # (..., W)
    # outer product in uint8 (about 10x faster than a broadcast bool '&' on CPU), read back as bool
    m = (in_rows.unsqueeze(-1) * in_cols.unsqueeze(-2)).view(torch.bool)             # (..., H, W)
    while m.dim() > 3:
        m = m.any(dim=1)
    return m


def _inpaint(x: torch.Tensor, mask: torch.Tensor, radius: float) -> torch.Tensor:
    """OpenCV Telea inpainting of the masked pixels, one image at a time on the CPU."""
    import cv2
    import numpy as np

    xc = x.detach().to("cpu", torch.float32)
    mc = mask.detach().cpu()
    out = xc.clone()
    for i in range(xc.shape[0]):
        if not bool(mc[i].any()):
            continue
        m8 = mc[i].numpy().astype(np.uint8) * 255
        img = xc[i].clamp(0, 1)
        if img.shape[0] == 3:   # 8-bit 3-channel path of cv2.inpaint
            u8 = np.ascontiguousarray((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
            res = cv2.inpaint(u8, m8, float(radius), cv2.INPAINT_TELEA)
            filled = torch.from_numpy(res).permute(2, 0, 1).float() / 255.0
        else:                   # any other channel count: float32 single-channel per channel
            filled = torch.stack([torch.from_numpy(cv2.inpaint(np.ascontiguousarray(c.numpy()), m8, float(radius),
                                                               cv2.INPAINT_TELEA)) for c in img])
        out[i] = torch.where(mc[i].unsqueeze(0), filled.clamp(0, 1), xc[i])
    return out.to(device=x.device, dtype=x.dtype)


def apply_fill(x: torch.Tensor, mask: torch.Tensor, fill: Fill = "mean", *, released: bool = False,
               generator: torch.Generator | None = None, inpaint_radius: float = 3.0) -> torch.Tensor:
    """Return ``x`` (B, C, H, W) with the pixels where ``mask`` (B, H, W) is True replaced by ``fill``.

    ``fill``: 'mean' (ImageNet mean in pixel space), 'zero' / 0, 'one' / 1, a number, a tuple with one
    value per channel, 'random' (U(0, 1) per pixel and channel) or 'inpaint' (OpenCV Telea).
    ``released=True`` maps a constant v to 0.5 + 0.5 * v (the released code's normalised-space fill).
    """
    f = _check_fill(fill, released)
    m = mask.unsqueeze(1)
    if f == "inpaint":
        return _inpaint(x, mask, inpaint_radius)
    if f == "random":
        dev = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=dev).to(device=x.device, dtype=x.dtype)
        return torch.where(m, noise, x)
    v = _fill_tensor(constant_fill(f, x.shape[1], released), x.dtype, x.device)
    return torch.where(m, v, x)


@functools.lru_cache(maxsize=64)
def _fill_tensor(vals: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) fill values, cached per device: no host-to-device copy (and sync) on every batch."""
    return torch.tensor(vals, dtype=dtype, device=device).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------------------- single image
class RandomErasing(nn.Module):
    """MIDRE's eraser for one ``(C, H, W)`` float image in [0, 1]; usable in any torchvision pipeline.

    A literal scalar implementation of the paper's Algorithm 1 (see the module docstring); erases a
    new region on every call.

    Args:
        area: a_e, the largest area share (paper: 0.4; 0.4 or 0.8 at 224 px).
        lower: the smallest area share (paper: 0.1).
        fill: 'mean' (ImageNet mean in pixel space, default), 'zero'/0, 'one'/1, 'random', 'inpaint',
            a number or one value per channel.
        ratio: (min, max) aspect ratio h/w, log-uniform; (1, 1) = squares (paper).
        released: fill as the released code (constant v at pixel 0.5 + 0.5 v).
        p: probability of erasing an image (MIDRE: 1).
        max_attempts: None = re-draw until it fits; 10 = torchvision's behaviour.
        size: explicit region size in pixels instead of an area share.
        inpaint_radius: Telea radius for ``fill='inpaint'``.
        generator: optional CPU torch.Generator (default: torch's global RNG).
        position: 'valid' (default, released code) or 'any' (sec. 2.2's literal text), see the module doc.
    """

    def __init__(self, area: float = 0.4, lower: float = 0.1, fill: Fill = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), released: bool = False, p: float = 1.0,
                 max_attempts: int | None = None, size: int | tuple[int, int] | None = None,
                 inpaint_radius: float = 3.0, generator: torch.Generator | None = None,
                 position: str = "valid"):
        super().__init__()
        self.area, self.lower = _check_bounds(area, lower)
        self.ratio = _check_ratio(ratio)
        self.fill = _check_fill(fill, released)
        self.released = released
        self.p = _check_p(p)
        self.max_attempts = _check_max_attempts(max_attempts)
        self.size = _check_size(size)
        self.position = _check_position(position)
        if not _is_number(inpaint_radius) or inpaint_radius <= 0:
            raise ArgumentError(f"inpaint_radius must be a positive number, got {inpaint_radius!r}")
        self.inpaint_radius = float(inpaint_radius)
        self.generator = _check_generator(generator)
        if self.generator is not None and self.generator.device.type != "cpu":
            raise ArgumentError("RandomErasing draws on the CPU; pass a CPU torch.Generator "
                                "(BatchRandomErasing accepts device generators)")

    def _u(self, lo: float, hi: float) -> float:
        if lo == hi:
            return lo
        return float(torch.empty(1).uniform_(lo, hi, generator=self.generator).item())

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Draw one region ``(top, left, h, w)`` for a ``height x width`` image, or None (not erased)."""
        strict = self.max_attempts is not None
        if self.size is None and not strict:
            _check_fits(height, width, self.lower, self.ratio, None, strict=False)
        if self.p < 1.0 and float(torch.rand(1, generator=self.generator).item()) >= self.p:
            return None
        hw = height * width
        lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        attempt = 0
        while True:
            attempt += 1
            if self.position == "any":   # sec. 2.2: starting point first, anywhere in the image
                top = int(torch.randint(0, height, (1,), generator=self.generator).item())
                left = int(torch.randint(0, width, (1,), generator=self.generator).item())
            if self.size is not None:
                _check_fits(height, width, self.lower, self.ratio, self.size, strict)
                h, w = self.size
            else:
                s = self._u(self.lower, self.area) * hw
                r = math.exp(self._u(lr0, lr1))
                h, w = int(round(math.sqrt(s * r))), int(round(math.sqrt(s / r)))
            ok = (h < height and w < width) if strict else (h <= height and w <= width)
            if ok and self.position == "any":
                if top + h <= height and left + w <= width:
                    return top, left, h, w
            elif ok:
                top = int(torch.randint(0, height - h + 1, (1,), generator=self.generator).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=self.generator).item())
                return top, left, h, w
            if strict and attempt >= self.max_attempts:
                return None
            if not strict and attempt >= _MAX_ROUNDS:
                raise ArgumentError(f"the erasing region almost never fits a {height}x{width} image; "
                                    "lower the area or widen the ratio")

    def forward(self, img: torch.Tensor, *passthrough: Any) -> Any:
        """Erase ``img``; extra inputs (e.g. the label in a torchvision.transforms.v2 pipeline) pass through."""
        if passthrough:
            return (self.forward(img), *passthrough)
        _check_images(img, 3, type(self).__name__)
        box = self.sample_box(img.shape[-2], img.shape[-1])
        if box is None:
            return img
        top, left, h, w = box
        mask = torch.zeros(img.shape[-2:], dtype=torch.bool, device=img.device)
        mask[top:top + h, left:left + w] = True
        return apply_fill(img.unsqueeze(0), mask.unsqueeze(0), self.fill, released=self.released,
                          generator=self.generator if img.device.type == "cpu" else None,
                          inpaint_radius=self.inpaint_radius)[0]

    def extra_repr(self) -> str:
        parts = [f"area={self.area}", f"lower={self.lower}", f"ratio={self.ratio}", f"fill={_fill_repr(self.fill)}"]
        if self.released:
            parts.append("released=True")
        if self.p != 1.0:
            parts.append(f"p={self.p}")
        if self.max_attempts is not None:
            parts.append(f"max_attempts={self.max_attempts}")
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.position != "valid":
            parts.append(f"position={self.position!r}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------- batched
class BatchEraser(nn.Module):
    """Base of the batched erasers: ``forward(x, y=None, idx=None)`` on a (B, C, H, W) float batch.

    ``sample_mask(x, y, idx)`` returns the (B, H, W) boolean mask of the pixels to erase;
    ``set_epoch(e)`` tells epoch-keyed erasers the epoch (no-op otherwise).
    """

    needs_index = False     # needs the dataset indices of the batch
    needs_targets = False   # needs the labels of the whole training set (set_targets)

    def __init__(self, fill: Fill = "mean", released: bool = False, inpaint_radius: float = 3.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.fill = _check_fill(fill, released)
        self.released = released
        if not _is_number(inpaint_radius) or inpaint_radius <= 0:
            raise ArgumentError(f"inpaint_radius must be a positive number, got {inpaint_radius!r}")
        self.inpaint_radius = float(inpaint_radius)
        self.generator = _check_generator(generator)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> BatchEraser:
        self.epoch = int(epoch)
        return self

    def sample_mask(self, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _gen(self, generator: torch.Generator | None) -> torch.Generator | None:
        return _check_generator(generator) if generator is not None else self.generator

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None,
                *, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, 4, type(self).__name__)
        gen = self._gen(generator)
        mask = self.sample_mask(x, y, idx, generator=gen)
        return apply_fill(x, mask, self.fill, released=self.released, generator=gen,
                          inpaint_radius=self.inpaint_radius)

    def _fill_repr(self) -> str:
        return f"fill={_fill_repr(self.fill)}" + (", released=True" if self.released else "")


class BatchRandomErasing(BatchEraser):
    """MIDRE's eraser for a (B, C, H, W) batch: an independent region per image, on the batch's device.

    Same distribution and arguments as :class:`RandomErasing`; no Python loop over the batch.
    ``forward(x, return_boxes=True)`` also returns the sampled :class:`Boxes`.
    """

    def __init__(self, area: float = 0.4, lower: float = 0.1, fill: Fill = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), released: bool = False, p: float = 1.0,
                 max_attempts: int | None = None, size: int | tuple[int, int] | None = None,
                 inpaint_radius: float = 3.0, generator: torch.Generator | None = None,
                 position: str = "valid"):
        super().__init__(fill, released, inpaint_radius, generator)
        self.area, self.lower = _check_bounds(area, lower)
        self.ratio = _check_ratio(ratio)
        self.p = _check_p(p)
        self.max_attempts = _check_max_attempts(max_attempts)
        self.size = _check_size(size)
        self.position = _check_position(position)

    def sample_boxes(self, n: int, height: int, width: int, device: str | torch.device | None = None,
                     generator: torch.Generator | None = None) -> Boxes:
        return sample_boxes(n, height, width, area=self.area, lower=self.lower, ratio=self.ratio, size=self.size,
                            p=self.p, max_attempts=self.max_attempts, position=self.position,
                            generator=self._gen(generator), device=device)

    def sample_mask(self, x, y=None, idx=None, generator=None):
        b = self.sample_boxes(x.shape[0], x.shape[-2], x.shape[-1], x.device, generator)
        return boxes_to_mask(b, x.shape[-2], x.shape[-1])

    def forward(self, x, y=None, idx=None, *, generator=None, return_boxes: bool = False):
        _check_images(x, 4, type(self).__name__)
        gen = self._gen(generator)
        boxes = self.sample_boxes(x.shape[0], x.shape[-2], x.shape[-1], x.device, gen)
        out = apply_fill(x, boxes_to_mask(boxes, x.shape[-2], x.shape[-1]), self.fill, released=self.released,
                         generator=gen, inpaint_radius=self.inpaint_radius)
        return (out, boxes) if return_boxes else out

    def single(self) -> RandomErasing:
        """The per-image form with the same arguments (CPU global RNG)."""
        return RandomErasing(self.area, self.lower, fill_param(self.fill), self.ratio, self.released, self.p,
                             self.max_attempts, self.size, self.inpaint_radius, position=self.position)

    def extra_repr(self) -> str:
        parts = [f"area={self.area}", f"lower={self.lower}", f"ratio={self.ratio}", self._fill_repr()]
        if self.p != 1.0:
            parts.append(f"p={self.p}")
        if self.max_attempts is not None:
            parts.append(f"max_attempts={self.max_attempts}")
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.position != "valid":
            parts.append(f"position={self.position!r}")
        return ", ".join(parts)


def _as_index(idx: Any, n: int, who: str) -> torch.Tensor:
    if idx is None:
        raise ArgumentError(f"{who} needs the dataset indices of the batch (forward(x, y, idx)); "
                            "the midre trainer passes them, elsewhere pass torch.arange or the loader's indices")
    idx = torch.as_tensor(idx).detach().to("cpu")
    if idx.dim() != 1 or idx.numel() != n or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ArgumentError(f"{who}: idx must be {n} integer dataset indices, got shape {tuple(idx.shape)} dtype {idx.dtype}")
    if idx.numel() and int(idx.min()) < 0:
        raise ArgumentError(f"{who}: dataset indices must be >= 0")
    return idx.long()


class FixedErasing(BatchEraser):
    """Fixed Erasing (FE, paper sec. 3.3): one region per training image, the same for all epochs.

    The region of image ``i`` is drawn from MIDRE's distribution with a generator keyed by
    ``(seed, i)`` (in chunks of indices), so it depends only on the seed and the dataset index, never on
    the batch composition or the epoch; different images get independent regions.  The region is
    fixed in the frame the eraser sees: under the trainer's random horizontal flip (applied before
    ``transform_batch``) it is mirrored with the image half the time; train with ``hflip=False`` for a
    region fixed on the image content.
    """

    needs_index = True
    _CHUNK = 4096

    def __init__(self, area: float = 0.4, lower: float = 0.1, fill: Fill = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), released: bool = False, seed: int = 0,
                 inpaint_radius: float = 3.0):
        super().__init__(fill, released, inpaint_radius, None)
        self.area, self.lower = _check_bounds(area, lower)
        self.ratio = _check_ratio(ratio)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ArgumentError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self._tables: dict[tuple[int, int], list[Boxes]] = {}
        self._joined: dict[tuple[int, int], tuple[int, list[torch.Tensor]]] = {}

    def boxes_for(self, idx: Any, height: int, width: int) -> Boxes:
        """The fixed regions of the images with dataset indices ``idx`` (CPU tensors)."""
        idx = _as_index(idx, len(torch.as_tensor(idx).reshape(-1)), type(self).__name__)
        chunks = self._tables.setdefault((height, width), [])
        need = int(idx.max()) // self._CHUNK + 1 if idx.numel() else 0
        while len(chunks) < need:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "fixed_erasing", height, width, len(chunks)))
            chunks.append(sample_boxes(self._CHUNK, height, width, area=self.area, lower=self.lower,
                                       ratio=self.ratio, generator=g))
        if not chunks:
            e = torch.zeros(0, dtype=torch.long)
            return Boxes(e, e, e, e)
        joined = self._joined.get((height, width))
        if joined is None or joined[0] != len(chunks):
            joined = (len(chunks), [torch.cat([c[k] for c in chunks]) for k in range(4)])
            self._joined[(height, width)] = joined
        return Boxes(*(t[idx] for t in joined[1]))

    def sample_mask(self, x, y=None, idx=None, generator=None):
        idx = _as_index(idx, x.shape[0], type(self).__name__)
        b = self.boxes_for(idx, x.shape[-2], x.shape[-1])
        b = Boxes(*(t.to(x.device) for t in b))
        return boxes_to_mask(b, x.shape[-2], x.shape[-1])

    def extra_repr(self) -> str:
        return f"area={self.area}, lower={self.lower}, ratio={self.ratio}, {self._fill_repr()}, seed={self.seed}"


class EntireErasing(BatchEraser):
    """Entire Erasing (EE, paper sec. 3.3): erase WHOLE images, exactly ``share`` of each identity per epoch.

    Spends the pixel-concealment budget of partial erasure on whole images.  Call
    ``set_targets(labels of the whole training set)`` once and ``set_epoch(e)`` every epoch; for each
    identity with n images, ``floor(share * n + 0.5)`` of them (a fresh random choice per epoch keyed by
    ``(seed, epoch)``) are replaced by the fill in that epoch.  ``forward(x, y, idx)`` needs dataset indices.
    """

    needs_index = True
    needs_targets = True

    def __init__(self, share: float = 0.4, fill: Fill = "mean", released: bool = False, seed: int = 0):
        super().__init__(fill, released, 3.0, None)
        if self.fill == "inpaint":
            raise ArgumentError("Entire Erasing replaces whole images: nothing is left to inpaint from; "
                                "use a constant fill or 'random'")
        self.share = _check_share(share, "share", "it is the share of each identity's images erased per epoch, e.g. 0.4")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ArgumentError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.targets: torch.Tensor | None = None
        self._plan: tuple[int, torch.Tensor] | None = None

    def set_targets(self, targets: Any) -> EntireErasing:
        t = torch.as_tensor(targets).detach().to("cpu").reshape(-1)
        if t.is_floating_point() or t.numel() == 0:
            raise ArgumentError("EntireErasing.set_targets needs the integer labels of the whole training set")
        self.targets = t.long()
        self._plan = None
        return self

    def selection(self, epoch: int | None = None) -> torch.Tensor:
        """Boolean (N,) plan: which training images are erased in ``epoch`` (default: the current one)."""
        if self.targets is None:
            raise ArgumentError("EntireErasing needs the training labels first: call set_targets(train_set.targets) "
                                "(the entire_erasing defense does it in prepare)")
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        t = self.targets
        n = t.numel()
        g = torch.Generator().manual_seed(derive_seed(self.seed, "entire_erasing", epoch))
        perm = torch.randperm(n, generator=g)
        order = perm[torch.sort(t[perm], stable=True).indices]      # grouped by label, random inside a label
        labels_sorted = t[order]
        _, counts = torch.unique_consecutive(labels_sorted, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n) - torch.repeat_interleave(starts, counts)
        quota = torch.floor(counts.double() * self.share + 0.5).long()
        chosen = rank < torch.repeat_interleave(quota, counts)
        plan = torch.zeros(n, dtype=torch.bool)
        plan[order] = chosen
        self._plan = (epoch, plan)
        return plan

    def sample_mask(self, x, y=None, idx=None, generator=None):
        idx = _as_index(idx, x.shape[0], type(self).__name__)
        plan = self.selection()
        if idx.numel() and int(idx.max()) >= plan.numel():
            raise ArgumentError(f"EntireErasing: dataset index {int(idx.max())} is out of range for the "
                                f"{plan.numel()} training labels given to set_targets")
        if y is not None and not y.is_floating_point() and y.shape == idx.shape:
            if not torch.equal(y.detach().cpu().long(), self.targets[idx]):
                raise ArgumentError("EntireErasing: the batch labels do not match the labels given to set_targets "
                                    "at these indices; pass the training set's own dataset indices")
        sel = plan[idx].to(x.device)
        return sel.view(-1, 1, 1).expand(x.shape[0], x.shape[-2], x.shape[-1])

    def extra_repr(self) -> str:
        return f"share={self.share}, {self._fill_repr()}, seed={self.seed}"


class RandomPixelMasking(BatchEraser):
    """Mask a fraction of the pixels of every image (paper D.1; 10 %-60 %), default with U(0, 1) values.

    Exactly ``round(fraction * H * W)`` pixel positions (all channels) per image, chosen uniformly
    without replacement and anew on every call; ``fraction`` may be a (min, max) range sampled per image.
    """

    def __init__(self, fraction: float | Sequence[float] = 0.4, fill: Fill = "random", released: bool = False,
                 inpaint_radius: float = 3.0, generator: torch.Generator | None = None):
        super().__init__(fill, released, inpaint_radius, generator)
        hint = "the paper uses 0.1 to 0.6"
        if _is_number(fraction):
            self.fraction: tuple[float, float] = (_check_share(fraction, "fraction", hint),) * 2
        else:
            try:
                lo, hi = fraction  # type: ignore[misc]
            except (TypeError, ValueError):
                raise ArgumentError(f"fraction must be a number or a (min, max) pair in (0, 1), got {fraction!r}") from None
            lo, hi = _check_share(lo, "fraction", hint), _check_share(hi, "fraction", hint)
            if lo > hi:
                raise ArgumentError(f"fraction range must be ordered (min <= max), got ({lo}, {hi})")
            self.fraction = (lo, hi)

    def sample_mask(self, x, y=None, idx=None, generator=None):
        b, hw = x.shape[0], x.shape[-2] * x.shape[-1]
        gen = self._gen(generator)
        dev = gen.device if gen is not None else x.device
        frac = _rand(b, self.fraction[0], self.fraction[1], gen, dev)
        k = torch.round(frac * hw).long().clamp(1, hw)
        keys = torch.rand(b, hw, generator=gen, device=dev)
        thr = keys.sort(dim=1).values.gather(1, (k - 1).view(-1, 1))
        return (keys <= thr).view(b, x.shape[-2], x.shape[-1]).to(x.device)

    def extra_repr(self) -> str:
        f = self.fraction[0] if self.fraction[0] == self.fraction[1] else self.fraction
        return f"fraction={f}, {self._fill_repr()}"


class MultiPatchErasing(BatchEraser):
    """n smaller squares per image whose areas sum to one MIDRE square (paper D.1: 4P and 8P).

    Per image ``s ~ U(lower, area)``; each of the ``patches`` regions has area share ``s / patches`` (own
    aspect ratio, independent uniform position, overlaps allowed); re-drawn until all fit.
    """

    def __init__(self, patches: int = 4, area: float = 0.4, lower: float = 0.1, fill: Fill = "mean",
                 ratio: Sequence[float] = (1.0, 1.0), released: bool = False, inpaint_radius: float = 3.0,
                 generator: torch.Generator | None = None):
        super().__init__(fill, released, inpaint_radius, generator)
        if not isinstance(patches, int) or isinstance(patches, bool) or patches < 1:
            raise ArgumentError(f"patches must be a positive int (the paper uses 4 or 8), got {patches!r}")
        self.patches = patches
        self.area, self.lower = _check_bounds(area, lower)
        self.ratio = _check_ratio(ratio)

    def sample_boxes(self, n: int, height: int, width: int, device: str | torch.device | None = None,
                     generator: torch.Generator | None = None) -> Boxes:
        """Boxes with tensors of shape (n, patches)."""
        gen = self._gen(generator)
        out_dev = torch.device(device) if device is not None else (gen.device if gen is not None else torch.device("cpu"))
        dev = gen.device if gen is not None else out_dev
        _check_fits(height, width, self.lower / self.patches, self.ratio, None, strict=False)
        h, w = _draw_sizes((n,), height, width, self.lower, self.area, self.ratio, False, None, gen, dev,
                           parts=self.patches)
        top = _uniform_int(height - h + 1, gen, dev)
        left = _uniform_int(width - w + 1, gen, dev)
        return Boxes(top.to(out_dev), left.to(out_dev), h.to(out_dev), w.to(out_dev))

    def sample_mask(self, x, y=None, idx=None, generator=None):
        b = self.sample_boxes(x.shape[0], x.shape[-2], x.shape[-1], x.device, generator)
        return boxes_to_mask(b, x.shape[-2], x.shape[-1])

    def extra_repr(self) -> str:
        return f"patches={self.patches}, area={self.area}, lower={self.lower}, ratio={self.ratio}, {self._fill_repr()}"


# ----------------------------------------------------------------------------------------- registry
ERASERS: Registry[type] = Registry("eraser")
ERASERS.register("random")(BatchRandomErasing)
ERASERS.register("fixed")(FixedErasing)
ERASERS.register("entire")(EntireErasing)
ERASERS.register("random_pixels")(RandomPixelMasking)
ERASERS.register("multi_patch")(MultiPatchErasing)


def build_eraser(name: str, **kwargs: Any) -> BatchEraser:
    """Build a batched eraser by name ('random', 'fixed', 'entire', 'random_pixels', 'multi_patch')."""
    cls = ERASERS.get(name)
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = [k for k in kwargs if k not in allowed]
    if bad:
        raise ArgumentError(f"eraser '{name}' has no argument '{bad[0]}'{did_you_mean(bad[0], allowed)}; "
                            f"its arguments are: {', '.join(allowed)}")
    return cls(**kwargs)
