"""BiDO: bilateral dependency optimisation (Peng et al., 2022).

What the reference does: on every batch, for intermediate representations ``Z_j`` (outputs of hooked
layers), add ``lambda_x * d(X, Z_j) - lambda_y * d(Z_j, Y)`` to the cross-entropy: the dependency
between inputs and latents is minimised (less input information to invert), the dependency between
latents and labels maximised (utility).  ``d`` is a kernel dependency measure: HSIC or COCO.
Reference values: ``(lambda_x, lambda_y) = (0.05, 0.5)`` (CelebA, GMI/KedMI; ``(0.05, 2)`` seen for
IR152), Gaussian kernels with ``sigma = 5``, three evenly spaced hooked layers.

Definitions used here (all on flattened tensors, one row per sample, n = batch size):

- Gaussian kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2 d))`` with ``d`` the row dimension -- the
  bandwidth scales with the width of the layer, as in the HSIC-bottleneck code BiDO builds on, so one
  ``sigma`` fits layers of any size.  ``Y`` enters as one-hot rows with a linear kernel ``Y Y^T``
  (``y_kernel="linear"``, the reference default) or the Gaussian kernel (``y_kernel="gaussian"``).
  X and Z always use the Gaussian kernel.
- ``H = I - 11^T / n``, ``K_c = K H``.
- ``measure="hsic"`` (default): the HSIC *as the BiDO reference trains with it*, the normalised
  (kernel-CCA) form ``sum(R_x * R_y^T) = tr(R_x R_y)`` with ``R = K_c (K_c + 1e-5 n I)^-1``.  It is
  invariant to the kernel's scale; the reference lambdas (0.05, 0.5) are tuned for it.
- ``measure="hsic_plain"``: the biased empirical HSIC ``tr(K H L H) / (n - 1)^2`` (Gretton et al.,
  2005).  With sigma = 5 on wide layers the Gaussian kernels are almost constant and this value is
  ~1e-6, so the reference lambdas make it a no-op: use it only with much larger lambdas.
- ``measure="coco"``: ``sqrt(||(H K H)(H L H)||_F) / n`` -- the constrained-covariance form of the
  reference code (also small in value: BiDO-COCO has its own, larger lambdas).

Layers: ``layers=None`` hooks 3 evenly spaced modules of ``model.blocks`` (first, middle, last; the ToolBox
hooks 3 evenly spaced layers too, but not the first block); a list of indices into ``model.blocks`` selects
others; ``layers="release"`` hooks what the BiDO release hooks on its VGG16 (``hsic_training``): every block
output but the last, plus the penultimate feature (the input of ``model.head``), the penalty summed over all
of them.  Hooks are installed in ``prepare`` and only record while the model is training with gradients
enabled.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError
from ._check import number
from .base import DEFENSES, Defense, StepContext, TrainContext

MEASURES = ("hsic", "hsic_plain", "coco")


def gaussian_kernel(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(-||x_i - x_j||^2 / (2 sigma^2 d)) for rows of ``x`` (n, d)."""
    x = x.reshape(x.shape[0], -1).float()
    d = x.shape[1]
    sq = (x * x).sum(1, keepdim=True)
    dist = (sq + sq.T - 2.0 * (x @ x.T)).clamp_min(0.0)
    return torch.exp(-dist / (2.0 * sigma * sigma * d))


def linear_kernel(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).float()
    return x @ x.T


def _centering(n: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.eye(n, device=device, dtype=dtype) - torch.full((n, n), 1.0 / n, device=device, dtype=dtype)


def hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Plain (unnormalised) biased empirical HSIC of two kernel matrices: tr(K H L H) / (n - 1)^2."""
    n = K.shape[0]
    if n < 2:
        return K.new_zeros(())
    H = _centering(n, K.device, K.dtype)
    return torch.trace(K @ H @ L @ H) / float((n - 1) ** 2)


def coco(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Constrained covariance as in the BiDO reference: sqrt(||(HKH)(HLH)||_F) / n."""
    n = K.shape[0]
    H = _centering(n, K.device, K.dtype)
    prod = (H @ K @ H) @ (H @ L @ H)
    return torch.sqrt(torch.linalg.norm(prod) + 1e-12) / n


def nhsic(K: torch.Tensor, L: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalised-CCA HSIC of the BiDO reference code: sum(R_x * R_y^T), R = K_c (K_c + eps n I)^-1."""
    n = K.shape[0]
    H = _centering(n, K.device, K.dtype)
    I = torch.eye(n, device=K.device, dtype=K.dtype)
    Kc, Lc = K @ H, L @ H
    Rx = Kc @ torch.linalg.inv(Kc + eps * n * I)
    Ry = Lc @ torch.linalg.inv(Lc + eps * n * I)
    return (Rx * Ry.T).sum()


_MEASURE_FN = {"hsic": lambda K, L: nhsic(K, L), "hsic_plain": hsic, "coco": coco}


def evenly_spaced(n_blocks: int, count: int = 3) -> list[int]:
    """``count`` evenly spaced indices in [0, n_blocks - 1] (first, ..., last), without repeats."""
    if n_blocks <= 0:
        return []
    if count == 1:
        return [n_blocks - 1]
    idx = [round(i * (n_blocks - 1) / (count - 1)) for i in range(count)]
    return sorted(set(idx))


class BiDO(Defense):
    """BiDO: CE + sum_j [lambda_x * d(X, Z_j) - lambda_y * d(Z_j, Y)] over hooked blocks."""

    name = "bido"

    def __init__(self, lambda_x: float = 0.05, lambda_y: float = 0.5, measure: str = "hsic", sigma: float = 5.0,
                 layers: Sequence[int] | str | None = None, y_kernel: str = "linear"):
        lambda_x, lambda_y, sigma = (number("bido", k, v) for k, v in
                                     (("lambda_x", lambda_x), ("lambda_y", lambda_y), ("sigma", sigma)))
        if lambda_x < 0 or lambda_y < 0:
            raise ArgumentError(f"bido: lambda_x and lambda_y must be >= 0 (e.g. 0.05 and 0.5), got {lambda_x}, {lambda_y}")
        if not sigma > 0:
            raise ArgumentError(f"bido: sigma (kernel width) must be > 0 (e.g. 5), got {sigma}")
        if measure not in MEASURES:
            raise ArgumentError(f"bido: measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        if y_kernel not in ("gaussian", "linear"):
            raise ArgumentError(f"bido: y_kernel must be 'gaussian' or 'linear', got {y_kernel!r}")
        if layers == "release":
            pass
        elif layers is not None:
            if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers) \
                    or len(layers) == 0:
                raise ArgumentError(f"bido: layers must be a non-empty list of block indices (e.g. [0, 2, 4]) or "
                                    f"'release', got {layers!r}")
            layers = [int(i) for i in layers]
        self.lambda_x = float(lambda_x)
        self.lambda_y = float(lambda_y)
        self.measure = measure
        self.sigma = float(sigma)
        self.layers = layers
        self.y_kernel = y_kernel
        self._acts: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._hooked: nn.Module | None = None
        self.last_terms: dict[str, float] = {}

    def params(self) -> dict[str, Any]:
        return {"lambda_x": self.lambda_x, "lambda_y": self.lambda_y, "measure": self.measure, "sigma": self.sigma,
                "layers": self.layers, "y_kernel": self.y_kernel}

    # ------------------------------------------------------------------ hooks
    def hooked_indices(self, model: nn.Module) -> list[int]:
        blocks = list(getattr(model, "blocks", []) or [])
        if not blocks:
            raise ArgumentError(f"bido needs a model with intermediate blocks (model.blocks), got {type(model).__name__}")
        if self.layers is None:
            return evenly_spaced(len(blocks), 3)
        if self.layers == "release":
            return list(range(len(blocks) - 1))
        bad = [i for i in self.layers if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise ArgumentError(f"bido: layer index {bad[0]} is out of range; the model has {len(blocks)} blocks "
                                f"(use 0..{len(blocks) - 1})")
        return sorted({i % len(blocks) for i in self.layers})

    def attach(self, model: nn.Module) -> None:
        """Hook the chosen blocks of ``model`` (idempotent)."""
        from ..utils import unwrap

        model = unwrap(model)
        if self._hooked is model:
            return
        self.detach()
        blocks = list(model.blocks)
        for i in self.hooked_indices(model):
            self._handles.append(blocks[i].register_forward_hook(self._make_hook(i)))
        if self.layers == "release":               # the penultimate feature: what the head receives
            head = getattr(model, "head", None)
            if not isinstance(head, nn.Module):
                raise ArgumentError(f"bido: layers 'release' needs a model with a head (a midre Classifier), got "
                                    f"{type(model).__name__}")
            self._handles.append(head.register_forward_hook(self._make_hook(len(blocks), take_input=True)))
        self._hooked = model

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._hooked, self._acts = [], None, {}

    def _make_hook(self, i: int, take_input: bool = False):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                out = inputs if take_input else output
                self._acts[i] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    # ------------------------------------------------------------------ defense hooks
    def prepare(self, ctx: TrainContext) -> None:
        self.attach(ctx.model)

    def dependency(self, a: torch.Tensor, b: torch.Tensor, b_is_label: bool = False) -> torch.Tensor:
        """d(a, b) with the configured measure and kernels (rows = samples)."""
        K = gaussian_kernel(a, self.sigma)
        if b_is_label and self.y_kernel == "linear":
            L = linear_kernel(b)
        else:
            L = gaussian_kernel(b, self.sigma)
        return _MEASURE_FN[self.measure](K, L)

    def regularizer(self, ctx: StepContext) -> torch.Tensor | None:
        from ..utils import unwrap

        if self._hooked is not unwrap(ctx.model):
            raise ArgumentError("bido: hooks are not attached to this model; the trainer calls prepare(ctx) first")
        acts, self._acts = self._acts, {}
        if not acts or ctx.x.shape[0] < 2:
            return None
        x = ctx.x.reshape(ctx.x.shape[0], -1)
        y = F.one_hot(ctx.y.long(), num_classes=ctx.logits.shape[1]).float()
        total = torch.zeros((), dtype=torch.float32, device=ctx.logits.device)
        hx_sum, hy_sum = 0.0, 0.0
        # kernels, centring and inverses in float32 even inside the trainer's AMP region
        with torch.autocast(device_type=ctx.logits.device.type, enabled=False):
            for i in sorted(acts):
                z = acts[i].reshape(acts[i].shape[0], -1)
                hx = self.dependency(z, x)
                hy = self.dependency(z, y, b_is_label=True)
                total = total + self.lambda_x * hx - self.lambda_y * hy
                hx_sum += float(hx.detach())
                hy_sum += float(hy.detach())
        self.last_terms = {"dxz": hx_sum, "dzy": hy_sum}
        return total


@DEFENSES.register("bido", family="baseline")
def _bido(lambda_x: float = 0.05, lambda_y: float = 0.5, measure: str = "hsic", sigma: float = 5.0,
          layers: Sequence[int] | str | None = None, y_kernel: str = "linear") -> Defense:
    """BiDO: CE + lambda_x * d(X, Z) - lambda_y * d(Z, Y) over hooked blocks (HSIC / COCO)."""
    return BiDO(lambda_x=lambda_x, lambda_y=lambda_y, measure=measure, sigma=sigma, layers=layers, y_kernel=y_kernel)
