"""Small shared helpers: seeding, devices, atomic writes, progress bars, identity ranges."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, RunDirError


# ----------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def derive_seed(seed: int, *keys: Any) -> int:
    """A stable child seed for a named sub-task (same inputs -> same seed on every machine)."""
    h = hashlib.sha256(json.dumps([int(seed), *[str(k) for k in keys]]).encode()).hexdigest()
    return int(h[:8], 16)


# ----------------------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; validates explicit names."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ArgumentError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device '{device}' requested but no CUDA GPU is available; use --device cpu or auto")
    return dev


@contextlib.contextmanager
def frozen(model: nn.Module, *others: nn.Module) -> Iterator[nn.Module]:
    """Modules in eval mode with parameters frozen (gradients flow to inputs / latents only); yields the
    first module.  Restores every module's mode and ``requires_grad`` flags on exit, also on error."""
    modules = [model, *others]
    saved = [(m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield model
    finally:
        for m, (training, flags) in zip(modules, saved):
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)
            m.train(training)


# ----------------------------------------------------------------------------------------- atomic IO
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path`` (atomic on POSIX).

    Nothing is left at ``path`` if the body raises; the temp file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create directory '{path.parent}': {e.strerror}; choose a writable --out") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as e:
        raise RunDirError(f"cannot write in '{path.parent}': {e.strerror}; choose a writable --out") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _new_file_mode())  # mkstemp makes 0600; a plain open() would honour the umask
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise RunDirError(f"cannot write '{path}': {e.strerror}; free space or choose another --out") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def _new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 less the process umask."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (used to detect incompatible run directories)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(model: nn.Module | None) -> str | None:
    """sha256 of a model's state dict (the cache key of per-target priors)."""
    if model is None:
        return None
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- models
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip wrappers (Opacus GradSampleModule, DataParallel / DDP, torch.compile) to the Classifier."""
    while True:
        inner = getattr(model, "_module", None) or getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module) and inner is not model:
            model = inner
        else:
            return model


# ----------------------------------------------------------------------------------------- run lock
class RunLock:
    """An exclusive lock on a run directory (fcntl advisory lock on ``DIR/.lock``).

    A second process that tries to use the same directory gets a clear RunDirError.  The OS drops the
    lock when the holder dies (SIGKILL included), so a crashed run never leaves a stale lock.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+")
        except OSError as e:
            raise RunDirError(f"cannot use run directory '{self.path.parent}': {e.strerror}; choose a writable --out") from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not self._holds_current_file():  # the previous holder removed it as we opened it
                raise BlockingIOError
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise RunDirError(
                f"run directory '{self.path.parent}' is in use by another midre process; wait for it or choose another --out"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def _holds_current_file(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self._fh is not None:
            self.path.unlink(missing_ok=True)  # a finished run leaves no lock file behind
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# ----------------------------------------------------------------------------------------- progress
def make_progress(enabled: bool = True, transient: bool = False):
    """A rich Progress with bar, counts, elapsed and ETA; disabled -> a no-op Progress."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=transient,
    )


# ----------------------------------------------------------------------------------------- parsing
def parse_id_ranges(spec: str | int | Sequence[int], num_classes: int | None = None) -> list[int]:
    """'0-49' / '0-4,7,9-10' / 12 / [1, 2] -> sorted unique ids, validated against num_classes."""
    if isinstance(spec, int):
        ids = [spec]
    elif isinstance(spec, str):
        ids = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
            if not m:
                raise ArgumentError(f"cannot parse identities '{spec}'; use a list like 0-49 or 0,3,7-9")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ArgumentError(f"identity range '{part}' is reversed; write it as low-high, e.g. 0-49")
            ids.extend(range(lo, hi + 1))
    else:
        ids = [int(i) for i in spec]
    if not ids:
        raise ArgumentError("no identities given; use a list like 0-49")
    bad = [i for i in ids if i < 0 or (num_classes is not None and i >= num_classes)]
    if bad:
        hi = f"0-{num_classes - 1}" if num_classes else "non-negative ids"
        raise ArgumentError(f"identity {bad[0]} is out of range; the target has {num_classes} classes, use {hi}")
    return sorted(set(ids))
