"""Results tables of a run directory and the small value / table helpers every layer shares.

The results-table IO (``results.csv`` / ``results.json``), the run-directory lookups (targets,
attacks, artefact directory, private images) and the number / table formatting used by
:mod:`midre.report`, :mod:`midre.analysis`, :mod:`midre.sweep`, :mod:`midre.audit` and
:mod:`midre.userstudy`.  It imports no higher layer (no pipeline, report or analysis).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .utils import atomic_write_text, read_json

DASH = "—"
NUMERIC_COLUMNS = ("acc", "attack_top1", "attack_top1_std", "attack_top5", "attack_top5_std", "top1_ci_lo",
                   "top1_ci_hi", "knn", "fid_eval", "epsilon")
NAN = float("nan")


@dataclass
class ResultRow:
    """One row of ``results.csv`` / ``results.json``: a target under one attack (or under none).

    The one list of result columns: :data:`COLUMNS` are the fields up to ``identities`` in this order; the
    optional fields after them are written only when set (``reference`` by ``midre run``, ``dp_delta`` for DP
    targets, ``trapdoor_acc`` for Trap-MID targets, ``target_top1`` -- the target's own top-1 on the reconstructions,
    i.e. whether the attack reached the target at all -- by ``midre run`` and ``midre audit``).  Accuracies and
    attack accuracies are percentages; ``delta`` is the trade-off against the reference ("" when there is none)."""

    target: str
    defense: str
    defense_params: str = "{}"
    attack: str = ""
    acc: float = NAN
    attack_top1: float = NAN
    attack_top1_std: float = NAN
    attack_top5: float = NAN
    attack_top5_std: float = NAN
    top1_ci_lo: float = NAN
    top1_ci_hi: float = NAN
    knn: float = NAN
    fid_eval: float = NAN
    delta: Any = ""
    epsilon: float = NAN
    seed: Any = ""
    repeats: Any = ""
    identities: Any = ""
    dp_delta: float | None = None
    trapdoor_acc: float | None = None      # Trap-MID targets: triggered test images classified as their trapdoor
    reference: str | None = None
    target_top1: float | None = None

    @classmethod
    def from_metrics(cls, target: str, defense: str, attack: str, m: dict[str, Any], **fields_: Any) -> ResultRow:
        """A row from an attack's ``metrics.json`` (missing figures stay NaN)."""
        ci = m.get("attacc_top1_ci95")
        lo, hi = (as_float(ci[0]), as_float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (NAN, NAN)
        return cls(target=target, defense=defense, attack=attack,
                   attack_top1=as_float(m.get("attacc_top1")), attack_top1_std=as_float(m.get("attacc_top1_std")),
                   attack_top5=as_float(m.get("attacc_top5")), attack_top5_std=as_float(m.get("attacc_top5_std")),
                   top1_ci_lo=lo, top1_ci_hi=hi, knn=as_float(m.get("knn_dist")),
                   fid_eval=as_float(m.get("fid_eval", m.get("fid_inception"))), **fields_)

    def as_dict(self) -> dict[str, Any]:
        """The row as written: every column, then the optional fields that are set."""
        out = {k: getattr(self, k) for k in COLUMNS}
        out.update({k: getattr(self, k) for k in OPTIONAL_COLUMNS if getattr(self, k) is not None})
        return out


OPTIONAL_COLUMNS = ("dp_delta", "trapdoor_acc", "reference", "target_top1")
COLUMNS = [f.name for f in fields(ResultRow) if f.name not in OPTIONAL_COLUMNS]
# a multi-seed study's rows add the spread across seeds (midre.results.aggregate_rows)
STUDY_EXTRA_COLUMNS = ["n_seeds", "acc_std", "knn_std", "fid_eval_std"]


# ----------------------------------------------------------------------------------------- values
def as_float(v: Any) -> float:
    """``float(v)``, or NaN when ``v`` is missing or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def to_number(v: Any) -> Any:
    """'' / None / 'nan' -> nan; numeric strings -> float; anything else (e.g. 'OP') unchanged."""
    if v is None:
        return math.nan
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if s == "" or s.lower() in ("nan", "none", "null", "-", DASH):
        return math.nan
    try:
        return float(s)
    except ValueError:
        return s


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (NaN dropped); None with fewer than 2 values."""
    import statistics

    from scipy import stats

    v = [float(x) for x in values if not math.isnan(float(x))]
    if len(v) < 2:
        return None
    m, sd = statistics.fmean(v), statistics.stdev(v)
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return m - half, m + half


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v)) or (isinstance(v, str) and v.strip() == "")


def fmt(v: Any, digits: int = 2) -> str:
    """Format a number with ``digits`` decimals; missing / NaN -> '—'; strings pass through."""
    v = to_number(v)
    if isinstance(v, str):
        return v
    if is_missing(v):
        return DASH
    return f"{v:.{digits}f}"


def fmt_pm(mean: Any, std: Any, digits: int = 2) -> str:
    m, s = to_number(mean), to_number(std)
    if isinstance(m, str) or is_missing(m):
        return fmt(m, digits)
    if isinstance(s, str) or is_missing(s):
        return fmt(m, digits)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def parse_params(v: Any) -> dict[str, Any]:
    """The ``defense_params`` cell (JSON text or dict) -> dict; unparseable -> {}."""
    if isinstance(v, dict):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return {}
    s = str(v).strip()
    if not s:
        return {}
    try:
        out = json.loads(s)
        return out if isinstance(out, dict) else {}
    except json.JSONDecodeError:
        return {}


# ----------------------------------------------------------------------------------------- results
def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``results.json`` (a list, or a dict with 'rows') or else ``results.csv``; numbers parsed."""
    run_dir = Path(run_dir)
    rows: list | None = None
    js = run_dir / "results.json"
    if js.exists():
        try:
            obj = read_json(js)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"'{js}' is corrupt (not JSON); re-run the pipeline to rewrite it") from None
        if isinstance(obj, dict):
            obj = obj.get("rows", obj.get("results"))
        if isinstance(obj, list):
            rows = [dict(r) for r in obj if isinstance(r, dict)]
    if rows is None:
        cs = run_dir / "results.csv"
        if not cs.exists():
            return []
        with open(cs, newline="", encoding="utf-8") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    for r in rows:
        for k in NUMERIC_COLUMNS:
            if k in r:
                r[k] = to_number(r[k])
        if "delta" in r:
            r["delta"] = to_number(r["delta"])
        if "acc_std" in r:
            r["acc_std"] = to_number(r["acc_std"])
    return rows


def write_results_table(path: str | Path, rows: Sequence[ResultRow | dict[str, Any]],
                        columns: Sequence[str] | None = None) -> None:
    """The one writer of results tables (atomic CSV): ``columns`` (default :data:`COLUMNS`) first, then any
    other key in the order it first appears; NaN as an empty cell, floats to 6 significant digits."""
    dicts = [r.as_dict() if isinstance(r, ResultRow) else r for r in rows]
    cols = list(columns or COLUMNS)
    for r in dicts:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in dicts:
        w.writerow({k: _cell(r.get(k, "")) for k in cols})
    atomic_write_text(Path(path), buf.getvalue())


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}" if abs(v) < 1e6 else repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


# ----------------------------------------------------------------------------------------- run info
def read_yaml_safe(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def read_json_safe(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def mark_sweep_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """In a sweep directory (sweep.json), label each row with its trial's grid values ('_grid')."""
    sw = read_json_safe(run_dir / "sweep.json")
    if not isinstance(sw, dict):
        return
    keys = [k for k in sw.get("grid_keys", []) if isinstance(k, str)]
    for r in rows:
        parts = [f"{k.split('.')[-1]}={r[k]}" for k in keys if k in r and not is_missing(r[k])]
        if parts:
            r["_grid"] = ", ".join(parts)


def artefact_dir(run_dir: Path) -> tuple[Path, str]:
    """Where checkpoints / reconstructions live: the run itself, or for a multi-seed study (no
    ``targets/`` but ``seed-<s>/`` pipelines) its first seed's directory, with a note saying so."""
    if (run_dir / "targets").is_dir() or (run_dir / "attacks").is_dir():
        return run_dir, ""
    seeds = []
    for p in run_dir.glob("seed-*"):
        try:
            seeds.append((int(p.name.split("-", 1)[1]), p))
        except ValueError:
            continue
    if not seeds:
        return run_dir, ""
    n, first = min(seeds)
    return first, (f"Multi-seed study ({len(seeds)} seeds): the tables average over seeds (± = std across seeds); "
                   f"models, grids and feature figures are from {first.name}.")


def target_dirs(run_dir: Path) -> list[Path]:
    t = run_dir / "targets"
    return sorted(p for p in t.iterdir() if p.is_dir()) if t.is_dir() else []


def attack_dirs(run_dir: Path) -> list[tuple[str, str, Path]]:
    """(target, attack, dir) of every attack directory holding reconstructions."""
    out = []
    a = run_dir / "attacks"
    if not a.is_dir():
        return out
    for tdir in sorted(p for p in a.iterdir() if p.is_dir()):
        for adir in sorted(p for p in tdir.iterdir() if p.is_dir()):
            if (adir / "reconstructions.safetensors").exists():
                out.append((tdir.name, adir.name, adir))
    return out


def defense_name(spec: Any) -> str:
    """The defense's short name (the ``defense`` column): ``nodef``, ``midre``, ``midre+nls`` for a composition."""
    if spec is None:
        return "nodef"
    if isinstance(spec, list):
        return "+".join(defense_name(s) for s in spec) or "nodef"
    if isinstance(spec, dict):
        if spec.get("name") == "compose":
            return "+".join(defense_name(s) for s in spec.get("defenses", [])) or "nodef"
        return str(spec.get("name", "nodef"))
    return str(spec)


def defense_label(spec: Any) -> str:
    """A short human label for a defense spec dict / name."""
    if spec is None:
        return "nodef"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        name = str(spec.get("name", "?"))
        if name == "compose":
            return "+".join(defense_label(s) for s in spec.get("defenses", []))
        params = {k: v for k, v in spec.items() if k != "name" and v is not None}
        try:
            from .defenses import build_defense

            defaults = build_defense({"name": name}).params()
            params = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v or k == "area"}
        except Exception:  # noqa: BLE001 - unknown / unbuildable defaults: show every parameter
            pass
        if not params:
            return name
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{name}({inner})"
    return str(spec)


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


_NUMERIC_CELL = re.compile(r"[-+0-9.,±\s\[\]%—]+|OP")


def html_table(head: Sequence[str], body: Sequence[Sequence[str]], align_numbers: bool = True) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    rows = []
    for row in body:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="num"' if align_numbers and i > 0 and _NUMERIC_CELL.fullmatch(str(c)) else ""
            cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def private_images(run_dir: Path, splits: Any = None):
    """The private training split (for grids), from ``splits`` or the dataset recorded in the metadata."""
    if splits is not None:
        return getattr(splits, "private_train", splits)
    from .data import load_dataset

    specs = []
    for p in [run_dir / "eval" / "model.json", *[t / "model.json" for t in target_dirs(run_dir)]]:
        meta = read_json_safe(p)
        if isinstance(meta, dict) and isinstance(meta.get("dataset"), dict):
            specs.append(meta["dataset"])
    cfg = read_yaml_safe(run_dir / "config.yaml")
    if isinstance(cfg, dict) and isinstance(cfg.get("dataset"), dict):
        specs.append(cfg["dataset"])
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name", None)
        opts = dict(spec.pop("options", {}) or {})
        opts.update(spec)
        if not name:
            continue
        try:
            return load_dataset(name, **opts).private_train
        except Exception:  # noqa: BLE001 - a missing dataset must not stop the report; the grid says so
            continue
    return None


def to_hwc(img):
    x = img.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    return x.permute(1, 2, 0).numpy(), None


def aggregate_rows(per_seed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std across seeds per (target, attack); see results.json 'aggregation'."""
    import statistics

    from .metrics import tradeoff

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in per_seed:
        groups.setdefault((str(r["target"]), str(r["attack"])), []).append(r)

    def mean_std(vals: list[float]) -> tuple[float, float]:
        v = [x for x in vals if not math.isnan(x)]
        if not v:
            return float("nan"), float("nan")
        return float(statistics.fmean(v)), float(statistics.stdev(v)) if len(v) > 1 else 0.0

    out: list[dict[str, Any]] = []
    for (target, attack), rs in groups.items():
        first = rs[0]
        row: dict[str, Any] = {k: first.get(k) for k in ("target", "defense", "defense_params", "attack",
                                                           "repeats", "identities", "reference")}
        row["seed"] = ",".join(str(r["seed"]) for r in rs)
        row["n_seeds"] = len(rs)
        row["acc"], row["acc_std"] = mean_std([as_float(r["acc"]) for r in rs])
        top1 = [as_float(r["attack_top1"]) for r in rs]
        row["attack_top1"], row["attack_top1_std"] = mean_std(top1)
        row["attack_top5"], row["attack_top5_std"] = mean_std([as_float(r["attack_top5"]) for r in rs])
        row["top1_ci_lo"], row["top1_ci_hi"] = t_interval(top1) or (float("nan"), float("nan"))
        row["knn"], row["knn_std"] = mean_std([as_float(r["knn"]) for r in rs])
        row["fid_eval"], row["fid_eval_std"] = mean_std([as_float(r["fid_eval"]) for r in rs])
        row["epsilon"] = mean_std([as_float(r.get("epsilon")) for r in rs])[0]
        for k in ("trapdoor_acc", "target_top1"):
            if any(k in r for r in rs):
                row[k] = mean_std([as_float(r.get(k)) for r in rs])[0]
        row["delta"] = ""
        out.append(row)
    # trade-off of the seed means against the NoDef target of the same attack
    for row in out:
        ref = row.get("reference")
        base = next((b for b in out if b["attack"] == row["attack"] and
                     (b["target"] == ref if ref else b["defense"] == "nodef")), None)
        if base is not None and base is not row and row["attack"] and not math.isnan(row["attack_top1"]):
            row["delta"] = tradeoff(base["acc"], row["acc"], base["attack_top1"], row["attack_top1"])
    return out
