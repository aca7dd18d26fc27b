"""Pretrained weights from a LOCAL file (midre never downloads anything).

:func:`load_pretrained` reads

- ``.safetensors`` with safetensors (no code can run), or
- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` with ``torch.load(weights_only=True)``: a pickle that would
  run code or build arbitrary objects is refused with :class:`~midre.errors.CheckpointError`.

The file may hold (optionally inside a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, with
DataParallel ``module.`` prefixes):

1. a whole-Classifier state dict (keys ``backbone.*`` / ``head.*``, e.g. a midre checkpoint), or
2. a backbone state dict in the architecture's original layout (torchvision, timm, or the MI
   reference implementations): keys under ``model.pretrained_head_prefixes`` (e.g. torchvision's
   ``fc.``) are the original classification head, and ``model.pretrained_key_map`` renames flat
   reference keys onto midre's nested stages.

Head policy (documented behaviour): a head in the file is loaded only when its keys and shapes match
the model's head (same class count); otherwise it is ignored and the model keeps its freshly
initialised head -- the usual "pretrained backbone, new classes" case.  Everything else must match
exactly: a missing backbone key, an unexpected key or a shape mismatch is a one-line
:class:`CheckpointError` naming the first offending key.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import TorchLoadRefused, weights_only_load
from ..errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "net", "weights")
# torchvision's legacy DenseNet keys: "denselayer1.norm.1.weight" -> "denselayer1.norm1.weight"
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from a local .safetensors / .pt / .pth file (safely)."""
    spath = str(path)
    if "://" in spath:
        raise CheckpointError(f"weights must be a local file, got '{spath}'; download it yourself and pass the path")
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise CheckpointError(f"pretrained weights file '{p}' {what}; pass an existing local .safetensors or .pth file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated / foreign files
            raise CheckpointError(f"weights file '{p}' is not a valid safetensors file ({type(e).__name__}); "
                                  "re-download or re-export it") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = weights_only_load(p)
        except TorchLoadRefused as e:
            if e.unsafe:
                raise CheckpointError(f"refused to load '{p}': it is not a plain tensor state dict and unpickling it "
                                      f"could run code ({e.reason}); re-save it with torch.save(model.state_dict()) "
                                      "or as .safetensors") from None
            raise CheckpointError(f"weights file '{p}' is corrupt or not a torch file ({e.reason}); "
                                  "re-download or re-export it") from None
    else:
        raise CheckpointError(f"weights file '{p}' has unsupported suffix '{p.suffix}'; use .safetensors, "
                              + ", ".join(TORCH_SUFFIXES))
    return _unwrap_state(obj, p)


def _unwrap_state(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"weights file '{p}' does not hold a state dict; save model.state_dict()")
    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"weights file '{p}' holds a non-tensor entry '{k}'; save model.state_dict()")
        key = str(k)
        while key.startswith("module."):
            key = key[len("module."):]
        key = key.replace("_orig_mod.", "")
        state[key] = v
    return state


def _map_backbone_key(key: str, key_map: Mapping[str, str]) -> str:
    m = _DENSENET_LEGACY.match(key)
    if m:
        key = m.group(1) + m.group(2)
    best = max((src for src in key_map if key.startswith(src)), key=len, default=None)
    if best is not None:
        key = key_map[best] + key[len(best):]
    return "backbone." + key


def to_classifier_state(model: nn.Module, state: Mapping[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a state dict into (classifier-layout non-head keys, head keys named ``head.*``)."""
    body: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    if any(k.startswith(("backbone.", "head.")) for k in state):
        for k, v in state.items():
            (head if k.startswith("head.") else body)[k] = v
        return body, head
    key_map = getattr(model, "pretrained_key_map", {}) or {}
    head_prefixes = tuple(getattr(model, "pretrained_head_prefixes", ()) or ())
    for k, v in state.items():
        hp = next((h for h in head_prefixes if k.startswith(h)), None)
        if hp is not None:
            head["head." + k[len(hp):]] = v
            continue
        new = _map_backbone_key(k, key_map)
        if new in body:
            raise CheckpointError(f"weights file maps two keys onto '{new}'; it is not a {getattr(model, 'arch', '')} "
                                  "state dict")
        body[new] = v
    return body, head


def load_pretrained(model: nn.Module, path: str | os.PathLike, keep_head: bool = True) -> dict[str, Any]:
    """Load local pretrained weights into a midre Classifier (in place).

    ``keep_head=False`` never loads a head from the file (fine-tuning a backbone on new classes: the
    model keeps its freshly initialised head even when the class counts happen to agree).

    Returns a small report: ``{"path", "loaded" (number of tensors), "head": "loaded" | "ignored: ..."
    | "absent" | "re-initialised"}``.  Raises :class:`CheckpointError` (one line) for a missing / unsafe / corrupt file,
    missing or unexpected keys, and shape mismatches.
    """
    state = read_state_dict(path)
    arch = getattr(model, "arch", "") or type(model).__name__
    body, head = to_classifier_state(model, state)
    own = model.state_dict()
    own_head = {k: v for k, v in own.items() if k.startswith("head.")}

    # head: load only when it matches exactly (same keys and shapes), else keep the fresh one
    head_status = "absent"
    if head and not keep_head:
        head, head_status = {}, "re-initialised"
    if head:
        mismatch = [k for k in head if k not in own_head or own_head[k].shape != head[k].shape]
        if not mismatch and set(head) == set(own_head):
            head_status = "loaded"
        else:
            n_file = next((int(v.shape[0]) for k, v in head.items() if k.endswith("weight") and v.dim() == 2), None)
            why = f"{n_file} outputs in the file vs {getattr(model, 'num_classes', '?')} classes" if n_file else \
                "layout differs"
            head_status = f"ignored: {why}"
            head = {}

    for k, v in body.items():
        if k not in own:
            raise CheckpointError(f"weights '{path}' do not fit architecture '{arch}': unexpected key '{k}'; "
                                  "is the file for another architecture?")
        if own[k].shape != v.shape:
            raise CheckpointError(f"weights '{path}' do not fit architecture '{arch}': '{k}' has shape "
                                  f"{tuple(v.shape)} in the file but {tuple(own[k].shape)} in the model; check "
                                  "the architecture, its options and the resolution")
    missing = [k for k in own if not k.startswith("head.") and k not in body and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"weights '{path}' do not fit architecture '{arch}': missing key '{missing[0]}' "
                              f"({len(missing)} missing); is the file for another architecture?")
    merged = dict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in body.items()})
    merged.update({k: v.to(own[k].dtype) for k, v in head.items()})
    model.load_state_dict(merged, strict=True)
    return {"path": str(path), "loaded": len(body) + len(head), "head": head_status}
