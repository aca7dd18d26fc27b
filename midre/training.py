"""THE classifier training loop.  Targets, evaluation models, TL-DMI pre-training and LOMMA-style
students all go through :func:`train_classifier`; defenses plug in through the hooks of
:class:`midre.defenses.base.Defense` and never fork it.

Per batch: x, y, idx -> device -> ``train.augment`` if set (the release's 224-px crop and colour jitter,
:mod:`midre.augment`) -> random horizontal flip -> ``defense.transform_batch`` (MIDRE's eraser,
batched, on the device; Trap-MID's trigger step and triggered copies) -> forward (AMP on GPU)
-> ``defense.task_loss`` or cross-entropy + ``defense.regularizer`` -> backward -> gradient clipping
(after backward) -> optimizer step.  A defense's own state (``defense.state_dict``) is checkpointed with
the optimizer's.

Every epoch ends with natural accuracy on the test split and an atomic checkpoint
(``model.safetensors`` + ``model.json`` + ``train_state.pt``).  Calling again with the same ``out_dir``
resumes after the last finished epoch; each epoch's randomness is derived from (seed, epoch), so a
resumed run reaches exactly the numbers of an uninterrupted one on CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch.utils.data import DataLoader, Dataset

from . import tblog
from .augment import Augment, augment_batch
from .checkpoint import load_state, save_checkpoint
from .defenses.base import Defense, StepContext, TrainContext, build_defense
from .distributed import world as _world
from .errors import ArgumentError, CheckpointError, RunDirError, TrainingDivergedError
from .stopping import StopRule, StopState, replay, split_dataset
from .stopping import step as stop_step
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
    augment: Augment | None = None       # crop / colour jitter before the flip (midre.augment); unset: none
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    # start from pretrained weights (a LOCAL file; `midre run` also resolves "zoo:NAME"): the backbone is
    # loaded, the head is always re-initialised (fine-tuning on new classes)
    init: str | None = None
    # train to convergence (midre.stopping): hold out validation images of the TRAINING split, stop when the
    # validation figure stops improving; ``epochs`` is then the most it may run
    stop: StopRule | None = None

    @model_validator(mode="after")
    def _stop_needs_constant_lr(self) -> TrainConfig:
        if self.stop is not None and self.stop.lr_drops > 0 and self.schedule != "none":
            raise ValueError("stop.lr_drops lowers the learning rate itself; use schedule: none with it "
                             "(or stop.lr_drops: 0 to keep the schedule)")
        return self

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
    test_acc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
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
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
                      device: torch.device | str | None = None) -> float:
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


def _meta(model: nn.Module, defense: Defense, cfg: TrainConfig, train_set: Any, meta: dict | None) -> dict:
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


@dataclass
class _Loop:
    """What the epochs of one training run share (built once by :func:`train_classifier`)."""

    cfg: TrainConfig
    defense: Defense
    ddp: Any
    device: torch.device
    model: nn.Module            # the defense's model: what is checkpointed
    train_model: nn.Module      # what batches run through (defense / data-parallel wrappers)
    opt: Any
    sched: Any
    loader: Any
    gen: torch.Generator        # the loader's shuffling generator
    train_set: Dataset
    test_set: Dataset | None
    out: Path | None
    tb: Any = None
    use_amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    scaler: Any = None
    val_set: Dataset | None = None  # held out of the training split by ``cfg.stop``
    stop: StopState | None = None
    best_weights: dict[str, torch.Tensor] | None = None


def _prepare_model(model: nn.Module, defense: Defense, cfg: TrainConfig, ddp: Any, device: torch.device,
                   out: Path | None, progress: bool, train_set: Dataset, test_set: Dataset | None,
                   public_set: Dataset | None) -> tuple[nn.Module, bool]:
    """Wrap the model for ``defense`` and run its ``prepare`` hook; returns ``(model, resuming)``."""
    seed_everything(derive_seed(cfg.seed, "init"))
    model = defense.wrap_model(model)
    model.to(device)
    ctx = TrainContext(model=model, train_set=train_set, test_set=test_set, public_set=public_set, config=cfg,
                       device=device, out_dir=out, progress=progress, train=train_classifier)
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
    return model, resumed


def _build_loop(model: nn.Module, defense: Defense, cfg: TrainConfig, ddp: Any, device: torch.device,
                train_set: Dataset, test_set: Dataset | None, out: Path | None) -> _Loop:
    """Optimizer, schedule and loader, each wrapped by the defense and for data-parallel training."""
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg)
    gen = torch.Generator()
    loader = DataLoader(_Indexed(train_set), **ddp.loader_kwargs(len(train_set), cfg.batch_size, gen),
                        num_workers=cfg.num_workers, drop_last=False,
                        pin_memory=(device.type == "cuda"))
    train_model, opt, loader = defense.wrap_training(model, opt, loader)
    train_model = ddp.wrap(model, train_model, device)
    return _Loop(cfg=cfg, defense=defense, ddp=ddp, device=device, model=model, train_model=train_model,
                 opt=opt, sched=sched, loader=loader, gen=gen, train_set=train_set, test_set=test_set, out=out)


def _resume(s: _Loop) -> tuple[int, list[dict[str, Any]]]:
    """Load the last finished epoch of ``s.out`` (weights, optimizer, schedule, history) into ``s``;
    returns ``(start_epoch, history)``; a damaged resume state starts the training over."""
    import json

    out = s.out
    try:
        st = load_state(out / "train_state.pt")
        weights = load_state(out / "model.safetensors")
    except CheckpointError:
        return 0, []
    saved = json.loads((out / "model.json").read_text())
    if int(saved.get("epochs", s.cfg.epochs)) != s.cfg.epochs or saved.get("defense") != s.defense.spec():
        raise RunDirError(
            f"'{out}' holds a training run with other settings (epochs/defense); use a new --out or delete it")
    unwrap(s.model).load_state_dict(weights, strict=True)
    _load_optimizer_state(s.opt, s.sched, st)
    s.defense.load_state_dict({k[len("defense/"):]: v for k, v in st.items() if k.startswith("defense/")})
    start_epoch = int(st["epoch"].item())
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
    return start_epoch, history[:start_epoch]


def _train_step(s: _Loop, x: torch.Tensor, y: torch.Tensor, idx: Any, epoch: int,
                flip_gen: torch.Generator, aug_gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One optimisation step on a batch (flip, defense transform, forward, loss, backward, clip, step);
    returns ``(loss, logits, y)`` with ``y`` as the defense transformed it, or None (no step) when the defense
    left fewer than 2 images."""
    cfg, defense = s.cfg, s.defense
    if cfg.augment is not None:
        x = augment_batch(x, cfg.augment, aug_gen)
    if cfg.hflip:
        x = _random_hflip(x, flip_gen)
    x, y = defense.transform_batch(x, y, torch.as_tensor(idx))
    if x.shape[0] < 2 and len(s.train_set) > 1:   # a defense left (almost) nothing of this batch (Entire Erasing)
        return None
    with torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.use_amp):
        if defense.needs_features:
            logits, feats = _forward_features(s.train_model, x)
        else:
            logits, feats = s.train_model(x), None
        loss = defense.task_loss(logits, y)
        if loss is None:
            loss = F.cross_entropy(logits.float(), y)
        reg = defense.regularizer(StepContext(model=s.train_model, x=x, y=y, logits=logits, features=feats,
                                              epoch=epoch, epochs=cfg.epochs))
        if reg is not None:
            loss = loss + reg
    if not torch.isfinite(loss):
        kept = " (the last good checkpoint is kept)" if s.out is not None and (s.out / "model.json").exists() else ""
        raise TrainingDivergedError(
            f"loss became {loss.item()} in epoch {epoch + 1}{kept}; lower the learning rate or check the defense settings")
    s.opt.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if cfg.grad_clip is not None:  # after backward, so it clips the real gradients
        s.scaler.unscale_(s.opt)
        torch.nn.utils.clip_grad_norm_(s.train_model.parameters(), cfg.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    s.tb.step(epoch, x, y, logits, loss, s.opt)
    return loss, logits, y


def _run_epoch(s: _Loop, epoch: int, prog: Any, task: Any) -> dict[str, Any]:
    """Train one epoch (its randomness derived from (seed, epoch)) and return its history record."""
    cfg, ddp = s.cfg, s.ddp
    t0 = time.perf_counter()
    seed_everything(derive_seed(cfg.seed, "epoch", epoch, *ddp.keys))
    s.gen.manual_seed(derive_seed(cfg.seed, "order", epoch))
    flip_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "flip", epoch, *ddp.keys))
    aug_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "augment", epoch, *ddp.keys))
    s.defense.on_epoch_start(epoch, cfg.epochs)
    s.train_model.train()
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for x, y, idx in s.loader:
        x = x.to(s.device, non_blocking=True)
        y = torch.as_tensor(y).to(s.device, non_blocking=True)
        if x.shape[0] == 0 or (x.shape[0] == 1 and len(s.train_set) > 1):
            # a trailing batch of one image breaks BatchNorm1d heads (VGG16, IR nets); skip it
            prog.update(task, advance=1)
            continue
        step = _train_step(s, x, y, idx, epoch, flip_gen, aug_gen)
        if step is None:
            prog.update(task, advance=1)
            continue
        loss, logits, y = step
        n = y.shape[0]
        tot_loss += float(loss.detach()) * n
        tot_correct += int((logits.detach().argmax(1) == y).sum())
        tot_n += n
        prog.update(task, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {tot_loss / max(tot_n, 1):.3f}")
    if s.sched is not None:
        s.sched.step()
    tot_loss, tot_correct, tot_n = ddp.sum(tot_loss, tot_correct, tot_n)
    rec: dict[str, Any] = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                           "train_acc": 100.0 * tot_correct / max(tot_n, 1)}
    if s.test_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
                                   or s.val_set is not None):
        rec["test_acc"] = evaluate_accuracy(unwrap(s.train_model), s.test_set, device=s.device)
    if s.val_set is not None:          # the stop rule's figure: held-out TRAINING images, never the test split
        logits, labels = predict_logits(unwrap(s.train_model), s.val_set, device=s.device)
        rec["val_acc"] = float((logits.argmax(1) == labels).float().mean().item() * 100.0)
        rec["val_loss"] = float(F.cross_entropy(logits, labels).item())
        rec["lr"] = float(s.opt.param_groups[0]["lr"])
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _run_meta(s: _Loop, meta: dict | None, init_report: dict | None, epoch: int, test_acc: float | None,
              history: list, report: dict | None = None) -> dict:
    """Checkpoint metadata after ``epoch`` epochs (``report``: the defense's report, else asked for now)."""
    m = _meta(s.model, s.defense, s.cfg, s.train_set, meta)
    m["init_report"] = init_report
    done = epoch == s.cfg.epochs or (s.stop is not None and s.stop.stopped)
    m.update({"epoch": epoch, "epochs": s.cfg.epochs, "test_acc": test_acc, "history": history,
              "defense_report": s.defense.report() if report is None else report, "complete": done})
    if s.stop is not None:
        m["stop"] = s.stop.summary(s.cfg.stop, epoch, s.cfg.epochs)
    return m


def _checkpoint_epoch(s: _Loop, m: dict, epoch: int, history: list) -> None:
    """Write the checkpoint of a finished epoch (main process only) and sync the data-parallel ranks."""
    if s.ddp.size > 1:
        m["world_size"] = s.ddp.size   # provenance: trained data-parallel (last session's size)
    if s.ddp.is_main:
        _save_epoch(s.out, s.model, m, s.opt, s.sched, epoch, history, s.defense.state_dict())
    s.ddp.after_checkpoint(epoch)


def train_classifier(model: nn.Module, train_set: Dataset, test_set: Dataset | None = None,
                     defense: Defense | str | dict | None = None, config: TrainConfig | dict | None = None,
                     out_dir: str | Path | None = None, public_set: Dataset | None = None,
                     meta: dict | None = None, progress: bool = True, description: str = "train") -> TrainResult:
    """Train ``model`` on ``train_set`` under ``defense``; see the module docstring."""
    cfg = make_config(config)
    defense = build_defense(defense)
    ddp = _world()   # data-parallel under torchrun (midre.distributed); one process: no-op
    device = ddp.device(resolve_device(cfg.device))
    progress = progress and ddp.is_main
    if len(train_set) == 0:
        raise ArgumentError("the training set is empty; check the dataset and its split")
    out = Path(out_dir) if out_dir is not None else None
    val_set = None
    if cfg.stop is not None:   # the same seeded split for every model trained with this seed (paired)
        train_set, val_set = split_dataset(train_set, cfg.stop, derive_seed(cfg.seed, "val-split"))

    init_report = _load_init(model, cfg.init)
    model, resumed = _prepare_model(model, defense, cfg, ddp, device, out, progress, train_set, test_set,
                                    public_set)
    s = _build_loop(model, defense, cfg, ddp, device, train_set, test_set, out)
    s.val_set = val_set
    start_epoch, history = _resume(s) if resumed else (0, [])

    s.use_amp = cfg.amp and device.type == "cuda"
    s.amp_dtype = torch.bfloat16 if (s.use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    s.scaler = torch.amp.GradScaler("cuda", enabled=s.use_amp and s.amp_dtype == torch.float16)
    s.tb = tblog.training(out, description, len(s.loader))   # no-op unless a TensorBoard session is open
    epochs_run, test_acc = _fit(s, start_epoch, history, meta, init_report, progress, description)

    if s.stop is not None and cfg.stop.keep == "best" and s.stop.best_epoch > 0:
        test_acc = _restore_best(s, history)
    final = unwrap(s.train_model)
    final.eval()
    report = defense.report()
    m = _run_meta(s, meta, init_report, epochs_run, test_acc, history, report=report)
    if out is not None and s.stop is not None and ddp.is_main:   # the kept model is what later stages load
        save_checkpoint(out / "model", s.model, m)
    return TrainResult(model=final, test_acc=test_acc, history=history,
                       checkpoint=(out / "model.safetensors") if out is not None else None,
                       defense_report=report, meta=m)


def _fit(s: _Loop, start_epoch: int, history: list, meta: dict | None, init_report: dict | None,
         progress: bool, description: str) -> tuple[int, float | None]:
    """The epochs from ``start_epoch`` on, each checkpointed; the stop rule (if any) may end them early.
    Returns ``(epochs run, last test accuracy)``."""
    cfg, out = s.cfg, s.out
    test_acc = history[-1].get("test_acc") if history else None
    if cfg.stop is not None:
        s.stop = replay(cfg.stop, history)
    epoch = start_epoch
    with make_progress(progress) as prog:
        task = prog.add_task(description, total=cfg.epochs * len(s.loader),
                             completed=start_epoch * len(s.loader), status="")
        while epoch < cfg.epochs and not (s.stop is not None and s.stop.stopped):
            rec = _run_epoch(s, epoch, prog, task)
            epoch += 1
            test_acc = rec.get("test_acc", test_acc)
            history.append(rec)
            s.tb.epoch(rec, s.opt)
            status = f"epoch {epoch}/{cfg.epochs} acc {test_acc if test_acc is not None else float('nan'):.1f}%"
            if s.stop is not None:
                status += _stop_epoch(s, rec, epoch)
            prog.update(task, status=status)
            if out is not None:
                _checkpoint_epoch(s, _run_meta(s, meta, init_report, epoch, test_acc, history), epoch, history)
    return epoch, test_acc


def _stop_epoch(s: _Loop, rec: dict[str, Any], epoch: int) -> str:
    """Apply the stop rule to a finished epoch (LR drop, best weights); returns a progress-line suffix."""
    action = stop_step(s.cfg.stop, s.stop, rec)
    if s.stop.best_epoch == epoch:
        s.best_weights = {k: v.detach().clone() for k, v in unwrap(s.model).state_dict().items()}
        if s.out is not None and s.ddp.is_main:
            save_checkpoint(s.out / "best", s.model, {"epoch": epoch, "val": rec.get(s.cfg.stop.metric)})
    if action == "drop":
        for g in s.opt.param_groups:
            g["lr"] = g["lr"] * s.cfg.stop.factor
    return f" val {rec['val_acc']:.1f}%" + (" (lr drop)" if action == "drop" else " (stopped)" if action == "stop" else "")


def _restore_best(s: _Loop, history: list) -> float | None:
    """Load the best-validation weights (kept in memory, or ``best.safetensors`` after a resume); returns
    their test accuracy as measured in that epoch."""
    weights = s.best_weights
    if weights is None:
        if s.out is None or not (s.out / "best.safetensors").exists():
            raise CheckpointError("the best-validation checkpoint is missing; delete the run directory and train again")
        weights = load_state(s.out / "best.safetensors")
    unwrap(s.model).load_state_dict(weights, strict=True)
    rec = history[s.stop.best_epoch - 1]
    if "test_acc" in rec:
        return rec["test_acc"]
    return evaluate_accuracy(unwrap(s.model), s.test_set, device=s.device) if s.test_set is not None else None


def _load_init(model: nn.Module, init: str | None) -> dict[str, Any] | None:
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


def _save_epoch(out: Path, model: nn.Module, meta: dict, opt, sched, epoch: int, history: list,
                defense_state: dict[str, torch.Tensor] | None = None) -> None:
    import json

    from .utils import atomic_write_text

    state: dict[str, torch.Tensor] = {"epoch": torch.tensor(epoch)}
    for k, v in _flatten_optimizer(opt.state_dict()).items():
        state[f"opt/{k}"] = v
    for k, v in (defense_state or {}).items():    # e.g. Trap-MID's discriminator: exact resume
        state[f"defense/{k}"] = v.detach().cpu()
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
