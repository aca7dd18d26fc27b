"""Rebuild a trained classifier from its checkpoint: the architecture plus the defense's model surgery.

The layer above :mod:`midre.checkpoint` (safe tensor files + JSON metadata, which imports nothing of
midre's models or defenses), :mod:`midre.models` and :mod:`midre.defenses`.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import checkpoint_files, load_state, read_meta
from .defenses import build_defense
from .errors import CheckpointError, MidreError
from .models import create_model


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Create the architecture described by metadata and re-apply the defense's model surgery."""
    model = create_model(meta["arch"], num_classes=int(meta["num_classes"]), resolution=int(meta["resolution"]),
                         **(meta.get("model_kwargs") or {}))
    defense = build_defense(meta.get("defense"))
    return defense.wrap_model(model)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a midre checkpoint (dir / .safetensors / .json) -> (model in eval mode, metadata)."""
    meta = read_meta(path)
    st_path, _ = checkpoint_files(path)
    state = load_state(st_path)
    try:
        model = build_from_meta(meta)
    except MidreError as e:
        raise CheckpointError(f"checkpoint '{st_path}' cannot be rebuilt: {e}") from None
    missing, unexpected = [], []
    own = model.state_dict()
    for k in own:
        if k not in state:
            missing.append(k)
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != v.shape:
            raise CheckpointError(
                f"checkpoint '{st_path}' does not match its metadata: '{k}' has shape {tuple(v.shape)}, "
                f"the {meta['arch']} model expects {tuple(own[k].shape)}; the file may come from another model")
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(f"checkpoint '{st_path}' does not match architecture '{meta['arch']}' ({what}); "
                              "it was written for another model")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta
