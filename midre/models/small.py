"""Small, fast CNNs for CPU runs, and the helpers every model family in midre shares.

Architectures (all registered in :data:`midre.models.MODELS`):

- ``smallcnn``  -- THE default CPU model: 4 x (conv3x3-BN-ReLU-maxpool), widths 32-64-128-256, global
  average pool, ``feature_dim`` 256.  Resolution-agnostic (any size >= 16 px).
- ``tinycnn``   -- 3 x (conv3x3-BN-ReLU-maxpool), widths 8-16-32, ``feature_dim`` 32; for unit tests.
- ``smallresnet`` -- conv stem + 4 stages of :class:`ResidualBlock` (widths 32-64-128-256, depths
  1-1-1-2, each stage halves the resolution), global average pool, ``feature_dim`` 256.  Residual
  blocks expose ``skip_scale`` (MI-RAD on CPU).

The residual-block contract (shared with ``faces.py`` and ``torchvision_models.py``)
-----------------------------------------------------------------------------------
Every residual block in midre (:class:`ResidualBlock` here, the IR units of IR-50/152 and the
ResNet blocks of the torchvision families) has a float attribute ``skip_scale`` (default 1.0) and
computes ``out = f(x) + skip_scale * shortcut(x)`` (ResNets then apply their final ReLU).
``skip_scale = 0`` removes the skip connection (MI-RAD's RoLSS; the shortcut is then not even
evaluated), ``0 < skip_scale < 1`` scales it (MI-RAD's SSF).  ``skip_scale`` is a plain attribute,
not saved in checkpoints: a defense sets it in ``Defense.wrap_model``, which midre re-applies when a
checkpoint is loaded.

Models with residual blocks carry ``model.stage_names``: a list of stages (input -> output), each a
list of dotted module names (relative to the Classifier) of that stage's residual blocks.  Use
:func:`residual_stages` to get the modules, :func:`last_stage_blocks` for MI-RAD's "last stage" and
:func:`set_skip_scale` to change them.  Names are resolved at call time, so they stay valid after
model surgery.  Models without ``stage_names`` fall back to grouping the modules that have a
``skip_scale`` attribute by their parent container.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import ArgumentError
from .base import MODELS, Classifier

__all__ = [
    "SmallCNN", "ResidualBlock", "SmallResNet", "check_arguments", "validated", "residual_stages",
    "last_stage_blocks", "set_skip_scale",
]


# ---------------------------------------------------------------------------------------------
# Shared helpers (used by faces.py and torchvision_models.py too)
# ---------------------------------------------------------------------------------------------

def check_arguments(arch: str, num_classes: Any, resolution: Any, min_resolution: int) -> None:
    """Validate the arguments every factory takes; raise :class:`ArgumentError` (one line)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ArgumentError(f"num_classes must be an integer >= 2 for '{arch}', got {num_classes!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ArgumentError(f"resolution must be a positive integer (pixels) for '{arch}', got {resolution!r}")
    if resolution < min_resolution:
        raise ArgumentError(f"'{arch}' needs images of at least {min_resolution} px, got resolution={resolution}; "
                            f"use a larger --resolution or a smaller architecture (e.g. smallcnn)")


def validated(arch: str, min_resolution: int) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator for a factory ``(num_classes, resolution=..., **options) -> Classifier``.

    Checks ``num_classes`` / ``resolution`` and turns an unknown keyword into an
    :class:`ArgumentError` that lists the options the architecture accepts.
    """

    def deco(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        sig = inspect.signature(fn)
        accepted = [p for p in sig.parameters if p not in ("num_classes", "resolution")]
        default_res = sig.parameters["resolution"].default

        @functools.wraps(fn)
        def factory(num_classes: int, resolution: int | None = None, **kwargs: Any) -> Classifier:
            unknown = [k for k in kwargs if k not in accepted]
            if unknown:
                opts = ", ".join(accepted) if accepted else "none"
                raise ArgumentError(f"unknown option '{unknown[0]}' for architecture '{arch}'; it accepts: {opts}")
            if resolution is None:
                resolution = default_res
            check_arguments(arch, num_classes, resolution, min_resolution)
            model = fn(num_classes, resolution=resolution, **kwargs)
            model.arch = arch
            return model

        factory.min_resolution = min_resolution  # type: ignore[attr-defined]
        return factory

    return deco


def check_choice(arch: str, name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ArgumentError(f"option {name}={value!r} is invalid for '{arch}': expected {expected}")


def check_downsampling(arch: str, unit: str, halvings: int, stem_stride: Any, resolution: int) -> None:
    """``stem_stride`` is 1 or 2, and the input survives the stem and ``halvings`` stride-2 steps."""
    check_choice(arch, "stem_stride", stem_stride, stem_stride in (1, 2), "1 or 2")
    need = stem_stride * 2 ** halvings
    if resolution < need:
        raise ArgumentError(f"'{arch}' with {halvings} {unit} and stem_stride={stem_stride} needs at least {need} px, "
                            f"got resolution={resolution}; use fewer {unit} or larger images")


def check_int_list(arch: str, name: str, value: Any, length: int | None = None) -> list[int]:
    """Validate a list of positive ints (JSON gives lists, Python callers may give tuples)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                          for v in value):
        if length is None or len(value) == length:
            return [int(v) for v in value]
    what = f"{length} positive integers" if length else "a non-empty list of positive integers"
    raise ArgumentError(f"option {name}={value!r} is invalid for '{arch}': expected {what}")


def check_dropout(arch: str, value: Any, name: str = "dropout") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ArgumentError(f"option {name}={value!r} is invalid for '{arch}': expected a probability in [0, 1)")
    return float(value)


def residual_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The residual blocks of ``model`` grouped by stage (input -> output); ``[]`` if none.

    Uses ``model.stage_names`` when present (all midre residual families set it), otherwise groups
    the modules that have a ``skip_scale`` attribute by their parent container, in module order.
    """
    names = getattr(model, "stage_names", None)
    if names:
        return [[model.get_submodule(n) for n in stage] for stage in names]
    groups: dict[str, list[nn.Module]] = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "skip_scale"):
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            groups.setdefault(parent, []).append(mod)
    return list(groups.values())


def last_stage_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of the last stage (MI-RAD's RoLSS / SSF target)."""
    stages = residual_stages(model)
    if not stages:
        arch = getattr(model, "arch", type(model).__name__)
        raise ArgumentError(f"architecture '{arch}' has no residual blocks with skip connections; "
                            "use a residual model (smallresnet, ir50, ir152, facenet64, resnet18, ...)")
    return stages[-1]


def set_skip_scale(model: nn.Module, scale: float, stages: Sequence[int] = (-1,)) -> int:
    """Set ``skip_scale`` of every block in the given stages (default: the last); returns the count."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ArgumentError(f"skip scale must be a number >= 0, got {scale!r}")
    all_stages = residual_stages(model)
    if not all_stages:
        last_stage_blocks(model)  # raises the explanatory error
    n = 0
    for s in stages:
        if not -len(all_stages) <= s < len(all_stages):
            raise ArgumentError(f"stage index {s} out of range: the model has {len(all_stages)} residual stages")
        for block in all_stages[s]:
            block.skip_scale = float(scale)
            n += 1
    return n


def skip_add(residual: torch.Tensor, shortcut: Callable[[], torch.Tensor], skip_scale: float) -> torch.Tensor:
    """``residual + skip_scale * shortcut()``; the shortcut is not evaluated when the scale is 0."""
    if skip_scale == 1.0:
        return residual + shortcut()
    if skip_scale == 0.0:
        return residual
    return residual + skip_scale * shortcut()


# ---------------------------------------------------------------------------------------------
# Plain small CNNs
# ---------------------------------------------------------------------------------------------

def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """``len(widths)`` conv-BN-ReLU-maxpool blocks, then global average pooling.  ``stem_stride=2``
    makes the first convolution strided (a quarter of the compute at 64 px, for CPU models)."""

    def __init__(self, widths: Sequence[int], in_channels: int = 3, stem_stride: int = 1):
        super().__init__()
        chans = [in_channels, *widths]
        self.stages = nn.Sequential(*[_conv_block(a, b, stem_stride if i == 0 else 1)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = chans[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(x)), 1)


def _small_cnn(arch: str, num_classes: int, widths: list[int], stem_stride: int = 1) -> Classifier:
    net = SmallCNN(widths, stem_stride=stem_stride)
    return Classifier(net, net.feature_dim, num_classes, blocks=list(net.stages), arch=arch)


@MODELS.register("smallcnn", family="small", resolution=32)
@validated("smallcnn", min_resolution=16)
def smallcnn(num_classes: int, resolution: int = 32, widths: Sequence[int] = (32, 64, 128, 256),
             stem_stride: int = 1) -> Classifier:
    """Default CPU model: 4 conv-BN-ReLU-pool blocks (32-64-128-256), global pool, 256-d features.
    ``stem_stride=2``: strided first convolution (64 px at about the cost of 32 px)."""
    widths = check_int_list("smallcnn", "widths", widths)
    check_downsampling("smallcnn", "blocks", len(widths), stem_stride, resolution)
    if len(widths) < 3:
        raise ArgumentError(f"option widths={widths!r} is invalid for 'smallcnn': expected at least 3 blocks")
    return _small_cnn("smallcnn", num_classes, widths, stem_stride)


@MODELS.register("tinycnn", family="small", resolution=32)
@validated("tinycnn", min_resolution=8)
def tinycnn(num_classes: int, resolution: int = 32) -> Classifier:
    """Tiny CNN for unit tests: 3 conv-BN-ReLU-pool blocks (8-16-32), 32-d features."""
    return _small_cnn("tinycnn", num_classes, [8, 16, 32])


# ---------------------------------------------------------------------------------------------
# Small residual net (MI-RAD on CPU)
# ---------------------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """Basic residual block: ``relu(f(x) + skip_scale * shortcut(x))``.

    ``f`` = conv3x3(stride)-BN-ReLU-conv3x3-BN; the shortcut is the identity, or conv1x1(stride)-BN
    when the shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.skip_scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(skip_add(out, lambda: self.shortcut(x), self.skip_scale))

    def extra_repr(self) -> str:
        return f"skip_scale={self.skip_scale}"


class SmallResNet(nn.Module):
    """conv3x3-BN-ReLU stem, stages of :class:`ResidualBlock` (first block of each stage has
    stride 2), global average pooling."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], stem: int = 32, in_channels: int = 3,
                 stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        stages, cin = [], stem
        for w, d in zip(widths, depths):
            stages.append(nn.Sequential(*[ResidualBlock(cin if i == 0 else w, w, stride=2 if i == 0 else 1)
                                          for i in range(d)]))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


@MODELS.register("smallresnet", family="small", resolution=32)
@validated("smallresnet", min_resolution=16)
def smallresnet(num_classes: int, resolution: int = 32, widths: Sequence[int] = (32, 64, 128, 256),
                depths: Sequence[int] = (1, 1, 1, 2), stem_stride: int = 1) -> Classifier:
    """Small residual net (4 stages, 32-64-128-256) with skip_scale blocks, for MI-RAD on CPU.
    ``stem_stride=2``: strided stem convolution (64 px at about the cost of 32 px)."""
    widths = check_int_list("smallresnet", "widths", widths)
    depths = check_int_list("smallresnet", "depths", depths, length=len(widths))
    if len(widths) < 3:
        raise ArgumentError(f"option widths={widths!r} is invalid for 'smallresnet': expected at least 3 stages")
    check_downsampling("smallresnet", "stages", len(widths), stem_stride, resolution)
    net = SmallResNet(widths, depths, stem_stride=stem_stride)
    model = Classifier(net, net.feature_dim, num_classes, blocks=list(net.stages), arch="smallresnet")
    model.stage_names = [[f"backbone.stages.{i}.{j}" for j in range(d)] for i, d in enumerate(depths)]
    return model
