"""Optional TensorBoard logs of training, priors and attacks (the ``tensorboard`` extra).

Switched on by ``--tensorboard DIR`` (``midre train / attack / run``) or the config key
``logging.tensorboard`` (``true`` = ``RUN_DIR/tensorboard``, or a directory).  While a :func:`session`
is open, the existing loops report through three small hooks; without one every hook is a no-op::

    tb = tblog.training(out_dir, description, steps_per_epoch)   # training.py
    tb.step(epoch, x, y, logits, loss, opt); tb.epoch(record, opt)
    tb = tblog.prior(root, kind, iterations)                     # priors.py
    tb.step(iteration, {"d_loss": ..., "g_loss": ...}, G)
    tblog.reconstructions(recs, out_dir)                         # Reconstructions.save

What is written, one TensorBoard run per artefact directory (its path relative to the run directory):

=================  =====================================================================================
training           train/loss, train/acc (batch, every ``every`` steps), train/lr, the batch as the model
                   sees it (after flips and the defense's erasing) once per epoch; epoch/loss,
                   epoch/train_acc, epoch/test_acc, epoch/lr per epoch
priors             prior/<loss> every ``every`` iterations; prior/samples (16 fixed latents) ten times
attacks            attack/loss per iteration (mean over batches and repeats), attack/target_top1,
                   attack/queries, attack/reconstructions (one image per identity)
=================  =====================================================================================

Logging reads tensors and never draws random numbers, so results are the same with or without it.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from .errors import ArgumentError, MidreError

EVERY = 10            # scalars every EVERY training steps / prior iterations
SAMPLES = 16          # images per logged batch / prior sample grid
_active: Session | None = None


class MissingExtraError(MidreError, ImportError):
    """An optional dependency is not installed."""


def require() -> Any:
    """torch's SummaryWriter, or a one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtraError("TensorBoard logging needs the 'tensorboard' package: pip install "
                                "'midre[tensorboard]' (or pip install tensorboard), or drop --tensorboard") from None
    return SummaryWriter


class Session:
    """An open log directory: one SummaryWriter per run name, closed together."""

    def __init__(self, log_dir: Path, base: Path | None = None, every: int = EVERY):
        self.dir, self.base, self.every = Path(log_dir), (Path(base) if base is not None else None), int(every)
        self._writer_cls = require()
        self._writers: dict[str, Any] = {}

    def writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = self._writer_cls(log_dir=str(self.dir / name))
        return self._writers[name]

    def run_name(self, path: Path | None, fallback: str) -> str:
        """``path`` relative to the run directory when it lies inside it, else ``fallback``."""
        if path is not None and self.base is not None:
            try:
                return Path(path).resolve().relative_to(self.base.resolve()).as_posix()
            except ValueError:
                pass
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", fallback).strip("-") or "run"

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def active() -> Session | None:
    return _active


@contextmanager
def session(log_dir: str | Path | None, base: str | Path | None = None, every: int = EVERY) -> Iterator[Session | None]:
    """Log to ``log_dir`` inside the block (no-op when None, or when a session is already open)."""
    global _active
    if log_dir is None or _active is not None:
        yield _active
        return
    log_dir = Path(log_dir)
    if log_dir.exists() and not log_dir.is_dir():
        raise ArgumentError(f"--tensorboard '{log_dir}' is a file; give a directory for the event files")
    _active = Session(log_dir, base, every)
    try:
        yield _active
    finally:
        _active.close()
        _active = None


def from_config(cfg: Any, run_dir: str | Path):
    """The session asked for by ``cfg.logging.tensorboard`` (true -> RUN_DIR/tensorboard), else a no-op."""
    v = getattr(getattr(cfg, "logging", None), "tensorboard", False)
    if not v:
        return nullcontext()
    require()
    return session(Path(run_dir) / "tensorboard" if v is True else Path(v), base=run_dir)


# ============================================================================ training
class _Null:
    def step(self, *a: Any, **k: Any) -> None:
        return None

    def epoch(self, *a: Any, **k: Any) -> None:
        return None


def _lr(opt: Any) -> float:
    return float(opt.param_groups[0]["lr"])


def _images(x: torch.Tensor) -> torch.Tensor:
    return x[:SAMPLES].detach().float().clamp(0, 1).cpu()


class TrainLog:
    def __init__(self, writer: Any, steps_per_epoch: int, every: int):
        self.w, self.spe, self.every = writer, max(1, int(steps_per_epoch)), every
        self._epoch, self._k = -1, 0

    def step(self, epoch: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor,
             opt: Any) -> None:
        if epoch != self._epoch:
            self._epoch, self._k = epoch, 0
        g = epoch * self.spe + self._k
        if self._k % self.every == 0:
            self.w.add_scalar("train/loss", float(loss.detach()), g)
            if y.dim() == 1:
                self.w.add_scalar("train/acc", 100.0 * float((logits.detach().argmax(1) == y).float().mean()), g)
            self.w.add_scalar("train/lr", _lr(opt), g)
        if self._k == 0:
            self.w.add_images("train/batch_as_trained", _images(x), g)
        self._k += 1

    def epoch(self, rec: dict, opt: Any) -> None:
        e = int(rec["epoch"])
        for k in ("loss", "train_acc", "test_acc", "seconds"):
            if rec.get(k) is not None:
                self.w.add_scalar(f"epoch/{k}", float(rec[k]), e)
        self.w.add_scalar("epoch/lr", _lr(opt), e)
        self.w.flush()


def training(out_dir: str | Path | None, description: str, steps_per_epoch: int) -> TrainLog | _Null:
    s = _active
    if s is None:
        return _Null()
    name = s.run_name(Path(out_dir) if out_dir is not None else None, description)
    return TrainLog(s.writer(name), steps_per_epoch, s.every)


# ============================================================================ priors
class PriorLog:
    def __init__(self, writer: Any, iterations: int, every: int):
        self.w, self.total, self.every = writer, max(1, int(iterations)), every
        self.sample_every = max(1, self.total // 10)

    def step(self, it: int, losses: dict[str, float], G: torch.nn.Module | None = None) -> None:
        """``it`` counts from 1; ``G`` (optional) is sampled at 16 fixed latents now and then."""
        if it % self.every == 0 or it == 1 or it == self.total:
            for k, v in losses.items():
                self.w.add_scalar(f"prior/{k}", float(v), it)
        if G is not None and (it % self.sample_every == 0 or it == self.total):
            self.w.add_images("prior/samples", _samples(G), it)
            self.w.flush()

    def epoch(self, *a: Any, **k: Any) -> None:
        return None


@torch.no_grad()
def _samples(G: torch.nn.Module) -> torch.Tensor:
    """G at SAMPLES fixed latents (own generator: the training's random streams are untouched)."""
    dev = next(G.parameters()).device
    z = torch.randn(SAMPLES, int(G.z_dim), generator=torch.Generator().manual_seed(0)).to(dev)
    was = G.training
    G.eval()
    try:
        K = getattr(G, "num_classes", None)
        x = G(z, torch.arange(SAMPLES, device=dev) % int(K)) if K else G(z)
    finally:
        G.train(was)
    return _images(x)


def prior(root: str | Path | None, kind: str, iterations: int) -> PriorLog | _Null:
    s = _active
    if s is None:
        return _Null()
    return PriorLog(s.writer(s.run_name(Path(root) if root is not None else None, f"prior-{kind}")),
                    iterations, s.every)


# ============================================================================ attacks
def reconstructions(recs: Any, out_dir: str | Path) -> None:
    """Loss curve, success facts and one reconstruction per identity of a finished attack."""
    s = _active
    if s is None:
        return
    meta = recs.meta
    w = s.writer(s.run_name(Path(out_dir), f"attack-{meta.get('attack', 'attack')}"))
    for i, v in enumerate(meta.get("loss_curve") or []):
        w.add_scalar("attack/loss", float(v), i + 1)
    for k in ("target_top1", "queries", "seconds"):
        if meta.get(k) is not None:
            w.add_scalar(f"attack/{k}", float(meta[k]), 0)
    first = (recs.repeat == 0).nonzero().flatten()
    order = first[recs.identity[first].argsort()][:64]
    if len(order):
        w.add_images("attack/reconstructions", recs.images[order].float().clamp(0, 1), 0)
    w.flush()
