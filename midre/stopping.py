"""Training to convergence: one rule for every target (``train.stop``).

A target is trained "to its own convergence" when the same rule, applied to its own validation curve,
decides when it stops; a defense that learns more slowly (MIDRE never sees a whole face) then gets more
epochs, exactly as many as it needs, and NoDef gets as many as *it* needs.  The rule:

1. ``val_per_class`` images of every identity are held out of the private **training** split (never the
   test split) with a seeded draw that is the same for every target of a run (paired comparisons).  The
   model trains on the rest.
2. After every epoch the held-out accuracy (``metric: val_acc``) or loss (``val_loss``) is measured.  An
   epoch *improves* when it beats the best so far by more than ``min_delta``.
3. After ``patience`` epochs without improvement the learning rate is multiplied by ``factor``; after
   ``lr_drops`` such drops, the next ``patience`` epochs without improvement stop the training.
   ``epochs`` (the train section's) is the most it may run.
4. The kept model is the best-validation checkpoint (``keep: best``) or the last epoch's (``keep: last``,
   with ``patience: null``: a fixed budget on the same split, the paper's "as many epochs as NoDef").

The rule's state is a pure function of the per-epoch history (:func:`replay`), so a training killed and
resumed takes exactly the decisions of an uninterrupted one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import ArgumentError


class StopRule(BaseModel):
    """``train.stop``: validation split and the convergence rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["val_acc", "val_loss"] = "val_acc"
    val_per_class: int = Field(3, ge=1)
    patience: int | None = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)
    lr_drops: int = Field(2, ge=0)
    factor: float = Field(0.1, gt=0, lt=1)
    keep: Literal["best", "last"] = "best"
    # stop as soon as the validation accuracy reaches this (percent): NoDef "stopped earlier" for the NoDef
    # accuracy curve (``stop_early`` of a target sets it from its reference's converged accuracy)
    at_val_acc: float | None = Field(None, gt=0, le=100)


@dataclass
class StopState:
    """Where the rule stands after some epochs."""

    best: float = float("nan")
    best_epoch: int = 0
    bad: int = 0                          # epochs since the last improvement (or the last LR drop)
    drops: list[int] = field(default_factory=list)   # epochs after which the LR was multiplied by factor
    stopped: bool = False
    reason: str = ""

    def summary(self, rule: StopRule, epochs_run: int, max_epochs: int) -> dict[str, Any]:
        return {"metric": rule.metric, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": epochs_run, "max_epochs": max_epochs, "lr_drops": list(self.drops), "factor": rule.factor,
                "reason": self.reason or ("max_epochs" if epochs_run >= max_epochs else "running"),
                "keep": rule.keep, "kept_epoch": self.best_epoch if rule.keep == "best" else epochs_run}


def _score(rule: StopRule, rec: dict[str, Any]) -> float:
    v = rec.get(rule.metric)
    if v is None:
        raise ArgumentError(f"the history has no '{rule.metric}' for epoch {rec.get('epoch')}; the stop rule needs "
                            "a validation figure every epoch")
    return float(v) if rule.metric == "val_acc" else -float(v)    # higher is better


def step(rule: StopRule, st: StopState, rec: dict[str, Any]) -> str:
    """Apply one finished epoch's record; returns ``""``, ``"drop"`` (multiply the LR now) or ``"stop"``."""
    if st.stopped:                      # a stopped run takes no more decisions
        return "stop"
    s = _score(rule, rec)
    epoch = int(rec["epoch"])
    if rule.at_val_acc is not None and float(rec.get("val_acc", float("nan"))) >= rule.at_val_acc:
        st.best, st.best_epoch, st.stopped, st.reason = s, epoch, True, "reached at_val_acc"
        return "stop"
    if math.isnan(st.best) or s > st.best + rule.min_delta:
        st.best, st.best_epoch, st.bad = s, epoch, 0
        return ""
    st.bad += 1
    if rule.patience is None or st.bad < rule.patience:
        return ""
    st.bad = 0
    if len(st.drops) < rule.lr_drops:
        st.drops.append(epoch)
        return "drop"
    st.stopped, st.reason = True, "patience"
    return "stop"


def replay(rule: StopRule, history: Sequence[dict[str, Any]]) -> StopState:
    """The rule's state after the epochs of ``history`` (resume: the same decisions as without the kill)."""
    st = StopState()
    for rec in history:
        step(rule, st, rec)
    return st


def best_value(rule: StopRule, st: StopState) -> float:
    """The best validation figure in its own units (accuracy %, or loss)."""
    return st.best if rule.metric == "val_acc" else -st.best


def holdout_indices(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): ``per_class`` seeded images of every class held out.

    Refuses (one line) a class with too few images to keep at least one for training."""
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(int(seed))
    val: list[torch.Tensor] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) <= per_class:
            raise ArgumentError(f"train.stop.val_per_class is {per_class} but class {c} has only {len(idx)} training "
                                f"images; use a smaller val_per_class (at most {len(idx) - 1})")
        val.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    v = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[v] = False
    return torch.nonzero(mask).flatten(), v


def dataset_labels(ds: Any) -> torch.Tensor:
    """Every label of a dataset (its ``targets`` when it has them, else read item by item)."""
    t = getattr(ds, "targets", None)
    if t is not None:
        return torch.as_tensor(t).long()
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))]).long()


def split_dataset(ds: Any, rule: StopRule, seed: int) -> tuple[Any, Any]:
    """(the images trained on, the validation images) of ``ds`` under ``rule``."""
    tr, va = holdout_indices(dataset_labels(ds), rule.val_per_class, seed)
    if hasattr(ds, "subset"):
        return ds.subset(tr), ds.subset(va)
    from torch.utils.data import Subset

    return Subset(ds, tr.tolist()), Subset(ds, va.tolist())


def reference_stop(reference_json: Any) -> dict[str, Any]:
    """The ``stop`` record of a converged target's model.json (one ConfigError line when it has none)."""
    import json
    from pathlib import Path

    from .errors import ConfigError

    path = Path(reference_json)
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["stop"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"'{path.parent}' holds no converged training (model.json without 'stop'); train the "
                          "reference target with train.stop first") from None


def budget_of(train: dict[str, Any], reference_json: Any) -> dict[str, Any]:
    """The paper's rule (``epochs_from``): ``train`` with the converged reference's budget -- as many epochs as
    the reference kept, its learning-rate drops as milestones, no early stop, the last epoch kept, and the same
    validation split (``val_per_class``) so both train on the same images."""
    stop = reference_stop(reference_json)
    rule = StopRule(**train["stop"])
    kept = int(stop["kept_epoch"])
    return {**train, "epochs": kept, "schedule": "multistep", "gamma": float(stop.get("factor", rule.factor)),
            "milestones": [int(d) for d in stop["lr_drops"] if int(d) < kept],
            "stop": {**rule.model_dump(), "patience": None, "lr_drops": 0, "keep": "last"}}


def early_stop_of(train: dict[str, Any], reference_json: Any, fraction: float) -> dict[str, Any]:
    """``stop_early`` (a NoDef curve point): ``train`` stopped at the first epoch whose validation accuracy
    reaches ``fraction`` of the converged reference's best, keeping that epoch.  With the reference's own
    settings and seed this is the reference's training stopped earlier (same trajectory, cut short)."""
    from .errors import ConfigError

    stop = reference_stop(reference_json)
    if stop.get("metric") != "val_acc":
        raise ConfigError(f"stop_early needs a reference stopped on val_acc; '{reference_json}' used "
                          f"{stop.get('metric')}")
    return {**train, "stop": {**train["stop"], "at_val_acc": round(float(stop["best"]) * fraction, 4), "keep": "last"}}
