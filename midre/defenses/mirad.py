"""MI-RAD: MI-resilient architecture designs (Koh et al., ECCV 2024, "On the vulnerability of skip
connections to model inversion attacks").

What the reference found: skip connections carry the inversion gradient past the residual modules,
and those of the LAST stage matter most.  Its three designs, each registered under its own name:

- ``rolss`` -- Removal of Last Stage Skip-connections: the last stage's blocks compute ``f(x)`` only.
- ``ssf``   -- Skip-connection Scaling Factor: the last stage's blocks compute ``f(x) + s * shortcut(x)``
  with ``0 < s < 1`` (default ``scale = 0.6``, the value of the released code's ResNet-18 config; the
  scale multiplies the whole shortcut, downsampling projection included, of every block of the stage).
- ``tts``   -- Two-stage Training Scheme: training is split at ``switch`` (default 0.5 of the epochs);
  one stage trains with the modification (skip scale ``scale``, default 0 = RoLSS), the other without
  (scale 1).  ``order="modified_first"`` (default, as specified for midre) trains modified first and
  deploys the plain architecture; ``order="plain_first"`` trains plain first and deploys the modified
  one.  TTS is not part of the released reference code and its paper text was not available
  offline, so the order is a documented choice; both orders are one parameter apart.

The released code expresses all of this as one skip factor per stage (e.g. ``[1, 1, 1, 0]`` for RoLSS,
``[1, 1, 1, 0.6]`` for SSF on ResNet-18); ``stages=k`` here applies the factor to the last k stages.

``mirad`` builds any of them with ``mode="rolss" | "ssf" | "tts"``.  ``stages`` (default 1) is the
number of final residual stages modified.  Works on every midre residual family (smallresnet,
ir50/ir152/facenet*, torchvision resnets): their blocks expose ``skip_scale`` and their stages are
listed by ``model.stage_names`` (see :mod:`midre.models.small`).  A plain torchvision
``BasicBlock`` / ``Bottleneck`` found in a foreign model is switched to midre's ``skip_scale``
subclass (same parameters, same state-dict keys).  Non-residual models are refused with one line.

``wrap_model`` sets the deployed skip scales (deterministic: :func:`midre.loading.load_model`
re-applies it); for TTS, ``on_epoch_start`` switches the scales between the two stages.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import ArgumentError
from ._check import integer, number
from .base import DEFENSES, Defense

MODES = ("rolss", "ssf", "tts")
ORDERS = ("modified_first", "plain_first")


def _adopt_torchvision_blocks(model: nn.Module) -> int:
    """Give plain torchvision ResNet blocks midre's ``skip_scale`` forward (in place); returns the count."""
    from torchvision.models import resnet as tv_resnet

    from ..models.torchvision_models import BasicBlock, Bottleneck

    n = 0
    for m in model.modules():
        if type(m) is tv_resnet.BasicBlock:
            m.__class__ = BasicBlock
            n += 1
        elif type(m) is tv_resnet.Bottleneck:
            m.__class__ = Bottleneck
            n += 1
    return n


def target_blocks(model: nn.Module, stages: int = 1) -> list[nn.Module]:
    """Residual blocks of the last ``stages`` stages of ``model`` (raises on a non-residual model)."""
    from ..models.small import last_stage_blocks, residual_stages
    from ..utils import unwrap

    model = unwrap(model)
    _adopt_torchvision_blocks(model)
    all_stages = residual_stages(model)
    if not all_stages:
        last_stage_blocks(model)   # raises the explanatory ArgumentError
    if stages > len(all_stages):
        raise ArgumentError(f"mirad: cannot modify the last {stages} stages, the model has {len(all_stages)} "
                            "residual stages")
    return [b for st in all_stages[-stages:] for b in st]


class MIRAD(Defense):
    """RoLSS / SSF / TTS on the last residual stage(s)."""

    def __init__(self, mode: str = "rolss", scale: float | None = None, stages: int = 1, switch: float = 0.5,
                 order: str = "modified_first"):
        if mode not in MODES:
            raise ArgumentError(f"mirad: mode must be one of {', '.join(MODES)}, got {mode!r}")
        scale = number(mode, "scale", scale, allow_none=True)
        if mode == "rolss":
            if scale not in (None, 0, 0.0):
                raise ArgumentError(f"rolss removes the skip connections (scale 0); use 'ssf' to scale them by {scale}")
            scale = 0.0
        elif mode == "ssf":
            scale = 0.6 if scale is None else float(scale)
            if not 0.0 < scale < 1.0:
                raise ArgumentError(f"ssf: scale must lie in (0, 1) (e.g. 0.6), got {scale}; use 'rolss' for 0")
        else:
            scale = 0.0 if scale is None else float(scale)
            if not 0.0 <= scale < 1.0:
                raise ArgumentError(f"tts: scale of the modified stage must lie in [0, 1), got {scale}")
        stages = integer(mode, "stages (number of final residual stages to modify)", stages, 1)
        switch = number(mode, "switch", switch)
        if not 0.0 < switch < 1.0:
            raise ArgumentError(f"{mode}: switch (fraction of epochs in the first stage) must lie in (0, 1), got {switch!r}")
        if order not in ORDERS:
            raise ArgumentError(f"{mode}: order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.mode = mode
        self.name = mode
        self.scale = float(scale)
        self.stages = int(stages)
        self.switch = float(switch)
        self.order = order
        self._blocks: list[nn.Module] = []

    def params(self) -> dict[str, Any]:
        if self.mode == "rolss":
            return {"stages": self.stages}
        if self.mode == "ssf":
            return {"scale": self.scale, "stages": self.stages}
        return {"scale": self.scale, "stages": self.stages, "switch": self.switch, "order": self.order}

    # ------------------------------------------------------------------ scales
    def deployed_scale(self) -> float:
        """Skip scale of the final (deployed) architecture."""
        if self.mode == "tts":
            return 1.0 if self.order == "modified_first" else self.scale
        return self.scale

    def scale_at(self, epoch: int, epochs: int) -> float:
        """Skip scale used while training 0-based ``epoch`` of ``epochs``."""
        if self.mode != "tts":
            return self.scale
        first_stage = epoch < max(1, int(round(self.switch * epochs)))
        modified = first_stage == (self.order == "modified_first")
        return self.scale if modified else 1.0

    def _set(self, scale: float) -> None:
        for b in self._blocks:
            b.skip_scale = float(scale)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self._blocks = target_blocks(model, self.stages)
        self._set(self.deployed_scale())
        return model

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        if self.mode == "tts":
            if not self._blocks:
                raise ArgumentError("tts: wrap_model was not applied to the model before training")
            self._set(self.scale_at(epoch, epochs))


@DEFENSES.register("rolss", family="baseline")
def _rolss(stages: int = 1) -> Defense:
    """MI-RAD RoLSS: remove the skip connections of the last residual stage."""
    return MIRAD("rolss", stages=stages)


@DEFENSES.register("ssf", family="baseline")
def _ssf(scale: float = 0.6, stages: int = 1) -> Defense:
    """MI-RAD SSF: scale the last residual stage's skip connections by a factor in (0, 1)."""
    return MIRAD("ssf", scale=scale, stages=stages)


@DEFENSES.register("tts", family="baseline")
def _tts(scale: float = 0.0, stages: int = 1, switch: float = 0.5, order: str = "modified_first") -> Defense:
    """MI-RAD TTS: two-stage training, with and without the last-stage skip modification."""
    return MIRAD("tts", scale=scale, stages=stages, switch=switch, order=order)


@DEFENSES.register("mirad", family="baseline")
def _mirad(mode: str = "rolss", scale: float | None = None, stages: int = 1, switch: float = 0.5,
           order: str = "modified_first") -> Defense:
    """MI-RAD (skip-connection designs): mode rolss | ssf | tts on the last residual stage(s)."""
    return MIRAD(mode, scale=scale, stages=stages, switch=switch, order=order)
