"""Convert an official StyleGAN2(-ADA) ``.pkl`` into a midre generator checkpoint WITHOUT running its code.

Why this is needed: NVIDIA's pickles store every network as a "persistent object": the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, which ``exec``s the Python source kept in
``meta['module_src']``; their tensors come back through ``torch.storage._load_from_bytes``, a
``torch.load`` without ``weights_only``.  Loading such a file the usual way runs whatever it contains.

The safety model here: a restricted unpickler whose ``find_class`` knows a FIXED list of globals and
refuses every other one (``os.system``, ``builtins.eval``, ``copyreg._reconstructor`` ...) with a
:class:`~midre.errors.CheckpointError`, before anything is built:

==================================================  =====================================================
global in the pickle                                what the converter puts in its place
==================================================  =====================================================
``torch_utils.persistence._reconstruct_persistent_obj``  a stub that keeps the saved ``_parameters``,
                                                    ``_buffers``, ``_modules`` and ``_init_kwargs`` and
                                                    never looks at ``module_src``
``torch.storage._load_from_bytes``                  ``torch.load(..., weights_only=True)``
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``  the torch functions, after checking that their
                                                    arguments are a storage, ints and empty hook dicts
``dnnlib.util.EasyDict``                            ``dict``
``collections.OrderedDict``, ``builtins.set`` / ``frozenset``  themselves (plain containers)
``numpy(._core|.core).multiarray.scalar``, ``numpy.dtype``  a number decoded from its bytes (numeric
                                                    dtypes only)
==================================================  =====================================================

The generator is then rebuilt by midre from the saved init kwargs (:class:`midre.models.stylegan2.Generator`)
and the collected state dict is loaded with ``strict=True``; the result is written as safetensors + JSON
through :mod:`midre.checkpoint` (atomic; nothing is written when any step fails).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import TorchLoadRefused, weights_only_load
from ..errors import CheckpointError, MidreError

_MAX_BYTES = 8 << 30


class PersistentRecord:
    """What the stub keeps of one of NVIDIA's persistent objects (never its source code)."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        for key, kind in (("_parameters", dict), ("_buffers", dict), ("_modules", dict), ("_init_kwargs", dict),
                          ("_init_args", (tuple, list)), ("_non_persistent_buffers_set", (set, frozenset))):
            if state.get(key) is not None and not isinstance(state[key], kind):
                raise CheckpointError(f"the saved '{key}' of a {class_name[:40]} record is a "
                                      f"{type(state[key]).__name__}; not an official StyleGAN2 pickle, refusing it")
        self.parameters = state.get("_parameters") or {}
        self.buffers = state.get("_buffers") or {}
        self.modules = state.get("_modules") or {}
        self.init_args = state.get("_init_args") or ()
        self.init_kwargs = state.get("_init_kwargs") or {}
        self.non_persistent = set(state.get("_non_persistent_buffers_set") or ())


class _EasyDict(dict):
    """Stands in for dnnlib.EasyDict: a dict (attributes of an EasyDict are its items)."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise CheckpointError("an EasyDict in the pickle carries unexpected object state; refusing it")


class _NpDType:
    """Stands in for numpy.dtype while unpickling; only plain numeric dtypes are accepted."""

    _OK = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}

    def __init__(self, name: Any, align: Any = False, copy: Any = False):
        if not isinstance(name, str) or name not in self._OK:
            raise CheckpointError(f"the pickle holds a numpy dtype '{str(name)[:20]}' that the converter does not accept")
        self.name, self.order = name, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def dtype(self) -> np.dtype:
        return np.dtype(self.name).newbyteorder(self.order) if self.order in "<>" else np.dtype(self.name)


def _np_scalar(dtype: Any, data: Any = b"") -> Any:
    if not isinstance(dtype, _NpDType) or not isinstance(data, bytes):
        raise CheckpointError("the pickle holds a numpy scalar of an unexpected form; refusing it")
    return np.frombuffer(data, dtype=dtype.dtype(), count=1)[0].item()


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a persistent-object record in the pickle is malformed; refusing it")
    return PersistentRecord(str(meta.get("class_name")), meta["state"])   # module_src is dropped unread


def _load_from_bytes(b: Any) -> Any:
    if not isinstance(b, bytes):
        raise CheckpointError("a tensor storage in the pickle is not raw bytes; refusing it")
    try:
        return weights_only_load(io.BytesIO(b))
    except TorchLoadRefused as e:
        raise CheckpointError(f"a tensor storage in the pickle is not plain tensor data ({e.reason}); "
                              "refusing it") from None


def _empty_hooks(h: Any) -> bool:
    return h is None or (isinstance(h, dict) and not h)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    ints = all(isinstance(v, int) for v in (offset, *tuple(size or ()), *tuple(stride or ())))
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)) or not ints \
            or not isinstance(requires_grad, bool) or not _empty_hooks(hooks) or metadata:
        raise CheckpointError("a tensor record in the pickle is malformed; refusing it")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or not _empty_hooks(hooks) or state:
        raise CheckpointError("a parameter record in the pickle is malformed; refusing it")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): _NpDType,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED`` (to midre's safe stand-ins)."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise CheckpointError(
                f"refusing '{self.source}': it references the global '{module}.{name}', which a StyleGAN2 weight "
                "file does not need (it may run code); nothing was loaded or written")
        return fn

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing '{self.source}': it uses pickle persistent ids, which an official "
                              "StyleGAN2 pickle does not; nothing was loaded or written")


def read_official_pickle(path: str | Path) -> Any:
    """Unpickle an official network pickle safely -> its top-level object with PersistentRecords inside."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"StyleGAN2 pickle '{p}' not found; give the path of the official .pkl")
    if p.stat().st_size > _MAX_BYTES:
        raise CheckpointError(f"'{p}' is larger than 8 GiB; it is not a StyleGAN2 network pickle")
    try:
        with p.open("rb") as f:
            return SafeUnpickler(f, str(p)).load()
    except MidreError:
        raise
    except Exception as e:   # truncated, not a pickle, a stand-in called with bad arguments ...
        raise CheckpointError(f"cannot read '{p}' as a StyleGAN2 pickle ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:60] if str(e) else ''}); check the file") from None


def _plain(v: Any) -> Any:
    """EasyDicts / OrderedDicts / tuples / numpy numbers -> JSON-able dicts, lists and Python numbers."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    raise CheckpointError(f"the network's init kwargs hold a {type(v).__name__}, not plain data; refusing them")


def collect_state(rec: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict (parameters + persistent buffers) of a record tree, with dotted names."""
    out: dict[str, torch.Tensor] = {}
    for name, t in rec.parameters.items():
        if t is not None:
            out[prefix + name] = _tensor(t, prefix + name)
    for name, t in rec.buffers.items():
        if t is not None and name not in rec.non_persistent:
            out[prefix + name] = _tensor(t, prefix + name)
    for name, sub in rec.modules.items():
        if sub is None:
            continue
        if not isinstance(sub, PersistentRecord):
            raise CheckpointError(f"sub-module '{prefix + name}' is a {type(sub).__name__}, not a persistent "
                                  "StyleGAN2 record; refusing it")
        out.update(collect_state(sub, f"{prefix}{name}."))
    return out


def _tensor(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"'{name}' in the pickle is a {type(t).__name__}, not a tensor; refusing it")
    return t.detach().clone().contiguous()


def generator_from_record(rec: Any, source: str = "pickle") -> tuple[torch.nn.Module, dict]:
    """midre Generator with the record's weights (strict) -> (generator in eval mode, plain init kwargs)."""
    from .stylegan2 import Generator

    if not isinstance(rec, PersistentRecord) or rec.class_name != "Generator":
        got = rec.class_name if isinstance(rec, PersistentRecord) else type(rec).__name__
        raise CheckpointError(f"'{source}': G_ema is a {got}, not a StyleGAN2 Generator")
    if rec.init_args:
        raise CheckpointError(f"'{source}': the generator was built with positional arguments; not supported")
    kwargs = _plain(rec.init_kwargs)
    try:
        G = Generator(**kwargs)
    except (MidreError, TypeError) as e:
        raise CheckpointError(f"'{source}' holds a generator midre cannot rebuild ({e}); only StyleGAN2(-ADA) "
                              "generators are supported") from None
    state = collect_state(rec)
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"'{source}': its weights do not fit a StyleGAN2 generator "
                              f"({str(e).splitlines()[1].strip()[:80] if len(str(e).splitlines()) > 1 else e}); "
                              "it is not a StyleGAN2(-ADA) generator") from None
    return G.eval(), G.init_kwargs


def convert_stylegan2(pkl: str | Path, out_dir: str | Path, key: str = "G_ema") -> Path:
    """Convert ``pkl[key]`` to ``out_dir/generator.safetensors`` + ``generator.json``; returns the .safetensors path."""
    from .stylegan2 import save_generator

    pkl = Path(pkl)
    data = read_official_pickle(pkl)
    rec = data.get(key) if isinstance(data, dict) else data
    if rec is None:
        keys = ", ".join(str(k) for k in data) if isinstance(data, dict) else ""
        raise CheckpointError(f"'{pkl}' has no '{key}' entry (it has: {keys}); pass --key to choose the network")
    G, _ = generator_from_record(rec, str(pkl))
    sha = hashlib.sha256(pkl.read_bytes()).hexdigest()
    return save_generator(Path(out_dir) / "generator", G,
                          {"source": {"file": pkl.name, "sha256": sha, "key": key, "converted_by": "midre convert"}})


def describe(G: torch.nn.Module) -> str:
    return (f"StyleGAN2 generator {G.img_resolution} px, z_dim {G.z_dim}, w_dim {G.w_dim}, num_ws {G.num_ws}, "
            f"{sum(p.numel() for p in G.parameters()) / 1e6:.2f} M parameters")

