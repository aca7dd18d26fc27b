"""The concealment study of the MIDRE paper, Sec. 3.3 (Table 1): Entire / Random / Fixed Erasing at
equal pixel concealment.

At a concealment level ``c`` (share of training pixels hidden) three schemes are trained:

* EE, Entire Erasing (``entire_erasing``, share = c): a share c of each identity's images left out of
  training in every epoch (the paper's "reduce the number of samples per ID"; ``mode: drop``);
* RE, Random Erasing (``midre``): every image, every batch, a square of share c at a random place;
* FE, Fixed Erasing (``fixed_erasing``): every image, a square of share c at a place fixed per image
  for the whole training.

Level 0 % is NoDef for all three (the paper's first row).  The paper fixes the erased share of RE / FE
to ``c`` (its "Partial Erasure a_e" column); ``lower`` is set a hair below ``area`` (``c - 1e-6``), which
fixes the square's side (written before ``lower == area`` became the fixed-share form; kept so that the
study's stage keys stay as they were).

The study is one pipeline (:func:`midre.pipeline.run_pipeline`) over a config built from a base config:
its dataset, models, training settings and ONE attack are kept, its targets are replaced by the grid
above.  The table is written as ``concealment.md`` / ``concealment.csv`` / ``concealment.json``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import raw_config
from .errors import ArgumentError, ConfigError, did_you_mean
from .pipeline import run_pipeline
from .results import fmt, fmt_pm, load_results, md_table, to_number, write_results_table
from .utils import atomic_write_json, atomic_write_text

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)
SCHEMES = ("EE", "RE", "FE")
_FIX = 1e-6


def scheme_defense(scheme: str, level: float) -> dict[str, Any]:
    """The defense spec of one scheme at one concealment level (share of pixels in (0, 1))."""
    c = float(level)
    if scheme == "EE":
        return {"name": "entire_erasing", "share": c}
    if scheme == "RE":
        return {"name": "midre", "area": c, "lower": c - _FIX}
    if scheme == "FE":
        return {"name": "fixed_erasing", "area": c, "lower": c - _FIX}
    raise ArgumentError(f"unknown scheme '{scheme}'; use one of: {', '.join(SCHEMES)}")


def target_name(scheme: str, level: float) -> str:
    return f"{scheme.lower()}-{level:g}"


def _check_levels(levels: Sequence[float]) -> list[float]:
    out = []
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise ArgumentError(f"concealment level {v!r} must be a share in [0, 1), e.g. 0.1 for 10 %")
        out.append(round(float(v), 6))
    out = sorted(set(out))
    if not [v for v in out if v > 0]:
        raise ArgumentError("give at least one concealment level above 0, e.g. --levels 0.1,0.2,0.3,0.4,0.5")
    return out


def concealment_config(config: Any = "quickstart", levels: Sequence[float] = LEVELS,
                       attack: str | None = None) -> dict[str, Any]:
    """A raw pipeline config for the study: the base config's data / models / training and one attack,
    targets = NoDef + EE / RE / FE at every level."""

    raw = copy.deepcopy(raw_config(config))
    levels = [v for v in _check_levels(levels) if v > 0]
    atks = raw.get("attacks") or []
    if not atks:
        raise ConfigError("the concealment study needs an attack; the base config lists none (add 'attacks:')")
    if attack is not None:
        keys = [(a.get("label") or a.get("name")) if isinstance(a, dict) else None for a in atks]
        if attack not in keys:

            known = [k for k in keys if k]
            raise ArgumentError(f"attack '{attack}' is not in the base config{did_you_mean(attack, known)}; "
                                f"its attacks: {', '.join(k for k in keys if k)}")
        atk = copy.deepcopy(atks[keys.index(attack)])
    else:
        atk = copy.deepcopy(atks[0])
    atk.pop("targets", None)
    targets = [{"name": "nodef", "defense": "nodef"}]
    for c in levels:
        for s in SCHEMES:
            targets.append({"name": target_name(s, c), "defense": scheme_defense(s, c)})
    raw["targets"] = targets
    raw["attacks"] = [atk]
    raw.pop("sweep", None)
    raw["analyses"] = {"features": False, "sweep_area": []}
    raw["name"] = f"{raw.get('name', 'run')}-concealment"
    return raw


def concealment_table(rows: Sequence[dict[str, Any]], levels: Sequence[float] = LEVELS) -> list[dict[str, Any]]:
    """Pivot results rows into the paper's Table 1 shape (one row per level, 0 % = NoDef)."""

    by_target = {str(r.get("target")): r for r in rows}
    nodef = by_target.get("nodef")
    out = []
    for c in [0.0] + [v for v in _check_levels(levels) if v > 0]:
        row: dict[str, Any] = {"concealment": round(100 * c), "a_e": c}
        for s in SCHEMES:
            r = nodef if c == 0 else by_target.get(target_name(s, c))
            get = (lambda k: to_number(r.get(k)) if r is not None else math.nan)  # noqa: E731
            row[f"{s}_acc"] = get("acc")
            row[f"{s}_attacc"] = get("attack_top1")
            row[f"{s}_attacc_std"] = get("attack_top1_std")
        out.append(row)
    return out


def table_markdown(table: Sequence[dict[str, Any]], attack: str = "") -> str:
    head = ["Concealment", "Partial Erasure a_e", "EE Acc ↑", "EE AttAcc ↓", "RE Acc ↑", "RE AttAcc ↓",
            "FE Acc ↑", "FE AttAcc ↓"]
    body = []
    for r in table:
        line = [f"{r['concealment']}%", f"{r['a_e']:g}"]
        for s in SCHEMES:
            line += [fmt(r[f"{s}_acc"]), fmt_pm(r[f"{s}_attacc"], r[f"{s}_attacc_std"])]
        body.append(line)
    title = "Entire (EE) / Random (RE) / Fixed (FE) Erasing at equal pixel concealment" + \
        (f", attack {attack}" if attack else "")
    return f"### {title}\n\n{md_table(head, body)}\n"


def write_table_files(out_dir: Path, table: Sequence[dict[str, Any]], attack: str = "") -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "concealment.md", "csv": out_dir / "concealment.csv",
             "json": out_dir / "concealment.json"}
    atomic_write_text(paths["md"], table_markdown(table, attack))
    cols = ["concealment", "a_e"] + [f"{s}_{k}" for s in SCHEMES for k in ("acc", "attacc", "attacc_std")]
    write_results_table(paths["csv"], table, cols)
    atomic_write_json(paths["json"], {"attack": attack, "rows": [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in table]})
    return paths


def concealment_study(config: Any = "quickstart", out_dir: str | Path = "runs/concealment",
                      levels: Sequence[float] = LEVELS, attack: str | None = None, resume: bool = True,
                      progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Train + attack NoDef and EE / RE / FE at every level through the pipeline, then write the table.

    Returns ``{"table": rows, "paths": {md, csv, json}, "run_dir": Path}``.
    """

    raw = concealment_config(config, levels, attack)
    out_dir = Path(out_dir)
    run_pipeline(raw, out_dir, resume=resume, progress=progress, device=device)
    rows = load_results(out_dir)
    table = concealment_table(rows, levels)
    atk = raw["attacks"][0]
    label = atk.get("label") or (f"{atk['name']}-adaptive" if atk.get("adaptive") else atk["name"])
    paths = write_table_files(out_dir, table, label)
    return {"table": table, "paths": paths, "run_dir": out_dir}
