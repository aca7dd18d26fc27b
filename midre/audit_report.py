"""The report of `midre audit`: the verdict, the one gates section of every report (midre.report, from
OUT/gates.json), the attacks' tables, reconstructions beside their nearest private image, and the command that
retrains the model with MIDRE with its measured cost."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .attacks.base import Reconstructions
from .plotting import pyplot, save_fig
from .report import write_report
from .results import to_hwc


def write_audit_report(out: Path, target: str, spec: Any, info: dict, data: Any, metrics: dict, v: dict,
                       advice: dict) -> Path:
    """OUT/report.md + OUT/report.html of an audit (midre.report.write_report with the audit's sections)."""

    figs = []
    for a, m in metrics.items():
        p = plot_nearest_pairs(a, out / "attacks" / target / a, m.get("nearest") or {}, data.private,
                               data.class_names, out / "figures" / f"nearest_{a}.png")
        if p is not None:
            figs.append((f"Reconstructions beside the nearest private image: {a}", p,
                         "For each attacked class: the reconstruction your model is most confident about (left) "
                         "and the private training image closest to it in the evaluation model's features "
                         "(right, with the squared feature distance d²)."))
    lead = [("Verdict", *_verdict_section(v, spec, info))]
    tail = [("Retrain with MIDRE", *_advice_section(advice))]
    _md, html_path = write_report(out, splits=None, lead=lead, figures=figs, tail=tail, standard_figures=False,
                                  title=f"midre audit: {Path(spec.model).name} ({spec.access})")
    return Path(html_path)


def plot_nearest_pairs(attack: str, adir: Path, nearest: dict, private: Any, class_names: Sequence[str],
                       path: Path, max_pairs: int = 12, per_row: int = 4) -> Path | None:
    """A grid of (reconstruction | nearest private image) pairs, one pair per attacked class."""

    if not nearest:
        return None
    rec = Reconstructions.load(adir)
    items = sorted(nearest.items(), key=lambda kv: int(kv[0]))[:max_pairs]
    rows = math.ceil(len(items) / per_row)
    cols = 2 * min(per_row, len(items))
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 0.4, 1.75 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (c, nn_) in enumerate(items):
        r, c0 = divmod(k, per_row)
        name = class_names[int(c)] if int(c) < len(class_names) else c
        for j, (img, label) in enumerate(((rec.images[nn_["recon"]], f"{name}\nreconstruction"),
                                          (private[nn_["private"]][0], f"nearest private\nd² {nn_['sq_dist']:.3g}"))):
            ax = axes[r][2 * c0 + j]
            arr, cmap = to_hwc(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(label, fontsize=8)
    fig.suptitle(f"{attack}: reconstruction | nearest private training image", fontsize=10)
    fig.tight_layout()
    return save_fig(fig, path)


def cost_text(seconds: float) -> str:
    """A duration as a person reads it (s, min, h)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ============================================================================ report sections (md, html)
def _verdict_section(v: dict, spec: Any, info: dict) -> tuple[str, str]:
    import html

    note = (f"Model: {info['arch']} from {Path(spec.model).name} (sha256 {info['sha256_16']}…), input "
            f"{info['input_size']} px, mean {tuple(spec.mean)}, std {tuple(spec.std)}; attack preset "
            f"'{spec.preset}', {spec.repeats} repeats, seed {spec.seed}.")
    md = f"**{v['level'].upper()}** — {v['text']}\n\n_{note}_"
    color = {"high leakage": "#b00020", "moderate leakage": "#c46200", "low leakage": "#8a7a00",
             "no leakage measured": "#1b7f3b"}.get(v["level"], "#555")
    ht = (f"<p style='font-size:17px'><b style='color:{color}'>{html.escape(v['level'].upper())}</b> — "
          f"{html.escape(v['text'])}</p><p class='note'>{html.escape(note)}</p>")
    return md, ht


def _advice_section(a: dict) -> tuple[str, str]:
    import html

    c = a["cost"]
    cost = (f"Expected cost: about {cost_text(a['seconds'])} of training on {c['device']} "
            f"({a['epochs']} epochs × {a['train_images']} images × {1000 * c['seconds_per_image']:.2f} ms per image, "
            f"the median of {c['batch']}-image MIDRE steps (eraser + forward + backward) of your model measured here "
            f"with {c['threads']} thread(s); data loading and evaluation not included).")
    md, ht = [], []
    if a["command"]:
        md.append(f"```bash\n{a['command']}\n```")
        ht.append("<pre style='white-space:pre-wrap;word-break:break-all;background:#f3f3f3;padding:8px'><code>"
                  f"{html.escape(a['command'])}</code></pre>")
    for text in [a["why_area"], cost, *a["notes"]]:
        md.append(text)
        ht.append(f"<p>{html.escape(text)}</p>")
    md.append("Then audit the retrained model again with the same command to see the leakage it removes.")
    ht.append("<p>Then audit the retrained model again with the same command to see the leakage it removes.</p>")
    return "\n\n".join(md), "".join(ht)
