"""TL-DMI: transfer-learning based defense against model inversion (Ho et al., 2024).

What the reference does: limit the number of layers that encode the private data.  The model is
first trained on public data (ImageNet / public face identities), then its early layers are frozen
and only the later layers are fine-tuned on the private data with plain cross-entropy.  The paper's
VGG16 fine-tunes the last conv blocks + classifier; the broad public MI toolbox uses a simpler rule,
"freeze the first 50 % of the leaf modules".

How it works here (``prepare`` runs once before training):

1. Pre-training, one of:
   - ``pretrained="path"``: load LOCAL weights (a backbone or whole-classifier state dict, via
     :func:`midre.models.weights.load_pretrained`); nothing is downloaded;
   - otherwise, when the target was initialised from a shared pretrained checkpoint (``train.init``,
     the benchmark's way: every target starts from the same backbone): nothing more -- TL-DMI then
     differs from NoDef only by its freezing;
   - otherwise, when the trainer has a public set with identity labels: a copy of the model with a
     temporary head of the public class count is trained on it with
     :func:`midre.training.train_classifier` (``pretrain_*`` settings), and its backbone is kept;
   - ``pretrain_epochs=0`` skips pre-training (freezing only).
   On resume the saved weights replace the pre-trained ones, so pre-training is skipped.
2. Freezing, ``freeze``:
   - a float in [0, 1] (default 0.5): the first ``round(freeze * L)`` of the L leaf modules that own
     parameters, in module order, excluding the head (the toolbox's "first 50 % of leaf modules");
   - an integer k: everything up to and including ``model.blocks[k-1]`` (the stem before the first
     block included), i.e. the first k blocks.
   Frozen parameters get ``requires_grad=False`` (the trainer's optimizer skips them) and frozen
   BatchNorm layers stay in eval mode (running statistics unchanged) through a forward pre-hook,
   since the trainer puts the whole model in train mode every epoch.
3. Fine-tuning of the rest on private data with plain CE (this defense adds no loss term).

Reference settings, for choosing ``freeze`` per model: the released TL-DMI code freezes the
children ``0..freeze_layers`` (inclusive) of a feature stack -- VGG16-BN ``features`` up to index 26
(blocks 1-3 and the first conv of block 4: 16 of its 26 conv/BN leaves, ``freeze ~= 0.62``),
FaceNet64 (IR-50) body units 0-5 of 24 (``~= 0.25``), IR152 body units 0-46 of 50 (``~= 0.94``).
Two differences, both deliberate: the reference meant to freeze the input layer too but a typo
(``requries_grad``) left it trainable, and its frozen BatchNorms keep updating their running
statistics; midre freezes what it says and keeps frozen BN layers in eval mode.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..errors import ArgumentError, DataError
from ._check import integer, number
from .base import DEFENSES, Defense, TrainContext

_BN = (nn.modules.batchnorm._BatchNorm,)


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of leaf modules owning parameters, in module order, excluding ``model.head``."""
    head = getattr(model, "head", None)
    skip = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    out = []
    for name, m in model.named_modules():
        if id(m) in skip or len(m._modules) > 0:
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out.append((name, m))
    return out


def _keep_eval(module: nn.Module, inputs) -> None:
    module.training = False


class _Relabelled(Dataset):
    """A dataset whose labels are mapped to 0..K-1."""

    def __init__(self, ds: Dataset, mapping: dict[int, int]):
        self.ds, self.mapping = ds, mapping
        self.resolution = getattr(ds, "resolution", None)
        self.channels = getattr(ds, "channels", 3)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x, self.mapping[int(y)]


class TLDMI(Defense):
    """TL-DMI: pre-train on public data, freeze the early layers, fine-tune the rest privately."""

    name = "tldmi"

    def __init__(self, freeze: float | int = 0.5, pretrained: str | None = None, pretrain_epochs: int = 10,
                 pretrain_lr: float = 0.01, pretrain_batch_size: int = 64, pretrain_optimizer: str = "sgd"):
        if isinstance(freeze, str):
            try:
                freeze = int(freeze) if freeze.strip().lstrip("+-").isdigit() else float(freeze)
            except ValueError:
                pass
        if isinstance(freeze, bool) or not isinstance(freeze, (int, float)):
            raise ArgumentError(f"tldmi: freeze must be a fraction in [0, 1] (e.g. 0.5) or a number of blocks, got {freeze!r}")
        if isinstance(freeze, int) and freeze < 0:
            raise ArgumentError(f"tldmi: freeze (number of blocks) must be >= 0, got {freeze}")
        if isinstance(freeze, float) and not 0.0 <= freeze <= 1.0:
            raise ArgumentError(f"tldmi: freeze as a fraction of leaf modules must lie in [0, 1], got {freeze}; "
                                "give an integer to freeze whole blocks")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ArgumentError(f"tldmi: pretrained must be a local file path, got {pretrained!r}")
        pretrain_epochs = integer("tldmi", "pretrain_epochs", pretrain_epochs, 0)
        pretrain_lr = number("tldmi", "pretrain_lr", pretrain_lr)
        if not pretrain_lr > 0:
            raise ArgumentError(f"tldmi: pretrain_lr must be > 0, got {pretrain_lr!r}")
        pretrain_batch_size = integer("tldmi", "pretrain_batch_size", pretrain_batch_size, 1)
        if pretrain_optimizer not in ("sgd", "adam"):
            raise ArgumentError(f"tldmi: pretrain_optimizer must be 'sgd' or 'adam', got {pretrain_optimizer!r}")
        self.freeze = freeze
        self.pretrained = pretrained
        self.pretrain_epochs = int(pretrain_epochs)
        self.pretrain_lr = float(pretrain_lr)
        self.pretrain_batch_size = int(pretrain_batch_size)
        self.pretrain_optimizer = pretrain_optimizer
        self.frozen_names: list[str] = []
        self.pretrain_report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"freeze": self.freeze, "pretrained": self.pretrained, "pretrain_epochs": self.pretrain_epochs,
                "pretrain_lr": self.pretrain_lr, "pretrain_batch_size": self.pretrain_batch_size,
                "pretrain_optimizer": self.pretrain_optimizer}

    # ------------------------------------------------------------------ freezing
    def frozen_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The leaf modules this defense freezes in ``model`` (see the module docstring)."""
        leaves = leaf_modules(model)
        if isinstance(self.freeze, float):
            return leaves[:int(round(self.freeze * len(leaves)))]
        k = int(self.freeze)
        if k == 0:
            return []
        blocks = list(getattr(model, "blocks", []) or [])
        if k > len(blocks):
            raise ArgumentError(f"tldmi: cannot freeze {k} blocks, the model has {len(blocks)}; "
                                f"use 0..{len(blocks)} or a fraction such as 0.5")
        inside = {id(m) for b in blocks[:k] for m in b.modules()}
        last = max((i for i, (_, m) in enumerate(leaves) if id(m) in inside), default=-1)
        return leaves[:last + 1]

    def apply_freeze(self, model: nn.Module) -> list[str]:
        frozen = self.frozen_modules(model)
        for _, m in frozen:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(m, _BN):
                m.eval()
                m.register_forward_pre_hook(_keep_eval)
        self.frozen_names = [n for n, _ in frozen]
        return self.frozen_names

    # ------------------------------------------------------------------ pre-training
    def _public_labels(self, public: Dataset) -> dict[int, int]:
        targets = getattr(public, "targets", None)
        if targets is None:
            targets = torch.as_tensor([int(public[i][1]) for i in range(len(public))])
        targets = torch.as_tensor(targets).long()
        if len(targets) == 0 or bool((targets < 0).any()):
            raise DataError("tldmi: pre-training needs public images with identity labels; this public set is "
                            "unlabelled -- give pretrained=<local weights> or pretrain_epochs=0")
        uniq = sorted(int(t) for t in torch.unique(targets))
        if len(uniq) < 2:
            raise DataError("tldmi: the public set has fewer than 2 identities; it cannot pre-train a classifier")
        return {c: i for i, c in enumerate(uniq)}

    def pretrain(self, model: nn.Module, ctx: TrainContext) -> None:
        import copy

        from ..utils import derive_seed

        public = ctx.public_set
        mapping = self._public_labels(public)
        if all(k == v for k, v in mapping.items()):
            data = public
        elif hasattr(public, "images") and hasattr(public, "targets"):
            from ..data.base import TensorImageSet

            data = TensorImageSet(public.images, torch.tensor([mapping[int(t)] for t in public.targets]))
        else:
            data = _Relabelled(public, mapping)
        feature_dim = getattr(model, "feature_dim", None)
        if feature_dim is None or not hasattr(model, "backbone"):
            raise ArgumentError(f"tldmi needs a midre Classifier (backbone + head), got {type(model).__name__}")
        temp = copy.deepcopy(model)
        temp.head = nn.Linear(int(feature_dim), len(mapping))
        temp.num_classes = len(mapping)
        cfg = ctx.config
        pcfg = {"epochs": self.pretrain_epochs, "batch_size": self.pretrain_batch_size,
                "optimizer": self.pretrain_optimizer, "lr": self.pretrain_lr, "device": str(ctx.device),
                "seed": derive_seed(getattr(cfg, "seed", 0), "tldmi-pretrain"),
                "amp": bool(getattr(cfg, "amp", True)), "num_workers": int(getattr(cfg, "num_workers", 0))}
        if ctx.train is None:
            raise ArgumentError("tldmi pre-training runs inside midre's training loop (midre.training.train_classifier)")
        res = ctx.train(temp, data, None, defense=None, config=pcfg, progress=ctx.progress,
                        description="TL-DMI pre-training (public)")
        model.backbone.load_state_dict(res.model.backbone.state_dict())
        hist = res.history[-1] if res.history else {}
        self.pretrain_report = {"tldmi_public_classes": len(mapping),
                                "tldmi_pretrain_train_acc": hist.get("train_acc")}

    def prepare(self, ctx: TrainContext) -> None:
        from ..utils import unwrap

        model = unwrap(ctx.model)
        if not ctx.extra.get("resuming", False):
            if self.pretrained is not None:
                from ..models.weights import load_pretrained

                load_pretrained(model, self.pretrained)
            elif ctx.extra.get("init"):
                self.pretrain_report = {"tldmi_pretrained_from": "shared init (train.init)"}
            elif self.pretrain_epochs > 0:
                if ctx.public_set is None:
                    raise ArgumentError("tldmi: no public set to pre-train on; give the dataset's public split, "
                                        "pretrained=<local weights>, or pretrain_epochs=0")
                self.pretrain(model, ctx)
        self.apply_freeze(model)

    def report(self) -> dict[str, Any]:
        return {"tldmi_frozen_modules": len(self.frozen_names), **self.pretrain_report}


@DEFENSES.register("tldmi", family="baseline")
def _tldmi(freeze: float | int = 0.5, pretrained: str | None = None, pretrain_epochs: int = 10,
           pretrain_lr: float = 0.01, pretrain_batch_size: int = 64, pretrain_optimizer: str = "sgd") -> Defense:
    """TL-DMI: pre-train on public identities, freeze early layers, fine-tune the rest on private data."""
    return TLDMI(freeze=freeze, pretrained=pretrained, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr,
                 pretrain_batch_size=pretrain_batch_size, pretrain_optimizer=pretrain_optimizer)
