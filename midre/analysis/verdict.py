"""``midre analyze verdict RUN``: a run's verdict, computed by code from the decision rule it recorded when it
started (midre.rules) and the frontier statistics of its artefacts (midre.analysis.frontier).

Each comparison of the rule gets the rule's statistic (``delta_f`` or ``gap``), its estimate, the wider of
its two 95 % intervals and the verdict ("helps", "no better than losing accuracy", "worse", "not matched");
a comparison the run has no numbers for is "not run", and when the run's validity gates failed every
verdict is "comparison not valid".  The answer line follows the rule's ``answer.yes_when``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .frontier import HELPS, frontier

NOT_RUN, NOT_VALID = "not run", "comparison not valid"


def _gates_valid(run_dir: Path) -> bool | None:
    from .summary import is_summary, seed_gates

    if is_summary(run_dir):                 # every collected seed's own gates
        gates = seed_gates(run_dir)
        return None if not gates else all(bool(g and g.get("valid")) for g in gates)
    p = run_dir / "gates.json"
    if not p.exists():
        return None
    return bool(json.loads(p.read_text(encoding="utf-8")).get("valid"))


def compute_verdict(run_dir: str | Path, rule_path: str | Path | None = None) -> dict[str, Any]:
    return verdict_and_frontier(run_dir, rule_path)[0]


def verdict_and_frontier(run_dir: str | Path, rule_path: str | Path | None = None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verdict and the frontier it was computed from (with the rule's bootstrap settings)."""
    from ..rules import recorded_rule

    run_dir = Path(run_dir)
    rule, rec = recorded_rule(run_dir, rule_path)     # refuses a rule edited after the run started
    fr = frontier(run_dir, n_boot=rule.n_boot, seed=rule.seed, margin=rule.margin)
    valid = _gates_valid(run_dir)
    st = rule.statistic
    rows = []
    for c in rule.comparisons:
        found = next((r for r in fr["attacks"].get(c.attack, {}).get("rows", []) if r["target"] == c.target), None)
        row: dict[str, Any] = {"target": c.target, "attack": c.attack, "primary": c.primary, "statistic": st}
        if found is None:
            row.update({"estimate": None, "ci": None, "ci_kind": None, "verdict": NOT_RUN})
        else:
            row.update({"estimate": found[st], "ci": found[f"{st}_ci"], "ci_kind": found[f"{st}_ci_kind"],
                        "boot_ci": found[f"{st}_boot_ci"], "t_ci": found[f"{st}_t_ci"], "acc": found["acc"],
                        "attack_top1": found["attack_top1"], "n_seeds": found["n_seeds"],
                        "verdict": found[f"{st}_verdict"] if valid is not False else NOT_VALID})
        rows.append(row)
    return {"format": "midre-verdict", "experiment": rule.experiment, "question": rule.question,
            "rule": {"name": rec.get("name"), "sha256": rec.get("sha256"), "recorded": rec.get("recorded")},
            "statistic": st, "margin": rule.margin, "gates_valid": valid, "seed_dirs": fr["seed_dirs"],
            "rows": rows, "answer": _answer(rule, rows, valid)}, fr


def _answer(rule: Any, rows: list[dict[str, Any]], valid: bool | None) -> str:
    prim = [r for r in rows if r["primary"]] or rows
    if valid is False:
        return "no answer: the validity gates failed on NoDef (comparison not valid)"
    if any(r["verdict"] == NOT_RUN for r in prim):
        return "no answer yet: a primary comparison has not run"
    helps = [r["verdict"] == HELPS for r in prim]
    yes = all(helps) if rule.answer.yes_when == "all_primary_help" else any(helps)
    listed = "; ".join(f"{r['target']} under {r['attack']}: {r['verdict']}" for r in prim)
    return ("yes" if yes else "no") + f" ({listed})"


def verdict_markdown(v: dict[str, Any]) -> str:
    from ..results import md_table

    def ci(x: Any) -> str:
        return "--" if not x else f"[{x[0]:+.1f}, {x[1]:+.1f}]"

    body = [[r["target"], r["attack"], "yes" if r["primary"] else "", "--" if r["estimate"] is None else
             f"{r['estimate']:+.1f}", ci(r.get("boot_ci")), ci(r.get("t_ci")), r.get("ci_kind") or "--", r["verdict"]]
            for r in v["rows"]]
    head = ["target", "attack", "primary", v["statistic"], "bootstrap CI", "t CI (seeds)", "verdict uses", "verdict"]
    return (f"**Answer:** {v['answer']}\n\n" + md_table(head, body)
            + f"\n\nRule {v['rule']['name']} (sha256 {str(v['rule']['sha256'])[:12]}, recorded {v['rule']['recorded']}); "
              f"margin {v['margin']:g}; seeds: {', '.join(v['seed_dirs'])}.\n")


def write_verdict(run_dir: str | Path, rule_path: str | Path | None = None) -> Path:
    from ..utils import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    v = compute_verdict(run_dir, rule_path)
    atomic_write_json(run_dir / "analysis" / "verdict.json", v)
    md = run_dir / "analysis" / "verdict.md"
    atomic_write_text(md, verdict_markdown(v))
    return md
