"""`midre report DIR`: (re)write report.md + a self-contained report.html for a run directory."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write report.md and a self-contained report.html for a run directory",
        description="Render the run directory DIR (written by `midre run`) as report.md and a self-contained "
                    "report.html (inline CSS, images embedded): settings, the paper-style table per attack, the "
                    "privacy-utility scatter, reconstruction grids, the feature-space analysis and the a_e curve "
                    "when present. Figures go to DIR/figures/.")
    p.add_argument("dir", metavar="DIR", help="run directory (the --out of `midre run`)")
    p.add_argument("--max-identities", type=int, default=8, help="rows of each reconstruction grid (default 8)")
    p.add_argument("--title", default=None, help="report title (default: 'midre report: <dir name>')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ArgumentError
    from ..report import write_report

    if args.max_identities < 1:
        raise ArgumentError(f"--max-identities must be at least 1, got {args.max_identities}")
    from pathlib import Path

    if (Path(args.dir) / "audit.json").exists():   # its report carries the verdict and gates: audit renders it
        from ..errors import RunDirError

        raise RunDirError(f"'{args.dir}' holds a `midre audit`; re-run the same `midre audit` command to re-render "
                          "its report (finished stages are skipped)")
    from ..rundir import require_run_dir

    require_run_dir(Path(args.dir), "midre report")
    md, html = write_report(args.dir, max_identities=args.max_identities, title=args.title)
    print(f"wrote {md}\nwrote {html}")
    return 0
