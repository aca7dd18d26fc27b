"""The typed config of ``midre run``: YAML in, validated up front, one clear line out.

A config is a YAML mapping (``midre/configs/quickstart.yaml`` is the embedded default)::

    extends: quickstart.yaml        # optional: another config file (relative path or built-in name)
    name: my-study
    seed: 0                         # or  seeds: [0, 1, 2]  -> one pipeline per seed (RUN/seed-<s>/)
    device: auto                    # auto | cpu | cuda | cuda:N   (not part of the config hash)
    dataset: {name: synthetic, root: null, resolution: 32, seed: null, options: {num_private: 50}}
    eval_model: {arch: smallresnet, model_kwargs: {}, train: {epochs: 8, lr: 0.05}}
    defaults: {arch: smallcnn, model_kwargs: {}, train: {epochs: 6}}   # shared by every target
    targets:
      - {name: nodef, defense: nodef}
      - {name: midre-0.4, defense: {name: midre, area: 0.4}, train: {epochs: 8}}
    attacks:
      - {name: gmi, preset: quick, params: {iterations: 300}, identities: 0-9, repeats: 3, adaptive: false}
    priors: {preset: quick, params: {gan: {...}}}
    metrics: {fid: eval, inception_weights: null, knn: true, n_boot: 1000}
    report: {enabled: true, title: null, max_identities: 8}
    analyses: {features: false, sweep_area: []}
    sweep: {...}                    # read by `midre sweep` only (midre.sweep), ignored by a single run

Merging with ``extends``: mappings merge key by key (recursively), everything else (lists included) is
replaced by the child's value.  A target's ``train`` is ``defaults.train`` updated by its own keys.
``identities`` is a range string (``"0-9"``, ``"0-4,7"``), a list of ids, ``"all"``, or an integer N
meaning *the first N identities*.

Every mistake is a :class:`midre.errors.ConfigError` naming the key path and the fix: unknown keys
(with did-you-mean), wrong types, negative epochs / batch sizes / iterations, unknown dataset /
architecture / defense / attack names (through their registries), missing dataset roots.
"""
from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, MidreError, did_you_mean
from .utils import config_hash

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EMBEDDED_DATASETS = ("synthetic", "digits")   # generated or shipped: no root needed
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Keys that do not change any number of a run (left out of the run-directory hash).
NEW_TARGET_KEYS = {"curve": False, "epochs_from": None, "stop_early": None}
NON_RESULT_KEYS = ("name", "description", "expected_time", "device", "report", "sweep", "logging", "gates")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(v: str, what: str) -> str:
    if not _NAME_RE.match(str(v)):
        raise ValueError(f"{what} '{v}' may only use letters, digits and . _ + - (it names a directory)")
    return v


class DatasetSection(_Section):
    """Which data: a registered dataset family (``midre datasets``)."""

    name: str = "synthetic"
    root: str | None = None
    resolution: int | None = Field(None, ge=8)
    seed: int | None = Field(None, ge=0)   # data generation / split seed; default: the run seed
    options: dict[str, Any] = {}


class EvalModelSection(_Section):
    """The evaluation model (another, stronger architecture trained on the same private identities)."""

    arch: str = "smallresnet"
    model_kwargs: dict[str, Any] = {}
    train: dict[str, Any] = {}
    seed: int | None = Field(None, ge=0)   # fixed seed (part of the instrument, zoo-shareable); default: run seed


class BackboneSection(_Section):
    """A backbone pretrained with plain cross-entropy on a pool of identities disjoint from the private
    ones (the ImageNet / MS-Celeb analogue); targets start from it with ``train.init: zoo:<name>``."""

    arch: str = "smallcnn"
    model_kwargs: dict[str, Any] = {}
    pool: Literal["pretrain", "public"] = "pretrain"
    pool_options: dict[str, Any] = {}      # e.g. {num_identities: 500, images_per_id: 30} (synthetic2)
    train: dict[str, Any] = {}
    seed: int = Field(0, ge=0)


class GatesSection(_Section):
    """Validity gates: floors the instrument must reach on NoDef before defenses are compared (midre.gates).
    Defaults: the embedded benchmark's floors, fixed from the paper's NoDef profile (issue 9)."""

    enabled: bool = True
    eval_acc: float = Field(95.0, ge=0, le=100)
    target_acc: float = Field(85.0, ge=0, le=100)
    attack_top1: dict[str, float] = {"plgmi": 80.0, "kedmi": 60.0, "lomma_gmi": 50.0}
    weakest: str | None = "gmi"        # this attack's NoDef top-1 must stay below every other attack's
    prior_coverage: float = Field(0.5, ge=0)   # GAN prior's coverage of held-out public images / real images



class DefaultsSection(_Section):
    """Settings shared by every target (each target may override them)."""

    arch: str = "smallcnn"
    model_kwargs: dict[str, Any] = {}
    train: dict[str, Any] = {}


class StopEarly(_Section):
    """``targets[i].stop_early``: which converged target, and what fraction of its validation accuracy."""

    of: str
    val_fraction: float = Field(..., gt=0, lt=1)


class TargetSection(_Section):
    """One target model: architecture + defense + training settings."""

    name: str
    arch: str | None = None
    model_kwargs: dict[str, Any] | None = None
    defense: Any = "nodef"
    train: dict[str, Any] = {}
    reference: str | None = None   # the NoDef target for the trade-off (default: the first nodef target)
    # a point of the NoDef accuracy curve (NoDef stopped earlier; `midre analyze frontier`): not a reference,
    # not a defense, and not checked by the validity gates (they apply to the reference NoDef alone)
    curve: bool = False
    # the paper's rule: train as many epochs as this (converged, train.stop) target kept, with its learning-rate
    # drops, on the same validation split, keeping the last epoch
    epochs_from: str | None = None
    # a NoDef curve point "stopped earlier": {of: TARGET, val_fraction: F} stops at the first epoch whose
    # validation accuracy reaches F x that converged target's best (same settings = its run cut short)
    stop_early: StopEarly | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "target name")


class AttackSection(_Section):
    """One attack run against every target (or the listed ``targets``)."""

    name: str
    label: str | None = None
    preset: str | None = None
    params: dict[str, Any] = {}
    identities: Any = "0-9"
    repeats: int = Field(1, ge=1)
    adaptive: bool = False
    targets: list[str] | None = None
    # False: reported beside the comparison -- its NoDef floor, its place in the weakest-attack gate and the
    # priors only it uses are listed for information and do not decide validity; a decision rule may not name it
    gated: bool = True

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v, "attack label")

    @field_validator("identities")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (str, int, list)):
            raise ValueError("identities must be a range like '0-9', a list of ids, 'all', or a count N")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"identities count must be at least 1, got {v}")
        if isinstance(v, list) and (not v or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)):
            raise ValueError("identities list must hold non-negative integers, e.g. [0, 1, 2]")
        if isinstance(v, str) and v != "all":
            from .utils import parse_id_ranges

            try:
                parse_id_ranges(v)
            except MidreError as e:
                raise ValueError(str(e)) from None
        return v

    @property
    def key(self) -> str:
        """Directory name of this attack under RUN/attacks/<target>/."""
        return self.label or (f"{self.name}-adaptive" if self.adaptive else self.name)


class PriorsSection(_Section):
    """GAN priors / augmented models (trained on PUBLIC data only)."""

    preset: str | None = None
    params: dict[str, dict[str, Any]] = {}   # per prior kind, e.g. {gan: {iterations: 2000}}
    seed: int | None = Field(None, ge=0)  # fixed seed of the target-independent GAN (zoo-shareable)
    holdout: float = Field(0.1, ge=0, lt=1)  # share of public images held out of prior training (quality figure)


class MetricsSection(_Section):
    fid: Literal["eval", "inception", "none"] = "eval"
    inception_weights: str | None = None
    knn: bool = True
    n_boot: int = Field(1000, ge=0)
    batch_size: int = Field(256, ge=1)


class ReportSection(_Section):
    enabled: bool = True
    title: str | None = None
    max_identities: int = Field(8, ge=1)


class LoggingSection(_Section):
    """Optional logs (midre/tblog.py): tensorboard = true (RUN_DIR/tensorboard) or a directory."""

    tensorboard: bool | str = False


class AnalysesSection(_Section):
    features: bool = False
    sweep_area: list[float] = []

    @field_validator("sweep_area")
    @classmethod
    def _areas(cls, v: list[float]) -> list[float]:
        for a in v:
            if not 0.0 < a <= 1.0:
                raise ValueError(f"every a_e in sweep_area must be in (0, 1], got {a}")
        return v


class RunConfig(_Section):
    """A whole ``midre run`` (see the module docstring for the YAML)."""

    name: str = "run"
    description: str = ""
    expected_time: str = ""     # shown by `midre run --list`; measured figures only
    seed: int = Field(0, ge=0)
    seeds: list[int] | None = None
    device: str = "auto"
    dataset: DatasetSection = DatasetSection()
    eval_model: EvalModelSection = EvalModelSection()
    backbones: dict[str, BackboneSection] = {}
    defaults: DefaultsSection = DefaultsSection()
    targets: list[TargetSection] = Field(..., min_length=1)
    attacks: list[AttackSection] = []
    priors: PriorsSection = PriorsSection()
    metrics: MetricsSection = MetricsSection()
    report: ReportSection = ReportSection()
    analyses: AnalysesSection = AnalysesSection()
    logging: LoggingSection = LoggingSection()
    gates: GatesSection = GatesSection()
    sweep: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "run name")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("seeds must list at least one seed, e.g. [0, 1, 2]")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be non-negative integers")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a seed; list each seed once")
        return v

    # --------------------------------------------------------------------------------- helpers
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    def for_seed(self, seed: int) -> RunConfig:
        """The single-seed config of one pipeline of a multi-seed study."""
        return self.model_copy(update={"seed": int(seed), "seeds": None}, deep=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Hash of everything that changes numbers (not name, device, report, sweep)."""
        d = self.to_dict()
        for k in NON_RESULT_KEYS:
            d.pop(k, None)
        for t in d.get("targets", []):   # keys added later hash only when set: older runs keep their hash
            for k, default in NEW_TARGET_KEYS.items():
                if t.get(k) == default:
                    t.pop(k, None)
        return config_hash(d)

    def target_arch(self, t: TargetSection) -> str:
        return t.arch or self.defaults.arch

    def target_model_kwargs(self, t: TargetSection) -> dict[str, Any]:
        return dict(self.defaults.model_kwargs if t.model_kwargs is None else t.model_kwargs)

    def target_train(self, t: TargetSection) -> dict[str, Any]:
        return {**self.defaults.train, **t.train}

    def attack_targets(self, a: AttackSection) -> list[TargetSection]:
        return [t for t in self.expanded_targets() if a.targets is None or t.name in a.targets]

    def expanded_targets(self) -> list[TargetSection]:
        """Targets plus one MIDRE target per ``analyses.sweep_area`` value not already present."""
        out = list(self.targets)
        names = {t.name for t in out}
        for a in self.analyses.sweep_area:
            name = f"midre-{a:g}"
            if name not in names:
                out.append(TargetSection(name=name, defense={"name": "midre", "area": float(a)}))
                names.add(name)
        return out


# ============================================================================ loading + merging
def builtin_configs() -> list[str]:
    """Names of the configs shipped in midre/configs (e.g. 'quickstart', 'paper/celeba')."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def builtin_config_summary(name: str) -> tuple[str, str]:
    """(description, expected_time) of a built-in config, following ``extends`` for missing keys."""
    path = CONFIG_DIR / f"{name}.yaml"
    desc = when = ""
    for _ in range(8):  # an extends chain is short; this bounds a cycle
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        desc, when = desc or str(raw.get("description", "")), when or str(raw.get("expected_time", ""))
        if (desc and when) or not raw.get("extends"):
            break
        path = (path.parent / str(raw["extends"])).resolve()
    return desc, when


def resolve_config_path(source: str | os.PathLike, base_dir: Path | None = None) -> Path:
    """A config path: relative to ``base_dir`` / the cwd, else a built-in name (``quickstart``)."""
    s = str(source)
    cands = []
    p = Path(s).expanduser()
    if base_dir is not None and not p.is_absolute():
        cands.append(base_dir / p)
    cands.append(p)
    name = s[len("builtin:"):] if s.startswith("builtin:") else s
    cands.append(CONFIG_DIR / name)
    if not name.endswith((".yaml", ".yml")):
        cands.append(CONFIG_DIR / f"{name}.yaml")
    for c in cands:
        if c.is_file():
            return c.resolve()
    if p.is_dir():
        raise ConfigError(f"config '{s}' is a directory; give a YAML file (to continue a run use --resume {s})")
    builtins = builtin_configs()
    raise ConfigError(f"config file '{s}' not found{did_you_mean(name.removesuffix('.yaml'), builtins)}; "
                      f"give a YAML path or one of the {len(builtins)} built-in configs (`midre run --list` names them)")


def deep_merge(base: dict, child: dict) -> dict:
    """Mappings merge recursively; any other value (lists included) is replaced by the child's."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e.strerror}; check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(f"config '{path}' is not valid YAML{where} ({problem}); fix the syntax there") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a YAML mapping of keys (name:, dataset:, targets: ...), "
                          f"not a {type(data).__name__}")
    return data


def load_raw(source: str | os.PathLike, _seen: list[Path] | None = None,
             _base_dir: Path | None = None) -> dict:
    """Read a YAML config and everything it ``extends``, merged (not validated)."""
    path = resolve_config_path(source, _base_dir)
    seen = list(_seen or [])
    if path in seen:
        chain = " -> ".join(p.name for p in [*seen, path])
        raise ConfigError(f"config '{path}' extends itself ({chain}); remove the cycle")
    seen.append(path)
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"config '{path}': 'extends' must be a file name or a list of file names")
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, load_raw(parent, seen, path.parent))
    return deep_merge(merged, data)


def _with_parents(raw: dict) -> dict:
    """An in-memory config dict with its ``extends`` parents (paths or built-in names) merged under it."""
    if "extends" not in raw:
        return raw
    parents = raw.pop("extends")
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else list(parents):
        merged = deep_merge(merged, load_raw(parent))
    return deep_merge(merged, raw)


def raw_config(config: Any) -> dict[str, Any]:
    """A raw (unvalidated) config dict from a RunConfig, a dict (its ``extends`` resolved) or a
    name / path (via :func:`load_raw`)."""
    if isinstance(config, RunConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return _with_parents(copy.deepcopy(config))
    return load_raw(config)


def set_override(data: dict, key: str, value: Any) -> dict:
    """Apply ``a.b.0.c=value`` (``--set``) to a raw config mapping in place; returns it."""
    parts = key.split(".")
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' has {len(cur)} entries; use an index 0-{len(cur) - 1}")
            idx = int(part)
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                if cur.get(part) is None:
                    cur[part] = {}
                cur = cur[part]
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping or list")
    return data


def load_config(source: Any = "quickstart", overrides: dict[str, Any] | None = None,
                check: bool = True) -> RunConfig:
    """Load + validate a config: a YAML path, a built-in name, a mapping, or a RunConfig.

    ``overrides`` maps dotted keys to values (``{"seed": 3, "dataset.root": "/data/celeba"}``).
    ``check`` also validates names against the registries (dataset, architectures, defenses, attacks).
    """
    if isinstance(source, RunConfig):
        raw, where = source.to_dict(), "config"
    elif isinstance(source, dict):
        raw, where = _with_parents(copy.deepcopy(source)), "config"
    else:
        path = resolve_config_path(source)
        raw, where = load_raw(path), f"config '{path}'"
    for k, v in (overrides or {}).items():
        set_override(raw, k, v)
    cfg = parse_config(raw, where)
    if check:
        validate_names(cfg, where)
    return cfg


def parse_config(raw: dict, where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{where}: {_explain(e)}") from None


# ============================================================================ error messages
def _path(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section class reached by following ``loc`` from RunConfig (for allowed-key hints)."""
    cls: Any = RunConfig
    for p in loc:
        if isinstance(p, int):
            args = typing.get_args(cls)
            cls = args[0] if args else None
        elif isinstance(cls, type) and issubclass(cls, BaseModel) and p in cls.model_fields:
            cls = cls.model_fields[p].annotation
        else:
            return None
        # unwrap Optional[...] / list[...]
        while typing.get_origin(cls) is Union:
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    if typing.get_origin(cls) is list:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
               "dict": "a mapping (key: value)", "list": "a list", "literal": None}


def _explain(e: ValidationError) -> str:
    # an unknown key is usually the typo behind a "missing" one: report it first
    errs = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
    err = errs[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    more = f" (+{len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    path = _path(loc)
    got = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        where = f" in '{_path(loc[:-1])}'" if loc[:-1] else ""
        hint = did_you_mean(str(loc[-1]), allowed)
        return (f"unknown key '{loc[-1]}'{where}{hint}; allowed keys: {', '.join(allowed)}{more}")
    if kind == "missing":
        return f"'{path}' is required but missing; add it{more}"
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        ctx = err.get("ctx", {})
        bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}[kind]
        limit = next(iter(ctx.values())) if ctx else "?"
        return f"'{path}' must be {bound} {limit}, got {got!r}; fix the value{more}"
    if kind == "too_short":
        return f"'{path}' must not be empty; list at least one entry{more}"
    if kind == "literal_error":
        return f"'{path}' is {got!r} but must be {err.get('ctx', {}).get('expected', 'one of the allowed values')}{more}"
    for word, phrase in _TYPE_WORDS.items():
        if kind.startswith(word) and phrase:
            return f"'{path}' must be {phrase}, got {got!r}{more}"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"'{path}': {msg}{more}"


# ============================================================================ registry checks
def _wrap(where: str, path: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MidreError as e:
        raise ConfigError(f"{where}: '{path}': {e}") from None


def _check_model(where: str, path: str, arch: str, kwargs: dict[str, Any], resolution: int | None) -> None:
    """``arch`` with ``kwargs`` builds at the run's resolution (on the meta device: no memory, no weights)."""
    import torch

    from .models import MODELS, create_model

    _wrap(where, f"{path}.arch", MODELS.get, arch)
    res = resolution or MODELS.info(arch).get("resolution") or 64
    with torch.device("meta"):
        _wrap(where, f"{path}.model_kwargs", create_model, arch, 2, res, **kwargs)


def validate_train(where: str, path: str, train: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``train`` mapping against midre.training.TrainConfig; returns the full dump."""
    for k in ("seed", "device"):
        if k in train:
            raise ConfigError(f"{where}: '{path}.{k}' cannot be set per model; set the top-level '{k}' instead")
    from .training import TrainConfig

    try:
        full = TrainConfig(**train).model_dump(mode="json")
    except ValidationError as e:
        err = e.errors()[0]
        sub = _path(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            allowed = [f for f in TrainConfig.model_fields if f not in ("seed", "device")]
            raise ConfigError(f"{where}: unknown key '{sub}' in '{path}'{did_you_mean(sub, allowed)}; "
                              f"allowed keys: {', '.join(allowed)}") from None
        _raise_train(where, path, e)
    for late in ("stop", "augment"):   # added later: a section without them keeps the stage keys it always had
        if full.get(late) is None:
            full.pop(late, None)
    if full.get("stop") is not None and full["stop"].get("at_val_acc") is None:   # added after train.stop
        full["stop"].pop("at_val_acc", None)
    return full


def _raise_train(where: str, path: str, e: ValidationError):
    msg = _explain(e)
    # _explain formats paths relative to TrainConfig; prefix them with the section's path
    msg = re.sub(r"^'([^']*)'", lambda m: f"'{path}.{m.group(1)}'", msg)
    raise ConfigError(f"{where}: {msg}")


def check_init(where: str, path: str, init: Any, cfg: RunConfig) -> None:
    """``train.init``: ``zoo:<name>`` of a ``backbones`` entry, or an existing LOCAL weights file."""
    if init is None:
        return
    if not isinstance(init, str) or not init:
        raise ConfigError(f"{where}: '{path}' must be 'zoo:<backbone>' or a local weights file path")
    if init.startswith("zoo:"):
        name = init[4:]
        if name not in cfg.backbones:
            raise ConfigError(f"{where}: '{path}' is '{init}' but 'backbones' has no '{name}'"
                              f"{did_you_mean(name, cfg.backbones)}; add backbones.{name} (arch, pool, train) or "
                              f"use one of: {', '.join(cfg.backbones) or 'none defined'}")
        return
    if "://" in init:
        raise ConfigError(f"{where}: '{path}' must be a LOCAL file (midre never downloads), got '{init}'")
    if not Path(init).expanduser().is_file():
        raise ConfigError(f"{where}: pretrained weights '{init}' ({path}) not found; put the local .safetensors/.pth "
                          f"file there or set `--set {path}=/path/to/weights`")


def needs_root(dataset: str) -> bool:
    from .data import DATASETS

    info = DATASETS.info(dataset)
    if "needs_root" in info:
        return bool(info["needs_root"])
    if "kind" in info:
        return info["kind"] != "embedded"
    return dataset.lower() not in EMBEDDED_DATASETS


def validate_names(cfg: RunConfig, where: str = "config") -> None:
    """Check every name and parameter against the registries, without loading data or models."""
    _validate_dataset(cfg, where)
    _validate_models(cfg, where)
    names = _validate_targets(cfg, where)
    if cfg.attacks:
        _validate_attacks(cfg, where, names)
    _validate_priors(cfg, where)
    m = cfg.metrics
    if m.fid == "inception":
        if not m.inception_weights:
            raise ConfigError(f"{where}: 'metrics.fid: inception' needs 'metrics.inception_weights' (a LOCAL "
                              "Inception-v3 weights file); or use fid: eval")
        if not Path(m.inception_weights).expanduser().is_file():
            raise ConfigError(f"{where}: 'metrics.inception_weights' file '{m.inception_weights}' not found; "
                              "give a local Inception-v3 weights file or use fid: eval")
    if cfg.device not in ("auto", "cpu") and not re.fullmatch(r"(cuda|mps)(:\d+)?", cfg.device):
        raise ConfigError(f"{where}: 'device' is '{cfg.device}'; use auto, cpu, cuda or cuda:N")


def _validate_dataset(cfg: RunConfig, where: str) -> None:
    from .data import DATASETS

    d = cfg.dataset
    _wrap(where, "dataset.name", DATASETS.get, d.name)
    if needs_root(d.name):
        if not d.root:
            raise ConfigError(f"{where}: dataset '{d.name}' needs 'dataset.root': set it to the folder holding "
                              f"the dataset (e.g. `--root /path/to/{d.name}` or `--set dataset.root=...`)")
    known = DATASETS.info(d.name).get("options")
    if isinstance(known, dict):
        for k in d.options:
            if k not in known:
                raise ConfigError(f"{where}: unknown option 'dataset.options.{k}' for dataset '{d.name}'"
                                  f"{did_you_mean(k, known)}; its options are: {', '.join(known) or 'none'}")
    if d.root and not Path(d.root).expanduser().exists():
        raise ConfigError(f"{where}: 'dataset.root' '{d.root}' does not exist; give the folder that holds the "
                          f"{d.name} files")


def _validate_models(cfg: RunConfig, where: str) -> None:
    """The evaluation model, the target defaults and the backbones: architectures and schedules."""
    _check_model(where, "eval_model", cfg.eval_model.arch, cfg.eval_model.model_kwargs, cfg.dataset.resolution)
    validate_train(where, "eval_model.train", cfg.eval_model.train)
    _check_model(where, "defaults", cfg.defaults.arch, cfg.defaults.model_kwargs, cfg.dataset.resolution)
    validate_train(where, "defaults.train", cfg.defaults.train)
    for bname, b in cfg.backbones.items():
        _check_name(bname, "backbone name")
        _check_model(where, f"backbones.{bname}", b.arch, b.model_kwargs, cfg.dataset.resolution)
        validate_train(where, f"backbones.{bname}.train", b.train)
        if b.train.get("init"):
            raise ConfigError(f"{where}: 'backbones.{bname}.train.init': a backbone is pretrained from scratch; remove it")
    check_init(where, "eval_model.train.init", cfg.eval_model.train.get("init"), cfg)


def _validate_targets(cfg: RunConfig, where: str) -> set[str]:
    """Every target (names unique, defense, schedule, init, reference); returns the target names."""
    from .defenses import build_defense

    names: set[str] = set()
    for i, t in enumerate(cfg.expanded_targets()):
        p = f"targets[{i}]"
        if t.name in names:
            raise ConfigError(f"{where}: target name '{t.name}' is used twice; give every target its own name")
        names.add(t.name)
        if t.arch is not None or t.model_kwargs is not None:
            _check_model(where, p, cfg.target_arch(t), cfg.target_model_kwargs(t), cfg.dataset.resolution)
        _wrap(where, f"{p}.defense", build_defense, copy.deepcopy(t.defense))
        validate_train(where, f"{p}.train", cfg.target_train(t))
        check_init(where, f"{p}.train.init", cfg.target_train(t).get("init"), cfg)
    all_targets = {t.name: t for t in cfg.expanded_targets()}
    for i, t in enumerate(cfg.expanded_targets()):
        if t.reference is not None and t.reference not in all_targets:
            raise ConfigError(f"{where}: 'targets[{i}].reference' names unknown target '{t.reference}'"
                              f"{did_you_mean(t.reference, all_targets)}; targets are: {', '.join(all_targets)}")
        _check_epochs_from(cfg, where, i, t)
    return names


def _check_epochs_from(cfg: RunConfig, where: str, i: int, t: TargetSection) -> None:
    """``epochs_from`` / ``stop_early.of`` name an EARLIER target trained with ``train.stop``."""
    for key, ref_name in (("epochs_from", t.epochs_from), ("stop_early.of", t.stop_early.of if t.stop_early else None)):
        if ref_name is None:
            continue
        before = [u.name for u in cfg.expanded_targets()[:i]]
        if ref_name not in before:
            raise ConfigError(f"{where}: 'targets[{i}].{key}' is '{ref_name}', which is not a target listed before "
                              f"it; list the converged target first (targets before it: {', '.join(before) or 'none'})")
        ref = next(u for u in cfg.expanded_targets() if u.name == ref_name)
        if not cfg.target_train(ref).get("stop"):
            raise ConfigError(f"{where}: 'targets[{i}].{key}' names '{ref_name}', which has no train.stop; it must "
                              "be a target trained to convergence: give it train.stop")
        if not cfg.target_train(t).get("stop"):
            raise ConfigError(f"{where}: 'targets[{i}]' has {key} but no train.stop; give it the same train.stop "
                              "as its reference (the validation split must be the same)")


def _validate_attacks(cfg: RunConfig, where: str, names: set[str]) -> None:
    from .attacks import ATTACKS, build_attack

    keys: set[str] = set()
    for i, a in enumerate(cfg.attacks):
        p = f"attacks[{i}]"
        _wrap(where, f"{p}.name", ATTACKS.get, a.name)
        kw = dict(a.params)
        if a.preset is not None:
            kw["preset"] = a.preset
        attack = _wrap(where, f"{p}.params", build_attack, a.name, **kw)
        _check_attack_targets(cfg, where, p, a, attack)
        if a.key in keys:
            raise ConfigError(f"{where}: attack '{a.key}' is listed twice; give one of them a distinct 'label'")
        keys.add(a.key)
        for tn in a.targets or []:
            if tn not in names:
                raise ConfigError(f"{where}: '{p}.targets' names unknown target '{tn}'"
                                  f"{did_you_mean(tn, names)}; targets are: {', '.join(sorted(names))}")
    _check_prior_kinds(cfg, where)


def _check_attack_targets(cfg: RunConfig, where: str, path: str, a: AttackSection, attack: Any) -> None:
    """An attack that refuses some targets (its ``check_target``, e.g. DeepInversion without BatchNorm) is asked
    about each of its targets as they will be built -- architecture plus the defense's model change, on the meta
    device -- so a run refuses before training anything rather than at the attack stage."""
    import torch

    from .attacks import Attack
    from .defenses import build_defense
    from .models import MODELS, create_model

    if type(attack).check_target is Attack.check_target:
        return
    for t in cfg.attack_targets(a):
        arch = cfg.target_arch(t)
        try:
            with torch.device("meta"):
                res = cfg.dataset.resolution or MODELS.info(arch).get("resolution") or 64
                model = create_model(arch, 2, res, **cfg.target_model_kwargs(t))
                model = build_defense(copy.deepcopy(t.defense)).wrap_model(model)
        except (ImportError, MidreError):   # an optional extra missing, or a model the training stage refuses itself
            continue
        try:
            attack.check_target(model)
        except MidreError as e:
            raise ConfigError(f"{where}: '{path}' ({attack.name}) cannot attack target '{t.name}' ({e}); or list "
                              f"only the targets it can attack in '{path}.targets'") from None


def _validate_priors(cfg: RunConfig, where: str) -> None:
    if cfg.priors.preset is None and not cfg.priors.params:
        return
    from .priors import PRESETS, prior_config

    if cfg.priors.preset is not None and cfg.priors.preset not in PRESETS:
        raise ConfigError(f"{where}: 'priors.preset' is '{cfg.priors.preset}'{did_you_mean(cfg.priors.preset, PRESETS)}; "
                          f"choose one of: {', '.join(sorted(PRESETS))}")
    for kind, params in cfg.priors.params.items():
        _wrap(where, f"priors.params.{kind}", prior_config, kind, cfg.priors.preset or "paper", params)


def _check_prior_kinds(cfg: RunConfig, where: str) -> None:
    """Every prior kind an attack needs is registered (midre.priors.PRIORS), and each kind's own run-level
    check of its ``priors.params`` passes (e.g. StyleGAN2 weights on real data)."""
    from .attacks import build_attack
    from .priors import PRIORS, get_prior

    users: dict[str, str] = {}                      # kind -> the first attack that needs it
    for i, a in enumerate(cfg.attacks):
        for kind in build_attack(a.name, **({"preset": a.preset} if a.preset else {})).prior_kinds:
            if kind not in PRIORS:
                raise ConfigError(f"{where}: 'attacks[{i}]' ({a.name}) needs prior kind '{kind}', which is not "
                                  f"registered; kinds: {', '.join(PRIORS.names())} (install the plugin that adds it)")
            users.setdefault(kind, a.name)
    real_data = needs_root(cfg.dataset.name)
    for kind in dict.fromkeys([*users, *cfg.priors.params]):
        if kind not in PRIORS:                      # an unknown priors.params kind: _validate_priors says so
            continue
        msg = get_prior(kind).check_run(cfg.priors.params.get(kind) or {}, users.get(kind), real_data)
        if msg:
            raise ConfigError(f"{where}: {msg}")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None, width=110)
