"""C2FMI, coarse-to-fine black-box model inversion (Ye et al., "C2FMI: Corse-to-Fine Black-box Model
Inversion Attack", IEEE TDSC 2023).

Black-box: the target is reached only through a :class:`~midre.attacks.base.QueryOracle` (probabilities,
every image counted).  Prior kinds ``stylegan2`` (the generator; the search runs in its raw single w) and
``c2fmi`` (the attacker's public embedding model E and the inverse model M from the target's prediction
to E's logits, midre/priors/c2fmi.py).  Per identity y, as the authors' release (``main_attack.py`` with
``DE_c2b_5_bin2``):

1. **start**: ``pool`` w = mapping(z), z ~ N(0, I), no truncation (one pool per identity batch);
   ``candidates`` starting latents, each the mean of the pool pair (2j, 2j + 1), j uniform in
   0 .. pool / 10 - 100;
2. **coarse stage** (white-box on the attacker's own networks, no query): ``coarse_steps`` Adam steps
   (lr ``coarse_lr``, StepLR(``lr_step``, ``lr_gamma``)) on the latents minimising
   MSE(E(G(w)), M(normalise(p))), p = |N(0, I)| over the K classes with p_y = 1e18;
   in the last step the images of that step are QUERIED (one query per candidate) and the ``select``
   latents whose images had the highest p_y (after that step's update) go on;
3. **fine stage** (differential evolution, queries only): the population is filled up to ``population``
   with 0.7 (x1 + x2 + 2 x3) / 4 + 0.3 w_r (three distinct selected latents, w_r the mean of three fresh
   mapped w); each of ``generations`` generations queries the population (P queries), builds the children
   x_i + ``best_pull`` (x_best - x_i) + sum_{k < nv} beta (x_a - x_b) (a, b uniform, with replacement;
   beta = ``beta`` until the last ``beta_ramp`` generations, then beta (G - g) / ``beta_div``), takes
   each coordinate of the child with probability 1 - ``cross_prob`` (else the parent's), queries the
   children (P queries) and keeps a child only where it scores strictly higher;
4. the final population is queried once more (P queries) and the best image is the reconstruction.

Queries per identity: ``candidates`` + 2 P ``generations`` + P (the paper preset: 16 + 32,000 + 32), in
``meta["queries"]``; the prior's one query per public image is reported as ``meta["queries_prior"]``.
``repeats`` are independent runs.  Images reach the target and E clamped to [0, 1] and resized to each
one's input size (``center_crop`` of the side first, 1.0 = none, as the release).  Deviations from the
release (docs/attacks.md): the embedding model is trained on the public identities (the release uses an
InceptionResNet-V1 trained on CASIA-WebFace), and the StyleGAN2 is the ``stylegan2`` prior.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from .base import Attack, register_attack
from .highres import Ticker, batched, check_fraction, stylegan_view, target_resolution, to_target_view


def de_children(pop: torch.Tensor, best: torch.Tensor, beta: float, pull: float, pairs: torch.Tensor) -> torch.Tensor:
    """C2FMI's DE mutation: x_i + pull (x_best - x_i) + sum_k beta (x_pairs[i,k,0] - x_pairs[i,k,1])."""
    diff = (pop[pairs[:, :, 0]] - pop[pairs[:, :, 1]]).sum(1)
    return pop + pull * (best[None] - pop) + beta * diff


def de_beta(g: int, generations: int, beta: float, ramp: int, div: float) -> float:
    """The release's schedule: ``beta`` until the last ``ramp`` generations, then beta (G - g) / div."""
    return beta if g < generations - ramp else beta * (generations - g) / div


class C2FMI(Attack):
    """C2FMI (black-box): embedding-guided coarse search, then differential evolution on target queries."""

    name = "c2fmi"
    strength = 35       # below RLB-MI (the audit runs the two strongest; this prior needs labelled public ids)
    access = "black-box"
    prior_kinds = ("stylegan2", "c2fmi")
    defaults: dict[str, Any] = {
        "pool": 10000, "candidates": 16, "coarse_steps": 20, "coarse_lr": 0.02, "lr_step": 20, "lr_gamma": 0.95,
        "select": 10, "population": 32, "generations": 500, "nv": 4, "best_pull": 0.02, "beta": 0.1,
        "beta_ramp": 30, "beta_div": 50.0, "cross_prob": 0.5, "center_crop": 1.0, "target_resolution": 0,
        "batch_size": 60, "gen_batch": 64, "max_queries": 0,
    }
    presets = {"quick": {"pool": 2000, "candidates": 12, "select": 6, "population": 16, "generations": 40,
                         "beta_ramp": 8, "beta_div": 12.0, "batch_size": 50, "gen_batch": 200}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        check_fraction(self.name, p, "center_crop")
        if not 3 <= p["select"] <= p["candidates"]:
            raise ArgumentError(f"attack '{self.name}': 'select' must be between 3 and 'candidates' "
                                f"({p['candidates']}), got {p['select']}")
        if p["population"] < p["select"] or p["pool"] < 2 or p["beta_div"] <= 0:
            raise ArgumentError(f"attack '{self.name}': need population >= select ({p['select']}), pool >= 2 "
                                "and beta_div > 0")
        if p["cross_prob"] > 1:
            raise ArgumentError(f"attack '{self.name}': 'cross_prob' must be in [0, 1], got {p['cross_prob']}")

    def steps_per_batch(self) -> int:
        return int(self.params["coarse_steps"] + self.params["generations"])

    # ------------------------------------------------------------------ images
    def _images(self, w: torch.Tensor, res: int) -> torch.Tensor:
        """Raw single w (n, w_dim) -> images in [0, 1] at ``res`` (differentiable; clamped like the release)."""
        return to_target_view(self.sg.images(w[:, None]), res, self.params["center_crop"]).clamp(0, 1)

    def _fitness(self, oracle, w: torch.Tensor, y: int, eraser) -> torch.Tensor:
        """p_y of each latent's image (one query each)."""
        with torch.no_grad():
            x = batched(lambda v: self._images(v, self.res), w, self.params["gen_batch"])
            return oracle(self.to_target(x, eraser)).float()[:, y].to(w.device)

    # ------------------------------------------------------------------ 1: the start
    def init_latents(self, oracle, ids, prior, gen):
        p = self.params
        self.sg = stylegan_view(prior)
        self.res = target_resolution(p, oracle, prior["stylegan2"], int(getattr(self.sg.G, "img_resolution", 0) or 0))
        embed, mapping = prior["c2fmi"].aug_models
        self.embed, self.mapping = embed, mapping
        self.embed_res = int(getattr(embed, "input_resolution", 0) or prior["c2fmi"].meta.get("resolution") or self.res)
        # the prior's own target queries (inverse-model training), reported beside the attack's
        self.extra_meta["queries_prior"] = prior["c2fmi"].meta.get("target_queries")
        pool = self.sg.sample_w(p["pool"], gen, 1.0, 0, single=True)[:, 0]                  # raw w (pool, w_dim)
        hi = max(0, p["pool"] // 10 - 100)
        starts = []
        for _ in range(len(ids)):
            j = torch.randint(0, hi + 1, (p["candidates"],), generator=gen).to(pool.device)
            starts.append((pool[2 * j] + pool[(2 * j + 1).clamp(max=p["pool"] - 1)]) / 2)
        return {"w": torch.stack(starts)}                                                     # (b, B, w_dim)

    # ------------------------------------------------------------------ 2: coarse stage
    def coarse(self, oracle, w0: torch.Tensor, y: int, gen: torch.Generator, eraser, log) -> torch.Tensor:
        """Adam on the latents towards M's embedding of a one-hot-like prediction; returns the ``select`` best."""
        p = self.params
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=p["coarse_lr"])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, p["lr_step"]), gamma=p["lr_gamma"])
        k = int(self.mapping.num_classes)
        score = None
        for i in range(p["coarse_steps"]):
            x = self.sg.images(w[:, None])
            if i == p["coarse_steps"] - 1:             # the release queries the last step's images
                with torch.no_grad():
                    xt = to_target_view(x, self.res, p["center_crop"]).clamp(0, 1)
                    score = oracle(self.to_target(xt, eraser)).float()[:, y].to(w.device)
            emb = self.embed(to_target_view(x, self.embed_res, p["center_crop"]).clamp(0, 1))
            pred = torch.randn(len(w), k, generator=gen).abs().to(w.device)
            pred[:, y] = 1e18
            loss = F.mse_loss(emb, self.mapping(F.normalize(pred, dim=1)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log(float(loss.detach()))
        w = w.detach()
        if score is None:                              # no coarse step: score the starting latents
            score = self._fitness(oracle, w, y, eraser)
        return w[score.topk(p["select"]).indices]

    # ------------------------------------------------------------------ 3: fine stage
    def extend(self, sel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Fill the population: 0.7 * 0.5 (0.5 (x1 + x2) + x3) + 0.3 * mean of three fresh mapped w."""
        extra = []
        for _ in range(self.params["population"] - len(sel)):
            a, b, c = torch.randperm(len(sel), generator=gen)[:3].tolist()
            u = 0.5 * (0.5 * (sel[a] + sel[b]) + sel[c])
            wr = self.sg.sample_w(3, gen, 1.0, 0, single=True)[:, 0].mean(0).to(sel.device)
            extra.append(0.7 * u + 0.3 * wr)
        return torch.cat([sel, torch.stack(extra)]) if extra else sel

    def evolve(self, oracle, pop: torch.Tensor, y: int, gen: torch.Generator, eraser, log) -> torch.Tensor:
        p = self.params
        n, d = pop.shape
        G = p["generations"]
        for g in range(G):
            fit = self._fitness(oracle, pop, y, eraser)
            pairs = torch.randint(0, n, (n, p["nv"], 2), generator=gen).to(pop.device)
            beta = de_beta(g, G, p["beta"], p["beta_ramp"], p["beta_div"])
            kids = de_children(pop, pop[fit.argmax()], beta, p["best_pull"], pairs)
            take = (torch.rand(n, d, generator=gen) > p["cross_prob"]).to(pop.device)
            kids = torch.where(take, kids, pop)
            kfit = self._fitness(oracle, kids, y, eraser)
            better = kfit > fit
            pop = torch.where(better[:, None], kids, pop)
            log(-float(torch.maximum(fit, kfit).max().clamp_min(1e-38).log()))
        return pop

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        steps = self.steps_per_batch()
        ticker = Ticker(tick, steps, steps * len(ids))
        curve = torch.zeros(steps)
        ws, scores = [], []
        for i in range(len(ids)):
            y = int(ids[i])
            trace: list[float] = []

            def rec(v: float) -> None:
                trace.append(v)
                ticker.step()

            q0 = oracle.queries
            sel = self.coarse(oracle, state["w"][i], y, gen, eraser, rec)
            self.extra_meta["queries_coarse"] = self.extra_meta.get("queries_coarse", 0) + oracle.queries - q0
            pop = self.evolve(oracle, self.extend(sel, gen), y, gen, eraser, rec)
            fit = self._fitness(oracle, pop, y, eraser)                    # the release's final query
            best = int(fit.argmax())
            ws.append(pop[best])
            scores.append(float(fit[best]))
            curve[:len(trace)] += torch.tensor(trace)
        for v in curve / len(ids):
            log(float(v))
        self.extra_meta.setdefault("best_confidence", []).extend(scores)
        return {"w": torch.stack(ws)}

    def final_selection(self, oracle, ids, prior, state, gen):
        state["latents"] = state["w"].detach().float().cpu()
        with torch.no_grad():
            return self._images(state["w"], self.res)


register_attack(C2FMI)
