"""MIRROR's white-box form: gradient descent in StyleGAN's w space (An et al., NDSS 2022).

White-box, prior kind ``stylegan2``; the black-box (genetic) form is :mod:`midre.attacks.mirror`, whose
generator call and p-space box this file shares (:func:`~midre.attacks.mirror.mirror_view`,
:func:`~midre.attacks.mirror.p_space_bounds`).  As the release's white-box script (``face_inversion.py``
-> ``my_mirror.mirror_attack``, latent space ``w``, started from the pre-generated samples):

1. **pool** (:meth:`MirrorWB.search`): ``pool`` z ~ N(0, I) mapped to RAW single w (no truncation);
   each image is generated with truncation (psi 0.7 on the layers below ``cutoff`` 8) and scored by the
   target's softmax p_y; the ``repeats`` best pool latents of each attacked identity are its starts
   (the release: the ``nrow = bs / #targets`` best per target, 8 in its scripts).  The box for w is the
   pool's mean +- ``p_std_ce`` std in p = leaky_relu(w, 5) space;
2. **optimisation** (:meth:`MirrorWB.optimise`): Adam (betas (0.9, 0.999), eps 1e-8) on the raw w of all
   starts of the batch at once, the learning rate of epoch e = 1..E set before the step by the
   release's ``adjust_lr`` (rosinality's projector ramp: cosine ramp-down over the last 25 %, linear
   ramp-up over the first 5 %); loss ``class_weight`` x CE(T(view(w)), y) (the batch mean), the whole
   batch flipped horizontally when a U(0, 1) draw exceeds 0.5 (with ``flip``); after the step w is
   clipped to the box;
3. **output**: the release keeps ``best_inputs`` = w right AFTER the step whose (pre-step) batch loss was
   the lowest so far; that w's image is the reconstruction.

The ``repeats`` of an identity batch share one pipeline run (as PPA: the first repeat runs it, seeded by
the batch, not the repeat; repeat r returns each identity's start r).  Presets: ``paper`` = the
release's scripts (``--bs=8 --do_flip --lr 0.25 --loss_class_ce=10``, 20,000 epochs, pool 100,000, one
identity per run: ``batch_size`` 1 with 8 repeats is the release's run); ``quick`` for the CPU.
docs/highres-attacks.md lists the deviations.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Attack, register_attack
from .highres import batched, check_fraction, stylegan_view, target_resolution, top_per_class
from .mirror import mirror_view, p_space_bounds


def projector_lr(base: float, epoch: int, epochs: int, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The release's ``adjust_lr`` at epoch ``epoch`` (1-based) of ``epochs``."""
    t = epoch / epochs
    ramp = 0.5 - 0.5 * math.cos(min(1.0, (1 - t) / rampdown) * math.pi)
    return base * ramp * min(1.0, t / rampup)


class MirrorWB(Attack):
    """MIRROR (white-box): Adam on raw w from the best pool samples, target cross-entropy, p-space box."""

    name = "mirror_wb"
    strength = 75
    access = "white-box"
    prior_kinds = ("stylegan2",)
    defaults: dict[str, Any] = {
        "pool": 100000, "iterations": 20000, "lr": 0.25, "class_weight": 10.0, "flip": True, "p_std_ce": 1.0,
        "psi": 0.7, "cutoff": 8, "center_crop": 1.0, "target_resolution": 0, "batch_size": 1, "gen_batch": 64,
    }
    presets = {"quick": {"pool": 400, "iterations": 200, "batch_size": 50, "gen_batch": 200}}

    def validate(self) -> None:
        super().validate()
        check_fraction(self.name, self.params, "center_crop", "psi")

    # ------------------------------------------------------------------ the Attack hooks
    def init_latents(self, access, ids, prior, gen):
        self.sg = stylegan_view(prior)
        self.res = target_resolution(self.params, access, prior["stylegan2"],
                                     int(getattr(self.sg.G, "img_resolution", 0) or 0))
        return {}

    def view(self, w: torch.Tensor) -> torch.Tensor:
        p = self.params
        return mirror_view(self.sg, w, p["psi"], p["cutoff"], self.res, p["center_crop"])

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        """The first repeat of a batch runs the pipeline for every repeat; the others take their share."""
        key = (self.chunk.seed, self.chunk.batch, self.chunk.repeats, tuple(int(i) for i in ids))
        cache = getattr(self, "_shared", None)
        if cache is None or cache[0] != key:
            g = self.chunk.generator(self.name, "shared")           # the pool, then the flips
            w, y, box = self.search(access, ids, g, self.chunk.repeats)
            self._shared = cache = (key, self.optimise(access, w, y, box, g, eraser, tick))
        else:
            for _ in range(self.steps_per_batch()):
                tick()
        for v in cache[1]["curve"]:
            log(float(v))
        return {"shared": cache[1]}

    def final_selection(self, access, ids, prior, state, gen):
        sh, r, R = state["shared"], self.chunk.repeat, self.chunk.repeats
        w = sh["w"].view(len(ids), R, -1)[:, r]
        state["latents"] = w.detach().float().cpu()
        if r == R - 1:
            self._shared = None
        with torch.no_grad():
            return self.view(w.to(ids.device))

    # ------------------------------------------------------------------ the release's pipeline
    def search(self, access, ids: torch.Tensor, gen: torch.Generator,
               k: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Raw-w pool scored by p_y; the ``k`` best starts per identity (identity-major), labels, (lo, hi)."""
        p = self.params
        pool = self.sg.sample_w(p["pool"], gen, 1.0, 0, single=True)[:, 0]                # raw w (pool, w_dim)
        with torch.no_grad():
            s = batched(lambda w: access(self.view(w)).float().softmax(1)[:, ids], pool, p["gen_batch"])
        top = top_per_class(s, torch.arange(len(ids), device=s.device), k)                 # (b, k)
        if self.chunk.repeat == 0:
            self.extra_meta.setdefault("start_confidence", []).extend(float(v) for v in s.gather(0, top.T).T.mean(1))
        lo, hi, _ = p_space_bounds(pool, p["p_std_ce"])
        return pool[top.flatten().to(pool.device)].clone(), ids.repeat_interleave(k), (lo, hi)

    def optimise(self, access, w0: torch.Tensor, y: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor],
                 gen: torch.Generator, eraser: Any, tick: Any) -> dict:
        """Adam on raw w with the projector schedule, the box after each step, the release's best iterate."""
        p = self.params
        E = p["iterations"]
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=p["lr"], betas=(0.9, 0.999), eps=1e-8)
        best, best_w, curve = math.inf, w0.clone(), []
        for e in range(1, E + 1):
            for g in opt.param_groups:
                g["lr"] = projector_lr(p["lr"], e, E)
            x = self.view(w)
            if float(torch.rand(1, generator=gen)) > 0.5 and p["flip"]:
                x = x.flip(3)
            loss = p["class_weight"] * F.cross_entropy(access(self.to_target(x, eraser)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                if p["p_std_ce"] > 0:
                    w.copy_(torch.maximum(torch.minimum(w, box[1]), box[0]))
                if float(loss) < best:
                    best, best_w = float(loss), w.detach().clone()
            curve.append(float(loss.detach()))
            tick()
        return {"w": best_w, "curve": curve}


register_attack(MirrorWB)
