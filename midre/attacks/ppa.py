"""PPA, Plug & Play Attacks (Struppek et al., ICML 2022).

White-box, prior kind ``stylegan2`` (a StyleGAN2 generator: trained on public data by midre, or official
weights converted with ``midre convert stylegan2``).  One repeat of one identity batch:

1. **candidate search** (:meth:`PPA.init_latents` / :meth:`PPA.select_candidates`): ``pool`` latents
   z ~ N(0, I) mapped to w with truncation (psi 0.5, cutoff 8; a single w per latent, ``single_w``);
   each image is centre-cropped (``center_crop`` of the side, 800/1024 for FFHQ), resized to the target's
   input and scored by the target's softmax averaged over the image and its horizontal flip; the
   ``candidates`` best latents of every attacked class are kept (distinct latents per class);
2. **optimisation** (:meth:`PPA.invert`): Adam (lr 0.005, betas (0.1, 0.1), MultiStepLR at
   ``milestone_1`` / ``milestone_2``, gamma 0.1) on w, each step on a RandomResizedCrop (scale 0.9-1,
   ratio 1) of the target view, Poincaré loss; the loss is summed over candidates so every candidate's
   trajectory is independent of how candidates are grouped into ``opt_batch`` chunks;
3. **final selection** (:meth:`PPA.final_selection`): every candidate's image scored by its mean target
   confidence over ``final_views`` RandomResizedCrop (scale 0.5-0.9, ratio 0.8-1.2) + flip views; the
   best candidate of each identity is the repeat's reconstruction.

One repeat keeps 1 of ``candidates`` optimised latents per identity, so ``repeats`` x ``candidates``
latents are optimised per identity in all (the MIDRE paper's PPA setting: 16 candidates -> 8 samples,
i.e. ``candidates: 2`` with 8 repeats).  Reconstructions are stored at the target's resolution, with the
selected w of each in ``Reconstructions.latents``.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import ATTACKS, Attack
from .highres import (Ticker, batched, check_fraction, chunks, poincare_loss, random_resized_crop, stylegan_view,
                      target_resolution, to_target_view, top_per_class)
from ..errors import ArgumentError


class PPA(Attack):
    """PPA: StyleGAN2 w-space search + Poincaré-loss optimisation + augmentation-based final selection."""

    name = "ppa"
    access = "white-box"
    prior_kinds = ("stylegan2",)
    defaults: dict[str, Any] = {
        "pool": 2000, "candidates": 2, "psi": 0.5, "cutoff": 8, "single_w": True,
        "iterations": 50, "lr": 0.005, "beta1": 0.1, "beta2": 0.1, "milestone_1": 30, "milestone_2": 40,
        "gamma": 0.1, "crop_scale_min": 0.9, "center_crop": 0.78125, "target_resolution": 0,
        "final_views": 100, "final_scale_min": 0.5, "final_scale_max": 0.9, "final_ratio_min": 0.8,
        "final_ratio_max": 1.2, "batch_size": 1000, "opt_batch": 16, "gen_batch": 25,
    }
    presets = {"quick": {"pool": 300, "candidates": 2, "iterations": 30, "milestone_1": 0, "milestone_2": 0,
                         "center_crop": 1.0, "final_views": 16, "batch_size": 50, "opt_batch": 64,
                         "gen_batch": 100}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        check_fraction(self.name, p, "center_crop", "crop_scale_min", "final_scale_min", "final_scale_max", "psi")
        for k in ("pool", "candidates", "opt_batch", "gen_batch"):
            if p[k] < 1:
                raise ArgumentError(f"attack '{self.name}': '{k}' must be >= 1, got {p[k]}")
        if p["candidates"] > p["pool"]:
            raise ArgumentError(f"attack '{self.name}': 'candidates' ({p['candidates']}) cannot exceed 'pool' "
                                f"({p['pool']})")
        if p["final_scale_min"] > p["final_scale_max"] or p["final_ratio_min"] > p["final_ratio_max"] \
                or p["final_ratio_min"] <= 0:
            raise ArgumentError(f"attack '{self.name}': final selection ranges must satisfy min <= max (ratio > 0)")

    # ------------------------------------------------------------------ views
    def _setup(self, access: Any, prior: Any) -> None:
        self.sg = stylegan_view(prior)
        self.res = target_resolution(self.params, access, prior["stylegan2"],
                                     int(getattr(self.sg.G, "img_resolution", 0) or 0))

    def view(self, w: torch.Tensor) -> torch.Tensor:
        """The target's view of w: synthesis, centre crop, resize (unclamped, differentiable)."""
        return to_target_view(self.sg.images(w), self.res, self.params["center_crop"])

    def target_probs(self, access: Any, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the target (white-box: the model; black-box subclasses: the oracle)."""
        return access(x).float().softmax(1)

    # ------------------------------------------------------------------ 1. candidate search
    def init_latents(self, access, ids, prior, gen):
        self._setup(access, prior)
        p = self.params
        return {"pool": self.sg.sample_w(p["pool"], gen, p["psi"], p["cutoff"], p["single_w"])}

    def select_candidates(self, access, ids, prior, state, gen):
        p = self.params
        pool = state["pool"]

        def score(w):
            x = self.view(w).clamp(0, 1)
            return ((self.target_probs(access, x) + self.target_probs(access, x.flip(-1))) / 2)[:, ids]

        with torch.no_grad():
            s = batched(score, pool, p["gen_batch"])                      # (pool, b): only the attacked classes
        top = top_per_class(s, torch.arange(len(ids), device=s.device), p["candidates"])     # (b, k)
        em = self.extra_meta
        em.setdefault("search_confidence", []).extend(float(v) for v in s.gather(0, top.T).T.mean(1))
        k = p["candidates"]
        return {"w": pool[top.flatten().to(pool.device)].clone(), "y": ids.repeat_interleave(k), "k": k}

    # ------------------------------------------------------------------ 2. optimisation
    def _optimizer(self, params: list[torch.Tensor]) -> tuple[torch.optim.Optimizer, Any]:
        p = self.params
        opt = torch.optim.Adam(params, lr=p["lr"], betas=(p["beta1"], p["beta2"]))
        ms = sorted(m for m in (p["milestone_1"], p["milestone_2"]) if m > 0)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, ms, p["gamma"]) if ms else None
        return opt, sched

    def step_loss(self, access, x: torch.Tensor, y: torch.Tensor, gen, eraser) -> torch.Tensor:
        """Per-sample Poincaré loss of one RandomResizedCrop view of target-view images ``x``."""
        v = random_resized_crop(x, gen, (self.params["crop_scale_min"], 1.0), (1.0, 1.0))
        return poincare_loss(access(self.to_target(v, eraser)), y)

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        p = self.params
        w_all, y_all = state["w"], state["y"]
        T, parts = p["iterations"], chunks(len(w_all), p["opt_batch"])
        ticker = Ticker(tick, T, T * len(parts))
        curve = torch.zeros(T)
        out = []
        for s in parts:
            w = w_all[s].clone().requires_grad_(True)
            opt, sched = self._optimizer([w])
            for t in range(T):
                loss = self.step_loss(access, self.view(w), y_all[s], gen, eraser)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                if sched is not None:
                    sched.step()
                curve[t] += float(loss.detach().sum())
                ticker.step()
            out.append(w.detach())
        for v in curve / len(w_all):
            log(float(v))
        return {**state, "w": torch.cat(out)}

    # ------------------------------------------------------------------ 3. final selection
    def candidate_images(self, state: dict) -> torch.Tensor:
        if "images" in state:
            return state["images"]
        with torch.no_grad():
            return batched(lambda w: self.view(w).clamp(0, 1), state["w"], self.params["gen_batch"])

    def final_selection(self, access, ids, prior, state, gen):
        p, k = self.params, state["k"]
        imgs, y = self.candidate_images(state), state["y"]
        score = torch.zeros(len(imgs), device=imgs.device)
        if k > 1:
            with torch.no_grad():
                for _ in range(p["final_views"]):
                    v = random_resized_crop(imgs, gen, (p["final_scale_min"], p["final_scale_max"]),
                                            (p["final_ratio_min"], p["final_ratio_max"]), flip=True)
                    probs = batched(lambda x: self.target_probs(access, x), v, p["gen_batch"])
                    score += probs.gather(1, y[:, None].to(probs.device)).squeeze(1).to(score.device)
        best = score.view(len(ids), k).argmax(1)
        sel = torch.arange(len(ids), device=best.device) * k + best
        state["latents"] = state["w"][sel.to(state["w"].device)].detach().float().cpu()
        if "stage" in state:
            self.extra_meta.setdefault("selected_stage", []).extend(int(v) for v in state["stage"][sel.cpu()])
        return imgs[sel.to(imgs.device)].clamp(0, 1)


ATTACKS.register("ppa", access="white-box", prior="stylegan2")(PPA)
