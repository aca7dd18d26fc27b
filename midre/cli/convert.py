"""`midre convert stylegan2 FILE.pkl --out DIR`: official StyleGAN2(-ADA) pickle -> safe midre generator.

The pickle is read by a restricted unpickler that never runs code from the file (see
midre/models/stylegan2_convert.py); the output is DIR/generator.safetensors + DIR/generator.json.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert third-party weights into safe midre checkpoints",
                       description="Convert third-party weights into safe midre checkpoints (safetensors + JSON).")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=type(p))
    kinds.required = True
    k = kinds.add_parser("stylegan2", help="official StyleGAN2 / StyleGAN2-ADA network pickle (.pkl)",
                         description="Convert an official StyleGAN2(-ADA) .pkl without executing anything it contains.")
    k.add_argument("pkl", help="the official network pickle, e.g. ffhq.pkl")
    k.add_argument("--out", required=True, help="output directory (gets generator.safetensors + generator.json)")
    k.add_argument("--key", default="G_ema", help="which network of the pickle to convert (default: G_ema)")
    k.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..models.stylegan2 import GENERATOR_KIND, load_generator
    from ..models.stylegan2_convert import convert_stylegan2, describe
    from ..rundir import check_out, record_format

    check_out(Path(args.out), "converted generator",
              lambda d: record_format(d / "generator.json", "kind") == GENERATOR_KIND,
              hint=" (an earlier `midre convert --out` is overwritten)")
    path = convert_stylegan2(args.pkl, args.out, key=args.key)
    G, _ = load_generator(path)
    print(f"wrote {path} ({describe(G)})")
    return 0
