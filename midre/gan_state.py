"""Safe load of a GAN prior's safetensors state and its resume state (modules + optimizers + RNG +
iteration), shared by the prior kinds of :mod:`midre.priors`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError
from .utils import atomic_path, atomic_write_json


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' is truncated or corrupt ({str(e)[:60]}); delete its directory to retrain") from None


def load_module(m: nn.Module, state: dict[str, torch.Tensor], prefix: str, where: Path) -> nn.Module:
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        m.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{where}' does not match its metadata ({str(e).splitlines()[0][:80]}); "
                              "delete its directory to retrain") from None
    return m.eval()


# ================================================================================ resume state
def _flat_opt(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{pid}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_opt(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix + "."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


class GanResume:
    """Resume state of a GAN training: modules + optimizers + RNG + iteration, in safetensors + JSON."""

    def __init__(self, root: Path):
        self.st, self.js = root / "state.safetensors", root / "state.json"

    def save(self, it: int, modules: dict[str, nn.Module], opts: dict[str, torch.optim.Optimizer],
             gen: torch.Generator, extra: dict[str, torch.Tensor] | None = None) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {"rng": gen.get_state().clone()}
        info: dict[str, Any] = {"iteration": it, "opts": {}}
        for name, m in modules.items():
            tensors.update({f"{name}.{k}": v.detach().cpu().contiguous().clone() for k, v in m.state_dict().items()})
        for name, o in opts.items():
            t, i = _flat_opt(o, f"opt_{name}")
            tensors.update(t)
            info["opts"][name] = i
        for k, v in (extra or {}).items():
            tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
        with atomic_path(self.st) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(self.js, info)

    def load(self, modules: dict[str, nn.Module], opts: dict[str, torch.optim.Optimizer],
             gen: torch.Generator) -> tuple[int, dict[str, torch.Tensor]]:
        if not (self.st.exists() and self.js.exists()):
            return 0, {}
        try:
            info = json.loads(self.js.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 0, {}
        tensors = load_safetensors(self.st)
        for name, m in modules.items():
            load_module(m, tensors, f"{name}.", self.st).train()
        for name, o in opts.items():
            _restore_opt(o, f"opt_{name}", tensors, info["opts"][name])
        gen.set_state(tensors["rng"])
        extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return int(info["iteration"]), extra

    def clear(self) -> None:
        self.st.unlink(missing_ok=True)
        self.js.unlink(missing_ok=True)
