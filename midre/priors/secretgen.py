"""``secretgen`` / ``secretgen_bb``: SecretGen's stage 1 (Yuan et al., ECCV 2022), an inpainting GAN trained on
PUBLIC images with a synthetic hole.

The generator (the reference's "InversionNet") takes the masked image (hole prefilled with the public
mean pixel), the mask and z (dimension 100): a context network (convolutions, then dilated ones, down to
1/4 resolution) and an identity generator (z -> 1/4 resolution) are concatenated and decoded to the
image; only the hole is kept, ``x (1 - m) + G(x_m, m, z) m``.  Two WGAN-GP critics judge the result:
a global one on the whole image and a local one on a random square of half the side.  Per iteration
(reference ``stage1.py``): one step of each critic (``-W + 10 GP``), then one generator step on::

    L_G = -(D_L(crop o1) + D_G(o1)) / 2  -  0.5 * mean|V(o1) - V(o2)| / mean|z1 - z2|

where o1, o2 fill the same holes with two codes z1, z2 (the diversity term against mode collapse).
V is a feature extractor: the TARGET's penultimate features (``secretgen``, white-box, one prior per
target) or a PUBLIC model (``secretgen_bb``, black-box, shared by all targets; the reference uses a
public IR-50 face model: give a midre classifier trained on public identities with ``public_model``;
without one, the global critic's features stand in -- a deviation listed in docs/attacks.md).

Paper settings: Adam 0.004, betas (0.5, 0.999), batch 64, 100 epochs of the reference's 40,000 public
images (= 62,500 iterations), gradient-penalty weight 10, z dimension 100, centre mask (a square of half
the side) or the "face" mask (eyes band + nose/mouth box).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from ..attacks.masked import fill, hole_mask, random_square  # the hole, shared with the attack
from ..gan_state import load_module
from .adversarial import AdversarialPrior
from .base import Prior, register_prior
from .data import PublicImages
from .gan import gradient_penalty


def crop(x: torch.Tensor, area: tuple[int, int, int]) -> torch.Tensor:
    top, left, side = area
    return x[..., top:top + side, left:left + side]


def diversity(V, o1: torch.Tensor, o2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The reference's diversity term: mean |V(o1) - V(o2)| / mean |z1 - z2|."""
    return (V(o1) - V(o2)).abs().mean() / (z1 - z2).abs().mean()


def _dconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class InpaintingGenerator(nn.Module):
    """Context network + identity generator + decoder (the reference's InversionNet; ``width`` 64 = its sizes).

    ``forward(x_masked, mask, z)`` prefills the hole with the public mean pixel ``fill_value`` and returns the
    raw output in [0, 1] (sigmoid); :func:`fill` keeps it only inside the hole."""

    def __init__(self, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        if resolution % 16:
            raise ValueError("the SecretGen generator needs a resolution divisible by 16")
        self.config = {"z_dim": z_dim, "resolution": resolution, "channels": channels, "width": width}
        self.z_dim, w = int(z_dim), int(width)
        spec = [(channels + 1, w // 2, 5, 1, 1), (w // 2, w, 3, 2, 1), (w, w, 3, 1, 1), (w, 2 * w, 3, 2, 1),
                (2 * w, 2 * w, 3, 1, 1), (2 * w, 2 * w, 3, 1, 1)] + [(2 * w, 2 * w, 3, 1, d) for d in (2, 4, 8, 16)]
        layers: list[nn.Module] = []
        for cin, cout, k, s, d in spec:      # the reference orders conv -> ReLU -> BatchNorm
            layers += [nn.Conv2d(cin, cout, k, s, padding=d * (k // 2), dilation=d), nn.ReLU(), nn.BatchNorm2d(cout)]
        self.context = nn.Sequential(*layers)
        self.s0 = resolution // 16
        self.identity_fc = nn.Sequential(nn.Linear(z_dim, 8 * w * self.s0 ** 2, bias=False),
                                         nn.BatchNorm1d(8 * w * self.s0 ** 2), nn.ReLU())
        self.identity = nn.Sequential(_dconv(8 * w, 4 * w), _dconv(4 * w, 2 * w))
        self.decode = nn.Sequential(_dconv(4 * w, 2 * w), _dconv(2 * w, w),
                                    nn.Conv2d(w, w // 2, 3, 1, 1), nn.BatchNorm2d(w // 2), nn.ReLU(),
                                    nn.Conv2d(w // 2, channels, 3, 1, 1), nn.Sigmoid())
        self.register_buffer("fill_value", torch.full((1, channels, 1, 1), 0.5))

    def forward(self, x_masked: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mask = mask.expand(x_masked.shape[0], 1, *x_masked.shape[2:])
        inp = torch.cat([x_masked * (1 - mask) + self.fill_value * mask, mask], 1)
        ident = self.identity(self.identity_fc(z).view(z.shape[0], -1, self.s0, self.s0))
        return self.decode(torch.cat([self.context(inp), ident], 1))


class Critic(nn.Module):
    """The reference's WGAN critic (DGWGAN / DLWGAN): stride-2 5x5 convolutions, InstanceNorm (affine) and
    LeakyReLU 0.2, then one convolution over the whole last map.  ``depth`` stride-2 stages (reference: 4 for
    the 64-px global critic, 3 for the 32-px local one), fewer when the input is too small."""

    def __init__(self, size: int, channels: int = 3, width: int = 64, depth: int = 4):
        super().__init__()
        self.config = {"size": size, "channels": channels, "width": width, "depth": depth}
        depth = max(1, min(depth, int(math.log2(size)) - 1))
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 5, 2, 2), nn.LeakyReLU(0.2)]
        for i in range(1, depth):
            layers += [nn.Conv2d(width * 2 ** (i - 1), width * 2 ** i, 5, 2, 2),
                       nn.InstanceNorm2d(width * 2 ** i, affine=True), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width * 2 ** (depth - 1), 1, size >> depth)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).flatten()


class Critics(nn.Module):
    """The global critic (whole image) and the local one (a square of half the side)."""

    def __init__(self, resolution: int, channels: int = 3, width: int = 64):
        super().__init__()
        self.config = {"resolution": resolution, "channels": channels, "width": width}
        self.global_ = Critic(resolution, channels, width, 4)
        self.local = Critic(resolution // 2, channels, width, 3)

    def score(self, x: torch.Tensor, area: tuple[int, int, int]) -> torch.Tensor:
        """``-(mean D_L(crop x) + mean D_G(x))``: SecretGen's stage-2 critic loss (the sum, not the mean)."""
        return -self.local(crop(x, area)).mean() - self.global_(x).mean()


class SecretGenConfig(BaseModel):
    """Stage-1 settings (the reference's in the ``paper`` preset)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(62500, ge=0)        # 100 epochs x 625 batches of 64 (40,000 public images)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.004, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: Literal[1] = 1                     # one step of each critic per generator step
    gp_weight: float = Field(10.0, ge=0)
    diversity_weight: float = Field(0.5, ge=0)
    z_dim: int = Field(100, ge=1)
    width: int = Field(64, ge=4)
    mask: Literal["center", "face"] = "center"
    public_model: str | None = None           # secretgen_bb: a classifier trained on public identities
    hflip: bool = False
    ckpt_every: int = Field(500, ge=1)


class _SecretGenKind(AdversarialPrior):
    quality_gate = False           # an inpainting network: no unconditional samples to measure
    config_model = SecretGenConfig
    presets = {"paper": {},
               "quick": {"iterations": 300, "width": 16, "batch_size": 32, "lr": 0.001, "ckpt_every": 100}}

    def feature_model(self, cfg: SecretGenConfig, target: nn.Module | None, D: Critics, dev: Any):
        raise NotImplementedError

    def build(self, cfg: SecretGenConfig, data: PublicImages, target: nn.Module | None):
        G = InpaintingGenerator(cfg.z_dim, data.resolution, data.channels, cfg.width)
        mean = sum(x.sum((0, 2, 3)) for x in data.all_batches(1024)) / (data.n * data.resolution ** 2)
        G.fill_value.copy_(mean.view(1, -1, 1, 1).cpu())
        D = Critics(data.resolution, data.channels, cfg.width)
        ctx = {"mask": hole_mask(cfg.mask, data.resolution).to(data.device),
               "V": self.feature_model(cfg, target, D, data.device)}
        return G, D, ctx, {"mask": cfg.mask}

    def critic_loss(self, cfg, G, D, data, gen, ctx):
        """One step of each critic (the reference's separate steps; disjoint parameters, one Adam each)."""
        total = 0.0
        for critic in ("local", "global_"):
            x, _ = data.sample(cfg.batch_size, gen)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(data.device)
            with torch.no_grad():
                fake = fill(x, ctx["mask"], G(x, ctx["mask"], z))
            if critic == "local":
                area = random_square(data.resolution, gen)
                x, fake = crop(x, area), crop(fake, area)
            Dc = getattr(D, critic)
            total = total + Dc(fake).mean() - Dc(x).mean() + cfg.gp_weight * gradient_penalty(Dc, x, fake, gen)
        return total

    def generator_loss(self, cfg, G, D, data, gen, ctx, target, z):
        x, _ = data.sample(cfg.batch_size, gen)
        m = ctx["mask"]
        z2 = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(data.device)
        o1, o2 = fill(x, m, G(x, m, z)), fill(x, m, G(x, m, z2))
        area = random_square(data.resolution, gen)
        gan = -(D.local(crop(o1, area)).mean() + D.global_(o1).mean()) / 2
        return gan - cfg.diversity_weight * diversity(ctx["V"], o1, o2, z, z2)

    def load(self, meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Prior:
        G = load_module(InpaintingGenerator(**meta["generator"]["config"]), state, "G.", where)
        D = load_module(Critics(**meta["discriminator"]["config"]), state, "D.", where)
        return Prior(self.name, G, D, meta=meta)

    def quality(self, prior, holdout, public_set, seed, device):
        return None


@register_prior
class SecretGenPrior(_SecretGenKind):
    """White-box stage 1: the diversity term on the target's penultimate features (one prior per target)."""

    name = "secretgen"
    needs_target = True

    def feature_model(self, cfg, target, D, dev):
        return target.features


@register_prior
class SecretGenBlackBoxPrior(_SecretGenKind):
    """Black-box stage 1: the diversity term on a public model's features (shared by all targets)."""

    name = "secretgen_bb"
    needs_target = False

    def feature_model(self, cfg, target, D, dev):
        if cfg.public_model is None:
            return D.global_.features           # deviation: no public face model given (docs/attacks.md)
        from ..loading import load_model

        model = load_model(cfg.public_model, device=dev)[0].eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model.features
