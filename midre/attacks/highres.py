"""Pieces shared by the StyleGAN attacks (PPA, IF-GMI, MIRROR) and the black-box latent-space attacks.

Not an attack itself (nothing is registered here):

* :class:`StyleGANView`: the generator calls the attacks make (mapping with truncation, synthesis with
  constant noise, block-wise synthesis for IF-GMI), images mapped from [-1, 1] to midre's [0, 1];
* :func:`to_target_view`: centre crop (a fraction of the side, PPA: 800 of 1024) + antialiased resize to
  the target's input resolution;
* :func:`random_resized_crop`: differentiable RandomResizedCrop (+ flip) with per-image parameters drawn
  from an explicit generator;
* :func:`poincare_loss`, :func:`project_l1_ball`, :func:`top_per_class`;
* :func:`paper_preset`: the PPA / IF-GMI preset of the reference config for a dataset;
* :class:`Ticker`: spreads progress ticks evenly when the work of one batch is split into chunks.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError


# ============================================================================ generator view
class StyleGANView:
    """The calls PPA / IF-GMI / MIRROR make on a StyleGAN2 generator (midre.models.stylegan2).

    ``G.mapping(z, c, truncation_psi, truncation_cutoff) -> ws (B, num_ws, w_dim)``,
    ``G.synthesis(ws, noise_mode="const") -> images in [-1, 1]``; block-wise synthesis through
    ``G.synthesis(ws, features=(x, img), start_block=i, end_block=j, return_features=True)`` where
    ``(x, img)`` is the state leaving block i - 1 (hidden feature map, RGB skip image).
    """

    def __init__(self, G: torch.nn.Module):
        for a in ("mapping", "synthesis", "z_dim", "w_dim", "num_ws"):
            if not hasattr(G, a):
                raise ArgumentError(f"the 'stylegan2' prior's generator lacks '{a}'; give a midre StyleGAN2 "
                                    "generator (midre convert stylegan2 / the stylegan2 prior)")
        self.G = G
        self.z_dim, self.w_dim, self.num_ws = int(G.z_dim), int(G.w_dim), int(G.num_ws)

    @property
    def num_blocks(self) -> int:
        return int(self.G.synthesis.num_blocks)

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def map(self, z: torch.Tensor, psi: float, cutoff: int) -> torch.Tensor:
        return self.G.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff or None)

    def expand(self, w: torch.Tensor) -> torch.Tensor:
        """(B, 1, w_dim) single w -> (B, num_ws, w_dim); (B, num_ws, w_dim) unchanged."""
        return w.expand(-1, self.num_ws, -1) if w.shape[1] == 1 else w

    def truncate(self, w: torch.Tensor, psi: float, cutoff: int) -> torch.Tensor:
        """Raw single w (n, w_dim) -> ws (n, num_ws, w_dim), the layers below ``cutoff`` (all when 0) moved
        towards the mapping's w_avg by ``psi`` (MIRROR truncates only when generating)."""
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if psi == 1:
            return ws
        n = int(cutoff) or self.num_ws
        head = self.G.mapping.w_avg.to(w.dtype).lerp(ws[:, :n], psi)
        return torch.cat([head, ws[:, n:]], dim=1)

    def images(self, w: torch.Tensor) -> torch.Tensor:
        """w (single or per layer) -> images in [0, 1] scale, NOT clamped (gradients reach every pixel)."""
        return (self.G.synthesis(self.expand(w), noise_mode="const") + 1) / 2

    def features(self, w: torch.Tensor, features: Any, start: int, end: int) -> Any:
        """Run blocks ``start`` .. ``end - 1`` from ``features`` (None at block 0): the feature state
        leaving block ``end - 1``."""
        return self.G.synthesis(self.expand(w), features=features, start_block=start, end_block=end,
                                return_features=True, noise_mode="const")

    def images_from(self, w: torch.Tensor, features: Any, start: int) -> torch.Tensor:
        """Finish the synthesis from the feature state entering block ``start``; [0, 1] scale, unclamped."""
        out = self.G.synthesis(self.expand(w), features=features, start_block=start, end_block=None,
                               noise_mode="const")
        return (out + 1) / 2

    def sample_w(self, n: int, gen: torch.Generator, psi: float, cutoff: int, single: bool,
                 batch: int = 256) -> torch.Tensor:
        """n latents z ~ N(0, I) from ``gen`` mapped to w with truncation; (n, 1, w_dim) when ``single``
        (PPA's single_w: the first layer's w), else (n, num_ws, w_dim)."""
        z = torch.randn(n, self.z_dim, generator=gen)
        out = []
        with torch.no_grad():
            for i in range(0, n, batch):
                ws = self.map(z[i:i + batch].to(self.device), psi, cutoff)
                out.append(ws[:, :1] if single else ws)
        return torch.cat(out)


def stylegan_view(prior: Mapping[str, Any]) -> StyleGANView:
    p = prior["stylegan2"]
    return StyleGANView(p.generator if hasattr(p, "generator") else p)


# ============================================================================ image views
def to_target_view(x: torch.Tensor, resolution: int, crop: float = 1.0) -> torch.Tensor:
    """Centre crop ``crop`` of the side (PPA: 800/1024) then antialiased bilinear resize to ``resolution``."""
    s = x.shape[-1]
    c = max(1, int(round(s * crop)))
    if c < s:
        o = (s - c) // 2
        x = x[..., o:o + c, o:o + c]
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > resolution)
    return x


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (1.0, 1.0), flip: bool = False) -> torch.Tensor:
    """RandomResizedCrop to the input size (+ horizontal flip with p 0.5), parameters per image.

    Area fraction s ~ U(scale), log aspect ratio ~ U(log ratio); the crop side fractions are sqrt(s r),
    sqrt(s / r) (capped at 1), the crop lies inside the image; bilinear, differentiable in ``x``.
    """
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 5, generator=gen)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = lr.exp()
    cw, ch = (s * r).sqrt().clamp(max=1.0), (s / r).sqrt().clamp(max=1.0)
    tx, ty = (2 * u[:, 2] - 1) * (1 - cw), (2 * u[:, 3] - 1) * (1 - ch)
    sx = torch.where(u[:, 4] < 0.5, -cw, cw) if flip else cw
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, ch, ty], 1)], 1).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ============================================================================ losses / projections
def poincare_loss(logits: torch.Tensor, y: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """Per-sample Poincaré distance (PPA) between u = logits / ||logits||_1 and v = clip(onehot - delta, 0, 1):
    arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2)(1 - ||v||^2)))."""
    u = logits / logits.norm(p=1, dim=1, keepdim=True)
    v = (F.one_hot(y, logits.shape[1]).to(logits.dtype) - delta).clamp(0, 1)
    num = (u - v).pow(2).sum(1)
    den = (1 - u.pow(2).sum(1)) * (1 - v.pow(2).sum(1))
    return torch.acosh(1 + 2 * num / den)


def project_l1_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each sample (first dim) onto the L1 ball of ``radius`` (Duchi et al. 2008)."""
    flat = x.reshape(x.shape[0], -1)
    inside = flat.abs().sum(1) <= radius
    if bool(inside.all()):
        return x
    mu = flat.abs().sort(dim=1, descending=True).values
    cums = mu.cumsum(1)
    k = torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=x.dtype)
    rho = ((mu * k) > (cums - radius)).to(x.dtype).mul(k).argmax(1)           # last index where it holds
    theta = (cums.gather(1, rho[:, None]).squeeze(1) - radius) / (rho + 1).to(x.dtype)
    proj = (flat.abs() - theta[:, None]).clamp_min(0) * flat.sign()
    return torch.where(inside[:, None], flat, proj).reshape(x.shape)


def top_per_class(scores: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """(pool, K) scores -> (len(ids), k) indices of each class's k best pool entries (distinct per class)."""
    if k > scores.shape[0]:
        raise ArgumentError(f"{k} candidates per identity need a pool of at least {k} latents, got {scores.shape[0]}")
    return scores[:, ids.to(scores.device)].T.topk(k, dim=1).indices


def target_resolution(params: Mapping[str, Any], access: Any, prior: Any, fallback: int) -> int:
    """The resolution the target reads: the ``target_resolution`` parameter, else the target's
    ``input_resolution`` (models / oracles that resize), else the prior's recorded target resolution,
    else ``fallback`` (the generator's output size)."""
    r = int(params.get("target_resolution") or 0)
    if r:
        return r
    try:
        r = getattr(access, "input_resolution", None) if not hasattr(access, "resolution") else access.resolution
    except Exception:   # noqa: BLE001 - an oracle refuses unknown attributes
        r = None
    if r:
        return int(r)
    meta = getattr(prior, "meta", {}) or {}
    return int(meta.get("target_resolution") or meta.get("resolution") or fallback)


# ============================================================================ progress
class Ticker:
    """Call ``tick`` ``total`` times while ``steps`` units of work are done (steps may exceed total)."""

    def __init__(self, tick: Callable[[], None], total: int, steps: int):
        self.tick, self.total, self.steps, self.done, self.sent = tick, total, max(1, steps), 0, 0

    def step(self) -> None:
        self.done += 1
        due = min(self.total, (self.done * self.total) // self.steps)
        while self.sent < due:
            self.sent += 1
            self.tick()


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([fn(x[s]) for s in chunks(len(x), size)])


PAPER_PRESETS = {"facescrub": "paper-facescrub", "celeba": "paper-celeba", "stanford_dogs": "paper-dogs"}


def paper_preset(dataset: str) -> str:
    """The PPA / IF-GMI preset of the reference's config for ``dataset`` (FaceScrub's for any other)."""
    return PAPER_PRESETS.get(str(dataset), "paper-facescrub")


def resolve_preset(attack: str, preset: str | None, dataset: str) -> str | None:
    """A run config's preset for ``attack``: plain ``paper`` on PPA / IF-GMI means the reference config of the
    attacked ``dataset``; anything else is kept as given."""
    if preset == "paper" and attack in ("ppa", "ifgmi"):
        return paper_preset(dataset)
    return preset


def check_fraction(attack: str, params: Mapping[str, Any], *names: str) -> None:
    for name in names:
        v = params[name]
        if not 0 < v <= 1:
            raise ArgumentError(f"attack '{attack}': '{name}' must be in (0, 1], got {v}")
