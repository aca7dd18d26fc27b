"""Plotting helpers shared by the report and the analyses (matplotlib, headless, atomic PNG writes)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .utils import atomic_path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return path


def percent_yerr(means: Sequence[float], stds: Sequence[float | None]) -> list[list[float]]:
    """Asymmetric error bars of mean ± std for percentages, clipped to [0, 100].

    A percentage cannot leave [0, 100], so a bar of 3.33 ± 5.77 is drawn from 0 to 9.10.  Missing or
    NaN stds give no bar.  Returns matplotlib's ``yerr`` layout: ``[lower_lengths, upper_lengths]``.
    """
    lo, hi = [], []
    for m, s in zip(means, stds):
        s = 0.0 if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)
        lo.append(max(0.0, m - max(0.0, m - s)))
        hi.append(max(0.0, min(100.0, m + s) - m))
    return [lo, hi]
