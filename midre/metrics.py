"""Evaluation metrics of model-inversion attacks (MIDRE paper, appendix A.1; protocols.md "Metrics").

=====================  ==============================================================================
metric                 definition
=====================  ==============================================================================
Acc                    natural top-1 accuracy of the target on the private TEST split (percent).
AttAcc top-1 / top-5   share (percent) of reconstructions whose evaluation-model top-1 / top-5 contains
                       the attacked identity.  Computed PER REPEAT (seed); reported as the mean and the
                       sample standard deviation (ddof=1) of the per-repeat accuracies -- never the std
                       over image indices, never the last seed's value.  Plus a bootstrap 95 % interval.
KNN Dist / delta_eval  for every reconstruction, the minimum squared L2 distance between its evaluation-
                       model penultimate features and those of the attacked identity's private TRAIN
                       images; averaged over all reconstructions.  delta_eval (PPA) is the same number.
delta_face             the same nearest-neighbour squared distance in an L2-normalised face embedding
                       (pluggable ``embedder``; midre ships none and downloads nothing).
FID_eval               Frechet distance (torchmetrics' FrechetInceptionDistance) between the features of
                       the reconstructions and of the private train images of the attacked classes, with
                       the EVALUATION MODEL's penultimate features as extractor.  It is *not* Inception
                       FID; that one (``fid_inception``) is computed only from a LOCAL Inception-v3 file.
Delta (trade-off)      (AttAcc_nodef - AttAcc_def) / (Acc_nodef - Acc_def), or "OP" when the defended
                       model is at least as accurate as NoDef (the ratio is meaningless there).
=====================  ==============================================================================

All accuracies are percentages (0-100).  Functions that take a model put it in eval mode for the call
and restore its previous mode; they never compute gradients.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import load_state
from .errors import ArgumentError, CheckpointError, DataError, MidreError
from .face_embedder import resolve_face_embedder
from .training import evaluate_accuracy
from .utils import make_progress, resolve_device

__all__ = [
    "natural_accuracy", "attack_accuracy", "attack_accuracy_from_logits", "knn_distance", "delta_eval",
    "delta_face", "nn_sq_distance", "fid_from_features", "fid_score", "eval_feature_extractor",
    "InceptionPoolFeatures", "load_inception_extractor", "tradeoff", "evaluate_reconstructions",
    "format_metrics_table", "metrics_table_text", "PrivateFeatureCache",
]

Extractor = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- helpers
def _as_long(t: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 1:
        raise ArgumentError(f"{name} must be a 1-D tensor of ints, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ArgumentError(f"{name} must hold integers")
    return t.long().cpu()


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ArgumentError(f"reconstructions must be a (N, C, H, W) image tensor, got {shape}")
    if images.shape[0] == 0:
        raise ArgumentError("there are no reconstructions to evaluate; run the attack first")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    return images


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def _pick_device(model: Any, device: Any) -> torch.device:
    if device is None:
        return _model_device(model)
    dev = resolve_device(device)
    if isinstance(model, nn.Module):
        model.to(dev)
    return dev


@contextlib.contextmanager
def _eval_mode(model: Any):
    """Eval mode + no grad for the duration; the previous train/eval mode is restored."""
    was = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was is not None:
            model.train(was)


def _batched(fn: Extractor, images: torch.Tensor, batch_size: int, device: torch.device,
             advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Apply ``fn`` to ``images`` in batches on ``device``; float32 result on CPU."""
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be at least 1, got {batch_size}")
    outs = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        out = fn(x.to(device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        outs.append(out.detach().float().cpu().reshape(x.shape[0], -1))
        if advance is not None:
            advance(x.shape[0])
    return torch.cat(outs)


def _features_fn(model: Any) -> Extractor:
    """The penultimate features of a midre Classifier (its ``features`` method)."""
    feats = getattr(model, "features", None)
    if callable(feats) and not isinstance(feats, nn.Module):
        return feats
    raise ArgumentError(f"{type(model).__name__} has no features() method giving penultimate features; "
                        "give a midre Classifier as the evaluation model")


def _class_images(imageset: Any, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``classes`` in ``imageset`` as (float [0,1] images, labels), in dataset order."""
    targets = getattr(imageset, "targets", None)
    if targets is None:
        targets = [int(imageset[i][1]) for i in range(len(imageset))]
    targets = torch.as_tensor(targets, dtype=torch.long)
    mask = torch.isin(targets, torch.as_tensor(list(classes), dtype=torch.long))
    idx = mask.nonzero().flatten()
    if idx.numel() == 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    if hasattr(imageset, "batch") and getattr(imageset, "images", None) is not None:
        x, y = imageset.batch(idx)
        return x, torch.as_tensor(y, dtype=torch.long)
    xs = [imageset[int(i)][0] for i in idx]
    return torch.stack(xs), targets[idx]


class PrivateFeatureCache:
    """Features of a private image set, computed once per identity and reused (KNN, delta, FID).

    ``get(classes)`` returns ``{class: (n_c, d) float tensor}``, extracting only the classes not seen yet.
    """

    def __init__(self, extractor: Extractor, imageset: Any, batch_size: int = 128,
                 device: torch.device | None = None, normalize: bool = False):
        self.extractor = extractor
        self.imageset = imageset
        self.batch_size = batch_size
        self.device = device if device is not None else torch.device("cpu")
        self.normalize = normalize
        self._cache: dict[int, torch.Tensor] = {}

    def get(self, classes: Iterable[int]) -> dict[int, torch.Tensor]:
        classes = sorted({int(c) for c in classes})
        todo = [c for c in classes if c not in self._cache]
        if todo:
            x, y = _class_images(self.imageset, todo)
            feats = _batched(self.extractor, x, self.batch_size, self.device) if len(y) else torch.empty(0, 0)
            if self.normalize and len(y):
                feats = torch.nn.functional.normalize(feats, dim=1)
            for c in todo:
                self._cache[c] = feats[y == c] if len(y) else torch.empty(0, 0)
        missing = [c for c in classes if self._cache[c].shape[0] == 0]
        if missing:
            raise DataError(f"the private train split has no images of identity {missing[0]}; "
                            "evaluate with the dataset the target was trained on")
        return {c: self._cache[c] for c in classes}


# ----------------------------------------------------------------------------------------- accuracy
def natural_accuracy(model: nn.Module, imageset: Any, batch_size: int = 256,
                     device: str | torch.device | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``imageset`` (the private test split)."""

    dev = _pick_device(model, device)
    return evaluate_accuracy(model, imageset, batch_size=batch_size, device=dev)


def _checked_logits(logits: Any, identity: Any, repeat: Any, topk: Sequence[int], n_boot: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """The inputs of :func:`attack_accuracy_from_logits`, checked: (logits on the CPU, identity, repeat, ks)."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ArgumentError(f"logits must be a non-empty (N, K) tensor, got shape {tuple(logits.shape)}")
    n, k_classes = logits.shape
    identity = _as_long(identity, "identity")
    repeat = torch.zeros(n, dtype=torch.long) if repeat is None else _as_long(repeat, "repeat")
    if len(identity) != n or len(repeat) != n:
        raise ArgumentError(f"logits ({n}), identity ({len(identity)}) and repeat ({len(repeat)}) differ in length")
    if identity.min() < 0 or identity.max() >= k_classes:
        bad = int(identity[(identity < 0) | (identity >= k_classes)][0])
        raise ArgumentError(f"attacked identity {bad} is outside the evaluation model's {k_classes} classes; "
                            "use an evaluation model trained on the same private identities")
    ks = []
    for k in topk:
        if int(k) < 1:
            raise ArgumentError(f"top-k must be at least 1, got {k}")
        ks.append(int(k))
    if n_boot < 0:
        raise ArgumentError(f"n_boot must be >= 0, got {n_boot}")
    return logits.detach().float().cpu(), identity, repeat, ks


def attack_accuracy_from_logits(logits: torch.Tensor, identity: Any, repeat: Any = None,
                                topk: Sequence[int] = (1, 5), n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Attack accuracy from evaluation-model logits.

    Parameters
    ----------
    logits : (N, K) evaluation-model scores of the reconstructions.
    identity : (N,) attacked identity of every reconstruction.
    repeat : (N,) repeat (seed) index of every reconstruction; ``None`` = a single repeat.
    topk : the k's to report; a k >= K (trivially 100 %) is reported as ``None``.
    n_boot : bootstrap resamples for the 95 % interval (0 = no interval).
    seed : seed of the bootstrap.

    Returns
    -------
    dict with, for every k: ``top{k}`` (mean over repeats of the per-repeat accuracy, percent),
    ``top{k}_std`` (sample std, ddof=1, across repeats; 0.0 with a single repeat), ``top{k}_ci95``
    ([low, high] percentile bootstrap interval), ``top{k}_per_repeat``; plus ``n``, ``n_identities``,
    ``n_repeats``, ``repeats``.

    The bootstrap resamples IDENTITIES with replacement (all reconstructions of a drawn identity, every
    repeat, come along), because reconstructions of one identity are not independent; each resample's
    statistic is the pooled accuracy of its reconstructions.
    """
    logits, identity, repeat, ks = _checked_logits(logits, identity, repeat, topk, n_boot)
    n, k_classes = logits.shape
    reps = torch.unique(repeat)
    ids = torch.unique(identity)
    out: dict[str, Any] = {"n": int(n), "n_identities": int(len(ids)), "n_repeats": int(len(reps)),
                           "repeats": [int(r) for r in reps]}
    rng = np.random.default_rng(seed)
    boot_idx = rng.integers(0, len(ids), size=(n_boot, len(ids))) if n_boot > 0 else None
    id_pos = torch.searchsorted(ids, identity)
    counts = torch.bincount(id_pos, minlength=len(ids)).double().numpy()
    for k in ks:
        key = f"top{k}"
        if k >= k_classes:
            out.update({key: None, f"{key}_std": None, f"{key}_ci95": None, f"{key}_per_repeat": None})
            continue
        top = logits.topk(k, dim=1).indices
        correct = (top == identity[:, None]).any(dim=1).double()
        per_rep = [float(correct[repeat == r].mean() * 100.0) for r in reps]
        arr = np.asarray(per_rep, dtype=np.float64)
        out[key] = float(arr.mean())
        out[f"{key}_std"] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        out[f"{key}_per_repeat"] = per_rep
        if boot_idx is not None:
            hits = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, id_pos, correct).numpy()
            boot = hits[boot_idx].sum(1) / counts[boot_idx].sum(1) * 100.0
            lo, hi = np.percentile(boot, [2.5, 97.5])
            out[f"{key}_ci95"] = [float(lo), float(hi)]
        else:
            out[f"{key}_ci95"] = None
    return out


def eval_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 128,
                device: str | torch.device | None = None) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``images`` (float [0, 1] or uint8), float32 on the CPU: the same
    batching and scaling as every metric here, for analyses that need per-image predictions."""
    images = _check_images(torch.as_tensor(images))
    dev = _pick_device(model, device)
    with torch.no_grad(), _eval_mode(model):
        return _batched(model, images, batch_size, dev)


def attack_accuracy(eval_model: nn.Module, images: torch.Tensor, identity: Any, repeat: Any = None,
                    topk: Sequence[int] = (1, 5), n_boot: int = 1000, seed: int = 0, batch_size: int = 128,
                    device: str | torch.device | None = None,
                    advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Attack accuracy of reconstructions under the evaluation model (see
    :func:`attack_accuracy_from_logits` for the returned keys).  ``advance(n)`` reports progress."""
    images = _check_images(images)
    dev = _pick_device(eval_model, device)
    with _eval_mode(eval_model):
        logits = _batched(eval_model, images, batch_size, dev, advance)
    return attack_accuracy_from_logits(logits, identity, repeat, topk=topk, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------------------- distances
def nn_sq_distance(query: torch.Tensor, identity: Any, reference: Mapping[int, torch.Tensor],
                   reduce: bool = True) -> float | torch.Tensor:
    """Min squared L2 distance of every query feature to the reference features of its own identity.

    ``query`` (N, d); ``reference`` {identity: (n_c, d)}.  Returns the mean over queries (``reduce``) or
    the (N,) per-query distances.  Computed in float64.
    """
    identity = _as_long(identity, "identity")
    query = query.double().reshape(query.shape[0], -1)
    if len(identity) != query.shape[0]:
        raise ArgumentError(f"features ({query.shape[0]}) and identity ({len(identity)}) differ in length")
    d = torch.empty(query.shape[0], dtype=torch.float64)
    for c in torch.unique(identity).tolist():
        ref = reference.get(int(c))
        if ref is None or ref.shape[0] == 0:
            raise DataError(f"no private train images of identity {c} to compare with; "
                            "evaluate with the dataset the target was trained on")
        ref = ref.double().reshape(ref.shape[0], -1)
        if ref.shape[1] != query.shape[1]:
            raise ArgumentError(f"feature sizes differ: reconstructions {query.shape[1]}, private {ref.shape[1]}")
        m = identity == c
        q = query[m]
        sq = (q * q).sum(1, keepdim=True) - 2.0 * q @ ref.T + (ref * ref).sum(1)[None, :]
        d[m] = sq.clamp_min(0.0).min(dim=1).values
    return float(d.mean()) if reduce else d


def _nn_metric(extractor: Extractor, model_for_device: Any, images: torch.Tensor, identity: Any,
               private_train: Any, batch_size: int, device: Any, cache: PrivateFeatureCache | None,
               normalize: bool, advance: Callable[[int], None] | None = None) -> float:
    images = _check_images(images)
    identity = _as_long(identity, "identity")
    if len(identity) != images.shape[0]:
        raise ArgumentError(f"images ({images.shape[0]}) and identity ({len(identity)}) differ in length")
    dev = _pick_device(model_for_device, device)
    with _eval_mode(model_for_device):
        q = _batched(extractor, images, batch_size, dev, advance)
        if normalize:
            q = torch.nn.functional.normalize(q, dim=1)
        if cache is None:
            cache = PrivateFeatureCache(extractor, private_train, batch_size, dev, normalize=normalize)
        ref = cache.get(torch.unique(identity).tolist())
    return float(nn_sq_distance(q, identity, ref))


def knn_distance(eval_model: nn.Module, images: torch.Tensor, identity: Any, private_train: Any,
                 batch_size: int = 128, device: str | torch.device | None = None,
                 cache: PrivateFeatureCache | None = None,
                 advance: Callable[[int], None] | None = None) -> float:
    """KNN Dist: mean over reconstructions of the min squared L2 distance, in the evaluation model's
    penultimate features (``eval_model.features``), to the private TRAIN images of the attacked identity.

    ``cache`` (a :class:`PrivateFeatureCache` over the same model and set) lets several calls share the
    private features; each identity's features are extracted once.
    """
    return _nn_metric(_features_fn(eval_model), eval_model, images, identity, private_train, batch_size, device,
                      cache, normalize=False, advance=advance)


def delta_eval(eval_model: nn.Module, images: torch.Tensor, identity: Any, private_train: Any,
               **kwargs: Any) -> float:
    """PPA's delta_eval: exactly :func:`knn_distance` (evaluation-model features), under PPA's name."""
    return knn_distance(eval_model, images, identity, private_train, **kwargs)


def delta_face(embedder: Extractor | None, images: torch.Tensor, identity: Any, private_train: Any,
               batch_size: int = 128, device: str | torch.device | None = None,
               cache: PrivateFeatureCache | None = None) -> float:
    """PPA's delta_face: the nearest-neighbour squared distance in a face embedding, L2-normalised here.

    ``embedder`` maps [0, 1] images (N, C, H, W) to (N, d) embeddings and handles its own resizing (PPA
    uses FaceNet at 160 px).  midre ships no face embedder and downloads nothing: pass one explicitly.
    """
    if embedder is None:
        raise ArgumentError("delta_face needs a face embedder (images -> embeddings); none is installed with midre, "
                            "pass embedder=<callable> (e.g. a local FaceNet) or skip delta_face")
    if not callable(embedder):
        raise ArgumentError(f"the face embedder must be callable (images -> embeddings), got {type(embedder).__name__}")
    return _nn_metric(embedder, embedder, images, identity, private_train, batch_size, device, cache,
                      normalize=True)


# ----------------------------------------------------------------------------------------- FID
class _Precomputed(nn.Module):
    """A torchmetrics 'feature extractor' that receives features already extracted (pass-through)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
    """Frechet distance between two feature sets, computed by torchmetrics' FrechetInceptionDistance.

    Small samples: FID needs >= 2 samples per side (else :class:`ArgumentError`).  With fewer samples than
    feature dimensions the covariances are singular; torchmetrics' eigenvalue-based matrix square root
    still gives a finite value, but it is a strongly biased, high-variance estimate, so the result is
    flagged ``rank_deficient=True`` (compare such numbers only at equal sample sizes).  A non-finite
    result raises :class:`MidreError` instead of leaking NaN; tiny negative round-off is clipped to 0.

    Returns {"value", "n_real", "n_fake", "feature_dim", "rank_deficient"}.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = torch.as_tensor(real).detach().double().cpu()
    fake = torch.as_tensor(fake).detach().double().cpu()
    real = real.reshape(real.shape[0], -1)
    fake = fake.reshape(fake.shape[0], -1)
    if real.shape[1] != fake.shape[1]:
        raise ArgumentError(f"FID feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ArgumentError(f"FID needs at least 2 images on each side, got {real.shape[0]} private and "
                            f"{fake.shape[0]} reconstructed; attack more identities or repeats")
    if not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
        raise MidreError("FID: the feature extractor produced NaN/inf features; check the model and the images")
    dim = real.shape[1]
    metric = FrechetInceptionDistance(feature=_Precomputed(dim), normalize=True, reset_real_features=True)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = float(metric.compute())
    if not math.isfinite(value):
        raise MidreError(f"FID is not finite ({value}) for {real.shape[0]} private / {fake.shape[0]} reconstructed "
                         f"images with {dim}-d features; use more images")
    scale = float((real.var(0).sum() + fake.var(0).sum()).item()) + 1.0
    if value < 0:
        if value < -1e-6 * scale:
            raise MidreError(f"FID came out negative ({value:.3g}): numerically unstable covariances; use more images")
        value = 0.0
    return {"value": value, "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0]), "feature_dim": int(dim),
            "rank_deficient": bool(min(real.shape[0], fake.shape[0]) <= dim)}


def eval_feature_extractor(eval_model: nn.Module) -> Extractor:
    """FID_eval's extractor: the evaluation model's penultimate features."""
    return _features_fn(eval_model)


class InceptionPoolFeatures(nn.Module):
    """Inception-v3 2048-d pool features of [0, 1] images (resized to 299, ImageNet-normalised).

    Built from a LOCAL weights file only (torchvision's ``inception_v3`` layout, safetensors or a
    weights-only torch file); midre never downloads weights.
    """

    num_features = 2048

    def __init__(self, weights_path: str | Path):
        super().__init__()
        from torchvision.models import inception_v3


        path = Path(weights_path)
        if not path.is_file():
            raise CheckpointError(f"Inception-v3 weights '{path}' not found; give a local torchvision inception_v3 "
                                  "state dict (.safetensors or .pth), or drop --inception-weights to use FID_eval")
        state = load_state(path)
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = inception_v3(weights=None, aux_logits=aux, transform_input=True, init_weights=False)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise CheckpointError(f"'{path}' is not a torchvision inception_v3 state dict ({first[:90]}); "
                                  "give the torchvision Inception-v3 weights") from None
        net.fc = nn.Identity()
        net.eval()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        out = self.net((x - self.mean) / self.std)
        return out.logits if hasattr(out, "logits") else out


def load_inception_extractor(weights_path: str | Path) -> InceptionPoolFeatures:
    """Inception-v3 pool-feature extractor from a local weights file (for real Inception FID)."""
    return InceptionPoolFeatures(weights_path)


def fid_score(extractor: Extractor, real_images: torch.Tensor, fake_images: torch.Tensor, batch_size: int = 128,
              device: str | torch.device | None = None) -> dict[str, Any]:
    """FID between two image sets with any feature extractor (see :func:`fid_from_features`)."""
    real_images = _check_images(real_images)
    fake_images = _check_images(fake_images)
    dev = _pick_device(extractor, device)
    with _eval_mode(extractor):
        real = _batched(extractor, real_images, batch_size, dev)
        fake = _batched(extractor, fake_images, batch_size, dev)
    return fid_from_features(real, fake)


# ----------------------------------------------------------------------------------------- nearest private image
def nearest_private(rec: Any, eval_model: nn.Module, private: Any, device: Any) -> dict[str, dict]:
    """Per attacked class: the reconstruction the target is most confident about, and the private image
    nearest to it (min squared L2 in the evaluation model's penultimate features) -> indices + distance."""
    ids = rec.identity.long()
    conf = rec.confidence.float()
    best = {int(c): int((ids == c).nonzero().flatten()[conf[ids == c].argmax()]) for c in torch.unique(ids)}
    fn = _features_fn(eval_model)
    targets = torch.as_tensor(private.targets)
    out = {}
    with _eval_mode(eval_model):
        q = _batched(fn, rec.images[list(best.values())], 64, device)
        ref = PrivateFeatureCache(fn, private, 64, device).get(list(best))
    for row, (c, i) in enumerate(best.items()):
        d = ((ref[c].double() - q[row].double()[None]) ** 2).sum(1)
        j = int(d.argmin())
        out[str(c)] = {"recon": i, "private": int((targets == c).nonzero().flatten()[j]), "sq_dist": float(d[j])}
    return out


# ----------------------------------------------------------------------------------------- trade-off
def tradeoff(acc_nodef: float, acc_def: float, att_nodef: float, att_def: float) -> float | str:
    """Delta = (AttAcc_nodef - AttAcc_def) / (Acc_nodef - Acc_def) (TL-DMI; higher is better).

    Returns "OP" (over-performs) when the defended model is at least as accurate as NoDef: the ratio is
    undefined (zero denominator) or meaningless (negative) there.
    """
    vals = [acc_nodef, acc_def, att_nodef, att_def]
    for v in vals:
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ArgumentError(f"trade-off needs four finite accuracies (percent), got {v!r}")
    if float(acc_def) >= float(acc_nodef):
        return "OP"
    return (float(att_nodef) - float(att_def)) / (float(acc_nodef) - float(acc_def))


# ----------------------------------------------------------------------------------------- all at once
def _recon_fields(recon: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    if isinstance(recon, Mapping):
        get = recon.get
    else:
        def get(k, default=None):
            return getattr(recon, k, default)
    images, identity = get("images"), get("identity")
    if images is None or identity is None:
        raise ArgumentError("reconstructions need 'images' and 'identity'; give a Reconstructions artefact")
    images = _check_images(torch.as_tensor(images))
    identity = _as_long(identity, "identity")
    repeat = get("repeat")
    repeat = torch.zeros(len(identity), dtype=torch.long) if repeat is None else _as_long(repeat, "repeat")
    conf = get("confidence")
    conf = None if conf is None else torch.as_tensor(conf).float().reshape(-1)
    meta = dict(get("meta") or {})
    if not (images.shape[0] == len(identity) == len(repeat)):
        raise ArgumentError(f"reconstructions are inconsistent: {images.shape[0]} images, {len(identity)} identities, "
                            f"{len(repeat)} repeats")
    return images, identity, repeat, conf, meta


def _attack_accuracy_keys(att: Mapping[str, Any], topk: Sequence[int]) -> dict[str, Any]:
    out = {key: att[key] for key in ("n_identities", "n_repeats")}
    for k in topk:
        for suffix in ("", "_std", "_ci95", "_per_repeat"):
            out[f"attacc_top{k}{suffix}"] = att[f"top{k}{suffix}"]
    return out


def _fid_keys(fid_extractor: None | str | Path | Extractor, q: torch.Tensor, ref: Mapping[int, torch.Tensor],
              classes: list[int], images: torch.Tensor, private_train: Any, batch_size: int, dev: torch.device,
              advance: Callable[[int], None]) -> dict[str, Any]:
    """FID_eval on the evaluation features already computed (``q``, ``ref``), or an Inception / custom FID."""
    if fid_extractor is None:
        key, fake = "fid_eval", q
        real = torch.cat([ref[c] for c in classes])
        advance(len(images))
    else:
        if isinstance(fid_extractor, (str, Path)):
            key, ext = "fid_inception", load_inception_extractor(fid_extractor)
        else:
            key, ext = "fid_custom", fid_extractor
        ext_dev = _pick_device(ext, dev)
        with _eval_mode(ext):
            fake = _batched(ext, images, batch_size, ext_dev, advance)
            real = _batched(ext, _class_images(private_train, classes)[0], batch_size, ext_dev)
    try:
        res = fid_from_features(real, fake)
    except ArgumentError as e:
        return {key: None, f"{key}_note": str(e)}
    return {key: res["value"], **{f"{key}_{k}": res[k] for k in ("n_real", "n_fake", "feature_dim", "rank_deficient")}}


def evaluate_reconstructions(recon: Any, eval_model: nn.Module, private_train: Any, private_test: Any = None,
                             target_model: nn.Module | None = None, fid: bool = True,
                             fid_extractor: None | str | Path | Extractor = None,
                             face_embedder: None | str | Extractor = None, baseline: Mapping | None = None,
                             topk: Sequence[int] = (1, 5), n_boot: int = 1000, seed: int = 0,
                             batch_size: int = 128, device: str | torch.device | None = None,
                             progress: bool = False) -> dict[str, Any]:
    """Every metric of one reconstructions artefact, as a flat JSON-able dict.

    Parameters
    ----------
    recon : a ``Reconstructions`` (or mapping) with images, identity, repeat, confidence, meta.
    eval_model : the evaluation classifier (same private identities as the target).
    private_train, private_test : private splits (train: KNN / FID reference; test: natural accuracy).
    target_model : when given with ``private_test``, its natural accuracy ``acc`` is measured.
    fid : compute a FID.  ``fid_extractor`` None -> FID_eval (evaluation-model features); a path ->
        Inception-v3 FID from that LOCAL weights file (key ``fid_inception``); a callable -> custom
        extractor (key ``fid_custom``).
    face_embedder : optional embedder for ``delta_face``; ``"dlib"`` = the ``face`` extra's embedder
        (midre/face_embedder.py).  When it is not installed, ``delta_face`` is None with a
        ``delta_face_note`` saying why (never a silent zero).
    baseline : a NoDef metrics dict (``acc``, ``attacc_top1``) -> trade-off ``tradeoff``.

    Keys: attack, n, n_identities, n_repeats, acc, attacc_top{k}[_std|_ci95|_per_repeat], knn_dist,
    delta_eval (= knn_dist), delta_face, fid_eval (+ fid_eval_n_real, _n_fake, _feature_dim,
    _rank_deficient, or fid_eval_note when it cannot be computed), target_confidence, tradeoff.
    """

    images, identity, repeat, conf, meta = _recon_fields(recon)

    face_embedder, face_note = resolve_face_embedder(face_embedder)
    _check_classes(eval_model, identity)
    dev = _pick_device(eval_model, device)
    n = images.shape[0]
    out: dict[str, Any] = {"attack": meta.get("attack"), "n": int(n)}
    if face_note is not None:
        out["delta_face"], out["delta_face_note"] = None, face_note
    steps = [("natural accuracy", len(private_test) if (target_model is not None and private_test is not None) else 0),
             ("attack accuracy", n), ("KNN distance", n), ("FID", n if fid else 0),
             ("delta_face", n if face_embedder is not None else 0)]
    with make_progress(progress, transient=True) as prog:
        task = prog.add_task("evaluating", total=sum(s for _, s in steps), status="")

        def advance(k: int) -> None:
            prog.advance(task, k)

        def stage(name: str) -> None:
            prog.update(task, status=name)

        if steps[0][1]:
            stage("natural accuracy")
            out["acc"] = natural_accuracy(target_model, private_test, batch_size=batch_size, device=dev)
            advance(steps[0][1])
        stage("attack accuracy")
        att = attack_accuracy(eval_model, images, identity, repeat, topk=topk, n_boot=n_boot, seed=seed,
                              batch_size=batch_size, device=dev, advance=advance)
        out.update(_attack_accuracy_keys(att, topk))
        out.update(_distance_keys(eval_model, images, identity, private_train, fid, fid_extractor, batch_size, dev,
                                  advance, stage))
        if face_embedder is not None:
            stage("delta_face")
            out["delta_face"] = delta_face(face_embedder, images, identity, private_train, batch_size=batch_size,
                                           device=dev)
            advance(n)
    if conf is not None and conf.numel() == n:
        out["target_confidence"] = float(conf.mean())
    return {**out, **_tradeoff_from_baseline(out, baseline)} if baseline is not None else out


def _check_classes(eval_model: nn.Module, identity: torch.Tensor) -> None:
    num_classes = getattr(eval_model, "num_classes", None)
    if num_classes is not None and int(identity.max()) >= int(num_classes):
        raise ArgumentError(f"attacked identity {int(identity.max())} is outside the evaluation model's {num_classes} "
                            "classes; use an evaluation model trained on the same private identities")


def _distance_keys(eval_model: nn.Module, images: torch.Tensor, identity: torch.Tensor, private_train: Any,
                   fid: bool, fid_extractor: None | str | Path | Extractor, batch_size: int, dev: torch.device,
                   advance: Any, stage: Any) -> dict[str, Any]:
    """KNN distance (δ_eval) and, when asked, the FID: the reconstructions' evaluation features and the private
    features serve both."""
    stage("KNN distance")
    classes = torch.unique(identity).tolist()
    cache = PrivateFeatureCache(_features_fn(eval_model), private_train, batch_size, dev)
    with _eval_mode(eval_model):
        q = _batched(_features_fn(eval_model), images, batch_size, dev, advance)
        ref = cache.get(classes)
    out: dict[str, Any] = {"knn_dist": float(nn_sq_distance(q, identity, ref))}
    out["delta_eval"] = out["knn_dist"]
    if fid:
        stage("FID")
        out.update(_fid_keys(fid_extractor, q, ref, classes, images, private_train, batch_size, dev, advance))
    return out


def _tradeoff_from_baseline(cur: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("acc", "attacc_top1"):
        if not isinstance(baseline.get(key), (int, float)):
            raise ArgumentError(f"the baseline metrics lack '{key}'; give the metrics.json of a NoDef run "
                                "evaluated with its target")
        if not isinstance(cur.get(key), (int, float)):
            raise ArgumentError(f"the trade-off needs this run's '{key}'; evaluate with its target model")
    b_att, c_att = baseline.get("attack"), cur.get("attack")
    if b_att and c_att and str(b_att) != str(c_att):
        raise ArgumentError(f"the baseline was attacked with '{b_att}' but these reconstructions come from '{c_att}'; "
                            "compare runs of the same attack")
    return {"tradeoff": tradeoff(baseline["acc"], cur["acc"], baseline["attacc_top1"], cur["attacc_top1"]),
            "baseline_acc": float(baseline["acc"]), "baseline_attacc_top1": float(baseline["attacc_top1"])}


# ----------------------------------------------------------------------------------------- table
def _fmt(v: Any, std: Any = None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    s = f"{v:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    return s


def format_metrics_table(rows: Sequence[Mapping[str, Any]], title: str | None = "Model-inversion evaluation"):
    """A rich Table of metrics dicts (one row each): Attack, Defense, Acc, AttAcc top-1/top-5 +- std over
    repeats, 95 % CI of top-1, KNN Dist, FID_eval (or Inception FID), Delta."""
    from rich.table import Table

    rows = list(rows)
    table = Table(title=title)
    has_inc = any(r.get("fid_inception") is not None for r in rows)
    has_face = any(r.get("delta_face") is not None for r in rows)
    cols = ["Attack", "Defense", "Acc ↑", "AttAcc@1 ↓", "AttAcc@5 ↓", "AttAcc@1 95% CI", "KNN Dist ↑", "FID_eval ↑"]
    if has_inc:
        cols.append("FID (Inception) ↑")
    if has_face:
        cols.append("δ_face ↑")
    cols.append("Δ ↑")
    for c in cols:
        table.add_column(c, justify="left" if c in ("Attack", "Defense") else "right")
    for r in rows:
        ci = r.get("attacc_top1_ci95")
        cells = [str(r.get("attack") or "-"), str(r.get("defense") or "-"), _fmt(r.get("acc")),
                 _fmt(r.get("attacc_top1"), r.get("attacc_top1_std")),
                 _fmt(r.get("attacc_top5"), r.get("attacc_top5_std")),
                 f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-",
                 _fmt(r.get("knn_dist")), _fmt(r.get("fid_eval"))]
        if has_inc:
            cells.append(_fmt(r.get("fid_inception")))
        if has_face:
            cells.append(_fmt(r.get("delta_face"), digits=4))
        t = r.get("tradeoff")
        cells.append(_fmt(t, digits=3) if t is not None else "-")
        table.add_row(*cells)
    return table


def metrics_table_text(rows: Sequence[Mapping[str, Any]], width: int = 160) -> str:
    """The metrics table rendered to plain text (logs, tests)."""
    import io

    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(format_metrics_table(rows))
    return console.export_text()
