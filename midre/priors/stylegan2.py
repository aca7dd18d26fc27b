"""The ``stylegan2`` prior: a StyleGAN2 generator for PPA, IF-GMI, MIRROR and RLB-MI.

Two ways to get one (both through :func:`midre.priors.train_prior`, kind ``"stylegan2"``; the kind is
:class:`StyleGAN2Prior`, registered in :data:`midre.priors.PRIORS`):

* ``path=DIR``: a generator converted from official weights with ``midre convert stylegan2`` is loaded
  as it is (nothing is trained; the paper's setups use FFHQ / AFHQ-Dog weights this way).
* otherwise a small StyleGAN2 is trained on the PUBLIC images (preset ``quick``): non-saturating
  logistic loss, lazy R1 penalty on real images, Adam (betas (0, 0.99)), an exponential
  moving average of the generator (the prior is the EMA generator, as in StyleGAN2-ADA), random
  noise inputs and horizontal flips.  Training is seeded (every draw from one ``torch.Generator``),
  cached by :mod:`midre.priors` and resumable from its last checkpoint with identical results.

The ``paper`` preset has no training settings: it needs ``path`` (a 1024-px StyleGAN2 is not trained
on a laptop), and says so in one line when it is missing.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ArgumentError, DataError, TrainingDivergedError
from ..gan_state import GanResume
from ..models.stylegan2 import Discriminator, Generator, load_generator
from ..utils import config_hash, make_progress
from .base import Prior, PriorKind, register_prior


class StyleGAN2PriorConfig(BaseModel):
    """Settings of the stylegan2 prior (``path`` = converted official weights; else training settings)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None                    # directory / .safetensors from `midre convert stylegan2`
    iterations: int = Field(2000, ge=0)           # generator steps
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.0025, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = Field(0.05, ge=0)
    r1_interval: int = Field(16, ge=1)            # lazy regularisation
    ema_kimg: float = Field(10.0, gt=0)           # EMA half-life in thousands of images
    ema_rampup: float | None = 0.05            # half-life <= rampup x images seen so far
    z_dim: int = Field(64, ge=1)
    w_dim: int = Field(64, ge=1)
    mapping_layers: int = Field(2, ge=1)
    channel_base: int = Field(2048, ge=1)         # feature maps at resolution r: min(channel_base / r, channel_max)
    channel_max: int = Field(64, ge=1)
    hflip: bool = True
    ckpt_every: int = Field(100, ge=1)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},                                  # converted official weights (path) required
    # 32 px synthetic benchmark on 2 CPU cores: 16-32 feature maps per block, batch 16, lr 0.01 (at 0.0025
    # 200 iterations gave colour blobs only; 0.01 x 300 gives head-shaped samples: docs/stylegan2.md).
    "quick": {"iterations": 300, "batch_size": 16, "lr": 0.01, "z_dim": 64, "w_dim": 64, "mapping_layers": 2,
              "channel_base": 512, "channel_max": 32, "r1_gamma": 0.05, "ema_kimg": 1.0, "ckpt_every": 50},
}


def generator_kwargs(cfg: StyleGAN2PriorConfig, resolution: int, channels: int) -> dict:
    return {"z_dim": cfg.z_dim, "c_dim": 0, "w_dim": cfg.w_dim, "img_resolution": resolution,
            "img_channels": channels, "mapping_kwargs": {"num_layers": cfg.mapping_layers},
            "synthesis_kwargs": {"channel_base": cfg.channel_base, "channel_max": cfg.channel_max}}


def load_converted(cfg: StyleGAN2PriorConfig) -> tuple[Generator, dict]:
    """The converted generator named by ``cfg.path`` and the prior metadata describing it."""
    G, gmeta = load_generator(Path(cfg.path).expanduser())
    meta = {"key": config_hash({"kind": "stylegan2", "source": gmeta.get("source"), "init": gmeta["init_kwargs"]}),
            "path": str(cfg.path), "source": gmeta.get("source"), "resolution": G.img_resolution,
            "channels": G.img_channels, "trained": False, "complete": True}
    return G, meta


# ================================================================================ training
def _g_images(G: Generator, n: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    z = torch.randn(n, G.z_dim, generator=gen).to(dev)
    return G.synthesis(G.mapping(z), noise_mode="random", generator=gen)


def _r1(D: nn.Module, real: torch.Tensor) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    g, = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    return g.square().sum(dim=[1, 2, 3]).mean()


@torch.no_grad()
def _ema_update(G_ema: nn.Module, G: nn.Module, cfg: StyleGAN2PriorConfig, images_seen: int) -> None:
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        half_life = min(half_life, images_seen * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch_size / max(half_life, 1e-8))
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.copy_(p.lerp(pe, beta))
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def _step(G: Generator, D: Discriminator, optG: Any, optD: Any, real: torch.Tensor, cfg: StyleGAN2PriorConfig,
          it: int, gen: torch.Generator) -> dict[str, float]:
    """One D step (logistic loss + lazy R1) and one G step (non-saturating loss)."""
    bs, dev = real.shape[0], real.device
    real = real * 2 - 1
    with torch.no_grad():
        fake = _g_images(G, bs, gen, dev)
    d_loss = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
    if cfg.r1_gamma > 0 and it % cfg.r1_interval == 0:
        d_loss = d_loss + _r1(D, real) * (cfg.r1_gamma / 2 * cfg.r1_interval)
    optD.zero_grad(set_to_none=True)
    d_loss.backward()
    optD.step()
    D.requires_grad_(False)
    g_loss = F.softplus(-D(_g_images(G, bs, gen, dev))).mean()
    optG.zero_grad(set_to_none=True)
    g_loss.backward()
    optG.step()
    D.requires_grad_(True)
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}


def train_stylegan2(cfg: StyleGAN2PriorConfig, data: Any, root: Path, gen: torch.Generator, progress: bool,
                    until: int | None) -> tuple[Generator, Discriminator, dict]:
    """Train on ``data`` (:class:`midre.priors.data.PublicImages`, PUBLIC images) -> (EMA generator,
    discriminator, metadata).

    Resume state (G, D, G_ema, both optimisers, the RNG) is written to ``root`` every ``ckpt_every``
    iterations by the priors' resume helper (midre.gan_state); a second call continues from it.
    """
    dev = data.device
    res, ch = int(data.images.shape[-1]), int(data.images.shape[1])
    if res < 8 or res & (res - 1):
        raise DataError(f"a StyleGAN2 prior needs public images at a power-of-two resolution (32, 64, ...), got "
                        f"{res} px; resize the public set or give converted weights with path=")
    G = Generator(**generator_kwargs(cfg, res, ch)).to(dev).train()
    D = Discriminator(res, ch, channel_base=cfg.channel_base, channel_max=cfg.channel_max).to(dev).train()
    G_ema = copy.deepcopy(G).eval()
    optG = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    c = cfg.r1_interval / (cfg.r1_interval + 1) if cfg.r1_gamma > 0 else 1.0   # lazy-regularisation correction
    optD = torch.optim.Adam(D.parameters(), lr=cfg.lr * c, betas=(cfg.betas[0] ** c, cfg.betas[1] ** c), eps=1e-8)
    resume = GanResume(root)
    mods, opts = {"G": G, "D": D, "G_ema": G_ema}, {"G": optG, "D": optD}
    start, _ = resume.load(mods, opts, gen)
    G_ema.eval()
    stop = cfg.iterations if until is None else min(cfg.iterations, until)
    last: dict[str, float] = {}
    with make_progress(progress) as prog:
        task = prog.add_task("prior stylegan2", total=cfg.iterations, completed=start, status="")
        for it in range(start, stop):
            real, _ = data.sample(cfg.batch_size, gen)
            last = _step(G, D, optG, optD, real, cfg, it, gen)
            if not all(map(lambda v: v == v and abs(v) != float("inf"), last.values())):
                raise TrainingDivergedError(f"prior 'stylegan2' diverged at iteration {it} (NaN/inf loss); lower "
                                            f"its lr or r1_gamma, or delete '{root}' to restart")
            _ema_update(G_ema, G, cfg, (it + 1) * cfg.batch_size)
            prog.update(task, advance=1, status=f"D {last['d_loss']:.3g} G {last['g_loss']:.3g}")
            if (it + 1) % cfg.ckpt_every == 0 or it + 1 == stop:
                resume.save(it + 1, mods, opts, gen)
    extra = {"final_losses": last, "iterations_done": max(stop, start), "trained": True}
    return G_ema.eval(), D.eval(), extra


@register_prior
class StyleGAN2Prior(PriorKind):
    """A StyleGAN2 generator: converted official weights (path) or trained on public images; shared."""

    name = "stylegan2"
    needs_target = False
    quality_gate = False          # its sample quality is recorded in prior.json, not gated (as before the registry)
    config_model = StyleGAN2PriorConfig
    presets = PRESETS

    def config(self, preset: str = "paper", overrides: Any = None) -> StyleGAN2PriorConfig:
        cfg = super().config(preset, overrides)
        if preset == "paper" and not cfg.path:
            raise ArgumentError("the paper preset attacks with official StyleGAN2 weights, which are not given: run "
                                "`midre convert stylegan2 ffhq.pkl --out DIR` and set priors.params.stylegan2.path=DIR")
        return cfg

    def check_run(self, params: Any, attack: str | None, real_data: bool) -> str | None:
        """On real data, StyleGAN attacks (PPA, IF-GMI, MIRROR) need a converted generator: say so in one line."""
        path = (params or {}).get("path")
        if attack is not None and not path and real_data:
            return (f"attack '{attack}' needs StyleGAN2 weights: convert the official pickle with "
                    "`midre convert stylegan2 ffhq.pkl --out DIR` and pass `--set priors.params.stylegan2.path=DIR`")
        if path and not Path(str(path)).expanduser().exists():
            return (f"'priors.params.stylegan2.path' '{path}' does not exist; give the directory written by "
                    "`midre convert stylegan2`")
        return None

    def uses_public_data(self, params: Any) -> bool:
        return not (params or {}).get("path")

    def pretrained(self, cfg: Any) -> Prior | None:
        if not cfg.path:
            return None
        G, meta = load_converted(cfg)
        return Prior(self.name, G, meta=meta)

    def train(self, cfg: Any, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        G, D, extra = train_stylegan2(cfg, data, root, gen, progress, until)
        meta["generator"] = {"class": "StyleGAN2Generator", "config": G.init_kwargs}
        meta["discriminator"] = {"class": "StyleGAN2Discriminator", "config": D.init_kwargs}
        return Prior(self.name, G, D), extra, extra["iterations_done"] >= cfg.iterations
