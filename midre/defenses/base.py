"""The Defense contract: how any defense attaches to THE training loop (midre.training).

A defense overrides only the hooks it needs (cf. Opacus' make_private: wrap, don't fork):

====================  ==========================================================================
hook                  called
====================  ==========================================================================
wrap_model(model)     once, before training AND when a checkpoint is loaded (deterministic model
                      surgery: MID's bottleneck head, MI-RAD's skip scaling, DP's BN->GN).
prepare(ctx)          once before training (TL-DMI pre-trains on public data and freezes layers).
on_epoch_start(e, E)  at the start of every epoch (NLS ramp).
transform_batch(x,y,i) on every training batch, on the device, after flips (MIDRE's eraser);
                      i = dataset indices of the batch (Fixed / Entire Erasing key on them).
task_loss(logits, y)  replaces cross-entropy when not None (NLS).
regularizer(ctx)      added to the loss when not None (MID's KL, BiDO's HSIC terms).
wrap_training(m,o,l)  may wrap model / optimizer / loader (DP-SGD through Opacus).
report()              extra facts for the checkpoint metadata and the results (epsilon of DP,
                      Trap-MID's trapdoor accuracy), after every epoch and at the end.
state_dict()          tensors the defense needs to resume exactly (Trap-MID's discriminator and its
load_state_dict(s)    optimizer), kept in ``train_state.pt`` beside the optimizer's.
====================  ==========================================================================

Defenses compose (``Compose([MIDRE(...), NLS(...)])``): transforms chain, regularizers add, and at
most one member may replace the task loss.  A member that appends images to the batch
(``expands_batch``: Trap-MID's triggered copies) runs after the other transforms, and a member that
mixes the task loss over parts of the batch (``mixes_task_loss``) is handed the task loss in force
(cross-entropy, or NLS's) as ``base_loss``.  ``incompatible`` names members it cannot be combined with.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import ArgumentError, ConfigError
from ..registry import Registry


@dataclass
class TrainContext:
    """What the trainer shares with defenses."""

    model: nn.Module
    train_set: Any
    test_set: Any = None
    public_set: Any = None
    config: Any = None
    device: torch.device = torch.device("cpu")
    out_dir: Any = None
    progress: bool = True
    extra: dict = field(default_factory=dict)
    # the training loop itself (midre.training.train_classifier), for defenses that pre-train a model
    # (TL-DMI): a defense never imports the trainer that imports it
    train: Callable[..., Any] | None = None


@dataclass
class StepContext:
    """One training step, as seen by ``regularizer``: inputs after transform_batch, logits, features."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None
    epoch: int
    epochs: int


class Defense:
    """No defense (NoDef); base class of every defense."""

    name: str = "nodef"
    needs_features: bool = False   # regularizer wants penultimate features in StepContext
    expands_batch: bool = False    # transform_batch appends images: run after the other members' transforms
    mixes_task_loss: bool = False  # task_loss weighs parts of the batch with ``base_loss`` (the loss in force)
    incompatible: tuple[str, ...] = ()   # names of defenses this one cannot be combined with

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-able; ``build_defense({'name': d.name, **d.params()})`` rebuilds it."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare(self, ctx: TrainContext) -> None:
        return None

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        return None

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        return None

    def wrap_training(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any):
        return model, optimizer, loader

    def report(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to resume this defense exactly (saved with the optimizer's state every epoch)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None

    def members(self) -> list[Defense]:
        return [self]

    def __repr__(self) -> str:
        """Its name and settings, as torchvision transforms print: ``nodef``, ``midre(area=0.4)``,
        ``midre(area=0.6, fill='zero')+nls(alpha=-0.05)``; see :func:`settings_text`."""
        return self.name + settings_text(type(self), self.params())


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def settings_text(cls: type, params: dict[str, Any]) -> str:
    """``(k=v, ...)`` of the settings that differ from ``cls``'s defaults, or of its first setting when none
    differ (the one that defines it, e.g. MIDRE's area); empty without settings."""
    import inspect

    try:
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    shown = {k: v for k, v in params.items() if k not in defaults or _plain(v) != _plain(defaults[k])}
    if not shown and params:
        k = next(iter(params))
        shown = {k: params[k]}
    return "(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")" if shown else ""


class Compose(Defense):
    """Several defenses applied together (e.g. MIDRE + NLS, MIDRE + BiDO)."""

    def __init__(self, defenses: Sequence[Defense]):
        flat: list[Defense] = []
        for d in defenses:
            flat.extend(d.members())
        flat = [d for d in flat if d.name != "nodef"]
        flat = [d for d in flat if not d.expands_batch] + [d for d in flat if d.expands_batch]
        _check_combination(flat)
        owners = [d for d in flat if type(d).task_loss is not Defense.task_loss and not d.mixes_task_loss]
        if len(owners) > 1:
            raise ConfigError(f"defenses {[d.name for d in owners]} each replace the task loss and cannot be "
                              "combined; keep one of them")
        mixers = [d for d in flat if d.mixes_task_loss]
        for m in mixers:
            m.base_loss = owners[0].task_loss if owners else None
        self._loss_order = mixers + [d for d in flat if not d.mixes_task_loss]
        self.defenses = flat
        self.name = "+".join(d.name for d in flat) or "nodef"
        self.needs_features = any(d.needs_features for d in flat)

    def members(self) -> list[Defense]:
        return list(self.defenses)

    def __repr__(self) -> str:
        return "+".join(repr(d) for d in self.defenses) or "nodef"

    def params(self) -> dict[str, Any]:
        return {"defenses": [d.spec() for d in self.defenses]}

    def spec(self) -> dict[str, Any]:
        if len(self.defenses) == 1:
            return self.defenses[0].spec()
        return {"name": "compose", "defenses": [d.spec() for d in self.defenses]}

    def wrap_model(self, model):
        for d in self.defenses:
            model = d.wrap_model(model)
        return model

    def prepare(self, ctx):
        for d in self.defenses:
            d.prepare(ctx)

    def on_epoch_start(self, epoch, epochs):
        for d in self.defenses:
            d.on_epoch_start(epoch, epochs)

    def transform_batch(self, x, y, idx=None):
        for d in self.defenses:
            x, y = d.transform_batch(x, y, idx)
            kept = getattr(d, "kept", None)          # a member that left images out (Entire Erasing's drop)
            if kept is not None and idx is not None:
                idx = torch.as_tensor(idx)[kept.to("cpu")]
        return x, y

    def task_loss(self, logits, y):
        for d in self._loss_order:
            out = d.task_loss(logits, y)
            if out is not None:
                return out
        return None

    def regularizer(self, ctx):
        total = None
        for d in self.defenses:
            r = d.regularizer(ctx)
            if r is not None:
                total = r if total is None else total + r
        return total

    def wrap_training(self, model, optimizer, loader):
        for d in self.defenses:
            model, optimizer, loader = d.wrap_training(model, optimizer, loader)
        return model, optimizer, loader

    def report(self):
        out: dict[str, Any] = {}
        for d in self.defenses:
            out.update(d.report())
        return out

    def state_dict(self):
        return {f"{i}.{k}": v for i, d in enumerate(self.defenses) for k, v in d.state_dict().items()}

    def load_state_dict(self, state):
        for i, d in enumerate(self.defenses):
            d.load_state_dict({k[len(f"{i}."):]: v for k, v in state.items() if k.startswith(f"{i}.")})


def _check_combination(flat: Sequence[Defense]) -> None:
    """One line when two members cannot work together (the same batch-expanding defense twice, or a pair
    one of them declares ``incompatible``)."""
    if sum(d.expands_batch for d in flat) > 1:
        names = [d.name for d in flat if d.expands_batch]
        raise ConfigError(f"defenses {names} each append images to the batch; keep one of them")
    for d in flat:
        clash = [o.name for o in flat if o is not d and o.name in d.incompatible]
        if clash:
            raise ConfigError(f"defense '{d.name}' cannot be combined with '{clash[0]}'; train them separately")


DEFENSES: Registry[Callable[..., Defense]] = Registry("defense", group="midre.defenses")


@DEFENSES.register("nodef")
def _nodef() -> Defense:
    """No defense: plain cross-entropy training."""
    return Defense()


def build_defense(spec: Any) -> Defense:
    """Build a defense from a name ('midre'), 'midre+nls', a dict {'name': ..., **params}, a list of
    those, or a Defense.  Unknown names and bad parameters raise a one-line MidreError."""
    if isinstance(spec, Defense):
        return spec
    if spec is None:
        return Defense()
    if isinstance(spec, (list, tuple)):
        parts = [build_defense(s) for s in spec]
        return parts[0] if len(parts) == 1 else Compose(parts)
    if isinstance(spec, str):
        if "+" in spec:
            return build_defense([s.strip() for s in spec.split("+") if s.strip()])
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"a defense must be a name or a mapping with 'name', got {spec!r}")
    spec = dict(spec)
    name = str(spec.pop("name"))
    if name == "compose":
        return Compose([build_defense(s) for s in spec.get("defenses", [])])
    factory = DEFENSES.get(name)
    try:
        return factory(**spec)
    except TypeError as e:
        import inspect

        allowed = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
        bad = [k for k in spec if k not in allowed]
        if bad:
            from ..errors import did_you_mean

            raise ArgumentError(
                f"defense '{name}' has no parameter '{bad[0]}'{did_you_mean(bad[0], allowed)}; "
                f"its parameters are: {', '.join(allowed) or 'none'}") from None
        raise ArgumentError(f"defense '{name}': {e}") from None
