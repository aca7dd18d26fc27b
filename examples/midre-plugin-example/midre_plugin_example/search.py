"""Random search: a black-box attack behind midre's Attack interface.

The attack sees only a query oracle (softmax probabilities, every image counted).  Per identity it keeps a
population of latents of the public GAN prior (kind ``gan``) and runs a (mu + lambda) evolution strategy:
the ``elite`` latents with the highest log p(identity | G(z)) survive, the rest of the population is
replaced by Gaussian steps (scale ``sigma``, shrinking by ``sigma_decay`` per iteration) from random elites.
The logged objective is the mean over identities of the best -log p (lower = stronger attack).
"""
from __future__ import annotations

import torch

from midre.attacks import Attack
from midre.errors import ArgumentError


class RandomSearch(Attack):
    """Random search: black-box (mu + lambda) evolution strategy in the GAN prior's latent space."""

    name = "random_search"
    access = "black-box"
    prior_kinds = ("gan",)
    defaults = {"iterations": 200, "population": 32, "elite": 4, "sigma": 0.5, "sigma_decay": 0.98,
                "z_clip": 1.5, "batch_size": 50, "max_queries": 0}
    presets = {"quick": {"iterations": 30, "population": 16}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        if not 1 <= p["elite"] < p["population"]:
            raise ArgumentError(f"attack 'random_search': elite must be in [1, population), got elite={p['elite']}, "
                                f"population={p['population']}")

    def _clip(self, z: torch.Tensor) -> torch.Tensor:
        c = self.params["z_clip"]
        return z.clamp(-c, c) if c > 0 else z

    def _score(self, oracle, G, z, ids, eraser) -> torch.Tensor:
        """log p(identity) of every latent: z (b, P, d) -> (b, P)."""
        b, P, d = z.shape
        with torch.no_grad():
            probs = oracle(self.to_target(G(z.reshape(-1, d)), eraser)).to(z.device).view(b, P, -1)
        return probs.gather(2, ids.view(b, 1, 1).expand(b, P, 1)).squeeze(2).clamp_min(1e-12).log()

    def init_latents(self, oracle, ids, prior, gen):
        G = prior["gan"].generator
        z = torch.randn(len(ids), self.params["population"], G.z_dim, generator=gen).to(ids.device)
        return {"z": self._clip(z)}

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        G, p = prior["gan"].generator, self.params
        z = state["z"]
        b, P, d = z.shape
        k, sigma = p["elite"], p["sigma"]
        score = self._score(oracle, G, z, ids, eraser)
        for _ in range(p["iterations"]):
            top = score.topk(k, dim=1).indices                                   # (b, k)
            elites, elite_score = z.gather(1, top[..., None].expand(b, k, d)), score.gather(1, top)
            parent = torch.randint(k, (b, P - k), generator=gen).to(z.device)
            step = sigma * torch.randn(b, P - k, d, generator=gen).to(z.device)
            children = self._clip(elites.gather(1, parent[..., None].expand(b, P - k, d)) + step)
            z = torch.cat([elites, children], 1)
            score = torch.cat([elite_score, self._score(oracle, G, children, ids, eraser)], 1)
            sigma *= p["sigma_decay"]
            log(float(-score.max(1).values.mean()))
            tick()
        return {"z": z[torch.arange(b, device=z.device), score.argmax(1)]}

    def decode(self, prior, state, ids, gen):
        return prior["gan"].generator(state["z"])
