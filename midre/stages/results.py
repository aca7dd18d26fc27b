"""The closing stages of a run: the results table (one typed row per target x attack), the validity gates on
NoDef, the feature-space analysis and the report."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis import features as F
from ..checkpoint import read_meta
from ..config import RunConfig
from ..engine import Stage
from ..gates import check_gates, prior_quality_of_run
from ..metrics import tradeoff
from ..plan import RunPlan
from ..report import write_report
from ..results import COLUMNS, ResultRow, as_float, defense_name, write_results_table
from ..rundir import now
from ..utils import atomic_write_json, config_hash, derive_seed, seed_everything
from .context import RunContext


def report_stages(ctx: RunContext) -> list[Stage]:
    """results -> (features) -> report; each runs every time from the artefacts of the stages before."""
    metrics = tuple(f"metrics/{t.name}/{a.key}" for a in ctx.cfg.attacks for t in ctx.cfg.attack_targets(a))
    out = [Stage("results", lambda: write_results(ctx), f"results -> {ctx.run_dir / 'results.csv'}",
                 needs=tuple(f"targets/{t.name}" for t in ctx.targets) + metrics)]
    if ctx.cfg.analyses.features and ctx.cfg.attacks:   # before the report, which shows its figure
        out.append(Stage("analysis/features", lambda: feature_analysis(ctx), "feature-space analysis (paper 3.2)",
                         needs=("results",)))
    if ctx.cfg.report.enabled:
        out.append(Stage("report", lambda: write_run_report(ctx), "report", needs=("results",)))
    return out


def result_rows(ctx: RunContext) -> list[ResultRow]:
    """One row per target x attack (per target when the run has no attack), with the trade-off Δ against
    each target's reference NoDef."""

    cfg, plan = ctx.cfg, ctx.plan
    metas = {t.name: read_meta(ctx.run_dir / "targets" / t.name) for t in ctx.targets}
    rows: list[ResultRow] = []
    for a in cfg.attacks or [None]:
        targets = ctx.targets if a is None else cfg.attack_targets(a)
        metrics = {t.name: json.loads((ctx.run_dir / "attacks" / t.name / a.key / "metrics.json")
                                      .read_text(encoding="utf-8")) for t in targets} if a is not None else {}
        for t in targets:
            meta, spec = metas[t.name], plan.def_specs[t.name]
            rep = meta.get("defense_report") or {}
            nodef = t.reference or plan.nodef_default
            row = ResultRow.from_metrics(
                t.name, defense_name(spec), a.key if a is not None else "", metrics.get(t.name, {}),
                defense_params=json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True),
                acc=as_float(meta.get("test_acc")), epsilon=as_float(rep.get("epsilon")), seed=cfg.seed,
                repeats=a.repeats if a is not None else "",
                identities=len(ctx.data.ids[a.key]) if a is not None else "",
                dp_delta=rep.get("delta"), trapdoor_acc=rep.get("trapdoor_acc"),
                reference=nodef if nodef != t.name else "",
                target_top1=_target_top1(ctx.run_dir / "attacks" / t.name / a.key) if a is not None else None)
            if a is not None and nodef is not None and t.name != nodef and nodef in metrics:
                row.delta = tradeoff(as_float(metas[nodef].get("test_acc")), row.acc,
                                     as_float(metrics[nodef].get("attacc_top1")), row.attack_top1)
            rows.append(row)
    return rows


def _target_top1(attack_dir: Path) -> float | None:
    """The target's own top-1 on its reconstructions (did the attack reach the target?), as the attack recorded it
    in reconstructions.json (read like metrics.json beside it: the attack stage is done)."""
    v = json.loads((attack_dir / "reconstructions.json").read_text(encoding="utf-8")).get("target_top1")
    return None if v is None else as_float(v)


def write_results(ctx: RunContext) -> list[dict[str, Any]]:
    """RUN/results.csv, RUN/results.json and RUN/gates.json; the rows (as dicts) are kept in ``ctx.cache``."""

    cfg = ctx.cfg
    rows = [r.as_dict() for r in result_rows(ctx)]
    eval_meta = read_meta(ctx.run_dir / "eval")
    write_results_table(ctx.run_dir / "results.csv", rows, COLUMNS)
    gates = write_gates(ctx.run_dir, cfg, rows, as_float(eval_meta.get("test_acc")))
    atomic_write_json(ctx.run_dir / "results.json", {
        "format": "midre-results", "columns": COLUMNS, "rows": rows, "seed": cfg.seed, "name": cfg.name,
        "eval_model": {"arch": eval_meta.get("arch"), "acc": as_float(eval_meta.get("test_acc"))},
        "dataset": ctx.data.meta, "nodef_target": ctx.plan.nodef_default, "config_hash": cfg.hash(), "gates": gates})
    ctx.state.stages["results"] = {"key": config_hash(rows), "status": "done", "finished": now()}
    ctx.state.save()
    ctx.cache["rows"] = rows
    return rows


def write_gates(run_dir: Path, cfg: RunConfig, rows: Sequence[dict[str, Any]], eval_acc: float) -> dict | None:
    """Check the instrument on NoDef (midre.gates) and write RUN/gates.json; None when gates are disabled."""
    if not cfg.gates.enabled:
        return None

    plan = RunPlan(cfg)
    curve = set(plan.curve_targets)   # the NoDef curve's points are not the reference: not gated
    ungated = {a.key for a in cfg.attacks if not a.gated}   # reported beside the comparison
    gated_units: set[str] = set()      # prior units ("gan", "cgan-nodef") by the attacks that use them
    side_units: set[str] = set()
    for (akey, _t), names in plan.attack_priors.items():
        (side_units if akey in ungated else gated_units).update(p.split("/", 1)[1] for p in names.values())
    # only the priors this config's attacks use: a run continued from another's directory keeps its priors on disk
    used = [q for q in prior_quality_of_run(run_dir) if q["unit"] in gated_units | side_units]
    res = check_gates([r for r in rows if str(r.get("target")) not in curve], eval_acc, cfg.gates,
                      {a.key: a.name for a in cfg.attacks}, used, ungated=ungated,
                      ungated_priors=side_units - gated_units)
    atomic_write_json(run_dir / "gates.json", res)
    return res


def feature_analysis(ctx: RunContext) -> None:
    t0 = time.perf_counter()
    seed_everything(derive_seed(ctx.cfg.seed, "features"))
    F.feature_analysis(ctx.run_dir, splits=ctx.data.splits, seed=derive_seed(ctx.cfg.seed, "features"))
    ctx.state.stages["analysis/features"] = {"status": "done", "finished": now(),
                                             "seconds": round(time.perf_counter() - t0, 3)}
    ctx.state.save()


def write_run_report(ctx: RunContext) -> Path:
    t0 = time.perf_counter()
    cfg = ctx.cfg
    _md, html = write_report(ctx.run_dir, max_identities=cfg.report.max_identities, splits=ctx.data.splits,
                             title=cfg.report.title or f"midre report: {cfg.name} (seed {cfg.seed})")
    ctx.state.stages["report"] = {"status": "done", "finished": now(), "seconds": round(time.perf_counter() - t0, 3)}
    ctx.state.save()
    ctx.cache["report"] = Path(html)
    return Path(html)
