"""`midre train`: train a classifier (target or evaluation model) with or without a defense."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..data.base import in_memory
from .common import add_data_args, load_splits, parse_kv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier with or without a defense",
                       description="Train a face-identity classifier on the private split, optionally defended "
                                   "(e.g. --defense midre --area 0.4), and save a safe checkpoint.")
    add_data_args(p)
    p.add_argument("--arch", default="smallcnn", help="architecture (see `midre models`)")
    p.add_argument("--defense", default="nodef", help="defense name, or several joined by '+' (see `midre defenses`)")
    p.add_argument("--area", type=float, default=None, help="MIDRE's a_e: upper bound of the erased area fraction")
    p.add_argument("--defense-param", action="append", metavar="KEY=VALUE", default=[],
                   help="defense hyper-parameter, e.g. beta=0.003 (repeatable)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.05 for SGD, as the quickstart, 1e-3 for Adam)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["none", "multistep", "cosine"], default="cosine")
    p.add_argument("--milestones", type=int, nargs="*", default=[])
    p.add_argument("--no-hflip", action="store_true", help="disable the random horizontal flip")
    p.add_argument("--weights", default=None, help="LOCAL pretrained weights file (safetensors or .pt)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (lazy datasets)")
    p.add_argument("--out", default=None, help="output directory (default runs/train-<dataset>-<arch>-<defense>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard logs to DIR (needs the 'tensorboard' extra)")
    p.set_defaults(func=run)


def _defense_spec(args: argparse.Namespace):
    from ..defenses import build_defense

    params = parse_kv(args.defense_param, "defense-param")
    if args.area is not None:
        params["area"] = args.area
    names = [n.strip() for n in args.defense.split("+") if n.strip()]
    if not names:
        names = ["nodef"]
    if not params:
        return build_defense(names if len(names) > 1 else names[0])
    # parameters go to the members that accept them
    import inspect

    from ..defenses import DEFENSES
    from ..errors import ArgumentError

    specs, used = [], set()
    for n in names:
        accepted = set(inspect.signature(DEFENSES.get(n)).parameters)
        mine = {k: v for k, v in params.items() if k in accepted}
        used |= set(mine)
        specs.append({"name": n, **mine})
    unused = [k for k in params if k not in used]
    if unused:
        flag = "--area" if unused[0] == "area" else f"--defense-param {unused[0]}=..."
        raise ArgumentError(f"{flag} does not apply to defense '{args.defense}'; drop it or choose a defense that takes it")
    return build_defense(specs if len(specs) > 1 else specs[0])


TRAIN_FILES = frozenset({"model.safetensors", "model.json", "train_state.pt", "history.json"})


def is_training_output(out: Path) -> bool:
    """An earlier `midre train` output: its model.json is midre checkpoint metadata, or (killed before the
    first checkpoint was complete) it holds only training files, train_state.pt among them."""
    from ..checkpoint import FORMAT
    from ..rundir import record_format

    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    return record_format(out / "model.json") == FORMAT or (names <= TRAIN_FILES and "train_state.pt" in names)


def run(args: argparse.Namespace) -> int:
    from ..distributed import world
    from ..errors import ArgumentError
    from ..models import create_model
    from ..rundir import check_out
    from ..training import make_config, train_classifier
    from ..utils import RunLock, derive_seed, resolve_device, seed_everything

    ddp = world()   # under torchrun: join the process group; rank 0 alone locks, prints and writes
    progress = not args.no_progress and ddp.is_main
    if args.epochs is not None and args.epochs < 1:
        raise ArgumentError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1, got {args.batch_size}")
    resolve_device(args.device)   # a bad --device fails before any data is loaded
    if args.tensorboard:
        from .. import tblog
        tblog.require()
    defense = _defense_spec(args)
    cfg = make_config(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3),
                      weight_decay=args.weight_decay, schedule=args.schedule, milestones=args.milestones,
                      hflip=not args.no_hflip, device=args.device, seed=args.seed, num_workers=args.workers)
    out = Path(args.out or f"runs/train-{args.dataset}-{args.arch}-{defense.name}")
    check_out(out, "training output", is_training_output,
              hint=" (an earlier `midre train --out` of the same model resumes)")
    splits = load_splits(args, progress=progress)
    seed_everything(derive_seed(args.seed, "model"))   # same --seed -> same initial weights in every process
    model = create_model(args.arch, num_classes=splits.num_classes, resolution=splits.resolution, weights=args.weights)
    train_set = in_memory(splits.private_train, progress)
    test_set = in_memory(splits.private_test, progress)
    public = splits.public if len(splits.public) else None
    meta = {"dataset": {"name": splits.name, "root": args.root, "resolution": splits.resolution, "seed": args.seed,
                        "options": parse_kv(args.data_option, "data-option"), "info": splits.info},
            "class_names": list(splits.class_names)}
    print(f"{splits.summary()}", file=sys.stderr)
    print(f"training {args.arch} with defense {defense} for {cfg.epochs} epochs -> {out}", file=sys.stderr)
    from ..tblog import session
    with (RunLock(out) if ddp.is_main else contextlib.nullcontext()), \
            session(args.tensorboard if ddp.is_main else None, base=out.parent):
        for stale in (out.glob(".*.tmp") if ddp.is_main else ()):   # temp files of a killed earlier session (we hold the lock)
            stale.unlink(missing_ok=True)
        res = train_classifier(model, train_set, test_set, defense=defense, config=cfg, out_dir=out,
                               public_set=public, meta=meta, progress=progress, description=f"train {args.arch}")
    extra = "".join(f" | {k} {v:.3g}" if isinstance(v, float) else f" | {k} {v}" for k, v in res.defense_report.items())
    secs = sum(h.get("seconds", 0) for h in res.history)
    if not ddp.is_main:
        return 0
    print(f"natural accuracy {res.test_acc:.2f}% on {len(test_set)} test images | {args.arch} | defense {defense.name}"
          f"{extra} | {secs:.0f}s | {res.checkpoint}")
    return 0
