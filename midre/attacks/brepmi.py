"""BREP-MI, Boundary-Repelling label-only model inversion (Kahla et al., CVPR 2022).

Label-only: the attack sees a :class:`~midre.attacks.base.QueryOracle` that returns top-1 labels and
counts queries.  With the public GAN prior (kind ``gan``), per identity y, as in the reference release:

1. initial point: sample latents (clamped to [-1.5, 1.5]) in rounds of ``init_batch`` until the target
   labels G(z) as y;
2. each round at radius R: draw ``sphere_points`` directions u_j of length R (not clamped) and label
   G(z + u_j); with c_j = +1 (label y) or -1, the sphere GROWS (R <- R * ``radius_growth``) when
   sum_j c_j > ``growth_threshold`` * N (at least 87.5 % of the points keep the label at 0.75);
3. step: z' = clamp(z + min(R_old * step_ratio, max_step) * mean_j(r_j u_j) / R_new, -1.5, 1.5), with
   r_j = -1[outside] (``repulsion_only``) or c_j; R_old is the radius the points were drawn at, R_new
   the radius after a possible growth (the release divides by the updated radius).  Only z' is clamped;
   it is accepted only if the target still labels G(z') as y;
4. stop after ``max_iters_at_radius`` accepted, non-growing rounds without a radius increase (rejected
   rounds and growing rounds do not count, as in the release).

Two guards the release lacks, which bind only where it would never end: ``iterations`` caps the rounds
per batch (default 20,000; the release loops forever when every round is rejected) and ``max_radius``
stops an identity whose radius reaches it (default 1e6, i.e. about 50 consecutive increases from 2;
the release grows R until it overflows when the target labels every sphere point y, e.g. a target that
predicts y on the whole latent box).  0 turns either off.

The returned image is the point accepted in the round of the LAST radius increase (the image whose
evaluation accuracy the release reports), or the initial point if the radius never grew.  Every oracle
call, including the initial search, is counted: ``meta["queries"]`` (total),
``meta["queries_initial_search"]`` and ``meta["queries_repulsion"]``.  The logged objective is
-mean(R) (a growing class-consistent ball = progress).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ArgumentError
from .base import Attack, register_attack


class SphereStep(NamedTuple):
    grow: torch.Tensor      # (B,) bool: the sphere grows this round
    radius: torch.Tensor    # (B,) radius after the round
    candidate: torch.Tensor  # (B, d) clamped candidate point


def sphere_step(z: torch.Tensor, u: torch.Tensor, inside: torch.Tensor, radius: torch.Tensor, p: dict) -> SphereStep:
    """One BREP-MI round given the sphere directions ``u`` (B, N, d), of length ``radius``, and whether
    each sphere point kept the label (``inside``, (B, N) bool)."""
    n = inside.shape[1]
    c = inside.float() * 2 - 1                                     # +1 inside, -1 outside
    grow = c.sum(1) > p["growth_threshold"] * n
    step = torch.clamp(radius * p["step_ratio"], max=p["max_step"]) if p["max_step"] > 0 else radius * p["step_ratio"]
    new_r = torch.where(grow, radius * p["radius_growth"], radius)
    r = (c - 1) / 2 if p["repulsion_only"] else c
    direction = (r[:, :, None] * u).mean(1) / new_r[:, None]
    cand = z + step[:, None] * direction
    clip = p["z_clip"]
    return SphereStep(grow, new_r, cand.clamp(-clip, clip) if clip > 0 else cand)


class BREPMI(Attack):
    """BREP-MI: label-only boundary repelling with a growing sphere in the GAN latent space."""

    name = "brepmi"
    strength = 20
    access = "label-only"
    prior_kinds = ("gan",)
    defaults = {"iterations": 20000, "max_iters_at_radius": 1000, "sphere_points": 32, "init_radius": 2.0,
                "radius_growth": 1.3, "growth_threshold": 0.75, "step_ratio": 1.0 / 3.0, "max_step": 3.0,
                "repulsion_only": True, "max_radius": 1e6, "z_clip": 1.5, "init_batch": 256,
                "init_rounds": 50, "batch_size": 60, "max_queries": 0}
    presets = {"quick": {"iterations": 40, "max_iters_at_radius": 40, "sphere_points": 16, "init_batch": 128,
                         "init_rounds": 20, "batch_size": 50}}

    def validate(self) -> None:
        p = self.params
        for k in ("max_iters_at_radius", "sphere_points", "init_batch", "init_rounds", "batch_size"):
            if p[k] < 1:
                raise ArgumentError(f"attack 'brepmi': '{k}' must be >= 1, got {p[k]}")
        if p["radius_growth"] <= 1.0:
            raise ArgumentError(f"attack 'brepmi': 'radius_growth' must be > 1, got {p['radius_growth']}")

    def steps_per_batch(self) -> int:
        """Rounds per batch for the progress bar: an estimate (a batch ends when its identities stop)."""
        p = self.params
        return int(min(p["iterations"], p["max_iters_at_radius"]) if p["iterations"] else p["max_iters_at_radius"])

    def _clip(self, z):
        c = self.params["z_clip"]
        return z.clamp(-c, c) if c > 0 else z

    def init_latents(self, oracle, ids, prior, gen):
        G = prior["gan"].generator
        d, dev, b = G.z_dim, ids.device, len(ids)
        q0 = getattr(oracle, "queries", 0)
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
        em = self.extra_meta
        em["queries_initial_search"] = em.get("queries_initial_search", 0) + getattr(oracle, "queries", 0) - q0
        return {"z": z, "found": found}

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        G = prior["gan"].generator
        p = self.params
        q0 = getattr(oracle, "queries", 0)
        z, found = state["z"].clone(), state["found"]
        b, d = z.shape
        dev = z.device
        R = torch.full((b,), p["init_radius"], device=dev)
        best = z.clone()                                   # the point at the last radius increase
        grew = torch.zeros(b, dtype=torch.bool, device=dev)
        since = torch.zeros(b, dtype=torch.long, device=dev)   # counted rounds since the last increase
        active = found.clone()
        P, rounds = p["sphere_points"], 0
        while bool(active.any()) and (p["iterations"] == 0 or rounds < p["iterations"]):
            idx = active.nonzero().flatten()
            u = torch.randn(len(idx), P, d, generator=gen).to(dev)
            u = u * (R[idx, None, None] / u.norm(dim=2, keepdim=True))
            pts = z[idx, None, :] + u
            with torch.no_grad():
                lab = oracle(self.to_target(G(pts.reshape(-1, d)), eraser)).to(dev).view(len(idx), P)
            st = sphere_step(z[idx], u, lab == ids[idx, None], R[idx], p)
            R[idx] = st.radius
            with torch.no_grad():
                ok = oracle(self.to_target(G(st.candidate), eraser)).to(dev) == ids[idx]
            z[idx[ok]] = st.candidate[ok]
            best[idx[ok & st.grow]] = st.candidate[ok & st.grow]
            grew[idx[st.grow]] = True
            since[idx[st.grow]] = 0
            since[idx[ok & ~st.grow]] += 1
            active &= since < p["max_iters_at_radius"]
            if p["max_radius"] > 0:
                active &= R < p["max_radius"]
            rounds += 1
            log(float(-R.mean()))
            tick()
        em = self.extra_meta
        em["queries_repulsion"] = em.get("queries_repulsion", 0) + getattr(oracle, "queries", 0) - q0
        em.setdefault("rounds", []).append(rounds)
        return {"z": best, "z_last": z, "found": found, "radius": R, "grew": grew}

    def final_selection(self, oracle, ids, prior, state, gen):
        em = self.extra_meta
        em["initial_points_found"] = em.get("initial_points_found", 0) + int(state["found"].sum())
        if state.get("radius") is not None:
            em.setdefault("final_radius", []).extend(float(r) for r in state["radius"])
            em["radius_increased"] = em.get("radius_increased", 0) + int(state["grew"].sum())
        with torch.no_grad():
            return prior["gan"].generator(state["z"]).clamp(0, 1)


register_attack(BREPMI)
