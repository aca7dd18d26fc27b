"""The run report: ``report.md`` and a self-contained ``report.html`` for one run directory.

Inputs (the fixed run-directory layout written by :mod:`midre.pipeline`)::

    RUN/config.yaml, RUN/run.json              settings and timings
    RUN/eval/model.json, RUN/targets/<t>/model.json   checkpoint metadata (arch, defense, accuracy)
    RUN/attacks/<t>/<attack>/reconstructions.*  reconstructions (grids)
    RUN/results.csv | RUN/results.json          one row per target x attack (the tables)
    RUN/analysis/features.json + figures/features.png   written by ``midre analyze features``

Outputs: ``RUN/report.md``, ``RUN/report.html`` (inline CSS, every image embedded as base64 PNG, no
external asset) and ``RUN/figures/*.png``.  Missing or NaN values are printed as an em dash, never
invented.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis.curves import ae_curve_points, plot_ae_curve
from .analysis.features import overlap_table
from .analysis.frontier import frontier_table
from .analysis.paired import paired_table
from .attacks.base import Reconstructions
from .errors import RunDirError
from .gates import gates_table, verdict_line
from .plotting import percent_yerr, pyplot, save_fig
from .results import (
    DASH,
    artefact_dir,
    attack_dirs,
    defense_label,
    fmt,
    fmt_pm,
    html_table,
    is_missing,
    load_results,
    mark_sweep_rows,
    md_table,
    private_images,
    read_json_safe,
    read_yaml_safe,
    target_dirs,
    to_hwc,
    to_number,
)
from .utils import atomic_write_text


@dataclass
class ModelInfo:
    name: str
    arch: str = DASH
    defense: str = DASH
    epochs: Any = None
    test_acc: Any = None
    train_seconds: Any = None
    extra: dict = field(default_factory=dict)


def _model_info(name: str, meta: dict) -> ModelInfo:
    hist = meta.get("history") or []
    secs = sum(float(h.get("seconds", 0) or 0) for h in hist if isinstance(h, dict)) if hist else None
    return ModelInfo(name=name, arch=str(meta.get("arch", DASH)), defense=defense_label(meta.get("defense")),
                     epochs=meta.get("epochs", meta.get("epoch")), test_acc=meta.get("test_acc"), train_seconds=secs,
                     extra={"dataset": meta.get("dataset"), "resolution": meta.get("resolution")})


def collect_models(run_dir: Path) -> list[ModelInfo]:
    out = []
    ev = read_json_safe(run_dir / "eval" / "model.json")
    if isinstance(ev, dict):
        out.append(_model_info("evaluation model", ev))
    cfg = read_yaml_safe(run_dir / "config.yaml")
    order = [t.get("name") for t in cfg.get("targets", []) if isinstance(t, dict)] if isinstance(cfg, dict) else []
    dirs = sorted(target_dirs(run_dir), key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    for t in dirs:
        meta = read_json_safe(t / "model.json")
        if isinstance(meta, dict):
            out.append(_model_info(t.name, meta))
    return out


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None and v != {} and v != [])


def settings_summary(run_dir: Path) -> list[tuple[str, str]]:
    """Key facts from config.yaml and run.json as (name, value) pairs (None / empty values left out)."""
    items: list[tuple[str, str]] = []
    cfg = read_yaml_safe(run_dir / "config.yaml")
    if isinstance(cfg, dict):
        if cfg.get("name"):
            items.append(("run", str(cfg["name"]) + (f": {cfg['description']}" if cfg.get("description") else "")))
        ds = cfg.get("dataset")
        if isinstance(ds, dict):
            extra = {k: v for k, v in ds.items() if k not in ("name", "options")}
            if extra.get("resolution"):
                extra["resolution"] = f"{extra['resolution']} px"
            opts = ds.get("options") or {}
            text = str(ds.get("name", DASH))
            if _kv(extra):
                text += f" ({_kv(extra)})"
            if isinstance(opts, dict) and _kv(opts):
                text += f"; options: {_kv(opts)}"
            items.append(("dataset", text))
        seeds = cfg.get("seeds") or [cfg.get("seed")]
        items.append(("seed" if len(seeds) == 1 else "seeds", ", ".join(str(s) for s in seeds)))
        if cfg.get("device"):
            items.append(("device", str(cfg["device"])))
        atk = cfg.get("attacks")
        if isinstance(atk, list) and atk:
            parts = []
            for a in atk:
                if isinstance(a, dict):
                    name = a.get("label") or a.get("name", "?")
                    bits = [f"identities {a['identities']}" if a.get("identities") is not None else None,
                            f"{a['repeats']} repeats" if a.get("repeats") else None,
                            "adaptive" if a.get("adaptive") else None]
                    parts.append(f"{name} ({', '.join(b for b in bits if b)})")
                else:
                    parts.append(str(a))
            items.append(("attacks", "; ".join(parts)))
    sw = read_json_safe(run_dir / "sweep.json")
    if isinstance(sw, dict) and isinstance(sw.get("trials"), list):
        tr = sw["trials"]
        done = sum(1 for t in tr if isinstance(t, dict) and t.get("status") == "done")
        items.append(("sweep", f"{len(tr)} trials over {', '.join(sw.get('grid_keys', [])) or '—'}; backend "
                               f"{sw.get('backend', '—')}; {done}/{len(tr)} done"))
        for t in tr:
            if isinstance(t, dict) and t.get("status") == "failed":
                items.append((str(t.get("name")), f"FAILED: {str(t.get('error') or '').splitlines()[0][:160]}"))
    run = read_json_safe(run_dir / "run.json")
    if isinstance(run, dict):
        timings = run.get("timings")
        total = run.get("total_stage_seconds")
        if isinstance(timings, dict) and timings:
            stage_order = ["data", "eval", "targets", "priors", "attacks", "metrics", "results", "report", "analysis"]
            keys = sorted(timings, key=lambda k: (stage_order.index(k) if k in stage_order else len(stage_order), k))
            t = ", ".join(f"{k} {float(timings[k]):.1f}s" for k in keys if isinstance(timings[k], (int, float)))
            items.append(("time per stage", t + (f" (total {float(total):.1f}s)" if total is not None else "")))
        if run.get("peak_rss_mib") is not None:
            items.append(("peak memory", f"{float(run['peak_rss_mib']):.0f} MiB"))
        ver = run.get("versions")
        if isinstance(ver, dict):
            items.append(("versions", _kv({k: ver.get(k) for k in ("midre", "torch", "torchvision", "python")})))
            if ver.get("platform"):
                items.append(("platform", str(ver["platform"])))
        for k in ("created", "updated", "config_hash"):
            if run.get(k):
                items.append((k.replace("_", " "), str(run[k])))
        if "complete" in run:
            items.append(("complete", "yes" if run["complete"] else "no (stopped or interrupted; resume it)"))
    return items


# ----------------------------------------------------------------------------------------- tables
TABLE_HEAD = ["Defense", "Acc ↑", "AttAcc top-1 ↓", "95% CI", "AttAcc top-5 ↓", "KNN ↑", "FID_eval ↑", "Δ ↑"]


def attack_tables(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per attack: (header, body) of the paper-style table; ε column only when some row has it."""
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    attacks: list[str] = []
    for r in rows:
        a = str(r.get("attack", DASH))
        if a not in attacks:
            attacks.append(a)
    for a in attacks:
        sub = [r for r in rows if str(r.get("attack", DASH)) == a]
        has_eps = any(not is_missing(to_number(r.get("epsilon"))) for r in sub)
        head = list(TABLE_HEAD) + (["ε"] if has_eps else [])
        body = []
        for r in sub:
            lo, hi = to_number(r.get("top1_ci_lo")), to_number(r.get("top1_ci_hi"))
            ci = DASH if is_missing(lo) or is_missing(hi) or isinstance(lo, str) or isinstance(hi, str) \
                else f"[{lo:.2f}, {hi:.2f}]"
            delta = to_number(r.get("delta"))
            name = str(r.get("target") or r.get("defense") or DASH)
            d = str(r.get("defense") or "")
            if d and d != name:
                name = f"{name} ({d})"
            if r.get("_grid"):
                name = f"{name} [{r['_grid']}]"
            line = [name, fmt_pm(r.get("acc"), r.get("acc_std")),
                    fmt_pm(r.get("attack_top1"), r.get("attack_top1_std")), ci,
                    fmt_pm(r.get("attack_top5"), r.get("attack_top5_std")), fmt(r.get("knn")), fmt(r.get("fid_eval")),
                    fmt(delta) if not isinstance(delta, str) else delta]
            if has_eps:
                line.append(fmt(r.get("epsilon")))
            body.append(line)
        out[a] = (head, body)
    return out


# ----------------------------------------------------------------------------------------- figures
def plot_privacy_utility(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Natural accuracy (x) vs attack top-1 accuracy (y): one point per target and attack, std as error bars."""
    pts = []
    for r in rows:
        acc, att = to_number(r.get("acc")), to_number(r.get("attack_top1"))
        if not isinstance(acc, str) and not isinstance(att, str) and not is_missing(acc) and not is_missing(att):
            pts.append({**r, "acc": acc, "attack_top1": att})
    if not pts:
        return None
    plt = pyplot()
    lab = lambda r: str(r.get("target")) + (f" [{r['_grid']}]" if r.get("_grid") else "")  # noqa: E731
    targets = list(dict.fromkeys(lab(r) for r in pts))
    attacks = list(dict.fromkeys(str(r.get("attack")) for r in pts))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
    ncol = 10 if len(targets) <= 10 else 20          # distinct colours for up to 20 targets
    cmap = plt.get_cmap("tab10" if ncol == 10 else "tab20")
    many = len(targets) > 8
    fig, ax = plt.subplots(figsize=(9.5 if many else 7.5, 5.2))
    spots: dict[tuple[float, float], list[str]] = {}
    for r in pts:
        ti, ai = targets.index(lab(r)), attacks.index(str(r.get("attack")))
        std = to_number(r.get("attack_top1_std"))
        yerr = None if is_missing(std) or isinstance(std, str) else percent_yerr([r["attack_top1"]], [std])
        ax.errorbar(r["acc"], r["attack_top1"], yerr=yerr, fmt=markers[ai % len(markers)], color=cmap(ti % ncol),
                    markersize=9, capsize=3, markeredgecolor="black", markeredgewidth=0.6)
        spots.setdefault((round(float(r["acc"]), 6), round(float(r["attack_top1"]), 6)), []).append(
            lab(r) + (f" ({r.get('attack')})" if len(attacks) > 1 else ""))
    for k, ((x, y), names) in enumerate(sorted(spots.items()) if len(spots) <= 8 else []):
        # one label per position (coinciding points share it); alternate offsets for neighbours
        ax.annotate(", ".join(dict.fromkeys(names)), (x, y), textcoords="offset points",
                    xytext=(7, 6 if k % 2 == 0 else -13), fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=cmap(i % ncol), marker="o", linestyle="", markersize=8, label=t)
               for i, t in enumerate(targets)]
    if len(attacks) > 1:
        handles += [Line2D([], [], color="gray", marker=markers[i % len(markers)], linestyle="", markersize=8,
                           label=f"attack: {a}") for i, a in enumerate(attacks)]
    if many:   # keep the legend off the points
        ax.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    else:
        ax.legend(handles=handles, fontsize=9, loc="best", framealpha=0.85)
    ax.set_xlabel("natural accuracy (%)  → better utility", fontsize=11)
    ax.set_ylabel("attack accuracy top-1 (%)  ↓ better privacy", fontsize=11)
    ax.set_title("Privacy-utility trade-off (best: bottom right)", fontsize=12)
    ax.grid(alpha=0.3)
    xs = [r["acc"] for r in pts]
    ys = [r["attack_top1"] for r in pts]
    pad_x = max(2.0, (max(xs) - min(xs)) * 0.15)
    pad_y = max(2.0, (max(ys) - min(ys)) * 0.15)
    ax.set_xlim(max(0.0, min(xs) - pad_x), min(100.0, max(xs) + pad_x) + 0.5)
    ax.set_ylim(max(-1.0, min(ys) - pad_y - 5), min(101.0, max(ys) + pad_y + 5))
    return save_fig(fig, path)


def load_reconstructions(adir: Path):
    """Reconstructions of one attack directory (via midre.attacks.base.Reconstructions)."""

    return Reconstructions.load(adir)


def _best_per_identity(rec) -> dict[int, Any]:
    """identity -> the reconstruction with the highest target confidence (first repeat on ties)."""
    import torch

    ids = torch.as_tensor(rec.identity).long()
    conf = getattr(rec, "confidence", None)
    conf = torch.as_tensor(conf).float() if conf is not None else torch.zeros(len(ids))
    out = {}
    for i in torch.unique(ids).tolist():
        idx = (ids == i).nonzero().flatten()
        best = idx[conf[idx].argmax()]
        out[int(i)] = rec.images[best]
    return out


def plot_reconstruction_grid(attack: str, recs: dict[str, Any], private: Any, path: Path,
                             max_identities: int = 8, subtitles: dict[str, str] | None = None) -> Path | None:
    """Rows: attacked identities; columns: a private training image, then each target's best reconstruction
    (in the order of ``recs``; ``subtitles`` adds a second title line per target, e.g. its AttAcc)."""
    import torch

    subtitles = subtitles or {}
    per_target = {t: _best_per_identity(r) for t, r in recs.items()}
    ids = sorted(set().union(*[set(d) for d in per_target.values()])) if per_target else []
    if not ids:
        return None
    ids = ids[:max_identities]
    cols = (["private"] if private is not None else []) + list(per_target)
    plt = pyplot()
    cell = 1.45
    fig, axes = plt.subplots(len(ids), len(cols), figsize=(cell * len(cols) + 0.6, cell * len(ids) + 0.5),
                             squeeze=False)
    targets_t = torch.as_tensor(private.targets) if private is not None else None
    for r, ident in enumerate(ids):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            img = None
            if col == "private":
                idx = (targets_t == ident).nonzero().flatten()
                if len(idx):
                    img = private[int(idx[0])][0]
            else:
                img = per_target[col].get(ident)
            if img is not None:
                arr, cmap = to_hwc(img)
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, DASH, ha="center", va="center", fontsize=14, transform=ax.transAxes)
            if r == 0:
                sub = subtitles.get(col)
                ax.set_title(col + (f"\n{sub}" if sub else ""), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"id {ident}", fontsize=9)
    fig.suptitle(f"{attack}: private image vs reconstructions", fontsize=11)
    fig.tight_layout()
    return save_fig(fig, path)


# ----------------------------------------------------------------------------------------- report
def _img_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}th,td{border:1px solid #bbb;padding:4px 9px}
th{background:#eef1f5;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
.note{color:#555;font-size:13px}code{background:#f3f3f3;padding:0 3px}
.ok{color:#1a6b1a}.bad{color:#a11;background:#fdecec;padding:.4em}
"""


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _gates_section(run_dir: Path) -> tuple[str, str, str] | None:
    """The validity gates (RUN/gates.json): verdict line + table, or None when the run has none."""

    g = read_json_safe(run_dir / "gates.json")
    if not isinstance(g, dict) or "checks" not in g:
        return None
    line = verdict_line(g)
    head, body = gates_table(g)
    floors = "; ".join(f"{k}: {v}" for k, v in g.get("floors", {}).items())
    source = "midre audit's fixed floors" if g.get("kind") == "audit" else "from the config's gates section"
    note = f"Floors used ({source}): {floors}."
    cls = "ok" if g.get("valid") else "bad"
    md = f"**{line}**\n\n" + md_table(head, body) + f"\n\n_{note}_"
    ht = (f'<p class="{cls}"><b>{html.escape(line)}</b></p>' + html_table(head, body, align_numbers=False)
          + f'<p class="note">{html.escape(note)}</p>')
    return (str(g.get("title", "Validity gates (NoDef)")), md, ht)


Section = tuple[str, str, str]  # (heading, markdown, html)
Image = tuple[str, Path, str]   # (heading, png path, caption)


def _settings_section(run_dir: Path, art_dir: Path, study_note: str | None) -> Section | None:
    """The "Settings" section: study note, settings table and the table of trained models."""
    settings = settings_summary(run_dir)
    models = collect_models(art_dir)
    s_md, s_html = [], []
    if study_note:
        s_md.append(f"_{study_note}_")
        s_html.append(f'<p class="note">{html.escape(study_note)}</p>')
    if settings:
        s_md.append(md_table(["setting", "value"], settings))
        s_html.append(html_table(["setting", "value"], settings, align_numbers=False))
    if models:
        head = ["model", "arch", "defense", "epochs", "test acc (%)", "train time (s)"]
        body = [[m.name, m.arch, m.defense, DASH if m.epochs is None else str(m.epochs), fmt(m.test_acc),
                 fmt(m.train_seconds, 1)] for m in models]
        s_md.append(md_table(head, body))
        s_html.append(html_table(head, body))
    if not s_md:
        return None
    return ("Settings", "\n\n".join(s_md), "".join(s_html))


def _results_section(rows: Sequence[dict[str, Any]]) -> Section:
    """The "Results" section: one table per attack, or a note when the table is missing."""
    if not rows:
        msg = "No results table yet (results.csv missing): the pipeline has not finished its evaluation stage."
        return ("Results", f"_{msg}_", f'<p class="note">{html.escape(msg)}</p>')
    t_md, t_html = [], []
    for a, (head, body) in attack_tables(rows).items():
        h3 = f"Attack: {a}" if a.strip() and a != DASH else "No attack run (natural accuracy only)"
        t_md.append(f"### {h3}\n\n" + md_table(head, body))
        t_html.append(f"<h3>{html.escape(h3)}</h3>" + html_table(head, body))
    note = ("Acc: natural test accuracy; AttAcc: share of reconstructions the evaluation model assigns to the "
            "attacked identity (mean ± std over repeats, %); KNN: nearest private-feature distance; Δ: "
            "(AttAcc drop)/(Acc drop) vs NoDef, OP = defended model more accurate; "
            f"{DASH} = not measured.")
    t_md.append(f"_{note}_")
    t_html.append(f'<p class="note">{html.escape(note)}</p>')
    return ("Results", "\n\n".join(t_md), "".join(t_html))


def _paired_section(run_dir: Path) -> Section | None:
    """Paired NoDef - defense differences with CIs (RUN/analysis/paired.json, `midre analyze paired`)."""

    data = read_json_safe(run_dir / "analysis" / "paired.json")
    if not isinstance(data, dict) or not data.get("rows"):
        return None
    head, body, note = paired_table(data["rows"])
    return ("Paired differences (NoDef - defense)", md_table(head, body) + "\n\n" + note,
            html_table(head, body) + f"<p class='note'>{html.escape(note)}</p>")


def _frontier_section(run_dir: Path) -> tuple[Section | None, list[Image]]:
    """The privacy-utility frontier (RUN/analysis/frontier.json, `midre analyze frontier`) and its figures."""

    data = read_json_safe(run_dir / "analysis" / "frontier.json")
    if not isinstance(data, dict) or not data.get("attacks"):
        return None, []
    head, body, note = frontier_table(data)
    images = [(f"Privacy-utility frontier: {a}", run_dir / "analysis" / f"frontier_{a}.png",
               "Natural accuracy against attack accuracy: NoDef trained to different budgets (black, with its "
               "monotone fit) and every defense; a defense below the curve is better than losing the same accuracy.")
              for a in data["attacks"] if (run_dir / "analysis" / f"frontier_{a}.png").exists()]
    return (("Privacy-utility frontier (Δ_F: defense vs NoDef trained less)", md_table(head, body) + "\n\n" + note,
             html_table(head, body) + f"<p class='note'>{html.escape(note)}</p>"), images)


def _summary_figures(rows: Sequence[dict[str, Any]], figs: Path) -> list[Image]:
    """The privacy-utility plot and, when a_e was swept, the a_e curve."""

    images: list[Image] = []
    p = plot_privacy_utility(rows, figs / "privacy_utility.png")
    if p:
        images.append(("Privacy-utility trade-off", p,
                       "Each point is one target under one attack; error bars: ± std over repeats, clipped to [0, 100] %."))
    pts = ae_curve_points(rows)
    if any(len(v) >= 2 for v in pts.values()):
        p = plot_ae_curve(rows, figs / "ae_curve.png")
        if p:
            images.append(("a_e sweep", p, "Natural accuracy and attack accuracy against MIDRE's area bound "
                                            "a_e (0 = no defense)."))
    return images


def _load_all_reconstructions(recs_available, art_dir: Path, splits: Any,
                              notes: list[str]) -> tuple[dict[str, dict[str, Any]], Any]:
    """Reconstructions by attack then target, and the private images (None if unavailable);
    problems are appended to ``notes``."""
    by_attack: dict[str, dict[str, Any]] = {}
    for t, a, adir in recs_available:
        try:
            by_attack.setdefault(a, {})[t] = load_reconstructions(adir)
        except Exception as e:  # noqa: BLE001 - a broken artefact is reported, not fatal
            notes.append(f"{t}/{a}: reconstructions unreadable ({type(e).__name__})")
    private = None
    if by_attack:
        try:
            private = private_images(art_dir, splits)
        except Exception:  # noqa: BLE001
            private = None
        if private is None:
            notes.append("private images unavailable (dataset could not be rebuilt); grids show "
                         "reconstructions only")
    return by_attack, private


def _attack_subtitles(rows: Sequence[dict[str, Any]], attack: str) -> dict[str, str]:
    """Per target, the "AttAcc x%" caption of its grid column under ``attack``."""
    subs = {}
    for r in rows:
        v = to_number(r.get("attack_top1"))
        if str(r.get("attack")) == attack and not isinstance(v, str) and not is_missing(v):
            subs[str(r.get("target"))] = f"AttAcc {v:.1f}%"
    return subs


def _reconstruction_figures(rows: Sequence[dict[str, Any]], recs_available, art_dir: Path, figs: Path,
                            splits: Any, max_identities: int, notes: list[str]) -> list[Image]:
    """One reconstruction grid per attack (targets in results-table order)."""
    by_attack, private = _load_all_reconstructions(recs_available, art_dir, splits, notes)
    order = list(dict.fromkeys(str(r.get("target")) for r in rows))
    images: list[Image] = []
    for a, recs in by_attack.items():
        recs = dict(sorted(recs.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order),
                                                         kv[0])))
        p = plot_reconstruction_grid(a, recs, private, figs / f"reconstructions_{_slug(a)}.png",
                                     max_identities=max_identities, subtitles=_attack_subtitles(rows, a))
        if p:
            images.append((f"Reconstructions: {a}", p,
                           f"One row per attacked identity (up to {max_identities}); the reconstruction "
                           "with the highest target confidence per target."))
    return images


def _feature_analysis(run_dir: Path, art_dir: Path, figs: Path) -> tuple[Path, Image | None, str, str]:
    """The feature-space figure and overlap table: ``(png path, image or None, md, html)``."""
    feat_png = figs / "features.png"
    feat_json = run_dir / "analysis" / "features.json"
    if not feat_png.exists() and art_dir != run_dir:
        feat_png, feat_json = art_dir / "figures" / "features.png", art_dir / "analysis" / "features.json"
    image: Image | None = None
    if feat_png.exists():
        image = ("Feature-space analysis", feat_png,
                 "Penultimate features (PCA to 2-D, fitted per model) of private, RE-private and "
                 "reconstructed images; one convex hull per group (paper Sec. 3.2).")
    feat_md, feat_html = "", ""
    if feat_json.exists():
        fj = read_json_safe(feat_json)
        if isinstance(fj, dict) and isinstance(fj.get("targets"), dict):

            head, body = overlap_table(fj)
            fnote = ("∩: share of the reconstructions' hull area (2-D PCA, identities pooled) inside the other "
                     "group's hull; d: distance between group centroids in the full feature space divided by the "
                     "RMS radius of the private features (mean over identities). Paper Sec. 3.2 expects recon to match "
                     "private under NoDef and to lean towards RE-private under MIDRE.")
            feat_md = md_table(head, body) + f"\n\n_{fnote}_"
            feat_html = html_table(head, body) + f'<p class="note">{html.escape(fnote)}</p>'
    return feat_png, image, feat_md, feat_html


def _render(title: str, run_dir: Path, sections: Sequence[Section], notes: Sequence[str],
            images: Sequence[Image], feat: tuple[Path, Image | None, str, str],
            tail: Sequence[Section]) -> tuple[str, str]:
    """Assemble the markdown and the self-contained HTML text of the report."""
    feat_png, _, feat_md, feat_html = feat
    md = [f"# {title}", ""]
    ht = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for head, m, h in sections:
        md += [f"## {head}", "", m, ""]
        ht.append(f"<h2>{html.escape(head)}</h2>{h}")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        ht.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for head, p, cap in images:
        rel = p.relative_to(run_dir).as_posix()
        md += [f"## {head}", "", f"![{head}]({rel})", "", f"_{cap}_", ""]
        ht.append(f"<h2>{html.escape(head)}</h2><img alt='{html.escape(head)}' "
                  f"src='data:image/png;base64,{_img_b64(p)}'/><p class='note'>{html.escape(cap)}</p>")
        if head == "Feature-space analysis" and feat_md:
            md += [feat_md, ""]
            ht.append(feat_html)
    if feat_md and not feat_png.exists():
        md += ["## Feature-space analysis", "", feat_md, ""]
        ht.append(f"<h2>Feature-space analysis</h2>{feat_html}")
    for head, m, h in tail:
        md += [f"## {head}", "", m, ""]
        ht.append(f"<h2>{html.escape(head)}</h2>{h}")
    ht.append("</body></html>")
    return "\n".join(md) + "\n", "".join(ht) + "\n"


def write_report(run_dir: str | Path, *, max_identities: int = 8, splits: Any = None,
                 title: str | None = None, lead: Sequence[tuple[str, str, str]] = (),
                 figures: Sequence[tuple[str, Path, str]] = (), tail: Sequence[tuple[str, str, str]] = (),
                 standard_figures: bool = True) -> tuple[Path, Path]:
    """Render ``report.md`` + self-contained ``report.html`` (+ ``figures/*.png``) for a run directory.

    Args:
        run_dir: the run directory (fixed layout, see the module docstring).
        max_identities: rows of each reconstruction grid.
        splits: the dataset splits if the caller holds them (else rebuilt from the checkpoint metadata).
        title: report title (default: "midre report: <dir name>").
        lead / tail: extra ``(heading, markdown, html)`` sections before the settings / after the figures
            (``midre audit``: verdict and gates first, the retraining advice last).
        figures: extra ``(heading, png path, caption)`` figures, shown after the standard ones.
        standard_figures: False leaves out the privacy-utility plot, the a_e curve and the grids.

    Returns:
        ``(md_path, html_path)``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' not found; give the --out directory of `midre run`")
    rows = load_results(run_dir)
    mark_sweep_rows(run_dir, rows)
    art_dir, study_note = artefact_dir(run_dir)
    recs_available = attack_dirs(art_dir)
    if not rows and not recs_available and not target_dirs(art_dir):
        raise RunDirError(f"'{run_dir}' holds no results, targets or attacks; run `midre run --out {run_dir}` first")
    figs = run_dir / "figures"
    title = title or f"midre report: {run_dir.resolve().name}"

    gates_section = _gates_section(run_dir)      # first: is the instrument valid on NoDef? (midre.gates)
    sections: list[Section] = [gates_section] if gates_section is not None else []
    sections.extend(lead)
    settings = _settings_section(run_dir, art_dir, study_note)
    if settings is not None:
        sections.append(settings)
    sections.append(_results_section(rows))
    frontier_sec, frontier_images = _frontier_section(run_dir)
    if frontier_sec is not None:
        sections.append(frontier_sec)
    paired = _paired_section(run_dir)
    if paired is not None:
        sections.append(paired)

    images: list[Image] = list(frontier_images)
    notes: list[str] = []
    if rows and standard_figures:
        images += _summary_figures(rows, figs)
    if recs_available and standard_figures:
        images += _reconstruction_figures(rows, recs_available, art_dir, figs, splits, max_identities, notes)
    feat = _feature_analysis(run_dir, art_dir, figs)
    if feat[1] is not None:
        images.append(feat[1])
    images += list(figures)

    md_text, html_text = _render(title, run_dir, sections, notes, images, feat, tail)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, md_text)
    atomic_write_text(html_path, html_text)
    return md_path, html_path
