"""The run directory's record and housekeeping, shared by `midre run` (midre.pipeline) and `midre audit`.

``RUN/run.json`` (:class:`RunState`): the config hash, versions, every stage's status, key, seconds and peak
memory, and one entry per session (a resumed run adds a session).  Beside it: the stage console, the
crash-test hook, the clean-up of temp files a killed process left, and the check of ``--out`` (every command
that writes refuses a non-empty folder that is not its own earlier output: :func:`check_out`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import RunDirError
from .utils import atomic_write_json

RUN_FORMAT = "midre-run"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss; KiB on Linux, bytes on macOS) in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def now() -> str:
    """The current UTC time, ISO 8601 to the second (run.json's timestamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    from . import __version__

    return {"midre": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(), "platform": platform.platform()}


class StageConsole:
    """Stage lines on stderr (rich), quiet when progress is off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.console import Console

            self.c = Console(stderr=True, highlight=False)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.c.print(msg)


def crash_point(name: str) -> None:
    """Test hook: ``MIDRE_CRASH_AT=<prefix>`` SIGKILLs this process when a stage whose name starts with
    ``<prefix>`` begins (after run.json marks it running), e.g. ``targets``, ``priors``, ``attacks``,
    ``metrics``, ``results``, ``report``.  Used by tests/test_crash_resume.py; unset in normal use."""
    at = os.environ.get("MIDRE_CRASH_AT")
    if at and name.startswith(at):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temp files (``.<name>.<random>.tmp`` of :func:`midre.utils.atomic_path`) that a killed process
    left behind.  Called with the run lock held, so no live writer owns them; the real artefacts are
    never touched (an atomic write either replaced them whole or not at all)."""
    stale = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class RunState:
    """run.json: config hash, versions, per-stage status/key/seconds, sessions with peak memory."""

    def __init__(self, run_dir: Path, cfg: RunConfig, kind: str = "single"):
        self.path = run_dir / "run.json"
        self.run_dir = run_dir
        self.cfg = cfg
        self.kind = kind
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise RunDirError(f"'{self.path}' is corrupt; restore it or choose another --out") from None
            if not isinstance(self.data, dict) or self.data.get("format") != RUN_FORMAT:
                raise RunDirError(f"'{self.path}' is not a midre run record; choose another --out")
            if self.data.get("kind", "single") != kind:
                raise RunDirError(
                    f"run directory '{run_dir}' holds a {self.data.get('kind')} run but the config is a {kind} run "
                    "(seeds list vs single seed); use a new --out")
        else:
            self.data = {"format": RUN_FORMAT, "kind": kind, "command": getattr(cfg, "command", "run"),
                         "created": now(), "stages": {}, "sessions": []}
        self.session = {"id": len(self.data.get("sessions", [])) + 1, "started": now(),
                        "resumed": bool(self.data.get("sessions")), "status": "running"}
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("stages", {})

    def check_keys(self, keys: dict[str, str], resume_dir: Path | None = None) -> None:
        """Refuse a run dir whose recorded stages were made with other settings (metrics/ stages are re-derived)."""
        for name, key in keys.items():
            rec = self.stages.get(name)
            if not name.startswith("metrics/") and rec is not None and rec.get("key") != key:
                raise RunDirError(
                    f"run directory '{self.run_dir}' was made by an incompatible config (stage '{name}' used other "
                    f"settings); use a new --out, or `midre run --resume {resume_dir or self.run_dir}` to continue "
                    "with its own config")

    def is_done(self, name: str, key: str) -> bool:
        rec = self.stages.get(name)
        return rec is not None and rec.get("key") == key and rec.get("status") == "done"

    def start(self, name: str, key: str) -> None:
        rec = self.stages.setdefault(name, {})
        rec.update({"key": key, "status": "running", "started": now()})
        self.save()

    def done(self, name: str, key: str, seconds: float, **extra: Any) -> None:
        rec = self.stages.setdefault(name, {})
        rec.update({"key": key, "status": "done", "finished": now(), **extra})
        rec["seconds"] = round(float(rec.get("seconds_before", 0.0)) + seconds, 3)
        self.save()

    def run_stage(self, name: str, key: str, fn: Callable[[], Any], label: str, head: str, console: Any, *,
                  cpu_seconds: bool = True, note_memory: bool = True) -> dict | None:
        """Run ``fn`` unless stage ``name`` is done with ``key``: announce it, record its start, time it,
        mark it interrupted (and re-raise) on any exception, else record it done with the peak memory
        (and CPU seconds) plus the fields ``fn`` returns.  Returns those fields, None when skipped."""
        if self.is_done(name, key):
            console.print(f"[dim]{head} {label}: done earlier, skipped[/dim]")
            return None
        console.print(f"[bold cyan]{head}[/bold cyan] {label}")
        self.start(name, key)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            extra = fn() or {}
        except BaseException:
            self.interrupted(name, time.perf_counter() - t0)
            self.save(status="interrupted")
            raise
        secs = time.perf_counter() - t0
        cpu = {"cpu_seconds": round(time.process_time() - c0, 3)} if cpu_seconds else {}
        self.done(name, key, secs, peak_rss_mib=round(peak_rss_mib(), 1), **cpu, **extra)
        memory = f" (peak memory {peak_rss_mib():.0f} MiB)" if note_memory else ""
        console.print(f"[dim]    {name} finished in {secs:.1f}s{memory}[/dim]")
        return extra

    def interrupted(self, name: str, seconds: float) -> None:
        rec = self.stages.get(name)
        if rec is not None and rec.get("status") == "running":
            rec["seconds_before"] = round(float(rec.get("seconds_before", 0.0)) + seconds, 3)

    def save(self, status: str | None = None) -> None:
        d = self.data
        d["config_hash"] = self.cfg.hash()
        d["name"] = self.cfg.name
        d["seed"] = self.cfg.seed
        d["seeds"] = self.cfg.run_seeds()
        d["versions"] = versions()
        d["updated"] = now()
        sess = dict(self.session)
        sess["seconds"] = round(time.perf_counter() - self._t0, 3)
        sess["cpu_seconds"] = round(time.process_time() - self._c0, 3)   # all threads; vs. seconds: contention
        sess["peak_rss_mib"] = round(peak_rss_mib(), 1)
        if status:
            sess["status"] = status
        sessions = [s for s in d.get("sessions", []) if s.get("id") != sess["id"]]
        d["sessions"] = sessions + [sess]
        timings: dict[str, float] = {}
        for name, rec in self.stages.items():
            group = name.split("/")[0]
            timings[group] = round(timings.get(group, 0.0) + float(rec.get("seconds", 0.0) or 0.0), 3)
        d["timings"] = timings
        d["total_stage_seconds"] = round(sum(timings.values()), 3)
        d["peak_rss_mib"] = max(float(s.get("peak_rss_mib", 0.0)) for s in d["sessions"])
        atomic_write_json(self.path, d)


def prepare_dir(run_dir: Path, resume: bool, seeds: list[int] | None = None) -> None:
    """Refuse an --out that is a file, holds something else than a midre run, or (without resume) a run.
    A multi-seed run (``seeds``) may start in a directory holding only earlier single-seed runs as
    ``seed-<s>/`` (each with its run.json, ``s`` one of ``seeds``): it continues them by stage key."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"'{run_dir}' is a file; give a directory to --out")
    check_out(run_dir, "run", lambda d: (d / "run.json").exists() or bool(seeds) and all(
        _is_seed_run(p, seeds) for p in _entries(d)))
    if not (run_dir / "run.json").exists():
        return
    if run_command(run_dir / "run.json") == "audit":
        raise RunDirError(f"'{run_dir}' holds a midre audit, not a run; choose a new or empty --out")
    if not resume:
        raise RunDirError(f"'{run_dir}' already holds a run; continue it with `midre run --resume {run_dir}` "
                          "or choose a new --out")


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, less hidden entries (the run lock, temp files of a killed process)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def check_out(out: Path, what: str, is_ours: Callable[[Path], bool], flag: str = "--out", hint: str = "") -> None:
    """Refuse (one RunDirError line) an output folder that is a file or lies under one, or that is not empty
    and not an earlier output of the same command: ``is_ours(out)`` tells (e.g. its run.json, model.json or
    key.json is midre's).  A new or empty folder is fine.  Writes nothing; call it before any work.

    ``what`` names the command's output in the message ("training output"); ``hint`` is appended to it
    (how to continue one's own output)."""
    out = Path(out)
    for parent in (out, *out.parents):   # an --out under a regular file fails before any work
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"cannot use {flag} '{out}': '{parent}' is a file, not a directory; "
                                  f"choose another {flag}")
            break
    if not out.is_dir():
        return
    entries = _entries(out)
    if not entries or is_ours(out):
        return
    more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
    raise RunDirError(f"'{out}' is not empty and holds no midre {what} (it holds '{entries[0].name}'{more}); "
                      f"midre writes only into a new or empty folder or its own earlier output: choose a new or "
                      f"empty {flag}{hint}")


def record_format(path: Path, key: str = "format") -> str | None:
    """Field ``key`` of a JSON record, or None when the file is missing, unreadable, not JSON or not a mapping
    (tells a midre artefact from a user's file of the same name)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def run_command(run_json: Path) -> str | None:
    """The command that made a run.json ("run" or "audit"); None when it is not a midre run record.
    Records written before the field existed: an audit is the one with a "cost" stage."""
    if record_format(run_json) != RUN_FORMAT:
        return None
    data = json.loads(run_json.read_text(encoding="utf-8"))
    stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    return str(data.get("command") or ("audit" if "cost" in stages else "run"))


def require_run_dir(run_dir: Path, command: str) -> None:
    """Commands that write into a run's own folder (report, analyze) refuse one that holds no midre run,
    study or sweep (no run.json / sweep.json): the folder may be the user's own."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and not (run_dir / "run.json").is_file() and not (run_dir / "sweep.json").is_file():
        raise RunDirError(f"'{run_dir}' is not a midre run or sweep directory (no run.json or sweep.json); "
                          f"`{command}` writes only into the --out of `midre run` or `midre sweep`")


def _is_seed_run(p: Path, seeds: list[int]) -> bool:
    return p.is_dir() and p.name in {f"seed-{s}" for s in seeds} and (p / "run.json").exists()
