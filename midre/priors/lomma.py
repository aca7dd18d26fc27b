"""``lomma``: LOMMA's augmented models (Nguyen et al. 2023), one set per target (LOMMA+GMI, LOMMA+KedMI).

Models of OTHER architectures than the target are distilled from it on public images (KL to its soft
labels, SGD with a cosine schedule), and ``p_reg`` is the mean target penultimate feature of public
images.  Paper settings: EfficientNet-B0/B1/B2 distilled 20 epochs at lr 0.01, p_reg from 5000 public
images.  There is no generator, so no sample quality to gate."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import tblog
from ..errors import ArgumentError
from ..gan_state import GanResume, load_module
from ..models import create_model
from ..utils import make_progress
from .base import Prior, PriorConfig, PriorKind, register_prior
from .data import PublicImages


@torch.no_grad()
def mean_feature(target: nn.Module, data: PublicImages, n: int, gen: torch.Generator) -> torch.Tensor:
    """p_reg: the target's mean penultimate feature over ``n`` random public images."""
    n = min(n, data.n)
    sel = torch.randperm(data.n, generator=gen)[:n]
    feats = [target.features(data.images[sel[i:i + 256].to(data.device)].float().div_(255.0)).float()
             for i in range(0, n, 256)]
    return torch.cat(feats).mean(0)


def _other_archs(cfg: PriorConfig, target: nn.Module) -> list[str]:
    tarch = str(getattr(target, "arch", ""))
    archs = [a for a in cfg.aug_archs if a.lower() != tarch.lower()]
    if not archs:
        other = "smallcnn" if tarch.lower() == "smallresnet" else "smallresnet"
        raise ArgumentError(f"LOMMA needs augmented models of OTHER architectures than the target ('{tarch}'); "
                            f"set priors.params.lomma.aug_archs to e.g. ['{other}'], or leave this target out of "
                            "the LOMMA attack (its 'targets' list)")
    return archs


def _distill_epoch(m: nn.Module, opt: Any, target: nn.Module, data: PublicImages, cfg: PriorConfig,
                   gen: torch.Generator, step: Any) -> None:
    """One epoch of KL distillation of ``m`` from the target on shuffled (flipped) public images."""
    dev = data.device
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
        step(i // cfg.batch_size, float(loss.detach()))
    m.eval()


@register_prior
class LommaPrior(PriorKind):
    """LOMMA's augmented models distilled from the target + p_reg; one set per target."""

    name = "lomma"
    needs_target = True
    presets = {
        "paper": {"distill_epochs": 20, "distill_lr": 0.01, "n_feature_images": 5000},
        "quick": {"aug_archs": ["smallresnet"], "distill_epochs": 4, "distill_lr": 0.01, "n_feature_images": 5000,
                  "batch_size": 64},
    }

    def train(self, cfg: Any, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        models, p_reg, extra = self.distill(cfg, data, target, root, gen, progress, until)
        meta["aug_models"] = [{"arch": m.arch, "num_classes": m.num_classes, "resolution": meta["resolution"],
                               "kwargs": dict(cfg.aug_kwargs)} for m in models]
        return Prior(self.name, aug_models=models, p_reg=p_reg), extra, not extra.get("incomplete", False)

    def distill(self, cfg: PriorConfig, data: PublicImages, target: nn.Module, root: Path, gen: torch.Generator,
                progress: bool, until: int | None) -> tuple[list[nn.Module], torch.Tensor, dict]:
        """p_reg, then each augmented model for ``distill_epochs`` (resumable per epoch; ``until``: epochs)."""
        dev = data.device
        p_reg = mean_feature(target, data, cfg.n_feature_images, gen)
        archs = _other_archs(cfg, target)
        E = cfg.distill_epochs
        models = [create_model(a, num_classes=int(target.num_classes), resolution=data.resolution,
                               **cfg.aug_kwargs).to(dev) for a in archs]
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
        tb = tblog.prior(root, self.name, total_epochs * steps)
        with make_progress(progress) as prog:
            task = prog.add_task("prior lomma", total=total_epochs * steps, completed=done * steps, status="")
            for e_all in range(done, total_epochs):
                if until is not None and e_all >= until:
                    return [m.eval() for m in models], p_reg, {"incomplete": True}
                ai, ep = divmod(e_all, E)
                for g_ in opts[ai].param_groups:       # cosine schedule over the distillation epochs
                    g_["lr"] = cfg.distill_lr * 0.5 * (1 + math.cos(math.pi * ep / E))

                def step(b: int, loss: float, e_all: int = e_all, arch: str = archs[ai]) -> None:
                    prog.update(task, advance=1, status=f"{arch} KL {loss:.3g}")
                    tb.step(e_all * steps + b + 1, {f"kl_{arch}": loss})

                _distill_epoch(models[ai], opts[ai], target, data, cfg, gen, step)
                nxt = min((e_all + 1) // E, len(archs) - 1)
                resume.save(e_all + 1, {f"aug{i}": mm for i, mm in enumerate(models)}, {"opt": opts[nxt]}, gen)
        with torch.no_grad():   # agreement with the target on public images (distillation quality)
            agree = [100.0 * sum(int((m(x).argmax(1) == target(x).argmax(1)).sum()) for x in data.all_batches(256))
                     / data.n for m in models]
        return [m.eval() for m in models], p_reg, {"aug_archs": archs, "aug_agreement": agree}

    def load(self, meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Prior:
        prior = Prior(self.name, meta=meta)
        for i, a in enumerate(meta.get("aug_models") or []):
            m = create_model(a["arch"], num_classes=int(a["num_classes"]), resolution=int(a["resolution"]),
                             **(a.get("kwargs") or {}))
            prior.aug_models.append(load_module(m, state, f"aug{i}.", where))
        if "p_reg" in state:
            prior.p_reg = state["p_reg"]
        return prior
