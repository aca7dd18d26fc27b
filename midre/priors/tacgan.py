"""``tacgan``: LOKT's target-conditioned ACGAN and its surrogate models (Nguyen et al., NeurIPS 2023).

Label-only: the target is reached ONLY through a counting :class:`~midre.attacks.base.QueryOracle` in
``labels`` mode (top-1 labels of GENERATED images); every query is counted and recorded in the prior's
``meta["queries"]`` (``queries_tacgan`` + ``queries_labelling``).  Three phases, as the reference:

1. **T-ACGAN** on the public images (labels ignored).  G = PLG-MI's conditional generator G(z, y),
   D = :class:`~midre.models.tacgan.ACGANDiscriminator` (real/fake head + K-way class head).  Each
   iteration: one G step, then ``n_critic`` D steps, each on a fresh real batch and a fresh fake batch::

       L_D = BCE(D(x_real), 1) + BCE(D(G(z, y)), 0) + alpha * CE(D_cls(G(z, y)), y_hat),  y_hat = argmax T(G(z, y))
       L_G = BCE(D(G(z, y)), 1) + alpha * CE(D_cls(G(z, y)), y)

   The class terms (and so the target queries) are switched on only after ``uncond_iterations``
   iterations (1-based iteration n > uncond_iterations), and ``iterations`` more follow: 1000 + 19000 on
   CelebA, Adam 2e-4 betas (0, 0.9), batch 128, n_critic 5, alpha 1.5 (the README's command).
2. **Labelling**: ``samples_per_class`` latents per class y, labelled by the target on G(z, y) (500 per
   class).  The labelled latents are saved, so a resumed run never pays for them twice.
3. **Surrogates** (``surrogate_archs``; the reference: DenseNet-121/161/169) trained on G(z, y) (regenerated
   each batch, G frozen in eval mode) with the target's labels: 0.5 CE(S(x), y_hat) + 0.5 CE(S(A(x)), y_hat),
   A = random resized crop 0.8-1 (square), colour jitter 0.2/0.2 with probability 0.5, flip, rotation 5
   degrees; SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over ``surrogate_epochs`` (200) epochs of
   ``surrogate_batches`` (117) batches of 256 drawn with replacement.

Seeded (one generator per phase, drawn from the prior's seed) and resumable at every phase (GAN
checkpoints every ``ckpt_every`` iterations, the labelled set, each surrogate epoch) with the same
result as an uninterrupted run.  ``until`` counts GAN iterations, then surrogate epochs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..attacks.base import QueryOracle
from ..attacks.plgmi import random_views
from ..errors import TrainingDivergedError
from ..gan_state import GanResume, load_module, load_safetensors
from ..models import create_model
from ..models.generators import CondGenerator
from ..models.tacgan import ACGANDiscriminator
from ..utils import atomic_path, make_progress
from .base import Prior, PriorKind, register_prior


class TACGANConfig(BaseModel):
    """Settings of the tacgan prior (T-ACGAN, labelling, surrogates)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(19000, ge=0)           # iterations with the class terms
    uncond_iterations: int = Field(1000, ge=0)     # first iterations without them (no queries)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = Field(5, ge=1)
    alpha: float = Field(1.5, ge=0)
    z_dim: int = Field(128, ge=1)
    width: int = Field(64, ge=4)
    g_width: int | None = Field(None, ge=4)       # the generator's width when not `width` (paper: 128)
    samples_per_class: int = Field(500, ge=1)
    surrogate_archs: list[str] = ["densenet121", "densenet169"]
    surrogate_kwargs: dict[str, Any] = {}
    surrogate_epochs: int = Field(200, ge=0)
    surrogate_batches: int = Field(117, ge=1)
    surrogate_batch_size: int = Field(256, ge=1)
    surrogate_lr: float = Field(0.1, gt=0)
    ckpt_every: int = Field(500, ge=1)
    hflip: bool = False                            # the reference's GAN loader does not flip real images

    @field_validator("hflip")
    @classmethod
    def _no_flip(cls, v: bool) -> bool:
        if v:
            raise ValueError("the tacgan prior never flips its real images (as the LOKT release); remove hflip")
        return v


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"g_width": 128},      # the release's generator channels (nf 64: 1024 x 4 x 4 -> ... -> 64)
    # 32 px synthetic benchmark on 2 CPU cores (like the other quick priors: width 16, lr 5e-4, batch 64)
    "quick": {"iterations": 300, "uncond_iterations": 30, "batch_size": 64, "lr": 5e-4, "n_critic": 2,
              "width": 16, "samples_per_class": 60, "surrogate_archs": ["smallresnet"], "surrogate_epochs": 6,
              "surrogate_batches": 40, "surrogate_batch_size": 64, "surrogate_lr": 0.05, "ckpt_every": 100},
}


# ================================================================================ the losses
def tacgan_discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, y_hat: torch.Tensor | None,
                              alpha: float) -> torch.Tensor:
    """BCE(D(real), 1) + BCE(D(fake), 0) [+ alpha * CE(D_cls(fake), y_hat) once the class terms are on]."""
    s_fake, c_fake = D(fake)
    s_real, _ = D(real)
    loss = (F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake))
            + F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real)))
    return loss + alpha * F.cross_entropy(c_fake, y_hat) if y_hat is not None else loss


def tacgan_generator_loss(D: nn.Module, fake: torch.Tensor, y: torch.Tensor, alpha: float, class_term: bool) -> torch.Tensor:
    """BCE(D(G(z, y)), 1) [+ alpha * CE(D_cls(G(z, y)), y)]."""
    s, c = D(fake)
    loss = F.binary_cross_entropy_with_logits(s, torch.ones_like(s))
    return loss + alpha * F.cross_entropy(c, y) if class_term else loss


def surrogate_views(x: torch.Tensor, gen: torch.Generator, jitter: float = 0.2, jitter_prob: float = 0.5) -> torch.Tensor:
    """The reference's surrogate augmentation: square crop 0.8-1, flip, rotation 5 degrees, then brightness /
    contrast jitter 0.2 applied to each image with probability ``jitter_prob``."""
    return random_views(x, gen, (0.8, 1.0), jitter, 5.0, jitter_p=jitter_prob)


def surrogate_loss(S: nn.Module, x: torch.Tensor, x_aug: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """0.5 CE(S(x), y_hat) + 0.5 CE(S(A(x)), y_hat)."""
    return 0.5 * F.cross_entropy(S(x), y_hat) + 0.5 * F.cross_entropy(S(x_aug), y_hat)


# ================================================================================ training
def _real_batch(images: torch.Tensor, bs: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(images), (bs,), generator=gen).to(images.device)
    return images[idx].float().div_(255.0)


def _fake(G: nn.Module, cfg: TACGANConfig, K: int, gen: torch.Generator, dev) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(dev)
    y = torch.randint(K, (cfg.batch_size,), generator=gen).to(dev)
    return G(z, y), y


def tacgan_iteration(n: int, cfg: TACGANConfig, G, D, optG, optD, images, oracle: QueryOracle, K: int,
                   gen: torch.Generator) -> tuple[float, float]:
    """Iteration n (1-based): one G step, then n_critic D steps."""
    dev = images.device
    on = n > cfg.uncond_iterations
    fake, y = _fake(G, cfg, K, gen, dev)
    for p in D.parameters():
        p.requires_grad_(False)
    g_loss = tacgan_generator_loss(D, fake, y, cfg.alpha, on)
    optG.zero_grad(set_to_none=True)
    g_loss.backward()
    optG.step()
    for p in D.parameters():
        p.requires_grad_(True)
    for _ in range(cfg.n_critic):
        real = _real_batch(images, cfg.batch_size, gen)
        with torch.no_grad():
            fake, _y = _fake(G, cfg, K, gen, dev)
            y_hat = oracle(fake).to(dev) if on else None
        d_loss = tacgan_discriminator_loss(D, real, fake, y_hat, cfg.alpha)
        optD.zero_grad(set_to_none=True)
        d_loss.backward()
        optD.step()
    return float(d_loss.detach()), float(g_loss.detach())


def _train_gan(cfg: TACGANConfig, images: torch.Tensor, oracle: QueryOracle, K: int, root: Path,
               gen: torch.Generator, progress: bool, stop: int) -> tuple[nn.Module, nn.Module, dict]:
    dev = images.device
    res, ch = int(images.shape[-1]), int(images.shape[1])
    G = CondGenerator(K, cfg.z_dim, res, ch, cfg.g_width or cfg.width).to(dev).train()
    D = ACGANDiscriminator(K, res, ch, cfg.width).to(dev).train()
    optG = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    optD = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    resume = GanResume(root)
    start, extra = resume.load({"G": G, "D": D}, {"G": optG, "D": optD}, gen)
    oracle.queries = int(extra["queries"]) if "queries" in extra else 0
    last: dict[str, float] = {}
    with make_progress(progress) as prog:
        task = prog.add_task("prior tacgan", total=stop, completed=start, status="")
        for it in range(start, stop):
            d, g = tacgan_iteration(it + 1, cfg, G, D, optG, optD, images, oracle, K, gen)
            if not (math.isfinite(d) and math.isfinite(g)):
                raise TrainingDivergedError(f"prior 'tacgan' diverged at iteration {it + 1} (NaN/inf loss); lower "
                                            f"its lr or delete '{root}' to restart")
            last = {"d_loss": d, "g_loss": g}
            prog.update(task, advance=1, status=f"D {d:.3g} G {g:.3g} queries {oracle.queries}")
            if (it + 1) % cfg.ckpt_every == 0 or it + 1 == stop:
                resume.save(it + 1, {"G": G, "D": D}, {"G": optG, "D": optD}, gen,
                            {"queries": torch.tensor(oracle.queries, dtype=torch.int64)})
    return G.eval(), D.eval(), {"final_losses": last, "iterations_done": max(start, stop)}


def _label(G: nn.Module, cfg: TACGANConfig, oracle: QueryOracle, K: int, root: Path, seed: int,
           dev) -> dict[str, torch.Tensor]:
    """samples_per_class latents per class, labelled by the target (saved: never queried twice)."""
    path = root / "labelled.safetensors"
    if path.exists():
        return {k: v.to(dev) for k, v in load_safetensors(path).items()}
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    n = cfg.samples_per_class
    z = torch.randn(K * n, cfg.z_dim, generator=g)
    y = torch.arange(K).repeat_interleave(n)
    before = oracle.queries
    with torch.no_grad():
        y_hat = torch.cat([oracle(G(z[i:i + 256].to(dev), y[i:i + 256].to(dev))).cpu()
                           for i in range(0, len(z), 256)])
    out = {"z": z, "y": y, "y_hat": y_hat.long(), "queries": torch.tensor(oracle.queries - before)}
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(out, str(tmp))
    return {k: v.to(dev) for k, v in out.items()}


def surrogate_epoch(S: nn.Module, opt, G: nn.Module, lab: dict, cfg: TACGANConfig, gen: torch.Generator) -> float:
    S.train()
    loss = torch.zeros(())
    for _ in range(cfg.surrogate_batches):
        idx = torch.randint(len(lab["z"]), (cfg.surrogate_batch_size,), generator=gen).to(lab["z"].device)
        with torch.no_grad():
            x = G(lab["z"][idx], lab["y"][idx])
            x_aug = surrogate_views(x, gen)
        loss = surrogate_loss(S, x, x_aug, lab["y_hat"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def _train_surrogates(cfg: TACGANConfig, G: nn.Module, lab: dict, K: int, res: int, root: Path, seed: int,
                      progress: bool, until: int | None) -> tuple[list[nn.Module], dict]:
    dev = lab["z"].device
    models = [create_model(a, num_classes=K, resolution=res, **cfg.surrogate_kwargs).to(dev)
              for a in cfg.surrogate_archs]
    E, gen = cfg.surrogate_epochs, torch.Generator().manual_seed(seed)
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.surrogate_lr, momentum=0.9, weight_decay=5e-4) for m in models]
    (root / "surrogates").mkdir(parents=True, exist_ok=True)
    resume = GanResume(root / "surrogates")
    done, _ = resume.load({f"s{i}": m for i, m in enumerate(models)}, {f"s{i}": o for i, o in enumerate(opts)}, gen)
    total = len(models) * E
    with make_progress(progress) as prog:
        task = prog.add_task("prior tacgan surrogates", total=total, completed=done, status="")
        for e_all in range(done, total):
            if until is not None and e_all >= until:
                return [m.eval() for m in models], {"incomplete": True}
            i, ep = divmod(e_all, E)
            for g_ in opts[i].param_groups:      # cosine annealing per epoch (CosineAnnealingLR, T_max = E)
                g_["lr"] = cfg.surrogate_lr * 0.5 * (1 + math.cos(math.pi * ep / E))
            loss = surrogate_epoch(models[i], opts[i], G, lab, cfg, gen)
            prog.update(task, advance=1, status=f"{cfg.surrogate_archs[i]} loss {loss:.3g}")
            resume.save(e_all + 1, {f"s{j}": m for j, m in enumerate(models)}, {f"s{j}": o for j, o in enumerate(opts)},
                        gen)
    with torch.no_grad():   # agreement with the target's labels on the labelled latents (no new query)
        x_all = [G(lab["z"][i:i + 256], lab["y"][i:i + 256]) for i in range(0, len(lab["z"]), 256)]
        agree = [100.0 * sum(int((m.eval()(x).argmax(1) == lab["y_hat"][i * 256:i * 256 + len(x)]).sum())
                             for i, x in enumerate(x_all)) / len(lab["z"]) for m in models]
    return [m.eval() for m in models], {"surrogate_agreement": agree}


def train_tacgan(cfg: TACGANConfig, images: torch.Tensor, target: nn.Module, root: Path, gen: torch.Generator,
                 progress: bool = False, until: int | None = None) -> tuple[nn.Module, nn.Module, list[nn.Module], dict]:
    """Train the T-ACGAN, label its samples and train the surrogates (see the module docstring).

    ``images``: the public images, uint8 (N, C, H, W) on the training device.  Returns G, D, the surrogate
    models and the metadata (queries, losses, agreement, ``incomplete`` when ``until`` stopped it)."""
    K = int(target.num_classes)
    res = int(images.shape[-1])
    seeds = torch.randint(2 ** 62, (2,), generator=gen).tolist()     # labelling, surrogates: before any resume
    oracle = QueryOracle(target, "labels")
    gan_total = cfg.uncond_iterations + cfg.iterations
    stop = gan_total if until is None else min(gan_total, until)
    G, D, extra = _train_gan(cfg, images, oracle, K, root, gen, progress, stop)
    extra["queries_tacgan"] = oracle.queries
    if stop < gan_total:
        return G, D, [], {**extra, "incomplete": True, "queries": oracle.queries}
    lab = _label(G, cfg, oracle, K, root, seeds[0], images.device)
    extra["queries_labelling"] = int(lab["queries"])
    extra["label_classes_hit"] = int(lab["y_hat"].unique().numel())
    models, s_extra = _train_surrogates(cfg, G, lab, K, res, root, seeds[1], progress,
                                        None if until is None else until - gan_total)
    extra.update(s_extra)
    extra["queries"] = extra["queries_tacgan"] + extra["queries_labelling"]
    extra.setdefault("incomplete", False)
    return G, D, models, extra


@register_prior
class TacganPrior(PriorKind):
    """LOKT's label-only T-ACGAN and its surrogate models; one per target (its queries counted)."""

    name = "tacgan"
    needs_target = True
    config_model = TACGANConfig
    presets = PRESETS
    version = 2                 # issue 24's review: the surrogate views through random_views (float rounding)
    preset_versions = {"paper": 2}          # and g_width 128

    def train(self, cfg: Any, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        G, D, models, extra = train_tacgan(cfg, data.images, target, root, gen, progress, until)
        meta["generator"] = {"class": type(G).__name__, "config": G.config}
        meta["discriminator"] = {"class": type(D).__name__, "config": D.config}
        meta["aug_models"] = [{"arch": m.arch, "num_classes": m.num_classes, "resolution": meta["resolution"],
                               "kwargs": dict(cfg.surrogate_kwargs)} for m in models]
        return Prior(self.name, G, D, aug_models=models), extra, not extra["incomplete"]

    def load(self, meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Prior:
        """The generator and discriminator (:meth:`PriorKind.load`), then the surrogates (``aug<i>.*``)."""
        prior = super().load(meta, state, where)
        for i, a in enumerate(meta.get("aug_models") or []):
            m = create_model(a["arch"], num_classes=int(a["num_classes"]), resolution=int(a["resolution"]),
                             **(a.get("kwargs") or {}))
            prior.aug_models.append(load_module(m, state, f"aug{i}.", where))
        return prior
