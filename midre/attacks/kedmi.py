"""KedMI, Knowledge-Enriched Distributional Model Inversion (Chen et al., ICCV 2021).

White-box.  Prior kind ``kedmi``: a GAN whose discriminator has K+1 outputs (K target identities +
"fake"), trained with the target's soft labels on public data.  The attack learns a Gaussian
N(mu, diag(exp(log_var))) over z per identity (reparameterised samples, Adam)::

    min_{mu, log_var}  E_eps [ softplus(LSE(D_K(G(z)))) - LSE(D_K(G(z))) + lambda_iden * CE(T(G(z)), y) ]

where D_K are the identity logits relative to the fake logit.  As in the reference release, ``mu``
starts at 0 and ``log_var`` at 1 (``log_var_init``), one fresh sample per step.  The KedMI release
clamps z only after the step on a detached copy, which has no effect, so ``z_clip = 0`` here; LOMMA's
KedMI (``clipz``) clamps every sample to [-1, 1] before G (see lomma.py).  Defaults (protocols.md):
2400 iterations, Adam lr 0.02, lambda 100.

Repeats: as in the release, ONE distribution is fitted per identity (in the first repeat) and every
repeat draws its own sample from it (``refit_per_repeat=False``; the release's 5 "seeds" are 5 samples
of one fit).  A run resumed after its first repeat was saved remakes that fit exactly (repeat 0's seeds), so
its later repeats draw from the uninterrupted run's distribution.  ``refit_per_repeat=True`` fits a new distribution in every repeat, so the spread over
repeats also measures the optimisation's run-to-run variation (at R times the cost).  A repeat that
reuses a fit logs that fit's loss curve again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_attack
from .gmi import GMI


class KedMI(GMI):
    """KedMI: distributional latent search with the inversion-specific (K+1)-class discriminator."""

    name = "kedmi"
    strength = 60
    prior_kinds = ("kedmi",)
    defaults = {"iterations": 2400, "lr": 0.02, "lambda_iden": 100.0, "lambda_prior": 1.0, "batch_size": 60,
                "z_clip": 0.0, "log_var_init": 1.0, "refit_per_repeat": False}
    presets = {"quick": {"iterations": 150, "batch_size": 50}}

    def init_latents(self, access, ids, prior, gen):
        d = self.generator(prior).z_dim
        mu = torch.zeros(len(ids), d, device=ids.device)
        return {"mu": mu, "log_var": torch.full_like(mu, float(self.params["log_var_init"]))}

    def prior_loss(self, prior, x):
        lse = prior[self.prior_kinds[0]].discriminator.class_logits(x).logsumexp(1)
        return (F.softplus(lse) - lse).mean()

    def _sample(self, mu, log_var, gen):
        eps = torch.randn(mu.shape, generator=gen).to(mu.device)
        z = mu + eps * torch.exp(0.5 * log_var)
        c = self.params["z_clip"]
        return z.clamp(-c, c) if c > 0 else z

    def run(self, *args, **kwargs):
        self._fits: dict | None = {}   # identities of a batch -> (fitted state, loss curve), this run only
        try:
            return super().run(*args, **kwargs)
        finally:
            self._fits = None

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        key = tuple(ids.tolist())
        fits = getattr(self, "_fits", None)
        if fits is not None and key in fits and not self.params["refit_per_repeat"]:
            fitted, curve = fits[key]
            for v in curve:
                log(v)
                tick()
            return fitted
        curve: list[float] = []

        def log_both(v: float) -> None:
            curve.append(v)
            log(v)

        if fits is not None and self.chunk.repeat > 0 and not self.params["refit_per_repeat"]:
            fitted = self._first_repeat_fit(access, ids, prior, eraser, log_both, tick)   # resumed after repeat 0
        else:
            fitted = self._fit(access, ids, prior, state, gen, eraser, log_both, tick)
        if fits is not None:
            fits[key] = (fitted, curve)
        return fitted

    def _first_repeat_fit(self, access, ids, prior, eraser, log, tick):
        """Repeat 0's fit of this batch, remade with repeat 0's generator and global seed: a run resumed after
        its first repeat was saved has no cached fit, and its later repeats must sample the same one."""
        c = self.chunk
        gen, global_seed = c.rngs(self.name, repeat=0)
        with torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []):
            torch.manual_seed(global_seed)
            state = self.init_latents(access, ids, prior, gen)
            state = self.select_candidates(access, ids, prior, state, gen)
            return self._fit(access, ids, prior, state, gen, eraser, log, tick)

    def _fit(self, access, ids, prior, state, gen, eraser, log, tick):
        G = self.generator(prior)
        p = self.params
        mu = state["mu"].clone().requires_grad_(True)
        log_var = state["log_var"].clone().requires_grad_(True)
        opt = torch.optim.Adam([mu, log_var], lr=p["lr"])
        for _ in range(p["iterations"]):
            loss = self.objective(access, prior, G(self._sample(mu, log_var, gen)), ids, eraser)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log(float(loss.detach()))
            tick()
        return {"mu": mu.detach(), "log_var": log_var.detach()}

    def decode(self, prior, state, ids, gen):
        return self.generator(prior)(self._sample(state["mu"], state["log_var"], gen))


register_attack(KedMI)
