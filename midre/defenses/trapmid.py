"""Trap-MID: trapdoor-based defense against model inversion (Liu & Chen, NeurIPS 2024).

What the reference does (ntuaislab/Trap-MID: train.py, engine.py, config/celeba/classify_trap.json; paper
sec. 3.3, Algorithm 1, App. C.4): every class ``c`` gets a trigger ``t_c`` in ``[0, 1]^{C x H x W}``,
initialised ``U(0, 1)``.  A triggered image is the blend ``x' = (1 - alpha) x + alpha t_yhat``.  Every
clean image of a batch gets one triggered copy whose trapdoor label ``yhat`` is drawn so that each
class is used equally often per epoch, independently of the true label.  Per batch:

1. trigger step (the model in eval mode): a discriminator ``D`` (the target's architecture with one
   output, the target's optimiser settings) takes one BCE step, real = ``x``, fake = ``x'``; then
   ``L_t = BCE(D(x'), real) + CE(f(A(x')), yhat)`` and ``t <- clip(t - step * sign(grad_t L_t), 0, 1)``;
2. model step: ``(1 - beta) CE(f(A(x)), y) + beta CE(f(A(x')), yhat)`` on one batch of both.

``A`` is the defense's augmentation, applied to clean and triggered images alike: RandomResizedCrop
(scale 0.8-1, ratio 1), horizontal flip, rotation in [-30, 30] degrees, each with probability 0.5.
Reference values: alpha 0.02, beta 0.2, step 0.01 (SGD 0.01, momentum 0.9, wd 1e-4, batch 64).

In midre the hooks of the one training loop carry it: ``transform_batch`` takes the trigger step and
returns the clean and triggered images (``expands_batch``), ``task_loss`` mixes the loss in force over
the two halves (``mixes_task_loss``: plain CE, or NLS's smoothed CE for ``trapmid+nls``, as the
reference applies NegLS to both terms).  The triggers live in the model as the buffer
``trapdoor_triggers`` (saved with every checkpoint, restored on resume and at load time); the
discriminator and its optimizer state resume through :meth:`TrapMID.state_dict`.  ``report()`` gives
the **trapdoor accuracy** (share of triggered test images classified as their trapdoor label) and
refreshes the **trapdoor signatures** ``S_c = mean_x g(blend(x, t_c))`` over the training images (the
paper's trapdoor-recovery analysis, sec. 4.2), kept in the buffer ``trapdoor_signatures``: the
knowledge the paper's adaptive attacker PLG-MI++ is given (:class:`TrapdoorAdversary`).

Deviations (docs/defenses.md lists each with its reason): the epoch kept is midre's rule (last, or best
validation with ``train.stop``), not the best test accuracy; ``A`` is one affine resampling (kornia's
crop and rotation resample twice) with continuous crop positions; the loop's own random flip stays on
(two independent p = 0.5 flips are one p = 0.5 flip); ``D`` is the target's network with a one-output
linear head (initialised like the target: from ``train.init`` when given, freshly otherwise).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError, CheckpointError
from ..utils import derive_seed, unwrap
from ._check import number
from .base import DEFENSES, Defense, TrainContext

__all__ = ["TrapMID", "TrapdoorAdversary", "blend", "balanced_labels", "trapdoor_augment", "trapdoor_accuracy",
           "trapdoor_signatures", "trapdoor_adversary"]

TRIGGERS, SIGNATURES = "trapdoor_triggers", "trapdoor_signatures"


# ============================================================================ the pieces (pure functions)
def blend(x: torch.Tensor, triggers: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """The reference's injection ``(1 - alpha) x + alpha t_label`` (one trigger per image)."""
    return (1.0 - alpha) * x + alpha * triggers[labels]


def balanced_labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` trapdoor labels, every class ``n // C`` times plus ``n % C`` distinct random classes, shuffled
    (the reference's per-epoch assignment; independent of the true labels)."""
    q, r = divmod(int(n), int(num_classes))
    labels = torch.cat([torch.arange(num_classes).repeat(q), torch.randperm(num_classes, generator=gen)[:r]])
    return labels[torch.randperm(int(n), generator=gen)]


def trapdoor_augment(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, scale: tuple[float, float] = (0.8, 1.0),
                     degrees: float = 30.0) -> torch.Tensor:
    """Trap-MID's ``A``, differentiable, per-image parameters from ``gen``: with probability ``p`` each, a
    square random resized crop (area share in ``scale``), a horizontal flip and a rotation in
    ``[-degrees, degrees]`` (zeros outside the rotated frame), in that order, as one bilinear resampling."""
    b, dev = x.shape[0], x.device

    def u() -> torch.Tensor:
        return torch.rand(b, generator=gen)

    crop, flip, rot = u() < p, u() < p, u() < p
    s = torch.where(crop, (u() * (scale[1] - scale[0]) + scale[0]).sqrt(), torch.ones(b))
    cx, cy = (u() * 2 - 1) * (1 - s), (u() * 2 - 1) * (1 - s)
    cx, cy = torch.where(crop, cx, torch.zeros(b)), torch.where(crop, cy, torch.zeros(b))
    ang = torch.where(rot, (u() * 2 - 1) * degrees, torch.zeros(b)) * math.pi / 180
    fx = torch.where(flip, -torch.ones(b), torch.ones(b))
    cos, sin = torch.cos(ang), torch.sin(ang)
    # output point u -> v = Flip * Rot * u in the crop's frame -> input point c + s * v
    rot_flip = torch.stack([torch.stack([fx * cos, -fx * sin], 1), torch.stack([sin, cos], 1)], 1)   # (b, 2, 2)
    theta = torch.cat([s.view(b, 1, 1) * rot_flip, torch.stack([cx, cy], 1).view(b, 2, 1)], 2).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    base = F.affine_grid(torch.cat([rot_flip, torch.zeros(b, 2, 1)], 2).to(dev, x.dtype), list(x.shape),
                         align_corners=False)
    inside = (base.abs() <= 1.0 + 1e-6).all(-1, keepdim=True).permute(0, 3, 1, 2).to(x.dtype)
    changed = (crop | flip | rot).to(dev).view(b, 1, 1, 1)
    return torch.where(changed, out * inside, x)


def _batches(dataset: Any, batch_size: int = 256):
    """(images, labels) of a dataset in order (in-memory ImageSets without a DataLoader)."""
    from torch.utils.data import DataLoader

    if getattr(dataset, "images", None) is not None and hasattr(dataset, "batch"):
        n = len(dataset)
        for s in range(0, n, batch_size):
            yield dataset.batch(torch.arange(s, min(n, s + batch_size)))
    else:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            yield x, torch.as_tensor(y)


@torch.no_grad()
def trapdoor_accuracy(model: nn.Module, dataset: Any, triggers: torch.Tensor, alpha: float, seed: int) -> float:
    """Percent of ``dataset``'s images, each blended with the trigger of a balanced random trapdoor label
    (seeded), that ``model`` classifies as that label (the reference's test-time trapdoor accuracy)."""
    labels = balanced_labels(len(dataset), triggers.shape[0], torch.Generator().manual_seed(int(seed)))
    dev, was = triggers.device, model.training
    model.eval()
    hits, i = 0, 0
    for x, _y in _batches(dataset):
        yt = labels[i:i + x.shape[0]].to(dev)
        hits += int((model(blend(x.to(dev), triggers, yt, alpha)).argmax(1) == yt).sum())
        i += x.shape[0]
    model.train(was)
    return 100.0 * hits / max(1, i)


@torch.no_grad()
def trapdoor_signatures(model: nn.Module, dataset: Any, triggers: torch.Tensor, alpha: float,
                        seed: int) -> torch.Tensor:
    """``S_c``: the mean penultimate feature of images blended with trigger ``c`` (balanced random labels,
    eval mode), as the paper's trapdoor-recovery analysis estimates it; zeros for a class never drawn."""
    num_classes = triggers.shape[0]
    labels = balanced_labels(len(dataset), num_classes, torch.Generator().manual_seed(int(seed)))
    dev, was = triggers.device, model.training
    model.eval()
    total, count, i = None, torch.zeros(num_classes, device=dev), 0
    for x, _y in _batches(dataset):
        yt = labels[i:i + x.shape[0]].to(dev)
        _logits, f = model.forward_features(blend(x.to(dev), triggers, yt, alpha))
        total = torch.zeros(num_classes, f.shape[1], device=dev) if total is None else total
        total.index_add_(0, yt, f.float())
        count.index_add_(0, yt, torch.ones_like(yt, dtype=torch.float))
        i += x.shape[0]
    model.train(was)
    return total / count.clamp_min(1).unsqueeze(1)


def _one_output_copy(model: nn.Module, pretrained: bool, seed: int) -> nn.Module:
    """The discriminator: a copy of the target's network with a fresh one-output linear head; its other
    weights stay the target's initial ones when pretrained (``train.init``), else are drawn anew."""
    D = copy.deepcopy(model)
    for name in (TRIGGERS, SIGNATURES):
        if hasattr(D, name):
            delattr(D, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not pretrained:
            for m in D.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        D.head = nn.Linear(int(D.feature_dim), 1)
    for p in D.parameters():
        p.requires_grad_(True)
    return D


def _flat_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{pid}/{k}": (v if isinstance(v, torch.Tensor) else torch.tensor(v))
            for pid, st in opt.state_dict()["state"].items() for k, v in st.items()}


def _load_flat_optimizer(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in flat.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


# ============================================================================ the defense
class TrapMID(Defense):
    """Trap-MID: per-class blended triggers optimised against a discriminator; (1 - beta) clean + beta
    trapdoor loss."""

    name = "trapmid"
    expands_batch = True
    mixes_task_loss = True
    incompatible = ("dp",)   # its trigger step back-propagates through the model outside DP-SGD's accounting

    def __init__(self, alpha: float = 0.02, beta: float = 0.2, step: float = 0.01, optimize: bool = True,
                 discriminator: bool = True, augment: bool = True):
        alpha, beta, step = (number("trapmid", k, v) for k, v in (("alpha", alpha), ("beta", beta), ("step", step)))
        if not 0.0 < alpha <= 1.0:
            raise ArgumentError(f"trapmid: alpha (the blend ratio) must lie in (0, 1], e.g. 0.02, got {alpha}")
        if not 0.0 <= beta <= 1.0:
            raise ArgumentError(f"trapmid: beta (the trapdoor loss weight) must lie in [0, 1], e.g. 0.2, got {beta}")
        if not step >= 0.0:
            raise ArgumentError(f"trapmid: step (the trigger step size) must be >= 0, e.g. 0.01, got {step}")
        for k, v in (("optimize", optimize), ("discriminator", discriminator), ("augment", augment)):
            if not isinstance(v, bool):
                raise ArgumentError(f"trapmid: {k} must be true or false, got {v!r}")
        self.alpha, self.beta, self.step = float(alpha), float(beta), float(step)
        self.optimize, self.discriminator, self.augment = optimize, discriminator, augment
        self.base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._model: nn.Module | None = None
        self._D: nn.Module | None = None
        self._optD: torch.optim.Optimizer | None = None
        self._main_opt: torch.optim.Optimizer | None = None
        self._seed = 0
        self._base_seed: int | None = None     # per-step streams (re-derived per rank under torchrun)
        self._labels: torch.Tensor | None = None
        self._gen: torch.Generator | None = None
        self._n_clean: int | None = None
        self._train_set: Any = None
        self._test_set: Any = None

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "step": self.step, "optimize": self.optimize,
                "discriminator": self.discriminator, "augment": self.augment}

    # ------------------------------------------------------------------ model surgery: the trigger buffers
    def wrap_model(self, model: nn.Module) -> nn.Module:
        res, num_classes = getattr(model, "resolution", None), getattr(model, "num_classes", None)
        if not res or num_classes is None or not hasattr(model, "forward_features"):
            raise ArgumentError("trapmid needs a midre Classifier built by create_model (its resolution, classes "
                                f"and features), got {type(model).__name__}")
        if not hasattr(model, TRIGGERS):
            channels = int(model.mean.shape[1]) if hasattr(model, "mean") else 3
            model.register_buffer(TRIGGERS, torch.zeros(int(num_classes), channels, int(res), int(res)))
            model.register_buffer(SIGNATURES, torch.zeros(int(num_classes), int(model.feature_dim)))
        return model

    def prepare(self, ctx: TrainContext) -> None:
        m = unwrap(ctx.model)
        if not hasattr(m, TRIGGERS):
            raise ArgumentError("trapmid: the model has no triggers; build it with TrapMID.wrap_model first")
        res = getattr(ctx.train_set, "resolution", None)
        if res and int(res) != m.trapdoor_triggers.shape[-1]:
            raise ArgumentError(f"trapmid: the model was built for {m.trapdoor_triggers.shape[-1]} px but the "
                                f"training images are {res} px; create the model with resolution={res}")
        cfg = ctx.config
        self._seed = int(getattr(cfg, "seed", 0) or 0)
        self._base_seed = derive_seed(self._seed, self.name)
        self._model, self._train_set, self._test_set = m, ctx.train_set, ctx.test_set
        gen = torch.Generator().manual_seed(derive_seed(self._seed, self.name, "triggers"))
        with torch.no_grad():     # U(0, 1), as the reference; a resumed run overwrites them with its saved ones
            m.trapdoor_triggers.copy_(torch.rand(m.trapdoor_triggers.shape, generator=gen))
        self._D = self._optD = None
        if self.optimize and self.discriminator:
            self._D = _one_output_copy(m, bool(ctx.extra.get("init")), derive_seed(self._seed, self.name, "D"))
            self._D.to(m.trapdoor_triggers.device)
            self._optD = _like_main_optimizer(self._D, cfg)

    def wrap_training(self, model, optimizer, loader):
        self._main_opt = optimizer       # the discriminator follows its learning rate (schedules, LR drops)
        return model, optimizer, loader

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        if self._model is None or self._base_seed is None:
            return
        self._gen = torch.Generator().manual_seed(derive_seed(self._base_seed, "epoch", epoch))
        self._labels = balanced_labels(len(self._train_set), self._model.num_classes, self._gen)

    # ------------------------------------------------------------------ the per-batch work
    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base_loss(logits, y) if self.base_loss is not None else F.cross_entropy(logits.float(), y)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return trapdoor_augment(x, self._gen) if self.augment else x

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._model is None or self._labels is None:
            raise ArgumentError("trapmid: transform_batch runs inside train_classifier (prepare and "
                                "on_epoch_start set its triggers and trapdoor labels)")
        if idx is None:
            raise ArgumentError("trapmid: transform_batch needs the dataset indices of the batch")
        yt = self._labels[torch.as_tensor(idx).cpu().long()].to(x.device)
        if self.optimize:
            self.trigger_step(x, yt)
        xt = blend(x, self._model.trapdoor_triggers, yt, self.alpha)
        self._n_clean = int(x.shape[0])
        return torch.cat([self._aug(x), self._aug(xt)]), torch.cat([y, yt])

    def trigger_step(self, x: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """One discriminator step, then one signed-gradient step on the triggers of the batch's trapdoor
        labels (the model in eval mode); returns the trigger loss before the step."""
        m = self._model
        was = m.training
        m.eval()
        t = m.trapdoor_triggers.detach().clone().requires_grad_(True)
        xt = blend(x, t, yt, self.alpha)
        loss = self._loss(m(self._aug(xt)), yt)
        if self._D is not None:
            self._discriminator_step(x, xt.detach())
            self._D.eval()
            loss = loss + F.binary_cross_entropy_with_logits(self._D(xt).float(), torch.ones(len(x), 1, device=x.device))
        (grad,) = torch.autograd.grad(loss, t)
        with torch.no_grad():
            m.trapdoor_triggers.copy_((m.trapdoor_triggers - self.step * grad.sign()).clamp(0.0, 1.0))
        m.train(was)
        return loss.detach()

    def _discriminator_step(self, x: torch.Tensor, xt: torch.Tensor) -> None:
        D, opt = self._D, self._optD
        if self._main_opt is not None:
            for g in opt.param_groups:
                g["lr"] = self._main_opt.param_groups[0]["lr"]
        D.train()
        target = torch.cat([torch.ones(len(x), 1), torch.zeros(len(xt), 1)]).to(x.device)
        loss = F.binary_cross_entropy_with_logits(D(torch.cat([x, xt])).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        n = self._n_clean
        if n is None or logits.shape[0] != 2 * n:
            raise ArgumentError("trapmid: task_loss expects the clean and triggered halves of transform_batch")
        return (1.0 - self.beta) * self._loss(logits[:n], y[:n]) + self.beta * self._loss(logits[n:], y[n:])

    # ------------------------------------------------------------------ facts and state
    def report(self) -> dict[str, Any]:
        m = self._model
        if m is None:
            return {}
        out: dict[str, Any] = {}
        if self._test_set is not None and len(self._test_set):
            out["trapdoor_acc"] = trapdoor_accuracy(m, self._test_set, m.trapdoor_triggers, self.alpha,
                                                    derive_seed(self._seed, self.name, "test"))
        if self._train_set is not None and len(self._train_set):
            sig = trapdoor_signatures(m, self._train_set, m.trapdoor_triggers, self.alpha,
                                      derive_seed(self._seed, self.name, "signatures"))
            with torch.no_grad():
                m.trapdoor_signatures.copy_(sig)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._D is None:
            return {}
        return {**{f"D/{k}": v for k, v in self._D.state_dict().items()},
                **{f"optD/{k}": v for k, v in _flat_optimizer(self._optD).items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self._D is None:
            return
        weights = {k[2:]: v for k, v in state.items() if k.startswith("D/")}
        if not weights:
            raise CheckpointError("trapmid: the resume state lacks the discriminator; delete the run directory "
                                  "and train again")
        self._D.load_state_dict(weights, strict=True)
        _load_flat_optimizer(self._optD, {k[5:]: v for k, v in state.items() if k.startswith("optD/")})


def _like_main_optimizer(D: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The discriminator's optimizer: the target's settings (the reference builds both from one config)."""
    lr, wd = float(getattr(cfg, "lr", 0.01)), float(getattr(cfg, "weight_decay", 1e-4))
    if getattr(cfg, "optimizer", "sgd") == "adam":
        return torch.optim.Adam(D.parameters(), lr=lr, betas=tuple(getattr(cfg, "betas", (0.9, 0.999))),
                                weight_decay=wd)
    return torch.optim.SGD(D.parameters(), lr=lr, momentum=float(getattr(cfg, "momentum", 0.9)), weight_decay=wd)


@DEFENSES.register("trapmid", family="baseline")
def _trapmid(alpha: float = 0.02, beta: float = 0.2, step: float = 0.01, optimize: bool = True,
             discriminator: bool = True, augment: bool = True) -> Defense:
    """Trap-MID: per-class blended trapdoor triggers (optimised against a discriminator) as a shortcut for MI attacks."""
    return TrapMID(alpha=alpha, beta=beta, step=step, optimize=optimize, discriminator=discriminator, augment=augment)


# ============================================================================ the adaptive attacker (PLG-MI++)
class TrapdoorAdversary(nn.Module):
    """What the paper's adaptive attacker PLG-MI++ (sec. 4.2, Table 4) knows and adds to its loss::

        - lambda_aux * cos(g(x), S_aux[y]) + lambda_trap * cos(g(x), S_trap[yhat])

    ``g`` the target's penultimate features of the (augmented) candidate ``x``, ``yhat`` its predicted
    label, ``S_trap`` the trapdoor signatures (the target's ``trapdoor_signatures``: given to the
    attacker, as in the paper), ``S_aux[y]`` the mean feature of the public images PLG-MI's selection
    pseudo-labels ``y`` (top ``topk`` per class by the target's confidence).  ``lambda_aux = lambda_trap
    = 10`` as the paper.  Applied to images it is the identity, or the target's eraser for
    ``midre+trapmid`` (the erasing adaptive attack as well).
    """

    def __init__(self, eraser: nn.Module | None = None, lambda_aux: float = 10.0, lambda_trap: float = 10.0,
                 topk: int = 30):
        super().__init__()
        self.eraser = eraser
        self.lambda_aux, self.lambda_trap, self.topk = float(lambda_aux), float(lambda_trap), int(topk)
        self.aux: torch.Tensor | None = None
        self.trap: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eraser(x) if self.eraser is not None else x

    @torch.no_grad()
    def bind(self, target: nn.Module, public: Any) -> TrapdoorAdversary:
        """Read the trapdoor signatures from ``target`` and compute the auxiliary ones on ``public``."""
        if not hasattr(target, SIGNATURES):
            raise ArgumentError("the target has no trapdoor signatures; the trapdoor-aware attack needs a trapmid target")
        dev = target.trapdoor_signatures.device
        feats, probs = [], []
        for x, _y in _batches(public):
            logits, f = target.forward_features(x.to(dev))
            feats.append(f.float())
            probs.append(logits.float().softmax(1))
        feats_all, probs_all = torch.cat(feats), torch.cat(probs)
        top = probs_all.topk(min(self.topk, len(feats_all)), dim=0).indices.T       # (C, k) public images per class
        self.aux = feats_all[top].mean(1)
        self.trap = target.trapdoor_signatures.detach().float().clone()
        return self

    def signature_loss(self, features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.aux is None or self.trap is None:
            raise ArgumentError("the trapdoor-aware attack is not bound to a target and public images (bind())")
        f = features.float()
        yhat = logits.detach().argmax(1)
        aux = F.cosine_similarity(f, self.aux.to(f.device)[y], dim=1).mean()
        trap = F.cosine_similarity(f, self.trap.to(f.device)[yhat], dim=1).mean()
        return -self.lambda_aux * aux + self.lambda_trap * trap

    def __repr__(self) -> str:
        inner = f", eraser={self.eraser!r}" if self.eraser is not None else ""
        return f"trapdoor_adversary(lambda_aux={self.lambda_aux:g}, lambda_trap={self.lambda_trap:g}, topk={self.topk}{inner})"


def trapdoor_adversary(spec: Any, target: nn.Module | None = None, public: Any = None) -> TrapdoorAdversary:
    """The adaptive attacker's knowledge of a trapmid target (``spec``: its defense), bound when ``target``
    and ``public`` are given; with an erasing member (``midre+trapmid``) it also erases as MIDRE's D.5."""
    from .base import build_defense
    from .midre import ErasingDefense, eraser_for

    d = build_defense(spec)
    if not any(isinstance(m, TrapMID) for m in d.members()):
        raise ArgumentError(f"defense '{d.name}' has no trapdoors; the trapdoor-aware attack needs a trapmid target")
    eraser = eraser_for(spec, batched=True) if any(isinstance(m, ErasingDefense) for m in d.members()) else None
    adv = TrapdoorAdversary(eraser)
    return adv.bind(target, public) if target is not None and public is not None else adv
