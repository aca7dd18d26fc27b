"""Dataset contract shared by every dataset family.

Images inside midre are float tensors in [0, 1], shape (C, H, W).  A dataset family produces an
:class:`MISplits`: private train / private test (labels 0..num_classes-1) and a public set whose
identities never overlap the private ones (labels are public identity indices, or -1 if unknown).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import Registry


class ImageSet(Dataset):
    """Labelled images; ``__getitem__`` returns ``(float tensor (C,H,W) in [0,1], int label)``."""

    targets: torch.Tensor  # (N,) int64
    resolution: int
    channels: int = 3

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def to_tensors(self, progress: bool = False) -> TensorImageSet:
        """Decode every image once and keep them in memory as uint8 (fast epochs on CPU)."""
        from ..utils import make_progress

        n = len(self)
        if n == 0:
            raise DataError("cannot load an empty image set; check the dataset root and split")
        first, _ = self[0]
        imgs = torch.empty((n, *first.shape), dtype=torch.uint8)
        with make_progress(progress, transient=True) as prog:
            task = prog.add_task("decoding images", total=n, status="")
            for i in range(n):
                x, _ = self[i]
                imgs[i] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
                prog.advance(task)
        return TensorImageSet(imgs, self.targets.clone())


class TensorImageSet(ImageSet):
    """Images held in memory as uint8 (N, C, H, W) plus int64 labels."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | Sequence[int]):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("TensorImageSet needs uint8 images of shape (N, C, H, W)")
        targets = torch.as_tensor(targets, dtype=torch.long)
        if len(targets) != len(images):
            raise ValueError("images and targets differ in length")
        self.images = images
        self.targets = targets
        self.channels = images.shape[1]
        self.resolution = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255.0), int(self.targets[i])

    def batch(self, idx: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast batched access without a DataLoader: (float images in [0,1], labels)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.images[idx].float().div_(255.0), self.targets[idx]

    def to_tensors(self, progress: bool = False) -> TensorImageSet:
        return self

    def subset(self, idx: torch.Tensor | Sequence[int]) -> TensorImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorImageSet(self.images[idx], self.targets[idx])


@dataclass
class MISplits:
    """The three splits of a model-inversion benchmark."""

    name: str
    resolution: int
    num_classes: int                    # private identities
    private_train: ImageSet
    private_test: ImageSet
    public: ImageSet                    # identities disjoint from the private ones
    class_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)   # provenance, options, seed

    def summary(self) -> str:
        return (f"{self.name}: {self.num_classes} private identities, {len(self.private_train)} train / "
                f"{len(self.private_test)} test images, {len(self.public)} public images at {self.resolution} px")


DATASETS: Registry[Callable[..., MISplits]] = Registry("dataset", group="midre.datasets")


def load_dataset(name: str, root: str | None = None, resolution: int | None = None, seed: int = 0,
                 **options: Any) -> MISplits:
    """Build the splits of a registered dataset family (``midre datasets`` lists them)."""
    factory = DATASETS.get(name)
    return factory(root=root, resolution=resolution, seed=seed, **options)


# dataset family -> factory of its pretraining pool (``load_pretraining``); families without one are absent
PRETRAINING_POOLS: dict[str, Callable[..., TensorImageSet]] = {}


def load_pretraining(name: str, resolution: int | None = None, **options: Any) -> TensorImageSet:
    """The pretraining pool of a dataset family that has one (``synthetic2``): identities disjoint from
    its private and public sets, labels ``0..n-1`` (the ImageNet / MS-Celeb analogue)."""
    DATASETS.get(name)                     # unknown names: the registry's did-you-mean error
    factory = PRETRAINING_POOLS.get(str(name).lower())
    if factory is None:
        raise DataError(f"dataset '{name}' has no pretraining pool; use 'synthetic2' or pretrain on your own data")
    return factory(resolution=resolution, **options)


def in_memory(imageset, progress: bool = True, limit_bytes: int = 4 << 30):
    """Decode a dataset into RAM when it fits comfortably (fast CPU epochs), else keep it lazy."""
    if hasattr(imageset, "images"):
        return imageset
    n = len(imageset)
    if n == 0:
        return imageset
    x, _ = imageset[0]
    if n * x.numel() > limit_bytes:
        return imageset
    return imageset.to_tensors(progress=progress)
