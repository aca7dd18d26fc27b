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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from .errors import ArgumentError, CheckpointError, DataError, RunDirError
from .models.base import IMAGENET_MEAN, IMAGENET_STD
from .utils import atomic_write_json, atomic_write_text, config_hash, derive_seed, resolve_device, seed_everything

ACCESS_LEVELS = ("white-box", "black-box", "label-only")
_RANK = {"label-only": 0, "black-box": 1, "white-box": 2}
GATE_TARGET_ACC = 50.0      # % of its own training images the model must classify right (class order, normalisation)
GATE_EVAL_ACC = 50.0        # % held-out accuracy of the evaluation model
GATE_ATTACK_TOP1 = 50.0     # % of reconstructions the TARGET assigns to the attacked class (did the attack converge?)
AUDIT_FORMAT = "midre-audit"


# ============================================================================ the settings
@dataclass
class AuditSpec:
    """Everything an audit depends on (its hash names the run; ``device`` is not part of it)."""

    model: str
    data: str
    arch: Optional[str] = None                  # None: ``model`` is a TorchScript archive
    model_options: dict = field(default_factory=dict)
    input_size: Optional[int] = None            # default: resolution
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    root: Optional[str] = None                  # for a registered dataset
    data_options: dict = field(default_factory=dict)
    classes: Optional[list] = None              # class order the model was trained with (folder names)
    resolution: Optional[int] = None            # working resolution (power of two); default: the data's
    public: Optional[str] = None
    access: str = "white-box"
    attacks: Optional[list] = None              # default: the two strongest that fit the access
    identities: Optional[str] = None            # default: the first 50 classes
    repeats: int = 3
    preset: str = "quick"
    attack_params: dict = field(default_factory=dict)   # {attack: {key: value}}
    prior_params: dict = field(default_factory=dict)    # {kind: {key: value}}
    eval: Optional[str] = None                  # a midre checkpoint of an evaluation model
    eval_arch: Optional[str] = None
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
def select_attacks(access: str, names: Optional[Sequence[str]]) -> list[str]:
    """The attacks to run: ``names`` validated against ``access``, or the two strongest that fit it."""
    from .attacks import ATTACKS

    if access not in ACCESS_LEVELS:
        raise ArgumentError(f"unknown access level '{access}'; choose one of: {', '.join(ACCESS_LEVELS)}")
    fits = [n for n in ATTACKS.names() if _RANK[_attack_access(n)] <= _RANK[access]]
    if not names:   # the two strongest that fit: each attack class declares its ``strength`` (unranked last)
        return sorted(fits, key=lambda n: -(attack_strength(n) or float("-inf")))[:2]
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


def attack_strength(name: str) -> Optional[float]:
    """An attack's declared ``strength`` (its class attribute, via the registry); None when unranked."""
    from .attacks import ATTACKS

    v = ATTACKS.info(name).get("strength", getattr(ATTACKS.get(name), "strength", None))
    return None if v is None else float(v)


def _attack_access(name: str) -> str:
    from .attacks import ATTACKS

    cls = ATTACKS.get(name)
    access = getattr(cls, "access", None) or ATTACKS.info(name).get("access")
    if access not in _RANK:
        from .attacks import build_attack

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
    from .models import create_model
    from .models.weights import load_pretrained, read_state_dict

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
    from .models.base import Classifier

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
    from .data import load_dataset
    from .data.base import DATASETS

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
    from .data.base import TensorImageSet

    ts = imageset.to_tensors()
    return TensorImageSet(ts.images, perm[ts.targets])


def prepare_data(spec: AuditSpec, progress: bool = False) -> AuditData:
    from .data.base import TensorImageSet
    from .priors import assert_public_only

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
    from .data import load_dataset
    from .data.base import DATASETS
    from .data.folders import PUBLIC_SETS, load_public

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
    from .defenses.midre import eraser_for

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
def gates(target_acc: float, eval_acc: Optional[float], attack_rows: Sequence[dict]) -> list[dict]:
    """The checks that make the numbers meaningful, each with its value, threshold and what to do."""
    out = [_gate("target fits its private data", target_acc, GATE_TARGET_ACC,
                 "accuracy of your model on the private images (its training data)",
                 "check the class order (--classes), --mean/--std and --input-size")]
    out.append(_gate("evaluation model is accurate", eval_acc, GATE_EVAL_ACC,
                     "held-out accuracy of the independent evaluation model",
                     "train it longer (--eval-epochs) or give a stronger one (--eval)"))
    for r in attack_rows:
        out.append(_gate(f"attack {r['attack']} converged", r.get("target_top1"), GATE_ATTACK_TOP1,
                         "share of its reconstructions your model assigns to the attacked identity",
                         "raise the attack budget (--preset paper or --attack-param ...iterations=...)"))
    return out


def _gate(name: str, value: Optional[float], threshold: float, what: str, fix: str) -> dict:
    ok = value is not None and not math.isnan(value) and value >= threshold
    return {"gate": name, "value": value, "threshold": threshold, "passed": bool(ok), "what": what,
            "fix": None if ok else fix}


def verdict(rows: Sequence[dict], gate_list: Sequence[dict], num_classes: int, access: str) -> dict:
    """A plain-language verdict from the strongest attack's top-1 attack accuracy and its 95 % interval."""
    chance = 100.0 / num_classes
    failed = [g["gate"] for g in gate_list if not g["passed"]]
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


def cost_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ============================================================================ the run
@dataclass
class AuditResult:
    out_dir: Path
    report: Optional[Path]
    verdict: dict
    gates: list
    rows: list


def run_audit(spec: AuditSpec, out_dir: str | Path, progress: bool = True) -> AuditResult:
    """Run (or continue) an audit into ``out_dir``; see the module docstring."""
    from .rundir import check_out, remove_stale_temps, run_command
    from .utils import RunLock

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"'{out}' is a file; give a directory to --out")
    check_out(out, "audit", lambda d: run_command(d / "run.json") == "audit",
              hint=" (the --out of an earlier audit of the same model continues it)")
    audit = _Audit(spec, out, progress)
    audit.prepare()                      # every check that needs no writing: bad input leaves no trace
    with RunLock(out):
        remove_stale_temps(out)
        return audit.run()


class _Audit:
    def __init__(self, spec: AuditSpec, out: Path, progress: bool):
        from .rundir import StageConsole

        self.spec, self.out, self.progress = spec, out, progress
        self.console = StageConsole(progress)
        self.device = resolve_device(spec.device)
        self.attacks = select_attacks(spec.access, spec.attacks)
        self.target_name = _slug(Path(spec.model).stem)
        self._count = 0

    # ------------------------------------------------------------------ stages (keys in run.json)
    def _stage(self, name: str, key: str, fn, label: str) -> None:
        self._count += 1
        self.state.run_stage(name, key, fn, label, f"[{self._count}/{self.n_units}]", self.console,
                             cpu_seconds=False, note_memory=False)

    def _keys(self) -> dict[str, str]:
        s = self.spec
        data = config_hash({"data": s.data, "root": s.root, "options": s.data_options, "classes": s.classes,
                            "resolution": s.resolution, "public": s.public, "seed": s.seed})
        target = config_hash({"file": file_fingerprint(s.model), "arch": s.arch, "options": s.model_options,
                              "input_size": s.input_size, "mean": list(s.mean), "std": list(s.std)})
        ev = config_hash({"data": data, "eval": file_fingerprint(s.eval) if s.eval else None,
                          "arch": s.eval_arch, "train": s.eval_train, "seed": s.seed})
        keys = {"targets/" + self.target_name: target, "eval": ev,
                "cost": config_hash({"target": target, "area": s.area, "data": data})}
        for a in self.attacks:
            ak = config_hash({"target": target, "data": data, "attack": a, "preset": s.preset,
                              "params": s.attack_params.get(a, {}), "priors": s.prior_params,
                              "identities": s.identities, "repeats": s.repeats, "seed": s.seed})
            keys[f"attacks/{self.target_name}/{a}"] = ak
            keys[f"metrics/{self.target_name}/{a}"] = config_hash({"attack": ak, "eval": ev})
        return keys

    # ------------------------------------------------------------------ run
    def prepare(self) -> None:
        """Load and check every input (data, model, evaluation model, attack settings); writes nothing."""
        s = self.spec
        for what, f in (("model", s.model), ("evaluation model", s.eval)):
            if f is not None and not Path(f).expanduser().is_file():
                raise CheckpointError(f"{what} file '{f}' not found; check the path")
        self.n_units = 4 + 2 * len(self.attacks) + 1
        self._count += 1
        self.console.print(f"[bold cyan][{self._count}/{self.n_units}][/bold cyan] data and model")
        seed_everything(derive_seed(s.seed, "audit-data"))
        self.data = prepare_data(s, self.progress)
        k = len(self.data.class_names)
        self.console.print(f"[dim]    {len(self.data.private)} private images of {k} classes, "
                           f"{len(self.data.public)} public images, {self.data.resolution} px[/dim]")
        self.model, self.info = load_user_model(s, k, self.data.resolution)
        self.model.to(self.device)
        self.ids = self._identities()
        self.eval_model = self._given_eval() if s.eval else None
        self._check_attack_settings()
        self.keys = self._keys()

    def _given_eval(self) -> nn.Module:
        from .loading import load_model

        model, meta = load_model(Path(self.spec.eval).expanduser(), device=self.device)
        if int(meta["num_classes"]) != len(self.data.class_names):
            raise CheckpointError(f"the evaluation model has {meta['num_classes']} classes but the private data has "
                                  f"{len(self.data.class_names)}; give one trained on the same classes")
        return model

    def _check_attack_settings(self) -> None:
        from .attacks import build_attack
        from .priors import PRIORS, prior_config

        extra = [a for a in self.spec.attack_params if a not in self.attacks]
        if extra:
            raise ArgumentError(f"--attack-param names attack '{extra[0]}', which this audit does not run "
                                f"({', '.join(self.attacks)})")
        for a in self.attacks:
            build_attack(a, preset=self.spec.preset, **self.spec.attack_params.get(a, {}))
        for kind, params in self.spec.prior_params.items():
            if kind not in PRIORS:
                raise ArgumentError(f"--prior-param names unknown prior kind '{kind}'; kinds: {', '.join(PRIORS)}")
            prior_config(kind, self.spec.preset, params)

    def run(self) -> AuditResult:
        from .rundir import RunState

        s = self.spec
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = RunState(self.out, s)
        other = [k for k in self.state.stages if k.startswith("targets/") and k not in self.keys]
        if other:
            raise RunDirError(f"'{self.out}' holds an audit of another model ({other[0][8:]}); use a new --out")
        self.state.check_keys({k: v for k, v in self.keys.items() if not k.startswith("metrics/")})
        self.state.save()
        _write_config(self.out, s, self.data, self.attacks, self.ids)
        tname = self.target_name
        self._stage(f"targets/{tname}", self.keys[f"targets/{tname}"], self._target,
                    f"your model ({self.info['arch']})")
        self._stage("eval", self.keys["eval"], self._eval, "evaluation model")
        self._stage("cost", self.keys["cost"], self._cost, "cost of retraining with MIDRE (measured step)")
        for a in self.attacks:
            self._stage(f"attacks/{tname}/{a}", self.keys[f"attacks/{tname}/{a}"], lambda a=a: self._attack(a),
                        f"attack {a} ({len(self.ids)} classes x {s.repeats}; priors on public data)")
        for a in self.attacks:
            self._stage(f"metrics/{tname}/{a}", self.keys[f"metrics/{tname}/{a}"], lambda a=a: self._metrics(a),
                        f"evaluate {a}")
        result = self._finish()
        self.state.data["complete"] = True
        self.state.save(status="complete")
        return result

    def _identities(self) -> list[int]:
        from .utils import parse_id_ranges

        k = len(self.data.class_names)
        if self.spec.identities in (None, ""):
            return list(range(min(k, 50)))
        return parse_id_ranges(self.spec.identities, k)

    # ------------------------------------------------------------------ stage bodies
    def _target(self) -> dict:
        from .training import evaluate_accuracy

        acc = evaluate_accuracy(self.model, self.data.private, device=self.device)
        meta = {**self.info, "role": "audited model", "defense": "unknown (trained elsewhere)", "test_acc": None,
                "private_acc": acc, "resolution": self.data.resolution, "dataset": self.data.meta,
                "class_names": self.data.class_names}
        atomic_write_json(self.out / "targets" / self.target_name / "model.json", meta)
        return {"private_acc": acc}

    def _eval(self) -> dict:
        from .metrics import natural_accuracy
        from .models import create_model
        from .training import train_classifier

        s, d = self.spec, self.data
        if self.eval_model is not None:
            held_out = d.test if d.test is not None else d.private
            return {"test_acc": natural_accuracy(self.eval_model, held_out, device=self.device), "given": s.eval}
        arch = s.eval_arch or ("smallcnn" if s.arch == "smallresnet" else "smallresnet")
        seed = derive_seed(s.seed, "eval")
        seed_everything(seed)
        model = create_model(arch, num_classes=len(d.class_names), resolution=d.resolution)
        cfg = {"epochs": 20, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
               "weight_decay": 5e-4, "schedule": "cosine", **s.eval_train, "seed": seed, "device": str(self.device)}
        res = train_classifier(model, d.train, d.test, config=cfg, out_dir=self.out / "eval", progress=self.progress,
                               meta={"dataset": d.meta, "class_names": d.class_names, "role": "eval"},
                               description=f"eval {arch}")
        return {"test_acc": res.test_acc, "arch": arch}

    def _cost(self) -> dict:
        n = min(32, len(self.data.private))
        g = torch.Generator().manual_seed(derive_seed(self.spec.seed, "cost"))
        idx = torch.randperm(len(self.data.private), generator=g)[:n]
        x, _ = self.data.private.batch(idx)
        cost = measure_step(self.model, x, self.spec.area, self.device)
        atomic_write_json(self.out / "cost.json", cost)
        return {"seconds_per_image": cost["seconds_per_image"]}

    def _attack(self, name: str) -> dict:
        from .attacks import build_attack
        from .priors import prepare_priors

        s = self.spec
        attack = build_attack(name, preset=s.preset, **s.attack_params.get(name, {}))
        priors = prepare_priors(attack, self.data.public, self.model, out_dir=self.out / "priors", preset=s.preset,
                                seed=derive_seed(s.seed, "prior"), progress=self.progress, device=self.device,
                                configs=s.prior_params)
        seed = derive_seed(s.seed, "attack", name)
        seed_everything(seed)
        rec = attack.run(self.model, self.ids, s.repeats, priors, seed=seed, progress=self.progress,
                         target_path=s.model, device=self.device)
        rec.meta.update({"target_name": self.target_name, "attack_key": name, "audit_access": s.access})
        rec.save(self.out / "attacks" / self.target_name / name)
        return {"target_top1": rec.meta["target_top1"], "queries": rec.meta.get("queries")}

    def _load_eval(self) -> nn.Module:
        from .loading import load_model

        if self.eval_model is None:
            self.eval_model = load_model(self.out / "eval", device=self.device)[0]
        return self.eval_model

    def _metrics(self, name: str) -> dict:
        from .attacks.base import Reconstructions
        from .metrics import evaluate_reconstructions, nearest_private

        adir = self.out / "attacks" / self.target_name / name
        rec = Reconstructions.load(adir)
        seed = derive_seed(self.spec.seed, "metrics", name)
        seed_everything(seed)
        ev = self._load_eval()
        m = evaluate_reconstructions(rec, ev, self.data.private, None, fid=True, seed=seed, device=self.device,
                                     progress=self.progress)
        m["nearest"] = nearest_private(rec, ev, self.data.private, self.device)
        m.update({"target": self.target_name, "attack_key": name, "target_top1": rec.meta.get("target_top1")})
        atomic_write_json(adir / "metrics.json", m)
        return {}

    # ------------------------------------------------------------------ results, verdict, report
    def _finish(self) -> AuditResult:
        from .rundir import COLUMNS, write_table
        from .utils import read_json

        s, t = self.spec, self.target_name
        self._count += 1
        self.console.print(f"[bold cyan][{self._count}/{self.n_units}][/bold cyan] results, verdict and report")
        metrics = {a: read_json(self.out / "attacks" / t / a / "metrics.json") for a in self.attacks}
        rows = [_row(t, a, m, s, len(self.ids)) for a, m in metrics.items()]
        write_table(self.out / "results.csv", rows, COLUMNS)
        atomic_write_json(self.out / "results.json", {"format": "midre-results", "kind": "audit", "columns": COLUMNS,
                                                      "rows": rows, "seed": s.seed, "name": s.name})
        stages = self.state.stages
        private_acc = stages[f"targets/{t}"].get("private_acc")
        eval_acc = stages["eval"].get("test_acc")
        gate_list = gates(private_acc, eval_acc, [{"attack": a, "target_top1": m.get("target_top1")}
                                                  for a, m in metrics.items()])
        v = verdict(rows, gate_list, len(self.data.class_names), s.access)
        cost = read_json(self.out / "cost.json")
        advice = retrain_advice(s, self.data, self.info, cost, t)
        atomic_write_json(self.out / "audit.json", {
            "format": AUDIT_FORMAT, "spec": asdict(s), "model": self.info, "access": s.access,
            "attacks": self.attacks, "identities": self.ids, "gates": gate_list, "verdict": v,
            "retrain": advice, "private_acc": private_acc, "eval_acc": eval_acc, "eval": stages["eval"]})
        report = self._report(metrics, gate_list, v, advice, private_acc, eval_acc)
        self.console.print(f"[bold]{v['text']}[/bold]")
        return AuditResult(self.out, report, v, gate_list, rows)

    def _report(self, metrics: dict, gate_list: list, v: dict, advice: dict, private_acc: Any,
                eval_acc: Any) -> Path:
        from .report import write_report

        figs = []
        for a, m in metrics.items():
            p = plot_nearest_pairs(a, self.out / "attacks" / self.target_name / a, m.get("nearest") or {},
                                   self.data.private, self.data.class_names, self.out / "figures" / f"nearest_{a}.png")
            if p is not None:
                figs.append((f"Reconstructions beside the nearest private image: {a}", p,
                             "For each attacked class: the reconstruction your model is most confident about (left) "
                             "and the private training image closest to it in the evaluation model's features "
                             "(right, with the squared feature distance d²)."))
        lead = [("Verdict", *_verdict_section(v, self.spec, self.info)),
                ("Validity gates", *_gates_section(gate_list))]
        tail = [("Retrain with MIDRE", *_advice_section(advice))]
        _md, html_path = write_report(self.out, splits=None, lead=lead, figures=figs, tail=tail,
                                      standard_figures=False,
                                      title=f"midre audit: {Path(self.spec.model).name} ({self.spec.access})")
        return Path(html_path)


def _row(target: str, attack: str, m: dict, spec: AuditSpec, n_ids: int) -> dict:
    ci = m.get("attacc_top1_ci95") or [float("nan"), float("nan")]

    def num(k: str) -> float:
        v = m.get(k)
        return float(v) if isinstance(v, (int, float)) else float("nan")

    return {"target": target, "defense": "unknown", "defense_params": "{}", "attack": attack,
            "acc": float("nan"), "attack_top1": num("attacc_top1"), "attack_top1_std": num("attacc_top1_std"),
            "attack_top5": num("attacc_top5"), "attack_top5_std": num("attacc_top5_std"),
            "top1_ci_lo": float(ci[0]), "top1_ci_hi": float(ci[1]), "knn": num("knn_dist"),
            "fid_eval": num("fid_eval"), "delta": "", "epsilon": float("nan"), "seed": spec.seed,
            "repeats": spec.repeats, "identities": n_ids, "target_top1": num("target_top1")}


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


def plot_nearest_pairs(attack: str, adir: Path, nearest: dict, private: Any, class_names: Sequence[str],
                       path: Path, max_pairs: int = 12, per_row: int = 4) -> Optional[Path]:
    """A grid of (reconstruction | nearest private image) pairs, one pair per attacked class."""
    from .attacks.base import Reconstructions
    from .plotting import pyplot, save_fig
    from .results import to_hwc

    if not nearest:
        return None
    rec = Reconstructions.load(adir)
    items = sorted(nearest.items(), key=lambda kv: int(kv[0]))[:max_pairs]
    rows = math.ceil(len(items) / per_row)
    cols = 2 * min(per_row, len(items))
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 0.4, 1.75 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (c, nn_) in enumerate(items):
        r, c0 = divmod(k, per_row)
        name = class_names[int(c)] if int(c) < len(class_names) else c
        for j, (img, label) in enumerate(((rec.images[nn_["recon"]], f"{name}\nreconstruction"),
                                          (private[nn_["private"]][0], f"nearest private\nd² {nn_['sq_dist']:.3g}"))):
            ax = axes[r][2 * c0 + j]
            arr, cmap = to_hwc(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(label, fontsize=8)
    fig.suptitle(f"{attack}: reconstruction | nearest private training image", fontsize=10)
    fig.tight_layout()
    return save_fig(fig, path)


# ============================================================================ report sections (md, html)
def _verdict_section(v: dict, spec: AuditSpec, info: dict) -> tuple[str, str]:
    import html

    note = (f"Model: {info['arch']} from {Path(spec.model).name} (sha256 {info['sha256_16']}…), input "
            f"{info['input_size']} px, mean {tuple(spec.mean)}, std {tuple(spec.std)}; attack preset "
            f"'{spec.preset}', {spec.repeats} repeats, seed {spec.seed}.")
    md = f"**{v['level'].upper()}** — {v['text']}\n\n_{note}_"
    color = {"high leakage": "#b00020", "moderate leakage": "#c46200", "low leakage": "#8a7a00",
             "no leakage measured": "#1b7f3b"}.get(v["level"], "#555")
    ht = (f"<p style='font-size:17px'><b style='color:{color}'>{html.escape(v['level'].upper())}</b> — "
          f"{html.escape(v['text'])}</p><p class='note'>{html.escape(note)}</p>")
    return md, ht


def _gates_section(gate_list: Sequence[dict]) -> tuple[str, str]:
    from .results import fmt, html_table, md_table

    head = ["gate", "value (%)", "threshold (%)", "passed", "what it measures / fix"]
    body = [[g["gate"], fmt(g["value"], 1), fmt(g["threshold"], 0), "yes" if g["passed"] else "NO",
             g["what"] + ("" if g["passed"] else f" — fix: {g['fix']}")] for g in gate_list]
    note = ("The attack numbers mean something only when every gate passes: a model that does not fit its own "
            "data (wrong class order or normalisation), a weak evaluation model or an attack that did not "
            "converge would all make the model look private when it is not.")
    return md_table(head, body) + f"\n\n_{note}_", html_table(head, body) + f"<p class='note'>{note}</p>"


def _advice_section(a: dict) -> tuple[str, str]:
    import html

    c = a["cost"]
    cost = (f"Expected cost: about {cost_text(a['seconds'])} of training on {c['device']} "
            f"({a['epochs']} epochs × {a['train_images']} images × {1000 * c['seconds_per_image']:.2f} ms per image, "
            f"the median of {c['batch']}-image MIDRE steps (eraser + forward + backward) of your model measured here "
            f"with {c['threads']} thread(s); data loading and evaluation not included).")
    md, ht = [], []
    if a["command"]:
        md.append(f"```bash\n{a['command']}\n```")
        ht.append("<pre style='white-space:pre-wrap;word-break:break-all;background:#f3f3f3;padding:8px'><code>"
                  f"{html.escape(a['command'])}</code></pre>")
    for text in [a["why_area"], cost, *a["notes"]]:
        md.append(text)
        ht.append(f"<p>{html.escape(text)}</p>")
    md.append("Then audit the retrained model again with the same command to see the leakage it removes.")
    ht.append("<p>Then audit the retrained model again with the same command to see the leakage it removes.</p>")
    return "\n\n".join(md), "".join(ht)
