"""Safe checkpoints: ``<stem>.safetensors`` (tensors only) + ``<stem>.json`` (metadata).

Nothing here unpickles arbitrary objects: weights are safetensors, metadata is JSON, and the only
``torch.load`` (training state for resume) uses ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError
from .utils import atomic_path, atomic_write_json, unwrap

FORMAT = "midre-checkpoint"
FORMAT_VERSION = 1


def checkpoint_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) of a checkpoint given as a directory, stem or either file."""
    p = Path(path)
    if p.is_dir():
        p = p / "model"
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically; returns the .safetensors path.

    The JSON is written last, so a checkpoint whose JSON exists is complete.
    """
    from safetensors.torch import save_file

    st_path, js_path = checkpoint_files(path)
    model = unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses shared storage; clone tensors that alias each other.
    seen: dict[int, str] = {}
    for k, v in list(state.items()):
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen and ptr != -1:
            state[k] = v.clone()
        seen[ptr] = k
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    with atomic_path(st_path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    atomic_write_json(js_path, full_meta)
    return st_path


def read_json_record(js: Path, corrupt: str, foreign: str, is_ours: Callable[[dict], bool]) -> dict[str, Any]:
    """The JSON side of a saved artefact: a dict that ``is_ours`` accepts, else one CheckpointError line
    (``corrupt`` when it is not JSON, ``foreign`` when it is JSON of something else)."""
    try:
        meta = json.loads(Path(js).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(corrupt) from None
    if not isinstance(meta, dict) or not is_ours(meta):
        raise CheckpointError(foreign)
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    st_path, js_path = checkpoint_files(path)
    if not js_path.exists():
        if Path(path).exists() and not Path(path).is_dir() and Path(path).suffix not in (".json", ".safetensors"):
            raise CheckpointError(f"'{path}' is not a midre checkpoint; give the model.safetensors written by `midre train`")
        raise CheckpointError(f"checkpoint metadata '{js_path}' not found; give a directory or .safetensors written by `midre train`")
    meta = read_json_record(
        js_path, f"checkpoint metadata '{js_path}' is corrupt (not JSON); re-train or restore the file",
        f"'{js_path}' is not midre checkpoint metadata; give a checkpoint written by `midre train`",
        lambda m: m.get("format") == FORMAT)
    for key in ("arch", "num_classes", "resolution"):
        if key not in meta:
            raise CheckpointError(f"checkpoint metadata '{js_path}' lacks '{key}'; re-train the model with this midre version")
    return meta


class TorchLoadRefused(Exception):
    """``torch.load(weights_only=True)`` failed: ``reason`` is one short clause for the caller's one line;
    ``unsafe`` when the file is a pickle the weights-only unpickler refused (it would import or run code)."""

    def __init__(self, reason: str, unsafe: bool):
        super().__init__(reason)
        self.reason, self.unsafe = reason, unsafe


def _refusal_reason(err: BaseException, caught: list) -> str:
    """The useful part of torch's multi-paragraph refusal (the blocked global, the opcode), plus the pickle
    protocol when torch warned about it; the exception type otherwise."""
    text = str(err)
    m = re.search(r"unsupported GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        reason = f"it imports {m.group(1)}"
    elif (m := re.search(r"Unsupported operand (\d+)", text)):
        reason = f"unsupported pickle opcode {m.group(1)}"
    else:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        reason = type(err).__name__ + (f": {first[:80]}" if first and "weights_only" not in first else "")
    protocols = {m.group(1) for w in caught if (m := re.search(r"pickle protocol (\d+)", str(w.message)))}
    if protocols:
        reason += f"; pickle protocol {', '.join(sorted(protocols))}"
    return reason


def _looks_pickled(source: Any) -> bool:
    """A torch zip archive or what opens a pickle: 0x80 (protocol 2+), or the MARK / empty dict / empty list /
    GLOBAL opcode of protocols 0 and 1."""
    if not isinstance(source, (str, os.PathLike)):
        return True
    import zipfile

    try:
        with open(source, "rb") as fh:
            head = fh.read(1)
        return head in (b"\x80", b"(", b"}", b"]", b"c") or zipfile.is_zipfile(source)
    except OSError:
        return False


def weights_only_load(source: Any) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, with the library's warnings captured (a refusal is
    one line of midre's, not torch's warnings first); failure raises :class:`TorchLoadRefused`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return torch.load(source if not isinstance(source, (str, os.PathLike)) else str(source),
                              map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:   # a pickle the weights-only unpickler refused, or no pickle at all
            reason = _refusal_reason(e, caught)
            unsafe = reason.startswith("it imports") or _looks_pickled(source)
            raise TorchLoadRefused(reason if unsafe else "not a pickle or torch zip archive", unsafe) from None
        except Exception as e:  # noqa: BLE001 - RuntimeError (truncated), EOFError, KeyError (text), ...
            raise TorchLoadRefused(_refusal_reason(e, caught), unsafe=False) from None


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a tensor state dict: safetensors, or torch.load(weights_only=True) for .pt/.pth."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file '{p}' not found; check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint '{p}' is truncated or corrupt ({str(e).splitlines()[0][:80]}); re-train or restore it") from None
    try:
        obj = weights_only_load(p)
    except TorchLoadRefused as e:  # a pickle that would import code, a truncated or foreign file, ...
        raise CheckpointError(
            f"refusing to load '{p}': not a plain tensor checkpoint ({e.reason}); "
            "only safetensors or weights-only torch files are accepted") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{p}' does not hold a state dict of tensors; give a model checkpoint")
    return obj
