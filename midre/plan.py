"""What a run config asks for, worked out before any data is read: the stages and the key of each.

A stage's *key* is a hash of everything its artefact depends on (the data, the architecture, the
defense, the training settings, the seeds, and the keys of the stages it reads).  midre.pipeline skips a
stage whose key is recorded as done in run.json, refuses a run directory whose recorded keys conflict
with the config, and the zoo (midre.zoo) matches its entries by the same keys.  Stages::

    data                                  the dataset splits
    backbones/<name>                      pretrained backbones (the targets fine-tune from them)
    eval                                  the evaluation model
    targets/<target>                      one per target
    priors/<kind>[-<target>]              GAN priors / augmented models (per target for KedMI, PLG-MI, LOMMA)
    attacks/<target>/<attack>             reconstructions
    metrics/<target>/<attack>             their evaluation

``RunPlan(cfg).keys`` gives every key without touching the disk (apart from hashing a local
``train.init`` file); building the plan also validates the training sections and the defenses, so a bad
config fails before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import AttackSection, RunConfig, TargetSection, validate_train
from .errors import ConfigError, MidreError
from .priors import get_prior
from .utils import config_hash, derive_seed


class RunPlan:
    """The stage keys of ``cfg`` plus what the pipeline needs to run each stage.

    Attributes
    ----------
    keys : stage name -> key, in run order.
    data_seed, eval_seed : the seeds of the data and of the evaluation model (default: the run seed).
    backbone_train, eval_train, train_cfgs : validated training sections (per backbone / of the evaluation
        model / per target).
    def_specs : target -> its defense's canonical spec.
    prior_units : prior stage -> (kind, target or None for a prior shared by all targets).
    attack_priors : (attack key, target) -> {kind: prior stage}.
    """

    def __init__(self, cfg: RunConfig, targets: list[TargetSection] | None = None, where: str = "config"):
        self.cfg = cfg
        self.targets = cfg.expanded_targets() if targets is None else targets
        self.where = where
        self.data_seed = cfg.dataset.seed if cfg.dataset.seed is not None else cfg.seed
        self.eval_seed = cfg.eval_model.seed if cfg.eval_model.seed is not None else cfg.seed
        self.keys: dict[str, str] = {"data": self._data_key()}
        self._instrument_keys()
        self._target_keys()
        self._attack_keys()

    # ------------------------------------------------------------------ seeds and prior kinds
    def prior_seed(self, kind: str, tname: str | None) -> int:
        """A target-independent prior may have a fixed seed (priors.seed: the instrument, zoo-shareable)."""
        if tname is None and self.cfg.priors.seed is not None:
            return derive_seed(self.cfg.priors.seed, "prior", kind, "")
        return derive_seed(self.cfg.seed, "prior", kind, tname or "")

    @staticmethod
    def prior_kinds(a: AttackSection) -> list[str]:
        """The prior kinds an attack needs (its class attribute ``prior_kinds``)."""
        from .attacks import ATTACKS

        cls = ATTACKS.get(a.name)
        kinds = getattr(cls, "prior_kinds", None)
        if kinds is None:  # a factory function: build it to read the attribute
            from .attacks import build_attack

            kinds = build_attack(a.name, **({"preset": a.preset} if a.preset else {})).prior_kinds
        return list(kinds)

    # ------------------------------------------------------------------ the keys, stage group by group
    def _data_key(self) -> str:
        return config_hash({"dataset": self.cfg.dataset.model_dump(mode="json"), "data_seed": self.data_seed})

    def _instrument_keys(self) -> None:
        cfg, d, base, keys = self.cfg, self.cfg.dataset, self.keys["data"], self.keys
        self.backbone_train: dict[str, dict] = {}
        for bname, b in cfg.backbones.items():
            self.backbone_train[bname] = validate_train(self.where, f"backbones.{bname}.train", b.train)
            keys[f"backbones/{bname}"] = config_hash({
                "base": _backbone_base(d, b.pool, base), "arch": b.arch, "kwargs": b.model_kwargs, "pool": b.pool,
                "train": self.backbone_train[bname], "seed": b.seed,
                **({"pool_options": b.pool_options} if b.pool_options else {})})
        self.eval_train = validate_train(self.where, "eval_model.train", cfg.eval_model.train)
        keys["eval"] = config_hash({"base": base, "arch": cfg.eval_model.arch,
                                    "kwargs": cfg.eval_model.model_kwargs, "train": self.eval_train,
                                    "seed": self.eval_seed, **_init_key(self.eval_train, keys)})

    def _target_keys(self) -> None:
        cfg, keys = self.cfg, self.keys
        self.train_cfgs: dict[str, dict] = {}
        self.def_specs: dict[str, dict] = {}
        for i, t in enumerate(self.targets):
            self.train_cfgs[t.name] = validate_train(self.where, f"targets[{i}].train", cfg.target_train(t))
            try:
                self.def_specs[t.name] = defense_spec(t.defense)
            except MidreError as e:
                raise ConfigError(f"{self.where}: 'targets[{i}].defense': {e}") from None
            keys[f"targets/{t.name}"] = config_hash({
                "base": keys["data"], "arch": cfg.target_arch(t), "kwargs": cfg.target_model_kwargs(t),
                "defense": self.def_specs[t.name], "train": self.train_cfgs[t.name], "seed": cfg.seed,
                **_init_key(self.train_cfgs[t.name], keys),
                # the paper's rule: the budget is what the converged reference kept, so it depends on that target
                **({"epochs_from": keys[f"targets/{t.epochs_from}"]} if t.epochs_from else {}),
                **({"stop_early": [keys[f"targets/{t.stop_early.of}"], t.stop_early.val_fraction]}
                   if t.stop_early else {})})

    @property
    def nodef_default(self) -> str | None:
        """The first NoDef target: the reference of every target whose config names none."""
        return next((t.name for t in self.targets if self.def_specs[t.name].get("name") == "nodef" and not t.curve),
                    None)

    @property
    def curve_targets(self) -> list[str]:
        """The points of the NoDef accuracy curve (``curve: true``), in config order."""
        return [t.name for t in self.targets if t.curve]

    def defense_references(self) -> dict[str, str]:
        """Defense target -> the NoDef it is compared with (its ``reference``, else the first NoDef);
        used by the trade-off and the paired analysis.  NoDef targets are references, not defenses."""
        refs = {t.name: t.reference or self.nodef_default for t in self.targets
                if self.def_specs[t.name].get("name") != "nodef"}
        return {t: r for t, r in refs.items() if r is not None}

    def _prior_key(self, kind: str, tname: str | None) -> str:
        cfg = self.cfg
        version = get_prior(kind).stage_version(cfg.priors.preset)    # None (keys as before) unless raised
        return config_hash({
            "base": self.keys["data"], "kind": kind, "preset": cfg.priors.preset,
            "params": cfg.priors.params.get(kind, {}), "seed": self.prior_seed(kind, tname),
            "holdout": cfg.priors.holdout, "target": self.keys[f"targets/{tname}"] if tname else None,
            **({"version": version} if version else {})})

    def _attack_keys(self) -> None:
        cfg, keys = self.cfg, self.keys
        self.prior_units: dict[str, tuple[str, str | None]] = {}
        self.attack_priors: dict[tuple[str, str], dict[str, str]] = {}
        for a in cfg.attacks:
            kinds = self.prior_kinds(a)
            for t in cfg.attack_targets(a):
                names = {}
                for kind in kinds:
                    tname = t.name if prior_needs_target(kind) else None
                    pname = f"priors/{kind}" + (f"-{tname}" if tname else "")
                    if pname not in keys:
                        keys[pname] = self._prior_key(kind, tname)
                        self.prior_units[pname] = (kind, tname)
                    names[kind] = pname
                self.attack_priors[(a.key, t.name)] = names
                version = attack_version(a.name)
                akey = config_hash({
                    "target": keys[f"targets/{t.name}"], "name": a.name, "preset": a.preset, "params": a.params,
                    "identities": a.identities, "repeats": a.repeats, "adaptive": a.adaptive, "seed": cfg.seed,
                    "priors": {k: keys[p] for k, p in names.items()}, **({"version": version} if version != 1 else {})})
                keys[f"attacks/{t.name}/{a.key}"] = akey
                keys[f"metrics/{t.name}/{a.key}"] = config_hash({
                    "attack": akey, "eval": keys["eval"], "metrics": cfg.metrics.model_dump(mode="json")})


# ============================================================================ helpers
def attack_version(name: str) -> int:
    """The attack's ``version`` (raised when its rule changes in a way its parameters do not show; 1: keys as before)."""
    from .attacks import ATTACKS

    return int(getattr(ATTACKS.get(name), "version", 1)) if name in ATTACKS else 1


def defense_spec(spec: Any) -> dict[str, Any]:
    """A target's ``defense`` entry as its defense's canonical spec (validates it)."""
    from .defenses import build_defense

    return build_defense(json.loads(json.dumps(spec))).spec()


def prior_needs_target(kind: str) -> bool:
    """Whether a prior kind is trained per target (KedMI's GAN, PLG-MI's cGAN, LOMMA's augmented models);
    the kind declares it (:attr:`midre.priors.PriorKind.needs_target`)."""
    return get_prior(kind).needs_target


def _init_key(train: dict, keys: dict[str, str]) -> dict[str, str]:
    """What a ``train.init`` adds to a stage key: the backbone's stage key, or a local file's sha256."""
    init = train.get("init")
    if not init:
        return {}
    if init.startswith("zoo:"):
        return {"init": keys[f"backbones/{init[4:]}"]}
    from .utils import sha256_file

    try:
        return {"init": sha256_file(Path(init).expanduser())}
    except OSError:
        raise ConfigError(f"pretrained weights '{init}' (train.init) not found; put the local file there or fix "
                          "the path") from None


def _backbone_base(d: Any, pool: str, base: str) -> str:
    """What a backbone's data depends on: a family's fixed pretraining pool depends only on the family and the
    resolution (not on the private/public options or the data seed), so configs that differ there share it."""
    from .data import base as data_base

    if pool == "pretrain" and str(d.name).lower() in getattr(data_base, "PRETRAINING_POOLS", {}):
        return config_hash({"pretraining_pool": str(d.name).lower(), "resolution": d.resolution})
    return base
