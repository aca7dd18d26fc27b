"""THE classifier training loop.  Targets, evaluation models, TL-DMI pre-training and LOMMA-style
students all go through :func:`train_classifier`; defenses plug in through the hooks of
:class:`midre.defenses.base.Defense` and never fork it.

Per batch: x, y, idx -> device -> random horizontal flip -> ``defense.transform_batch`` (MIDRE's eraser,
batched, on the device) -> forward (AMP on GPU) -> ``defense.task_loss`` or cross-entropy
+ ``defense.regularizer`` -> backward -> gradient clipping (after backward) -> optimizer step.

Every epoch ends with natural accuracy on the test split and an atomic checkpoint
(``model.safetensors`` + ``model.json`` + ``train_state.pt``).  Calling again with the same ``out_dir``
resumes after the last finished epoch; each epoch's randomness is derived from (seed, epoch), so a
resumed run reaches exactly the numbers of an uninterrupted one on CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader, Dataset

from . import tblog
from .checkpoint import load_state, save_checkpoint
from .defenses.base import Defense, StepContext, TrainContext, build_defense
from .distributed import world as _world
from .errors import ArgumentError, CheckpointError, RunDirError, TrainingDivergedError
from .utils import atomic_path, derive_seed, make_progress, resolve_device, seed_everything, unwrap


class TrainConfig(BaseModel):
    """Hyper-parameters of one classifier training run (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["none", "multistep", "cosine"] = "none"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)
    hflip: bool = True
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    grad_clip: Optional[float] = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    # start from pretrained weights (a LOCAL file; `midre run` also resolves "zoo:NAME"): the backbone is
    # loaded, the head is always re-initialised (fine-tuning on new classes)
    init: Optional[str] = None

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError("milestones must be positive epoch numbers")
        return sorted(v)


def make_config(config: TrainConfig | dict | None = None, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from a dict / config + overrides, turning validation errors into ArgumentError."""
    from pydantic import ValidationError

    base = config.model_dump() if isinstance(config, TrainConfig) else dict(config or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**base)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ArgumentError(f"training setting '{loc}': {err['msg']} (got {err.get('input')!r})") from None


@dataclass
class TrainResult:
    model: nn.Module
    test_acc: Optional[float]
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Optional[Path] = None
    defense_report: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class _Indexed(Dataset):
    """Yields (image, label, index) so defenses can key on dataset indices (Fixed / Entire Erasing)."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x, y, i


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                   device: Optional[torch.device | str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a whole dataset, model in eval mode, on CPU at the end."""
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs, labels = [], []
    images = getattr(dataset, "images", None)
    if images is not None and hasattr(dataset, "batch"):
        n = len(dataset)
        for s in range(0, n, batch_size):
            x, y = dataset.batch(torch.arange(s, min(n, s + batch_size)))
            outs.append(model(x.to(device)).float().cpu())
            labels.append(y)
    else:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            outs.append(model(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y))
    model.train(was_training)
    if not outs:
        raise ArgumentError("cannot evaluate on an empty dataset; check the split")
    return torch.cat(outs), torch.cat(labels)


def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                      device: Optional[torch.device | str] = None) -> float:
    """Top-1 accuracy in percent."""
    logits, labels = predict_logits(model, dataset, batch_size=batch_size, device=device)
    return float((logits.argmax(1) == labels).float().mean().item() * 100.0)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ArgumentError("the model has no trainable parameters; check the defense's freezing settings")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device="cpu").lt(0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _meta(model: nn.Module, defense: Defense, cfg: TrainConfig, train_set: Any, meta: Optional[dict]) -> dict:
    m = unwrap(model)
    return {
        "arch": getattr(m, "arch", type(m).__name__),
        "num_classes": int(getattr(m, "num_classes", 0)),
        "resolution": int(getattr(train_set, "resolution", 0) or 0),
        "channels": int(getattr(train_set, "channels", 3)),
        "model_kwargs": {},
        "defense": defense.spec(),
        "train_config": cfg.model_dump(),
        **(meta or {}),
    }


def train_classifier(model: nn.Module, train_set: Dataset, test_set: Optional[Dataset] = None,
                     defense: Defense | str | dict | None = None, config: TrainConfig | dict | None = None,
                     out_dir: Optional[str | Path] = None, public_set: Optional[Dataset] = None,
                     meta: Optional[dict] = None, progress: bool = True, description: str = "train") -> TrainResult:
    """Train ``model`` on ``train_set`` under ``defense``; see the module docstring."""
    cfg = make_config(config)
    defense = build_defense(defense)
    ddp = _world()   # data-parallel under torchrun (midre.distributed); one process: no-op
    device = ddp.device(resolve_device(cfg.device))
    progress = progress and ddp.is_main
    if len(train_set) == 0:
        raise ArgumentError("the training set is empty; check the dataset and its split")
    out = Path(out_dir) if out_dir is not None else None

    init_report = _load_init(model, cfg.init)
    seed_everything(derive_seed(cfg.seed, "init"))
    model = defense.wrap_model(model)
    model.to(device)
    ctx = TrainContext(model=model, train_set=train_set, test_set=test_set, public_set=public_set, config=cfg,
                       device=device, out_dir=out, progress=progress, train=train_classifier)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    state_path = out / "train_state.pt" if out is not None else None
    resumed = state_path is not None and state_path.exists() and (out / "model.json").exists()
    ctx.extra["resuming"] = resumed
    ctx.extra["init"] = cfg.init       # TL-DMI uses this shared checkpoint instead of its own pre-training
    # prepare always runs (it may freeze layers or replace the model); on resume the saved weights
    # overwrite whatever it trained, so the result is the same as an uninterrupted run.
    defense.prepare(ctx)
    ddp.rank_streams(defense)
    model = ctx.model
    model.to(device)

    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg)

    gen = torch.Generator()
    loader = DataLoader(_Indexed(train_set), **ddp.loader_kwargs(len(train_set), cfg.batch_size, gen),
                        num_workers=cfg.num_workers, drop_last=False,
                        pin_memory=(device.type == "cuda"))
    train_model, opt, loader = defense.wrap_training(model, opt, loader)
    train_model = ddp.wrap(model, train_model, device)

    if resumed:
        import json

        try:
            st = load_state(state_path)
            weights = load_state(out / "model.safetensors")
        except CheckpointError:
            st = None  # a damaged resume state: start this training over
        if st is not None:
            saved = json.loads((out / "model.json").read_text())
            if int(saved.get("epochs", cfg.epochs)) != cfg.epochs or saved.get("defense") != defense.spec():
                raise RunDirError(
                    f"'{out}' holds a training run with other settings (epochs/defense); use a new --out or delete it")
            unwrap(model).load_state_dict(weights, strict=True)
            _load_optimizer_state(opt, sched, st)
            start_epoch = int(st["epoch"].item())
            history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
            history = history[:start_epoch]

    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    test_acc = history[-1].get("test_acc") if history else None
    tb = tblog.training(out, description, len(loader))   # no-op unless a TensorBoard session is open
    with make_progress(progress) as prog:
        task = prog.add_task(description, total=cfg.epochs * len(loader), completed=start_epoch * len(loader),
                             status="")
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            seed_everything(derive_seed(cfg.seed, "epoch", epoch, *ddp.keys))
            gen.manual_seed(derive_seed(cfg.seed, "order", epoch))
            flip_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "flip", epoch, *ddp.keys))
            defense.on_epoch_start(epoch, cfg.epochs)
            train_model.train()
            tot_loss, tot_correct, tot_n = 0.0, 0, 0
            for x, y, idx in loader:
                x = x.to(device, non_blocking=True)
                y = torch.as_tensor(y).to(device, non_blocking=True)
                if x.shape[0] == 0 or (x.shape[0] == 1 and len(train_set) > 1):
                    # a trailing batch of one image breaks BatchNorm1d heads (VGG16, IR nets); skip it
                    prog.update(task, advance=1)
                    continue
                if cfg.hflip:
                    x = _random_hflip(x, flip_gen)
                x, y = defense.transform_batch(x, y, torch.as_tensor(idx))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    if defense.needs_features:
                        logits, feats = _forward_features(train_model, x)
                    else:
                        logits, feats = train_model(x), None
                    loss = defense.task_loss(logits, y)
                    if loss is None:
                        loss = F.cross_entropy(logits.float(), y)
                    reg = defense.regularizer(StepContext(model=train_model, x=x, y=y, logits=logits, features=feats,
                                                          epoch=epoch, epochs=cfg.epochs))
                    if reg is not None:
                        loss = loss + reg
                if not torch.isfinite(loss):
                    kept = " (the last good checkpoint is kept)" if out is not None and (out / "model.json").exists() else ""
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} in epoch {epoch + 1}{kept}; lower the learning rate or check the defense settings")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:  # after backward, so it clips the real gradients
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                tb.step(epoch, x, y, logits, loss, opt)
                n = y.shape[0]
                tot_loss += float(loss.detach()) * n
                tot_correct += int((logits.detach().argmax(1) == y).sum())
                tot_n += n
                prog.update(task, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {tot_loss / max(tot_n, 1):.3f}")
            if sched is not None:
                sched.step()
            tot_loss, tot_correct, tot_n = ddp.sum(tot_loss, tot_correct, tot_n)
            rec: dict[str, Any] = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                                   "train_acc": 100.0 * tot_correct / max(tot_n, 1)}
            if test_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                test_acc = evaluate_accuracy(unwrap(train_model), test_set, device=device)
                rec["test_acc"] = test_acc
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            tb.epoch(rec, opt)
            prog.update(task, status=f"epoch {epoch + 1}/{cfg.epochs} acc {test_acc if test_acc is not None else float('nan'):.1f}%")
            if out is not None:
                m = _meta(model, defense, cfg, train_set, meta)
                m["init_report"] = init_report
                m.update({"epoch": epoch + 1, "epochs": cfg.epochs, "test_acc": test_acc, "history": history,
                          "defense_report": defense.report(), "complete": epoch + 1 == cfg.epochs})
                if ddp.size > 1:
                    m["world_size"] = ddp.size   # provenance: trained data-parallel (last session's size)
                if ddp.is_main:
                    _save_epoch(out, model, m, opt, sched, epoch + 1, history)
                ddp.after_checkpoint(epoch + 1)

    final = unwrap(train_model)
    final.eval()
    report = defense.report()
    m = _meta(model, defense, cfg, train_set, meta)
    m["init_report"] = init_report
    m.update({"epoch": cfg.epochs, "epochs": cfg.epochs, "test_acc": test_acc, "history": history,
              "defense_report": report, "complete": True})
    return TrainResult(model=final, test_acc=test_acc, history=history,
                       checkpoint=(out / "model.safetensors") if out is not None else None,
                       defense_report=report, meta=m)


def _load_init(model: nn.Module, init: Optional[str]) -> Optional[dict[str, Any]]:
    """Load ``TrainConfig.init`` (a local file) into the backbone; the head stays freshly initialised."""
    if not init:
        return None
    if init.startswith("zoo:"):
        raise ArgumentError(f"init '{init}' names a zoo backbone, which only `midre run` resolves; give a local "
                            "weights file here")
    from .models.weights import load_pretrained

    return load_pretrained(unwrap(model), init, keep_head=False)


def _forward_features(model: nn.Module, x: torch.Tensor):
    inner = unwrap(model)
    if inner is model:
        return model.forward_features(x)
    # wrapped (e.g. Opacus): run through the wrapper so its hooks see the forward, capture features
    feats: dict[str, torch.Tensor] = {}
    h = inner.head.register_forward_hook(lambda mod, inp, out: feats.__setitem__("f", inp[0]))
    try:
        logits = model(x)
    finally:
        h.remove()
    return logits, feats.get("f")


def _save_epoch(out: Path, model: nn.Module, meta: dict, opt, sched, epoch: int, history: list) -> None:
    import json

    from .utils import atomic_write_text

    state: dict[str, torch.Tensor] = {"epoch": torch.tensor(epoch)}
    for k, v in _flatten_optimizer(opt.state_dict()).items():
        state[f"opt/{k}"] = v
    if sched is not None:
        state["sched/last_epoch"] = torch.tensor(sched.last_epoch)
    # order: training state, weights, history, then the JSON (its presence marks a complete epoch)
    with atomic_path(out / "train_state.pt") as tmp:
        torch.save(state, tmp)
    save_checkpoint(out / "model", model, meta)
    atomic_write_text(out / "history.json", json.dumps(history, indent=1))


def _flatten_optimizer(sd: dict) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            flat[f"state/{pid}/{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    for gi, g in enumerate(sd["param_groups"]):
        for k in ("lr", "initial_lr"):
            if k in g:
                flat[f"group/{gi}/{k}"] = torch.tensor(float(g[k]), dtype=torch.float64)
    return flat


def _load_optimizer_state(opt, sched, st: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    new_state: dict = {}
    for key, v in st.items():
        if key.startswith("opt/state/"):
            _, _, pid, name = key.split("/", 3)
            new_state.setdefault(int(pid), {})[name] = v
        elif key.startswith("opt/group/"):
            _, _, gi, name = key.split("/", 3)
            sd["param_groups"][int(gi)][name] = float(v)
    sd["state"] = new_state
    opt.load_state_dict(sd)
    if sched is not None and "sched/last_epoch" in st:
        sched.last_epoch = int(st["sched/last_epoch"])
        sched._last_lr = [g["lr"] for g in opt.param_groups]
