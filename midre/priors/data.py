"""Public images for priors: fingerprints and summaries (cache keys, zoo matching), the public-only guard,
and :class:`PublicImages`, the seeded sampler every prior kind trains from."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import DataError

SUMMARY_GRID = 8          # data_summary: the mean image pooled to 8 x 8 per channel


def data_fingerprint(imageset: Any) -> str:
    """sha256 of an image set's uint8 pixels and labels (identifies the data a prior was trained on)."""
    ts = imageset.to_tensors()
    h = hashlib.sha256()
    h.update(str(tuple(ts.images.shape)).encode())
    h.update(ts.images.contiguous().numpy().tobytes())
    h.update(ts.targets.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def data_summary(imageset: Any) -> dict[str, Any]:
    """A float-rounding-tolerant description of an image set, for matching zoo entries across machines.

    Rendering the same synthetic faces on another CPU (other SIMD kernels) flips a handful of pixels by one
    level, which changes :func:`data_fingerprint`.  The summary -- image count and shape, a hash of the
    labels, per-channel mean and std, and the mean image pooled to 8 x 8 -- moved by at most 2e-7 under
    such flips (quickstart's sets), against 1e-5 allowed by :func:`midre.zoo.summaries_match`; replacing
    one image of the pretraining pool (13,500-15,000 images) moves it by 4e-5 to 5e-5."""
    ts = imageset.to_tensors()
    n, c, h, w = ts.images.shape
    total = torch.zeros(c, h, w, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, 256):
        x = ts.images[i:i + 256].to(torch.float64).div_(255.0)
        total += x.sum(0)
        sq += x.pow(2).sum((0, 2, 3))
    mean_img = total / max(n, 1)
    mean = mean_img.mean((1, 2))
    std = (sq / max(n * h * w, 1) - mean.pow(2)).clamp_min(0).sqrt()
    grid = torch.nn.functional.adaptive_avg_pool2d(mean_img[None], SUMMARY_GRID)[0]
    labels = hashlib.sha256(ts.targets.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"n": int(n), "shape": [int(c), int(h), int(w)], "labels": labels,
            "mean": [round(float(v), 7) for v in mean], "std": [round(float(v), 7) for v in std],
            "grid": [round(float(v), 7) for v in grid.flatten()]}


def _image_hashes(imageset: Any) -> set[bytes]:
    ts = imageset.to_tensors()
    flat = ts.images.reshape(len(ts.images), -1).contiguous().numpy()
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat}


def assert_public_only(public_set: Any, *private_sets: Any) -> None:
    """Raise DataError if any image of the prior's data also appears in a private split.

    A prior must only ever see public data (the pitfall of training the GAN on the private set).
    No public data (a run whose only prior is a converted, pretrained generator) has nothing to check.
    """
    if public_set is None:
        return
    pub = _image_hashes(public_set)
    for ps in private_sets:
        if ps is None:
            continue
        n = len(pub & _image_hashes(ps))
        if n:
            raise DataError(f"the public data for the prior shares {n} image(s) with the private data; "
                            "priors must be trained on public identities only: choose another --public")


class PublicImages:
    """Public images on the device, sampled with an explicit generator (random index + hflip); ``targets``
    keeps their labels on the CPU (the public identities, for kinds that train on them: c2fmi)."""

    def __init__(self, public_set: Any, device: torch.device, hflip: bool):
        ts = public_set.to_tensors()
        self.images = ts.images.to(device)
        self.targets = getattr(ts, "targets", None)   # None: an unlabelled public set
        self.n = len(ts.images)
        self.hflip = hflip
        self.device = device

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def sample(self, bs: int, gen: torch.Generator,
               pool: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random batch; returns (images, positions) where positions index ``pool`` when given."""
        if pool is None:
            pos = idx = torch.randint(self.n, (bs,), generator=gen)
        else:
            pos = torch.randint(len(pool), (bs,), generator=gen)
            idx = pool[pos]
        x = self.images[idx.to(self.device)].float().div_(255.0)
        if self.hflip:
            flip = (torch.rand(bs, generator=gen) < 0.5).to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, pos

    def all_batches(self, bs: int) -> Iterator[torch.Tensor]:
        for i in range(0, self.n, bs):
            yield self.images[i:i + bs].float().div_(255.0)
