"""Feature-space analysis of the MIDRE paper, Sec. 3.2 (Fig. 3), with numbers to check the claim.

For each analysed target (NoDef and MIDRE by default) the penultimate features of three groups are
extracted *by that target*:

* ``private``     private training images of an attacked identity,
* ``re_private``  the same images erased by MIDRE's eraser (a_e = 0.4 unless told otherwise),
* ``recon``       the attack's reconstructions of that identity against that target.

Features are projected to 2-D with a PCA fitted per model (on all three groups of the analysed
identities) and one convex hull is drawn per group.  The claim of the paper (P1): under NoDef the
reconstructions' hull overlaps the private hull; under MIDRE it overlaps the RE-private hull more than
the private one.  To make the claim checkable, ``features.json`` holds, per target and identity:

* ``overlap``:  area(hull A ∩ hull B) / area(hull A) in the 2-D PCA plane (``recon|private`` ...),
  per identity (needs >= 3 points per group, else null) and ``pooled`` over the analysed identities,
* ``inside``:   share of A's points inside hull B (``recon_in_private`` ...),
* ``centroid``: distance between group centroids in the FULL feature space, divided by the RMS
  radius of the private group (``recon-private``, ``recon-re_private``, ``re_private-private``),

plus their means over identities (``mean``), the same measures on the pooled groups (``pooled``) and
``closer_to`` (the group whose centroid the reconstructions are nearer to, mean over identities).  The
figure shows the pooled groups (or one identity with ``plot_identity``); the report's table gives the
pooled hull measures and the per-identity mean centroid distances.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks.base import Reconstructions
from ..defenses.midre import eraser_for
from ..errors import ArgumentError, RunDirError, did_you_mean
from ..loading import load_model
from ..plotting import pyplot, save_fig
from ..results import defense_label, defense_name, fmt, private_images, target_dirs
from ..utils import atomic_write_json, derive_seed, read_json

GROUPS = ("private", "re_private", "recon")
GROUP_STYLE = {"private": ("#1f77b4", "private"), "re_private": ("#2ca02c", "RE-private"),
               "recon": ("#e377c2", "reconstructed")}
PAIRS = (("recon", "private"), ("recon", "re_private"), ("re_private", "private"), ("private", "recon"))


# ----------------------------------------------------------------------------------------- geometry
def convex_hull(points: np.ndarray) -> np.ndarray | None:
    """Hull vertices (counter-clockwise) of 2-D points, or None when degenerate (< 3 / collinear)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return None
    try:
        h = ConvexHull(pts)
    except (QhullError, ValueError):
        return None
    return pts[h.vertices]


def polygon_area(poly: np.ndarray | None) -> float:
    if poly is None or len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _ccw(poly: np.ndarray) -> np.ndarray:
    x, y = poly[:, 0], poly[:, 1]
    signed = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return poly if signed >= 0 else poly[::-1]


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray | None:
    """Intersection of two convex polygons (Sutherland-Hodgman); None when empty."""
    out = [tuple(p) for p in _ccw(subject)]
    clip = _ccw(clip)
    n = len(clip)
    for i in range(n):
        a, b = clip[i], clip[(i + 1) % n]
        inp, out = out, []
        if not inp:
            break

        def side(p):
            return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

        for j in range(len(inp)):
            cur, prev = np.asarray(inp[j]), np.asarray(inp[j - 1])
            sc, sp = side(cur), side(prev)
            if sc >= 0:
                if sp < 0:
                    t = sp / (sp - sc)
                    out.append(tuple(prev + t * (cur - prev)))
                out.append(tuple(cur))
            elif sp >= 0:
                t = sp / (sp - sc)
                out.append(tuple(prev + t * (cur - prev)))
    if len(out) < 3:
        return None
    return np.asarray(out, dtype=np.float64)


def overlap_fraction(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """area(A ∩ B) / area(A) for two convex hulls; NaN when A is degenerate."""
    area_a = polygon_area(a)
    if a is None or area_a <= 0:
        return math.nan
    if b is None:
        return 0.0
    inter = clip_convex(a, b)
    return polygon_area(inter) / area_a


def inside_fraction(points: np.ndarray, hull: np.ndarray | None) -> float:
    """Share of ``points`` inside the convex polygon ``hull`` (boundary counts as inside)."""
    if hull is None or len(points) == 0:
        return math.nan if len(points) == 0 else 0.0
    h = _ccw(hull)
    nxt = np.roll(h, -1, axis=0)
    edge = nxt - h                                   # (V, 2)
    rel = points[:, None, :] - h[None, :, :]          # (N, V, 2)
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    scale = max(1e-12, float(np.abs(h).max()))
    return float((cross >= -1e-9 * scale).all(axis=1).mean())


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(components (2, D), mean (D,), explained variance ratio (2,)) of a PCA fitted on ``x``."""
    mean = x.mean(0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    comps = vt[:2]
    if comps.shape[0] < 2:                      # 1-D data: pad with a zero direction
        comps = np.vstack([comps, np.zeros_like(comps)])
        ratio = np.concatenate([ratio, [0.0]])
    # deterministic sign: the largest-magnitude loading of each component is positive
    for i in range(2):
        j = int(np.abs(comps[i]).argmax())
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    return comps, mean, ratio[:2]


# ----------------------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Penultimate features (``model.features``) of [0, 1] images, as float64 numpy (N, D)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model.features(images[i:i + batch_size].to(device).float()).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def erase_images(images: torch.Tensor, labels: torch.Tensor, eraser_spec: dict, seed: int) -> torch.Tensor:
    """Apply MIDRE's own training-time eraser (``midre.defenses.midre.eraser_for``) with a fixed seed."""

    eraser = eraser_for(dict(eraser_spec), batched=True)
    g = torch.Generator().manual_seed(int(seed))
    return eraser(images.clone(), labels.clone(), torch.arange(len(images)), generator=g)


def group_measures(feats: dict[str, np.ndarray], comps: np.ndarray, mean: np.ndarray) -> dict[str, Any]:
    """All measures of one identity under one model (see the module docstring)."""
    pts = {g: (f - mean) @ comps.T for g, f in feats.items()}
    hulls = {g: convex_hull(p) for g, p in pts.items()}
    cent = {g: f.mean(0) for g, f in feats.items()}
    rad = float(np.sqrt(((feats["private"] - cent["private"]) ** 2).sum(1).mean())) or 1e-12
    res: dict[str, Any] = {
        "overlap": {f"{a}|{b}": overlap_fraction(hulls[a], hulls[b]) for a, b in PAIRS},
        "inside": {f"{a}_in_{b}": inside_fraction(pts[a], hulls[b]) for a, b in PAIRS},
        "centroid": {f"{a}-{b}": float(np.linalg.norm(cent[a] - cent[b]) / rad)
                     for a, b in (("recon", "private"), ("recon", "re_private"), ("re_private", "private"))},
        "hull_area": {g: polygon_area(h) for g, h in hulls.items()},
        "n": {g: int(len(f)) for g, f in feats.items()},
    }
    return res


def _mean_dicts(items: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = items[0].keys() if items else []
    out = {}
    for k in keys:
        vals = [v[k] for v in items if not (isinstance(v[k], float) and math.isnan(v[k]))]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


# ----------------------------------------------------------------------------------------- run dir
def _target_meta(run_dir: Path, name: str) -> dict:
    p = run_dir / "targets" / name / "model.json"
    if not p.exists():
        avail = sorted(q.name for q in (run_dir / "targets").iterdir()) if (run_dir / "targets").is_dir() else []

        raise ArgumentError(f"target '{name}' not found in '{run_dir}/targets'{did_you_mean(name, avail)}; "
                            f"available: {', '.join(avail) or 'none'}")
    return read_json(p)




def default_targets(run_dir: Path, area: float = 0.4) -> list[str]:
    """NoDef and the MIDRE target whose a_e is closest to ``area`` (paper: a_e 0.4)."""

    nodef, midre = [], []
    for t in target_dirs(run_dir):
        meta = read_json(t / "model.json") if (t / "model.json").exists() else {}
        spec = meta.get("defense")
        name = defense_name(spec)
        if name == "nodef":
            nodef.append(t.name)
        elif name == "midre":
            a = float(spec.get("area", area)) if isinstance(spec, dict) else area
            midre.append((abs(a - area), t.name))
    out = nodef[:1] + [n for _, n in sorted(midre)[:1]]
    if not out:
        raise RunDirError(f"'{run_dir}' has no NoDef or MIDRE target to analyse; name targets with --target")
    return out


def _common_attack(run_dir: Path, targets: Sequence[str]) -> str:
    """The first attack (by name) whose reconstructions exist for every analysed target."""
    common = None
    for t in targets:
        d = run_dir / "attacks" / t
        have = ({p.name for p in d.iterdir() if (p / "reconstructions.safetensors").exists()}
                if d.is_dir() else set())
        common = have if common is None else common & have
    if not common:
        raise RunDirError(f"no attack was run against all of {', '.join(targets)} in '{run_dir}'; "
                          "finish `midre run` first or pick --target")
    return sorted(common)[0]


def _private_by_identity(private: Any, ids: Sequence[int], max_images: int) -> tuple[dict, dict]:
    """Up to ``max_images`` private images of each identity, with their labels."""
    labels_all = torch.as_tensor(private.targets)
    imgs, labs = {}, {}
    for i in ids:
        idx = (labels_all == i).nonzero().flatten()[:max_images]
        x = torch.stack([private[int(j)][0] for j in idx])
        imgs[i], labs[i] = x, torch.full((len(x),), i, dtype=torch.long)
    return imgs, labs


def _analyse_target(model: Any, meta: dict, rec: Any, ids: Sequence[int], imgs: dict, erased: dict,
                    plot_identity: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One target's measures in its own 2-D PCA of features, and the points to plot."""
    feats = {}
    for i in ids:
        sel = rec.identity == i
        feats[i] = {"private": extract_features(model, imgs[i]), "re_private": extract_features(model, erased[i]),
                    "recon": extract_features(model, rec.images[sel])}
    allf = np.concatenate([f for i in ids for f in feats[i].values()])
    comps, mean, ratio = pca_2d(allf)
    per_id = {str(i): group_measures(feats[i], comps, mean) for i in ids}
    summary = {k: _mean_dicts([per_id[str(i)][k] for i in ids]) for k in ("overlap", "inside", "centroid")}
    pooled_feats = {g: np.concatenate([feats[i][g] for i in ids]) for g in GROUPS}
    pooled = group_measures(pooled_feats, comps, mean)
    c = summary["centroid"]
    closer = "re_private" if c["recon-re_private"] < c["recon-private"] else "private"
    entry = {"defense": meta.get("defense"), "explained_variance": ratio.tolist(),
             "mean": summary, "pooled": pooled, "closer_to": closer, "per_identity": per_id}
    shown = pooled_feats if plot_identity is None else feats[int(plot_identity)]
    return entry, {g: (shown[g] - mean) @ comps.T for g in GROUPS}


def feature_analysis(run_dir: str | Path, targets: Sequence[str] | None = None, attack: str | None = None,
                     area: float | None = None, identities: Sequence[int] | None = None,
                     max_images: int = 60, plot_identity: int | None = None, seed: int = 0,
                     splits: Any = None, write: bool = True) -> dict[str, Any]:
    """Run the Sec. 3.2 analysis on a run directory.

    Args:
        run_dir: run directory with ``targets/<t>/`` checkpoints and ``attacks/<t>/<attack>/`` reconstructions.
        targets: targets to analyse (default: NoDef and the MIDRE target nearest a_e 0.4).
        attack: attack directory name (default: the first one present for every analysed target).
        area: a_e of the eraser making RE-private images (default: the analysed MIDRE target's
            own eraser spec, else MIDRE at 0.4).
        identities: attacked identities to use (default: all attacked ones).
        max_images: private images per identity (RE-private uses the same images).
        plot_identity: draw only this identity in the figure (default: every analysed identity, pooled).
        seed: seed of the eraser.
        splits: dataset splits if the caller has them (else rebuilt from checkpoint metadata).
        write: write ``RUN/analysis/features.json`` and ``RUN/figures/features.png``.

    Returns:
        The JSON-able result (also written to ``features.json``).
    """

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' not found; give the --out directory of `midre run`")
    if max_images < 3:
        raise ArgumentError(f"max_images must be at least 3 (a convex hull needs 3 points), got {max_images}")
    targets = list(targets) if targets else default_targets(run_dir)
    metas = {t: _target_meta(run_dir, t) for t in targets}
    attack = attack or _common_attack(run_dir, targets)
    recs = {t: Reconstructions.load(run_dir / "attacks" / t / attack) for t in targets}

    if area is not None:
        eraser = {"name": "midre", "area": float(area)}
    else:
        eraser = next((dict(m["defense"]) for m in metas.values()
                       if isinstance(m.get("defense"), dict) and defense_name(m["defense"]) == "midre"),
                      {"name": "midre", "area": 0.4})
    private = private_images(run_dir, splits)
    if private is None:
        raise RunDirError(f"cannot rebuild the private images of '{run_dir}' (dataset in model.json unavailable); "
                          "pass the dataset root the run used")
    attacked = sorted(set().union(*[set(r.identity.tolist()) for r in recs.values()]))
    ids = sorted(set(identities)) if identities else attacked
    missing = [i for i in ids if i not in attacked]
    if missing:
        raise ArgumentError(f"identity {missing[0]} was not attacked; attacked identities: {attacked[:20]}")
    imgs, labs = _private_by_identity(private, ids, max_images)
    erased = {i: erase_images(imgs[i], labs[i], eraser, derive_seed(seed, "features", i)) for i in ids}

    if plot_identity is not None and int(plot_identity) not in ids:
        raise ArgumentError(f"plot identity {plot_identity} is not among the analysed identities {ids[:20]}")
    result: dict[str, Any] = {"attack": attack, "identities": ids, "eraser": eraser, "max_images": max_images,
                              "seed": seed, "plot_identity": plot_identity, "target_order": list(targets),
                              "targets": {}}
    plots: dict[str, dict[str, np.ndarray]] = {}
    for t in targets:
        model, meta = load_model(run_dir / "targets" / t, device="cpu")
        result["targets"][t], plots[t] = _analyse_target(model, meta, recs[t], ids, imgs, erased, plot_identity)
    if write:
        atomic_write_json(run_dir / "analysis" / "features.json", _nan_to_none(result))
        plot_features(plots, result, run_dir / "figures" / "features.png")
    return result


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_to_none(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    return o


def _id_text(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids[:6]) + (f" … ({len(ids)})" if len(ids) > 6 else "")


def plot_features(plots: dict[str, dict[str, np.ndarray]], result: dict[str, Any], path: Path) -> Path:
    """One panel per target: the three groups' 2-D PCA points and convex hulls."""

    plt = pyplot()
    n = len(plots)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.8), squeeze=False)
    for ax, (t, pts) in zip(axes[0], plots.items()):
        for g in GROUPS:
            color, label = GROUP_STYLE[g]
            p = pts[g]
            ax.scatter(p[:, 0], p[:, 1], s=14, color=color, alpha=0.6, label=f"{label} (n={len(p)})",
                       marker="x" if g == "recon" else "o")
            h = convex_hull(p)
            if h is not None:
                ax.fill(h[:, 0], h[:, 1], color=color, alpha=0.15)
                hh = np.vstack([h, h[:1]])
                ax.plot(hh[:, 0], hh[:, 1], color=color, linewidth=2)
        info = result["targets"][t]
        pi = result["plot_identity"]
        ov = (info["pooled"] if pi is None else info["per_identity"][str(pi)])["overlap"]

        def pct(v):
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"

        ev = info["explained_variance"]
        ax.set_title(f"{t}  [{defense_label(info['defense'])}]\nrecon∩private {pct(ov['recon|private'])}, "
                     f"recon∩RE-private {pct(ov['recon|re_private'])}", fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% var)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f}% var)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    pi = result["plot_identity"]
    who = f"identity {pi}" if pi is not None else f"identities {_id_text(result['identities'])} pooled"
    fig.suptitle(f"Penultimate features, {who}, attack {result['attack']} "
                 f"(PCA fitted per model; overlap = share of the recon hull's area)", fontsize=11)
    fig.tight_layout()
    return save_fig(fig, path)


def overlap_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's table of the mean measures per target."""

    def pct(v):
        return fmt(None if v is None else 100 * v, 1)

    head = ["target", "recon∩private (%)", "recon∩RE-private (%)", "recon in private hull (%)",
            "d(recon, private)", "d(recon, RE-private)", "recon closer to"]
    body = []
    tg = result.get("targets", {})
    first = [t for t in result.get("target_order", []) if t in tg]
    order = first + [t for t in tg if t not in first]
    for t in order:
        info = tg[t]
        m, pooled = info.get("mean", {}), info.get("pooled", {})
        ov, ins, c = pooled.get("overlap", {}), pooled.get("inside", {}), m.get("centroid", {})
        body.append([t, pct(ov.get("recon|private")), pct(ov.get("recon|re_private")),
                     pct(ins.get("recon_in_private")), fmt(c.get("recon-private")), fmt(c.get("recon-re_private")),
                     "RE-private" if info.get("closer_to") == "re_private" else "private"])
    return head, body
