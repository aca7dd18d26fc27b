"""Sweeps: a grid of pipelines, run in-process or on Ray, collected into one results table.

The grid lives in the config under ``sweep`` (ignored by a single ``midre run``)::

    sweep:
      grid:                                # dotted config keys -> values; the cartesian product is run
        targets.1.defense.area: [0.2, 0.4]
        seed: [0, 1]
      trials:                              # optional: extra explicit trials (override mappings)
        - {targets.1.defense.area: 0.8, seed: 0}
      num_cpus: 1                          # Ray resources of one trial (ignored by the local backend)
      num_gpus: 0                          # e.g. 1 -> one trial per GPU, spread over every node
      backend: local                       # default backend when --backend is not given

Trial ``k`` runs the pipeline (:func:`midre.pipeline.run_pipeline`) of the base config with its
overrides applied into ``DIR/trial-<k>/``; re-running the sweep resumes every unfinished trial and
skips finished ones.  ``DIR/sweep.json`` records the trials and their status; ``DIR/results.csv`` and
``DIR/results.json`` hold every trial's results rows plus a ``trial`` column and one column per grid key.

Backends: ``local`` runs the trials one after another in this process; ``ray`` submits one Ray core
task per trial with ``num_cpus`` / ``num_gpus`` resources, so a grid spreads over the GPUs of one or
many nodes (``address`` joins an existing cluster, e.g. ``ray://head:10001`` or ``auto``).  With a
multi-node cluster ``DIR`` should be on a shared filesystem for resuming; the results rows travel back
to the driver either way.  Every node needs midre installed (the trial function is imported from the
package, not shipped).  Ray is an optional extra: ``pip install midre[ray]``.
"""
from __future__ import annotations

import copy
import itertools
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load_config, raw_config, set_override
from .errors import ArgumentError, ConfigError, MidreError, RunDirError, did_you_mean
from .pipeline import run_pipeline
from .report import write_report
from .results import COLUMNS, load_results, write_results_table
from .rundir import check_out, record_format
from .utils import atomic_write_json, atomic_write_text, config_hash, make_progress, read_json

SWEEP_KEYS = ("grid", "trials", "num_cpus", "num_gpus", "backend")
BACKENDS = ("local", "ray")


@dataclass
class Trial:
    """One pipeline of a sweep: its index, the config overrides and its directory name."""

    index: int
    params: dict[str, Any]
    status: str = "pending"          # pending | done | failed
    error: str | None = None
    seconds: float | None = None

    @property
    def name(self) -> str:
        return f"trial-{self.index}"


@dataclass
class SweepSpec:
    trials: list[Trial]
    grid_keys: list[str]
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    backend: str = "local"
    base: dict = field(default_factory=dict)     # the raw base config (without 'sweep')


@dataclass
class SweepResult:
    out_dir: Path
    trials: list[Trial]
    rows: list[dict[str, Any]]
    results_csv: Path

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.status != "done"]


# ----------------------------------------------------------------------------------------- grid
def expand_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of ``{key: [values]}`` in the order the keys are given (last key fastest)."""
    if not isinstance(grid, dict):
        raise ConfigError("'sweep.grid' must be a mapping of dotted config keys to lists of values, "
                          "e.g. {seed: [0, 1]}")
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"'sweep.grid.{k}' must be a non-empty list of values, e.g. [0.2, 0.4]")
        values.append(v)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] if keys else []


def parse_sweep(raw: dict[str, Any]) -> SweepSpec:
    """Validate the ``sweep`` section of a raw config and build the trial list."""
    sw = raw.get("sweep")
    if not isinstance(sw, dict):
        raise ConfigError("this config has no 'sweep' section; add e.g. 'sweep: {grid: {seed: [0, 1]}}' "
                          "(see `midre sweep --help`)")
    unknown = [k for k in sw if k not in SWEEP_KEYS]
    if unknown:

        raise ConfigError(f"unknown key '{unknown[0]}' in 'sweep'{did_you_mean(unknown[0], SWEEP_KEYS)}; "
                          f"allowed keys: {', '.join(SWEEP_KEYS)}")
    combos = expand_grid(sw.get("grid") or {})
    extra = sw.get("trials") or []
    if not isinstance(extra, list) or not all(isinstance(t, dict) for t in extra):
        raise ConfigError("'sweep.trials' must be a list of override mappings, e.g. [{seed: 3}]")
    params = combos + [dict(t) for t in extra]
    if not params:
        raise ConfigError("'sweep' defines no trial; give 'sweep.grid' (e.g. {seed: [0, 1]}) or 'sweep.trials'")
    seen = set()
    for p in params:
        key = json.dumps(p, sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(f"sweep trial {p} appears twice; list each combination once")
        seen.add(key)
    keys: list[str] = []
    for p in params:
        for k in p:
            if k not in keys:
                keys.append(k)
    for res in ("num_cpus", "num_gpus"):
        v = sw.get(res, 1 if res == "num_cpus" else 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"'sweep.{res}' must be a non-negative number, got {v!r}")
    backend = sw.get("backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"'sweep.backend' is '{backend}'; use one of: {', '.join(BACKENDS)}")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    return SweepSpec(trials=[Trial(i, p) for i, p in enumerate(params)], grid_keys=keys,
                     num_cpus=float(sw.get("num_cpus", 1)), num_gpus=float(sw.get("num_gpus", 0)),
                     backend=backend, base=base)


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The raw config of one trial: the base with the trial's dotted overrides applied."""

    raw = copy.deepcopy(base)
    for k, v in params.items():
        set_override(raw, k, copy.deepcopy(v))
    return raw


# ----------------------------------------------------------------------------------------- one trial
def run_trial(raw_config: dict[str, Any], trial_dir: str, resume: bool = True, progress: bool = False,
              num_threads: int | None = None) -> dict[str, Any]:
    """Run (or resume) one trial's pipeline into ``trial_dir``; returns {'rows', 'seconds'}.

    Module-level so that Ray workers import it by reference from the installed midre package.
    """
    import torch


    if num_threads:
        torch.set_num_threads(max(1, int(num_threads)))
    t0 = time.time()
    cfg = load_config(raw_config)
    run_pipeline(cfg, Path(trial_dir), resume=resume, progress=progress)
    return {"rows": collect_trial_rows(Path(trial_dir)), "seconds": time.time() - t0}


def collect_trial_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Results rows of a trial directory (its results table, or its seed-<s>/ pipelines' tables)."""

    rows = load_results(trial_dir)
    if rows:
        return rows
    out = []
    for sd in sorted(trial_dir.glob("seed-*")):
        for r in load_results(sd):
            r.setdefault("seed", sd.name.split("-", 1)[1])
            out.append(r)
    return out


def _ray_trial(raw_config: dict[str, Any], trial_dir: str, resume: bool, num_threads: int,
               runner: Callable | None = None) -> dict[str, Any]:
    fn = runner or run_trial
    return fn(raw_config, trial_dir, resume, False, num_threads)


# ----------------------------------------------------------------------------------------- sweep
def _check_state(out_dir: Path, spec: SweepSpec) -> dict[str, dict]:
    """Previous trial states when ``out_dir`` holds the same sweep; error when it holds another."""
    p = out_dir / "sweep.json"
    if not p.exists():
        return {}
    try:
        old = read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"'{p}' is corrupt (not JSON); delete it to restart the sweep in '{out_dir}'") from None
    if old.get("base_hash") != config_hash(spec.base) or \
            [t.get("params") for t in old.get("trials", [])] != [json.loads(json.dumps(t.params, default=str))
                                                                  for t in spec.trials]:
        raise RunDirError(f"'{out_dir}' holds a different sweep (other config or grid); choose another --out "
                          "or delete that directory")
    return {t["name"]: t for t in old.get("trials", []) if isinstance(t, dict) and "name" in t}


def _write_state(out_dir: Path, spec: SweepSpec, backend: str) -> None:
    atomic_write_json(out_dir / "sweep.json", {
        "base_hash": config_hash(spec.base), "backend": backend, "grid_keys": spec.grid_keys,
        "num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
        "trials": [{"name": t.name, "index": t.index, "params": t.params, "status": t.status, "error": t.error,
                    "seconds": t.seconds} for t in spec.trials]})


def _write_table(out_dir: Path, spec: SweepSpec, rows_by_trial: dict[int, list[dict]]) -> tuple[list[dict], Path]:
    rows = []
    for t in spec.trials:
        for r in rows_by_trial.get(t.index, []):
            row = {"trial": t.name}
            for k in spec.grid_keys:
                v = t.params.get(k, "")
                row[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
            row.update({k: v for k, v in r.items() if k not in row})
            rows.append(row)
    cols = ["trial", *spec.grid_keys, *COLUMNS]
    path = out_dir / "results.csv"
    write_results_table(path, rows, cols)
    import math

    atomic_write_json(out_dir / "results.json", [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                  for k, v in r.items()} for r in rows])
    return rows, path


def _validate_trials(spec: SweepSpec, configs: dict[int, dict]) -> None:
    """Every trial's config is valid, before anything runs."""

    for t in spec.trials:
        try:
            load_config(configs[t.index])
        except MidreError as e:
            raise ConfigError(f"sweep trial {t.index} {t.params}: {e}") from None


def _finished_trials(spec: SweepSpec, old: dict[str, Any], out_dir: Path) -> tuple[dict[int, list[dict]], list[Trial]]:
    """Rows of the trials a previous run finished (with results on disk), and the trials still to run."""
    rows_by_trial: dict[int, list[dict]] = {}
    todo = []
    for t in spec.trials:
        prev = old.get(t.name)
        if prev and prev.get("status") == "done":
            rows = collect_trial_rows(out_dir / t.name)
            if rows:
                t.status, t.seconds = "done", prev.get("seconds")
                rows_by_trial[t.index] = rows
                continue
        todo.append(t)
    return rows_by_trial, todo


def _run_local_trial(fn: Callable, t: Trial, config: dict, out_dir: Path, resume: bool, finish: Callable) -> None:
    """One trial in this process; its failure is recorded, never raised (the other trials still run)."""
    try:
        out = fn(config, str(out_dir / t.name), resume, False, None)
        finish(t, out, None)
    except MidreError as e:
        finish(t, None, f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - one broken trial must not lose the others
        finish(t, None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")


def _write_sweep_report(out_dir: Path, spec: SweepSpec) -> None:
    report = spec.base.get("report") if isinstance(spec.base.get("report"), dict) else {}
    if not report.get("enabled", True):
        return

    write_report(out_dir, max_identities=int(report.get("max_identities", 8)),
                 title=report.get("title") or f"midre sweep: {spec.base.get('name', out_dir.name)} "
                                               f"({len(spec.trials)} trials)")


def run_sweep(config: Any, out_dir: str | Path, backend: str | None = None, address: str | None = None,
              resume: bool = True, progress: bool = True, runner: Callable | None = None,
              validate: bool = True) -> SweepResult:
    """Run every trial of a config's ``sweep`` grid and collect one results table.

    Args:
        config: YAML path / built-in name / raw mapping / RunConfig with a ``sweep`` section.
        out_dir: sweep directory (``trial-<k>/`` per trial, ``sweep.json``, ``results.csv``).
        backend: ``local`` or ``ray`` (default: ``sweep.backend`` of the config, else local).
        address: Ray cluster address to join (``auto``, ``ray://host:10001``); None starts a local Ray.
        resume: skip finished trials and resume unfinished ones (False: refuse a directory holding a sweep).
        progress: show a progress bar over trials.
        runner: ``fn(raw_config, trial_dir, resume, progress, num_threads) -> {'rows', 'seconds'}``
            (default :func:`run_trial`, the real pipeline).
        validate: validate every trial's config before running anything.

    Returns:
        SweepResult with the trials' status and the collected rows.  Failed trials are recorded in
        ``sweep.json`` with their error; the others still run and are collected.
    """
    raw = raw_config(config)
    spec = parse_sweep(raw)
    backend = backend or spec.backend
    if backend not in BACKENDS:
        raise ArgumentError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise ArgumentError("--address only applies to --backend ray; add --backend ray or drop --address")
    configs = {t.index: trial_config(spec.base, t.params) for t in spec.trials}
    if validate:
        _validate_trials(spec, configs)
    out_dir = Path(out_dir)
    check_out(out_dir, "sweep", lambda d: record_format(d / "sweep.json", "base_hash") is not None,
              hint=" (the --out of an earlier sweep of the same config resumes it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and (out_dir / "sweep.json").exists():
        raise RunDirError(f"'{out_dir}' already holds a sweep; re-run without --no-resume to continue it, or "
                          "choose a new --out")
    old = _check_state(out_dir, spec) if resume else {}
    import yaml

    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110))
    rows_by_trial, todo = _finished_trials(spec, old, out_dir) if resume else ({}, list(spec.trials))
    _write_state(out_dir, spec, backend)

    def finish(t: Trial, out: dict | None, err: str | None) -> None:
        if err is None and out is not None:
            t.status, t.error, t.seconds = "done", None, float(out.get("seconds", 0.0))
            rows_by_trial[t.index] = list(out.get("rows", []))
        else:
            t.status, t.error = "failed", err
        _write_state(out_dir, spec, backend)

    with make_progress(progress) as prog:
        task = prog.add_task(f"sweep ({backend})", total=len(spec.trials), status="",
                             completed=len(spec.trials) - len(todo))
        if backend == "local":
            fn = runner or run_trial
            for t in todo:
                prog.update(task, status=t.name)
                _run_local_trial(fn, t, configs[t.index], out_dir, resume, finish)
                prog.advance(task)
        else:
            _run_ray(spec, todo, configs, out_dir, address, resume, runner, finish, lambda: prog.advance(task))
    rows, path = _write_table(out_dir, spec, rows_by_trial)
    if rows:
        _write_sweep_report(out_dir, spec)
    return SweepResult(out_dir=out_dir, trials=spec.trials, rows=rows, results_csv=path)


def import_ray():
    """Import Ray lazily, with a one-line fix when it is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MidreError("the ray backend needs Ray, which is not installed; run `pip install midre[ray]` "
                         "or use --backend local") from None
    return ray


def _run_ray(spec: SweepSpec, todo: list[Trial], configs: dict[int, dict], out_dir: Path, address: str | None,
             resume: bool, runner: Callable | None, finish: Callable, advance: Callable) -> None:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"cluster at '{address}'" if address else "a local Ray instance"
            raise MidreError(f"cannot start or join {where} ({str(e).splitlines()[0][:120]}); check --address "
                             "or start one with `ray start --head`") from None
        started = True
    try:
        threads = max(1, int(spec.num_cpus)) if spec.num_cpus >= 1 else 1
        remote = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=0)(_ray_trial)
        total = ray.cluster_resources()
        if spec.num_gpus > 0 and total.get("GPU", 0) < spec.num_gpus:
            raise MidreError(f"each trial asks for {spec.num_gpus:g} GPU but the Ray cluster has "
                             f"{total.get('GPU', 0):g}; lower sweep.num_gpus or join a cluster with GPUs")
        if total.get("CPU", 0) < spec.num_cpus:
            raise MidreError(f"each trial asks for {spec.num_cpus:g} CPUs but the Ray cluster has "
                             f"{total.get('CPU', 0):g}; lower sweep.num_cpus")
        pending = {remote.remote(configs[t.index], str((out_dir / t.name).resolve()), resume, threads, runner): t
                   for t in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t = pending.pop(ref)
                try:
                    finish(t, ray.get(ref), None)
                except Exception as e:  # noqa: BLE001 - RayTaskError wraps the trial's exception
                    cause = getattr(e, "cause", None) or e
                    finish(t, None, f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300]}")
                advance()
    finally:
        if started:
            ray.shutdown()
