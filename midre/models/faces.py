"""The low-resolution face classifiers of the model-inversion literature (GMI / KedMI / LOMMA / PLG-MI).

- ``vgg16``: torchvision's VGG16-BN convolutional part -> flatten -> BatchNorm1d -> (features);
  head ``Linear(feature_dim, C)``.  ``feature_dim = 512 * s * s`` where ``s`` is the spatial size
  after the five 2x2 max-pools (``s = r // 32`` for r a multiple of 32: 2048 at 64 px, 512 at 32 px;
  4608 at 112 px since 112 -> 3).  It is computed from the resolution, never a constant.
- ``ir50`` / ``ir152``: improved-residual (IR, optionally IR-SE) nets in the face.evoLVe layout:
  input layer conv3x3(64)-BN-PReLU, four stages of ``bottleneck_IR`` units (depths 3-4-14-3 or
  3-8-36-3, widths 64-128-256-512, first unit of each stage has stride 2), output layer
  BN2d -> Dropout -> Flatten -> Linear(512*s*s, 512) -> BN1d; ``feature_dim`` 512.  ``s`` is the
  spatial size after the four stride-2 stages (4 at 64 px, 7 at 112 px).
- ``facenet64``: IR-50 at 64 px (inputs of another size are resized to 64).
- ``facenet112``: IR-50 at 112 px with ``input_resolution=112``; the evaluation model, which reads
  64-px reconstructions by resizing them to 112.

Each IR unit computes ``f(x) + skip_scale * shortcut(x)`` (see :mod:`midre.models.small`); the stage
layout is in ``model.stage_names``.

Pretrained weights from the reference implementations use flat indices (``feature.<i>`` for VGG,
``body.<i>`` for IR; build IR nets with ``mid_bn=False`` for the face.evoLVe unit
layout those use); ``model.pretrained_key_map`` maps them onto midre's nested stages, and
``model.pretrained_head_prefixes`` names their classification heads (``fc_layer.``, ``fc.``), which
:func:`midre.models.weights.load_pretrained` uses.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import MODELS, Classifier
from .small import check_choice, check_dropout, skip_add, validated


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# ---------------------------------------------------------------------------------------------
# VGG16-BN
# ---------------------------------------------------------------------------------------------

_VGG16_CFG = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG16BN(nn.Module):
    """VGG16-BN convolutional part in five stages (``features[i]`` ends with a max-pool), then
    flatten and BatchNorm1d over the ``512 * s * s`` features."""

    def __init__(self, resolution: int, in_channels: int = 3):
        super().__init__()
        stages, cin, s = [], in_channels, resolution
        for widths in _VGG16_CFG:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            layers.append(nn.MaxPool2d(2, 2))
            s = _conv_out(s, 2, 2, 0)
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.spatial = s
        self.feature_dim = cin * s * s
        self.bn = nn.BatchNorm1d(self.feature_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.flatten(self.features(x), 1))


def _vgg_key_map() -> dict[str, str]:
    """Flat torchvision / KedMI indices (``features.<i>.``) -> nested ``features.<stage>.<j>.``."""
    out, i = {}, 0
    for s, widths in enumerate(_VGG16_CFG):
        n = 3 * len(widths) + 1
        for j in range(n):
            for src in ("features", "feature"):
                out[f"{src}.{i}."] = f"features.{s}.{j}."
            i += 1
    return out


@MODELS.register("vgg16", family="faces", resolution=64)
@validated("vgg16", min_resolution=32)
def vgg16(num_classes: int, resolution: int = 64) -> Classifier:
    """VGG16-BN features -> BN1d -> FC (GMI/KedMI target); feature dim 512*(r/32)^2."""
    net = VGG16BN(resolution)
    model = Classifier(net, net.feature_dim, num_classes, blocks=list(net.features), input_resolution=resolution,
                       arch="vgg16")
    model.pretrained_key_map = {**_vgg_key_map(), "bn.": "bn."}
    model.pretrained_head_prefixes = ["fc_layer.", "fc.", "classifier."]
    return model


# ---------------------------------------------------------------------------------------------
# IR-50 / IR-152 (face.evoLVe "Backbone" with bottleneck_IR / bottleneck_IR_SE units)
# ---------------------------------------------------------------------------------------------

class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc(relu(fc(avgpool(x)))))."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """Improved-residual unit: ``res = BN-conv3x3-BN-PReLU-conv3x3(stride)-BN [-SE]``,
    ``out = res + skip_scale * shortcut(x)`` with shortcut = MaxPool(1, stride) (same width) or
    conv1x1(stride)-BN.  ``mid_bn=False`` drops the BN before the PReLU (the face.evoLVe layout used
    by the GMI/KedMI reference checkpoints)."""

    def __init__(self, cin: int, depth: int, stride: int, se: bool = False, mid_bn: bool = True):
        super().__init__()
        if cin == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            *([nn.BatchNorm2d(depth)] if mid_bn else []), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)
        self.skip_scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return skip_add(self.res_layer(x), lambda: self.shortcut_layer(x), self.skip_scale)

    def extra_repr(self) -> str:
        return f"skip_scale={self.skip_scale}"


_IR_DEPTHS = {50: [3, 4, 14, 3], 100: [3, 13, 30, 3], 152: [3, 8, 36, 3]}
_IR_WIDTHS = [64, 128, 256, 512]


class IRNet(nn.Module):
    """IR backbone: input layer, four stages of :class:`BottleneckIR`, output layer -> 512-d."""

    def __init__(self, depth: int, resolution: int, se: bool = False, dropout: float = 0.5,
                 mid_bn: bool = True, in_channels: int = 3, embedding: int = 512):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        stages, cin, s = [], 64, resolution
        for w, d in zip(_IR_WIDTHS, _IR_DEPTHS[depth]):
            units = [BottleneckIR(cin if i == 0 else w, w, 2 if i == 0 else 1, se=se, mid_bn=mid_bn) for i in range(d)]
            stages.append(nn.Sequential(*units))
            cin = w
            s = _conv_out(s, 3, 2, 1)
        self.body = nn.Sequential(*stages)
        self.spatial = s
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(dropout), nn.Flatten(),
                                          nn.Linear(cin * s * s, embedding), nn.BatchNorm1d(embedding))
        self.feature_dim = embedding
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def _ir_key_map(depth: int) -> dict[str, str]:
    """Flat evoLVe unit indices (``body.<i>.``) -> nested ``body.<stage>.<j>.``."""
    out, i = {}, 0
    for s, d in enumerate(_IR_DEPTHS[depth]):
        for j in range(d):
            out[f"body.{i}."] = f"body.{s}.{j}."
            i += 1
    return out


def _ir_model(arch: str, depth: int, num_classes: int, net_resolution: int, input_resolution: int | None,
              se: bool, dropout: float, mid_bn: bool) -> Classifier:
    check_choice(arch, "se", se, isinstance(se, bool), "true or false")
    check_choice(arch, "mid_bn", mid_bn, isinstance(mid_bn, bool), "true or false")
    dropout = check_dropout(arch, dropout)
    net = IRNet(depth, net_resolution, se=se, dropout=dropout, mid_bn=mid_bn)
    model = Classifier(net, net.feature_dim, num_classes, blocks=list(net.body), input_resolution=input_resolution,
                       arch=arch)
    model.stage_names = [[f"backbone.body.{s}.{j}" for j in range(d)] for s, d in enumerate(_IR_DEPTHS[depth])]
    # KedMI/GMI checkpoints: module.feature.<flat evoLVe keys> + module.fc_layer.*
    key_map = _ir_key_map(depth)
    key_map.update({f"feature.{k}": v for k, v in list(key_map.items())})
    key_map["feature.input_layer."] = "input_layer."
    model.pretrained_key_map = key_map
    model.pretrained_head_prefixes = ["fc_layer.", "fc."]
    return model


@MODELS.register("ir50", family="faces", resolution=64)
@validated("ir50", min_resolution=16)
def ir50(num_classes: int, resolution: int = 64, se: bool = False, dropout: float = 0.5,
         mid_bn: bool = True) -> Classifier:
    """IR-50 (improved residual, optional SE) face net; output BN2d-dropout-FC-BN1d, 512-d features."""
    return _ir_model("ir50", 50, num_classes, resolution, resolution, se, dropout, mid_bn)


@MODELS.register("ir152", family="faces", resolution=64)
@validated("ir152", min_resolution=16)
def ir152(num_classes: int, resolution: int = 64, se: bool = False, dropout: float = 0.5,
          mid_bn: bool = True) -> Classifier:
    """IR-152 face net (KedMI/LOMMA target at 64 px); 512-d features."""
    return _ir_model("ir152", 152, num_classes, resolution, resolution, se, dropout, mid_bn)


@MODELS.register("facenet64", family="faces", resolution=64)
@validated("facenet64", min_resolution=1)
def facenet64(num_classes: int, resolution: int = 64, se: bool = False, dropout: float = 0.5,
              mid_bn: bool = True) -> Classifier:
    """FaceNet64 = IR-50 at 64 px (inputs resized to 64); 512-d features."""
    return _ir_model("facenet64", 50, num_classes, 64, 64, se, dropout, mid_bn)


@MODELS.register("facenet112", family="faces", resolution=112)
@validated("facenet112", min_resolution=1)
def facenet112(num_classes: int, resolution: int = 64, se: bool = False, dropout: float = 0.5,
               mid_bn: bool = True) -> Classifier:
    """Evaluation model: IR-50 at 112 px, resizes e.g. 64-px inputs to 112; 512-d features."""
    return _ir_model("facenet112", 50, num_classes, 112, 112, se, dropout, mid_bn)


__all__ = ["VGG16BN", "BottleneckIR", "IRNet", "SEModule", "vgg16", "ir50", "ir152", "facenet64", "facenet112",
]
