"""`midre attack`: train/load the attack's priors on public data, invert the target, save reconstructions."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from .common import parse_kv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="run a model-inversion attack against a target checkpoint",
        description="Train or load the attack's priors on PUBLIC data (by default the public split of the "
                    "target's own dataset), attack the given identities of the target, and write "
                    "DIR/reconstructions.safetensors + .json for `midre evaluate DIR`.")
    p.add_argument("--target", required=True, help="target checkpoint (directory, .safetensors or .json)")
    p.add_argument("--attack", required=True,
                   help="an attack of `midre attacks`, e.g. gmi, kedmi, plgmi, ppa, mirror, secretgen")
    p.add_argument("--eval", default=None, help="evaluation-model checkpoint, recorded for `midre evaluate`")
    p.add_argument("--public", default=None,
                   help="public data for the priors as NAME[:ROOT], e.g. ffhq:/data/ffhq (default: the public "
                        "split of the target's dataset)")
    p.add_argument("--identities", default="0-49", help="classes to attack, e.g. 0-49 or 0,3,7-9 (default 0-49)")
    p.add_argument("--repeats", type=int, default=5, help="independent repeats (seeds) per identity (default 5)")
    p.add_argument("--out", required=True, help="output directory for the reconstructions")
    p.add_argument("--preset", default="quick", help="hyper-parameter preset of the attack and priors: "
                   "quick (32 px synthetic, CPU) or paper (64 px CelebA settings); default: quick")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", default=[],
                   help="attack hyper-parameter override, e.g. iterations=300 (repeatable)")
    p.add_argument("--prior-param", action="append", metavar="KIND.KEY=VALUE", default=[],
                   help="prior hyper-parameter override, e.g. gan.iterations=500 or stylegan2.path=DIR (a "
                        "generator converted with `midre convert stylegan2`) (repeatable)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive attack: apply the target defense's own eraser to candidates at every step; "
                        "against a Trap-MID target, plgmi becomes PLG-MI++ (trapdoor-signature loss)")
    p.add_argument("--prior-dir", default=None, help="prior cache directory (default: OUT/../priors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard logs to DIR (needs the 'tensorboard' extra)")
    p.set_defaults(func=run)


def _prior_configs(items: list[str]) -> dict[str, dict[str, Any]]:
    from ..errors import ArgumentError

    out: dict[str, dict[str, Any]] = {}
    for k, v in parse_kv(items, "prior-param").items():
        if "." not in k:
            raise ArgumentError(f"--prior-param '{k}' needs KIND.KEY=VALUE, e.g. gan.iterations=500")
        kind, key = k.split(".", 1)
        out.setdefault(kind, {})[key] = v
    return out


def is_attack_output(out: Path) -> bool:
    """An earlier `midre attack` output (its reconstructions.json is midre's; a killed one holds only .partial/)."""
    from ..attacks.base import RECON_FORMAT
    from ..rundir import record_format

    return record_format(out / "reconstructions.json") == RECON_FORMAT


def is_prior_cache(folder: Path) -> bool:
    """A prior cache: a finished prior (``<kind>-<key>/prior.json``) in it, or only ``<kind>-<key>/`` folders
    (a prior whose training was killed before it finished)."""
    from ..priors import PRIORS

    subs = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return any((p / "prior.json").is_file() for p in subs) or all(
        p.is_dir() and p.name.rsplit("-", 1)[0] in PRIORS and "-" in p.name for p in subs)


def check_outputs(args: argparse.Namespace) -> None:
    """--out and the prior cache must be new, empty or midre's own (nothing of the user's is written over)."""
    from ..rundir import check_out

    out = Path(args.out)
    check_out(out, "attack output", is_attack_output, hint=" (an earlier `midre attack --out` continues)")
    prior_dir = Path(args.prior_dir) if args.prior_dir else out.parent / "priors"
    check_out(prior_dir, "prior cache", is_prior_cache, flag="--prior-dir",
              hint="" if args.prior_dir else f" (default: the 'priors' folder beside --out, '{prior_dir}')")


def _load_target_dataset(meta: dict[str, Any]):
    from ..data import load_dataset
    from ..errors import CheckpointError

    ds = meta.get("dataset") or {}
    if not ds.get("name"):
        raise CheckpointError("the target checkpoint records no dataset; give the public data with --public NAME[:ROOT]")
    return load_dataset(ds["name"], root=ds.get("root"), resolution=ds.get("resolution") or meta.get("resolution"),
                        seed=int(ds.get("seed", 0)), **(ds.get("options") or {}))


def run(args: argparse.Namespace) -> int:
    from ..attacks import ATTACKS, adaptive_eraser_from_meta, build_attack
    from ..checkpoint import read_meta
    from ..errors import ArgumentError, CheckpointError, DataError, MidreError
    from ..loading import load_model
    from ..priors import assert_public_only
    from ..utils import parse_id_ranges, resolve_device

    progress = not args.no_progress
    # ---- validate everything up front (cheap checks first)
    ATTACKS.get(args.attack)
    check_outputs(args)
    if args.tensorboard:
        from .. import tblog
        tblog.require()
    if args.repeats < 1:
        raise ArgumentError(f"--repeats must be at least 1, got {args.repeats}")
    tmeta = read_meta(args.target)
    num_classes = int(tmeta["num_classes"])
    ids = parse_id_ranges(args.identities, num_classes)
    if args.eval is not None:
        emeta = read_meta(args.eval)
        if int(emeta["num_classes"]) != num_classes:
            raise CheckpointError(f"the evaluation model has {emeta['num_classes']} classes but the target has "
                                  f"{num_classes}; give an evaluation model trained on the same private identities")
    attack = build_attack(args.attack, preset=args.preset, **parse_kv(args.param, "param"))
    if attack.params.get("target_resolution") == 0:          # StyleGAN attacks: images at the target's size
        attack.params["target_resolution"] = int(tmeta["resolution"])
    prior_cfgs = _prior_configs(args.prior_param)
    device = resolve_device(args.device)
    eraser = adaptive_eraser_from_meta(tmeta) if args.adaptive else None
    target, tmeta = load_model(args.target, device=device)
    attack.check_target(target)       # e.g. DeepInversion refuses a target without BatchNorm, before any write

    # ---- public data (never the private split), unless the attack needs none
    source = _no_public_data(attack, eraser, prior_cfgs)
    if source is not None:
        return _attack(args, attack, target, tmeta, ids, eraser, None, source, prior_cfgs, device, progress)
    splits = None
    try:
        splits = _load_target_dataset(tmeta)
    except MidreError:
        if args.public is None:
            raise
    if splits is None and attack.needs_masked_private:
        raise DataError(f"attack '{attack.name}' needs the target's private images (masked): its dataset must load")
    if splits is not None and splits.num_classes != num_classes:
        raise CheckpointError(f"the target has {num_classes} classes but its dataset '{tmeta['dataset']['name']}' has "
                              f"{splits.num_classes} identities; use a checkpoint trained on this dataset")
    if args.public is not None:
        from ..data import load_dataset

        name, _, root = args.public.partition(":")
        pub_splits = load_dataset(name, root=root or None, resolution=int(tmeta["resolution"]), seed=args.seed)
        public = pub_splits.public if len(pub_splits.public) else pub_splits.private_train
        source = args.public
    else:
        public = splits.public
        source = f"public split of {tmeta['dataset']['name']}"
    if len(public) == 0:
        raise DataError(f"no public images in {source}; give public data with --public NAME[:ROOT]")
    public = public.to_tensors(progress=progress)
    if public.resolution != int(tmeta["resolution"]):
        raise DataError(f"public images are {public.resolution} px but the target takes {tmeta['resolution']} px; "
                        "give public data at the target's resolution")
    if splits is not None:
        assert_public_only(public, splits.private_train, splits.private_test)

    return _attack(args, attack, target, tmeta, ids, eraser, public, source, prior_cfgs, device, progress,
                   splits.private_train if splits is not None else None)


def _no_public_data(attack: Any, eraser: Any, prior_cfgs: dict[str, dict[str, Any]]) -> str | None:
    """The source label when the attack needs no public images, else None: an attack without a prior
    (DeepInversion), unless a trapdoor-aware eraser needs the images; priors that train nothing (a
    converted StyleGAN2)."""
    from ..priors import get_prior

    kinds = attack.prior_kinds
    if not kinds:
        return None if hasattr(eraser, "bind") else "none (no prior)"
    if all(not get_prior(k).uses_public_data(prior_cfgs.get(k, {})) for k in kinds):
        return "none (converted generator)"
    return None


def _attack(args, attack, target, tmeta, ids, eraser, public, source, prior_cfgs, device, progress,
            private=None) -> int:
    from ..attacks.masked import give_masked_private
    from ..errors import ArgumentError
    from ..priors import prepare_priors
    from ..utils import RunLock

    out = Path(args.out)
    prior_dir = Path(args.prior_dir) if args.prior_dir else out.parent / "priors"
    print(f"attack {attack.name} ({attack.access}, preset {args.preset}) on {tmeta['arch']} "
          f"[{tmeta.get('defense', {}).get('name', 'nodef')}] | {len(ids)} identities x {args.repeats} repeats | "
          f"priors {', '.join(attack.prior_kinds) or 'none'} from {source} "
          f"({len(public) if public is not None else 0} images) -> {prior_dir}",
          file=sys.stderr)
    from ..tblog import session
    if hasattr(eraser, "bind"):      # Trap-MID target: the trapdoor-aware attacker's signatures
        if public is None:
            raise ArgumentError("the trapdoor-aware attack needs public images for its auxiliary signatures")
        eraser.bind(target, public)
    with RunLock(out), session(args.tensorboard, base=out.parent):
        priors = prepare_priors(attack, public, target, out_dir=prior_dir, preset=args.preset, seed=args.seed,
                                progress=progress, device=device, configs=prior_cfgs)
        give_masked_private(attack, priors, private, ids)     # SecretGen: the hole's pixels zeroed, never given
        rec = attack.run(target, ids, args.repeats, priors, seed=args.seed, progress=progress,
                         adaptive_eraser=eraser, target_path=str(Path(args.target)), device=device,
                         resume_dir=out / ".partial")      # a killed attack continues from its finished chunks
        rec.meta.update({"eval": str(args.eval) if args.eval else None, "public": source,
                         "prior_dir": str(prior_dir), "target_meta": {k: tmeta.get(k) for k in
                                                                      ("arch", "defense", "test_acc", "dataset")}})
        rec.save(out)
        shutil.rmtree(out / ".partial", ignore_errors=True)
    print(f"{attack.name}: {len(rec)} reconstructions | target top-1 {rec.meta['target_top1']:.1f}% | "
          f"mean target confidence {rec.confidence.mean():.3f} | "
          f"{rec.meta['seconds']:.0f}s" + (f" | {rec.meta['queries']} queries" if rec.meta["queries"] else "")
          + f" -> {out}/reconstructions.safetensors")
    return 0
