"""`midre userstudy make RUN_DIR` / `midre userstudy tally VOTES...`: the paper's user study (B.3)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("userstudy", help="build a human user-study page from a run and tally its votes",
                       description="The paper's user study (supp. B.3): raters see a private image and two "
                                   "reconstructions (two defenses, one attack, sides randomised) and answer "
                                   "A, B, neither or both.")
    ss = p.add_subparsers(dest="userstudy_command", metavar="make|tally")
    m = ss.add_parser("make", help="write study.html (offline, self-contained), key.json, pairs.csv and images/",
                      description="Build the study from a `midre run` directory.")
    m.add_argument("run_dir", metavar="RUN_DIR")
    m.add_argument("--attack", default=None, help="attack key in the run (default: the only one)")
    m.add_argument("--defenses", default=None, metavar="A,B",
                   help="two target names attacked by it (default: the only two)")
    m.add_argument("--max-identities", type=int, default=None, help="the first N shared identities (default all)")
    m.add_argument("--seed", type=int, default=0, help="seed of the left/right sides, image picks and pair order")
    m.add_argument("--base-url", default="", help="prefix of the image URLs in pairs.csv (where you host images/)")
    m.add_argument("--title", default=None)
    m.add_argument("--out", default=None, help="output directory (default RUN_DIR/userstudy/<attack>-<A>-vs-<B>)")
    m.set_defaults(func=run_make)
    t = ss.add_parser("tally", help="counts per defense (Tab. B.11/B.12), sign test and Fleiss' kappa",
                      description="Tally exported votes (the page's JSON files, or a crowd-sourcing results CSV "
                                  "with pair_id, answer and rater / WorkerId columns).")
    t.add_argument("votes", nargs="+", metavar="VOTES")
    t.add_argument("--key", default=None, help="the study's key.json (or its directory), written by `make`")
    t.add_argument("--json", default=None, metavar="FILE", help="also write the tally as JSON")
    t.set_defaults(func=run_tally)
    p.set_defaults(func=lambda args: p.error("choose 'make' or 'tally'"))


def run_make(args: argparse.Namespace) -> int:
    from ..userstudy import make_study

    defenses = [d.strip() for d in args.defenses.split(",")] if args.defenses else None
    out = make_study(args.run_dir, args.out, attack=args.attack, defenses=defenses,
                     max_identities=args.max_identities, seed=args.seed, base_url=args.base_url, title=args.title)
    key = json.loads((out / "key.json").read_text(encoding="utf-8"))
    print(f"user study: {len(key['pairs'])} pairs, attack {key['attack']}, {' vs '.join(key['defenses'])}",
          file=sys.stderr)
    print(f"page: {out / 'study.html'}\nkey (keep from raters): {out / 'key.json'}\ncrowd-sourcing CSV: {out / 'pairs.csv'}")
    return 0


def _check_json_out(path: Path) -> None:
    """--json may name a new file or an earlier tally, never a folder or a file of the user's (the votes)."""
    from ..errors import ArgumentError
    from ..rundir import record_format

    if path.is_dir():
        raise ArgumentError(f"--json '{path}' is a folder; give a file name, e.g. tally.json")
    if path.exists() and record_format(path, "study_id") is None:
        raise ArgumentError(f"--json '{path}' exists and is not a tally written by `midre userstudy tally`; "
                            "choose a new file name (it would be overwritten)")


def run_tally(args: argparse.Namespace) -> int:
    from ..userstudy import format_tally, tally
    from ..utils import atomic_write_json

    if args.json:
        _check_json_out(Path(args.json))
    t = tally(args.votes, key=args.key)
    if args.json:
        atomic_write_json(args.json, t)
    print(format_tally(t))
    return 0
