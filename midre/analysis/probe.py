"""Where does identity live in a face benchmark?  A linear probe on pixel regions (issue 9, item 1).

:func:`region_probe` trains a ridge classifier (one-vs-all, dual form) on the raw pixels of the private
training images and reports private-test top-1 accuracy for three regions:

* ``whole``  -- every pixel;
* ``box``    -- only the inner-face box (eyes to mouth);
* ``masked`` -- everything outside that box.

Pixels are standardised with training statistics; the Gram matrix of a pixel set is the sum of the Gram
matrices of its parts, so ``whole = box + masked`` costs nothing extra.  The ridge strength is chosen
per region on held-out training images (the last fifth of every identity's training images), then the
probe is refit on all training images.  Optional ``features="random"``: a fixed random convolution
(seeded) + ReLU + average pooling before the ridge, a translation-tolerant embedding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0)        # ridge strength relative to the mean Gram diagonal


def box_mask(resolution: int, box: Sequence[float]) -> torch.Tensor:
    """Boolean (R, R) mask of the box ``(x0, y0, x1, y1)`` given in image coordinates [-1, 1]."""
    x0, y0, x1, y1 = box
    c0, c1 = math.floor((x0 + 1) / 2 * resolution), math.ceil((x1 + 1) / 2 * resolution)
    r0, r1 = math.floor((y0 + 1) / 2 * resolution), math.ceil((y1 + 1) / 2 * resolution)
    m = torch.zeros(resolution, resolution, dtype=torch.bool)
    m[max(r0, 0): min(r1, resolution), max(c0, 0): min(c1, resolution)] = True
    return m


def _random_features(x: torch.Tensor, channels: int = 48, seed: int = 0) -> torch.Tensor:
    """Fixed random 5x5 convolution, ReLU, 4x4 average pooling: (N, C, H, W) -> (N, channels, H/4, W/4)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, x.shape[1], 5, 5, generator=g) / math.sqrt(x.shape[1] * 25)
    out = []
    for lo in range(0, len(x), 512):
        out.append(F.avg_pool2d(F.relu(F.conv2d(x[lo: lo + 512], w, padding=2)), 4))
    return torch.cat(out)


def _gram_parts(train: torch.Tensor, test: torch.Tensor, inside: torch.Tensor, features: str):
    """Standardised features split into (inside the box, outside); returns their train/test Gram blocks."""
    train, test = train.float() / 255, test.float() / 255
    mu, sd = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp(min=1e-3)
    train, test = (train - mu) / sd, (test - mu) / sd
    parts = {}
    for name, keep in (("box", inside), ("masked", ~inside)):
        a, b = train * keep, test * keep              # the other region is the training mean (zero)
        if features == "random":
            a, b = _random_features(a), _random_features(b)
            fm, fs = a.mean(0, keepdim=True), a.std(0, keepdim=True).clamp(min=1e-6)
            a, b = (a - fm) / fs, (b - fm) / fs
        a, b = a.flatten(1), b.flatten(1)
        parts[name] = ((a @ a.T).double(), (b @ a.T).double())
    return parts


def _ridge_acc(k_fit, k_eval, y_fit, y_eval, num_classes: int, alpha: float) -> float:
    targets = F.one_hot(y_fit, num_classes).double() - 1.0 / num_classes
    lam = alpha * k_fit.diagonal().mean()
    chol = torch.linalg.cholesky(k_fit + lam * torch.eye(len(k_fit), dtype=k_fit.dtype))
    coef = torch.cholesky_solve(targets, chol)
    return float(((k_eval @ coef).argmax(1) == y_eval).double().mean())


def region_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 box: Sequence[float], features: str = "pixels") -> dict[str, dict[str, float]]:
    """Probe accuracy per region: {"whole"|"box"|"masked": {"acc", "alpha", "val_acc"}} (uint8 NCHW in)."""
    inside = box_mask(train_x.shape[-1], box).view(1, 1, *train_x.shape[-2:])
    parts = _gram_parts(train_x, test_x, inside, features)
    parts["whole"] = tuple(parts["box"][i] + parts["masked"][i] for i in range(2))
    c = int(train_y.max()) + 1
    # hold out the last fifth of every identity's training images to choose the ridge strength
    rank = torch.zeros_like(train_y)
    for k in range(c):
        idx = (train_y == k).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    count = torch.bincount(train_y, minlength=c)[train_y]
    val = rank >= (count * 4) // 5
    fit = ~val
    out = {}
    for name in ("whole", "box", "masked"):
        k_tr, k_te = parts[name]
        scores = {a: _ridge_acc(k_tr[fit][:, fit], k_tr[val][:, fit], train_y[fit], train_y[val], c, a)
                  for a in ALPHAS}
        best = max(ALPHAS, key=lambda a: (scores[a], a))
        out[name] = {"acc": _ridge_acc(k_tr, k_te, train_y, test_y, c, best), "alpha": best,
                     "val_acc": scores[best]}
    return out
