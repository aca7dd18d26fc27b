"""Learning curves of a run's targets (``midre analyze learning RUN``): validation and test accuracy after
every epoch, the kept epoch marked, from each target's ``history.json`` (a target still training shows
the epochs it has finished).  Shows whether every target reached a plateau under the training rule
(docs/frontier.md)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RunDirError


def learning_curves(seed_dir: str | Path, targets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """target -> {"history": [...], "stop": {...} or None} of one run (or one seed of a study)."""
    seed_dir = Path(seed_dir)
    out: dict[str, dict[str, Any]] = {}
    for hist in sorted((seed_dir / "targets").glob("*/history.json")):
        name = hist.parent.name
        if targets and name not in targets:
            continue
        meta_p = hist.parent / "model.json"
        meta = json.loads(meta_p.read_text(encoding="utf-8")) if meta_p.exists() else {}
        out[name] = {"history": json.loads(hist.read_text(encoding="utf-8")), "stop": meta.get("stop"),
                     "complete": bool(meta.get("complete"))}
    if not out:
        raise RunDirError(f"'{seed_dir}' has no trained target (targets/*/history.json); run `midre run` first")
    return out


def plot_learning(curves: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    from ..plotting import pyplot, save_fig

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, c in curves.items():
        h = c["history"]
        ep = [r["epoch"] for r in h]
        for ax, key in zip(axes, ("val_acc", "test_acc")):
            if not all(key in r for r in h):
                continue
            line, = ax.plot(ep, [r[key] for r in h], lw=1.3, label=name + ("" if c["complete"] else " (training)"))
            kept = (c.get("stop") or {}).get("kept_epoch")
            if kept:
                ax.scatter([kept], [h[kept - 1][key]], color=line.get_color(), zorder=3, s=18)
    for ax, lab in zip(axes, ("validation accuracy (held-out training images, %)", "test accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title + " (dot: the kept epoch)")
    fig.tight_layout()
    return save_fig(fig, path)
