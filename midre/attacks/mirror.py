"""MIRROR, black-box model inversion by a genetic search in StyleGAN's w space (An et al., NDSS 2022).

Black-box: the attack sees only a :class:`~midre.attacks.base.QueryOracle` (softmax probabilities, every
image counted).  Prior kind ``stylegan2``.  One repeat of one identity batch, as the released code:

1. ``pool`` latents z ~ N(0, I) -> RAW w (no truncation, one w per latent); every pool image is
   QUERIED once (the queries are counted; one query serves all attacked identities).  The search runs
   in raw w; truncation (``psi`` 0.7 on the layers below ``cutoff`` 8) is applied only when an image is
   generated (:meth:`~midre.attacks.highres.StyleGANView.truncate`);
2. bounds: p = leaky_relu(w, 5) (the inverse of StyleGAN's leaky ReLU 0.2), per-dimension mean and std
   over the RAW pool in p-space; w is clipped to lrelu(mean +- ``p_std_ce`` * std);
3. the initial population of each identity = its ``population`` best pool latents by log p_y;
4. each generation: the elite (best log p_y) is kept; N - 1 children, each from two parents drawn with
   probability softmax(log p_y) (i.e. proportional to p_y), uniform crossover taking each coordinate from
   parent 1 with probability p1 / (p1 + p2); mutation: each coordinate with probability
   ``mutation_prob`` gets ``mutation_ce`` * U(-std, std) in p-space; children clipped to the bounds; then
   the whole population, the elite included, is queried again (N queries per identity and generation:
   against a target that samples at test time the elite's score is re-drawn, not kept);
5. an identity stops (no more queries) once its elite reaches p_y >= ``min_score``; after
   ``generations`` the elite is the repeat's reconstruction.

Defaults: the original's 100,000 pool, population 1,000, 100 generations, mutation 0.1 / 0.1, bound
1 std, stop at 0.95, no centre crop before the target (``center_crop`` 1.0; set it to crop).
``repeats`` independent runs give the final samples per identity (the original's "top 5 per class" ->
repeats 5).  Deviations from the released code (see docs/highres-attacks.md): the crossover weight uses
probabilities (the original divides log-probabilities, which favours the WORSE parent), and the
mutation noise is drawn per child (the original shares one noise vector per generation).

The generator call (:func:`mirror_view`: truncation at generation, the synthesis clamped to [0, 1] as the
release's generator wrapper does, then crop and resize) and the p-space box (:func:`p_space_bounds`) are
shared with MIRROR's white-box form, :mod:`midre.attacks.mirror_wb`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from .base import Attack, register_attack
from .highres import StyleGANView, batched, check_fraction, stylegan_view, target_resolution, to_target_view


# ============================================================================ shared with mirror_wb.py
def mirror_view(sg: StyleGANView, w: torch.Tensor, psi: float, cutoff: int, resolution: int,
                crop: float = 1.0) -> torch.Tensor:
    """MIRROR's generator call: raw single w (n, w_dim) -> the target's view in [0, 1].  Truncation (the
    layers below ``cutoff`` moved towards w_avg by ``psi``) happens here, when the image is generated;
    the synthesis output is clamped to [0, 1] as the release's generator wrapper does, then centre-cropped
    and resized.  Differentiable in ``w`` (the white-box form optimises through it)."""
    return to_target_view(sg.images(sg.truncate(w, psi, cutoff)).clamp(0, 1), resolution, crop).clamp(0, 1)


def p_space_bounds(pool: torch.Tensor, p_std_ce: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MIRROR's box for raw w: p = leaky_relu(w, 5) (the inverse of the mapping's leaky ReLU 0.2), the
    per-dimension mean +- ``p_std_ce`` std of the pool in p-space (biased std), mapped back with
    leaky_relu(., 0.2).  Returns (lo, hi, std_p), each (1, w_dim)."""
    ps = F.leaky_relu(pool, 5.0)
    mean, std = ps.mean(0, keepdim=True), ps.std(0, unbiased=False, keepdim=True)
    return F.leaky_relu(mean - p_std_ce * std, 0.2), F.leaky_relu(mean + p_std_ce * std, 0.2), std


class MIRROR(Attack):
    """MIRROR (black-box): genetic algorithm over w with fitness log p_y from the query oracle."""

    name = "mirror"
    strength = 50
    access = "black-box"
    prior_kinds = ("stylegan2",)
    defaults: dict[str, Any] = {
        "pool": 100000, "population": 1000, "generations": 100, "mutation_prob": 0.1, "mutation_ce": 0.1,
        "p_std_ce": 1.0, "min_score": 0.95, "psi": 0.7, "cutoff": 8, "center_crop": 1.0,
        "target_resolution": 0, "batch_size": 100, "gen_batch": 64, "max_queries": 0,
    }
    presets = {"quick": {"pool": 400, "population": 24, "generations": 12, "center_crop": 1.0, "batch_size": 50,
                         "gen_batch": 200}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        check_fraction(self.name, p, "center_crop", "psi", "min_score")
        if p["population"] < 2 or p["population"] > p["pool"]:
            raise ArgumentError(f"attack '{self.name}': 'population' must be between 2 and 'pool' ({p['pool']}), "
                                f"got {p['population']}")
        if p["mutation_prob"] > 1:
            raise ArgumentError(f"attack '{self.name}': 'mutation_prob' must be in [0, 1], got {p['mutation_prob']}")

    def steps_per_batch(self) -> int:
        return int(self.params["generations"])

    # ------------------------------------------------------------------ images and fitness (oracle only)
    def _images(self, w: torch.Tensor) -> torch.Tensor:
        """Raw (n, w_dim) -> target-view images in [0, 1], truncated when generated (no query)."""
        p = self.params
        return batched(lambda v: mirror_view(self.sg, v, p["psi"], p["cutoff"], self.res, p["center_crop"]), w,
                       p["gen_batch"])

    def _fitness(self, oracle, w: torch.Tensor, y: torch.Tensor, eraser=None) -> torch.Tensor:
        """log p_y of each w (one query per latent)."""
        with torch.no_grad():
            probs = oracle(self.to_target(self._images(w), eraser)).to(w.device)
        return probs.gather(1, y[:, None]).squeeze(1).clamp_min(1e-38).log()

    # ------------------------------------------------------------------ 1-3: pool, bounds, population
    def init_latents(self, oracle, ids, prior, gen):
        p = self.params
        self.sg = stylegan_view(prior)
        self.res = target_resolution(p, oracle, prior["stylegan2"], int(getattr(self.sg.G, "img_resolution", 0) or 0))
        pool = self.sg.sample_w(p["pool"], gen, 1.0, 0, single=True)[:, 0]          # raw w (pool, w_dim)
        q0 = oracle.queries
        with torch.no_grad():
            logp = batched(lambda w: oracle(self._images(w)).to(w.device)[:, ids].clamp_min(1e-38).log(), pool,
                           max(p["gen_batch"], 1))                                             # (pool, b)
        self.extra_meta["queries_search"] = self.extra_meta.get("queries_search", 0) + oracle.queries - q0
        lo, hi, std = p_space_bounds(pool, p["p_std_ce"])
        fit, idx = logp.T.topk(p["population"], dim=1)                                         # (b, N)
        return {"pop": pool[idx], "fit": fit, "p_std": std, "lo": lo, "hi": hi}

    # ------------------------------------------------------------------ 4: generations
    def _children(self, pop: torch.Tensor, fit: torch.Tensor, st: dict, gen: torch.Generator) -> torch.Tensor:
        """N - 1 children of one identity's population (N, d) with fitness (N,)."""
        p = self.params
        n, d = pop.shape
        weights = fit.softmax(0).cpu()
        par = torch.multinomial(weights, 2 * (n - 1), replacement=True, generator=gen).to(pop.device)
        p1, p2 = par[:n - 1], par[n - 1:]
        e1, e2 = fit[p1].exp(), fit[p2].exp()
        share = (e1 / (e1 + e2).clamp_min(1e-38))[:, None]
        take1 = torch.rand(n - 1, d, generator=gen).to(pop.device) < share
        child = torch.where(take1, pop[p1], pop[p2])
        mut = (torch.rand(n - 1, d, generator=gen) < p["mutation_prob"]).to(pop.device)
        noise = p["mutation_ce"] * (2 * torch.rand(n - 1, d, generator=gen).to(pop.device) - 1) * st["p_std"]
        child = F.leaky_relu(F.leaky_relu(child, 5.0) + mut * noise, 0.2)
        return torch.maximum(torch.minimum(child, st["hi"]), st["lo"])

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        p = self.params
        pop, fit = state["pop"].clone(), state["fit"].clone()
        stop = math.log(p["min_score"])
        done_at = torch.full((len(ids),), -1, dtype=torch.long)
        for g in range(p["generations"]):
            order = fit.argsort(1, descending=True)                 # elite first
            pop, fit = pop.gather(1, order[:, :, None].expand_as(pop)), fit.gather(1, order)
            for i in range(len(ids)):
                if fit[i, 0] >= stop:
                    if done_at[i] < 0:
                        done_at[i] = g
                    continue
                pop[i, 1:] = self._children(pop[i], fit[i], state, gen)
                fit[i] = self._fitness(oracle, pop[i], ids[i].expand(len(pop[i])), eraser)   # elite re-queried
            log(float(-fit.max(1).values.mean()))
            tick()
        best = fit.argmax(1)
        self.extra_meta.setdefault("generations_to_min_score", []).extend(int(v) for v in done_at)
        return {"w": pop[torch.arange(len(ids)), best], "fit": fit.max(1).values}

    def final_selection(self, oracle, ids, prior, state, gen):
        state["latents"] = state["w"].detach().float().cpu()
        self.extra_meta.setdefault("elite_confidence", []).extend(float(v) for v in state["fit"].exp())
        with torch.no_grad():
            return self._images(state["w"])


register_attack(MIRROR)
