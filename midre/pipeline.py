"""The main job: data -> evaluation model -> targets -> priors -> attacks -> metrics -> results -> report.

:func:`run_pipeline` runs a validated :class:`midre.config.RunConfig` into a run directory::

    RUN/config.yaml                       the resolved config (what was run)
    RUN/run.json                          config hash, versions, stage status + keys, timings, peak memory
    RUN/eval/model.safetensors + .json    the evaluation model (another, stronger architecture)
    RUN/targets/<target>/model.*          one per target (nodef, midre-0.4, ...)
    RUN/priors/<kind>[-<target>]/...      GAN priors / augmented models, trained on PUBLIC data only
    RUN/attacks/<target>/<attack>/        reconstructions.safetensors + .json, metrics.json
    RUN/results.csv, RUN/results.json     one row per target x attack (COLUMNS)
    RUN/report.md, RUN/report.html, RUN/figures/   (midre.report)

A multi-seed config (``seeds: [0, 1, 2]``) runs one pipeline per seed into ``RUN/seed-<s>/`` and writes
an aggregated ``RUN/results.csv`` (mean over seeds; ``*_std`` columns = std across seeds) plus
``RUN/results_per_seed.csv``.

Resume: every stage writes its artefact atomically and records a *stage key* (a hash of everything the
stage depends on) in run.json before it starts.  A stage whose key is recorded as done is skipped; the
trainer continues mid-training from its per-epoch checkpoint; each stage is seeded with
``derive_seed(seed, stage, ...)`` and always reloads its inputs from disk, so an interrupted and
resumed run reaches exactly the numbers of an uninterrupted one (on CPU).  A run directory whose
recorded stage keys conflict with the config (e.g. other epochs for a target that exists) is refused;
adding targets or attacks to an existing run is allowed.  A :class:`midre.utils.RunLock` keeps two
processes out of one directory.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tblog
from .analysis.frontier import write_frontier
from .analysis.paired import write_paired
from .config import RunConfig, dump_yaml, load_config
from .distributed import world
from .engine import run_stages
from .errors import ConfigError
from .plan import RunPlan
from .report import write_report
from .results import (
    COLUMNS,
    STUDY_EXTRA_COLUMNS,
    aggregate_rows,
    as_float,
    write_results_table,
)
from .rules import check_rule, record_rule
from .rundir import (
    RunState,
    StageConsole,
    now,
    peak_rss_mib,
    prepare_dir,
    remove_stale_temps,
)
from .stages import RunContext, pipeline_stages
from .stages.data import load_data
from .stages.models import train_backbone, train_eval, train_target
from .stages.results import write_gates
from .utils import RunLock, atomic_write_json, atomic_write_text

STAGE_GROUPS = ("data", "eval", "targets", "priors", "attacks", "metrics", "results", "report")


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    results_csv: Path | None = None
    results_json: Path | None = None
    report: Path | None = None          # report.html when written
    complete: bool = False                 # False when stopped early (stop_after)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    seeds: list[int] = field(default_factory=list)


# ============================================================================ the pipeline
def run_pipeline(config: Any, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                 device: str | None = None, stop_after: str | None = None,
                 on_stage: Callable[[str], None] | None = None, rule: str | os.PathLike | None = None
                 ) -> PipelineResult:
    """Run (or continue) a whole pipeline into ``out_dir``.

    Parameters
    ----------
    config : a RunConfig, a mapping, a YAML path or a built-in config name.
    out_dir : the run directory (created; a RunLock keeps other processes out).
    resume : continue a run found in ``out_dir`` (default).  False refuses a non-empty run directory.
    progress : rich stage lines and progress bars on stderr.
    device : overrides ``config.device`` (auto / cpu / cuda:N); not part of the config hash.
    stop_after : stop after this stage group (one of STAGE_GROUPS), e.g. ``"targets"``.
    on_stage : called with each finished stage's name (``"targets/nodef"``) -- a hook for tests and UIs.
    rule : the experiment's decision rule file (midre.rules), recorded with its sha256 in RUN/rule.json when
        the run starts; a later start with a changed rule is refused.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    if stop_after is not None and stop_after not in STAGE_GROUPS:
        raise ConfigError(f"stop_after '{stop_after}' is not a stage; use one of: {', '.join(STAGE_GROUPS)}")
    run_dir = Path(out_dir)
    t0 = time.perf_counter()
    logs = tblog.from_config(cfg, run_dir)   # checks the extra before anything is written
    ungated = {a.key for a in cfg.attacks if not a.gated}
    if rule is not None:
        check_rule(Path(rule), cfg.name, ungated)   # likewise the rule file
    ddp = world()   # under torchrun: rank 0 runs the pipeline, the others join its training stages
    prepare_dir(run_dir, resume, cfg.seeds)
    ddp.barrier()
    if not ddp.is_main:
        return _train_worker(cfg, run_dir, ddp)
    with RunLock(run_dir), logs:
        if rule is not None:
            record_rule(run_dir, Path(rule), cfg.name, ungated)
        try:
            remove_stale_temps(run_dir)
            if cfg.seeds:
                res = _run_study(cfg, run_dir, progress, stop_after, on_stage)
            else:
                res = run_seed(cfg, run_dir, progress, stop_after, on_stage)
        finally:
            ddp.send(None)   # ranks > 0: no more training stages
    res.seconds = time.perf_counter() - t0
    res.peak_rss_mib = peak_rss_mib()
    return res


def run_seed(cfg: RunConfig, run_dir: Path, progress: bool = True, stop_after: str | None = None,
             on_stage: Callable[[str], None] | None = None) -> PipelineResult:
    """One seed's run: the stages of :func:`midre.stages.pipeline_stages` over ``run_dir``."""
    ctx = RunContext(cfg, run_dir, progress)
    state = ctx.open()
    state.check_keys(ctx.keys)
    state.save()                       # run.json first: a directory with any artefact has one
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    res = PipelineResult(run_dir=run_dir, seeds=[cfg.seed])
    try:
        complete = run_stages(pipeline_stages(ctx), state, ctx.console, stop_after=stop_after, on_stage=on_stage)
    except BaseException:              # Ctrl-C, a failing stage, ...: the record says so; re-run resumes
        state.save(status="interrupted")
        raise
    if "rows" in ctx.cache:
        res.rows = ctx.cache["rows"]
        res.results_csv, res.results_json = run_dir / "results.csv", run_dir / "results.json"
    res.report = ctx.cache.get("report")
    res.complete = complete
    state.data["complete"] = complete
    state.save(status="complete" if complete else "stopped")
    return res


def _train_worker(cfg: RunConfig, run_dir: Path, ddp: Any) -> PipelineResult:
    """Ranks > 0 under torchrun: train the stages rank 0 announces (eval / a target of a seed), in
    lock-step with it; rank 0 alone records run.json, skips finished stages and runs everything else."""
    contexts: dict[int, RunContext] = {}
    while (msg := ddp.receive()) is not None:
        seed, role, target = msg
        ctx = contexts.get(seed)
        if ctx is None:
            sub_cfg, sub = (cfg.for_seed(seed), run_dir / f"seed-{seed}") if cfg.seeds else (cfg, run_dir)
            ctx = contexts[seed] = RunContext(sub_cfg, sub, False)
            ctx.open(read_only=True)          # rank 0 owns run.json
            load_data(ctx)
        if role == "eval":
            train_eval(ctx)
        elif role == "backbone":
            train_backbone(ctx, target)
        else:
            train_target(ctx, ctx.target(target))
    return PipelineResult(run_dir=run_dir, seeds=cfg.run_seeds())


# ============================================================================ multi-seed study
def _run_study(cfg: RunConfig, run_dir: Path, progress: bool, stop_after: str | None,
               on_stage: Callable[[str], None] | None) -> PipelineResult:
    seeds = cfg.run_seeds()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(run_dir, cfg, kind="study")
    for s in seeds:   # an incompatible config is refused before config.yaml or run.json is rewritten
        sub = run_dir / f"seed-{s}"
        if (sub / "run.json").exists():
            RunState(sub, cfg.for_seed(s)).check_keys(RunPlan(cfg.for_seed(s)).keys, resume_dir=run_dir)
    state.save()
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    console = StageConsole(progress)
    res = PipelineResult(run_dir=run_dir, seeds=seeds)
    per_seed: list[dict[str, Any]] = []
    complete = True
    for s in seeds:
        console.print(f"[bold magenta]== seed {s} ({seeds.index(s) + 1}/{len(seeds)}) ==[/bold magenta]")
        sub = run_dir / f"seed-{s}"
        sub_cfg = cfg.for_seed(s)
        with RunLock(sub):
            r = run_seed(sub_cfg, sub, progress, stop_after, on_stage)
        state.stages[f"seed-{s}"] = {"status": "done" if r.complete else "stopped", "finished": now(),
                                     "seconds": (json.loads((sub / "run.json").read_text()).get("total_stage_seconds"))}
        state.save()
        complete = complete and r.complete
        per_seed.extend(r.rows)
    if stop_after in (None, "report", "results"):
        if per_seed:
            res.rows = _study_results(cfg, run_dir, seeds, per_seed)
            res.results_csv, res.results_json = run_dir / "results.csv", run_dir / "results.json"
        if stop_after is None and complete:
            res.report = _study_analyses(cfg, run_dir, console, bool(per_seed))
    res.complete = complete and stop_after is None
    state.data["complete"] = res.complete
    state.save(status="complete" if res.complete else "stopped")
    return res


def _study_results(cfg: RunConfig, run_dir: Path, seeds: list[int], per_seed: list[dict[str, Any]]) -> list[dict]:
    """The study's tables (mean ± std over seeds, and per seed), its gates and results.json."""
    rows = aggregate_rows(per_seed)
    write_results_table(run_dir / "results.csv", rows, COLUMNS + STUDY_EXTRA_COLUMNS)
    eval_accs = [as_float(json.loads((run_dir / f"seed-{s}" / "results.json").read_text()).get("eval_model", {})
                          .get("acc")) for s in seeds if (run_dir / f"seed-{s}" / "results.json").exists()]
    gates = write_gates(run_dir, cfg, rows, sum(eval_accs) / len(eval_accs) if eval_accs else float("nan"))
    write_results_table(run_dir / "results_per_seed.csv", per_seed, COLUMNS)
    atomic_write_json(run_dir / "results.json", {
        "format": "midre-results", "kind": "study", "columns": COLUMNS + STUDY_EXTRA_COLUMNS, "rows": rows,
        "per_seed": per_seed, "seeds": seeds, "name": cfg.name, "config_hash": cfg.hash(), "gates": gates,
        "aggregation": "mean over seeds; *_std and attack_top1_std/attack_top5_std = sample std across "
                       "seeds of the per-seed values; top1_ci = t-interval (95%) across seeds; "
                       "delta = trade-off of the seed means"})
    return rows


def _study_analyses(cfg: RunConfig, run_dir: Path, console: StageConsole, has_rows: bool) -> Path | None:
    """Paired differences and the frontier (when the study has defenses and a NoDef curve), then the report."""
    plan = RunPlan(cfg)
    if has_rows and len(cfg.targets) > 1 and cfg.attacks and plan.defense_references():
        console.print(f"paired differences -> {write_paired(run_dir)}")
        if plan.curve_targets:   # a NoDef curve: the privacy-utility frontier too
            console.print(f"privacy-utility frontier -> {write_frontier(run_dir)}")
    if not cfg.report.enabled:
        return None
    _md, html = write_report(run_dir, max_identities=cfg.report.max_identities,
                             title=cfg.report.title or f"midre study: {cfg.name} ({len(cfg.run_seeds())} seeds)")
    return Path(html)

