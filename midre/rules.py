"""Decision rules as files, verdicts by code.

An experiment's rule -- which statistic, which attacks and targets, which thresholds -- is written in a
YAML file (``rules/<experiment>.yaml`` in the repository) and committed *before* the run.  When ``midre
run`` starts it records the rule's path and sha256 in ``RUN/rule.json`` (once; a later start with a
different rule file is refused).  ``midre analyze verdict RUN`` recomputes the statistic from the run's
artefacts (midre.analysis.frontier), applies the rule, and refuses in one line when the rule file no
longer has the sha256 recorded at the start: a rule cannot be adjusted after the numbers are seen.

A rule file::

    experiment: frontier-64          # the run config it judges (its ``name``)
    question: does MIDRE lower attack accuracy more than losing the same accuracy would?
    statistic: delta_f               # delta_f (the NoDef curve) or gap (the paired gap)
    margin: 0.0                      # "helps" when the wider 95 % interval lies above it
    n_boot: 2000                     # cluster-bootstrap draws
    seed: 0                          # of the bootstrap
    comparisons:                     # every (target, attack) the verdict covers
      - {target: midre-0.4, attack: gmi, primary: true}
      - {target: midre-0.4, attack: lomma_gmi}
    answer: {yes_when: all_primary_help}   # how the one-line answer is formed from the verdicts
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, RunDirError


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    attack: str
    primary: bool = False


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    yes_when: Literal["all_primary_help", "any_primary_helps"] = "all_primary_help"


class Rule(BaseModel):
    """A decision rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    question: str = ""
    statistic: Literal["delta_f", "gap"] = "delta_f"
    margin: float = Field(0.0, ge=0)
    n_boot: int = Field(2000, ge=100)
    seed: int = 0
    comparisons: list[Comparison] = Field(..., min_length=1)
    answer: Answer = Answer()
    notes: str = ""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_rule(path: str | Path) -> Rule:
    """Parse a rule file; one ConfigError line for a missing, unreadable or invalid file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"rule file '{path}' not found; give the committed rules/<experiment>.yaml") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"rule file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"rule file '{path}' must be a mapping (experiment, statistic, comparisons, ...)")
    try:
        return Rule(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "rule"
        raise ConfigError(f"rule file '{path}': '{loc}': {err['msg']}; see `midre analyze verdict --help`") from None


def default_rule_path(config_name: str, base: Path | None = None) -> Path | None:
    """``rules/<config name>.yaml`` under ``base`` (default: the working directory), if it exists."""
    p = (base or Path.cwd()) / "rules" / f"{config_name.replace('/', '-')}.yaml"
    return p if p.is_file() else None


def check_rule(path: Path, config_name: str, ungated: Collection[str] = ()) -> Rule:
    """The rule file, refused in one line when it is for another experiment or decides on one of ``ungated``:
    the config's attacks reported beside the comparison (``gated: false``).  Nothing is written."""
    rule = load_rule(path)
    if rule.experiment != config_name:
        raise ConfigError(f"rule file '{path}' is for experiment '{rule.experiment}', not '{config_name}'; give "
                          f"rules/{config_name}.yaml")
    named = sorted({c.attack for c in rule.comparisons} & set(ungated))
    if named:
        raise ConfigError(f"rule file '{path}' decides on attack '{named[0]}', which the config reports beside the "
                          "comparison (gated: false: the validity gates do not check it); drop it from the rule's "
                          "comparisons or remove 'gated: false' from that attack")
    return rule


def record_rule(run_dir: Path, path: Path, config_name: str, ungated: Collection[str] = ()) -> dict[str, Any]:
    """Write RUN/rule.json (path, sha256, time) the first time a run starts with a rule (:func:`check_rule`
    first); a later start with a rule file of another content is refused (the rule was fixed when the run
    began)."""
    import json

    from .rundir import now
    from .utils import atomic_write_json

    rule = check_rule(path, config_name, ungated)
    digest = sha256_of(path)
    rec_path = run_dir / "rule.json"
    if rec_path.exists():
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        if rec.get("sha256") != digest:
            raise RunDirError(f"the rule '{path}' changed since this run started (sha256 {rec.get('sha256', '?')[:12]}"
                              f" recorded, now {digest[:12]}); restore the committed rule or start a new run")
        return rec
    rec = {"format": "midre-rule-record", "path": str(Path(path).resolve()), "name": Path(path).name,
           "experiment": rule.experiment, "sha256": digest, "recorded": now()}
    atomic_write_json(rec_path, rec)
    return rec


def recorded_rule(run_dir: Path, path: str | Path | None = None) -> tuple[Rule, dict[str, Any]]:
    """The rule a run recorded when it started, checked against its sha256 (one line when it changed)."""
    import json

    rec_path = Path(run_dir) / "rule.json"
    if not rec_path.exists():
        raise RunDirError(f"'{run_dir}' recorded no decision rule when it started (no rule.json); a verdict needs a "
                          "rule fixed before the run: start it with `midre run CONFIG --rule rules/NAME.yaml`")
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    p = Path(path) if path is not None else Path(rec["path"])
    if path is None and not p.is_absolute() and not p.is_file():
        # a collected summary (results/NAME/) records the rule relative to the repository holding results/
        p = Path(run_dir).resolve().parent.parent / p
    if not p.is_file():
        raise RunDirError(f"the rule file '{p}' recorded by '{run_dir}' is not there; pass --rule PATH to the "
                          "committed copy")
    digest = sha256_of(p)
    if digest != rec.get("sha256"):
        raise RunDirError(f"the rule '{p}' changed after the run started (sha256 {rec.get('sha256', '?')[:12]} "
                          f"recorded, now {digest[:12]}); no verdict from a rule edited after the numbers existed")
    return load_rule(p), rec
