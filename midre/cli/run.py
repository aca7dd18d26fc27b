"""`midre run`: the whole pipeline from data to a privacy-utility report, resumable.

    midre run                                   # the embedded quickstart -> ./runs/quickstart
    midre run configs/study.yaml --out runs/study
    midre run paper/celeba --root /data/celeba --device cuda
    midre run --resume runs/quickstart          # continue an interrupted run with its own config
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole pipeline (data -> targets -> attacks -> report); resumable",
                       description="Train the evaluation model and the targets, train the priors on public data, "
                                   "attack every target, evaluate, and write results.csv + report.html. "
                                   "Without CONFIG: the embedded quickstart. Re-running into the same --out (or "
                                   "--resume DIR) continues where it stopped and reaches the same numbers.")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config path or built-in name (quickstart, study, baselines, ablations/..., paper/...); "
                        "default: quickstart")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR (with DIR/config.yaml unless CONFIG is given)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed (single-seed configs)")
    p.add_argument("--root", default=None, help="dataset root for real data (sets dataset.root)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key, e.g. --set targets.1.train.epochs=20 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    p.add_argument("--list", action="store_true", help="list the built-in configs and exit")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard logs to DIR (needs the 'tensorboard' extra; config key: "
                        "logging.tensorboard)")
    p.add_argument("--rule", default=None, metavar="FILE",
                   help="the experiment's decision rule (rules/NAME.yaml), recorded with its sha256 in RUN/rule.json "
                        "when the run starts (default: rules/<config name>.yaml if it exists here); "
                        "`midre analyze verdict RUN` applies it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import builtin_configs, load_config
    from ..distributed import world
    from ..errors import ArgumentError, RunDirError
    from ..pipeline import run_pipeline
    from .common import parse_kv

    if args.list:
        _print_builtin_configs(builtin_configs())
        return 0
    overrides = parse_kv(args.overrides, "set")
    if args.seed is not None:
        if args.seed < 0:
            raise ArgumentError(f"--seed must be a non-negative integer, got {args.seed}")
        overrides["seed"] = args.seed
    if args.root is not None:
        overrides["dataset.root"] = args.root
    if args.resume is not None:
        run_dir = Path(args.resume)
        if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
            raise ArgumentError("--resume DIR and --out name different directories; give only one of them")
        if not (run_dir / "run.json").exists():
            raise RunDirError(f"'{run_dir}' holds no midre run to resume (no run.json); start one with "
                              f"`midre run [CONFIG] --out {run_dir}`")
        source = args.config if args.config is not None else run_dir / "config.yaml"
        cfg = load_config(source, overrides)
    else:
        cfg = load_config(args.config if args.config is not None else "quickstart", overrides)
        run_dir = Path(args.out) if args.out is not None else Path("runs") / cfg.name
    if args.seed is not None and cfg.seeds:
        raise ArgumentError("--seed cannot override a multi-seed config (it has 'seeds'); edit the seeds list instead")
    from ..rules import default_rule_path, load_rule
    rule = Path(args.rule) if args.rule else default_rule_path(cfg.name)
    if rule is not None:
        load_rule(rule)          # a bad rule file is refused before anything is written
    from ..tblog import require, session
    if args.tensorboard or cfg.logging.tensorboard:
        require()
    progress = not args.no_progress and world().is_main
    if progress:
        print(f"midre run '{cfg.name}' -> {run_dir}", file=sys.stderr)
    with session(args.tensorboard if world().is_main else None, base=run_dir):   # rank 0 alone logs
        res = run_pipeline(cfg, run_dir, resume=True, progress=progress, device=args.device, rule=rule)
    if world().is_main:   # under torchrun, rank 0 alone reports
        print_summary(res, cfg)
    return 0


def print_summary(res, cfg) -> None:
    """The final results table (rich) and where the report is."""
    from rich.console import Console
    from rich.table import Table

    from ..results import fmt, fmt_pm

    console = Console() if sys.stdout.isatty() else Console(width=160)   # files / pipes: no truncation
    rows = res.rows
    if rows:
        multi = bool(cfg.seeds)
        t = Table(title=f"midre results: {cfg.name}" + (f" (mean ± std over seeds {', '.join(map(str, res.seeds))})"
                                                          if multi else f" (seed {cfg.seed})"))
        for col in ("target", "defense", "attack", "Acc %", "AttAcc top-1 %", "top-5 %", "KNN", "FID_eval", "Δ"):
            t.add_column(col, justify="left" if col in ("target", "defense", "attack") else "right",
                         no_wrap=col in ("target", "defense", "attack"))
        for r in rows:
            acc = fmt_pm(r.get("acc"), r.get("acc_std")) if multi else fmt(r.get("acc"))
            t.add_row(str(r.get("target", "")), str(r.get("defense", "")), str(r.get("attack", "")) or "—", acc,
                      fmt_pm(r.get("attack_top1"), r.get("attack_top1_std")),
                      fmt_pm(r.get("attack_top5"), r.get("attack_top5_std")), fmt(r.get("knn")),
                      fmt(r.get("fid_eval")), fmt(r.get("delta")))
        console.print(t)
    console.print(f"run directory: {res.run_dir}  ({res.seconds:.0f}s this session, peak memory "
                  f"{res.peak_rss_mib:.0f} MiB)")
    if res.results_csv is not None:
        console.print(f"results: {res.results_csv}")
    if res.report is not None:
        console.print(f"report: {res.report}")


def _print_builtin_configs(names: list[str]) -> None:
    """One block per built-in config: its name, description and expected time (fits 80 columns)."""
    import textwrap

    from ..config import builtin_config_summary

    for name in names:
        desc, when = builtin_config_summary(name)
        print(name)
        for label, text in (("", desc or "(no description)"), ("time: ", when or "not stated")):
            print(textwrap.fill(label + text, width=78, initial_indent="  ", subsequent_indent="    "))
