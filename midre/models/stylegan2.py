"""StyleGAN2(-ADA) in plain PyTorch: generator (mapping + block-wise synthesis) and a residual discriminator.

Written from the StyleGAN2 paper (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN") and the ADA paper's architecture description; no custom CUDA op, only ``torch`` calls.  The
module, parameter and buffer NAMES and SHAPES follow the official ``G_ema`` state dict, so weights
converted from an official pickle (see :mod:`midre.models.stylegan2_convert`) load with ``strict=True``.

Architecture (generator, "skip" configuration)::

    z --normalise--> 8 x FC (lrelu, lr multiplier 0.01) --> w --(broadcast, truncation)--> ws (N, num_ws, w_dim)
    ws --> b4: const 4x4 -> conv1 -> toRGB
           b8: conv0 (up x2) -> conv1 -> toRGB ; img = upsample(img) + toRGB(x)
           ... up to img_resolution                                      --> images in [-1, 1]

Each conv is *modulated* (weights scaled per sample by an affine map of w) and *demodulated* (each
output filter renormalised to unit norm); noise (per-pixel, scaled by a learned strength) and a bias
follow, then leaky ReLU with gain sqrt(2).  Up-sampling uses a transposed stride-2 conv followed by a
[1, 3, 3, 1] low-pass filter; the RGB skip path is up-sampled by zero insertion + the same filter.

Block-wise synthesis (for IF-GMI): the synthesis network is a sequence of ``num_blocks`` blocks
(resolutions 4, 8, ..., img_resolution); the "features leaving block i" are the pair ``(x, img)``
(hidden feature map, RGB skip image so far).  ``synthesis(ws, features=..., start_block=i,
end_block=j, return_features=True)`` runs blocks i..j-1 only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError

_ACT_GAIN = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}


# ================================================================================ primitive ops
def setup_filter(f: Sequence[float]) -> torch.Tensor:
    """1-D taps -> normalised separable 2-D FIR filter (sum 1)."""
    t = torch.as_tensor(list(f), dtype=torch.float32)
    t = torch.outer(t, t)
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative = crop), FIR filter, downsample."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    k = (f * gain).to(x.dtype).flip([0, 1])               # true convolution with the filter
    x = F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None, alpha: float = 0.2) -> torch.Tensor:
    """x + b, activation, times gain (default: the activation's), clamped to [-clamp, clamp]."""
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    elif act != "linear":
        raise ArgumentError(f"unknown activation '{act}'; use linear, relu or lrelu")
    g = _ACT_GAIN[act] if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Conv (cross-correlation with ``w``) fused with x2 up- or down-sampling through the FIR filter ``f``.

    up: transposed stride-2 conv, then the filter (gain 4); down: the filter, then a stride-2 conv.
    """
    kh = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    fw = f.shape[-1]
    if down > 1:
        p0, p1 = padding + (fw - down + 1) // 2, padding + (fw - down) // 2
        x = upfirdn2d(x, f, down=down if kh == 1 else 1, pad=(p0, p1, p0, p1))
        return F.conv2d(x, w, groups=groups) if kh == 1 else F.conv2d(x, w, stride=down, groups=groups)
    p0, p1 = padding + (fw + up - 1) // 2, padding + (fw - up) // 2
    if kh == 1:
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)
    # transposed conv: weight laid out (in, out/groups, k, k)
    o, i = w.shape[0] // groups, w.shape[1]
    wt = w.reshape(groups, o, i, kh, kh).transpose(1, 2).reshape(groups * i, o, kh, kh)
    x = F.conv_transpose2d(x, wt, stride=up, groups=groups)
    q0, q1 = p0 - (kh - 1), p1 - (kh - up)
    return upfirdn2d(x, f, pad=(q0, q1, q0, q1), gain=up * up)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, up: int = 1, padding: int = 0,
                     f: torch.Tensor | None = None, demodulate: bool = True, fused: bool = False) -> torch.Tensor:
    """Per-sample modulated (and demodulated) conv.

    Modulating the weights by s and demodulating each output filter equals scaling the INPUT channels
    by s, a shared conv, and scaling the OUTPUT channels by d = 1 / sqrt(sum_(i,k) (w s_i)^2 + 1e-8).
    ``fused=False`` computes it that way (fast on CPU); ``fused=True`` as one grouped conv over the batch.
    """
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if not fused:
        d = None
        if demodulate:
            d = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()      # (N, O)
        x = conv2d_resample(x * styles.reshape(n, i, 1, 1).to(x.dtype), weight.to(x.dtype), f, up=up, padding=padding)
        return x if d is None else x * d.reshape(n, o, 1, 1).to(x.dtype)
    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)            # (N, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(n * o, i, kh, kw).to(x.dtype), f, up=up, padding=padding, groups=n)
    return x.reshape(n, o, *x.shape[2:])


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ================================================================================ layers
class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (weights stored / lr_multiplier, scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional x2 up/down-sampling (used by the discriminator and resnet skips)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), self.resample_filter, self.up, self.down, self.padding)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, self.activation, _ACT_GAIN[self.activation] * gain, clamp)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally x2 up) + noise + bias + lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp, self.padding = activation, conv_clamp, kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=self.padding, f=self.resample_filter)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                r = self.resolution
                noise = torch.randn([x.shape[0], 1, r, r], generator=generator).to(x.device, x.dtype)
            else:
                noise = self.noise_const.to(x.dtype)
            x = x + noise * self.noise_strength.to(x.dtype)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, self.activation, _ACT_GAIN[self.activation] * gain, clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation, linear."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)


# ================================================================================ synthesis
class SynthesisBlock(nn.Module):
    """One resolution: (const |) conv0 (up) -> conv1 -> toRGB added to the up-sampled skip image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, **layer_kwargs: Any):
        super().__init__()
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        kw = dict(resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **kw)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **kw)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, up=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const", generator: torch.Generator | None = None):
        w = iter(ws.unbind(dim=1))
        kw = dict(noise_mode=noise_mode, generator=generator)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w), **kw)
            x = y + self.conv1(x, next(w), gain=math.sqrt(0.5), **kw)
        else:
            x = self.conv0(x, next(w), **kw)
            x = self.conv1(x, next(w), **kw)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w)).float()
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> images (N, C, R, R) in about [-1, 1], run block by block."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, architecture: str = "skip", **block_kwargs: Any):
        super().__init__()
        log2 = math.log2(img_resolution) if img_resolution > 0 else 0
        if img_resolution < 4 or log2 != int(log2):
            raise ArgumentError(f"StyleGAN2 needs a power-of-two img_resolution >= 4, got {img_resolution}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ArgumentError(f"unknown synthesis architecture '{architecture}'; use orig, skip or resnet")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_fp16_res = num_fp16_res            # recorded only: midre computes in float32
        self.block_resolutions = [2 ** i for i in range(2, int(log2) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            blk = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels, r == img_resolution,
                                 architecture=architecture, **block_kwargs)
            self.num_ws += blk.num_conv + (blk.num_torgb if r == img_resolution else 0)
            setattr(self, f"b{r}", blk)

    @property
    def num_blocks(self) -> int:
        return len(self.block_resolutions)

    def block(self, i: int) -> SynthesisBlock:
        return getattr(self, f"b{self.block_resolutions[i]}")

    def block_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """Per-block slices of ws; a block's toRGB shares its w with the next block's first conv."""
        out, idx = [], 0
        for i in range(self.num_blocks):
            b = self.block(i)
            out.append(ws.narrow(1, idx, b.num_conv + b.num_torgb))
            idx += b.num_conv
        return out

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", features: tuple | None = None,
                start_block: int = 0, end_block: int | None = None, return_features: bool = False,
                generator: torch.Generator | None = None, force_fp32: bool = True):
        """Run blocks ``start_block .. end_block-1``.

        features: ``(x, img)`` leaving block ``start_block-1`` (required when start_block > 0).
        Returns the skip image after the last block run (the final images when all blocks run), or
        ``(x, img)`` leaving it when ``return_features``.  ``force_fp32`` is accepted for compatibility.
        """
        end = self.num_blocks if end_block is None else int(end_block)
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ArgumentError(f"ws must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        if not 0 <= start_block < end <= self.num_blocks:
            raise ArgumentError(f"need 0 <= start_block < end_block <= {self.num_blocks}, "
                                f"got {start_block}, {end}")
        if noise_mode not in ("const", "random", "none"):
            raise ArgumentError(f"noise_mode must be const, random or none, got '{noise_mode}'")
        if start_block > 0 and features is None:
            raise ArgumentError(f"start_block={start_block} needs features=(x, img) leaving block {start_block - 1}")
        x, img = features if features is not None else (None, None)
        bws = self.block_ws(ws)
        for i in range(start_block, end):
            x, img = self.block(i)(x, img, bws[i], noise_mode=noise_mode, generator=generator)
        return (x, img) if return_features else img


# ================================================================================ mapping
class MappingNetwork(nn.Module):
    """z (and optional class c) -> w, broadcast to num_ws, with truncation towards the tracked mean w_avg."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim else 0
        layer_features = w_dim if layer_features is None else layer_features
        feats = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                cutoff: int | None = None, skip_w_avg_update: bool = False, *,
                truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> torch.Tensor:
        psi = psi if truncation_psi is None else truncation_psi
        cutoff = cutoff if truncation_cutoff is None else truncation_cutoff
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ArgumentError(f"z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        x = normalize_2nd_moment(z.float()) if self.z_dim else None
        if self.c_dim:
            if c is None:
                raise ArgumentError(f"this generator is class-conditional: pass c of shape (N, {self.c_dim})")
            y = normalize_2nd_moment(self.embed(c.float()))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if psi != 1:
            n = self.num_ws if cutoff is None else int(cutoff)
            head = self.w_avg.lerp(x[:, :n], psi)
            x = torch.cat([head, x[:, n:]], dim=1)
        return x


# ================================================================================ generator
_SYNTH_KEYS = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
               "use_noise", "activation", "kernel_size", "fused_modconv_default", "fp16_channels_last")
# options of the official code that choose how it runs (kernel fusion, memory layout), not what it computes
_EXECUTION_ONLY = ("fused_modconv_default", "fp16_channels_last")
_MAP_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping(z, c, psi, cutoff) -> ws``; ``synthesis(ws) -> images in [-1, 1]``.

    Keyword arguments follow the official constructor; synthesis options may be given in
    ``synthesis_kwargs`` (StyleGAN2-ADA) or at the top level (the StyleGAN3 repository's layout).
    ``init_kwargs`` holds the plain-JSON arguments that rebuild this generator.
    """

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 1024,
                 img_channels: int = 3, mapping_kwargs: dict | None = None,
                 synthesis_kwargs: dict | None = None, **extra_synthesis_kwargs: Any):
        super().__init__()
        mk, sk = dict(mapping_kwargs or {}), {**(synthesis_kwargs or {}), **extra_synthesis_kwargs}
        for what, got, known in (("mapping", mk, _MAP_KEYS), ("synthesis", sk, _SYNTH_KEYS)):
            bad = [k for k in got if k not in known]
            if bad:
                raise ArgumentError(f"unsupported StyleGAN2 {what} option '{bad[0]}'; supported: {', '.join(known)}")
        self.init_kwargs = {"z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution,
                            "img_channels": img_channels, "mapping_kwargs": _jsonable(mk),
                            "synthesis_kwargs": _jsonable(sk)}
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        for k in _EXECUTION_ONLY:                  # execution choices of the official code, not architecture
            sk.pop(k, None)
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **sk)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mk)

    @property
    def num_blocks(self) -> int:
        return self.synthesis.num_blocks

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random", *,
                psi: float | None = None, cutoff: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``G(z, c, truncation_psi, truncation_cutoff, noise_mode)`` as the official generator (noise_mode
        'random' by default, as there; ``generator`` seeds the noise).  ``psi`` / ``cutoff`` are midre's older
        names for the two truncation arguments.  ``synthesis`` itself defaults to 'const' noise: midre's attacks
        call it directly and always say which noise they use."""
        psi = truncation_psi if psi is None else psi
        cutoff = truncation_cutoff if cutoff is None else cutoff
        return self.synthesis(self.mapping(z, c, psi, cutoff), noise_mode=noise_mode, generator=generator)

    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] generator output -> midre's [0, 1] image convention (clamped)."""
        return ((images + 1) / 2).clamp(0, 1)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        elif isinstance(v, (tuple, list)):
            v = [x.item() if isinstance(x, np.generic) else x for x in v]
        out[k] = v
    return out


# ================================================================================ discriminator
class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[2, 3, 4])   # (N/g, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: (fromRGB ->) conv 3x3 -> conv 3x3 down, + 1x1 down skip, scaled by sqrt(1/2)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator (unconditional): images in [-1, 1] -> one logit per image."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: int = 4, conv_clamp: float | None = None):
        super().__init__()
        log2 = math.log2(img_resolution) if img_resolution > 0 else 0
        if img_resolution < 8 or log2 != int(log2):
            raise ArgumentError(f"the StyleGAN2 discriminator needs a power-of-two resolution >= 8, got {img_resolution}")
        self.init_kwargs = {"img_resolution": img_resolution, "img_channels": img_channels,
                            "channel_base": channel_base, "channel_max": channel_max,
                            "mbstd_group_size": mbstd_group_size, "conv_clamp": conv_clamp}
        self.block_resolutions = [2 ** i for i in range(int(log2), 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        for r in self.block_resolutions:
            setattr(self, f"b{r}", DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2],
                                                      img_channels, conv_clamp))
        c4 = ch[4]
        self.mbstd = MinibatchStdLayer(mbstd_group_size)
        self.conv = Conv2dLayer(c4 + 1, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnectedLayer(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


# ================================================================================ helpers
def build_generator(init_kwargs: dict, seed: int | None = None) -> Generator:
    """Generator from (official-style) init kwargs; with ``seed``, its random init is reproducible."""
    if seed is None:
        return Generator(**init_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Generator(**init_kwargs)


def tiny_kwargs(img_resolution: int = 32, z_dim: int = 32, w_dim: int = 32, channels: int = 32,
                mapping_layers: int = 2, img_channels: int = 3) -> dict:
    """Init kwargs of a small StyleGAN2 (tests, CPU priors): ``channels`` feature maps at every block."""
    return {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": img_resolution,
            "img_channels": img_channels, "mapping_kwargs": {"num_layers": mapping_layers},
            "synthesis_kwargs": {"channel_base": channels * img_resolution, "channel_max": channels}}


def tiny_generator(img_resolution: int = 32, seed: int = 0, **kwargs: Any) -> Generator:
    """A randomly initialised small generator (32 px: 8 ws, about 50k parameters) in eval mode."""
    return build_generator(tiny_kwargs(img_resolution, **kwargs), seed=seed).eval()


# ================================================================================ checkpoints
GENERATOR_KIND = "stylegan2-generator"


def save_generator(path: Any, G: Generator, extra_meta: dict | None = None) -> Any:
    """Write ``path.safetensors`` + ``path.json`` (init kwargs) through midre.checkpoint (atomic)."""
    from ..checkpoint import save_checkpoint

    meta = {"kind": GENERATOR_KIND, "arch": "stylegan2", "init_kwargs": G.init_kwargs,
            "resolution": G.img_resolution, "channels": G.img_channels, "z_dim": G.z_dim, "w_dim": G.w_dim,
            "num_ws": G.num_ws, **(extra_meta or {})}
    return save_checkpoint(path, G, meta)


def load_generator(path: Any, device: Any = "cpu") -> tuple[Generator, dict]:
    """Load a generator written by :func:`save_generator` / ``midre convert stylegan2`` -> (G in eval mode, meta).

    ``path``: the output directory, ``generator.safetensors`` or ``generator.json``.
    """
    from pathlib import Path

    from ..checkpoint import load_state, read_json_record
    from ..errors import CheckpointError

    p = Path(path)
    stem = p / "generator" if p.is_dir() else (p.with_suffix("") if p.suffix in (".json", ".safetensors") else p)
    js = stem.with_suffix(".json")
    if not js.is_file():
        raise CheckpointError(f"no StyleGAN2 generator at '{path}' ('{js}' missing); convert one with "
                              "`midre convert stylegan2 FILE.pkl --out DIR`")
    meta = read_json_record(js, f"'{js}' is corrupt (not JSON); convert the generator again",
                            f"'{js}' does not describe a StyleGAN2 generator; give a directory written by "
                            "`midre convert stylegan2`",
                            lambda m: m.get("kind") == GENERATOR_KIND and isinstance(m.get("init_kwargs"), dict))
    try:
        G = Generator(**meta["init_kwargs"])
    except (ArgumentError, TypeError) as e:
        raise CheckpointError(f"'{js}' has init kwargs midre cannot build ({e}); convert the generator again") from None
    state = load_state(stem.with_suffix(".safetensors"))
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{stem}.safetensors' does not match its JSON ({str(e).splitlines()[0][:80]}); "
                              "convert the generator again") from None
    return G.to(device).eval(), meta
