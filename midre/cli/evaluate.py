"""`midre evaluate DIR`: every metric of an attack's reconstructions -> table + DIR/metrics.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="measure an attack's reconstructions (Acc, AttAcc, KNN, FID_eval, trade-off)",
        description="Evaluate the reconstructions in DIR (written by `midre attack --out DIR`): natural accuracy "
                    "of the target, attack accuracy top-1/top-5 (mean ± std over repeats, bootstrap 95% CI) "
                    "under the evaluation model, KNN distance, FID_eval (evaluation-model features; Inception FID "
                    "only with --inception-weights) and, with --baseline, the trade-off Δ. Writes DIR/metrics.json.")
    p.add_argument("dir", metavar="DIR", help="attack output directory holding reconstructions.safetensors/.json")
    p.add_argument("--eval", dest="eval_ckpt", default=None, metavar="CKPT",
                   help="evaluation model checkpoint (default: the one recorded by the attack)")
    p.add_argument("--target", default=None, metavar="CKPT", help="target checkpoint (default: the one recorded by the attack)")
    p.add_argument("--root", default=None, help="local root of the real dataset (default: the one in the target's metadata)")
    p.add_argument("--baseline", default=None, metavar="METRICS_JSON",
                   help="metrics.json of the NoDef run under the same attack, for the trade-off Δ")
    p.add_argument("--no-fid", action="store_true", help="skip the FID")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="LOCAL torchvision Inception-v3 weights: report Inception FID instead of FID_eval")
    p.add_argument("--face-embedder", default=None, metavar="CKPT|dlib",
                   help="δ_face embedder: 'dlib' (the 'face' extra's ResNet face descriptor) or a midre classifier "
                        "checkpoint whose L2-normalised features serve as the embedder")
    p.add_argument("--topk", default="1,5", help="top-k attack accuracies to report (default 1,5)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of identities for the 95%% CI")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _resolve(path: str | None, run_dir: Path) -> Path | None:
    """A path as given, else relative to the run directory (artefacts may record relative paths)."""
    if not path:
        return None
    p = Path(path)
    if p.exists() or p.with_suffix(".json").exists():
        return p
    q = run_dir / p
    if q.exists() or q.with_suffix(".json").exists():
        return q
    return p


def _load_splits(meta: dict[str, Any], root: str | None):
    from ..data import load_dataset
    from ..errors import CheckpointError

    ds = meta.get("dataset")
    if not isinstance(ds, dict) or not ds.get("name"):
        raise CheckpointError("the target checkpoint does not record its dataset; re-train it with `midre train`")
    opts = dict(ds.get("options") or {})
    return load_dataset(ds["name"], root=root if root is not None else ds.get("root"),
                        resolution=ds.get("resolution", meta.get("resolution")), seed=int(ds.get("seed", 0)), **opts)


def _check_options(args: argparse.Namespace) -> tuple[int, ...]:
    """The numeric options, checked; returns the sorted top-k list."""
    from ..errors import ArgumentError

    try:
        topk = tuple(sorted({int(k) for k in str(args.topk).split(",") if k.strip()}))
    except ValueError:
        raise ArgumentError(f"--topk '{args.topk}' is not a list of integers; write e.g. 1,5") from None
    if not topk or 1 not in topk or min(topk) < 1:
        raise ArgumentError(f"--topk '{args.topk}' must include 1 and only positive integers; write e.g. 1,5")
    if args.n_boot < 0:
        raise ArgumentError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1, got {args.batch_size}")
    return topk


def _load_baseline(path: str) -> dict[str, Any]:
    """The NoDef metrics.json given by --baseline (a file or the directory holding it)."""
    from ..errors import ArgumentError
    from ..utils import read_json

    bpath = Path(path)
    if bpath.is_dir():
        bpath = bpath / "metrics.json"
    if not bpath.is_file():
        raise ArgumentError(f"baseline metrics '{bpath}' not found; give the metrics.json of the NoDef run")
    try:
        baseline = read_json(bpath)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArgumentError(f"baseline '{bpath}' is not JSON; give the metrics.json written by `midre evaluate`") from None
    if not isinstance(baseline, dict):
        raise ArgumentError(f"baseline '{bpath}' is not a metrics.json written by `midre evaluate`")
    return baseline


def _load_models(args: argparse.Namespace, run_dir: Path, recon: Any, device: Any) -> tuple:
    """The target and evaluation model of the reconstructions, checked against them and each other."""
    from ..errors import ArgumentError, CheckpointError
    from ..loading import load_model

    rmeta = recon.meta
    target_path = _resolve(args.target or rmeta.get("target"), run_dir)
    if target_path is None:
        raise ArgumentError("the reconstructions do not record their target; pass --target CKPT")
    eval_path = _resolve(args.eval_ckpt or rmeta.get("eval") or rmeta.get("eval_model"), run_dir)
    if eval_path is None:
        raise ArgumentError("no evaluation model: pass --eval CKPT (a classifier of another architecture trained "
                            "on the same private identities)")
    target, tmeta = load_model(target_path, device=device)
    eval_model, emeta = load_model(eval_path, device=device)
    if int(emeta["num_classes"]) != int(tmeta["num_classes"]):
        raise CheckpointError(f"the evaluation model has {emeta['num_classes']} classes but the target has "
                              f"{tmeta['num_classes']}; train the evaluation model on the same private identities")
    if int(recon.identity.max()) >= int(tmeta["num_classes"]) or int(recon.identity.min()) < 0:
        raise ArgumentError(f"the reconstructions attack identity {int(recon.identity.max())}, outside the target's "
                            f"{tmeta['num_classes']} classes; --target does not match these reconstructions")
    if recon.images.shape[1] != int(tmeta.get("channels", recon.images.shape[1])):
        raise ArgumentError(f"the reconstructions have {recon.images.shape[1]} channels but the target takes "
                            f"{tmeta['channels']}; --target does not match these reconstructions")
    t_ds, e_ds = (tmeta.get("dataset") or {}).get("name"), (emeta.get("dataset") or {}).get("name")
    if t_ds and e_ds and t_ds != e_ds:
        raise CheckpointError(f"the evaluation model was trained on '{e_ds}' but the target on '{t_ds}'; "
                              "train the evaluation model on the target's private identities")
    return target_path, target, tmeta, eval_path, eval_model, emeta


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..attacks.base import Reconstructions
    from ..data.base import in_memory
    from ..errors import ArgumentError, DataError
    from ..loading import load_model
    from ..metrics import evaluate_reconstructions, format_metrics_table
    from ..utils import atomic_write_json, resolve_device

    progress = not args.no_progress
    run_dir = Path(args.dir)
    if not run_dir.is_dir():
        raise ArgumentError(f"'{run_dir}' is not a directory; give the --out directory of `midre attack`")
    topk = _check_options(args)
    device = resolve_device(args.device)
    recon = Reconstructions.load(run_dir)
    rmeta = recon.meta
    baseline = _load_baseline(args.baseline) if args.baseline else None
    target_path, target, tmeta, eval_path, eval_model, emeta = _load_models(args, run_dir, recon, device)
    face = None
    if args.face_embedder == "dlib":
        face = "dlib"          # resolved by the metrics; unavailable -> delta_face None + a note
    elif args.face_embedder:
        face_model, _ = load_model(_resolve(args.face_embedder, run_dir), device=device)
        face = face_model.features

    splits = _load_splits(tmeta, args.root)
    if splits.num_classes != int(tmeta["num_classes"]):
        raise DataError(f"the dataset rebuilt from the target's metadata has {splits.num_classes} identities but the "
                        f"target has {tmeta['num_classes']}; pass the right --root")
    private_train = splits.private_train      # lazy: only the attacked identities' images are read
    private_test = in_memory(splits.private_test, progress)

    err = Console(stderr=True)
    if progress:
        err.print(f"evaluating {len(recon)} reconstructions ({rmeta.get('attack', '?')}) of "
                  f"{len(recon.identity.unique())} identities with {emeta['arch']} on {splits.summary()}")
    metrics = evaluate_reconstructions(
        recon, eval_model, private_train, private_test, target_model=target, fid=not args.no_fid,
        fid_extractor=args.inception_weights, face_embedder=face, baseline=baseline, topk=topk,
        n_boot=args.n_boot, seed=args.seed, batch_size=args.batch_size, device=device, progress=progress)
    from ..results import defense_name

    metrics.update({
        "defense": defense_name(tmeta.get("defense")),
        "target": str(target_path), "target_arch": tmeta["arch"],
        "eval": str(eval_path), "eval_arch": emeta["arch"],
        "target_test_acc_recorded": tmeta.get("test_acc"),
        "dataset": (tmeta.get("dataset") or {}).get("name"),
        "adaptive": rmeta.get("adaptive"),
        "topk": list(topk),
        "fid_extractor": ("inception-v3:" + str(args.inception_weights)) if args.inception_weights else
                         (None if args.no_fid else "eval-model-features"),
    })
    if metrics.get("fid_eval_note"):
        err.print(f"[yellow]FID_eval not computed: {metrics['fid_eval_note']}[/yellow]")
    elif metrics.get("fid_eval_rank_deficient"):
        err.print(f"[yellow]note: FID_eval from {metrics['fid_eval_n_fake']} reconstructions with "
                  f"{metrics['fid_eval_feature_dim']}-d features has singular covariances (biased; compare only "
                  "at equal sample sizes)[/yellow]")
    atomic_write_json(run_dir / "metrics.json", metrics)
    Console().print(format_metrics_table([metrics]))
    print(f"wrote {run_dir / 'metrics.json'}", file=sys.stderr)
    return 0
