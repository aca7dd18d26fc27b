"""`midre sweep CONFIG --backend local|ray [--address ADDR] --out DIR`: a grid of pipelines, one table."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of pipelines (local or Ray) and collect one results table",
        description="Run every trial of the config's 'sweep' section (grid: {dotted.key: [values]}, trials: "
                    "[{...}], num_cpus, num_gpus) into DIR/trial-<k>/ and collect DIR/results.csv with one column "
                    "per grid key. Re-running resumes unfinished trials. --backend ray runs one Ray task per "
                    "trial with num_cpus/num_gpus resources (pip install midre[ray]); --address joins an "
                    "existing cluster.")
    p.add_argument("config", metavar="CONFIG", help="YAML config with a 'sweep' section (or a built-in name)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory")
    p.add_argument("--backend", choices=["local", "ray"], default=None,
                   help="local (in-process, sequential) or ray (default: sweep.backend of the config, else local)")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:10001); default: local Ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-config key for every trial (YAML value), e.g. --set device=cpu")
    p.add_argument("--no-resume", action="store_true",
                   help="refuse a DIR that already holds a sweep (default: resume it, skipping finished trials)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console

    from ..config import raw_config, set_override
    from ..errors import ArgumentError
    from ..sweep import run_sweep

    raw = raw_config(args.config)
    for item in args.overrides:
        if "=" not in item:
            raise ArgumentError(f"--set '{item}' must look like KEY=VALUE, e.g. --set device=cpu")
        k, v = item.split("=", 1)
        set_override(raw, k.strip(), yaml.safe_load(v))
    res = run_sweep(raw, args.out, backend=args.backend, address=args.address, resume=not args.no_resume,
                    progress=not args.no_progress)
    con = Console(stderr=True, highlight=False)
    done = sum(t.status == "done" for t in res.trials)
    con.print(f"{done}/{len(res.trials)} trials done; {len(res.rows)} rows -> {res.results_csv}")
    for t in res.failed:
        con.print(f"[red]{t.name} {t.params} failed:[/red] {(t.error or '').splitlines()[0]}")
    return 0 if not res.failed else 1
