"""The a_e sweep curve: natural accuracy and attack accuracy against MIDRE's area bound a_e.

Not the paper's Fig. 2 as such: the targets here draw s ~ U(0.1, a_e), the paper's sweep erases a fixed share
s = a_e (docs/defenses.md); train fixed-share targets (``lower: a`` with ``area: a``) for its setting.

Points come from a results table holding several MIDRE targets (``defense_params`` with ``area``);
the NoDef target is the point a_e = 0, as in the paper ("0.0 indicating no random erasing").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def row_area(row: dict[str, Any]) -> float | None:
    """MIDRE's a_e of a results row: 0.0 for NoDef, ``area`` for a plain MIDRE target, else None."""
    from ..results import parse_params

    d = str(row.get("defense") or "").strip().lower()
    if d in ("nodef", "none", ""):
        return 0.0 if d else None
    if d != "midre":
        return None
    p = parse_params(row.get("defense_params"))
    for key in ("area", "a_e", "scale_max"):
        if key in p and p[key] is not None:
            try:
                return float(p[key])
            except (TypeError, ValueError):
                return None
    if isinstance(p.get("scale"), (list, tuple)) and len(p["scale"]) == 2:
        return float(p["scale"][1])
    return None


def ae_curve_points(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per attack: points {a_e, acc, att, att_std} sorted by a_e (several rows at one a_e are averaged,
    e.g. several seeds; their spread across rows is then reported as ``att_std``)."""
    from ..results import is_missing, to_number

    groups: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for r in rows:
        a = row_area(r)
        if a is None:
            continue
        acc, att = to_number(r.get("acc")), to_number(r.get("attack_top1"))
        if isinstance(acc, str) or isinstance(att, str) or is_missing(acc) or is_missing(att):
            continue
        groups.setdefault(str(r.get("attack")), {}).setdefault(a, []).append(r)
    out: dict[str, list[dict[str, float]]] = {}
    for attack, by_area in groups.items():
        pts = []
        for a in sorted(by_area):
            rs = by_area[a]
            accs = [float(to_number(r["acc"])) for r in rs]
            atts = [float(to_number(r["attack_top1"])) for r in rs]
            if len(rs) == 1:
                s = to_number(rs[0].get("attack_top1_std"))
                std = float(s) if not isinstance(s, str) and not is_missing(s) else math.nan
                acc_std = math.nan
            else:
                m = sum(atts) / len(atts)
                std = math.sqrt(sum((x - m) ** 2 for x in atts) / (len(atts) - 1))
                ma = sum(accs) / len(accs)
                acc_std = math.sqrt(sum((x - ma) ** 2 for x in accs) / (len(accs) - 1))
            pts.append({"a_e": a, "acc": sum(accs) / len(accs), "acc_std": acc_std,
                        "att": sum(atts) / len(atts), "att_std": std, "n": len(rs)})
        out[attack] = pts
    return out


def plot_ae_curve(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Acc (solid) and AttAcc (dashed) against a_e, one colour per attack; None when < 2 points.

    Error bars: ± std across rows (seeds), clipped to [0, 100] %."""
    from ..plotting import percent_yerr, pyplot, save_fig

    pts = {a: p for a, p in ae_curve_points(rows).items() if len(p) >= 2}
    if not pts:
        return None
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    acc_drawn = False
    for i, (attack, p) in enumerate(pts.items()):
        xs = [q["a_e"] for q in p]
        if not acc_drawn:
            ys = [q["acc"] for q in p]
            ax.errorbar(xs, ys, yerr=percent_yerr(ys, [q["acc_std"] for q in p]), color="black", marker="o", linewidth=2, capsize=3,
                        label="natural accuracy (Acc)")
            acc_drawn = True
        ys = [q["att"] for q in p]
        ax.errorbar(xs, ys, yerr=percent_yerr(ys, [q["att_std"] for q in p]), color=cmap(i % 10), marker="s", linestyle="--", linewidth=2, capsize=3,
                    label=f"attack accuracy ({attack})")
    ax.set_xlabel("MIDRE area bound a_e  (0 = no defense)", fontsize=11)
    ax.set_ylabel("accuracy (%)", fontsize=11)
    ax.set_ylim(-2, 102)
    ax.set_title("Utility and privacy against the erased area", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return save_fig(fig, Path(path))
