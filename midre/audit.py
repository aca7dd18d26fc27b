"""`midre audit`: the privacy report card of a classifier trained elsewhere.

Inputs: the user's model (a registered architecture + a state-dict file loaded safely, or a TorchScript
archive), the private images it was trained on (an image folder, one sub-folder per class, or a registered
dataset), public images for the attacks' priors, and the access an attacker would have.  The audit runs
the attacks that fit that access against the model, judges the reconstructions with an independent
evaluation model, and writes ``OUT/report.md`` + a self-contained ``OUT/report.html``::

    OUT/run.json, OUT/config.yaml        stage keys, timings, versions (midre.rundir.RunState); settings
    OUT/targets/<model>/model.json       what was measured of the user's model (not a midre checkpoint)
    OUT/eval/model.safetensors + .json   the evaluation model (trained here, another architecture) unless --eval
    OUT/priors/<kind>-<key>/             priors, trained on PUBLIC images only (cached)
    OUT/attacks/<model>/<attack>/        reconstructions + metrics.json
    OUT/cost.json                        measured forward/backward time -> the cost of retraining with MIDRE
    OUT/audit.json                       gates, verdict, retraining command (what the report shows first)
    OUT/results.csv|json, OUT/report.*   the tables and the report (midre.report)

Every stage records a key in run.json; re-running the same command skips the finished stages, training
and priors continue from their own checkpoints, and a directory made for another model or other settings
is refused.  Every random choice is derived from ``seed``.

Working resolution: data, priors and reconstructions live at ``resolution`` (a power of two, the GAN
priors need it); the user's model sees its own ``input_size`` (images are resized by the wrapper) and
its own normalisation (``mean`` / ``std``).  TorchScript models have no penultimate features midre can
read; their logits stand in where an attack asks for features (LOMMA's p_reg).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .attacks import ATTACKS, build_attack
from .attacks.base import Reconstructions
from .audit_report import write_audit_report
from .data import load_dataset
from .data.base import DATASETS, TensorImageSet
from .data.folders import PUBLIC_SETS, load_public
from .defenses.midre import eraser_for
from .engine import Stage, run_stages
from .errors import ArgumentError, CheckpointError, DataError, RunDirError
from .gates import check_audit, failed_gates
from .loading import load_model
from .metrics import evaluate_reconstructions, natural_accuracy, nearest_private
from .models import create_model
from .models.base import IMAGENET_MEAN, IMAGENET_STD, Classifier
from .models.weights import load_pretrained, read_state_dict
from .priors import PRIORS, assert_public_only, prepare_priors, prior_config
from .results import COLUMNS, ResultRow, as_float, write_results_table
from .rundir import RunState, StageConsole, check_out, remove_stale_temps, run_command
from .training import evaluate_accuracy, train_classifier
from .utils import (
    RunLock,
    atomic_write_json,
    atomic_write_text,
    config_hash,
    derive_seed,
    parse_id_ranges,
    read_json,
    resolve_device,
    seed_everything,
)

ACCESS_LEVELS = ("white-box", "black-box", "label-only")
_RANK = {"label-only": 0, "black-box": 1, "white-box": 2}
AUDIT_FORMAT = "midre-audit"


# ============================================================================ the settings
@dataclass
class AuditSpec:
    """Everything an audit depends on (its hash names the run; ``device`` is not part of it)."""

    model: str
    data: str
    arch: str | None = None                  # None: ``model`` is a TorchScript archive
    model_options: dict = field(default_factory=dict)
    input_size: int | None = None            # default: resolution
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    root: str | None = None                  # for a registered dataset
    data_options: dict = field(default_factory=dict)
    classes: list | None = None              # class order the model was trained with (folder names)
    resolution: int | None = None            # working resolution (power of two); default: the data's
    public: str | None = None
    access: str = "white-box"
    attacks: list | None = None              # default: the two strongest that fit the access
    identities: str | None = None            # default: the first 50 classes
    repeats: int = 3
    preset: str = "quick"
    attack_params: dict = field(default_factory=dict)   # {attack: {key: value}}
    prior_params: dict = field(default_factory=dict)    # {kind: {key: value}}
    eval: str | None = None                  # a midre checkpoint of an evaluation model
    eval_arch: str | None = None
    eval_train: dict = field(default_factory=dict)
    area: float = 0.4                           # the a_e the retraining command starts from
    train_epochs: int = 50                      # epochs of the retraining cost estimate
    seed: int = 0
    device: str = "auto"
    name: str = "audit"
    command = "audit"                           # not a field: marks run.json as an audit's (rundir.RunState)

    def hash(self) -> str:
        return config_hash({k: v for k, v in asdict(self).items() if k != "device"})

    def run_seeds(self) -> list[int]:
        return [self.seed]


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ============================================================================ attacks for an access level
def select_attacks(access: str, names: Sequence[str] | None) -> list[str]:
    """The attacks to run: ``names`` validated against ``access``, or the two strongest that fit it."""

    if access not in ACCESS_LEVELS:
        raise ArgumentError(f"unknown access level '{access}'; choose one of: {', '.join(ACCESS_LEVELS)}")
    fits = [n for n in ATTACKS.names() if _RANK[_attack_access(n)] <= _RANK[access]]
    if not names:   # the two strongest that fit: each attack class declares its ``strength`` (unranked last;
        # equal strengths, e.g. lokt and c2fmi at 35, by name, whatever order the registry lists them in)
        return sorted(fits, key=lambda n: (-(attack_strength(n) or float("-inf")), n))[:2]
    out = []
    for n in names:
        n = str(n).strip().lower()
        need = _attack_access(n)              # unknown name -> UnknownNameError with the choices
        if _RANK[need] > _RANK[access]:
            raise ArgumentError(f"attack '{n}' needs {need} access but the audit has {access} access; "
                                f"choose from: {', '.join(fits) or 'none'} (or raise --access)")
        if n not in out:
            out.append(n)
    return out


def attack_strength(name: str) -> float | None:
    """An attack's declared ``strength`` (its class attribute, via the registry); None when unranked."""

    v = ATTACKS.info(name).get("strength", getattr(ATTACKS.get(name), "strength", None))
    return None if v is None else float(v)


def _attack_access(name: str) -> str:
    cls = ATTACKS.get(name)
    access = getattr(cls, "access", None) or ATTACKS.info(name).get("access")
    if access not in _RANK:

        access = build_attack(name).access
    return access


# ============================================================================ the user's model
class _ScriptedLogits(nn.Module):
    """A TorchScript module as a midre backbone: normalised images -> logits."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist())


def load_user_model(spec: AuditSpec, num_classes: int, resolution: int) -> tuple[nn.Module, dict]:
    """The user's model as a midre Classifier (their normalisation and input size); checks that it fits
    ``num_classes``.  A state dict goes through :func:`midre.models.weights.load_pretrained` (safe)."""
    path = Path(spec.model).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model file '{path}' not found; give the .pth / .safetensors / TorchScript file")
    size = int(spec.input_size or resolution)
    if spec.arch is None:
        model = _load_torchscript(path, num_classes, size, spec)
    else:
        model = _load_state_dict_model(path, spec, num_classes, size)
    model.eval()
    info = {"arch": spec.arch or "torchscript", "file": str(path), "sha256_16": file_fingerprint(path),
            "input_size": size, "mean": list(spec.mean), "std": list(spec.std), "num_classes": num_classes,
            "model_options": dict(spec.model_options)}
    return model, info


def _load_state_dict_model(path: Path, spec: AuditSpec, num_classes: int, size: int) -> nn.Module:
    if _is_torchscript(path):
        raise CheckpointError(f"'{path}' is a TorchScript archive, not a state dict; drop --arch to audit it as "
                              "TorchScript")
    model = create_model(spec.arch, num_classes=num_classes, resolution=size, **spec.model_options)
    try:
        rep = load_pretrained(model, path)
    except CheckpointError as e:   # name the key as the user's file spells it (torchvision layout: no prefix)
        flat = not any(k.startswith(("backbone.", "head.")) for k in read_state_dict(path))
        raise CheckpointError(str(e).replace("'backbone.", "'") if flat else str(e)) from None
    if rep["head"] != "loaded":
        why = rep["head"].split(":", 1)[-1].strip()
        raise CheckpointError(f"the model in '{path}' does not match the private data's {num_classes} classes "
                              f"({why}); give the data the model was trained on, or its classes with --classes")
    _set_input(model, spec, size)
    return model


def _load_torchscript(path: Path, num_classes: int, size: int, spec: AuditSpec) -> nn.Module:
    if not _is_torchscript(path):
        raise CheckpointError(f"'{path}' is not a TorchScript archive; for a state dict give its architecture "
                              "with --arch (see `midre models`)")
    try:
        with warnings.catch_warnings():   # torch's notes on the archive would come before midre's one line
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any failure to read the archive is the user's file
        raise CheckpointError(f"cannot load TorchScript '{path}' ({type(e).__name__}); re-export it with "
                              "torch.jit.script(model).save(path)") from None
    model = Classifier(_ScriptedLogits(scripted), num_classes, num_classes, arch="torchscript", head=nn.Identity())
    _set_input(model, spec, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the user's scripted code may warn; the check's answer is midre's line
        try:
            out = model(torch.zeros(1, 3, size, size))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"TorchScript '{path}' fails on a {size} px image ({type(e).__name__}); "
                                  "set --input-size to the size it was trained at") from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise CheckpointError(f"the model in '{path}' has {out.shape[-1]} outputs but the private data has "
                              f"{num_classes} classes; give the data the model was trained on, or its classes "
                              "with --classes")
    return model


def _set_input(model: nn.Module, spec: AuditSpec, size: int) -> None:
    for name, vals in (("mean", spec.mean), ("std", spec.std)):
        if len(vals) not in (1, 3) or (name == "std" and any(v <= 0 for v in vals)):
            raise ArgumentError(f"--{name} must be 1 or 3 numbers" + (" > 0" if name == "std" else "")
                                + f", got {','.join(str(v) for v in vals)}")
        t = torch.tensor([float(v) for v in vals] * (3 // len(vals)), dtype=torch.float32).view(1, 3, 1, 1)
        setattr(model, name, t)
    model.input_resolution = size


# ============================================================================ data
@dataclass
class AuditData:
    train: Any                  # private split the evaluation model trains on
    test: Any                   # held-out private split (evaluation-model accuracy)
    private: Any                # every private image (the user's training data): KNN, nearest images
    public: Any
    class_names: list
    resolution: int
    meta: dict


def load_private(spec: AuditSpec, progress: bool = False):
    """The private splits (folder or registered dataset), in the model's class order."""

    path = Path(spec.data).expanduser()
    if path.is_dir():
        opts = dict(spec.data_options)
        if spec.classes:
            opts["private_classes"] = list(spec.classes)
        splits = load_dataset("imagefolder", root=str(path), resolution=spec.resolution, seed=spec.seed, **opts)
        meta = {"name": "imagefolder", "root": str(path.resolve()), "options": opts}
    elif spec.data in DATASETS:
        splits = load_dataset(spec.data, root=spec.root, resolution=spec.resolution, seed=spec.seed,
                              **spec.data_options)
        meta = {"name": spec.data, "root": spec.root, "options": dict(spec.data_options)}
    else:
        raise DataError(f"private data '{spec.data}' is neither an existing folder nor a registered dataset; give a "
                        f"folder with one sub-folder per class, or one of: {', '.join(DATASETS.names())}")
    meta.update({"resolution": splits.resolution, "seed": spec.seed})
    return splits, meta


def _reorder(imageset: Any, perm: torch.Tensor):
    ts = imageset.to_tensors()
    return TensorImageSet(ts.images, perm[ts.targets])


def prepare_data(spec: AuditSpec, progress: bool = False) -> AuditData:
    splits, meta = load_private(spec, progress)
    _check_resolution(splits.resolution)
    names = list(splits.class_names)
    perm = torch.arange(len(names))
    if spec.classes:   # the loader keeps folder-name order; relabel to the order the model was trained with
        order = [str(c) for c in spec.classes]
        if len(set(order)) != len(order):
            raise ArgumentError("--classes lists a class twice; give each class folder once, in training order")
        if set(order) != set(names):
            odd = next(iter(set(order) ^ set(names)))
            raise ArgumentError(f"--classes does not match the data's classes (e.g. '{odd}'); list exactly the "
                                "classes the model was trained on")
        perm = torch.tensor([order.index(n) for n in names])
        names = order
    train = _reorder(splits.private_train, perm)
    test = _reorder(splits.private_test, perm) if len(splits.private_test) else None
    parts = [train] + ([test] if test is not None else [])
    private = TensorImageSet(torch.cat([p.images for p in parts]), torch.cat([p.targets for p in parts]))
    public = load_public_images(spec, splits, splits.resolution).to_tensors(progress=progress)
    assert_public_only(public, private)
    meta["class_names"] = names
    return AuditData(train, test, private, public, names, splits.resolution, meta)


def _check_resolution(res: int) -> None:
    if res < 8 or res & (res - 1):
        raise ArgumentError(f"--resolution {res} is not a power of two; the attacks' GAN priors generate 2^k px "
                            "images (e.g. --resolution 32 or 64); the model still sees its own --input-size")


def load_public_images(spec: AuditSpec, splits: Any, resolution: int):
    """``--public``: a folder (any images, recursive), NAME:ROOT of a public set, or a registered dataset
    whose public split (or else its private train split) is used; default: the private data's own public part."""

    p = spec.public
    if p is None:
        if len(splits.public):
            return splits.public
        raise DataError("no public data for the attacks' priors: give --public FOLDER (images of OTHER people, "
                        "e.g. FFHQ) or --public NAME:ROOT (see `midre datasets`)")
    path = Path(p).expanduser()
    if path.is_dir():
        return load_public("images", root=str(path), resolution=resolution, seed=spec.seed)
    name = p.split(":", 1)[0]
    if ":" in p or name in PUBLIC_SETS:
        return load_public(p, resolution=resolution, seed=spec.seed)
    if name in DATASETS:
        s = load_dataset(name, resolution=resolution, seed=spec.seed)
        return s.public if len(s.public) else s.private_train
    raise DataError(f"public data '{p}' not found: no such folder and no registered set of that name; give "
                    "--public FOLDER or --public NAME:ROOT")


# ============================================================================ cost of retraining
def measure_step(model: nn.Module, images: torch.Tensor, area: float, device: torch.device,
                 reps: int = 3) -> dict[str, Any]:
    """Seconds per image of one MIDRE training step (eraser + forward + backward) of the user's model on a
    batch of their images; weights, buffers and modes are restored afterwards."""

    eraser = eraser_for({"name": "midre", "area": area}).to(device)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x = images.to(device)
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    times = []
    try:
        for i in range(reps + 1):
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(eraser(x)), y)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:                             # the first step warms up
                times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        model.load_state_dict(saved)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.eval()
    per_batch = sorted(times)[len(times) // 2]
    return {"batch": len(x), "seconds_per_batch": per_batch, "seconds_per_image": per_batch / len(x),
            "device": str(device), "threads": torch.get_num_threads()}


# ============================================================================ gates and verdict
def verdict(rows: Sequence[dict], gates: dict, num_classes: int, access: str) -> dict:
    """A plain-language verdict from the strongest attack's top-1 attack accuracy and its 95 % interval
    (``gates``: the audit's gates record, midre.gates.check_audit)."""

    chance = 100.0 / num_classes
    failed = failed_gates(gates)
    scored = [r for r in rows if r.get("attack_top1") is not None and not math.isnan(r["attack_top1"])]
    if not scored:
        return {"level": "inconclusive", "text": "No attack produced a measurable result.", "chance": chance}
    best = max(scored, key=lambda r: r["attack_top1"])
    lo = best.get("top1_ci_lo")
    lo = best["attack_top1"] if lo is None or (isinstance(lo, float) and math.isnan(lo)) else lo
    top1 = best["attack_top1"]
    fact = (f"With {access} access, {best['attack']} reconstructs images that an independent evaluation model "
            f"recognises as the attacked class {top1:.1f}% of the time (95% CI {lo:.1f}"
            f"–{best.get('top1_ci_hi', top1):.1f}%; chance is {chance:.1f}%).")
    if failed:
        level = "inconclusive"
        text = (f"The gate(s) {', '.join(failed)} failed, so the attack numbers cannot be read as privacy. {fact} "
                "Fix the failed gates and re-run.")
    elif lo > chance and top1 >= 50:
        level, text = "high leakage", (f"{fact} Your model's outputs let an attacker synthesise images that "
                                       "another model takes for each class; judge below how much a person would "
                                       "recognise in them.")
    elif lo > chance and top1 >= 20:
        level, text = "moderate leakage", fact
    elif lo > chance:
        level, text = "low leakage", f"{fact} The leak is small but above chance."
    else:
        level, text = "no leakage measured", f"{fact} A stronger budget (--preset paper) can only find more."
    return {"level": level, "text": text, "chance": chance, "best_attack": best["attack"], "top1": top1}


def retrain_advice(spec: AuditSpec, data: AuditData, info: dict, cost: dict, target_name: str) -> dict:
    """The `midre train` command that retrains the model with MIDRE, the a_e to start from and its cost."""
    n_train = len(data.train)      # `midre train` keeps the same held-out share as this audit
    secs = cost["seconds_per_image"] * n_train * spec.train_epochs
    area = spec.area
    why = (f"a_e = {area:g}: the paper uses 0.4 for every 64 px setup and 0.4 or 0.8 at 224 px; "
           "start there, raise it (0.8) if a new audit still shows high leakage, lower it if accuracy drops too much.")
    out = {"area": area, "why_area": why, "epochs": spec.train_epochs, "train_images": n_train,
           "seconds": secs, "cost": cost, "command": None, "notes": []}
    if spec.arch is None:
        out["notes"].append("TorchScript models have no midre architecture name: add MIDRE's eraser to your own "
                            f"training loop instead (`from midre.erasing import BatchRandomErasing; "
                            f"erase = BatchRandomErasing(area={area:g})`, applied to every [0, 1] training batch "
                            "before normalisation), or rebuild the model from a registered architecture.")
        return out
    out["command"] = _train_command(spec, data, info, target_name)
    if spec.model_options:
        out["notes"].append("`midre train` builds the architecture with its default options; your model used "
                            f"{spec.model_options}, which the command cannot set.")
    if spec.classes and list(spec.classes) != sorted(spec.classes):
        out["notes"].append("`midre train` orders classes by folder name, not by your --classes order.")
    return out


def _train_command(spec: AuditSpec, data: AuditData, info: dict, target_name: str) -> str:
    import shlex

    d = data.meta
    parts = ["midre", "train", "--dataset", d["name"]]
    if d.get("root"):
        parts += ["--root", str(d["root"])]
    parts += ["--resolution", str(info["input_size"])]
    for k, v in (d.get("options") or {}).items():
        val = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v
        parts += ["--data-option", f"{k}={val}"]
    parts += ["--arch", str(spec.arch), "--defense", "midre", "--area", f"{spec.area:g}", "--epochs",
              str(spec.train_epochs), "--seed", str(spec.seed), "--out", f"runs/{target_name}-midre"]
    return " ".join(shlex.quote(p) for p in parts)


# ============================================================================ the run
@dataclass
class AuditResult:
    out_dir: Path
    report: Path | None
    verdict: dict
    gates: dict          # the gates record (midre.gates.check_audit), also in OUT/gates.json
    rows: list


def run_audit(spec: AuditSpec, out_dir: str | Path, progress: bool = True) -> AuditResult:
    """Run (or continue) an audit into ``out_dir``; see the module docstring."""

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"'{out}' is a file; give a directory to --out")
    check_out(out, "audit", lambda d: run_command(d / "run.json") == "audit",
              hint=" (the --out of an earlier audit of the same model continues it)")
    ctx = prepare_audit(spec, out, progress)     # every check that needs no writing: bad input leaves no trace
    with RunLock(out):
        remove_stale_temps(out)
        out.mkdir(parents=True, exist_ok=True)
        ctx.state = state = RunState(out, spec)
        other = [k for k in state.stages if k.startswith("targets/") and k not in ctx.keys]
        if other:
            raise RunDirError(f"'{out}' holds an audit of another model ({other[0][8:]}); use a new --out")
        state.check_keys({k: v for k, v in ctx.keys.items() if not k.startswith("metrics/")})
        state.save()
        _write_config(out, spec, ctx.data, ctx.attacks, ctx.ids)
        run_stages(audit_stages(ctx), state, ctx.console, measure=False)
        state.data["complete"] = True
        state.save(status="complete")
        return ctx.result


@dataclass
class AuditContext:
    """One audit: its settings, the loaded data and model, the stage keys and (after the run) the result."""

    spec: AuditSpec
    out: Path
    progress: bool
    console: Any
    device: Any
    attacks: list[str]
    target_name: str
    data: AuditData
    model: nn.Module
    info: dict
    ids: list[int]
    eval_model: nn.Module | None
    keys: dict[str, str] = field(default_factory=dict)
    state: Any = None
    result: AuditResult | None = None


def prepare_audit(spec: AuditSpec, out: Path, progress: bool) -> AuditContext:
    """Load and check every input (data, model, evaluation model, attack settings); writes nothing."""

    for what, f in (("model", spec.model), ("evaluation model", spec.eval)):
        if f is not None and not Path(f).expanduser().is_file():
            raise CheckpointError(f"{what} file '{f}' not found; check the path")
    console = StageConsole(progress)
    device = resolve_device(spec.device)
    attacks = select_attacks(spec.access, spec.attacks)
    console.print("[bold cyan]data and model[/bold cyan]")
    seed_everything(derive_seed(spec.seed, "audit-data"))
    data = prepare_data(spec, progress)
    k = len(data.class_names)
    console.print(f"[dim]    {len(data.private)} private images of {k} classes, "
                  f"{len(data.public)} public images, {data.resolution} px[/dim]")
    model, info = load_user_model(spec, k, data.resolution)
    model.to(device)
    ids = parse_id_ranges(spec.identities, k) if spec.identities not in (None, "") else list(range(min(k, 50)))
    eval_model = _given_eval(spec, k, device) if spec.eval else None
    _check_attack_settings(spec, attacks)
    ctx = AuditContext(spec, out, progress, console, device, attacks, _slug(Path(spec.model).stem), data, model,
                       info, ids, eval_model)
    ctx.keys = _keys(ctx)
    return ctx


def audit_stages(ctx: AuditContext) -> list:
    """The audit as stages: the model, the evaluation model, the cost, the attacks, their metrics, the results."""

    t, s, keys = ctx.target_name, ctx.spec, ctx.keys
    stages = [Stage(f"targets/{t}", lambda: _target(ctx), f"your model ({ctx.info['arch']})", key=keys[f"targets/{t}"]),
              Stage("eval", lambda: _eval(ctx), "evaluation model", key=keys["eval"]),
              Stage("cost", lambda: _cost(ctx), "cost of retraining with MIDRE (measured step)", key=keys["cost"],
                    needs=(f"targets/{t}",))]
    stages += [Stage(f"attacks/{t}/{a}", lambda a=a: _attack(ctx, a), f"attack {a} ({len(ctx.ids)} classes x "
                     f"{s.repeats}; priors on public data)", key=keys[f"attacks/{t}/{a}"], needs=(f"targets/{t}",))
               for a in ctx.attacks]
    stages += [Stage(f"metrics/{t}/{a}", lambda a=a: _metrics(ctx, a), f"evaluate {a}", key=keys[f"metrics/{t}/{a}"],
                     needs=(f"attacks/{t}/{a}", "eval")) for a in ctx.attacks]
    stages.append(Stage("results", lambda: _finish(ctx), "results, verdict and report",
                        needs=tuple(f"metrics/{t}/{a}" for a in ctx.attacks) + ("cost",)))
    return stages


def _keys(ctx: AuditContext) -> dict[str, str]:
    s = ctx.spec
    data = config_hash({"data": s.data, "root": s.root, "options": s.data_options, "classes": s.classes,
                        "resolution": s.resolution, "public": s.public, "seed": s.seed})
    target = config_hash({"file": file_fingerprint(s.model), "arch": s.arch, "options": s.model_options,
                          "input_size": s.input_size, "mean": list(s.mean), "std": list(s.std)})
    ev = config_hash({"data": data, "eval": file_fingerprint(s.eval) if s.eval else None,
                      "arch": s.eval_arch, "train": s.eval_train, "seed": s.seed})
    keys = {"targets/" + ctx.target_name: target, "eval": ev,
            "cost": config_hash({"target": target, "area": s.area, "data": data})}
    for a in ctx.attacks:
        ak = config_hash({"target": target, "data": data, "attack": a, "preset": s.preset,
                          "params": s.attack_params.get(a, {}), "priors": s.prior_params,
                          "identities": s.identities, "repeats": s.repeats, "seed": s.seed})
        keys[f"attacks/{ctx.target_name}/{a}"] = ak
        keys[f"metrics/{ctx.target_name}/{a}"] = config_hash({"attack": ak, "eval": ev})
    return keys


def _given_eval(spec: AuditSpec, num_classes: int, device: Any) -> nn.Module:
    model, meta = load_model(Path(spec.eval).expanduser(), device=device)
    if int(meta["num_classes"]) != num_classes:
        raise CheckpointError(f"the evaluation model has {meta['num_classes']} classes but the private data has "
                              f"{num_classes}; give one trained on the same classes")
    return model


def _check_attack_settings(spec: AuditSpec, attacks: list[str]) -> None:
    extra = [a for a in spec.attack_params if a not in attacks]
    if extra:
        raise ArgumentError(f"--attack-param names attack '{extra[0]}', which this audit does not run "
                            f"({', '.join(attacks)})")
    for a in attacks:
        build_attack(a, preset=spec.preset, **spec.attack_params.get(a, {}))
    for kind, params in spec.prior_params.items():
        if kind not in PRIORS:
            raise ArgumentError(f"--prior-param names unknown prior kind '{kind}'; kinds: {', '.join(PRIORS)}")
        prior_config(kind, spec.preset, params)


# ------------------------------------------------------------------ stage bodies
def _target(ctx: AuditContext) -> dict:
    acc = evaluate_accuracy(ctx.model, ctx.data.private, device=ctx.device)
    meta = {**ctx.info, "role": "audited model", "defense": "unknown (trained elsewhere)", "test_acc": None,
            "private_acc": acc, "resolution": ctx.data.resolution, "dataset": ctx.data.meta,
            "class_names": ctx.data.class_names}
    atomic_write_json(ctx.out / "targets" / ctx.target_name / "model.json", meta)
    return {"private_acc": acc}


def _eval(ctx: AuditContext) -> dict:
    s, d = ctx.spec, ctx.data
    if ctx.eval_model is not None:
        held_out = d.test if d.test is not None else d.private
        return {"test_acc": natural_accuracy(ctx.eval_model, held_out, device=ctx.device), "given": s.eval}
    arch = s.eval_arch or ("smallcnn" if s.arch == "smallresnet" else "smallresnet")
    seed = derive_seed(s.seed, "eval")
    seed_everything(seed)
    model = create_model(arch, num_classes=len(d.class_names), resolution=d.resolution)
    cfg = {"epochs": 20, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
           "weight_decay": 5e-4, "schedule": "cosine", **s.eval_train, "seed": seed, "device": str(ctx.device)}
    res = train_classifier(model, d.train, d.test, config=cfg, out_dir=ctx.out / "eval", progress=ctx.progress,
                           meta={"dataset": d.meta, "class_names": d.class_names, "role": "eval"},
                           description=f"eval {arch}")
    return {"test_acc": res.test_acc, "arch": arch}


def _cost(ctx: AuditContext) -> dict:
    n = min(32, len(ctx.data.private))
    g = torch.Generator().manual_seed(derive_seed(ctx.spec.seed, "cost"))
    idx = torch.randperm(len(ctx.data.private), generator=g)[:n]
    x, _ = ctx.data.private.batch(idx)
    cost = measure_step(ctx.model, x, ctx.spec.area, ctx.device)
    atomic_write_json(ctx.out / "cost.json", cost)
    return {"seconds_per_image": cost["seconds_per_image"]}


def _attack(ctx: AuditContext, name: str) -> dict:
    s = ctx.spec
    attack = build_attack(name, preset=s.preset, **s.attack_params.get(name, {}))
    priors = prepare_priors(attack, ctx.data.public, ctx.model, out_dir=ctx.out / "priors", preset=s.preset,
                            seed=derive_seed(s.seed, "prior"), progress=ctx.progress, device=ctx.device,
                            configs=s.prior_params)
    seed = derive_seed(s.seed, "attack", name)
    seed_everything(seed)
    rec = attack.run(ctx.model, ctx.ids, s.repeats, priors, seed=seed, progress=ctx.progress,
                     target_path=s.model, device=ctx.device)
    rec.meta.update({"target_name": ctx.target_name, "attack_key": name, "audit_access": s.access})
    rec.save(ctx.out / "attacks" / ctx.target_name / name)
    return {"target_top1": rec.meta["target_top1"], "queries": rec.meta.get("queries")}


def _load_eval(ctx: AuditContext) -> nn.Module:
    if ctx.eval_model is None:
        ctx.eval_model = load_model(ctx.out / "eval", device=ctx.device)[0]
    return ctx.eval_model


def _metrics(ctx: AuditContext, name: str) -> dict:
    adir = ctx.out / "attacks" / ctx.target_name / name
    rec = Reconstructions.load(adir)
    seed = derive_seed(ctx.spec.seed, "metrics", name)
    seed_everything(seed)
    ev = _load_eval(ctx)
    m = evaluate_reconstructions(rec, ev, ctx.data.private, None, fid=True, seed=seed, device=ctx.device,
                                 progress=ctx.progress)
    m["nearest"] = nearest_private(rec, ev, ctx.data.private, ctx.device)
    m.update({"target": ctx.target_name, "attack_key": name, "target_top1": rec.meta.get("target_top1")})
    atomic_write_json(adir / "metrics.json", m)
    return {}


# ------------------------------------------------------------------ results, verdict, report
def _finish(ctx: AuditContext) -> None:
    s, t = ctx.spec, ctx.target_name
    metrics = {a: read_json(ctx.out / "attacks" / t / a / "metrics.json") for a in ctx.attacks}
    rows = [_row(t, a, m, s, len(ctx.ids)) for a, m in metrics.items()]
    write_results_table(ctx.out / "results.csv", rows, COLUMNS)
    atomic_write_json(ctx.out / "results.json", {"format": "midre-results", "kind": "audit", "columns": COLUMNS,
                                                 "rows": rows, "seed": s.seed, "name": s.name})
    stages = ctx.state.stages
    private_acc = stages[f"targets/{t}"].get("private_acc")
    eval_acc = stages["eval"].get("test_acc")
    gates = check_audit(private_acc, eval_acc, {a: m.get("target_top1") for a, m in metrics.items()})
    atomic_write_json(ctx.out / "gates.json", gates)
    v = verdict(rows, gates, len(ctx.data.class_names), s.access)
    advice = retrain_advice(s, ctx.data, ctx.info, read_json(ctx.out / "cost.json"), t)
    atomic_write_json(ctx.out / "audit.json", {
        "format": AUDIT_FORMAT, "spec": asdict(s), "model": ctx.info, "access": s.access,
        "attacks": ctx.attacks, "identities": ctx.ids, "gates": gates, "verdict": v,
        "retrain": advice, "private_acc": private_acc, "eval_acc": eval_acc, "eval": stages["eval"]})

    report = write_audit_report(ctx.out, t, s, ctx.info, ctx.data, metrics, v, advice)
    ctx.console.print(f"[bold]{v['text']}[/bold]")
    ctx.result = AuditResult(ctx.out, report, v, gates, rows)


def _row(target: str, attack: str, m: dict, spec: AuditSpec, n_ids: int) -> dict:
    return ResultRow.from_metrics(target, "unknown", attack, m, seed=spec.seed, repeats=spec.repeats,
                                  identities=n_ids, target_top1=as_float(m.get("target_top1"))).as_dict()


def _write_config(out: Path, spec: AuditSpec, data: AuditData, attacks: list, ids: list) -> None:
    import yaml

    cfg = {"name": "audit", "description": f"privacy audit of {spec.model} ({spec.access} access)",
           "seed": spec.seed, "device": str(resolve_device(spec.device)),
           "dataset": {"name": data.meta["name"], "root": data.meta.get("root"), "resolution": data.resolution,
                       "options": data.meta.get("options") or {}},
           "attacks": [{"name": a, "identities": _ranges(ids), "repeats": spec.repeats, "preset": spec.preset,
                        "params": spec.attack_params.get(a, {})} for a in attacks],
           "audit": json.loads(json.dumps(asdict(spec)))}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))


def _ranges(ids: Sequence[int]) -> str:
    parts, start = [], None
    for i, v in enumerate(ids):
        if start is None:
            start = v
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def _slug(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_.") or "model"
