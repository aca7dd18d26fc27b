"""BREP-MI, Boundary-Repelling label-only model inversion (Kahla et al., CVPR 2022).

Label-only: the attack sees a :class:`~midre.attacks.base.QueryOracle` that returns top-1 labels and
counts queries.  With the public GAN prior (kind ``gan``):

1. initial points: sample latents in rounds until the target labels G(z) as y (one per identity);
2. boundary repelling: at radius R sample ``sphere_points`` points z + R u on the sphere around z;
   points labelled other than y repel: g = -mean(u over outside points); move z <- z + (R * step_ratio)
   g / ||g|| when the new point is still labelled y; when the whole sphere is labelled y, grow
   R <- R * radius_growth (the class region around z is at least that large);
3. stop at ``max_radius`` or after ``iterations`` steps.

The logged objective is -mean(R) (a growing class-consistent ball = progress).  Defaults follow the
paper: 32 sphere points, initial radius 2, growth 1.3, z clipped to [-1.5, 1.5].
"""
from __future__ import annotations

import torch

from .base import ATTACKS, Attack


class BREPMI(Attack):
    """BREP-MI: label-only boundary repelling with a growing sphere in the GAN latent space."""

    name = "brepmi"
    access = "label-only"
    prior_kinds = ("gan",)
    defaults = {"iterations": 1000, "sphere_points": 32, "init_radius": 2.0, "radius_growth": 1.3,
                "max_radius": 16.0, "step_ratio": 1.0 / 3.0, "z_clip": 1.5, "init_batch": 256,
                "init_rounds": 50, "batch_size": 60, "max_queries": 0}
    presets = {"quick": {"iterations": 40, "sphere_points": 16, "init_batch": 128, "init_rounds": 20,
                         "batch_size": 50}}

    def _clip(self, z):
        c = self.params["z_clip"]
        return z.clamp(-c, c) if c > 0 else z

    def init_latents(self, oracle, ids, prior, gen):
        G = prior["gan"].generator
        d, dev, b = G.z_dim, ids.device, len(ids)
        z = torch.zeros(b, d, device=dev)
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        for _ in range(self.params["init_rounds"]):
            cand = self._clip(torch.randn(self.params["init_batch"], d, generator=gen).to(dev))
            with torch.no_grad():
                labels = oracle(G(cand)).to(dev)
            hit = labels[None, :] == ids[:, None]                       # (b, init_batch)
            has = hit.any(1) & ~found
            first = hit.float().argmax(1)
            z[has] = cand[first[has]]
            found |= has
            if bool(found.all()):
                break
        z[~found] = self._clip(torch.randn(int((~found).sum()), d, generator=gen).to(dev))
        return {"z": z, "found": found, "z0": z.clone()}

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        G = prior["gan"].generator
        p = self.params
        z, found = state["z"].clone(), state["found"]
        b, d = z.shape
        dev = z.device
        R = torch.full((b,), p["init_radius"], device=dev)
        active = found.clone()
        P = p["sphere_points"]
        for it in range(p["iterations"]):
            if not bool(active.any()):
                log(float(-R.mean()))
                tick()
                continue
            idx = active.nonzero().flatten()
            u = torch.randn(len(idx), P, d, generator=gen).to(dev)
            u = u / u.norm(dim=2, keepdim=True)
            pts = self._clip(z[idx, None, :] + R[idx, None, None] * u)
            with torch.no_grad():
                lab = oracle(self.to_target(G(pts.reshape(-1, d)), eraser)).to(dev).view(len(idx), P)
            outside = lab != ids[idx, None]
            all_in = ~outside.any(1)
            R[idx[all_in]] = R[idx[all_in]] * p["radius_growth"]
            mv = idx[~all_in]
            if len(mv):
                g = -(u[~all_in] * outside[~all_in, :, None].float()).sum(1)
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                cand = self._clip(z[mv] + (R[mv] * p["step_ratio"])[:, None] * g)
                with torch.no_grad():
                    ok = oracle(self.to_target(G(cand), eraser)).to(dev) == ids[mv]
                z[mv[ok]] = cand[ok]
            active &= R < p["max_radius"]
            log(float(-R.mean()))
            tick()
        return {"z": z, "found": found, "radius": R}

    def final_selection(self, oracle, ids, prior, state, gen):
        em = self.extra_meta
        em["initial_points_found"] = em.get("initial_points_found", 0) + int(state["found"].sum())
        if state.get("radius") is not None:
            em.setdefault("final_radius", []).extend(float(r) for r in state["radius"])
        with torch.no_grad():
            return prior["gan"].generator(state["z"]).clamp(0, 1)


ATTACKS.register("brepmi", access="label-only", prior="gan")(BREPMI)
