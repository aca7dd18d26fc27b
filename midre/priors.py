"""Attack priors trained on PUBLIC data only, cached in a directory and resumable.

==========  ==========================================================================================
kind        what it is (used by)
==========  ==========================================================================================
``gan``     DCGAN generator + critic trained with WGAN-GP on public images (GMI, BREP-MI, LOMMA+GMI)
``kedmi``   inversion-specific GAN: (K+1)-output discriminator trained with the target's soft labels
            on public images (0.5 x the unsupervised term), generator by L1 feature matching + 1e-4 x
            the entropy of D's identity prediction (KedMI, LOMMA+KedMI); one per target
``cgan``    conditional GAN (conditional-BN generator, projection discriminator, hinge loss) on public
            images pseudo-labelled by the target (top-k most confident per class) + alpha * the
            target's max-margin loss on generated images (PLG-MI); one per target
``lomma``   augmented models (other architectures distilled from the target on public data with KL to
            its soft labels) + p_reg, the mean target penultimate feature of public images (LOMMA)
``c2fmi``   C2FMI's embedding model (trained on the public identities) + inverse model from the target's
            prediction to the embedding logits, the target reached through a counting query oracle;
            one per target (midre/prior_c2fmi.py)
==========  ==========================================================================================

``stylegan2``: a StyleGAN2 generator for PPA, IF-GMI, MIRROR and RLB-MI: converted official weights
(``path``) or a small one trained on public images; see midre/priors_stylegan2.py.

The target is only ever *queried on public images*; no private image reaches a prior (see
:func:`assert_public_only`, used by ``midre attack``).

Caching: ``train_prior`` stores a prior in ``out_dir/<kind>-<key>/`` where ``key`` hashes the kind, the
public data (image bytes), the target's weights, the resolved config and the seed.  A second call with
the same inputs loads it.  During training a resume state (weights, optimizer moments, RNG state,
iteration) is written every ``ckpt_every`` iterations; an interrupted call continues from it and ends
with the same weights as an uninterrupted one.

Presets: ``"paper"`` = the 64 px CelebA settings of protocols.md; ``"quick"`` = scaled down for the
embedded 32 px synthetic benchmark on 2 CPU cores (each prior trains in about a minute).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .checkpoint import read_json_record
from .errors import ArgumentError, CheckpointError, DataError, did_you_mean
from .models.generators import (CondGenerator, DCGANDiscriminator, DCGANGenerator, ProjectionDiscriminator,
                                build_gan_module)
from . import tblog
from .gan_state import GanResume, load_module, load_safetensors
from .losses import max_margin_loss
from .utils import (atomic_path, atomic_write_json, config_hash, frozen, make_progress, model_fingerprint,
                    resolve_device)

PRIOR_KINDS = ("gan", "kedmi", "cgan", "lomma", "stylegan2", "c2fmi")
TARGET_FREE_KINDS = ("gan", "stylegan2")       # shared by all targets (trained without the target)
PRIOR_FORMAT = "midre-prior"


class PriorConfig(BaseModel):
    """Hyper-parameters of a prior (fields a kind does not use are ignored by it)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(50000, ge=0)        # generator steps (GANs)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = Field(5, ge=1)              # discriminator steps per generator step
    gp_weight: float = Field(10.0, ge=0)         # WGAN-GP
    z_dim: int = Field(100, ge=1)
    width: int = Field(64, ge=4)
    topk: int = Field(30, ge=1)                  # cgan: public images per class by pseudo-label
    alpha: float = Field(0.2, ge=0)              # cgan: weight of the target's inversion loss
    aug_archs: list[str] = ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"]   # lomma
    aug_kwargs: dict[str, Any] = {}              # lomma: constructor options of the augmented models
    distill_epochs: int = Field(20, ge=0)
    distill_lr: float = Field(0.01, gt=0)
    n_feature_images: int = Field(5000, ge=1)    # lomma: public images for p_reg
    hflip: bool = True
    ckpt_every: int = Field(500, ge=1)


_PAPER: dict[str, dict[str, Any]] = {
    # GMI trains its WGAN-GP prior with Adam 2e-4 (0.5, 0.999), batch 64, 5 critic steps per G step.
    "gan": {"iterations": 50000, "z_dim": 100},
    # KedMI GAN: 50k iterations, Adam 2e-4, betas (0.5, 0.999), batch 64 (protocols.md).
    "kedmi": {"iterations": 50000, "z_dim": 100, "n_critic": 1},
    # PLG-MI cGAN: top-30 per class, Adam 2e-4 betas (0, 0.9), alpha 0.2, 30k iterations, z 128.
    "cgan": {"iterations": 30000, "z_dim": 128, "betas": (0.0, 0.9), "n_critic": 5, "topk": 30, "alpha": 0.2},
    # LOMMA: EfficientNet-B0/B1/B2 distilled 20 epochs at lr 0.01; p_reg from 5000 public images.
    "lomma": {"distill_epochs": 20, "distill_lr": 0.01, "n_feature_images": 5000},
}
_QUICK: dict[str, dict[str, Any]] = {
    "gan": {"iterations": 200, "width": 16, "n_critic": 2, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    "kedmi": {"iterations": 300, "width": 16, "n_critic": 1, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    "cgan": {"iterations": 300, "z_dim": 128, "width": 16, "betas": (0.0, 0.9), "n_critic": 1, "topk": 20,
             "alpha": 0.2, "batch_size": 64, "lr": 5e-4, "ckpt_every": 100},
    "lomma": {"aug_archs": ["smallresnet"], "distill_epochs": 4, "distill_lr": 0.01, "n_feature_images": 5000,
              "batch_size": 64},
}
PRESETS = {"paper": _PAPER, "quick": _QUICK}


def prior_config(kind: str, preset: str = "paper", config: Any = None) -> PriorConfig:
    """Resolve a kind's preset plus overrides (dict or PriorConfig) into a validated PriorConfig."""
    _check_kind(kind)
    if kind == "stylegan2":
        from .priors_stylegan2 import stylegan2_config

        return stylegan2_config(preset, config)
    if kind == "c2fmi":
        from .prior_c2fmi import c2fmi_config

        return c2fmi_config(preset, config)
    if preset not in PRESETS:
        raise ArgumentError(f"unknown prior preset '{preset}'{did_you_mean(preset, PRESETS)}; choose one of: "
                            f"{', '.join(sorted(PRESETS))}")
    base = dict(PRESETS[preset][kind])
    if isinstance(config, PriorConfig):
        over = config.model_dump(exclude_unset=True)
    else:
        over = dict(config or {})
    allowed = list(PriorConfig.model_fields)
    for k in over:
        if k not in allowed:
            raise ArgumentError(f"prior config has no key '{k}'{did_you_mean(k, allowed)}; keys: {', '.join(allowed)}")
    try:
        return PriorConfig(**{**base, **over})
    except ValidationError as e:
        err = e.errors()[0]
        raise ArgumentError(f"prior config '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}") from None


def _check_kind(kind: str) -> None:
    if kind not in PRIOR_KINDS:
        raise ArgumentError(f"unknown prior kind '{kind}'{did_you_mean(kind, PRIOR_KINDS)}; choose one of: "
                            f"{', '.join(PRIOR_KINDS)}")


# ================================================================================ fingerprints
def data_fingerprint(imageset: Any) -> str:
    """sha256 of an image set's uint8 pixels and labels (identifies the data a prior was trained on)."""
    ts = imageset.to_tensors()
    h = hashlib.sha256()
    h.update(str(tuple(ts.images.shape)).encode())
    h.update(ts.images.contiguous().numpy().tobytes())
    h.update(ts.targets.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


SUMMARY_GRID = 8          # data_summary: the mean image pooled to 8 x 8 per channel


def data_summary(imageset: Any) -> dict[str, Any]:
    """A float-rounding-tolerant description of an image set, for matching zoo entries across machines.

    Rendering the same synthetic faces on another CPU (other SIMD kernels) flips a handful of pixels by one
    level, which changes :func:`data_fingerprint`.  The summary -- image count and shape, a hash of the
    labels, per-channel mean and std, and the mean image pooled to 8 x 8 -- moved by at most 2e-7 under
    such flips (quickstart's sets), against 1e-5 allowed by :func:`midre.zoo.summaries_match`; replacing
    one image of the pretraining pool (13,500-15,000 images) moves it by 4e-5 to 5e-5."""
    ts = imageset.to_tensors()
    n, c, h, w = ts.images.shape
    total = torch.zeros(c, h, w, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, 256):
        x = ts.images[i:i + 256].to(torch.float64).div_(255.0)
        total += x.sum(0)
        sq += x.pow(2).sum((0, 2, 3))
    mean_img = total / max(n, 1)
    mean = mean_img.mean((1, 2))
    std = (sq / max(n * h * w, 1) - mean.pow(2)).clamp_min(0).sqrt()
    grid = torch.nn.functional.adaptive_avg_pool2d(mean_img[None], SUMMARY_GRID)[0]
    labels = hashlib.sha256(ts.targets.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"n": int(n), "shape": [int(c), int(h), int(w)], "labels": labels,
            "mean": [round(float(v), 7) for v in mean], "std": [round(float(v), 7) for v in std],
            "grid": [round(float(v), 7) for v in grid.flatten()]}


def _image_hashes(imageset: Any) -> set[bytes]:
    ts = imageset.to_tensors()
    flat = ts.images.reshape(len(ts.images), -1).contiguous().numpy()
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat}


def assert_public_only(public_set: Any, *private_sets: Any) -> None:
    """Raise DataError if any image of the prior's data also appears in a private split.

    A prior must only ever see public data (the pitfall of training the GAN on the private set).
    No public data (a run whose only prior is a converted, pretrained generator) has nothing to check.
    """
    if public_set is None:
        return
    pub = _image_hashes(public_set)
    for ps in private_sets:
        if ps is None:
            continue
        n = len(pub & _image_hashes(ps))
        if n:
            raise DataError(f"the public data for the prior shares {n} image(s) with the private data; "
                            "priors must be trained on public identities only: choose another --public")


# ================================================================================ the prior object
@dataclass
class Prior:
    """A trained prior: generator / discriminator (GAN kinds), augmented models + p_reg (lomma)."""

    kind: str
    generator: Optional[nn.Module] = None
    discriminator: Optional[nn.Module] = None
    aug_models: list[nn.Module] = field(default_factory=list)
    p_reg: Optional[torch.Tensor] = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim) if self.generator is not None else 0

    def to(self, device: Any) -> "Prior":
        for m in self.modules():
            m.to(device).eval()
        if self.p_reg is not None:
            self.p_reg = self.p_reg.to(device)
        return self

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.generator, self.discriminator, *self.aug_models) if m is not None]

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.generator is not None:
            out.update({f"G.{k}": v for k, v in self.generator.state_dict().items()})
        if self.discriminator is not None:
            out.update({f"D.{k}": v for k, v in self.discriminator.state_dict().items()})
        for i, m in enumerate(self.aug_models):
            out.update({f"aug{i}.{k}": v for k, v in m.state_dict().items()})
        if self.p_reg is not None:
            out["p_reg"] = self.p_reg
        return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        with atomic_path(out / "prior.safetensors") as tmp:
            save_file(self.state(), str(tmp), metadata={"format": PRIOR_FORMAT})
        atomic_write_json(out / "prior.json", {"format": PRIOR_FORMAT, "kind": self.kind, **self.meta})

    @classmethod
    def load(cls, out_dir: str | Path) -> "Prior":
        out = Path(out_dir)
        js, st = out / "prior.json", out / "prior.safetensors"
        if not js.exists() or not st.exists():
            raise CheckpointError(f"no trained prior in '{out}'; train it with `midre attack` (it trains priors) "
                                  "or midre.priors.train_prior")
        meta = read_json_record(js, f"'{js}' is corrupt; delete '{out}' to retrain the prior",
                                f"'{js}' is not a midre prior; delete it or choose another --prior-dir",
                                lambda m: m.get("format") == PRIOR_FORMAT)
        state = load_safetensors(st)
        kind = meta["kind"]
        prior = cls(kind=kind, meta={k: v for k, v in meta.items() if k not in ("format", "kind")})
        if meta.get("generator"):
            prior.generator = load_module(build_gan_module(meta["generator"]["class"], meta["generator"]["config"]),
                                          state, "G.", st)
        if meta.get("discriminator"):
            prior.discriminator = load_module(
                build_gan_module(meta["discriminator"]["class"], meta["discriminator"]["config"]), state, "D.", st)
        if kind == "c2fmi":
            from .prior_c2fmi import load_c2fmi

            prior.aug_models = load_c2fmi(meta["aug_models"], state, st)
        elif meta.get("aug_models"):
            from .models import create_model

            for i, a in enumerate(meta["aug_models"]):
                m = create_model(a["arch"], num_classes=int(a["num_classes"]), resolution=int(a["resolution"]),
                                 **(a.get("kwargs") or {}))
                prior.aug_models.append(load_module(m, state, f"aug{i}.", st))
        if "p_reg" in state:
            prior.p_reg = state["p_reg"]
        return prior.to("cpu")


# ================================================================================ training
class _Data:
    """Public images on the device, sampled with an explicit generator (random index + hflip)."""

    def __init__(self, public_set: Any, device: torch.device, hflip: bool):
        ts = public_set.to_tensors()
        self.images = ts.images.to(device)
        self.targets = ts.targets
        self.n = len(ts.images)
        self.hflip = hflip
        self.device = device

    def sample(self, bs: int, gen: torch.Generator, pool: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random batch; returns (images, positions) where positions index ``pool`` when given."""
        if pool is None:
            pos = idx = torch.randint(self.n, (bs,), generator=gen)
        else:
            pos = torch.randint(len(pool), (bs,), generator=gen)
            idx = pool[pos]
        x = self.images[idx.to(self.device)].float().div_(255.0)
        if self.hflip:
            flip = (torch.rand(bs, generator=gen) < 0.5).to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, pos

    def all_batches(self, bs: int):
        for i in range(0, self.n, bs):
            yield self.images[i:i + bs].float().div_(255.0)


def _noise(gen: torch.Generator, n: int, d: int, device: torch.device) -> torch.Tensor:
    return torch.randn(n, d, generator=gen).to(device)


def _gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    xh = (eps * real + (1 - eps) * fake).requires_grad_(True)
    g, = torch.autograd.grad(D(xh).sum(), xh, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _kedmi_discriminator_loss(D: nn.Module, real: torch.Tensor, soft: torch.Tensor, unl: torch.Tensor,
                              fake: torch.Tensor) -> torch.Tensor:
    """KedMI's discriminator loss (reference release): soft cross-entropy to the target's soft labels on
    a labelled batch + 0.5 * [softplus(LSE) - LSE on an unlabelled batch + softplus(LSE) on fakes]."""
    sup = -(soft * F.log_softmax(D.class_logits(real), 1)).sum(1).mean()
    lse_u, lse_f = D.class_logits(unl).logsumexp(1), D.class_logits(fake).logsumexp(1)
    return sup + 0.5 * ((F.softplus(lse_u) - lse_u).mean() + F.softplus(lse_f).mean())


def _kedmi_generator_loss(D: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """KedMI's generator loss (reference release): L1 feature matching of the mean discriminator
    features (mean over feature dims) + 1e-4 * the entropy of D's identity prediction on the fakes,
    summed over the batch (the release's HLoss)."""
    h = D.features(fake)
    match = (D.features(real).detach().mean(0) - h.mean(0)).abs().mean()
    out = D.out(h)                                   # one pass: class_logits = out[:, :K] - out[:, K]
    logits = out[:, :-1] - out[:, -1:]
    entropy = -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum()
    return match + 1e-4 * entropy


@torch.no_grad()
def _target_probs(target: nn.Module, data: _Data, bs: int = 256) -> torch.Tensor:
    return torch.cat([target(x).float().softmax(1) for x in data.all_batches(bs)])


def _build_gan(kind: str, cfg: PriorConfig, data: _Data, target: Optional[nn.Module]) -> tuple[nn.Module, nn.Module, dict, dict]:
    """Generator, discriminator, per-kind context (target soft labels / pseudo-labelled pool) and meta."""
    res, ch = int(data.images.shape[-1]), int(data.images.shape[1])
    ctx: dict[str, Any] = {}
    extra_meta: dict[str, Any] = {}
    if kind == "gan":
        G = DCGANGenerator(cfg.z_dim, res, ch, cfg.width)
        D = DCGANDiscriminator(res, ch, cfg.width, 1)
    elif kind == "kedmi":
        K = ctx["K"] = int(target.num_classes)
        G = DCGANGenerator(cfg.z_dim, res, ch, cfg.width)
        D = DCGANDiscriminator(res, ch, cfg.width, K + 1)
        ctx["soft"] = _target_probs(target, data)
    else:  # cgan
        K = ctx["K"] = int(target.num_classes)
        G = CondGenerator(K, cfg.z_dim, res, ch, cfg.width)
        D = ProjectionDiscriminator(K, res, ch, cfg.width)
        probs = _target_probs(target, data)
        k = min(cfg.topk, data.n)
        top = probs.topk(k, dim=0).indices.T.cpu()                     # (K, k) public indices per class
        ctx["pool_idx"], ctx["pool_lab"] = top.reshape(-1), torch.arange(K).repeat_interleave(k)
        extra_meta["pseudo_label_confidence"] = float(probs.topk(k, dim=0).values.mean())
    return G, D, ctx, extra_meta


def _critic_loss(kind: str, cfg: PriorConfig, G: nn.Module, D: nn.Module, data: _Data, gen: torch.Generator,
                 ctx: dict) -> torch.Tensor:
    """One discriminator step's loss (WGAN-GP / KedMI's semi-supervised / PLG-MI's hinge), batches drawn here."""
    bs, dev = cfg.batch_size, data.device
    if kind == "cgan":
        real, j = data.sample(bs, gen, ctx["pool_idx"])      # top-k pseudo-labelled public images
        y_real = ctx["pool_lab"][j].to(dev)
    else:
        real, _i = data.sample(bs, gen)
    z = _noise(gen, bs, cfg.z_dim, dev)
    if kind == "gan":
        with torch.no_grad():
            fake = G(z)
        return D(fake).mean() - D(real).mean() + cfg.gp_weight * _gradient_penalty(D, real, fake, gen)
    if kind == "kedmi":
        with torch.no_grad():
            fake = G(z)
        unl, _ = data.sample(bs, gen)          # the reference's separate unlabelled batch
        return _kedmi_discriminator_loss(D, real, ctx["soft"][_i.to(dev)], unl, fake)
    yf = torch.randint(ctx["K"], (bs,), generator=gen).to(dev)
    with torch.no_grad():
        fake = G(z, yf)
    return F.relu(1 - D(real, y_real)).mean() + F.relu(1 + D(fake, yf)).mean()


def _generator_loss(kind: str, cfg: PriorConfig, G: nn.Module, D: nn.Module, data: _Data, gen: torch.Generator,
                    ctx: dict, target: Optional[nn.Module], z: torch.Tensor) -> torch.Tensor:
    if kind == "gan":
        return -D(G(z)).mean()
    if kind == "kedmi":
        real, _ = data.sample(cfg.batch_size, gen)
        return _kedmi_generator_loss(D, G(z), real)
    yf = torch.randint(ctx["K"], (cfg.batch_size,), generator=gen).to(data.device)
    fake = G(z, yf)
    g_loss = -D(fake, yf).mean()
    if cfg.alpha > 0:
        g_loss = g_loss + cfg.alpha * max_margin_loss(target(fake), yf).mean()
    return g_loss


def _gan_loop(kind: str, cfg: PriorConfig, data: _Data, target: Optional[nn.Module], root: Path,
              gen: torch.Generator, progress: bool, until: Optional[int]) -> tuple[nn.Module, nn.Module, dict]:
    dev = data.device
    G, D, ctx, extra_meta = _build_gan(kind, cfg, data, target)
    G.to(dev).train()
    D.to(dev).train()
    optG = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    optD = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    resume = GanResume(root)
    start, _ = resume.load({"G": G, "D": D}, {"G": optG, "D": optD}, gen)
    stop = cfg.iterations if until is None else min(cfg.iterations, until)
    last: dict[str, float] = {}
    tb = tblog.prior(root, kind, cfg.iterations)   # no-op unless a TensorBoard session is open
    with make_progress(progress) as prog:
        task = prog.add_task(f"prior {kind}", total=cfg.iterations, completed=start, status="")
        for it in range(start, stop):
            for _ in range(cfg.n_critic):
                d_loss = _critic_loss(kind, cfg, G, D, data, gen, ctx)
                optD.zero_grad(set_to_none=True)
                d_loss.backward()
                optD.step()
            z = _noise(gen, cfg.batch_size, cfg.z_dim, dev)
            for p in D.parameters():
                p.requires_grad_(False)
            g_loss = _generator_loss(kind, cfg, G, D, data, gen, ctx, target, z)
            optG.zero_grad(set_to_none=True)
            g_loss.backward()
            optG.step()
            for p in D.parameters():
                p.requires_grad_(True)
            if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
                from .errors import TrainingDivergedError

                raise TrainingDivergedError(f"prior '{kind}' diverged at iteration {it} (NaN/inf loss); lower its lr "
                                            f"or delete '{root}' to restart")
            last = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
            prog.update(task, advance=1, status=f"D {last['d_loss']:.3g} G {last['g_loss']:.3g}")
            tb.step(it + 1, last, G)
            if (it + 1) % cfg.ckpt_every == 0 or it + 1 == stop:
                resume.save(it + 1, {"G": G, "D": D}, {"G": optG, "D": optD}, gen)
    extra_meta.update({"final_losses": last, "iterations_done": max(stop, start)})
    return G.eval(), D.eval(), extra_meta


def _lomma(cfg: PriorConfig, data: _Data, target: nn.Module, root: Path, gen: torch.Generator,
           progress: bool, until: Optional[int]) -> tuple[list[nn.Module], torch.Tensor, dict]:
    import math

    from .models import create_model

    dev = data.device
    res = int(data.images.shape[-1])
    K = int(target.num_classes)
    with torch.no_grad():
        n = min(cfg.n_feature_images, data.n)
        sel = torch.randperm(data.n, generator=gen)[:n]
        feats = [target.features(data.images[sel[i:i + 256].to(dev)].float().div_(255.0)).float()
                 for i in range(0, n, 256)]
        p_reg = torch.cat(feats).mean(0)
    tarch = str(getattr(target, "arch", ""))
    archs = [a for a in cfg.aug_archs if a.lower() != tarch.lower()]
    if not archs:
        other = "smallcnn" if tarch.lower() == "smallresnet" else "smallresnet"
        raise ArgumentError(f"LOMMA needs augmented models of OTHER architectures than the target ('{tarch}'); "
                            f"set priors.params.lomma.aug_archs to e.g. ['{other}'], or leave this target out of "
                            "the LOMMA attack (its 'targets' list)")
    E = cfg.distill_epochs
    models = [create_model(a, num_classes=K, resolution=res, **cfg.aug_kwargs).to(dev) for a in archs]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.distill_lr, momentum=0.9, weight_decay=1e-4) for m in models]
    resume = GanResume(root)
    # resume granularity: one epoch of one augmented model ("iteration" = epochs done over all models)
    done = 0
    if resume.js.exists():
        done = json.loads(resume.js.read_text(encoding="utf-8")).get("iteration", 0)
        cur = min(done // E, len(archs) - 1) if E else 0
        done, _ = resume.load({f"aug{i}": m for i, m in enumerate(models)}, {"opt": opts[cur]}, gen)
    steps = max(1, (data.n + cfg.batch_size - 1) // cfg.batch_size)
    total_epochs = len(archs) * E
    tb = tblog.prior(root, "lomma", total_epochs * steps)
    with make_progress(progress) as prog:
        task = prog.add_task("prior lomma", total=total_epochs * steps, completed=done * steps, status="")
        for e_all in range(done, total_epochs):
            if until is not None and e_all >= until:
                return [m.eval() for m in models], p_reg, {"incomplete": True}
            ai, ep = divmod(e_all, E)
            m, opt = models[ai], opts[ai]
            for g_ in opt.param_groups:       # cosine schedule over the distillation epochs
                g_["lr"] = cfg.distill_lr * 0.5 * (1 + math.cos(math.pi * ep / E))
            m.train()
            perm = torch.randperm(data.n, generator=gen)
            for i in range(0, data.n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size].to(dev)
                x = data.images[idx].float().div_(255.0)
                if data.hflip:
                    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(dev)
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                with torch.no_grad():
                    pt = target(x).float().softmax(1)
                loss = F.kl_div(F.log_softmax(m(x).float(), 1), pt, reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                prog.update(task, advance=1, status=f"{archs[ai]} KL {float(loss.detach()):.3g}")
                tb.step(e_all * steps + i // cfg.batch_size + 1, {f"kl_{archs[ai]}": float(loss.detach())})
            m.eval()
            nxt = min((e_all + 1) // E, len(archs) - 1)
            resume.save(e_all + 1, {f"aug{i}": mm for i, mm in enumerate(models)}, {"opt": opts[nxt]}, gen)
    with torch.no_grad():   # agreement with the target on public images (distillation quality)
        agree = []
        for m in models:
            hits = sum(int((m(x).argmax(1) == target(x).argmax(1)).sum()) for x in data.all_batches(256))
            agree.append(100.0 * hits / data.n)
    return [m.eval() for m in models], p_reg, {"aug_archs": archs, "aug_agreement": agree}


def prior_key(kind: str, public_set: Any, target: Optional[nn.Module], cfg: PriorConfig, seed: int) -> str:
    dump = cfg.model_dump()
    if not dump.get("aug_kwargs"):  # added later: an empty value keeps the keys of earlier priors (the zoo's)
        dump.pop("aug_kwargs", None)
    return config_hash({"kind": kind, "public": data_fingerprint(public_set), "target": model_fingerprint(target),
                        "config": dump, "seed": int(seed), "version": 1})


def _train_kind(kind: str, cfg: PriorConfig, data: _Data, target: Optional[nn.Module], root: Path,
                gen: torch.Generator, progress: bool, until: Optional[int],
                meta: dict[str, Any]) -> tuple["Prior", dict[str, Any], bool]:
    """Train the networks of one prior kind; records their architecture in ``meta``.

    Returns the prior, the kind's extra metadata and whether training reached its end."""
    if kind == "stylegan2":
        from .priors_stylegan2 import train_stylegan2

        G, D, extra = train_stylegan2(cfg, data, root, gen, progress, until)
        meta["generator"] = {"class": "StyleGAN2Generator", "config": G.init_kwargs}
        meta["discriminator"] = {"class": "StyleGAN2Discriminator", "config": D.init_kwargs}
        return Prior(kind, G, D), extra, extra["iterations_done"] >= cfg.iterations
    if kind == "c2fmi":
        from .prior_c2fmi import c2fmi_meta, train_c2fmi

        models, extra = train_c2fmi(cfg, data.images, data.targets, target, root, gen, meta["seed"], data.device,
                                    progress, until)
        meta["aug_models"] = c2fmi_meta(*models, meta["resolution"])
        return Prior(kind, aug_models=models), extra, not extra["incomplete"]
    if kind in ("gan", "kedmi", "cgan"):
        G, D, extra = _gan_loop(kind, cfg, data, target, root, gen, progress, until)
        meta["generator"] = {"class": type(G).__name__, "config": G.config}
        meta["discriminator"] = {"class": type(D).__name__, "config": D.config}
        return Prior(kind, G, D), extra, extra["iterations_done"] >= cfg.iterations
    models, p_reg, extra = _lomma(cfg, data, target, root, gen, progress, until)
    meta["aug_models"] = [{"arch": m.arch, "num_classes": m.num_classes, "resolution": meta["resolution"],
                           "kwargs": dict(cfg.aug_kwargs)} for m in models]
    return Prior(kind, aug_models=models, p_reg=p_reg), extra, not extra.get("incomplete", False)


def train_prior(kind: str, public_set: Any, target: Optional[nn.Module] = None, out_dir: Optional[str | Path] = None,
                config: Any = None, preset: str = "paper", seed: int = 0, progress: bool = False,
                device: Any = "auto", until: Optional[int] = None, holdout: Any = None) -> Prior:
    """Train (or load from the cache in ``out_dir``) a prior of ``kind`` on ``public_set`` only.

    Parameters
    ----------
    kind : "gan" | "kedmi" | "cgan" | "lomma"
    public_set : ImageSet of PUBLIC images (labels are ignored).
    target : the target Classifier (needed by kedmi / cgan / lomma; queried on public images only).
    out_dir : cache root; the prior lives in ``out_dir/<kind>-<key>``.  None = no cache, no resume.
    config : dict / PriorConfig overriding the preset.
    until : stop after this many generator iterations (lomma: epochs) and return None-trained state;
        calling again resumes.  For time-boxed runs and resume tests.
    holdout : public images kept OUT of ``public_set``; a GAN prior records its sample quality on them in
        ``meta["quality"]`` (:func:`midre.prior_quality.prior_quality`).
    """
    _check_kind(kind)
    cfg = prior_config(kind, preset, config)
    if kind not in TARGET_FREE_KINDS and target is None:
        raise ArgumentError(f"the '{kind}' prior is trained per target: pass target=")
    dev = resolve_device(device)
    if kind == "stylegan2" and cfg.path:          # converted weights: nothing trained, no public data needed
        from .priors_stylegan2 import load_converted

        G, meta = load_converted(cfg)
        return Prior(kind, G, meta=meta).to(dev)
    if public_set is None or len(public_set) < 2:
        raise DataError("the public set has fewer than 2 images; priors need public images (check --public)")
    key = prior_key(kind, public_set, target, cfg, seed)
    root = Path(out_dir) / f"{kind}-{key}" if out_dir is not None else None
    if root is not None and (root / "prior.json").exists():
        return Prior.load(root).to(dev)
    tmp_root = root
    if tmp_root is None:
        import tempfile

        tmp_root = Path(tempfile.mkdtemp(prefix="midre-prior-"))
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    data = _Data(public_set, dev, cfg.hflip)
    t0 = time.perf_counter()
    with frozen(target.to(dev)) if target is not None else contextlib.nullcontext(), \
            torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        meta: dict[str, Any] = {
            "key": key, "config": cfg.model_dump(), "preset": preset, "seed": int(seed),
            "public_fingerprint": data_fingerprint(public_set), "public_images": len(public_set),
            "target_fingerprint": model_fingerprint(target), "resolution": int(data.images.shape[-1]),
            "channels": int(data.images.shape[1]),
        }
        prior, extra, complete = _train_kind(kind, cfg, data, target, tmp_root, gen, progress, until, meta)
        meta.update(extra)
        meta["seconds"] = time.perf_counter() - t0
        meta["complete"] = complete
        if complete and holdout is not None:
            from .prior_quality import prior_quality

            meta["quality"] = prior_quality(prior, holdout, public_set, seed=int(seed), device=dev)
        prior.meta = meta
    if complete and root is not None:
        prior.save(root)
        GanResume(root).clear()
    if out_dir is None:
        import shutil

        shutil.rmtree(tmp_root, ignore_errors=True)
    return prior.to(dev)


def load_prior(path: str | Path, device: Any = "cpu") -> Prior:
    """Load a prior directory written by :func:`train_prior`."""
    return Prior.load(path).to(resolve_device(device))


def prepare_priors(attack: Any, public_set: Any, target: Optional[nn.Module], out_dir: Optional[str | Path] = None,
                   preset: str = "paper", seed: int = 0, progress: bool = False, device: Any = "auto",
                   configs: Optional[dict[str, Any]] = None) -> dict[str, Prior]:
    """Train or load every prior an attack needs (``attack.prior_kinds``) -> {kind: Prior}.

    ``configs`` maps a kind to overrides of its preset, e.g. ``{"gan": {"iterations": 100}}``.
    """
    from .utils import derive_seed

    configs = dict(configs or {})
    unknown = [k for k in configs if k not in PRIOR_KINDS]
    if unknown:
        raise ArgumentError(f"unknown prior kind '{unknown[0]}'{did_you_mean(unknown[0], PRIOR_KINDS)} in the prior "
                            f"configs; choose from: {', '.join(PRIOR_KINDS)}")
    out: dict[str, Prior] = {}
    for kind in attack.prior_kinds:
        out[kind] = train_prior(kind, public_set, None if kind in TARGET_FREE_KINDS else target, out_dir=out_dir,
                                config=configs.get(kind), preset=preset, seed=derive_seed(seed, "prior", kind),
                                progress=progress, device=device)
    return out
