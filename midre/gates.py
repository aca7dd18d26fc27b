"""Validity gates: is the instrument strong enough, on NoDef, for a comparison of defenses to mean anything?

Before any defense is compared, a run checks its measuring instrument on the undefended (NoDef) target:

==========================  ==========================================================================
gate                        passes when
==========================  ==========================================================================
evaluation model            its natural accuracy on the private test split >= ``gates.eval_acc``
NoDef target                each NoDef target's natural accuracy >= ``gates.target_acc``
attack strength             each attack's NoDef top-1 >= its floor in ``gates.attack_top1`` (by attack
                            name or label); attacks without a floor are listed for information
weakest attack              ``gates.weakest`` (GMI) stays below every other attack's NoDef top-1
prior quality               each GAN prior an attack on NoDef used (a kind with ``quality_gate``:
                            gan, kedmi, cgan) covers held-out public images at least
                            ``gates.prior_coverage`` times as well as real public images do
                            (``relative_coverage`` in ``prior.json`` ``quality``, midre.prior_quality);
                            a prior without the figure is "not measured"
==========================  ==========================================================================

Any gate that fails or cannot be measured makes the verdict "comparison not valid".  The defaults are the
embedded benchmark's floors, fixed from the paper's NoDef profile (issue 9) before any defense was run;
another setup may override them in its config, and the report records the floors it used.
"""
from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .priors import PRIORS, get_prior
from .results import as_float

PASSED, FAILED, MISSING, INFO = "passed", "failed", "not measured", "info"
VALID, NOT_VALID = "valid", "comparison not valid"


def _floor_check(gate: str, subject: str, value: float, floor: float) -> dict[str, Any]:
    status = MISSING if math.isnan(value) else (PASSED if value >= floor else FAILED)
    return {"gate": gate, "subject": subject, "value": value, "floor": f">= {floor:g}", "status": status}


def _attack_floor(key: str, name: str, floors: Mapping[str, float]) -> float | None:
    for k in (key, name):
        if k in floors:
            return float(floors[k])
    return None


def _not_gated(check: dict[str, Any]) -> dict[str, Any]:
    """A check of an attack (or a prior only it uses) reported beside the comparison: listed, not deciding."""
    return {**check, "floor": f"{check['floor']} (not gated)", "status": INFO}


def check_gates(rows: Sequence[Mapping[str, Any]], eval_acc: Any, gates: Any,
                attack_names: Mapping[str, str] | None = None,
                prior_quality: Sequence[Mapping[str, Any]] | None = None,
                ungated: Collection[str] = (), ungated_priors: Collection[str] = ()) -> dict[str, Any]:
    """Check the instrument on the NoDef rows of a results table.

    Args:
        rows: results rows (``target``, ``defense``, ``attack``, ``acc``, ``attack_top1``), as in results.csv.
        eval_acc: the evaluation model's natural accuracy (percent).
        gates: a :class:`midre.config.GatesSection` or a mapping with the same keys.
        attack_names: attack key (column ``attack``) -> registered attack name (``lomma_gmi``, ...).
        prior_quality: ``[{"prior": name, "target": target or None, "relative_coverage": c, ...}]``.
        ungated: attack keys reported beside the comparison (``gated: false``): their floor checks are
            listed as information and they do not count among "the others" of the weakest-attack gate.
        ungated_priors: prior units (``unit``, else ``prior``: ``cgan-nodef``) that only ungated attacks use:
            listed as information.

    Returns ``{"valid", "verdict", "checks": [...], "floors": {...}}``; every check has gate, subject,
    value, floor, status (passed / failed / not measured / info).
    """
    g = gates.model_dump() if hasattr(gates, "model_dump") else dict(gates)
    names = dict(attack_names or {})
    checks = [_floor_check("evaluation model accuracy (%)", "evaluation model", as_float(eval_acc), g["eval_acc"])]
    nodef = [r for r in rows if str(r.get("defense")) == "nodef"]
    nodef_targets = list(dict.fromkeys(str(r["target"]) for r in nodef))
    if not nodef_targets:
        checks.append({"gate": "NoDef target", "subject": "-", "value": float("nan"), "floor": "present",
                       "status": MISSING})
    for t in nodef_targets:
        acc = next(as_float(r.get("acc")) for r in nodef if str(r["target"]) == t)
        checks.append(_floor_check("NoDef target accuracy (%)", t, acc, g["target_acc"]))
        top1 = {str(r["attack"]): as_float(r.get("attack_top1")) for r in nodef
                if str(r["target"]) == t and str(r.get("attack") or "")}
        for key, v in top1.items():
            floor = _attack_floor(key, names.get(key, key), g["attack_top1"])
            if floor is None:
                checks.append({"gate": "attack NoDef top-1 (%)", "subject": f"{key} -> {t}", "value": v,
                               "floor": "none", "status": INFO})
            else:
                c = _floor_check("attack NoDef top-1 (%)", f"{key} -> {t}", v, floor)
                checks.append(_not_gated(c) if key in ungated else c)
        weak = g.get("weakest")
        weak_keys = [k for k in top1 if weak and (k == weak or names.get(k) == weak)]
        others = [v for k, v in top1.items() if k not in weak_keys and k not in ungated]
        for k in weak_keys:
            if others:
                bound = min(others)
                status = MISSING if math.isnan(top1[k]) or math.isnan(bound) else \
                    (PASSED if top1[k] < bound else FAILED)
                checks.append({"gate": "weakest attack stays weakest", "subject": f"{k} -> {t}", "value": top1[k],
                               "floor": f"< {bound:.4g} (min of the others)", "status": status})
    for q in prior_quality or []:
        tgt = q.get("target")
        if tgt is not None and tgt not in nodef_targets:
            continue
        subject = str(q.get("prior")) + ("" if tgt is None else f" ({tgt})")
        c = _floor_check("prior relative coverage (held-out public)", subject,
                         as_float(q.get("relative_coverage")), g["prior_coverage"])
        checks.append(_not_gated(c) if q.get("unit", q.get("prior")) in ungated_priors else c)
    valid = all(c["status"] in (PASSED, INFO) for c in checks)
    return {"format": "midre-gates", "valid": valid, "verdict": VALID if valid else NOT_VALID, "checks": checks,
            "floors": {k: g[k] for k in ("eval_acc", "target_acc", "attack_top1", "weakest", "prior_coverage")},
            **({"not_gated": sorted(ungated)} if ungated else {})}


# `midre audit`: the model is the user's (no NoDef to compare with), so its gates check the audit itself
AUDIT_FLOORS = {"target_acc": 50.0,    # % of its own training images the model classifies right (class order, normalisation)
                "eval_acc": 50.0,      # % held-out accuracy of the evaluation model
                "attack_top1": 50.0}   # % of reconstructions the TARGET assigns to the attacked class (converged?)


def check_audit(target_acc: Any, eval_acc: Any, attack_top1: Mapping[str, Any]) -> dict[str, Any]:
    """The audit's gates, in the same record as :func:`check_gates` (each check adds what it measures and,
    when it fails, the fix): the model fits its data, the evaluation model is accurate, each attack converged
    (``attack_top1``: attack -> share of its reconstructions the audited model assigns to the attacked class)."""
    f = AUDIT_FLOORS
    checks = [_explained(_floor_check("target fits its private data", "-", as_float(target_acc), f["target_acc"]),
                         "accuracy of your model on the private images (its training data)",
                         "check the class order (--classes), --mean/--std and --input-size"),
              _explained(_floor_check("evaluation model is accurate", "-", as_float(eval_acc), f["eval_acc"]),
                         "held-out accuracy of the independent evaluation model",
                         "train it longer (--eval-epochs) or give a stronger one (--eval)")]
    checks += [_explained(_floor_check(f"attack {a} converged", a, as_float(v), f["attack_top1"]),
                          "share of its reconstructions your model assigns to the attacked identity",
                          "raise the attack budget (--preset paper or --attack-param ...iterations=...)")
               for a, v in attack_top1.items()]
    valid = all(c["status"] == PASSED for c in checks)
    return {"format": "midre-gates", "kind": "audit", "title": "Validity gates", "valid": valid,
            "verdict": VALID if valid else NOT_VALID, "checks": checks, "floors": dict(f)}


def _explained(check: dict[str, Any], what: str, fix: str) -> dict[str, Any]:
    return {**check, "what": what, "fix": None if check["status"] == PASSED else fix}


def failed_gates(result: Mapping[str, Any]) -> list[str]:
    """The names of the checks that failed or could not be measured."""
    return [str(c["gate"]) for c in result.get("checks", []) if c["status"] in (FAILED, MISSING)]


def prior_quality_of_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``quality`` record of every sample-generating prior in a run (or each seed of a study)."""
    run_dir = Path(run_dir)
    out: list[dict[str, Any]] = []
    gated = sorted((k for k in PRIORS if get_prior(k).quality_gate), key=len, reverse=True)   # longest first
    for pj in sorted(run_dir.glob("**/priors/*/*/prior.json")):
        unit = pj.parent.parent.name                  # "gan" or "<kind>-<target>"
        kind = next((k for k in gated if unit == k or unit.startswith(k + "-")), None)
        if kind is None:
            continue
        try:
            meta = json.loads(pj.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
        q = meta.get("quality") or {}
        seed_dir = next((p.name for p in pj.parents if p.name.startswith("seed-")), None)
        out.append({"prior": unit if seed_dir is None else f"{seed_dir}/{unit}", "unit": unit,
                    "target": None if unit == kind else unit[len(kind) + 1:],
                    "relative_coverage": q.get("relative_coverage"), "coverage": q.get("coverage"),
                    "kid": q.get("kid")})
    return out


def gates_table(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the gates table for the report."""
    checks = result.get("checks", [])
    explained = any("what" in c for c in checks)
    head = ["gate", "subject", "value", "floor", "status"] + (["what it measures / fix"] if explained else [])
    body = []
    for c in checks:
        v = as_float(c.get("value"))
        row = [str(c["gate"]), str(c["subject"]), "—" if math.isnan(v) else f"{v:.4g}", str(c["floor"]),
               str(c["status"]).upper() if c["status"] in (FAILED, MISSING) else str(c["status"])]
        if explained:
            row.append(str(c.get("what", "")) + (f" — fix: {c['fix']}" if c.get("fix") else ""))
        body.append(row)
    return head, body


def verdict_line(result: Mapping[str, Any]) -> str:
    """One sentence for the top of the report."""
    if result.get("kind") == "audit":
        if result.get("valid"):
            return "Validity gates: all passed -- the attack numbers below can be read as privacy."
        return (f"Validity gates: FAILED ({', '.join(failed_gates(result))}) -- the attack numbers cannot be read "
                "as privacy: a model that does not fit its own data, a weak evaluation model or an attack that did "
                "not converge would all make the model look private when it is not.")
    if result.get("valid"):
        return "Validity gates: all passed -- the instrument is strong enough on NoDef for the comparison below."
    bad = [c for c in result.get("checks", []) if c["status"] in (FAILED, MISSING)]
    what = "; ".join(f"{c['gate']} {c['subject']} ({c['status']})" for c in bad[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    return (f"Validity gates: FAILED -- comparison not valid. The instrument did not pass on NoDef: {what}{more}. "
            "Differences between defenses below do not measure protection.")
