"""The privacy-utility frontier: is a defense better than simply losing the same accuracy?

A defense that costs natural accuracy will usually lower attack accuracy too, for the plain reason that a
weaker classifier is easier to fool and harder to invert.  The fair question is whether it lowers attack
accuracy *more than losing the same accuracy would*.  The control is NoDef itself, trained less (the
paper's Entire-Erasing control, Tab. 1 / C.13): the run's **reference NoDef** plus its **curve points**
(targets with ``curve: true``, NoDef stopped earlier) trace, per attack, attack accuracy as a function of
natural accuracy.  The curve is monotone: an isotonic (non-decreasing) fit of the points, then a
shape-preserving PCHIP interpolation through them.

For every defense (a target compared with the reference NoDef) and attack:

* ``delta_f`` = curve(Acc_defense) - AttAcc_defense, in points.  > 0: the defense's attack accuracy is
  below what NoDef has at the same natural accuracy.  Outside the curve's accuracy range it is "not
  matched" (no extrapolation).
* ``gap`` = (AttAcc_ref - AttAcc_def) - (Acc_ref - Acc_def): the paired gap of ``midre analyze paired``,
  kept beside it with the same statistics.

Both come with two 95 % intervals: a **cluster bootstrap** (resample the seeds, then within each drawn seed
the identities, every target with the same identity draws; a test image goes with its identity, so
natural accuracy and attack accuracy are resampled together) and a **t-interval across seeds** (the
per-seed statistic; needs >= 2 seeds).  The verdict uses the *wider* of the two:

* "helps": the interval lies above ``margin`` (default 0);
* "worse": the interval lies below ``-margin``;
* "no better than losing accuracy": otherwise;
* "not matched": the defense's accuracy lies outside the NoDef curve's range (delta_f only).

Natural accuracy here is identity-weighted (the mean of per-identity accuracies; equal to the image mean
when every identity has the same number of test images, as in the embedded benchmark).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunDirError
from ..plan import RunPlan
from ..plotting import pyplot, save_fig
from ..results import md_table, t_interval
from ..utils import atomic_write_json, atomic_write_text
from .paired import seed_records

CI_LEVEL = 0.95
HELPS, NO_BETTER, WORSE, NOT_MATCHED = "helps", "no better than losing accuracy", "worse", "not matched"


# ============================================================================ the monotone NoDef curve
def isotonic(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators); equal ``x`` are merged.
    Returns (sorted unique x, fitted y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ux = np.unique(x)
    blocks = [[float(y[x == v].mean()), float((x == v).sum())] for v in ux]   # [value, weight]
    sizes = [1] * len(blocks)
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] > blocks[i + 1][0]:
            (v1, w1), (v2, w2) = blocks[i], blocks[i + 1]
            blocks[i] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2]
            sizes[i] += sizes.pop(i + 1)
            blocks.pop(i + 1)
            i = max(i - 1, 0)
        else:
            i += 1
    fitted = np.concatenate([[b[0]] * n for b, n in zip(blocks, sizes)])
    return ux, fitted


def monotone_curve(x: Sequence[float], y: Sequence[float]) -> Callable[[float], float]:
    """f(acc) -> attack accuracy on the NoDef curve; NaN outside [min x, max x] or with fewer than 2 points."""
    ok = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(ok) < 2:
        return lambda v: float("nan")
    ux, fy = isotonic([a for a, _ in ok], [b for _, b in ok])
    if len(ux) < 2:
        return lambda v: float("nan")
    from scipy.interpolate import PchipInterpolator

    f = PchipInterpolator(ux, fy, extrapolate=False)
    lo, hi = float(ux[0]), float(ux[-1])
    return lambda v: float(f(v)) if (math.isfinite(v) and lo <= v <= hi) else float("nan")


# ============================================================================ per-seed tables
def _per_identity(values: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.array([values[labels == i].mean() if (labels == i).any() else np.nan for i in ids]) * 100.0


def seed_matrix(rec: dict[str, Any], columns: Sequence[tuple[str, str]]) -> np.ndarray:
    """(len(columns), identities): per-identity natural accuracy (column ``(target, "")``) or attack success
    (``(target, attack)``, NaN for identities not attacked), in percent, from a paired seed record."""
    labels = np.asarray(rec["labels"])
    ids = np.unique(labels)
    rows = []
    for t, a in columns:
        if not a:
            rows.append(_per_identity(np.asarray(rec["acc"][t]), labels, ids))
        else:
            hits = rec["att"][(t, a)]
            rows.append(np.array([hits.get(int(i), np.nan) for i in ids]) * 100.0)
    return np.vstack(rows)


# ============================================================================ statistics
class Frame:
    """The columns of one attack's frontier: the curve's points, the reference and the defenses."""

    def __init__(self, attack: str, reference: str, curve: Sequence[str], defenses: Sequence[str]):
        self.attack, self.reference = attack, reference
        self.points = [reference, *curve]
        self.defenses = list(defenses)
        names = list(dict.fromkeys([*self.points, *self.defenses]))
        self.columns = [(t, "") for t in names] + [(t, attack) for t in names]
        self.idx = {c: i for i, c in enumerate(self.columns)}

    def acc(self, v: np.ndarray, t: str) -> float:
        return float(v[self.idx[(t, "")]])

    def att(self, v: np.ndarray, t: str) -> float:
        return float(v[self.idx[(t, self.attack)]])

    def stats(self, v: np.ndarray) -> np.ndarray:
        """(defenses, 2): delta_f and gap of every defense from one vector of column means."""
        f = monotone_curve([self.acc(v, p) for p in self.points], [self.att(v, p) for p in self.points])
        r = self.reference
        out = np.empty((len(self.defenses), 2))
        for k, d in enumerate(self.defenses):
            out[k, 0] = f(self.acc(v, d)) - self.att(v, d)
            out[k, 1] = (self.att(v, r) - self.att(v, d)) - (self.acc(v, r) - self.acc(v, d))
        return out


def _means(mats: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean([np.nanmean(m, axis=1) for m in mats], axis=0)


def cluster_bootstrap(frame: Frame, mats: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, defenses, 2): the statistics under resampled seeds, then identities within each seed."""
    k = len(mats)
    out = np.empty((n_boot, len(frame.defenses), 2))
    for b in range(n_boot):
        pick = rng.integers(0, k, size=k)
        draws = []
        for j in pick:
            m = mats[j]
            draws.append(m[:, rng.integers(0, m.shape[1], size=m.shape[1])])
        with np.errstate(invalid="ignore"):
            out[b] = frame.stats(_means(draws))
    return out


def _interval(samples: np.ndarray) -> list[float] | None:
    s = samples[np.isfinite(samples)]
    if len(s) < 2:
        return None
    lo, hi = np.percentile(s, [100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2])
    return [float(lo), float(hi)]


def _t(values: Sequence[float]) -> list[float] | None:
    ci = t_interval([v for v in values if math.isfinite(v)], CI_LEVEL)
    return None if ci is None else [float(ci[0]), float(ci[1])]


def wider(boot: list[float] | None, t: list[float] | None) -> tuple[list[float] | None, str]:
    """The wider of the two intervals and its name ("bootstrap" / "t across seeds")."""
    if t is None:
        return boot, "bootstrap"
    if boot is None or (t[1] - t[0]) > (boot[1] - boot[0]):
        return t, "t across seeds"
    return boot, "bootstrap"


def verdict(estimate: float, ci: list[float] | None, margin: float = 0.0) -> str:
    """helps / worse / no better than losing accuracy / not matched (see the module docstring)."""
    if not math.isfinite(estimate) or ci is None:
        return NOT_MATCHED
    if ci[0] > margin:
        return HELPS
    if ci[1] < -margin:
        return WORSE
    return NO_BETTER


def summarize(frame: Frame, mats: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator,
              margin: float = 0.0) -> list[dict[str, Any]]:
    """One row per defense: the figures, both statistics with both intervals, the wider one and the verdicts."""
    point = _means(mats)
    est = frame.stats(point)
    per_seed = np.array([frame.stats(np.nanmean(m, axis=1)) for m in mats])    # (seeds, defenses, 2)
    boot = cluster_bootstrap(frame, mats, n_boot, rng)
    f = monotone_curve([frame.acc(point, p) for p in frame.points], [frame.att(point, p) for p in frame.points])
    rows = []
    for k, d in enumerate(frame.defenses):
        row: dict[str, Any] = {"target": d, "attack": frame.attack, "reference": frame.reference,
                               "n_seeds": len(mats), "acc": frame.acc(point, d), "attack_top1": frame.att(point, d),
                               "curve_attack_top1": f(frame.acc(point, d))}
        for j, name in enumerate(("delta_f", "gap")):
            b_ci, t_ci = _interval(boot[:, k, j]), _t(per_seed[:, k, j])
            w, which = wider(b_ci, t_ci)
            matched = float(np.isfinite(boot[:, k, j]).mean())
            row.update({name: float(est[k, j]), f"{name}_boot_ci": b_ci, f"{name}_t_ci": t_ci,
                        f"{name}_ci": w, f"{name}_ci_kind": which, f"{name}_per_seed": per_seed[:, k, j].tolist(),
                        f"{name}_verdict": verdict(float(est[k, j]), w, margin)})
            if name == "delta_f":
                row["delta_f_matched_share"] = matched
        rows.append(row)
    return rows


def curve_points(frame: Frame, mats: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    point = _means(mats)
    return [{"target": p, "acc": frame.acc(point, p), "attack_top1": frame.att(point, p),
             "role": "reference" if p == frame.reference else "curve"} for p in frame.points]


# ============================================================================ a run or study directory
def _inputs(run_dir: Path, seed: int) -> tuple[list[dict[str, Any]], list[str], Any]:
    """(per-seed records, seed names, RunPlan) of a run / study directory or a collected summary."""
    recs, names, cfg = seed_records(run_dir, None, seed)
    return recs, names, RunPlan(cfg)


def frontier(run_dir: str | Path, n_boot: int = 2000, seed: int = 0, margin: float = 0.0) -> dict[str, Any]:
    """The frontier of a run or study directory, or of a collected summary (midre.analysis.summary): per
    attack, the NoDef curve's points and one row per defense (see the module docstring)."""
    run_dir = Path(run_dir)
    recs, names, plan = _inputs(run_dir, seed)
    ref = plan.nodef_default
    if ref is None:
        raise RunDirError(f"'{run_dir}' has no reference NoDef target; the frontier compares defenses with NoDef")
    defenses = [t for t, r in plan.defense_references().items() if r == ref]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"format": "midre-frontier", "reference": ref, "curve_targets": plan.curve_targets,
                           "seed_dirs": names, "n_boot": n_boot, "seed": seed, "margin": margin,
                           "ci_level": CI_LEVEL, "attacks": {}}
    for a in [x.key for x in plan.cfg.attacks]:
        curve = [c for c in plan.curve_targets if all((c, a) in r["att"] for r in recs)]
        if not all((ref, a) in r["att"] for r in recs):
            continue
        defs = [d for d in defenses if all((d, a) in r["att"] for r in recs)]
        frame = Frame(a, ref, curve, defs)
        mats = [seed_matrix(r, frame.columns) for r in recs]
        out["attacks"][a] = {"points": curve_points(frame, mats), "rows": summarize(frame, mats, n_boot, rng, margin)}
    if not out["attacks"]:
        raise RunDirError(f"'{run_dir}' has no attack run on its reference NoDef '{ref}' in every seed")
    return out


# ============================================================================ tables, figures, files
def _ci(v: Sequence[float] | None) -> str:
    return "--" if v is None else f"[{v[0]:+.1f}, {v[1]:+.1f}]"


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    return "--" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))


FRONTIER_HEAD = ["defense target", "attack", "Acc", "AttAcc", "NoDef curve at Acc", "Δ_F", "bootstrap CI",
                 "t CI (seeds)", "Δ_F verdict", "gap", "bootstrap CI", "t CI (seeds)", "gap verdict"]


def frontier_table(res: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """(head, body, note) of the frontier table (markdown / HTML through midre.results)."""
    body = []
    for a, part in res["attacks"].items():
        for r in part["rows"]:
            body.append([r["target"], a, _num(r["acc"]), _num(r["attack_top1"]), _num(r["curve_attack_top1"]),
                         _num(r["delta_f"], "{:+.1f}"), _ci(r["delta_f_boot_ci"]), _ci(r["delta_f_t_ci"]),
                         r["delta_f_verdict"], _num(r["gap"], "{:+.1f}"), _ci(r["gap_boot_ci"]),
                         _ci(r["gap_t_ci"]), r["gap_verdict"]])
    pts = "; ".join(f"{a}: " + ", ".join(f"{p['target']} {_num(p['acc'])}/{_num(p['attack_top1'])}"
                                          for p in part["points"]) for a, part in res["attacks"].items())
    note = (f"Reference NoDef: {res['reference']}; NoDef curve points (Acc/AttAcc): {pts}. {len(res['seed_dirs'])} "
            f"seed(s). Δ_F = NoDef curve's AttAcc at the defense's Acc − the defense's AttAcc (> 0: better than losing "
            "the same accuracy); gap = d_att − d_acc against the reference. 95 % intervals: cluster bootstrap (seeds, "
            f"then identities, {res['n_boot']} draws) and t across seeds; each verdict uses the wider one, margin "
            f"{res['margin']:g}.")
    return FRONTIER_HEAD, body, note


def frontier_markdown(res: dict[str, Any]) -> str:
    head, body, note = frontier_table(res)
    return md_table(head, body) + "\n\n" + note + "\n"


def plot_frontier(res: dict[str, Any], attack: str, path: Path) -> Path:
    """The privacy-utility plane of one attack: NoDef curve (points + monotone fit) and every defense."""

    part = res["attacks"][attack]
    pts = part["points"]
    fig, ax = pyplot().subplots(figsize=(6.4, 4.6))
    xs, ys = [p["acc"] for p in pts], [p["attack_top1"] for p in pts]
    f = monotone_curve(xs, ys)
    grid = np.linspace(min(xs), max(xs), 200)
    ax.plot(grid, [f(g) for g in grid], color="0.3", lw=1.5, label="NoDef curve (monotone fit)")
    ax.scatter(xs, ys, color="black", zorder=3, label="NoDef (reference and curve points)")
    for r in part["rows"]:
        ax.scatter([r["acc"]], [r["attack_top1"]], zorder=4, label=f"{r['target']} (Δ_F {_num(r['delta_f'], '{:+.1f}')})")
    ax.set_xlabel("natural accuracy (%)")
    ax.set_ylabel(f"attack accuracy, {attack} top-1 (%)")
    ax.set_title(f"privacy-utility frontier: {attack} ({len(res['seed_dirs'])} seed(s))")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_fig(fig, path)


def write_frontier(run_dir: str | Path, n_boot: int = 2000, seed: int = 0, margin: float = 0.0) -> Path:
    """Compute and write RUN/analysis/frontier.json, frontier.md and frontier_<attack>.png; returns the .md."""

    run_dir = Path(run_dir)
    res = frontier(run_dir, n_boot=n_boot, seed=seed, margin=margin)
    for a in res["attacks"]:
        plot_frontier(res, a, run_dir / "analysis" / f"frontier_{a}.png")
    atomic_write_json(run_dir / "analysis" / "frontier.json", res)
    md = run_dir / "analysis" / "frontier.md"
    atomic_write_text(md, frontier_markdown(res))
    return md
