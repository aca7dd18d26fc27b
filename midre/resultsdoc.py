"""Numbers come from one place: RESULTS.md's tables are generated from the committed summaries.

A generated block in a markdown file (RESULTS.md, README.md, BENCHMARKS.md, docs/**/*.md) is fenced by two comments::

    <!-- midre:results NAME TABLE -->
    ...generated, never edited by hand...
    <!-- /midre:results -->

``NAME`` is a summary under ``results/`` (``midre results collect RUN NAME``, midre.analysis.summary) and
``TABLE`` one of :data:`TABLES`.  ``midre results render`` rewrites every block from its summary;
``midre results render --check`` changes nothing and fails, naming each block, when one is out of date
(the test suite runs it, so a table typed by hand or left stale fails CI).  Prose stays hand-written.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis.frontier import frontier_markdown
from .analysis.paired import paired_markdown
from .analysis.verdict import verdict_markdown
from .errors import ArgumentError, RunDirError
from .results import md_table
from .utils import atomic_write_text

BLOCK = re.compile(r"(<!-- midre:results (?P<name>[\w.-]+) (?P<table>[\w-]+) -->\n)(?P<body>.*?)(<!-- /midre:results -->)",
                   re.S)
DOCS = ("RESULTS.md", "README.md", "BENCHMARKS.md")


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "--"
    return "--" if not math.isfinite(x) else fmt.format(x)


def _pm(mean: Any, std: Any, seeds: int) -> str:
    """``mean ± std`` across seeds (the mean alone for one seed or a missing std)."""
    ok = isinstance(std, (int, float)) and math.isfinite(std) and seeds > 1
    return _f(mean) + (f" ± {_f(std)}" if ok else "")


def _results(s: dict[str, Any]) -> str:
    own = any(r.get("target_top1") is not None for r in s["rows"])     # the attack's reach on the target itself
    trap = any(_f(r.get("trapdoor_acc")) != "--" for r in s["rows"])   # Trap-MID: beside natural accuracy
    head = ["target", "defense", "attack", "Acc (%)", *(["trapdoor Acc (%)"] if trap else []), "AttAcc top-1 (%)",
            "top-5 (%)", *(["target's own top-1 (%)"] if own else []), "KNN", "FID_eval", "seeds"]
    body = []
    for r in s["rows"]:
        n = int(r.get("n_seeds", 1) or 1)
        body.append([r["target"], str(r.get("defense")), str(r.get("attack") or "--"), _pm(r["acc"], r.get("acc_std"), n),
                     *([_f(r.get("trapdoor_acc"))] if trap else []),
                     _pm(r.get("attack_top1"), r.get("attack_top1_std"), n), _f(r.get("attack_top5")),
                     *([_f(r.get("target_top1"))] if own else []),
                     _f(r.get("knn"), "{:.0f}"), _f(r.get("fid_eval"), "{:.0f}"), str(n)])
    return md_table(head, body) + "\n\n" + ("Mean ± std across seeds." if len(s["seeds"]) > 1 else "One seed.")


def _training(s: dict[str, Any]) -> str:
    """Per target: epochs trained, the epoch kept, why it stopped, the LR drops -- per seed."""

    names = list(next(iter(s["training"].values())).keys()) if s["training"] else []
    head = ["target"] + [f"{seed}: kept / run (drops) reason" for seed in s["training"]] + ["test Acc (mean)"]
    body = []
    for t in names:
        cells, accs = [], []
        for seed, tr in s["training"].items():
            rec = tr.get(t) or {}
            st = rec.get("stop") or {}
            accs.append(rec.get("test_acc"))
            cells.append(f"{st.get('kept_epoch', rec.get('epochs_run'))} / {rec.get('epochs_run')} "
                         f"({','.join(str(d) for d in st.get('lr_drops', [])) or '-'}) {st.get('reason', 'fixed')}")
        vals = [float(a) for a in accs if a is not None]
        body.append([t, *cells, _f(sum(vals) / len(vals)) if vals else "--"])
    return md_table(head, body)


def _curves(s: dict[str, Any]) -> str:
    """The learning curves of the first seed: test (validation) accuracy after every epoch, per target."""

    seed, tr = next(iter(s["training"].items()))
    body = [[t, ", ".join(f"{_f(h.get('test_acc'))}" + (f" ({_f(h['val_acc'])})" if "val_acc" in h else "")
                          for h in rec.get("curve", []))] for t, rec in tr.items()]
    return md_table(["target", f"{seed}: test accuracy % after each epoch (validation accuracy)"], body)


def _geometry(s: dict[str, Any]) -> str:
    body = [[r["setup"], f"{100 * r['box_frame_share']:.1f}", f"{r['a_e']:.1f}", f"{100 * r['mean']:.1f}",
             f"{100 * r['over_80']:.1f}"] for r in s["rows"]]
    return md_table(["setup", "box share of frame (%)", "a_e", "mean share of box erased (%)",
                     "draws erasing > 80 % of box (%)"], body) + f"\n\n{s['n']} draws per row (seed {s['seed']})."


def _gates(s: dict[str, Any]) -> str:
    lines = []
    for seed, g in s["gates"].items():
        if not g:
            lines.append(f"- {seed}: no gates recorded")
            continue
        bad = [c for c in g["checks"] if c["status"] not in ("passed", "info")]
        lines.append(f"- {seed}: **{g['verdict']}**" + ("" if not bad else " (" + "; ".join(
            f"{c['gate']} {c['subject']}: {_f(c['value'])} vs {c['floor']}" for c in bad) + ")"))
    return "\n".join(lines)


def _timing(s: dict[str, Any]) -> str:
    """Per seed: the sessions that ran it, their wall and CPU time, peak memory, and the wall time of each stage
    group (run.json's records; a wall time depends on what else the machine ran, which only the prose can say)."""
    groups = ("targets", "priors", "attacks", "metrics")
    head = ["seed", "sessions", "wall (min)", "CPU (min)", "peak RSS (GiB)", *[f"{g} (min)" for g in groups]]
    body = []
    for seed, r in s.get("runs", {}).items():
        sess = r.get("sessions") or []
        per = {g: 0.0 for g in groups}
        for name, st in (r.get("stages") or {}).items():
            group = name.split("/", 1)[0]
            if group in per:
                per[group] += float(st.get("seconds") or 0)
        body.append([seed, str(len(sess)), _f(sum(float(x.get("seconds") or 0) for x in sess) / 60),
                     _f(sum(float(x.get("cpu_seconds") or 0) for x in sess) / 60),
                     _f((r.get("peak_rss_mib") or float("nan")) / 1024, "{:.2f}"), *[_f(per[g] / 60) for g in groups]])
    return md_table(head, body)


def _frontier(s: dict[str, Any]) -> str:
    if not s.get("frontier"):
        return "(no frontier: the summary has no NoDef curve or no attacks)"
    return frontier_markdown(s["frontier"]).rstrip()


def _paired(s: dict[str, Any]) -> str:
    if not s.get("paired"):
        return "(no paired differences: the summary has no defense attacked beside its reference NoDef)"
    return paired_markdown(s["paired"]).rstrip()


def _verdict(s: dict[str, Any]) -> str:
    if not s.get("verdict"):
        return "(no verdict: the run recorded no decision rule)"
    return verdict_markdown(s["verdict"]).rstrip()


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "results": _results, "training": _training, "curves": _curves, "geometry": _geometry, "gates": _gates,
    "frontier": _frontier, "verdict": _verdict, "timing": _timing, "paired": _paired}


def _summary(root: Path, name: str, cache: dict[str, dict]) -> dict[str, Any]:
    if name not in cache:
        p = root / "results" / name / "summary.json"
        if not p.is_file():
            raise RunDirError(f"results/{name}/summary.json not found; collect the run first: "
                              f"`midre results collect RUN {name}`")
        cache[name] = json.loads(p.read_text(encoding="utf-8"))
    return cache[name]


def render_text(text: str, root: Path, cache: dict[str, dict], where: str = "") -> str:
    """``text`` with every generated block rewritten from its summary."""
    def fill(m: re.Match) -> str:
        table = m.group("table")
        if table not in TABLES:
            raise ArgumentError(f"{where}: unknown generated table '{table}' in a midre:results block; use one of: "
                                f"{', '.join(TABLES)}")
        body = TABLES[table](_summary(root, m.group("name"), cache))
        return m.group(1) + body.rstrip() + "\n" + m.group(5)

    return BLOCK.sub(fill, text)


def render(root: str | Path = ".", check: bool = False) -> list[str]:
    """Render every generated block of the docs under ``root``; returns the stale blocks (``FILE: NAME TABLE``).
    With ``check`` nothing is written."""

    root = Path(root)
    stale, cache = [], {}
    docs = [d for d in DOCS if (root / d).is_file()]
    docs += sorted(str(p.relative_to(root)) for p in (root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    for doc in docs:
        p = root / doc
        old = p.read_text(encoding="utf-8")
        new = render_text(old, root, cache, doc)
        if new != old:
            olds = {(m.group("name"), m.group("table")): m.group("body") for m in BLOCK.finditer(old)}
            stale += [f"{doc}: {m.group('name')} {m.group('table')}" for m in BLOCK.finditer(new)
                      if olds.get((m.group("name"), m.group("table"))) != m.group("body")]
            if not check:
                atomic_write_text(p, new)
    return stale
