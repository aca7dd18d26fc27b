"""Vectorised renderer of the ``synthetic2`` faces (parameters from :mod:`midre.data.synthetic2`).

Every part is a soft shape (an approximate signed distance through a one-pixel linear ramp) evaluated
on the pixel grid for a whole chunk of images at once, composited back to front: background, hair
mass, neck and clothes, ears, face, hair line and fringe, eyes, brows, nose, mouth, facial hair,
marks, glasses; then illumination, colour cast, contrast, blur and noise.  Every image depends only
on its own parameters (never on the chunk it is rendered in).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from ..utils import derive_seed
from .drawing import HAIR_PALETTE, IRIS_PALETTE, SKIN_DARK, SKIN_LIGHT, PosedGrid, palette, per_image, rgb

_LIP_PALETTE = ((0.80, 0.45, 0.45), (0.62, 0.28, 0.30), (0.88, 0.55, 0.52))
_SCLERA = (0.93, 0.91, 0.88)


class _Canvas(PosedGrid):
    """The posed grid of a chunk (:class:`midre.data.drawing.PosedGrid`), restrictable to some images."""

    def subset(self, idx: torch.Tensor) -> _Canvas:
        """The same canvas for the images ``idx`` only."""
        cv = object.__new__(_Canvas)
        cv.X, cv.Y, cv.u, cv.v = self.X, self.Y, self.u[idx], self.v[idx]
        cv.e, cv._k = self.e[idx], self._k[idx]
        return cv


def _rotated(cv: _Canvas, cx, cy, angle):
    """Coordinates (a along, b across) in a frame centred at (cx, cy) rotated by ``angle``."""
    ax, ay = cv.u - cx, cv.v - cy
    ct, st = torch.cos(angle), torch.sin(angle)
    return ct * ax + st * ay, -st * ax + ct * ay


_NOISE_BANK: dict[int, torch.Tensor] = {}


def _noise_bank(res: int) -> torch.Tensor:
    """256 fixed Gaussian noise fields per resolution (seeded): images pick one and shift it cyclically."""
    if res not in _NOISE_BANK:
        g = torch.Generator().manual_seed(derive_seed(0, "synthetic2-noise-bank", res))
        _NOISE_BANK[res] = torch.randn(256, 3, res, res, generator=g)
    return _NOISE_BANK[res]


def _random_fields(p: dict[str, torch.Tensor], cv: _Canvas) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image background texture (three random low-frequency waves) and sensor noise (one of 256
    fixed fields, with a random sign)."""
    t = p["bg_waves"]                                  # (B, 9) in [0, 1): angle, frequency, phase x 3
    tex = torch.zeros_like(cv.u[:, :1]) + 0.5
    for k in range(3):
        a, f, ph = t[:, 3 * k] * 6.2832, 1.0 + 3.0 * t[:, 3 * k + 1], t[:, 3 * k + 2] * 6.2832
        tex = tex + (0.5 / 3) * torch.cos(per_image(f * torch.cos(a)) * cv.X + per_image(f * torch.sin(a)) * cv.Y
                                          + per_image(ph))
    seeds = p["tex_seed"]
    sign = (seeds // 256 % 2).float() * 2 - 1
    return tex, _noise_bank(cv.X.shape[-1])[seeds % 256] * per_image(sign * p["noise"])


def _colours(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hair = palette(p["hair_tone"], HAIR_PALETTE)
    grey = p["grey"].view(-1, 1)
    hair = hair * (1 - grey) + grey * torch.tensor([0.62, 0.60, 0.58])
    skin = palette(p["skin"], (SKIN_DARK, SKIN_LIGHT))
    # brows and facial hair: identity darkness mixed with the (per-image) hair colour
    brow = palette(1 - p["brow_dark"], ((0.06, 0.05, 0.05), (0.45, 0.33, 0.22))) * 0.7 + hair * 0.3
    return {"hair": rgb(hair), "skin": rgb(skin), "brow": rgb(brow),
            "iris": rgb(palette(p["iris_tone"], IRIS_PALETTE)),
            "lip": rgb(palette(p["lip_tone"], _LIP_PALETTE)) * rgb(skin).mul(0.5).add(0.5)}


def _head(cv: _Canvas, p, col, img, tex):
    """Background, hair mass, clothes, neck, ears and the face; returns (img, geometry dict)."""
    u, v, soft = cv.u, cv.v, cv.soft
    ba = per_image(p["bg_a"])
    ramp = torch.sigmoid(per_image(p["bg_sharp"]) * (torch.cos(ba) * cv.X + torch.sin(ba) * cv.Y) + 2.0 * (tex - 0.5))
    img = rgb(p["bg1"]) + (rgb(p["bg2"]) - rgb(p["bg1"])) * ramp
    yaw = per_image(p["yaw"])
    fx, gx = 0.03 * yaw, 0.09 * yaw                   # outline and inner features (move more)
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    du, dv = u - fx, v - cy
    # hair mass behind the head (per-image style)
    hv = per_image(p["hair_vol"])
    hx, hy = du / (fw + hv), (dv + 0.5 * hv) / (fh + hv)
    head = (torch.sqrt(hx * hx + hy * hy) - 1) * (fw + hv)
    hl = cy + per_image(p["hair_len"])
    long_hair = torch.maximum(torch.maximum(du.abs() - (fw + hv + 0.05), -0.1 - dv), v - hl)
    hair_mass = torch.minimum(torch.maximum(head, v - hl), long_hair)
    # clothes and neck
    chin = cy + fh
    img = img.lerp_(rgb(p["cloth"]), soft(chin + 0.02 + 0.25 * du.abs() - v))
    img = img.lerp_(col["skin"] * 0.8, soft(torch.maximum(du.abs() - 0.42 * fw, cy + 0.3 - v)))
    img = img.lerp_(col["hair"], soft(hair_mass))
    # ears
    for sgn in (-1.0, 1.0):
        ex = (du - sgn * (fw + 0.015)) / 0.07
        ey = (v - cy - per_image(p["ear_y"])) / per_image(p["ear_h"])
        img = img.lerp_(col["skin"] * 0.9, soft((torch.sqrt(ex * ex + ey * ey) - 1) * 0.07))
    # face outline: ellipse above, jaw taper and chin exponent below
    t = (dv / fh).clamp(0, 1)
    w = fw * (1 - per_image(p["jaw"]) * t * t)
    pe = torch.where(dv > 0, per_image(p["chin_p"]), torch.full_like(dv, 2.0))
    face_d = (torch.sqrt((du.abs() / w).clamp(min=1e-6) ** pe + (dv / fh) ** 2) - 1) * (0.8 * fw)
    face_m = soft(face_d)
    hx0 = u - gx
    hairline = (cy - per_image(p["hairline"]) * fh + per_image(p["hair_curve"]) * hx0 * hx0
                + per_image(p["hair_part"]) * hx0)
    skin_m = face_m * soft(hairline - v)
    img = img.lerp_(col["skin"], skin_m)
    fg = torch.maximum(face_m, soft(hair_mass))
    return img, {"head": head, "gx": gx, "fx": fx, "du": du, "dv": dv, "face_d": face_d, "skin_m": skin_m, "fg": fg}


def _eyes(cv: _Canvas, p, col, img, gx):
    soft = cv.soft
    ey0 = per_image(p["eye_y"])
    ew, eh0 = per_image(p["eye_w"]), per_image(p["eye_h"])
    eh = eh0 * per_image(p["eye_open"])
    ept = per_image(p["eye_p"])
    for sgn in (-1.0, 1.0):
        cx = gx + sgn * per_image(p["eye_sep"])
        a, b = _rotated(cv, cx, ey0, per_image(p["eye_tilt"]) * sgn)
        sock = ((a / (ew * 1.4)) ** 2 + (b / (eh0 * 1.7 + 0.02)) ** 2).sqrt()
        img = img.lerp_(col["skin"] * 0.7, soft((sock - 1) * (eh0 + 0.02)) * (0.4 + 0.4 * per_image(p["lid"])))
        eyef = ((a / ew).abs().clamp(min=1e-6) ** ept + (b / eh.clamp(min=1e-3)) ** 2).sqrt()
        eye_m = soft((eyef - 1) * eh)
        img = img.lerp_(torch.tensor(_SCLERA).view(1, 3, 1, 1), eye_m)
        ir = per_image(p["iris"]) * eh0
        ix, iy = a - per_image(p["gaze_x"]) * ew, b - per_image(p["gaze_y"]) * eh0
        rr = torch.sqrt(ix * ix + iy * iy)
        img = img.lerp_(col["iris"], soft(rr - ir) * eye_m)
        img = img.lerp_(torch.zeros(1, 3, 1, 1) + 0.03, soft(rr - 0.45 * ir) * eye_m)
        # lash line along the upper lid and a crease above it
        lash = cv.stroke((eyef - 1.0).abs() * eh, torch.full_like(eh, 0.014), b)   # upper lid only
        img = img.lerp_(col["skin"] * 0.15, lash * 0.9)
        crease = cv.stroke((eyef - 1.55).abs() * eh, torch.full_like(eh, 0.008), b)
        img = img.lerp_(col["skin"] * 0.55, crease * 0.6 * per_image(p["lid"]))
    return img


def _brows(cv: _Canvas, p, col, img, gx):
    bl, bt = per_image(p["brow_len"]), per_image(p["brow_t"])
    by = per_image(p["eye_y"]) - per_image(p["brow_gap"]) - per_image(p["eye_h"]) - per_image(p["brow_raise"])
    for sgn in (-1.0, 1.0):
        cx = gx + sgn * (per_image(p["eye_sep"]) + per_image(p["brow_dx"]))
        a, b = _rotated(cv, cx, by, per_image(p["brow_tilt"]) * sgn)
        centre = -per_image(p["brow_arch"]) * (1 - (a / bl) ** 2)
        brow = cv.stroke((b - centre).abs(), bt / 2 * (1 - 0.5 * (a / bl).clamp(-1, 1) * sgn), a.abs() - bl)
        img = img.lerp_(col["brow"], brow * 0.95)
    return img


def _nose_mouth(cv: _Canvas, p, col, img, gx):
    u, v, soft = cv.u, cv.v, cv.soft
    skin = col["skin"]
    ny, nwid = per_image(p["nose_y"]), per_image(p["nose_w"])
    side = torch.sign(torch.cos(per_image(p["light_a"])) + 1e-6)
    bridge = cv.stroke((u - (gx - side * 0.6 * nwid)).abs(), per_image(p["nose_bridge"]),
                       torch.maximum(per_image(p["eye_y"]) + 0.05 - v, v - ny))
    img = img.lerp_(skin * 0.68, bridge * 0.6)
    tip = torch.sqrt(((u - gx) / nwid) ** 2 + ((v - ny) / 0.05) ** 2)
    img = img.lerp_(skin * 1.1, soft((tip - 1) * 0.05) * 0.5)
    nr_w = 0.4 * nwid * per_image(p["nostril"])
    for sgn in (-1.0, 1.0):
        nr = torch.sqrt(((u - gx - sgn * 0.55 * nwid) / nr_w) ** 2 + ((v - ny - 0.03) / 0.02) ** 2)
        img = img.lerp_(skin * 0.28, soft((nr - 1) * 0.02))
    # mouth: lips along a smile curve, a dark opening with teeth
    my, mw = per_image(p["mouth_y"]), per_image(p["mouth_w"])
    a = u - gx
    mc = my - per_image(p["smile"]) * (a / mw) ** 2
    taper = torch.sqrt((1 - (a / mw) ** 2).clamp(min=0))
    mo = per_image(p["mouth_open"])
    lips = torch.maximum((v - mc).abs() - (per_image(p["lip_t"]) * taper + mo / 2), a.abs() - mw)
    img = img.lerp_(col["lip"], soft(lips))
    gap = torch.maximum((v - mc).abs() - mo / 2 * taper, a.abs() - mw * 0.92)
    img = img.lerp_(skin * 0.15, soft(gap) * 0.95)
    teeth = torch.maximum(torch.maximum(v - mc, mc - mo / 2 * taper - v), a.abs() - mw * 0.6)
    img = img.lerp_(torch.tensor(_SCLERA).view(1, 3, 1, 1), soft(teeth) * (mo > 0.01).float())
    line = cv.stroke((v - mc).abs(), torch.full_like(mw, 0.008), a.abs() - mw * 0.95)
    img = img.lerp_(skin * 0.25, line * 0.8)
    ms = torch.maximum(torch.maximum(v - (mc - per_image(p["lip_t"]) - 0.005), mc - per_image(p["lip_t"]) - 0.065 - v),
                       a.abs() - mw * 1.05)
    img = img.lerp_(col["brow"], soft(ms) * per_image(p["moustache"]) * 0.9)
    return img


def _hair_front(cv: _Canvas, p, col, img, g):
    """Beard, marks, then what hides the face: the fringe and glasses."""
    u, v, soft = cv.u, cv.v, cv.soft
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    # beard: inside the face outline, below a line that rises from the mouth to the sideburns
    top = per_image(p["mouth_y"]) - 0.02 - 0.45 * (g["du"].abs() / fw) ** 2
    beard = torch.maximum(torch.maximum(g["face_d"], top - v), g["du"].abs() - 0.95 * fw)
    img = img.lerp_(col["brow"] * 1.1, soft(beard) * per_image(p["beard"]) * 0.7)
    for j in range(p["mole_on"].shape[1]):
        mx = g["fx"] + per_image(p["mole_x"][:, j]) * fw
        myy = cy + per_image(p["mole_y"][:, j]) * fh
        r = torch.sqrt((u - mx) ** 2 + (v - myy) ** 2) - per_image(p["mole_r"][:, j])
        img = img.lerp_(col["skin"] * 0.3, soft(r) * per_image(p["mole_on"][:, j]) * g["skin_m"])
    sa = per_image(p["scar_a"])
    along, across = _rotated(cv, g["fx"] + per_image(p["scar_x"]) * fw, cy + per_image(p["scar_y"]) * fh, sa)
    scar = cv.stroke(across.abs(), torch.full_like(sa, 0.012), along.abs() - per_image(p["scar_len"]))
    scar_col = torch.where(per_image(p["scar_dark"]) > 0, col["skin"] * 0.5, col["skin"] * 1.25 + 0.05)
    img = img.lerp_(scar_col, scar * per_image(p["scar_on"]) * g["skin_m"] * 0.9)
    # fringe: hair from the hair line down to just above the brows, with a wavy edge
    brow_y = per_image(p["eye_y"]) - per_image(p["brow_gap"]) - per_image(p["eye_h"])
    edge = brow_y - per_image(p["fringe_y"]) + 0.03 * torch.sin(u * 18 + per_image(p["fringe_wave"]))
    fr = torch.maximum(v - edge, g["du"].abs() - (fw + 0.02))
    img = img.lerp_(col["hair"], soft(torch.maximum(fr, g["head"])) * per_image(p["fringe"]))
    idx = p["glasses"].nonzero().flatten()           # only the images that wear glasses
    if len(idx):
        sub = {k: t[idx] for k, t in p.items()}
        img[idx] = _glasses(cv.subset(idx), sub, img[idx], g["gx"][idx])
    return img


def _glasses(cv: _Canvas, p, img, gx):
    """Two rims (superellipses, round to square), faintly reflecting lenses and a bridge."""
    u, v, soft = cv.u, cv.v, cv.soft
    on, r, q = per_image(p["glasses"]), per_image(p["glass_r"]), per_image(p["glass_sq"])
    rim_col = rgb(palette(p["glass_tone"], ((0.05, 0.05, 0.05), (0.35, 0.22, 0.10), (0.75, 0.70, 0.60))))
    ey = per_image(p["eye_y"]) + 0.02
    for sgn in (-1.0, 1.0):
        cx = gx + sgn * per_image(p["eye_sep"])
        sq = (((u - cx) / r).abs().clamp(min=1e-6) ** q + ((v - ey) / (0.75 * r)).abs().clamp(min=1e-6) ** q) ** (1 / q)
        img = img.lerp_(rim_col, cv.stroke(((sq - 1) * r).abs(), torch.full_like(r, 0.014)) * on)
        img = img.lerp_(torch.ones(1, 3, 1, 1), soft((sq - 1) * r) * on * 0.08)
    gap_half = (per_image(p["eye_sep"]) - r).clamp(min=0.01)
    bridge = cv.stroke((v - ey + 0.03).abs(), torch.full_like(r, 0.012), (u - gx).abs() - gap_half)
    return img.lerp_(rim_col, bridge * on)


def _camera(p, img, g, noise):
    la = per_image(p["light_a"])
    du, dv, fw, fh = g["du"], g["dv"], per_image(p["face_w"]), per_image(p["face_h"])
    shade = 1 + per_image(p["light_s"]) * (torch.cos(la) * du / fw + torch.sin(la) * dv / fh) * 0.6
    shade = shade * (1 - 0.15 * (du / fw).clamp(-1.3, 1.3) ** 2)
    img = img * (1 + (shade - 1) * g["fg"])
    img = img * rgb(p["wb"]) * per_image(p["bright"])
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * per_image(p["contrast"]) + mean
    pad = F.pad(img, (1, 1, 1, 1), mode="replicate")
    res = img.shape[-1]
    blurred = sum(pad[..., i: i + res, j: j + res] for i in range(3) for j in range(3)) / 9
    img = img + (blurred - img) * per_image(p["blur"])
    return (img + noise).clamp_(0, 1)


def _render_chunk(p: dict[str, torch.Tensor], res: int) -> torch.Tensor:
    cv = _Canvas(p, res)
    col = _colours(p)
    tex, noise = _random_fields(p, cv)
    img, g = _head(cv, p, col, None, tex)
    img = _eyes(cv, p, col, img, g["gx"])
    img = _brows(cv, p, col, img, g["gx"])
    img = _nose_mouth(cv, p, col, img, g["gx"])
    img = _hair_front(cv, p, col, img, g)
    return _camera(p, img, g, noise)


def render_faces2(params: dict[str, torch.Tensor], resolution: int, chunk: int = 64) -> torch.Tensor:
    """Render per-image parameters to float images (B, 3, R, R) in [0, 1], one thread, in chunks."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise ArgumentError(f"synthetic2 resolution must be an integer >= 16, got {resolution!r}")
    n = params["face_w"].shape[0]
    out = torch.empty(n, 3, resolution, resolution)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # many small element-wise ops: one thread on cache-sized chunks is fastest
    try:
        with torch.no_grad():
            for lo in range(0, n, chunk):
                out[lo: lo + chunk] = _render_chunk({k: t[lo: lo + chunk] for k, t in params.items()}, resolution)
    finally:
        torch.set_num_threads(threads)
    return out
