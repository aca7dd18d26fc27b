"""PPA, Plug & Play Attacks (Struppek et al., ICML 2022).

White-box, prior kind ``stylegan2`` (a StyleGAN2 generator: trained on public data by midre, or official
weights converted with ``midre convert stylegan2``).  As in the reference, all samples of an identity
come from ONE pipeline: the ``repeats`` of one identity batch share it (:meth:`PPA.attack_batch`, run
once per batch and kept for the other repeats), and repeat r returns the identity's r-th best sample.

1. **candidate search** (:meth:`PPA.search`): ``pool`` latents z ~ N(0, I) mapped to the full ws with
   truncation (psi 0.5 on the layers below ``cutoff`` 8, the others untruncated); each image is
   centre-cropped (``center_crop`` of the side, 800/1024 for FFHQ), resized to the target's input and
   scored, unclamped, by the target's softmax averaged over the image and its horizontal flip; the
   ``candidates x repeats`` best latents of every attacked class are kept (joint top-k, distinct per
   class), as their first layer's w when ``single_w``;
2. **optimisation** (:meth:`PPA.optimise`): Adam (lr, betas (0.1, 0.1), optional MultiStepLR at
   ``milestone_1`` / ``milestone_2``, gamma 0.1) on w, each step on a RandomResizedCrop (scale
   ``crop_scale_min``-1, ratio 1) of the target view, Poincaré loss summed over candidates (each
   candidate's trajectory is independent of how candidates are grouped into ``opt_batch`` chunks);
3. **final selection** (:meth:`PPA.rank`): every candidate's (unclamped) image scored by its mean target
   confidence over ``final_views`` RandomResizedCrop (scale 0.5-0.9, ratio 0.8-1.2) + flip views; the
   ``repeats`` best of each identity (joint top-k) are its samples, repeat r gets the r-th.

Presets: ``paper`` / ``paper-facescrub`` (the setting used against MIDRE: 50 iterations, lr 0.005,
MultiStepLR [30, 40]), ``paper-celeba`` and ``paper-dogs`` (the reference's CelebA and Stanford Dogs
configs); :func:`~midre.attacks.highres.paper_preset` names the one for a dataset.  The MIDRE paper's
16 candidates -> 8 samples is ``candidates: 2`` with 8 repeats; the reference's 200 -> 50 is
``candidates: 4`` with 50 repeats.  Reconstructions are stored at the target's resolution, with the
selected w of each in ``Reconstructions.latents``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError
from .base import Attack, register_attack
from .highres import (
    Ticker,
    batched,
    check_fraction,
    chunks,
    poincare_loss,
    random_resized_crop,
    stylegan_view,
    target_resolution,
    to_target_view,
    top_per_class,
)

_CELEBA = {"pool": 5000, "iterations": 70, "milestone_1": 0, "milestone_2": 0}
_DOGS = {"pool": 2000, "iterations": 100, "lr": 0.01, "milestone_1": 0, "milestone_2": 0,
         "crop_scale_min": 0.75, "center_crop": 1.0}


class PPA(Attack):
    """PPA: StyleGAN2 w-space search + Poincaré-loss optimisation + augmentation-based final selection."""

    name = "ppa"
    strength = 80
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
                         "gen_batch": 100},
               "paper-facescrub": {}, "paper-celeba": dict(_CELEBA), "paper-dogs": dict(_DOGS)}

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

    # ------------------------------------------------------------------ the Attack hooks
    def init_latents(self, access, ids, prior, gen):
        self._setup(access, prior)
        return {}

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        """The first repeat of a batch runs the whole pipeline for every repeat (seeded by the batch, not
        the repeat); the others take their share of it."""
        key = (self.chunk.seed, self.chunk.batch, self.chunk.repeats, tuple(int(i) for i in ids))
        cache = getattr(self, "_shared", None)
        if cache is None or cache[0] != key:
            self._shared = cache = (key, self.attack_batch(access, ids, self.chunk.generator(self.name, "shared"),
                                                           eraser, tick))
        else:
            for _ in range(self.steps_per_batch()):
                tick()
        for v in cache[1]["curve"]:
            log(float(v))
        return {**state, "shared": cache[1]}

    def final_selection(self, access, ids, prior, state, gen):
        sh, r = state["shared"], self.chunk.repeat
        state["latents"] = sh["latents"][:, r].float().cpu()
        if "stage" in sh:
            self.extra_meta.setdefault("selected_stage", []).extend(int(v) for v in sh["stage"][:, r])
        if r == self.chunk.repeats - 1:
            self._shared = None                  # the batch's last repeat: free the shared samples
        return sh["images"][:, r].to(ids.device).clamp(0, 1)

    # ------------------------------------------------------------------ the reference's pipeline
    def attack_batch(self, access, ids: torch.Tensor, gen: torch.Generator, eraser: Any, tick: Any) -> dict:
        """Search, optimisation and final selection for all repeats of ``ids`` at once: ``images``
        (b, repeats, C, H, W) on the CPU, best first, their ``latents`` (b, repeats, ...), the mean loss
        ``curve`` and (IF-GMI) the ``stage`` of each sample."""
        R = self.chunk.repeats
        k = self.params["candidates"] * R
        w, y, conf = self.search(access, ids, gen, k)
        if self.chunk.repeat == 0:          # once per batch (a resumed run recomputes it at a later repeat)
            self.extra_meta.setdefault("search_confidence", []).extend(float(v) for v in conf.mean(1))
        st = self.optimise(access, w, y, gen, eraser, tick)
        imgs = self.candidate_images(st)
        sel = self.rank(access, imgs, y, len(ids), R, gen)                  # (b, R) indices into 0..k-1
        flat = (torch.arange(len(ids), device=sel.device)[:, None] * k + sel).flatten()
        out = {"images": imgs[flat.to(imgs.device)].detach().cpu().unflatten(0, (len(ids), R)),
               "latents": st["w"][flat.to(st["w"].device)].detach().cpu().unflatten(0, (len(ids), R)),
               "curve": st["curve"]}
        if "stage" in st:
            out["stage"] = st["stage"][flat.cpu()].view(len(ids), R)
        return out

    def search(self, access, ids: torch.Tensor, gen: torch.Generator,
               k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pool, joint top-``k`` per class: (w of the b * k candidates, their labels, (b, k) scores)."""
        p = self.params
        ws = self.sg.sample_w(p["pool"], gen, p["psi"], p["cutoff"], single=False)     # full ws, as scored

        def score(w):
            x = self.view(w)
            return ((self.target_probs(access, x) + self.target_probs(access, x.flip(-1))) / 2)[:, ids]

        with torch.no_grad():
            s = batched(score, ws, p["gen_batch"])                          # (pool, b): the attacked classes
        top = top_per_class(s, torch.arange(len(ids), device=s.device), k)                 # (b, k)
        w = ws[top.flatten().to(ws.device)]
        w = w[:, :1] if p["single_w"] else w
        return w.clone(), ids.repeat_interleave(k), s.gather(0, top.T).T

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

    def optimise(self, access, w_all: torch.Tensor, y_all: torch.Tensor, gen, eraser, tick) -> dict:
        """Adam on every candidate's w (``opt_batch`` at a time): {"w", "curve"}."""
        p = self.params
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
        return {"w": torch.cat(out), "curve": (curve / len(w_all)).tolist()}

    def candidate_images(self, st: dict) -> torch.Tensor:
        """The optimised candidates' target views, unclamped (IF-GMI: the images its stages kept)."""
        if "images" in st:
            return st["images"]
        with torch.no_grad():
            return batched(self.view, st["w"], self.params["gen_batch"])

    def rank(self, access, imgs: torch.Tensor, y: torch.Tensor, n_ids: int, keep: int,
             gen: torch.Generator | None) -> torch.Tensor:
        """(n_ids, keep) indices of each identity's best candidates by mean target confidence over
        ``final_views`` random views, best first (all of them, in search order, when keep = candidates)."""
        p, k = self.params, len(imgs) // n_ids
        if keep >= k:
            return torch.arange(k).expand(n_ids, k)
        score = torch.zeros(len(imgs), device=imgs.device)
        with torch.no_grad():
            for _ in range(p["final_views"]):
                v = random_resized_crop(imgs, gen, (p["final_scale_min"], p["final_scale_max"]),
                                        (p["final_ratio_min"], p["final_ratio_max"]), flip=True)
                probs = batched(lambda x: self.target_probs(access, x), v, p["gen_batch"])
                score += probs.gather(1, y[:, None].to(probs.device)).squeeze(1).to(score.device)
        return score.view(n_ids, k).topk(keep, dim=1).indices.cpu()


register_attack(PPA)
