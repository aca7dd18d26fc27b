"""SecretGen (Yuan et al., ECCV 2022, "Privacy Recovery on Pre-trained Models via Distribution Discrimination").

Threat model (more than the other attacks get): the attacker holds each attacked private image with a
region masked out (the centre square of half the side, or the eyes + nose/mouth "face" mask) and fills
the hole.  The attack declares ``needs_masked_private``: it receives the attacked identities' private
training images with the hole zeroed (midre.attacks.masked), never the hole's pixels.  Repeat ``r`` of
identity ``y`` fills the hole of ``y``'s ``r``-th training image (modulo their count).  The returned
image is ``x (1 - m) + G(x_m, m, z) m``: outside the hole it IS the private image.

Stage 1 is the prior (``secretgen`` / ``secretgen_bb``, midre.priors.secretgen).  Stage 2 (reference
``stage2.py``, modes ``ini-wb`` / ``ini-bb``; ``true_label`` gives ``full`` / ``full-bb``):

1. *distribution discrimination*: ``n_init`` (200) codes z ~ N(0, I) clamped to [-1, 1] fill the hole;
   the pseudo-label is the class with the highest target probability averaged over the filled image and
   its 16 cut-outs (a 4 x 4 grid of squares of a quarter side, each in turn filled with the public mean
   pixel), among the classes that some z's filled image is predicted as; the start code is the most
   confident z predicted as that label (a fresh N(0, I) code when none is, with ``true_label``);
2. *white-box* (``secretgen``): min_z  -D_L(crop) - D_G + 100 * NLL_T(label), Nesterov momentum 0.9,
   step 0.01, z clamped to [-1, 1] after each step, 1500 steps (the reference's rule, which is exactly
   SGD(nesterov) + clamp, as GMI's);  *black-box* (``secretgen_bb``): the same without the NLL term --
   the target is only queried in step 1, through the counting oracle: 17 x n_init queries per image
   (n_init with ``true_label``: no cut-outs), 3,400 at the reference's settings.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from .base import Attack, latent_descent, register_attack
from .masked import fill, hole_mask, random_square


def cutouts(x: torch.Tensor, fill_value: torch.Tensor, grid: int = 4) -> list[torch.Tensor]:
    """The reference's fixed cut-outs: a ``grid`` x ``grid`` tiling of squares of side R / grid, each copy of
    ``x`` with one square replaced by the public mean pixel (16 copies at the reference's grid 4)."""
    side = x.shape[-1] // grid
    out = []
    for i in range(grid):
        for j in range(grid):
            c = x.clone()
            c[..., i * side:(i + 1) * side, j * side:(j + 1) * side] = fill_value
            out.append(c)
    return out


def pseudo_labels(avg_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, K) averaged probabilities, (B, n) per-code predicted labels -> for each image the most probable
    class (by ``avg_probs``) that at least one code's filled image is predicted as."""
    out = torch.empty(avg_probs.shape[0], dtype=torch.long, device=avg_probs.device)
    for b, order in enumerate(avg_probs.argsort(1, descending=True)):
        hit = torch.isin(order, labels[b])
        out[b] = order[hit.nonzero()[0, 0]]
    return out


class SecretGen(Attack):
    """SecretGen, white-box: distribution-discrimination start, then critics + 100 x NLL of the target."""

    name = "secretgen"
    access = "white-box"
    prior_kinds = ("secretgen",)
    strength = 35
    needs_masked_private = True
    defaults = {"iterations": 1500, "lr": 0.01, "momentum": 0.9, "lambda_iden": 100.0, "n_init": 200,
                "z_clip": 1.0, "true_label": False, "batch_size": 64}
    presets = {"quick": {"iterations": 100, "n_init": 20, "batch_size": 50}}

    def validate(self) -> None:
        super().validate()
        if self.params["n_init"] < 1:
            raise ArgumentError(f"attack '{self.name}': 'n_init' must be >= 1, got {self.params['n_init']}")

    def prior(self, priors: Mapping[str, Any]):
        return priors[self.prior_kinds[0]]

    def hole_mask(self, priors: Mapping[str, Any], resolution: int) -> torch.Tensor:
        """The hole the prior was trained to fill (its ``mask`` setting), at ``resolution``."""
        return hole_mask(self.prior(priors).meta.get("config", {}).get("mask", "center"), resolution)

    def spec(self) -> dict[str, Any]:        # the resume key follows the masked images too
        m = self.masked_private
        return {**super().spec(), **({"masked_private": m.fingerprint()} if m is not None else {})}

    def scores(self, access, x: torch.Tensor, eraser) -> torch.Tensor:
        """The target's probabilities (white-box: softmax of the model; black-box: the counting oracle)."""
        with torch.no_grad():
            return access(self.to_target(x, eraser)).float().softmax(1)

    def init_latents(self, access, ids, prior, gen):
        if self.masked_private is None:
            raise ArgumentError(f"attack '{self.name}' needs masked private images; give them with "
                                "midre.attacks.masked.give_masked_private (midre attack / midre run do)")
        G = self.prior(prior).generator
        m = self.hole_mask(prior, self.masked_private.images.shape[-1]).to(ids.device)
        return {"x": self.masked_private.take(ids, self.chunk.repeat), "mask": m, "z_dim": G.z_dim}

    def start(self, access, ids, prior, state, gen, eraser) -> dict:
        """Step 1: ``n_init`` clamped codes, pseudo-label by cut-out averaging, most confident code of it."""
        p, G = self.params, self.prior(prior).generator
        x, m, B = state["x"], state["mask"], len(ids)
        zs = torch.randn(p["n_init"], B, state["z_dim"], generator=gen).to(ids.device).clamp(-1, 1)
        avg, conf, labels = 0.0, [], []
        for z in zs:
            with torch.no_grad():
                filled = fill(x, m, G(x, m, z))
            probs = self.scores(access, filled, eraser)
            if not p["true_label"]:
                avg = avg + probs + sum(self.scores(access, c, eraser) for c in cutouts(filled, G.fill_value))
            c, lab = probs.max(1)
            conf.append(c)
            labels.append(lab)
        conf, labels = torch.stack(conf, 1), torch.stack(labels, 1)          # (B, n_init)
        target = ids if p["true_label"] else pseudo_labels(avg, labels)
        ok = labels == target[:, None]
        best = torch.where(ok, conf, torch.full_like(conf, -1.0)).argmax(1)
        z0 = zs[best, torch.arange(B, device=ids.device)]
        fresh = torch.randn(B, state["z_dim"], generator=gen).to(ids.device)     # the reference's fallback
        z0 = torch.where(ok.any(1, keepdim=True), z0, fresh)
        return {**state, "z": z0, "label": target}

    def objective(self, access, prior, filled: torch.Tensor, state: dict, area, eraser) -> torch.Tensor:
        loss = self.prior(prior).discriminator.score(filled, area)
        if self.params["lambda_iden"] > 0:
            nll = F.cross_entropy(access(self.to_target(filled, eraser)), state["label"])
            loss = loss + self.params["lambda_iden"] * nll
        return loss

    def invert(self, access, ids, prior, state, gen, eraser, log, tick):
        state = self.start(access, ids, prior, state, gen, eraser)
        p, G = self.params, self.prior(prior).generator
        x, m = state["x"], state["mask"]
        def loss_of(z: torch.Tensor) -> torch.Tensor:
            area = random_square(x.shape[-1], gen)          # the local critic's crop, new each step
            return self.objective(access, prior, fill(x, m, G(x, m, z)), state, area, eraser)

        z = latent_descent(state["z"], loss_of, p, log, tick, self.chunk.share(len(ids)))
        return {**state, "start": state["z"], "z": z, "latents": z}

    def decode(self, prior, state, ids, gen):
        return fill(state["x"], state["mask"], self.prior(prior).generator(state["x"], state["mask"], state["z"]))


class SecretGenBlackBox(SecretGen):
    """SecretGen, black-box: the same start by oracle queries, then the critics alone (no target gradient)."""

    name = "secretgen_bb"
    access = "black-box"
    prior_kinds = ("secretgen_bb",)
    strength = 15
    defaults = {**SecretGen.defaults, "lambda_iden": 0.0, "max_queries": 0}

    def validate(self) -> None:
        super().validate()
        if self.params["lambda_iden"] != 0:
            raise ArgumentError("attack 'secretgen_bb' is black-box: it has no target gradient, keep lambda_iden=0")

    def scores(self, access, x, eraser):
        return access(self.to_target(x, eraser))        # the oracle's probabilities, every image counted


register_attack(SecretGen)
register_attack(SecretGenBlackBox)
