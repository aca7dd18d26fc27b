"""`midre zoo build [NAMES] | check | list`: the benchmark zoo (midre/zoo/, see docs/zoo.md)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="build, verify or list the benchmark zoo (pretrained backbones, evaluation "
                                   "model, public GAN priors)",
                       description="The zoo ships the target-independent pieces of the embedded benchmark as "
                                   "safetensors with a manifest (sha256, the config that made them, training "
                                   "figures). Runs use an entry when their config matches it, else train the piece "
                                   "themselves; nothing is downloaded.")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", parser_class=type(p))
    b = zsub.add_parser("build", help="train the zoo's pieces (fixed seed + config) and record them")
    b.add_argument("names", nargs="*", metavar="NAME", help="entries to build (default: every entry of the configs)")
    b.add_argument("--config", action="append", default=None, metavar="CONFIG",
                   help="config to build from (repeatable; default: the configs in midre/zoo/zoo.yaml)")
    b.add_argument("--work", default=None, metavar="DIR", help="resumable work directory, one sub-folder per config (default: <zoo>/.build)")
    b.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (overrides the config)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    c = zsub.add_parser("check", help="verify every shipped file against its sha256 in the manifest")
    ls = zsub.add_parser("list", help="list the zoo's entries with their figures")
    for q in (b, c, ls):
        q.add_argument("--zoo-dir", default=None, metavar="DIR",
                       help="the zoo to use (default: $MIDRE_ZOO_DIR or the one inside the package)")
    p.set_defaults(func=run, zoo_parser=p)


def run(args: argparse.Namespace) -> int:
    from .. import zoo

    if args.zoo_command is None:
        args.zoo_parser.print_help()
        return 2
    if args.zoo_command == "build":
        from ..zoo_build import build

        names = build(args.names, configs=args.config, root=args.zoo_dir, work_dir=args.work,
                      progress=not args.no_progress, device=args.device)
        print(f"built {len(names)} zoo entr{'y' if len(names) == 1 else 'ies'} in {zoo.zoo_dir(args.zoo_dir)}: "
              + ", ".join(names))
        return 0
    where = zoo.zoo_dir(args.zoo_dir)
    if not (where / "manifest.json").is_file() and (not where.is_dir() or any(where.iterdir())):
        raise zoo.ZooError(f"'{where}' holds no midre zoo (no manifest.json); give the --zoo-dir (or MIDRE_ZOO_DIR) "
                           "of a zoo made by `midre zoo build`")
    if args.zoo_command == "check":
        names = zoo.check(args.zoo_dir)
        print(f"zoo {zoo.zoo_dir(args.zoo_dir)}: {len(names)} entr{'y' if len(names) == 1 else 'ies'} verified "
              "(sha256 OK)")
        return 0
    entries = zoo.load_manifest(args.zoo_dir)["entries"]
    if not entries:
        print(f"zoo {zoo.zoo_dir(args.zoo_dir)}: no entries (build them with `midre zoo build`)")
    for name, e in entries.items():
        figs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in e.get("figures", {}).items() if not isinstance(v, dict))
        print(f"{name}\t{e.get('stage')}\t{e.get('bytes', 0) / 2**20:.1f} MiB\tconfig {e.get('config')}\t{figs}")
    return 0
