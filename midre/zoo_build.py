"""``midre zoo build``: train the target-independent pieces of the zoo's configs and ship them.

It runs the pipeline's stages, so it sits above them; :mod:`midre.zoo` (manifest, lookup, install) stays below.

Each config in ``midre/zoo/zoo.yaml`` (or given with ``--config``) is run by the pipeline's own stage code
(:func:`midre.stages.build_instrument`; stage keys from :class:`midre.plan.RunPlan`), into a
resumable work directory, with the config's fixed seeds; each finished piece is copied into
``midre/zoo/weights/<entry>/`` and recorded in the manifest with its sha256, the config that made it (name +
resolved YAML) and its training figures.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import dump_yaml, load_config
from .errors import ConfigError, did_you_mean
from .priors import data_fingerprint, data_summary, get_prior
from .rundir import check_out, record_format, run_command
from .stages import RunContext, build_instrument, instrument_names
from .stages.models import stage_data
from .utils import RunLock
from .zoo import FORMAT, PACKAGE_ZOO, add_entry, zoo_dir

ZOO_YAML = PACKAGE_ZOO / "zoo.yaml"


def zoo_configs() -> list[str]:
    data = yaml.safe_load(ZOO_YAML.read_text(encoding="utf-8")) or {}
    return [str(c) for c in data.get("configs") or []]


def entry_name(config_name: str, stage: str, prior_units: dict[str, tuple] | None = None) -> str:
    """The zoo entry a stage of a config makes; a prior stage's is named by its kind (``prior_units``: the
    plan's prior stage -> (kind, target or None))."""
    if stage.startswith("backbones/"):
        return f"{config_name}-backbone-{stage.split('/', 1)[1]}"
    if stage == "eval":
        return f"{config_name}-eval"
    if stage in (prior_units or {}):
        kind, target = prior_units[stage]
        return get_prior(kind).zoo_entry(config_name, target)
    return f"{config_name}-prior-{stage.split('/', 1)[1]}"


def _pipeline(source: str, work: Path, progress: bool, device: str | None):
    cfg = load_config(source)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    if cfg.seeds:
        cfg = cfg.for_seed(cfg.run_seeds()[0])
    return cfg, RunContext(cfg, work, progress)


def _files(stage_dir: Path, stage: str) -> list[str]:
    if stage.startswith("priors/"):
        return sorted(p.relative_to(stage_dir).as_posix() for p in stage_dir.glob("*/prior.*")
                      if p.suffix in (".json", ".safetensors"))
    return ["model.safetensors", "model.json"]


def _figures(ctx: Any, stage: str, stage_dir: Path) -> dict[str, Any]:
    rec = ctx.state.stages.get(stage, {})
    figs = {k: rec[k] for k in ("test_acc", "train_acc", "pool_classes", "seconds", "peak_rss_mib") if k in rec}
    if stage.startswith("priors/"):
        pj = next(stage_dir.glob("*/prior.json"), None)
        if pj is not None:
            meta = json.loads(pj.read_text(encoding="utf-8"))
            figs["quality"] = meta.get("quality")
            figs["iterations"] = meta.get("config", {}).get("iterations")
    return figs


def _built_on(device: Any) -> str:
    import platform

    import torch

    dev = torch.device(device)
    what = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return f"{dev.type}: {what}, torch {torch.__version__}"


def check_folders(root_dir: Path, work_root: Path) -> None:
    """The zoo folder and the work folder must be new, empty or midre's own: a zoo (manifest.json) and a work
    folder of runs (one ``run.json`` per config); nothing of the user's is written over."""

    check_out(root_dir, "zoo", lambda d: record_format(d / "manifest.json") == FORMAT, flag="--zoo-dir",
              hint=" (an earlier zoo gets the new entries)")
    check_out(work_root, "zoo work folder", lambda d: all(
        p.is_dir() and (run_command(p / "run.json") == "run" or not any(p.iterdir()))
        for p in d.iterdir() if not p.name.startswith(".")),
        flag="--work", hint=" (an earlier `midre zoo build --work` resumes)")


def build(names: Sequence[str] = (), configs: Sequence[str] | None = None, root: str | os.PathLike | None = None,
          work_dir: str | os.PathLike | None = None, progress: bool = True, device: str | None = None
          ) -> list[str]:
    """Build the named entries (all of the configs' entries when none are named); returns the names built."""

    configs = list(configs) if configs else zoo_configs()
    if not configs:
        raise ConfigError("no zoo configs: list them in midre/zoo/zoo.yaml or pass --config CONFIG")
    root_dir = zoo_dir(root)
    work_root = Path(work_dir) if work_dir is not None else root_dir / ".build"
    check_folders(root_dir, work_root)
    plan: dict[str, tuple[str, str]] = {}
    for c in configs:
        cfg, ctx = _pipeline(c, work_root, False, device)
        cname = cfg.name
        for stage in instrument_names(ctx):
            plan[entry_name(cname, stage, ctx.plan.prior_units)] = (c, stage)
    for n in names:
        if n not in plan:
            raise ConfigError(f"unknown zoo entry '{n}'{did_you_mean(n, plan)}; the zoo configs make: {', '.join(plan)}")
    wanted = list(names) or list(plan)
    built = []
    for c in dict.fromkeys(plan[n][0] for n in wanted):
        cname = _pipeline(c, work_root, False, device)[0].name
        work = work_root / cname
        cfg, ctx = _pipeline(c, work, progress, device)
        stages = [plan[n][1] for n in wanted if plan[n][0] == c]
        deps = [f"backbones/{i[4:]}" for i in (cfg.eval_model.train.get("init"),) if "eval" in stages and i
                and i.startswith("zoo:")]
        order = [s for s in instrument_names(ctx) if s in stages or s in deps]
        with RunLock(work):
            build_instrument(ctx, order)
        for stage in stages:
            stage_dir = work / stage
            name = entry_name(cname, stage, ctx.plan.prior_units)
            add_entry(name, kind=stage.split("/")[0].rstrip("s"), stage=stage, key=ctx.keys[stage],
                      fingerprint=data_fingerprint(stage_data(ctx, stage)),
                      summary=data_summary(stage_data(ctx, stage)), src=stage_dir,
                      files=_files(stage_dir, stage), config=str(c), config_yaml=dump_yaml(cfg),
                      figures=_figures(ctx, stage, stage_dir), built_on=_built_on(ctx.device), root=root_dir)
            built.append(name)
    return built
