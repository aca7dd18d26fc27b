"""``c2fmi``: C2FMI's embedding model and its inverse (prediction -> embedding) model.

C2FMI (Ye et al., TDSC 2023) needs, beside a StyleGAN2 generator (the ``stylegan2`` prior), two networks
that the attacker builds from PUBLIC data only:

* the **embedding model** E: a classifier of PUBLIC identities (the release: an InceptionResNet-V1 trained
  on CASIA-WebFace, 10,575 classes), fully known to the attacker (white-box); here trained on the public
  set's own identity labels with THE training loop (:func:`midre.training.train_classifier`);
* the **inverse model** M (the release's ``predict2feature``): maps the target's prediction vector to E's
  logits.  Its input transform keeps the ``trunc`` largest probabilities, takes their log clamped at
  -1000, adds 50, lifts them to be non-negative, scatters them back into a zero vector and L2-normalises
  it (:func:`truncated_log_input`); then Linear(K, h) - LeakyReLU(0.2) - Linear(h, h) - LeakyReLU(0.2) -
  Dropout(0.25) - Linear(h, E classes).  Trained with MSE(M(softmax T(x)), E(x)) on public images, Adam
  lr 1e-3, StepLR(step 2, gamma 0.8), batch 128, 20 epochs, ``trunc`` 1 (the release's ``train_inv.py``).

The target is reached only through a :class:`~midre.attacks.base.QueryOracle` (probabilities, counted):
C2FMI is a black-box attack, and its prior's queries are recorded in ``meta["target_queries"]``.  The
release queries the target on every public image in every epoch; its inputs are not augmented, so each
image is queried once here and its answer reused (same values, ``epochs`` times fewer queries).

Resumable: the embedding model resumes through the training loop's own checkpoints, the inverse model
after each finished epoch (weights, Adam moments, RNG), with results identical to an uninterrupted run.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..attacks.base import QueryOracle
from ..data.base import TensorImageSet
from ..errors import DataError
from ..gan_state import GanResume, load_module
from ..models import create_model
from ..training import train_classifier
from ..utils import derive_seed, make_progress
from .base import Prior, PriorKind, register_prior


class C2FMIPriorConfig(BaseModel):
    """Settings of the c2fmi prior (embedding model + inverse model)."""

    model_config = ConfigDict(extra="forbid")
    embed_arch: str = "facenet112"            # the release: InceptionResNet-V1 (FaceNet) on CASIA
    embed_epochs: int = Field(30, ge=1)
    embed_lr: float = Field(0.01, gt=0)
    embed_batch_size: int = Field(64, ge=1)
    hidden: int = Field(4096, ge=1)             # inverse model width
    dropout: float = Field(0.25, ge=0, lt=1)
    trunc: int = Field(1, ge=1)                 # probabilities kept by the inverse model's input transform
    epochs: int = Field(20, ge=0)               # inverse model epochs
    lr: float = Field(1e-3, gt=0)
    lr_step: int = Field(2, ge=1)               # StepLR step (epochs)
    lr_gamma: float = Field(0.8, gt=0)
    batch_size: int = Field(128, ge=1)
    hflip: bool = False                         # (a PublicImages sampler option; unused here)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # 32 px synthetic benchmark on 2 CPU cores
    "quick": {"embed_arch": "smallcnn", "embed_epochs": 8, "embed_lr": 0.05, "hidden": 256, "epochs": 10,
              "batch_size": 64},
}


# ================================================================================ the inverse model
def truncated_log_input(probs: torch.Tensor, trunc: int) -> torch.Tensor:
    """The inverse model's input transform of a (B, K) probability batch (see the module docstring)."""
    top, idx = probs.topk(trunc, dim=1)
    top = top.log().clamp(min=-1000) + 50.0
    top = top + F.relu(-top.min(1, keepdim=True).values)
    return F.normalize(torch.zeros_like(probs).scatter(1, idx, top), p=2, dim=1)


class InverseMapping(nn.Module):
    """C2FMI's inverse model: target prediction (B, K) -> embedding-model logits (B, E)."""

    def __init__(self, num_classes: int, embed_classes: int, hidden: int = 4096, dropout: float = 0.25,
                 trunc: int = 1):
        super().__init__()
        self.num_classes, self.embed_classes, self.trunc = int(num_classes), int(embed_classes), int(trunc)
        self.config = {"num_classes": self.num_classes, "embed_classes": self.embed_classes, "hidden": int(hidden),
                       "dropout": float(dropout), "trunc": self.trunc}
        self.map = nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(hidden, embed_classes))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.map(truncated_log_input(probs, min(self.trunc, probs.shape[1])))


# ================================================================================ training
def train_embedding(ts: TensorImageSet, cfg: C2FMIPriorConfig, root: Path, seed: int, device: Any,
                    progress: bool) -> nn.Module:
    """The embedding model: ``cfg.embed_arch`` trained on the public identities (THE training loop)."""
    k = int(ts.targets.max()) + 1 if len(ts.targets) else 0
    if k < 2:
        raise DataError("the c2fmi prior trains its embedding model on the public identities, but the public set "
                        "has fewer than 2 labels; give a labelled public set (e.g. an image folder per identity)")
    model = create_model(cfg.embed_arch, num_classes=k, resolution=int(ts.images.shape[-1]))
    train_classifier(model, ts, None,
                     config={"epochs": cfg.embed_epochs, "lr": cfg.embed_lr, "batch_size": cfg.embed_batch_size,
                             "schedule": "cosine", "device": str(device), "seed": derive_seed(seed, "c2fmi-embed"),
                             "amp": False},
                     out_dir=root / "embed", progress=progress, description="prior c2fmi: embedding model")
    return model.eval()


def query_public(oracle: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The target's probabilities on the public uint8 images, one oracle query per image."""
    return torch.cat([oracle(images[i:i + batch].float().div(255.0)).float().cpu()
                      for i in range(0, len(images), batch)])


def embed_logits(embed: nn.Module, images: torch.Tensor, device: Any, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(images[i:i + batch].to(device).float().div(255.0)).float().cpu()
                          for i in range(0, len(images), batch)])


def train_inverse(probs: torch.Tensor, feats: torch.Tensor, cfg: C2FMIPriorConfig, root: Path,
                  gen: torch.Generator, device: Any, progress: bool,
                  until: int | None = None) -> tuple[InverseMapping, dict[str, Any]]:
    """Fit the inverse model: MSE(M(probs), feats) over shuffled batches, Adam + StepLR, per-epoch resume."""
    M = InverseMapping(probs.shape[1], feats.shape[1], cfg.hidden, cfg.dropout, cfg.trunc).to(device)
    opt = torch.optim.Adam(M.parameters(), lr=cfg.lr)
    resume = GanResume(root)
    start, _ = resume.load({"M": M}, {"M": opt}, gen)
    stop = cfg.epochs if until is None else min(cfg.epochs, until)
    n, last = len(probs), float("nan")
    with make_progress(progress) as prog:
        task = prog.add_task("prior c2fmi: inverse model", total=cfg.epochs, completed=start, status="")
        for ep in range(start, stop):
            for g in opt.param_groups:                     # StepLR(step, gamma), stepped once per epoch
                g["lr"] = cfg.lr * cfg.lr_gamma ** (ep // cfg.lr_step)
            torch.manual_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen)))   # dropout, resumable
            M.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - cfg.batch_size + 1 if n >= cfg.batch_size else 1, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]           # drop_last, as the release's loader
                loss = F.mse_loss(M(probs[idx].to(device)), feats[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = float(loss.detach())
            resume.save(ep + 1, {"M": M}, {"M": opt}, gen)
            prog.update(task, advance=1, status=f"MSE {last:.3g}")
    done = max(start, stop)
    M.eval()
    with torch.no_grad():
        fit = float(F.mse_loss(M(probs.to(device)), feats.to(device)))
    return M, {"inverse_epochs_done": done, "inverse_mse": fit, "incomplete": done < cfg.epochs}


def train_c2fmi(cfg: C2FMIPriorConfig, images: torch.Tensor, labels: torch.Tensor, target: nn.Module, root: Path,
                gen: torch.Generator, seed: int, device: Any, progress: bool,
                until: int | None) -> tuple[list[nn.Module], dict]:
    """Both networks of the prior from the public uint8 ``images`` and their identity ``labels`` ->
    ([embedding model, inverse model], extra metadata)."""
    images = images.cpu()
    embed = train_embedding(TensorImageSet(images, labels.cpu()), cfg, Path(root), seed, device, progress).to(device)
    oracle = QueryOracle(target, "probs")
    probs = query_public(oracle, images)
    feats = embed_logits(embed, images, device)
    M, extra = train_inverse(probs, feats, cfg, Path(root), gen, device, progress, until)
    if not extra["incomplete"]:          # the embedding model's training checkpoints are not part of the prior
        shutil.rmtree(Path(root) / "embed", ignore_errors=True)
    extra.update({"target_queries": oracle.queries, "embed_arch": cfg.embed_arch,
                  "embed_classes": int(feats.shape[1]), "num_classes": int(probs.shape[1])})
    return [embed, M], extra


@register_prior
class C2fmiPrior(PriorKind):
    """C2FMI's embedding model (public identities) + inverse model (target queries); one per target."""

    name = "c2fmi"
    needs_target = True
    config_model = C2FMIPriorConfig
    presets = PRESETS

    def train(self, cfg: Any, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        """Both networks from the public images and their identity labels (``data.targets``)."""
        models, extra = train_c2fmi(cfg, data.images, data.targets, target, root, gen, meta["seed"], data.device,
                                    progress, until)
        embed, M = models
        meta["aug_models"] = [{"arch": embed.arch, "num_classes": int(embed.num_classes),
                               "resolution": int(meta["resolution"])},
                              {"module": "InverseMapping", "config": dict(M.config)}]
        return Prior(self.name, aug_models=models), extra, not extra["incomplete"]

    def load(self, meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Prior:
        """[embedding model, inverse model] from tensors ``aug0.*`` and ``aug1.*``."""
        e, m = meta["aug_models"]
        embed = create_model(e["arch"], num_classes=int(e["num_classes"]), resolution=int(e["resolution"]))
        models = [load_module(embed, state, "aug0.", where).eval(),
                  load_module(InverseMapping(**m["config"]), state, "aug1.", where).eval()]
        return Prior(self.name, aug_models=models, meta=meta)
