"""The adversarial training loop shared by the DCGAN-family prior kinds (gan, kedmi, cgan).

A kind subclasses :class:`AdversarialPrior` and supplies its networks (:meth:`~AdversarialPrior.build`) and
its two losses; the loop (Adam on both networks, ``n_critic`` discriminator steps per generator step,
resume state every ``ckpt_every`` iterations, TensorBoard hooks) is written once, here.  Every random draw
comes from one ``torch.Generator``, in the order the kind's losses make them, so training is repeatable
and an interrupted run resumes to the same weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import tblog
from ..errors import TrainingDivergedError
from ..gan_state import GanResume
from ..utils import make_progress
from .base import Prior, PriorConfig, PriorKind
from .data import PublicImages


def noise(gen: torch.Generator, n: int, d: int, device: torch.device) -> torch.Tensor:
    """``n`` latent vectors z ~ N(0, I) of dimension ``d``, drawn on the CPU from ``gen``."""
    return torch.randn(n, d, generator=gen).to(device)


@torch.no_grad()
def target_probs(target: nn.Module, data: PublicImages, bs: int = 256) -> torch.Tensor:
    """The target's softmax on every public image (in order)."""
    return torch.cat([target(x).float().softmax(1) for x in data.all_batches(bs)])


class AdversarialPrior(PriorKind):
    """A generator / discriminator pair trained adversarially on public images."""

    quality_gate = True

    def build(self, cfg: PriorConfig, data: PublicImages,
              target: nn.Module | None) -> tuple[nn.Module, nn.Module, dict, dict]:
        """Generator, discriminator, the kind's context for its losses, and extra metadata."""
        raise NotImplementedError

    def critic_loss(self, cfg: PriorConfig, G: nn.Module, D: nn.Module, data: PublicImages, gen: torch.Generator,
                    ctx: dict) -> torch.Tensor:
        """One discriminator step's loss; it draws its own batches from ``data`` with ``gen``."""
        raise NotImplementedError

    def generator_loss(self, cfg: PriorConfig, G: nn.Module, D: nn.Module, data: PublicImages,
                       gen: torch.Generator, ctx: dict, target: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train(self, cfg: Any, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        G, D, extra = self.loop(cfg, data, target, root, gen, progress, until)
        meta["generator"] = {"class": type(G).__name__, "config": G.config}
        meta["discriminator"] = {"class": type(D).__name__, "config": D.config}
        return Prior(self.name, G, D), extra, extra["iterations_done"] >= cfg.iterations

    def loop(self, cfg: PriorConfig, data: PublicImages, target: nn.Module | None, root: Path,
             gen: torch.Generator, progress: bool, until: int | None) -> tuple[nn.Module, nn.Module, dict]:
        """The training loop: resumes from ``root``, stops at ``until`` (or ``cfg.iterations``)."""
        dev = data.device
        G, D, ctx, extra_meta = self.build(cfg, data, target)
        G.to(dev).train()
        D.to(dev).train()
        optG = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
        optD = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
        resume = GanResume(root)
        start, _ = resume.load({"G": G, "D": D}, {"G": optG, "D": optD}, gen)
        stop = cfg.iterations if until is None else min(cfg.iterations, until)
        last: dict[str, float] = {}
        tb = tblog.prior(root, self.name, cfg.iterations)   # no-op unless a TensorBoard session is open
        with make_progress(progress) as prog:
            task = prog.add_task(f"prior {self.name}", total=cfg.iterations, completed=start, status="")
            for it in range(start, stop):
                for _ in range(cfg.n_critic):
                    d_loss = self.critic_loss(cfg, G, D, data, gen, ctx)
                    optD.zero_grad(set_to_none=True)
                    d_loss.backward()
                    optD.step()
                z = noise(gen, cfg.batch_size, cfg.z_dim, dev)
                for p in D.parameters():
                    p.requires_grad_(False)
                g_loss = self.generator_loss(cfg, G, D, data, gen, ctx, target, z)
                optG.zero_grad(set_to_none=True)
                g_loss.backward()
                optG.step()
                for p in D.parameters():
                    p.requires_grad_(True)
                if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
                    raise TrainingDivergedError(f"prior '{self.name}' diverged at iteration {it} (NaN/inf loss); "
                                                f"lower its lr or delete '{root}' to restart")
                last = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
                prog.update(task, advance=1, status=f"D {last['d_loss']:.3g} G {last['g_loss']:.3g}")
                tb.step(it + 1, last, G)
                if (it + 1) % cfg.ckpt_every == 0 or it + 1 == stop:
                    resume.save(it + 1, {"G": G, "D": D}, {"G": optG, "D": optD}, gen)
        extra_meta.update({"final_losses": last, "iterations_done": max(stop, start)})
        return G.eval(), D.eval(), extra_meta
