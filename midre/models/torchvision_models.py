"""torchvision (and timm) families used as high-resolution targets (PPA, MIRROR, IF-GMI), LOMMA's
augmented models, and evaluation models.

Always built with ``weights=None``: nothing is ever downloaded.  Pretrained weights come only from a
local file via ``create_model(..., weights=PATH)`` (:func:`midre.models.weights.load_pretrained`),
which accepts torchvision's own state dicts (``model.pretrained_head_prefixes`` names the original
classification head, reused only when its class count matches).

===============  ===========  ==========================================================================
name             features     notes
===============  ===========  ==========================================================================
resnet18/34      512          ``blocks`` = layer1..layer4; residual blocks have ``skip_scale``
resnet50/101/152 2048         idem (Bottleneck blocks)
densenet121      1024         ``blocks`` = denseblock1..4 (no skip connections to scale)
densenet169      1664
maxvit_t         512          runs at ``input_resolution`` (default 224, inputs are resized);
                              ``(input_resolution / 32)`` must be divisible by ``partition_size``
                              (default 7 at 224; e.g. 64 px with ``partition_size=2``)
inception_v3     2048         aux logits off; needs >= 75 px: runs at ``resolution`` when that is
                              >= 75, else at ``input_resolution`` (default 299, inputs resized)
googlenet        1024         Inception-V1 (MIRROR), aux logits off
efficientnet_b0  1280         LOMMA's augmented models; ``blocks`` = the 8 feature stages
efficientnet_b1  1280
efficientnet_b2  1408
resnest101       2048         timm ``resnest101e`` (PPA's Stanford Dogs target)
===============  ===========  ==========================================================================

Low resolution: the ResNets keep their ImageNet stem (conv7x7/2 + maxpool) by default, so a 64-px
input reaches layer4 at 2x2 and a 32-px input at 1x1 -- they still train, just coarsely.  Pass
``small_stem=True`` for a CIFAR-style stem (conv3x3/1, no max-pool), which keeps 4x more spatial
detail at 32-64 px but no longer matches ImageNet weights for ``conv1``.

Features are the input of the final linear layer (after global pooling, and after the dropout that
DenseNet / EfficientNet / Inception apply in training mode).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision import models as tvm
from torchvision.models import resnet as tv_resnet

from ..errors import ArgumentError
from .base import MODELS, Classifier
from .small import check_choice, check_dropout, skip_add, validated

# ---------------------------------------------------------------------------------------------
# ResNets with skip_scale
# ---------------------------------------------------------------------------------------------

class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with ``relu(f(x) + skip_scale * shortcut(x))`` (same parameters)."""

    skip_scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = (lambda: self.downsample(x)) if self.downsample is not None else (lambda: x)
        return self.relu(skip_add(out, shortcut, self.skip_scale))


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck with ``relu(f(x) + skip_scale * shortcut(x))`` (same parameters)."""

    skip_scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = (lambda: self.downsample(x)) if self.downsample is not None else (lambda: x)
        return self.relu(skip_add(out, shortcut, self.skip_scale))


_RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def _resnet(arch: str, num_classes: int, small_stem: bool) -> Classifier:
    check_choice(arch, "small_stem", small_stem, isinstance(small_stem, bool), "true or false")
    block, layers = _RESNETS[arch]
    net = tv_resnet.ResNet(block, layers)
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    model = Classifier(net, feature_dim, num_classes, blocks=stages, arch=arch)
    model.stage_names = [[f"backbone.layer{i + 1}.{j}" for j in range(n)] for i, n in enumerate(layers)]
    model.pretrained_head_prefixes = ["fc."]
    return model


def _register_resnet(arch: str) -> None:
    def factory(num_classes: int, resolution: int = 224, small_stem: bool = False) -> Classifier:
        return _resnet(arch, num_classes, small_stem)

    block, layers = _RESNETS[arch]
    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = (f"torchvision {arch.replace('resnet', 'ResNet-')} ({block.__name__} x {layers}), "
                       "skip_scale blocks, blocks = layer1..4")
    globals()[arch] = MODELS.register(arch, family="torchvision", resolution=224)(
        validated(arch, min_resolution=32)(factory))


for _name in _RESNETS:
    _register_resnet(_name)


# ---------------------------------------------------------------------------------------------
# DenseNet
# ---------------------------------------------------------------------------------------------

def _densenet(arch: str, num_classes: int, builder) -> Classifier:
    net = builder(weights=None)
    feature_dim = net.classifier.in_features
    net.classifier = nn.Identity()
    f = net.features
    blocks = [f.denseblock1, f.denseblock2, f.denseblock3, f.denseblock4]
    model = Classifier(net, feature_dim, num_classes, blocks=blocks, arch=arch)
    model.pretrained_head_prefixes = ["classifier."]
    return model


@MODELS.register("densenet121", family="torchvision", resolution=224)
@validated("densenet121", min_resolution=32)
def densenet121(num_classes: int, resolution: int = 224) -> Classifier:
    """torchvision DenseNet-121; 1024-d features, blocks = denseblock1..4."""
    return _densenet("densenet121", num_classes, tvm.densenet121)


@MODELS.register("densenet169", family="torchvision", resolution=224)
@validated("densenet169", min_resolution=32)
def densenet169(num_classes: int, resolution: int = 224) -> Classifier:
    """torchvision DenseNet-169; 1664-d features, blocks = denseblock1..4."""
    return _densenet("densenet169", num_classes, tvm.densenet169)


# ---------------------------------------------------------------------------------------------
# MaxViT-T
# ---------------------------------------------------------------------------------------------

@MODELS.register("maxvit_t", family="torchvision", resolution=224)
@validated("maxvit_t", min_resolution=1)
def maxvit_t(num_classes: int, resolution: int = 224, input_resolution: int = 224,
             partition_size: int | None = None, stochastic_depth: float = 0.2) -> Classifier:
    """torchvision MaxViT-T at input_resolution (default 224, inputs resized); 512-d features."""
    arch = "maxvit_t"
    check_choice(arch, "input_resolution", input_resolution,
                 isinstance(input_resolution, int) and not isinstance(input_resolution, bool)
                 and input_resolution >= 32 and input_resolution % 32 == 0, "a multiple of 32 (e.g. 224)")
    grid = input_resolution // 32
    if partition_size is None:
        partition_size = 7 if grid % 7 == 0 else max(d for d in range(1, grid + 1) if grid % d == 0)
    check_choice(arch, "partition_size", partition_size,
                 isinstance(partition_size, int) and not isinstance(partition_size, bool) and partition_size >= 1,
                 "a positive integer")
    if grid % partition_size:
        raise ArgumentError(f"maxvit_t at input_resolution={input_resolution} needs partition_size dividing "
                            f"{grid} (= input_resolution / 32), got {partition_size}; use input_resolution=224 "
                            "with partition_size=7")
    stochastic_depth = check_dropout(arch, stochastic_depth, "stochastic_depth")
    net = tvm.MaxVit(input_size=(input_resolution, input_resolution), stem_channels=64,
                     partition_size=partition_size, block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2],
                     head_dim=32, stochastic_depth_prob=stochastic_depth)
    feature_dim = net.classifier[-1].in_features
    net.classifier[-1] = nn.Identity()     # keep pool-LayerNorm-Linear-Tanh: features = the Tanh output
    model = Classifier(net, feature_dim, num_classes, blocks=list(net.blocks), input_resolution=input_resolution,
                       arch=arch, head=nn.Linear(feature_dim, num_classes, bias=False))
    model.pretrained_head_prefixes = ["classifier.5."]
    return model


# ---------------------------------------------------------------------------------------------
# Inception-v3 / GoogLeNet (Inception-v1)
# ---------------------------------------------------------------------------------------------

@MODELS.register("inception_v3", family="torchvision", resolution=299)
@validated("inception_v3", min_resolution=1)
def inception_v3(num_classes: int, resolution: int = 299, input_resolution: int | None = None,
                 dropout: float = 0.5) -> Classifier:
    """torchvision Inception-v3 without aux logits; >= 75 px (smaller inputs resized to 299); 2048-d."""
    arch = "inception_v3"
    if input_resolution is None:
        input_resolution = resolution if resolution >= 75 else 299
    if isinstance(input_resolution, bool) or not isinstance(input_resolution, int) or input_resolution < 75:
        raise ArgumentError(f"inception_v3 needs inputs of at least 75 px, got input_resolution={input_resolution!r}; "
                            "use input_resolution=299 (its native size)")
    net = tvm.Inception3(aux_logits=False, transform_input=False, init_weights=True,
                         dropout=check_dropout(arch, dropout))
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    blocks = [net.Mixed_5d, net.Mixed_6e, net.Mixed_7c]
    model = Classifier(net, feature_dim, num_classes, blocks=blocks, input_resolution=input_resolution, arch=arch)
    model.pretrained_head_prefixes = ["fc.", "AuxLogits."]
    return model


@MODELS.register("googlenet", family="torchvision", resolution=224)
@validated("googlenet", min_resolution=32)
def googlenet(num_classes: int, resolution: int = 224, dropout: float = 0.2) -> Classifier:
    """torchvision GoogLeNet (Inception-V1, MIRROR's target) without aux logits; 1024-d features."""
    net = tvm.GoogLeNet(aux_logits=False, transform_input=False, init_weights=True,
                        dropout=check_dropout("googlenet", dropout))
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    blocks = [net.inception3b, net.inception4e, net.inception5b]
    model = Classifier(net, feature_dim, num_classes, blocks=blocks, arch="googlenet")
    model.pretrained_head_prefixes = ["fc.", "aux1.", "aux2."]
    return model


# ---------------------------------------------------------------------------------------------
# EfficientNet-B0/B1/B2 (LOMMA's augmented models)
# ---------------------------------------------------------------------------------------------

def _efficientnet(arch: str, num_classes: int, builder) -> Classifier:
    net = builder(weights=None)
    feature_dim = net.classifier[-1].in_features
    net.classifier[-1] = nn.Identity()     # keep the dropout: features = pooled, dropped-out vector
    blocks = list(net.features)[1:]
    model = Classifier(net, feature_dim, num_classes, blocks=blocks, arch=arch)
    model.pretrained_head_prefixes = ["classifier.1."]
    return model


@MODELS.register("efficientnet_b0", family="torchvision", resolution=224)
@validated("efficientnet_b0", min_resolution=32)
def efficientnet_b0(num_classes: int, resolution: int = 224) -> Classifier:
    """torchvision EfficientNet-B0 (LOMMA augmented model); 1280-d features."""
    return _efficientnet("efficientnet_b0", num_classes, tvm.efficientnet_b0)


@MODELS.register("efficientnet_b1", family="torchvision", resolution=240)
@validated("efficientnet_b1", min_resolution=32)
def efficientnet_b1(num_classes: int, resolution: int = 240) -> Classifier:
    """torchvision EfficientNet-B1 (LOMMA augmented model); 1280-d features."""
    return _efficientnet("efficientnet_b1", num_classes, tvm.efficientnet_b1)


@MODELS.register("efficientnet_b2", family="torchvision", resolution=260)
@validated("efficientnet_b2", min_resolution=32)
def efficientnet_b2(num_classes: int, resolution: int = 260) -> Classifier:
    """torchvision EfficientNet-B2 (LOMMA augmented model); 1408-d features."""
    return _efficientnet("efficientnet_b2", num_classes, tvm.efficientnet_b2)


# ---------------------------------------------------------------------------------------------
# ResNeSt-101 (timm)
# ---------------------------------------------------------------------------------------------

@MODELS.register("resnest101", family="timm", resolution=224)
@validated("resnest101", min_resolution=32)
def resnest101(num_classes: int, resolution: int = 224) -> Classifier:
    """timm ResNeSt-101e (split-attention ResNet, PPA's dogs target); 2048-d features."""
    try:
        import timm
    except ImportError:  # timm is the optional [timm] extra
        raise ArgumentError("architecture 'resnest101' needs the optional 'timm' package; "
                            "pip install 'midre[timm]' (or pip install timm)") from None
    net = timm.create_model("resnest101e", pretrained=False, num_classes=0)
    blocks = [net.layer1, net.layer2, net.layer3, net.layer4]
    model = Classifier(net, net.num_features, num_classes, blocks=blocks, arch="resnest101")
    model.pretrained_head_prefixes = ["fc."]
    return model
