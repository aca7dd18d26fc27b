"""`midre results collect|render`: committed run summaries (results/NAME/) and the tables generated from them."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from . import MidreParser

    p = sub.add_parser("results", help="commit a run's summary (results/NAME/) and generate RESULTS.md's tables",
                       description="Numbers come from one place: `collect` writes a run's small summary under "
                                   "results/NAME/, `render` rewrites the generated tables of RESULTS.md, README.md "
                                   "and BENCHMARKS.md from those summaries.")
    rsub = p.add_subparsers(dest="results_command", metavar="COMMAND", parser_class=MidreParser)
    c = rsub.add_parser("collect", help="write (or extend, seed by seed) results/NAME/ from a run or study",
                        description="Write results/NAME/summary.json and one seed-<s>.json per seed (results tables, "
                                    "gates, training curves, stage times, per-identity records, the decision rule's "
                                    "record; frontier and verdict when they apply), without machine paths. Seeds "
                                    "already collected from another run of the same config are kept.")
    c.add_argument("run_dir", metavar="RUN", help="run or study directory of `midre run`")
    c.add_argument("name", metavar="NAME", help="summary name (usually the config's name)")
    c.add_argument("--into", default="results", metavar="DIR", help="folder of the summaries")
    c.set_defaults(func=run_collect)
    r = rsub.add_parser("render", help="rewrite the generated tables (<!-- midre:results NAME TABLE --> blocks)",
                        description="Rewrite every <!-- midre:results NAME TABLE --> ... <!-- /midre:results --> "
                                    "block of RESULTS.md, README.md, BENCHMARKS.md and docs/**/*.md from results/NAME/. With "
                                    "--check nothing is written and the command fails, naming each stale block.")
    r.add_argument("--root", default=".", help="the repository root holding the docs and results/")
    r.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is out of date")
    r.set_defaults(func=run_render)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.summary import FORMAT, collect
    from ..rundir import check_out, record_format

    dest = Path(args.into) / args.name
    check_out(dest, "run summary", lambda d: record_format(d / "summary.json") == FORMAT,
              flag="--into/NAME", hint=" (collecting into an earlier summary of the same config adds its seeds)")
    path = collect(args.run_dir, dest)
    print(f"wrote {path.parent}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from ..resultsdoc import render

    stale = render(args.root, check=args.check)
    if args.check and stale:
        for s in stale:
            print(f"out of date: {s}; run `midre results render`", file=sys.stderr)
        return 1
    print("generated tables are up to date" if args.check or not stale else
          "rewrote: " + ", ".join(stale))
    return 0
