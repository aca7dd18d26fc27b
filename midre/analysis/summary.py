"""Committed run summaries: ``results/NAME/`` holds what a reported run measured, small enough to commit.

``midre results collect RUN NAME`` writes ``results/NAME/summary.json`` (the resolved config, the results
tables per seed and aggregated, the validity gates per seed, each target's training record -- stop epoch,
learning curve --, stage timings, versions, the decision rule's record, and the paired differences,
frontier and verdict when they apply) and one ``seed-<s>.json`` per seed with the per-identity attack success and the
per-test-image correctness of every target (what the frontier and paired statistics resample).  Machine
paths are left out.  A study run in parts (one seed per session, different run directories) is collected
seed by seed into the same NAME: seeds already there stay unless the run brings them again, and a run
of another config is refused.

``midre analyze frontier results/NAME`` and ``midre analyze verdict results/NAME`` work on a summary as on
a run directory, and ``midre results render`` writes RESULTS.md's tables from the summaries
(midre.render).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunDirError

FORMAT = "midre-summary"


def is_summary(path: str | Path) -> bool:
    return (Path(path) / "summary.json").is_file()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunDirError(f"'{path}' is missing or not valid JSON; collect the run again with "
                          "`midre results collect RUN NAME`") from None


# ============================================================================ per-seed records <-> JSON
def records_to_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A paired seed record (midre.analysis.paired.seed_record) as plain JSON."""
    return {"labels": np.asarray(rec["labels"]).astype(int).tolist(),
            "acc": {t: np.round(np.asarray(v, dtype=float), 6).tolist() for t, v in rec["acc"].items()},
            "att": [{"target": t, "attack": a, "hits": {str(i): round(float(h), 6) for i, h in hits.items()}}
                    for (t, a), hits in rec["att"].items()],
            "refs": dict(rec["refs"]), "stochastic": list(rec["stochastic"]),
            "rows": [{"target": t, "attack": a, "defense": r.get("defense")} for (t, a), r in rec["rows"].items()]}


def records_from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {"labels": np.asarray(d["labels"], dtype=int),
            "acc": {t: np.asarray(v, dtype=float) for t, v in d["acc"].items()},
            "att": {(x["target"], x["attack"]): {int(i): float(h) for i, h in x["hits"].items()} for x in d["att"]},
            "refs": dict(d["refs"]), "stochastic": list(d["stochastic"]),
            "rows": {(r["target"], r["attack"]): {"defense": r.get("defense")} for r in d["rows"]}}


def load_records(dest: str | Path) -> tuple[list[dict[str, Any]], list[str], str]:
    """(per-seed records, seed names, config YAML text) of a collected summary."""
    dest = Path(dest)
    s = _read(dest / "summary.json")
    recs, names = [], []
    for name in s["seeds"]:
        d = _read(dest / f"{name}.json")
        if d.get("records") is None:
            raise RunDirError(f"'{dest / name}.json' has no per-identity records (the run had no attacks)")
        recs.append(records_from_json(d["records"]))
        names.append(name)
    return recs, names, s["config_yaml"]


def seed_gates(dest: str | Path) -> list[dict[str, Any] | None]:
    """The validity gates of every collected seed (None where a seed recorded none)."""
    dest = Path(dest)
    return [_read(dest / f"{n}.json").get("gates") for n in _read(dest / "summary.json")["seeds"]]


# ============================================================================ collecting a run
def _training(seed_dir: Path) -> dict[str, Any]:
    """Each target's training record: test accuracy, stop summary and the per-epoch learning curve."""
    out = {}
    for mj in sorted((seed_dir / "targets").glob("*/model.json")):
        m = json.loads(mj.read_text(encoding="utf-8"))
        curve = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                  if k in ("epoch", "loss", "train_acc", "test_acc", "val_acc", "val_loss", "lr", "seconds")}
                 for h in m.get("history", [])]
        out[mj.parent.name] = {"test_acc": m.get("test_acc"), "epochs_run": m.get("epoch"),
                               "max_epochs": m.get("epochs"), "stop": m.get("stop"), "curve": curve}
    return out


def _run_record(seed_dir: Path) -> dict[str, Any]:
    """run.json without machine paths: stage seconds and memory, sessions, versions (platform dropped)."""
    r = json.loads((seed_dir / "run.json").read_text(encoding="utf-8"))
    stages = {k: {f: v[f] for f in ("seconds", "cpu_seconds", "peak_rss_mib", "status", "source", "data_match")
                  if f in v} for k, v in r.get("stages", {}).items() if isinstance(v, dict)}
    versions = {k: v for k, v in r.get("versions", {}).items() if k != "platform"}
    return {"stages": stages, "timings": r.get("timings"), "total_stage_seconds": r.get("total_stage_seconds"),
            "peak_rss_mib": r.get("peak_rss_mib"), "sessions": r.get("sessions"), "versions": versions}


def _seed_summary(seed_dir: Path) -> dict[str, Any]:
    from .paired import seed_record

    res = json.loads((seed_dir / "results.json").read_text(encoding="utf-8"))
    rows = res.get("rows", [])
    has_attacks = any(str(r.get("attack") or "") for r in rows)
    return {"format": FORMAT + "-seed", "seed_dir": seed_dir.name, "rows": rows, "gates": res.get("gates"),
            "eval_model": res.get("eval_model"), "training": _training(seed_dir), "run": _run_record(seed_dir),
            "records": records_to_json(seed_record(seed_dir, None)) if has_attacks else None}


def _rule_record(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "rule.json"
    if not p.exists():
        return None
    rec = json.loads(p.read_text(encoding="utf-8"))
    try:                                   # keep the path only relative to the working directory (the repo)
        rec["path"] = str(Path(rec["path"]).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        rec["path"] = f"rules/{rec.get('name')}"
    return rec


def collect(run_dir: str | Path, dest: str | Path) -> Path:
    """Write (or extend) the summary ``dest`` from the run or study ``run_dir``; returns summary.json."""
    from ..config import load_config
    from ..utils import atomic_write_json
    from .paired import seed_dirs

    run_dir, dest = Path(run_dir), Path(dest)
    dirs = [d for d in seed_dirs(run_dir) if (d / "results.json").exists()]
    if not dirs:
        raise RunDirError(f"'{run_dir}' has no finished seed (results.json); let `midre run` finish one first")
    cfg = load_config(run_dir / "config.yaml", check=False)
    ident = cfg.for_seed(0).hash()       # the config without its seed list: a study run in parts matches
    old = _read(dest / "summary.json") if is_summary(dest) else None
    if old is not None and old.get("config_hash") != ident:
        raise RunDirError(f"'{dest}' summarises another config (hash {old.get('config_hash')}, this run "
                          f"{ident}); collect into another name")
    label = {d: d.name if d.name.startswith("seed-") else f"seed-{cfg.seed}" for d in dirs}   # a single run: its seed
    names = sorted(set((old or {}).get("seeds", [])) | set(label.values()), key=_seed_order)
    for d in dirs:
        atomic_write_json(dest / f"{label[d]}.json", {**_seed_summary(d), "seed_dir": label[d]})
    rule = _rule_record(run_dir) or (old or {}).get("rule")
    summary = {"format": FORMAT, "name": cfg.name, "config_hash": ident, "seeds": names,
               "config_yaml": (run_dir / "config.yaml").read_text(encoding="utf-8"), "rule": rule}
    if rule is not None:
        atomic_write_json(dest / "rule.json", rule)
    atomic_write_json(dest / "summary.json", summary)
    summary.update(_derived(dest, names))
    atomic_write_json(dest / "summary.json", summary)
    return dest / "summary.json"


def _seed_order(name: str) -> tuple[int, str]:
    tail = name.split("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (-1, name)


def _derived(dest: Path, names: list[str]) -> dict[str, Any]:
    """Tables computed from the per-seed files: aggregated rows, gates per seed, paired differences, frontier
    and verdict."""
    from ..results import aggregate_rows

    seeds = [_read(dest / f"{n}.json") for n in names]
    per_seed = [r for s in seeds for r in s["rows"]]
    out: dict[str, Any] = {"rows": aggregate_rows(per_seed) if len(seeds) > 1 else seeds[0]["rows"],
                           "per_seed_rows": per_seed,
                           "gates": {n: s.get("gates") for n, s in zip(names, seeds)},
                           "gates_valid": all((s.get("gates") or {}).get("valid", False) for s in seeds),
                           "training": {n: s["training"] for n, s in zip(names, seeds)},
                           "runs": {n: s["run"] for n, s in zip(names, seeds)}}
    if all(s.get("records") for s in seeds):
        from .frontier import frontier
        from .paired import paired_differences
        from .verdict import verdict_and_frontier

        out["paired"] = paired_differences(dest) or None   # each defense against its reference, default settings

        if (dest / "rule.json").exists():   # the frontier the verdict used (the rule's bootstrap settings)
            out["verdict"], out["frontier"] = verdict_and_frontier(dest)
        else:
            try:
                out["frontier"] = frontier(dest)
            except RunDirError:
                out["frontier"] = None
    return out
