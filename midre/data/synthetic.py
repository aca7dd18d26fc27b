"""``synthetic``: procedurally generated face identities (midre's embedded default dataset).

Every identity is a vector of *local facial geometry*: face outline and jaw, hair line / volume /
length, ears, eye spacing / size / shape / tilt, brows (gap, length, thickness, tilt, arch), nose
(position, width, bridge), mouth (position, width, lips, smile), beard / moustache, and marks
(moles, a scar).  Every image of an identity adds nuisance, as in a real face data set:

* pose: shift, scale, in-plane rotation and a small yaw (inner features move against the outline);
* expression: eye opening, gaze, brow raise, smile and mouth opening, small jitter of every part;
* colour: skin and hair tone jitter, lighting direction and strength, brightness, contrast, white
  balance, background colour and texture, clothes colour -- per image at least as large as the spread
  between identities, so colour alone cannot tell people apart;
* camera: defocus blur and sensor noise.

Rendering is vectorised: every part is a soft shape (an approximate signed distance passed through a
sigmoid one pixel wide) evaluated on the pixel grid for a whole batch of images at once, so any
resolution works and 10,000 images at 32 px take a few seconds on two CPU cores
(``benchmarks/synthetic_data.py`` measures it).

Determinism: identity ``i`` of a group (``"private"`` or ``"public"``) is drawn from its own generator
seeded with ``derive_seed(seed, ..., group, i)``, and so are the nuisances of its images; changing the
number of identities or images never changes the faces that remain.  Private and public identities
come from different draws, so they never coincide.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from ..utils import derive_seed
from .base import DATASETS, MISplits, TensorImageSet
from .drawing import HAIR_PALETTE, IRIS_PALETTE, SKIN_DARK, SKIN_LIGHT, PosedGrid, over, palette, per_image, rgb

GENERATOR_VERSION = 1

# ----------------------------------------------------------------------------------- identity space
# name: (low, high); every identity draws each uniformly.  Face-local coordinates: x right, y down,
# the image spans [-1, 1] at unit scale.
_ID_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.50, 0.68),      # half-width of the face
    "face_h": (0.70, 0.86),      # half-height
    "face_cy": (0.04, 0.16),     # face centre (y)
    "jaw": (0.00, 0.45),         # taper of the lower face
    "chin_p": (1.35, 3.20),      # <2 pointed chin, >2 square jaw
    "hairline": (0.40, 0.72),    # distance of the hair line above the face centre
    "hair_curve": (-0.10, 0.70), # curvature of the hair line
    "hair_part": (-0.35, 0.35),  # slant of the fringe (parting side)
    "hair_peak": (-0.12, 0.18),  # widow's peak (>0) or central fringe (<0)
    "hair_vol": (0.02, 0.18),    # hair volume around the head
    "hair_len": (-0.25, 1.20),   # how far down the side hair reaches (relative to the face centre)
    "ear_y": (-0.05, 0.12),
    "ear_h": (0.08, 0.16),
    "eye_y": (-0.16, -0.02),
    "eye_sep": (0.18, 0.30),     # half distance between the eye centres
    "eye_w": (0.075, 0.135),
    "eye_h": (0.032, 0.068),
    "eye_tilt": (-0.30, 0.30),   # radians, outer corner up (>0)
    "eye_p": (1.4, 3.0),         # eye shape exponent: almond (<2) .. round (>2)
    "iris": (0.55, 0.90),        # iris radius relative to the eye height
    "brow_gap": (0.07, 0.16),
    "brow_dx": (-0.03, 0.04),
    "brow_len": (0.09, 0.19),
    "brow_t": (0.022, 0.060),
    "brow_tilt": (-0.35, 0.35),
    "brow_arch": (-0.01, 0.06),
    "nose_y": (0.15, 0.32),
    "nose_w": (0.045, 0.11),
    "nose_bridge": (0.012, 0.035),
    "mouth_gap": (0.13, 0.26),   # mouth below the nose
    "mouth_w": (0.10, 0.22),
    "lip_t": (0.018, 0.050),
    "smile": (-0.035, 0.050),
    "neck_w": (0.18, 0.30),
    "skin": (0.25, 0.80),        # skin tone on a dark..light line (identity mean)
    "hair_tone": (0.0, 1.0),     # black .. brown .. blonde
    "iris_tone": (0.0, 1.0),
    # discrete traits (thresholded uniforms)
    "beard": (0.0, 1.0),
    "moustache": (0.0, 1.0),
    "grey": (0.0, 1.0),
}
_NUM_MOLES = 3
_ID_KEYS = list(_ID_RANGES)




def sample_identities(seed: int, group: str, count: int) -> dict[str, torch.Tensor]:
    """Draw ``count`` identities of ``group``; returns name -> tensor of shape (count,) (marks: (count, k)).

    Identity ``i`` depends only on ``(seed, group, i)``.
    """
    rows = []
    marks = []
    for i in range(count):
        g = torch.Generator().manual_seed(derive_seed(seed, "synthetic-identity", GENERATOR_VERSION, group, i))
        rows.append(torch.rand(len(_ID_KEYS), generator=g, dtype=torch.float64))
        # moles: presence, position on the face (x, y in face units), radius; scar: presence, centre, angle, length
        marks.append(torch.rand(_NUM_MOLES * 4 + 6, generator=g, dtype=torch.float64))
    u = torch.stack(rows) if rows else torch.zeros(0, len(_ID_KEYS), dtype=torch.float64)
    m = torch.stack(marks) if marks else torch.zeros(0, _NUM_MOLES * 4 + 6, dtype=torch.float64)
    p = {}
    for j, k in enumerate(_ID_KEYS):
        lo, hi = _ID_RANGES[k]
        p[k] = (lo + (hi - lo) * u[:, j]).float()
    # traits
    p["beard"] = (p["beard"] < 0.22).float() * (0.55 + 0.4 * u[:, _ID_KEYS.index("moustache")].float())
    p["moustache"] = torch.maximum((p["moustache"] < 0.25).float() * 0.8, p["beard"])
    p["grey"] = (p["grey"] < 0.08).float()
    # keep the mouth above the chin
    chin = p["face_cy"] + p["face_h"]
    mouth_y = p["nose_y"] + p["mouth_gap"]
    p["mouth_y"] = torch.minimum(mouth_y, chin - 0.22)
    mm = m[:, : _NUM_MOLES * 4].view(-1, _NUM_MOLES, 4).float()
    p["mole_on"] = (mm[..., 0] < 0.45).float()
    p["mole_x"] = (mm[..., 1] * 2 - 1) * 0.75          # relative to the face half-width
    p["mole_y"] = (mm[..., 2] * 2 - 1) * 0.75          # relative to the face half-height
    p["mole_r"] = 0.018 + 0.022 * mm[..., 3]
    s = m[:, _NUM_MOLES * 4:].float()
    p["scar_on"] = (s[:, 0] < 0.25).float()
    p["scar_x"] = (s[:, 1] * 2 - 1) * 0.6
    p["scar_y"] = (s[:, 2] * 2 - 1) * 0.6
    p["scar_a"] = s[:, 3] * math.pi
    p["scar_len"] = 0.06 + 0.12 * s[:, 4]
    p["scar_dark"] = (s[:, 5] < 0.5).float()
    return p


def identity_vectors(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """All identity parameters of ``sample_identities`` flattened to one row per identity."""
    cols = [v.reshape(v.shape[0], -1) for _, v in sorted(params.items())]
    return torch.cat(cols, dim=1)


# ----------------------------------------------------------------------------------- image nuisance
def sample_images(identities: dict[str, torch.Tensor], images_per_id: int, seed: int, group: str,
                  variation: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image parameters (identity geometry + nuisance) for ``images_per_id`` images of every identity.

    Returns (params with one row per image, labels).  ``variation`` scales every nuisance (1 = default).
    """
    n = next(iter(identities.values())).shape[0]
    k = images_per_id
    v = float(variation)
    nz_rows = []
    for i in range(n):
        g = torch.Generator().manual_seed(derive_seed(seed, "synthetic-image", GENERATOR_VERSION, group, i))
        nz_rows.append((torch.randn(k, 32, generator=g), torch.rand(k, 32, generator=g)))
    N = torch.cat([a for a, _ in nz_rows]) if nz_rows else torch.zeros(0, 32)
    U = torch.cat([b for _, b in nz_rows]) if nz_rows else torch.zeros(0, 32)
    labels = torch.arange(n).repeat_interleave(k)
    p = {name: t.repeat_interleave(k, dim=0) for name, t in identities.items()}

    # pose
    p["tx"] = (0.05 * v) * N[:, 0].clamp(-2.5, 2.5)
    p["ty"] = (0.05 * v) * N[:, 1].clamp(-2.5, 2.5)
    p["scale"] = torch.exp((0.06 * v) * N[:, 2].clamp(-2.5, 2.5))
    p["rot"] = (0.10 * v) * N[:, 3].clamp(-2.5, 2.5)
    p["yaw"] = (0.9 * v) * (U[:, 0] * 2 - 1)
    # expression and part jitter
    blink = (U[:, 1] < 0.04 * min(v, 2.0)).float()
    p["eye_open"] = (1.0 - (0.25 * v) * U[:, 2]) * (1 - 0.75 * blink)
    p["gaze_x"] = (0.25 * v) * N[:, 4].clamp(-2, 2)
    p["gaze_y"] = (0.12 * v) * N[:, 5].clamp(-2, 2)
    p["brow_raise"] = (0.015 * v) * N[:, 6].clamp(-2.5, 2.5)
    p["smile"] = p["smile"] + (0.018 * v) * N[:, 7].clamp(-2.5, 2.5)
    p["mouth_open"] = (0.030 * v) * (N[:, 8].clamp(min=0) ** 2).clamp(max=2.0)
    p["mouth_w"] = p["mouth_w"] * (1 + (0.06 * v) * N[:, 9].clamp(-2, 2))
    p["eye_y"] = p["eye_y"] + (0.006 * v) * N[:, 10].clamp(-2, 2)
    p["nose_y"] = p["nose_y"] + (0.006 * v) * N[:, 11].clamp(-2, 2)
    p["mouth_y"] = p["mouth_y"] + (0.008 * v) * N[:, 12].clamp(-2, 2)
    p["hair_vol"] = p["hair_vol"] * (1 + (0.15 * v) * N[:, 13].clamp(-2, 2))
    # colour: identity tone + per-image jitter, then scene illumination
    p["skin"] = p["skin"] + (0.12 * v) * N[:, 14].clamp(-2.5, 2.5)
    p["hair_tone"] = p["hair_tone"] + (0.10 * v) * N[:, 15].clamp(-2.5, 2.5)
    p["light_a"] = U[:, 3] * (2 * math.pi)
    p["light_s"] = (0.45 * v) * U[:, 4]
    p["bright"] = torch.exp((0.25 * v) * N[:, 16].clamp(-2.5, 2.5))
    p["contrast"] = torch.exp((0.15 * v) * N[:, 17].clamp(-2.5, 2.5))
    wb = torch.stack([N[:, 18], N[:, 19], N[:, 20]], 1).clamp(-2.5, 2.5)
    p["wb"] = torch.exp((0.13 * v) * (wb - wb.mean(1, keepdim=True)))
    p["bg1"] = torch.stack([U[:, 5], U[:, 6], U[:, 7]], 1)
    p["bg2"] = torch.stack([U[:, 8], U[:, 9], U[:, 10]], 1)
    p["bg_a"] = U[:, 11] * (2 * math.pi)
    p["bg_sharp"] = 1 + 8 * U[:, 12]
    p["cloth"] = torch.stack([U[:, 13], U[:, 14], U[:, 15]], 1) * 0.9 + 0.05
    p["vneck"] = 0.25 * U[:, 16]
    p["blur"] = (0.7 * min(v, 1.4)) * U[:, 17]
    p["noise"] = (0.012 + 0.03 * U[:, 18]) * min(v, 2.0)
    p["tex_seed"] = (U[:, 19] * 2**24).long()
    return p, labels


# ----------------------------------------------------------------------------------- rendering
class _Geometry(PosedGrid):
    """The v1 face frame on top of the posed grid: yaw offsets and the face's size and centre."""

    def __init__(self, p: dict[str, torch.Tensor], res: int):
        super().__init__(p, res)
        self.B = p["face_w"].shape[0]
        yaw = per_image(p["yaw"])
        self.fx = 0.03 * yaw             # outline centre
        self.gx = 0.10 * yaw             # inner features (closer to the camera: move more)
        self.fw, self.fh, self.cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
        self.du = self.u - self.fx
        self.dv = self.v - self.cy


def _colours_v1(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # colours
    skin = palette(p["skin"], (SKIN_DARK, SKIN_LIGHT))
    hair = palette(p["hair_tone"], HAIR_PALETTE)
    grey = p["grey"].view(-1, 1)
    hair = hair * (1 - grey) + grey * torch.tensor([0.62, 0.60, 0.58])
    skin, hair = rgb(skin), rgb(hair)
    iris = rgb(palette(p["iris_tone"], IRIS_PALETTE))

    return skin, hair, iris


def _background_v1(p: dict[str, torch.Tensor], g: _Geometry, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, X, Y = g.B, g.X, g.Y
    # background: two colours blended along a random direction + low-frequency texture
    # per-image random fields (texture, sensor noise) from each image's own seed: an image depends only
    # on its parameters, never on the batch it is rendered in
    tex_small = torch.empty(B, 1, 5, 5)
    noise = torch.empty(B, 3, res, res)
    g = torch.Generator()
    for i, ts in enumerate(p["tex_seed"].tolist()):
        g.manual_seed(int(ts))
        tex_small[i] = torch.rand(1, 5, 5, generator=g)
        noise[i] = torch.randn(3, res, res, generator=g)
    tex = F.interpolate(tex_small, size=(res, res), mode="bicubic", align_corners=False)
    ba = per_image(p["bg_a"])
    ramp = torch.sigmoid(per_image(p["bg_sharp"]) * (torch.cos(ba) * X + torch.sin(ba) * Y) + 2.0 * (tex - 0.5))
    img = rgb(p["bg1"]) + (rgb(p["bg2"]) - rgb(p["bg1"])) * ramp

    return img, noise


def _body_v1(p, g: _Geometry, img, skin, hair):
    """Clothes, neck, ears and the hair mass behind the face; returns the image and the hair mask."""
    v, du, dv, fw, fh, cy, soft = g.v, g.du, g.dv, g.fw, g.fh, g.cy, g.soft
    # clothes and neck
    nw = per_image(p["neck_w"])
    chin = cy + fh
    clothes_top = chin + 0.06 + 0.18 * du.abs() + per_image(p["vneck"]) * torch.relu(1 - du.abs() / nw)
    img = over(img, rgb(p["cloth"]), soft(clothes_top - v))
    neck = torch.maximum(du.abs() - nw, cy + 0.2 - v)
    img = over(img, skin * 0.82, soft(neck))

    # ears
    ear_x = fw * (1 - 0.35 * per_image(p["jaw"]) * ((per_image(p["ear_y"]) / fh).clamp(0, 1)) ** 2)
    for sgn in (-1.0, 1.0):
        ex = (du - sgn * (ear_x + 0.01)) / 0.065
        ey = (v - cy - per_image(p["ear_y"])) / per_image(p["ear_h"])
        img = over(img, skin * 0.92, soft((torch.sqrt(ex * ex + ey * ey) - 1) * 0.065))

    # hair mass behind / around the face
    hv = per_image(p["hair_vol"])
    hx = du / (fw + hv)
    hy = (dv + 0.5 * hv) / (fh + hv)
    head = (torch.sqrt(hx * hx + hy * hy) - 1) * (fw + hv)
    hl = per_image(p["hair_len"])
    side_bottom = v - (cy + hl)
    hair_mass = torch.maximum(head, side_bottom)
    long_hair = torch.maximum(torch.maximum(du.abs() - (fw + hv + 0.04), -0.1 - dv), v - (cy + hl))
    hair_mass = torch.minimum(hair_mass, long_hair)
    img = over(img, hair, soft(hair_mass))

    return img, hair_mass


def _face_v1(p, g: _Geometry, img, skin, hair, hair_mass):
    """Face (below the hairline) and beard; returns the image, the face mask, the below-hairline mask and
    the foreground (face or hair) mask."""
    u, v, du, dv, fw, fh, cy, gx, soft = g.u, g.v, g.du, g.dv, g.fw, g.fh, g.cy, g.gx, g.soft
    # face
    t = (dv / fh).clamp(0, 1)
    w = fw * (1 - per_image(p["jaw"]) * t * t)
    pe = torch.where(dv > 0, per_image(p["chin_p"]), torch.full_like(dv, 2.0))
    f = (du.abs() / w).clamp(min=1e-6) ** pe + (dv / fh) ** 2
    face_d = (torch.sqrt(f) - 1) * (0.8 * fw)
    hx0 = u - gx
    hairline_y = (cy - per_image(p["hairline"]) + per_image(p["hair_curve"]) * hx0 * hx0
                  + per_image(p["hair_part"]) * hx0
                  + per_image(p["hair_peak"]) * torch.exp(-hx0 * hx0 / 0.012))
    below_hairline = soft(hairline_y - v)
    face_m = soft(face_d)
    img = over(img, skin, face_m * below_hairline)
    fg = torch.maximum(face_m, soft(hair_mass))

    # beard / moustache (hair-coloured, partially transparent)
    my = per_image(p["mouth_y"])
    beard = torch.maximum(torch.maximum(face_d, my - 0.02 - v), du.abs() - 0.8 * fw)
    beard_m = soft(beard) * per_image(p["beard"]) * 0.7
    img = over(img, hair * 0.9, beard_m)

    return img, face_m, below_hairline, fg


def _eyes_v1(p, g: _Geometry, img, skin, iris):
    u, v, gx, soft, stroke = g.u, g.v, g.gx, g.soft, g.stroke
    # eyes: socket shadow, sclera, iris, pupil
    ey0 = per_image(p["eye_y"])
    ew, eh = per_image(p["eye_w"]), per_image(p["eye_h"]) * per_image(p["eye_open"])
    tilt = per_image(p["eye_tilt"])
    ept = per_image(p["eye_p"])
    for sgn in (-1.0, 1.0):
        cx = gx + sgn * per_image(p["eye_sep"])
        ax, ay = u - cx, v - ey0
        ct, st = torch.cos(tilt), torch.sin(tilt) * sgn
        a = ct * ax + st * ay
        b = -st * ax + ct * ay
        sock = ((a / (ew * 1.35)).abs().clamp(min=1e-6) ** 2 + (b / (eh * 1.6 + 0.02)) ** 2).sqrt()
        img = over(img, skin * 0.72, soft((sock - 1) * (eh + 0.02)) * 0.7)
        eyef = ((a / ew).abs().clamp(min=1e-6) ** ept + (b / eh.clamp(min=1e-3)) ** 2).sqrt()
        eye_m = soft((eyef - 1) * eh)
        img = over(img, torch.tensor([0.93, 0.91, 0.88]).view(1, 3, 1, 1), eye_m)
        ir = per_image(p["iris"]) * per_image(p["eye_h"])
        ix = ax - per_image(p["gaze_x"]) * ew
        iy = ay - per_image(p["gaze_y"]) * per_image(p["eye_h"])
        rr = torch.sqrt(ix * ix + iy * iy)
        img = over(img, iris, soft(rr - ir) * eye_m)
        img = over(img, torch.zeros(1, 3, 1, 1) + 0.03, soft(rr - 0.45 * ir) * eye_m)
        # upper lid line (dark)
        lid = stroke((eyef - 1.15).abs() * eh, torch.full_like(eh, 0.012), b)
        img = over(img, skin * 0.25, lid * 0.8)

    return img


def _brows_v1(p, g: _Geometry, img, hair):
    u, v, gx, stroke = g.u, g.v, g.gx, g.stroke
    ey0 = per_image(p["eye_y"])
    # brows
    bl, bt = per_image(p["brow_len"]), per_image(p["brow_t"])
    btilt = per_image(p["brow_tilt"])
    by = ey0 - per_image(p["brow_gap"]) - per_image(p["eye_h"]) - per_image(p["brow_raise"])
    for sgn in (-1.0, 1.0):
        cx = gx + sgn * (per_image(p["eye_sep"]) + per_image(p["brow_dx"]))
        ax, ay = u - cx, v - by
        ct, st = torch.cos(btilt), torch.sin(btilt) * sgn
        a = ct * ax + st * ay
        b = -st * ax + ct * ay
        centre = -per_image(p["brow_arch"]) * (1 - (a / bl) ** 2)
        brow = stroke((b - centre).abs(), bt / 2 * (1 - 0.5 * (a / bl).clamp(-1, 1) * sgn), a.abs() - bl)
        img = over(img, hair * 0.75, brow * 0.95)

    return img


def _nose_v1(p, g: _Geometry, img, skin):
    u, v, gx, soft, stroke = g.u, g.v, g.gx, g.soft, g.stroke
    ey0 = per_image(p["eye_y"])
    # nose: bridge shadow on the side away from the light, tip, nostrils
    ny = per_image(p["nose_y"])
    nwid = per_image(p["nose_w"])
    side = torch.sign(torch.cos(per_image(p["light_a"])) + 1e-6)
    bridge_x = gx - side * (0.6 * nwid)
    bridge = stroke((u - bridge_x).abs(), per_image(p["nose_bridge"]), torch.maximum(ey0 + 0.04 - v, v - ny))
    img = over(img, skin * 0.7, bridge * 0.6)
    tip = torch.sqrt(((u - gx) / nwid) ** 2 + ((v - ny) / 0.045) ** 2)
    img = over(img, skin * 1.08, soft((tip - 1) * 0.045) * 0.5)
    for sgn in (-1.0, 1.0):
        nx = gx + sgn * 0.55 * nwid
        nr = torch.sqrt(((u - nx) / (0.45 * nwid)) ** 2 + ((v - ny - 0.025) / 0.018) ** 2)
        img = over(img, skin * 0.3, soft((nr - 1) * 0.018))

    return img


def _mouth_v1(p, g: _Geometry, img, skin, hair):
    u, v, gx, soft, stroke = g.u, g.v, g.gx, g.soft, g.stroke
    my = per_image(p["mouth_y"])
    mw = per_image(p["mouth_w"])
    # mouth: lips with a smile curve, dark opening
    a = u - gx
    mc = my - per_image(p["smile"]) * (a / mw) ** 2
    taper = torch.sqrt((1 - (a / mw) ** 2).clamp(min=0))
    mo = per_image(p["mouth_open"])
    lips = torch.maximum((v - mc).abs() - (per_image(p["lip_t"]) * taper + mo / 2), a.abs() - mw)
    lip_col = skin * torch.tensor([0.85, 0.50, 0.50]).view(1, 3, 1, 1)
    img = over(img, lip_col, soft(lips))
    gap = stroke((v - mc).abs(), mo / 2 + 0.004, a.abs() - mw * 0.95)
    img = over(img, skin * 0.2, gap * 0.9)
    # moustache over the upper lip
    ms = torch.maximum(torch.maximum(v - (mc - per_image(p["lip_t"]) - 0.005), mc - per_image(p["lip_t"]) - 0.06 - v),
                       a.abs() - mw * 1.05)
    img = over(img, hair * 0.8, soft(ms) * per_image(p["moustache"]) * 0.9)

    return img


def _marks_v1(p, g: _Geometry, img, skin, face_m, below_hairline):
    u, v, fx, fw, fh, cy, soft, stroke = g.u, g.v, g.fx, g.fw, g.fh, g.cy, g.soft, g.stroke
    # marks: moles and a scar, placed relative to the face
    for j in range(p["mole_on"].shape[1]):
        mx = fx + per_image(p["mole_x"][:, j]) * fw
        myy = cy + per_image(p["mole_y"][:, j]) * fh * 0.9
        r = torch.sqrt((u - mx) ** 2 + (v - myy) ** 2) - per_image(p["mole_r"][:, j])
        img = over(img, skin * 0.35, soft(r) * per_image(p["mole_on"][:, j]) * face_m * below_hairline)
    sx = fx + per_image(p["scar_x"]) * fw
    sy = cy + per_image(p["scar_y"]) * fh
    sa = per_image(p["scar_a"])
    along = torch.cos(sa) * (u - sx) + torch.sin(sa) * (v - sy)
    across = -torch.sin(sa) * (u - sx) + torch.cos(sa) * (v - sy)
    scar = stroke(across.abs(), torch.full_like(sa, 0.011), along.abs() - per_image(p["scar_len"]))
    scar_col = torch.where(per_image(p["scar_dark"]) > 0, skin * 0.55, skin * 1.25 + 0.05)
    img = over(img, scar_col, scar * per_image(p["scar_on"]) * face_m * below_hairline * 0.9)

    return img


def _camera_v1(p, g: _Geometry, img, fg, noise):
    """Illumination of the head (directional light + roundness), then the camera."""
    du, dv, fw, fh = g.du, g.dv, g.fw, g.fh
    la = per_image(p["light_a"])
    shade = 1 + per_image(p["light_s"]) * (torch.cos(la) * du / fw + torch.sin(la) * dv / fh) * 0.6
    shade = shade * (1 - 0.18 * (du / fw).clamp(-1.3, 1.3) ** 2)
    img = img * (1 + (shade - 1) * fg)
    img = img * rgb(p["wb"]) * per_image(p["bright"])
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * per_image(p["contrast"]) + mean
    blurred = F.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)
    img = img + (blurred - img) * per_image(p["blur"])
    img = img + per_image(p["noise"]) * noise
    return img.clamp_(0, 1)




def _render_chunk(p: dict[str, torch.Tensor], res: int) -> torch.Tensor:
    g = _Geometry(p, res)
    skin, hair, iris = _colours_v1(p)
    img, noise = _background_v1(p, g, res)
    img, hair_mass = _body_v1(p, g, img, skin, hair)
    img, face_m, below_hairline, fg = _face_v1(p, g, img, skin, hair, hair_mass)
    img = _eyes_v1(p, g, img, skin, iris)
    img = _brows_v1(p, g, img, hair)
    img = _nose_v1(p, g, img, skin)
    img = _mouth_v1(p, g, img, skin, hair)
    img = _marks_v1(p, g, img, skin, face_m, below_hairline)
    return _camera_v1(p, g, img, fg, noise)


def render_faces(params: dict[str, torch.Tensor], resolution: int, chunk: int = 128) -> torch.Tensor:
    """Render per-image parameters (from :func:`sample_images`) to float images (B, 3, R, R) in [0, 1].

    Rendering is chunked for memory; every image depends only on its own parameters.
    """
    if not isinstance(resolution, int) or resolution < 8:
        raise ArgumentError(f"synthetic resolution must be an integer >= 8, got {resolution!r}")
    n = params["face_w"].shape[0]
    out = torch.empty(n, 3, resolution, resolution)
    # Many small element-wise ops: one thread on cache-sized chunks is fastest, and it stays fast on a
    # busy machine where intra-op threads would contend (measured: 2 threads up to 10x slower there).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for lo in range(0, n, chunk):
                sub = {k: t[lo: lo + chunk] for k, t in params.items()}
                out[lo: lo + chunk] = _render_chunk(sub, resolution)
    finally:
        torch.set_num_threads(threads)
    return out


def generate_faces(seed: int, group: str, num_identities: int, images_per_id: int, resolution: int,
                   variation: float = 1.0, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N*K x 3 x R x R) and labels (identity index) of one group of synthetic identities."""
    ids = sample_identities(seed, group, num_identities)
    params, labels = sample_images(ids, images_per_id, seed, group, variation)
    imgs = render_faces(params, resolution, chunk=chunk)
    return imgs.mul_(255).round_().to(torch.uint8), labels


# ----------------------------------------------------------------------------------- the family
_OPTIONS = {"num_private": 50, "num_public": 50, "images_per_id": 60, "test_fraction": 0.2, "variation": 1.0}


def _int_opt(name: str, value: Any, low: int) -> int:
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"synthetic option {name} must be an integer >= {low}, got {value!r}") from None
    if iv != float(value) or iv < low:
        raise ArgumentError(f"synthetic option {name} must be an integer >= {low}, got {value!r}")
    return iv


@DATASETS.register("synthetic", kind="embedded", default_resolution=32,
                   options=dict(_OPTIONS))
def synthetic(root: str | None = None, resolution: int | None = None, seed: int = 0,
              **options: Any) -> MISplits:
    """Procedural face identities (embedded, no download); identity lives in local facial geometry.

    Options: num_private (50), num_public (50), images_per_id (60), test_fraction (0.2), variation (1.0,
    scales all per-image nuisance).  ``root`` is ignored.  Private images of each identity are split into
    train (first) and test (last ``round(images_per_id * test_fraction)``); public labels are public
    identity indices, disjoint from the private identities.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ArgumentError(f"unknown synthetic option '{unknown[0]}'; allowed options: {', '.join(_OPTIONS)}")
    opt = {**_OPTIONS, **options}
    res = 32 if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 8:
        raise ArgumentError(f"synthetic resolution must be an integer >= 8, got {res!r}")
    n_priv = _int_opt("num_private", opt["num_private"], 2)
    n_pub = _int_opt("num_public", opt["num_public"], 0)
    k = _int_opt("images_per_id", opt["images_per_id"], 2)
    try:
        tf = float(opt["test_fraction"])
        var = float(opt["variation"])
    except (TypeError, ValueError):
        raise ArgumentError("synthetic options test_fraction and variation must be numbers") from None
    if not 0 < tf < 1:
        raise ArgumentError(f"synthetic option test_fraction must be in (0, 1), got {tf}")
    if not 0 <= var <= 3:
        raise ArgumentError(f"synthetic option variation must be in [0, 3], got {var}")
    n_test = min(max(1, int(round(k * tf))), k - 1)

    imgs, labels = generate_faces(seed, "private", n_priv, k, res, var)
    within = torch.arange(len(labels)) % k
    is_test = within >= k - n_test
    train = TensorImageSet(imgs[~is_test], labels[~is_test])
    test = TensorImageSet(imgs[is_test], labels[is_test])
    if n_pub > 0:
        pimgs, plabels = generate_faces(seed, "public", n_pub, k, res, var)
    else:
        pimgs, plabels = torch.zeros(0, 3, res, res, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    public = TensorImageSet(pimgs, plabels)
    info = {"family": "synthetic", "generator_version": GENERATOR_VERSION, "seed": int(seed),
            "options": {"num_private": n_priv, "num_public": n_pub, "images_per_id": k, "test_fraction": tf,
                        "variation": var}, "public_labels": "public identity index"}
    return MISplits(name="synthetic", resolution=res, num_classes=n_priv, private_train=train,
                    private_test=test, public=public, class_names=[f"id{i:03d}" for i in range(n_priv)],
                    info=info)
