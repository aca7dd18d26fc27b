"""The tiny world the attack tests share: 4 synthetic identities at 16 px, a tinycnn target trained in
seconds, and `midre attack` called with a quick preset."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

K = 4
RES = 16
DATA_OPTS = {"num_private": K, "num_public": K, "images_per_id": 16}


def tiny_splits():
    """The 4-identity synthetic splits (seed 0, 16 px)."""
    from midre.data import load_dataset

    return load_dataset("synthetic", seed=0, resolution=RES, **DATA_OPTS)


def train_tiny_target(root: Path, name: str = "target", epochs: int = 1, defense: Any = None, splits=None):
    """Train a tinycnn on the private split into ``root/name``; returns the training result (``.model``)."""
    from midre.defenses import build_defense
    from midre.models import create_model
    from midre.training import TrainConfig, train_classifier

    splits = splits if splits is not None else tiny_splits()
    meta = {"dataset": {"name": "synthetic", "root": None, "resolution": RES, "seed": 0, "options": DATA_OPTS}}
    return train_classifier(create_model("tinycnn", num_classes=K, resolution=RES), splits.private_train,
                            splits.private_test, out_dir=root / name, meta=meta, progress=False,
                            defense=build_defense(defense) if defense else None,
                            config=TrainConfig(epochs=epochs, batch_size=16, lr=0.05, device="cpu", amp=False, seed=0))


def _pairs(flag: str, params: Mapping[str, Any] | Sequence[str]) -> list[str]:
    items = [f"{k}={v}" for k, v in params.items()] if isinstance(params, Mapping) else list(params)
    return [a for p in items for a in (flag, p)]


def cli_attack(target: Path, name: str, out: Path, identities: str, repeats: int = 1,
               params: Mapping[str, Any] | Sequence[str] = (), prior_params: Sequence[str] = (), *extra: str) -> int:
    """``midre attack`` with the quick preset on the CPU, without progress bars; returns its exit code.
    ``params``: a mapping or ``k=v`` strings for ``--param``; ``prior_params``: ``kind.k=v`` strings."""
    from midre.cli import main

    return main(["attack", "--target", str(target), "--attack", name, "--identities", identities,
                 "--repeats", str(repeats), "--out", str(out), "--preset", "quick", "--device", "cpu", "--no-progress",
                 *_pairs("--param", params), *_pairs("--prior-param", prior_params), *extra])
