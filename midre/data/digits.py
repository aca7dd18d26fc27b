"""``digits``: scikit-learn's handwritten digits (real data, shipped with scikit-learn, offline).

The MNIST protocol of the GMI paper: digits 0-4 are the private classes, digits 5-9 the public ones.
The 8x8 images (values 0-16) are scaled to [0, 1], resized bilinearly to the resolution (default 32),
and replicated to 3 channels.  The private images are split train / test per class (stratified),
deterministically from the seed.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError, DataError
from ..utils import derive_seed, parse_id_ranges
from .base import DATASETS, MISplits, TensorImageSet

_OPTIONS = {"test_fraction": 0.2, "private_classes": "0-4"}


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int, key: str) -> torch.Tensor:
    """Boolean mask of test items: ``round(n * test_fraction)`` items of every class (at least 1 and at most
    n - 1 when a class has 2+ items), chosen with a generator seeded from ``(seed, key, class)``."""
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        n = len(idx)
        if n < 2:
            continue
        n_test = min(max(1, int(round(n * test_fraction))), n - 1)
        g = torch.Generator().manual_seed(derive_seed(seed, "split", key, c))
        is_test[idx[torch.randperm(n, generator=g)[:n_test]]] = True
    return is_test


def _to_images(data, resolution: int) -> torch.Tensor:
    x = torch.as_tensor(data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).expand(-1, 3, -1, -1)
    return x.mul(255).round().to(torch.uint8).contiguous()


@DATASETS.register("digits", kind="embedded", default_resolution=32, options=dict(_OPTIONS))
def digits(root: str | None = None, resolution: int | None = None, seed: int = 0,
           **options: Any) -> MISplits:
    """scikit-learn handwritten digits (offline): private 0-4, public 5-9, resized to 32 px, 3 channels.

    Options: test_fraction (0.2, stratified per class, seeded), private_classes ("0-4"; the other digits
    are public).  Private labels are 0..k-1 in digit order; public labels index the public digits in
    order (``info["public_classes"]`` maps them back).  ``root`` is ignored.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ArgumentError(f"unknown digits option '{unknown[0]}'; allowed options: {', '.join(_OPTIONS)}")
    opt = {**_OPTIONS, **options}
    res = 32 if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 8:
        raise ArgumentError(f"digits resolution must be an integer >= 8, got {res!r}")
    try:
        tf = float(opt["test_fraction"])
    except (TypeError, ValueError):
        raise ArgumentError(f"digits option test_fraction must be a number, got {opt['test_fraction']!r}") from None
    if not 0 < tf < 1:
        raise ArgumentError(f"digits option test_fraction must be in (0, 1), got {tf}")
    private = parse_id_ranges(opt["private_classes"], 10)
    public = [d for d in range(10) if d not in private]
    if len(private) < 2:
        raise ArgumentError("digits option private_classes needs at least 2 digits, e.g. 0-4")
    try:
        from sklearn.datasets import load_digits
        bunch = load_digits()
    except Exception as e:  # pragma: no cover - depends on the installation
        raise DataError(f"cannot load scikit-learn's digits ({e}); reinstall scikit-learn") from None
    imgs = _to_images(bunch.data, res)
    y = torch.as_tensor(bunch.target, dtype=torch.long)

    priv_mask = torch.isin(y, torch.tensor(private))
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[torch.tensor(private)] = torch.arange(len(private))
    if public:
        remap[torch.tensor(public)] = torch.arange(len(public))
    p_imgs, p_y = imgs[priv_mask], remap[y[priv_mask]]
    is_test = stratified_split(p_y, tf, seed, "digits")
    train = TensorImageSet(p_imgs[~is_test], p_y[~is_test])
    test = TensorImageSet(p_imgs[is_test], p_y[is_test])
    pub = TensorImageSet(imgs[~priv_mask], remap[y[~priv_mask]])
    info = {"family": "digits", "seed": int(seed), "source": "sklearn.datasets.load_digits",
            "options": {"test_fraction": tf, "private_classes": private}, "public_classes": public}
    return MISplits(name="digits", resolution=res, num_classes=len(private), private_train=train,
                    private_test=test, public=pub, class_names=[str(d) for d in private], info=info)
