"""Masked private images: the extra input of an attack that declares ``needs_masked_private`` (SecretGen).

Such an attacker holds, for each attacked identity, copies of that identity's private training images
with a region (the *hole*) removed, and fills the hole.  :func:`mask_private` is the only place that reads
those private images: it zeroes the hole's pixels as it copies them, and :class:`MaskedPrivate` refuses any
image with a non-zero pixel in the hole, so the hole's true pixels never reach the attack.  The pipeline
(midre.stages.attacks) and ``midre attack`` build it with :func:`give_masked_private`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArgumentError, DataError


@dataclass(frozen=True)
class MaskedPrivate:
    """Private training images of the attacked identities with the hole zeroed.

    Attributes
    ----------
    images : (N, C, H, W) float in [0, 1], zero inside the hole
    identity : (N,) long, the class of each image
    mask : (1, 1, H, W) float, 1 inside the hole
    """

    images: torch.Tensor
    identity: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.identity.shape != (self.images.shape[0],):
            raise ValueError("MaskedPrivate needs (N, C, H, W) images and N identities")
        if bool((self.images * self.mask).abs().amax() > 0) if len(self.images) else False:
            raise ValueError("MaskedPrivate images must carry no pixel inside the hole")

    def take(self, ids: torch.Tensor, repeat: int) -> torch.Tensor:
        """One masked image per identity in ``ids``: its ``repeat``-th (modulo its count) private image."""
        out = []
        for y in ids.tolist():
            rows = (self.identity == y).nonzero().flatten()
            if len(rows) == 0:
                raise ArgumentError(f"no masked private image of identity {y}; attack identities the private "
                                    "training split has images of")
            out.append(self.images[rows[repeat % len(rows)]])
        return torch.stack(out).to(ids.device)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.float().contiguous().numpy().tobytes())
        h.update(self.identity.long().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def mask_private(private_train: Any, identities: Sequence[int], mask: torch.Tensor) -> MaskedPrivate:
    """The private training images of ``identities`` with the hole (``mask`` == 1) zeroed on the way in."""
    ts = private_train.to_tensors()
    if ts.images.shape[-1] != mask.shape[-1]:
        raise DataError(f"the private images are {ts.images.shape[-1]} px but the hole mask is {mask.shape[-1]} px")
    keep = torch.isin(ts.targets.long(), torch.tensor(sorted({int(i) for i in identities}), dtype=torch.long))
    keep_mask = (1 - mask).to(torch.float32)
    images = torch.cat([ts.images[keep][i:i + 512].float().div(255.0) * keep_mask
                        for i in range(0, int(keep.sum()), 512)]) if keep.any() else torch.zeros(0, *ts.images.shape[1:])
    return MaskedPrivate(images, ts.targets[keep].long(), mask.float())


def give_masked_private(attack: Any, priors: Any, private_train: Any, identities: Sequence[int]) -> None:
    """Hand an attack that declares ``needs_masked_private`` its masked private images (no-op otherwise)."""
    if not getattr(attack, "needs_masked_private", False):
        return
    if private_train is None:
        raise DataError(f"attack '{attack.name}' needs the target's private training images (masked); the target's "
                        "dataset could not be loaded")
    ts = private_train.to_tensors()
    attack.masked_private = mask_private(ts, identities, attack.hole_mask(priors, int(ts.images.shape[-1])))


# ---------------------------------------------------------------- the hole (SecretGen's masks)
def hole_mask(kind: str, resolution: int) -> torch.Tensor:
    """The reference's fixed hole as a (1, 1, R, R) 0/1 mask: ``center`` = the centre square of half the
    side; ``face`` = the eyes band (rows 25-40, columns 10-52 at 64 px) + the nose/mouth box (rows 40-63,
    columns 26-38), scaled to R."""
    m = torch.zeros(1, 1, resolution, resolution)
    s = resolution / 64.0
    if kind == "center":
        lo, hi = int(resolution * 0.25), int(resolution * 0.75)
        m[..., lo:hi, lo:hi] = 1
    elif kind == "face":
        for (r0, r1), (c0, c1) in (((25, 40), (10, 52)), ((40, 63), (26, 38))):
            m[..., round(r0 * s):round(r1 * s), round(c0 * s):round(c1 * s)] = 1
    else:
        raise ValueError(f"unknown SecretGen mask '{kind}' (center or face)")
    return m


def random_square(resolution: int, gen: torch.Generator) -> tuple[int, int, int]:
    """(top, left, side) of a square of half the side at a uniform position (the local critic's crop)."""
    side = resolution // 2
    top, left = (int(v) for v in torch.randint(resolution - side + 1, (2,), generator=gen))
    return top, left, side


def fill(x_masked: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Keep the known pixels, take the generator's output in the hole: ``x (1 - m) + out m``."""
    return x_masked * (1 - mask) + out * mask
