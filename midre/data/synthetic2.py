"""``synthetic2``: version 2 of the embedded face benchmark (64 px, fixed identity pools).

What changed from ``synthetic`` (v1, still loadable unchanged): faces are framed tightly like aligned
CelebA 64-px crops (the face fills most of the frame); identity lives in the *facial configuration*
(eye shape, size, tilt and spacing, iris, brows, nose, mouth and lips, jaw and face shape, ears,
moles, a scar, facial hair), drawn large enough to survive 64 px; everything else is per-image
nuisance: pose (shift, scale, rotation, small yaw), expression (eye opening, gaze, brow raise, smile,
open mouth), hair style, length, fringe and tone (hair is re-drawn for every image and keeps the
identity's tone only some of the time), glasses, illumination direction and strength, colour cast,
brightness, contrast, background, clothes, defocus blur and sensor noise.

Like a real data set, the identities are *fixed pools* that do not depend on the run seed:

* ``private``  -- up to 1,000 identities (default 300), images 0..29 train, 30..39 test;
* ``public``   -- disjoint identities (default 300 x 30 images) for the attack priors;
* ``pretrain`` -- a third disjoint pool (default 500 x 30 images), the ImageNet / MS-Celeb analogue,
  loaded with :func:`pretraining_pool` or ``midre.data.load_pretraining("synthetic2")``.

Identity ``i`` of a pool depends only on ``(GENERATOR_VERSION, pool, i)`` and image ``j`` of it only
on ``(GENERATOR_VERSION, pool, i, j)``: asking for fewer identities or images returns a prefix of the
same faces.  Rendered blocks are cached on disk (see :mod:`midre.data.facecache`).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ArgumentError
from ..utils import derive_seed
from .base import DATASETS, PRETRAINING_POOLS, MISplits, TensorImageSet
from .facerender import render_faces2

GENERATOR_VERSION = 2
DEFAULT_RESOLUTION = 64
POOLS = ("private", "public", "pretrain")
MAX_IDENTITIES = 1000          # per pool
MAX_IMAGES = 64                # per identity (nuisance draws are made for this many, then sliced)
PRIVATE_TRAIN = 30             # private images 0..29 are training images, 30..39 test images
PRIVATE_TEST = 10
# the inner-face box (eyes to mouth) in canonical image coordinates [-1, 1]: x0, y0, x1, y1
INNER_BOX = (-0.50, -0.36, 0.50, 0.66)

# ----------------------------------------------------------------------------------- identity space
# Canonical frame: x right, y down, the image spans [-1, 1]; every identity draws each uniformly.
_ID_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.58, 0.76), "face_h": (0.82, 0.98), "face_cy": (0.03, 0.12),
    "jaw": (0.05, 0.50), "chin_p": (1.4, 3.2),
    "ear_y": (-0.06, 0.10), "ear_h": (0.10, 0.18),
    "eye_y": (-0.17, -0.04), "eye_sep": (0.22, 0.35), "eye_w": (0.095, 0.165), "eye_h": (0.040, 0.085),
    "eye_tilt": (-0.32, 0.32), "eye_p": (1.4, 3.0), "iris": (0.55, 0.95), "iris_tone": (0.0, 1.0),
    "lid": (0.0, 1.0),
    "brow_gap": (0.045, 0.13), "brow_dx": (-0.03, 0.05), "brow_len": (0.11, 0.22), "brow_t": (0.025, 0.075),
    "brow_tilt": (-0.40, 0.40), "brow_arch": (-0.01, 0.07), "brow_dark": (0.25, 0.85),
    "nose_y": (0.19, 0.34), "nose_w": (0.06, 0.13), "nose_bridge": (0.015, 0.040), "nostril": (0.5, 1.3),
    "mouth_gap": (0.13, 0.25), "mouth_w": (0.12, 0.26), "lip_t": (0.020, 0.055), "lip_tone": (0.0, 1.0),
    "smile": (-0.035, 0.05),
    "skin": (0.15, 0.90), "hair_tone": (0.0, 1.0),
    "beard": (0.0, 1.0), "moustache": (0.0, 1.0),
}
_ID_KEYS = list(_ID_RANGES)
_NUM_MOLES = 3
_NUM_MARKS = _NUM_MOLES * 4 + 6
_NZ = 48                       # normal and uniform draws per image


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ArgumentError(f"unknown synthetic2 pool '{pool}'; pools: {', '.join(POOLS)}")


def sample_identities(pool: str, ids: range | list[int]) -> dict[str, torch.Tensor]:
    """Identity parameters of ``ids`` in ``pool``: name -> (n,) (marks: (n, k)); no run seed involved."""
    _check_pool(pool)
    rows, marks = [], []
    for i in ids:
        g = torch.Generator().manual_seed(derive_seed(0, "synthetic2-identity", GENERATOR_VERSION, pool, int(i)))
        rows.append(torch.rand(len(_ID_KEYS), generator=g, dtype=torch.float64))
        marks.append(torch.rand(_NUM_MARKS, generator=g, dtype=torch.float64))
    u = torch.stack(rows) if rows else torch.zeros(0, len(_ID_KEYS), dtype=torch.float64)
    m = (torch.stack(marks) if marks else torch.zeros(0, _NUM_MARKS, dtype=torch.float64)).float()
    p = {}
    for j, k in enumerate(_ID_KEYS):
        lo, hi = _ID_RANGES[k]
        p[k] = (lo + (hi - lo) * u[:, j]).float()
    p["beard"] = (p["beard"] < 0.15).float() * (0.5 + 0.4 * p["moustache"])
    p["moustache"] = torch.maximum((p["moustache"] < 0.2).float() * 0.85, p["beard"])
    chin = p["face_cy"] + p["face_h"]
    p["mouth_y"] = torch.minimum(p["nose_y"] + p["mouth_gap"], chin - 0.24)
    mm = m[:, : _NUM_MOLES * 4].view(-1, _NUM_MOLES, 4)
    p["mole_on"] = (mm[..., 0] < 0.4).float()
    p["mole_x"] = (mm[..., 1] * 2 - 1) * 0.55          # relative to the face half-width: mostly inner face
    p["mole_y"] = (mm[..., 2] * 2 - 1) * 0.50 + 0.05   # relative to the face half-height
    p["mole_r"] = 0.020 + 0.022 * mm[..., 3]
    s = m[:, _NUM_MOLES * 4:]
    p["scar_on"] = (s[:, 0] < 0.2).float()
    p["scar_x"] = (s[:, 1] * 2 - 1) * 0.5
    p["scar_y"] = (s[:, 2] * 2 - 1) * 0.45
    p["scar_a"] = s[:, 3] * math.pi
    p["scar_len"] = 0.07 + 0.12 * s[:, 4]
    p["scar_dark"] = (s[:, 5] < 0.5).float()
    return p


def identity_vectors(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """All identity parameters flattened to one row per identity."""
    return torch.cat([v.reshape(v.shape[0], -1) for _, v in sorted(params.items())], dim=1)


# ----------------------------------------------------------------------------------- image nuisance
def _draws(pool: str, ids: list[int], first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal and uniform draws for images ``first .. first+count-1`` of every identity in ``ids``."""
    if first < 0 or first + count > MAX_IMAGES:
        raise ArgumentError(f"synthetic2 has at most {MAX_IMAGES} images per identity")
    ns, us = [], []
    for i in ids:
        g = torch.Generator().manual_seed(derive_seed(0, "synthetic2-image", GENERATOR_VERSION, pool, int(i)))
        n = torch.randn(MAX_IMAGES, _NZ, generator=g)
        u = torch.rand(MAX_IMAGES, _NZ, generator=g)
        ns.append(n[first: first + count])
        us.append(u[first: first + count])
    if not ids:
        return torch.zeros(0, _NZ), torch.zeros(0, _NZ)
    return torch.cat(ns), torch.cat(us)


def sample_images(pool: str, ids: list[int], first: int, count: int,
                  variation: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image parameters (identity + nuisance) of images ``first..first+count-1`` of each identity.

    Returns (params, one row per image, identity-major; labels = the pool identity index of each row).
    """
    ids = [int(i) for i in ids]
    N, U = _draws(pool, ids, first, count)
    N = N.clamp(-2.5, 2.5)
    ident = sample_identities(pool, ids)
    p = {k: t.repeat_interleave(count, dim=0) for k, t in ident.items()}
    labels = torch.as_tensor(ids, dtype=torch.long).repeat_interleave(count)
    v = float(variation)
    _pose_expression(p, N, U, v)
    _hair_occluders(p, N, U, v)
    _scene(p, N, U, v)
    return p, labels


def _pose_expression(p: dict[str, torch.Tensor], N: torch.Tensor, U: torch.Tensor, v: float) -> None:
    p["tx"] = (0.035 * v) * N[:, 0]
    p["ty"] = (0.035 * v) * N[:, 1]
    p["scale"] = torch.exp((0.04 * v) * N[:, 2])
    p["rot"] = (0.06 * v) * N[:, 3]
    p["yaw"] = (0.6 * v) * (U[:, 0] * 2 - 1)
    blink = (U[:, 1] < 0.03 * min(v, 2.0)).float()
    p["eye_open"] = (1.0 - (0.25 * v) * U[:, 2]) * (1 - 0.75 * blink)
    p["gaze_x"] = (0.22 * v) * N[:, 4].clamp(-2, 2)
    p["gaze_y"] = (0.10 * v) * N[:, 5].clamp(-2, 2)
    p["brow_raise"] = (0.014 * v) * N[:, 6]
    expr = U[:, 3]                                     # 0..1: neutral .. broad smile
    p["smile"] = p["smile"] + (0.05 * v) * (expr > 0.6).float() * (expr - 0.6) / 0.4 + (0.01 * v) * N[:, 7]
    p["mouth_open"] = (0.035 * v) * ((U[:, 4] > 0.7).float() * (U[:, 4] - 0.7) / 0.3)
    p["mouth_w"] = p["mouth_w"] * (1 + (0.05 * v) * N[:, 8].clamp(-2, 2) + (0.10 * v) * (expr > 0.6).float())
    for k, j, sd in (("eye_y", 9, 0.005), ("nose_y", 10, 0.005), ("mouth_y", 11, 0.007)):
        p[k] = p[k] + (sd * v) * N[:, j]


def _hair_occluders(p: dict[str, torch.Tensor], N: torch.Tensor, U: torch.Tensor, v: float) -> None:
    # hair is re-styled for every image; it keeps the identity's tone only 60 % of the time (dye, light)
    keep = (U[:, 5] < 0.6).float()
    p["hair_tone"] = keep * (p["hair_tone"] + (0.10 * v) * N[:, 12]) + (1 - keep) * U[:, 6]
    p["grey"] = (U[:, 7] < 0.05).float()
    p["hairline"] = 0.50 + 0.30 * U[:, 8]              # above the face centre, relative to face_h
    p["hair_curve"] = -0.1 + 0.8 * U[:, 9]
    p["hair_part"] = (U[:, 10] * 2 - 1) * 0.35
    p["hair_vol"] = 0.02 + 0.20 * U[:, 11]
    p["hair_len"] = -0.3 + 1.6 * U[:, 12]
    p["fringe"] = (U[:, 13] < 0.3 * min(v, 2.0)).float()
    p["fringe_y"] = 0.05 + 0.20 * U[:, 14]             # fringe bottom above the brows
    p["fringe_wave"] = U[:, 15] * 2 * math.pi
    p["glasses"] = (U[:, 16] < 0.2 * min(v, 2.0)).float()
    p["glass_r"] = 0.15 + 0.05 * U[:, 17]
    p["glass_tone"] = U[:, 18]
    p["glass_sq"] = 1.8 + 2.5 * U[:, 19]               # round .. square rims


def _scene(p: dict[str, torch.Tensor], N: torch.Tensor, U: torch.Tensor, v: float) -> None:
    p["skin"] = p["skin"] + (0.10 * v) * N[:, 13]
    p["light_a"] = U[:, 20] * (2 * math.pi)
    p["light_s"] = (0.55 * v) * U[:, 21]
    p["bright"] = torch.exp((0.22 * v) * N[:, 14])
    p["contrast"] = torch.exp((0.15 * v) * N[:, 15])
    wb = N[:, 16:19]
    p["wb"] = torch.exp((0.12 * v) * (wb - wb.mean(1, keepdim=True)))
    p["bg1"] = U[:, 22:25]
    p["bg2"] = U[:, 25:28]
    p["bg_a"] = U[:, 28] * (2 * math.pi)
    p["bg_sharp"] = 1 + 8 * U[:, 29]
    p["cloth"] = U[:, 30:33] * 0.9 + 0.05
    p["blur"] = (0.8 * min(v, 1.4)) * U[:, 33]
    p["noise"] = (0.010 + 0.025 * U[:, 34]) * min(v, 2.0)
    p["tex_seed"] = (U[:, 35] * 2**24).long()
    p["bg_waves"] = U[:, 36:45]


def generate(pool: str, ids: list[int], first: int, count: int, resolution: int,
             variation: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Render images ``first..first+count-1`` of identities ``ids`` of ``pool``: (uint8 NCHW, labels)."""
    params, labels = sample_images(pool, ids, first, count, variation)
    imgs = render_faces2(params, resolution)
    return imgs.mul_(255).round_().to(torch.uint8), labels


def pool_images(pool: str, num_identities: int, first: int, count: int, resolution: int,
                variation: float = 1.0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``first..first+count-1`` of identities ``0..num_identities-1`` of ``pool`` (cached on disk)."""
    from .facecache import render_cached

    _check_pool(pool)
    ids = list(range(num_identities))
    if not ids:
        return torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    imgs = render_cached(lambda block: generate(pool, block, first, count, resolution, variation)[0],
                         pool, ids, first, count, resolution, variation)
    return imgs, torch.arange(num_identities).repeat_interleave(count)


# ----------------------------------------------------------------------------------- the family
_OPTIONS = {"num_private": 300, "num_public": 300, "train_per_id": PRIVATE_TRAIN, "test_per_id": PRIVATE_TEST,
            "public_per_id": 30, "variation": 1.0}
_PRETRAIN_OPTIONS = {"num_identities": 500, "images_per_id": 30, "variation": 1.0}


def _int_opt(name: str, value: Any, low: int, high: int) -> int:
    try:
        iv = int(value)
        ok = iv == float(value) and low <= iv <= high and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ArgumentError(f"synthetic2 option {name} must be an integer in [{low}, {high}], got {value!r}")
    return iv


def _variation(value: Any) -> float:
    try:
        var = float(value)
    except (TypeError, ValueError):
        var = -1.0
    if not 0 <= var <= 3:
        raise ArgumentError(f"synthetic2 option variation must be a number in [0, 3], got {value!r}")
    return var


def _resolution(resolution: Any) -> int:
    res = DEFAULT_RESOLUTION if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 16:
        raise ArgumentError(f"synthetic2 resolution must be an integer >= 16, got {res!r}")
    return res


def _check_options(options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ArgumentError(f"unknown synthetic2 option '{unknown[0]}'; allowed options: {', '.join(allowed)}")
    return {**allowed, **options}


def pretraining_pool(resolution: int | None = None, **options: Any) -> TensorImageSet:
    """The pretraining pool (identities disjoint from private and public; labels 0..num_identities-1).

    Options: num_identities (500, at most 1000), images_per_id (30, at most 64), variation (1.0).
    """
    opt = _check_options(options, _PRETRAIN_OPTIONS)
    n = _int_opt("num_identities", opt["num_identities"], 2, MAX_IDENTITIES)
    k = _int_opt("images_per_id", opt["images_per_id"], 1, MAX_IMAGES)
    imgs, labels = pool_images("pretrain", n, 0, k, _resolution(resolution), _variation(opt["variation"]))
    return TensorImageSet(imgs, labels)


@DATASETS.register("synthetic2", kind="embedded", default_resolution=DEFAULT_RESOLUTION,
                   options=dict(_OPTIONS), pretraining="500 ids x 30 (load_pretraining)",
                   generator_version=GENERATOR_VERSION)
def synthetic2(root: str | None = None, resolution: int | None = None, seed: int = 0,
               **options: Any) -> MISplits:
    """Synthetic faces v2 (embedded, 64 px, fixed identity pools; the default for new configs).

    Options: num_private (300), num_public (300), train_per_id (30), test_per_id (10), public_per_id
    (30), variation (1.0).  The identities and images are fixed per benchmark version: ``seed`` (the run
    seed) does not change them, and smaller options select a prefix of the same pools.  ``root`` is
    ignored.  The pretraining pool: ``load_pretraining("synthetic2")``.
    """
    opt = _check_options(options, _OPTIONS)
    res = _resolution(resolution)
    n_priv = _int_opt("num_private", opt["num_private"], 2, MAX_IDENTITIES)
    n_pub = _int_opt("num_public", opt["num_public"], 0, MAX_IDENTITIES)
    k_train = _int_opt("train_per_id", opt["train_per_id"], 1, PRIVATE_TRAIN)
    k_test = _int_opt("test_per_id", opt["test_per_id"], 1, PRIVATE_TEST)
    k_pub = _int_opt("public_per_id", opt["public_per_id"], 1, MAX_IMAGES)
    var = _variation(opt["variation"])
    train = TensorImageSet(*pool_images("private", n_priv, 0, k_train, res, var))
    test = TensorImageSet(*pool_images("private", n_priv, PRIVATE_TRAIN, k_test, res, var))
    public = TensorImageSet(*pool_images("public", n_pub, 0, k_pub, res, var))
    info = {"family": "synthetic2", "generator_version": GENERATOR_VERSION, "seed": int(seed),
            "seed_changes_images": False, "inner_box": list(INNER_BOX),
            "options": {"num_private": n_priv, "num_public": n_pub, "train_per_id": k_train, "test_per_id": k_test,
                        "public_per_id": k_pub, "variation": var}, "public_labels": "public identity index"}
    return MISplits(name="synthetic2", resolution=res, num_classes=n_priv, private_train=train, private_test=test,
                    public=public, class_names=[f"id{i:03d}" for i in range(n_priv)], info=info)


PRETRAINING_POOLS["synthetic2"] = pretraining_pool
