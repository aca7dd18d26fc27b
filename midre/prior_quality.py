"""Sample quality of a GAN prior, measured on held-out PUBLIC images the prior never trained on.

The figure has to be cheap (it runs after every prior) and independent of the evaluation model (the
prior is part of the instrument the evaluation model checks), so it works in a fixed, model-free
feature space: each image area-averaged to 16 x 16 pixels (768 numbers for RGB).  At that scale a face
prior's samples must reproduce the layout of a face (skin, hair, eyes, mouth positions, background);
colour blobs do not.

- ``coverage`` (Naeem et al., 2020): share of held-out images whose k-nearest-neighbour ball (k = 3,
  radius from the held-out images themselves) contains at least one prior sample.  Samples must land
  near many different real images: a prior that collapses onto an average face or draws colour blobs
  covers few.  ``real_coverage`` is the same figure for as many public TRAINING images (what real images
  of these identities reach), and ``relative_coverage = coverage / real_coverage`` is the figure the
  validity gate reads (midre.gates, ``gates.prior_coverage``).
- ``precision`` (Kynkäänniemi et al., 2019): share of samples inside the union of the held-out images'
  k-NN balls.  Recorded for information only: in pixel space an average image lies inside that union,
  so a collapsed prior scores 1.0 (measured: a 1-iteration GAN reached precision 1.0, coverage 0.09,
  real images coverage 0.83; 32-px synthetic faces, 300 held-out images).
- ``kid``: kernel inception distance (torchmetrics, polynomial kernel) in the same feature space; unbiased
  at small sample sizes, 0 for identical distributions (``real_kid`` for the training images).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_SIZE = 16
K = 3


def pixel_features(images: torch.Tensor, size: int = FEATURE_SIZE) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) -> (N, C * size * size) area-averaged pixels."""
    x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.adaptive_avg_pool2d(x, size)
    return x.flatten(1)


def _knn_radius(feats: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(feats, feats)
    return d.kthvalue(min(k + 1, feats.shape[0]), dim=1).values   # +1: the point itself (distance 0)


def _coverage(ref: torch.Tensor, query: torch.Tensor, k: int) -> float:
    """Share of ``query`` points inside some k-NN ball of ``ref``."""
    radius = _knn_radius(ref, k)
    d = torch.cdist(query, ref)
    return float((d <= radius.unsqueeze(0)).any(dim=1).float().mean())


def precision(real: torch.Tensor, fake: torch.Tensor, k: int = K) -> float:
    """Share of ``fake`` inside the union of the k-NN balls of ``real``."""
    return _coverage(real, fake, k)


def coverage(real: torch.Tensor, fake: torch.Tensor, k: int = K) -> float:
    """Share of ``real`` points whose own k-NN ball (among ``real``) holds at least one ``fake`` point."""
    radius = _knn_radius(real, k)
    d = torch.cdist(real, fake)
    return float((d <= radius.unsqueeze(1)).any(dim=1).float().mean())


class _PassThrough(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50) -> float:
    """Kernel inception distance (mean over random subsets) of two feature sets (torchmetrics)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    size = int(min(real.shape[0], fake.shape[0], 100))
    with warnings.catch_warnings():   # "will save all extracted features": a few hundred, on purpose
        warnings.simplefilter("ignore")
        metric = KernelInceptionDistance(feature=_PassThrough(real.shape[1]), subsets=subsets, subset_size=size,
                                         normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    mean, _std = metric.compute()
    return float(mean)


@torch.no_grad()
def sample_prior(prior: Any, n: int, seed: int, device: Any = "cpu") -> torch.Tensor:
    """``n`` samples of a GAN prior (z ~ N(0, I); a conditional generator gets uniform random classes)."""
    G = prior.generator
    was = G.training
    G.eval()
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for s in range(0, n, 256):
        b = min(256, n - s)
        z = torch.randn(b, prior.z_dim, generator=gen).to(device)
        if hasattr(G, "num_classes"):
            y = torch.randint(int(G.num_classes), (b,), generator=gen).to(device)
            out.append(G(z, y).float().cpu())
        else:
            out.append(G(z).float().cpu())
    G.train(was)
    return torch.cat(out)


def _images(imageset: Any, n: int, seed: int) -> torch.Tensor:
    ts = imageset.to_tensors() if hasattr(imageset, "to_tensors") else imageset
    imgs = ts.images
    idx = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(int(seed)))[:n]
    x = imgs[idx]
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def prior_quality(prior: Any, holdout: Any, train_public: Any | None = None, n: int = 500, seed: int = 0,
                  device: Any = "cpu") -> dict[str, Any] | None:
    """The quality record of a GAN prior (see the module docstring); None for priors without a generator
    or fewer than K + 2 held-out images."""
    if getattr(prior, "generator", None) is None or holdout is None or len(holdout) < K + 2:
        return None
    real_imgs = _images(holdout, n, seed)
    real = pixel_features(real_imgs)
    fake = pixel_features(sample_prior(prior, real.shape[0], seed + 1, device))
    out: dict[str, Any] = {"metric": f"k-NN coverage/precision (k={K}) and KID in {FEATURE_SIZE}x{FEATURE_SIZE} "
                                     "area-averaged pixels vs held-out public images",
                           "coverage": coverage(real, fake), "precision": precision(real, fake),
                           "kid": kid(real, fake), "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}
    if train_public is not None and len(train_public) >= K + 2:
        base = pixel_features(_images(train_public, real.shape[0], seed + 2))
        out.update({"real_coverage": coverage(real, base), "real_precision": precision(real, base),
                    "real_kid": kid(real, base)})
        if out["real_coverage"] > 0:
            out["relative_coverage"] = out["coverage"] / out["real_coverage"]
    return out
