"""`midre audit`: the privacy report card of a model trained elsewhere (see midre/audit.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import parse_kv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="privacy report card of a model trained elsewhere",
        description="Attack YOUR model (a state dict of a registered architecture, or a TorchScript file) with "
                    "the model-inversion attacks that fit the access an attacker has, judge the reconstructions "
                    "with an independent evaluation model, and write OUT/report.md + report.html: validity "
                    "gates, attack accuracy with its interval, KNN distance, reconstructions beside their nearest "
                    "private image, a verdict, and the `midre train` command that retrains it with MIDRE.")
    p.add_argument("model", help="the model file: .pth/.pt (loaded with weights_only=True) or .safetensors state "
                                 "dict (give --arch), or a TorchScript archive (no --arch)")
    g = p.add_argument_group("the model")
    g.add_argument("--arch", default=None, help="architecture of the state dict (see `midre models`), e.g. resnet18")
    g.add_argument("--model-option", action="append", metavar="KEY=VALUE", default=[],
                   help="architecture option, e.g. small_stem=true (repeatable)")
    g.add_argument("--input-size", type=int, default=None, help="image size the model takes (default: --resolution)")
    g.add_argument("--mean", default="0.485,0.456,0.406", help="normalisation mean the model was trained with "
                   "(default ImageNet; 0,0,0 with --std 1,1,1 for raw [0,1] pixels)")
    g.add_argument("--std", default="0.229,0.224,0.225", help="normalisation std (default ImageNet)")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="the private training images: a folder with one sub-folder per "
                   "class, or a registered dataset name (see `midre datasets`)")
    g.add_argument("--classes", default=None, help="class folders in the order the model was trained with, "
                   "comma-separated (default: sorted folder names, as torchvision's ImageFolder)")
    g.add_argument("--root", default=None, help="root of a registered dataset")
    g.add_argument("--data-option", action="append", metavar="KEY=VALUE", default=[],
                   help="dataset option, e.g. test_fraction=0.2 (repeatable)")
    g.add_argument("--resolution", type=int, default=None, help="working resolution of data, priors and "
                   "reconstructions, a power of two (default: the dataset's, 64 for a folder)")
    g.add_argument("--public", default=None, help="public images for the priors (other people): a folder, "
                   "NAME:ROOT (e.g. ffhq:/data/ffhq) or a registered dataset (default: the data's own public part)")
    g = p.add_argument_group("attacks")
    g.add_argument("--access", default="white-box", help="what an attacker has: white-box, black-box "
                   "(probabilities) or label-only (default white-box)")
    g.add_argument("--attacks", default=None, help="comma-separated attacks (default: the two strongest that fit "
                   "the access)")
    g.add_argument("--identities", default=None, help="classes to attack, e.g. 0-9 (default: the first 50)")
    g.add_argument("--repeats", type=int, default=3, help="independent repeats per class (default 3)")
    g.add_argument("--preset", default="quick", help="budget of attacks and priors: quick (CPU) or paper")
    g.add_argument("--attack-param", action="append", metavar="ATTACK.KEY=VALUE", default=[],
                   help="attack hyper-parameter, e.g. gmi.iterations=300 (repeatable)")
    g.add_argument("--prior-param", action="append", metavar="KIND.KEY=VALUE", default=[],
                   help="prior hyper-parameter, e.g. gan.iterations=500 (repeatable)")
    g = p.add_argument_group("evaluation model and retraining advice")
    g.add_argument("--eval", default=None, help="a midre checkpoint of an evaluation model (default: train one on "
                   "the private data with another architecture)")
    g.add_argument("--eval-arch", default=None, help="architecture of the trained evaluation model "
                   "(default smallresnet; smallcnn when --arch is smallresnet)")
    g.add_argument("--eval-epochs", type=int, default=None, help="epochs of the evaluation model (default 20)")
    g.add_argument("--area", type=float, default=0.4, help="MIDRE's a_e for the retraining command (default 0.4)")
    g.add_argument("--train-epochs", type=int, default=50, help="epochs of the retraining cost estimate (default 50)")
    p.add_argument("--out", default=None, help="output directory (default runs/audit-<model file stem>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _floats(text: str, flag: str) -> tuple:
    from ..errors import ArgumentError

    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ArgumentError(f"{flag} '{text}' is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5") from None
    if len(vals) not in (1, 3):
        raise ArgumentError(f"{flag} needs 1 or 3 numbers, got {len(vals)}")
    return vals


def _nested(items: list[str], flag: str, what: str) -> dict:
    from ..errors import ArgumentError

    out: dict = {}
    for k, v in parse_kv(items, flag.lstrip("-")).items():
        if "." not in k:
            raise ArgumentError(f"{flag} '{k}' needs {what}.KEY=VALUE, e.g. {flag} gmi.iterations=300")
        head, key = k.split(".", 1)
        out.setdefault(head.lower(), {})[key] = v
    return out


def spec_from_args(args: argparse.Namespace):
    from ..audit import ACCESS_LEVELS, AuditSpec
    from ..errors import ArgumentError

    if args.access not in ACCESS_LEVELS:
        raise ArgumentError(f"unknown --access '{args.access}'; choose one of: {', '.join(ACCESS_LEVELS)}")
    for flag, v, low in (("--repeats", args.repeats, 1), ("--train-epochs", args.train_epochs, 1),
                         ("--eval-epochs", args.eval_epochs, 1), ("--input-size", args.input_size, 8)):
        if v is not None and v < low:
            raise ArgumentError(f"{flag} must be at least {low}, got {v}")
    if not 0 < args.area < 1:
        raise ArgumentError(f"--area (a_e) must be in (0, 1), got {args.area}")
    return AuditSpec(
        model=args.model, data=args.data, arch=args.arch, model_options=parse_kv(args.model_option, "model-option"),
        input_size=args.input_size, mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
        root=args.root, data_options=parse_kv(args.data_option, "data-option"),
        classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        resolution=args.resolution, public=args.public, access=args.access,
        attacks=[a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None,
        identities=args.identities, repeats=args.repeats, preset=args.preset,
        attack_params=_nested(args.attack_param, "--attack-param", "ATTACK"),
        prior_params=_nested(args.prior_param, "--prior-param", "KIND"), eval=args.eval, eval_arch=args.eval_arch,
        eval_train={"epochs": args.eval_epochs} if args.eval_epochs else {}, area=args.area,
        train_epochs=args.train_epochs, seed=args.seed, device=args.device)


def run(args: argparse.Namespace) -> int:
    from ..audit import run_audit
    from ..utils import resolve_device

    resolve_device(args.device)
    spec = spec_from_args(args)
    out = Path(args.out or f"runs/audit-{Path(args.model).stem}")
    res = run_audit(spec, out, progress=not args.no_progress)
    v = res.verdict
    from ..gates import failed_gates

    failed = failed_gates(res.gates)
    print(f"verdict: {v['level']}" + (f" | gates failed: {', '.join(failed)}" if failed else " | all gates passed")
          + f" | report {res.report}")
    if failed:
        print(f"midre: warning: gate(s) failed: {', '.join(failed)}; see the report", file=sys.stderr)
    return 0
