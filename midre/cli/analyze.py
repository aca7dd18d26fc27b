"""`midre analyze features|concealment|paired|frontier|verdict|curve`: the paper's analyses (and paired differences) as commands."""
from __future__ import annotations

import argparse


def _levels(s: str) -> list[float]:
    from ..errors import ArgumentError

    try:
        vals = [float(v) for v in s.replace(" ", "").split(",") if v]
    except ValueError:
        raise ArgumentError(f"cannot parse --levels '{s}'; use shares like 0.1,0.2,0.3,0.4,0.5") from None
    return [v / 100.0 if v >= 1.0 else v for v in vals]   # 10,20 (percent) or 0.1,0.2 (shares)


def register(sub: argparse._SubParsersAction) -> None:
    from . import MidreParser

    p = sub.add_parser("analyze", help="the paper's analyses: features (Sec. 3.2), concealment (Table 1), a_e curve",
                       description="The MIDRE paper's analyses as commands.")
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=MidreParser)
    _add_paper_analyses(asub)
    _add_comparisons(asub)
    _add_figures(asub)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _add_paper_analyses(asub: argparse._SubParsersAction) -> None:
    """features (Sec. 3.2) and concealment (Table 1)."""
    f = asub.add_parser(
        "features", help="feature-space analysis (paper Sec. 3.2): PCA + convex hulls, overlap numbers",
        description="Penultimate features of private, RE-private (MIDRE's eraser) and reconstructed images under "
                    "each target (default: NoDef and the MIDRE target nearest a_e 0.4), PCA to 2-D fitted per "
                    "model, one convex hull per group. Writes RUN/figures/features.png and "
                    "RUN/analysis/features.json (hull overlaps, points inside hulls, centroid distances).")
    f.add_argument("run_dir", metavar="RUN", help="run directory of `midre run`")
    f.add_argument("--target", action="append", default=None, help="a target to analyse (repeatable)")
    f.add_argument("--attack", default=None, help="attack directory name (default: the first common one)")
    f.add_argument("--area", type=float, default=None,
                   help="a_e of the eraser making RE-private images (default: the MIDRE target's own eraser)")
    f.add_argument("--identities", default=None, help="attacked identities to use, e.g. 0-4 (default: all attacked)")
    f.add_argument("--plot-identity", type=int, default=None,
                   help="draw only this identity in the figure (default: all analysed identities, pooled)")
    f.add_argument("--max-images", type=int, default=60, help="private images per identity (default 60)")
    f.add_argument("--seed", type=int, default=0, help="seed of the eraser")
    f.add_argument("--no-report", action="store_true", help="do not re-render report.md/html afterwards")
    f.set_defaults(func=run_features)

    c = asub.add_parser(
        "concealment", help="Entire / Random / Fixed Erasing at equal pixel concealment (paper Table 1)",
        description="Train NoDef and EE/RE/FE targets at each concealment level through the pipeline (data, models, "
                    "training and one attack from CONFIG), attack them, and write DIR/concealment.md/.csv/.json in "
                    "the shape of the paper's Table 1. Resumable like `midre run`.")
    c.add_argument("config", metavar="CONFIG", nargs="?", default="quickstart",
                   help="base config (default: the embedded quickstart)")
    c.add_argument("--out", required=True, metavar="DIR", help="run directory of the study")
    c.add_argument("--levels", type=_levels, default=[0.1, 0.2, 0.3, 0.4, 0.5],
                   help="concealment shares (or percents), default 0.1,0.2,0.3,0.4,0.5")
    c.add_argument("--attack", default=None, help="which attack of CONFIG to use (default: its first)")
    c.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the config's)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=run_concealment)


def _add_comparisons(asub: argparse._SubParsersAction) -> None:
    """paired, frontier and verdict: is a defense better than NoDef / than losing accuracy?"""
    q = asub.add_parser(
        "paired", help="paired NoDef - defense differences of Acc and AttAcc with 95 %% CIs (run or study)",
        description="Recompute every prediction from RUN's models and reconstructions (checked against the run's "
                    "own Acc / AttAcc), pair each defense target with the reference target per seed, identity and "
                    "test image, and write RUN/analysis/paired.json + paired.md: d_att, d_acc and their gap with "
                    "two-stage bootstrap CIs (seeds, then identities / test images) and t-intervals across seeds. "
                    "The report is re-rendered to show them. RUN may also be a collected summary (results/NAME), "
                    "whose per-seed records were recomputed from the run when it was collected.")
    q.add_argument("run_dir", metavar="RUN", help="run or study directory of `midre run`, or results/NAME")
    q.add_argument("--reference", default=None,
                   help="pair every defense with this target (default: each target's `reference` in the config, "
                        "else the run's first NoDef target, as for the trade-off)")
    _bootstrap_args(q)
    q.set_defaults(func=run_paired)

    fr = asub.add_parser(
        "frontier", help="privacy-utility frontier: each defense against NoDef trained less (Δ_F), with verdicts",
        description="Per attack, the NoDef accuracy curve (the reference NoDef and the `curve: true` targets, "
                    "monotone fit) and, for every defense, Δ_F = the curve's attack accuracy at the defense's natural "
                    "accuracy minus its own, beside the paired gap; 95 %% intervals by a cluster bootstrap (seeds, "
                    "then identities) and a t-interval across seeds, the verdict from the wider one. Writes "
                    "RUN/analysis/frontier.json, frontier.md and frontier_<attack>.png; the report shows them.")
    fr.add_argument("run_dir", metavar="RUN_OR_STUDY", help="run or study directory of `midre run`")
    _bootstrap_args(fr)
    fr.add_argument("--margin", type=float, default=0.0, help="'helps' when the interval lies above it (default 0)")
    fr.set_defaults(func=run_frontier)

    v = asub.add_parser(
        "verdict", help="the verdict of a run from the decision rule it recorded when it started",
        description="Apply the rule recorded in RUN/rule.json (checked against its sha256: a rule edited after the "
                    "run started is refused) to the run's frontier statistics; writes RUN/analysis/verdict.json and "
                    "verdict.md and prints the answer.")
    v.add_argument("run_dir", metavar="RUN", help="run or study directory started with a rule")
    v.add_argument("--rule", default=None, metavar="FILE",
                   help="the rule file, if it moved (its sha256 must still match the recorded one)")
    v.set_defaults(func=run_verdict)


def _bootstrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    p.add_argument("--no-report", action="store_true", help="do not re-render report.md/html afterwards")


def _add_figures(asub: argparse._SubParsersAction) -> None:
    """geometry, learning curves and the a_e curve."""
    g = asub.add_parser(
        "geometry", help="share of the inner-face box MIDRE's square erases, per a_e (synthetic 32/64 px, CelebA 64)",
        description="With MIDRE's own sampler, the share of the identity-bearing eyes-to-mouth box erased per image "
                    "(mean, and the chance of more than 80 %%) for a_e 0.2-0.8, on the v2 synthetic faces at 32 and "
                    "64 px and on an aligned 64-px CelebA crop (approximate landmark geometry). Writes "
                    "OUT/summary.json (a results summary: `midre results render` tables it) and the figure.")
    g.add_argument("--out", default="results/erasure-geometry", help="summary folder")
    g.add_argument("--figure", default="docs/img/erasure_geometry.png", help="the figure's path")
    g.add_argument("--n", type=int, default=20000, help="draws per setting")
    g.set_defaults(func=run_geometry)

    lc = asub.add_parser(
        "learning", help="learning curves of a run's targets (validation / test accuracy per epoch, kept epoch)",
        description="Plot every target's validation and test accuracy after each epoch (a target still training "
                    "shows its finished epochs) and mark the kept epoch; writes the figure (default "
                    "RUN/figures/learning_curves.png).")
    lc.add_argument("run_dir", metavar="RUN", help="run directory, or one seed-<s> directory of a study")
    lc.add_argument("--target", action="append", default=None, help="a target to plot (repeatable; default: all)")
    lc.add_argument("--out", default=None, help="the figure's path")
    lc.set_defaults(func=run_learning)

    k = asub.add_parser(
        "curve", help="a_e sweep curve: Acc and AttAcc against MIDRE's a_e from a results table",
        description="Plot natural and attack accuracy against a_e from RUN/results.csv (NoDef = a_e 0, every MIDRE "
                    "target one point; several rows at one a_e, e.g. a sweep's seeds, are averaged). Writes "
                    "RUN/figures/ae_curve.png and RUN/analysis/ae_curve.json.")
    k.add_argument("run_dir", metavar="RUN", help="run or sweep directory holding results.csv")
    k.set_defaults(func=run_curve)


def run_features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.features import feature_analysis, overlap_table
    from ..report import write_report
    from ..results import md_table
    from ..rundir import require_run_dir
    from ..utils import parse_id_ranges

    require_run_dir(Path(args.run_dir), "midre analyze features")
    ids = parse_id_ranges(args.identities) if args.identities else None
    res = feature_analysis(args.run_dir, targets=args.target, attack=args.attack, area=args.area, identities=ids,
                           max_images=args.max_images, plot_identity=args.plot_identity, seed=args.seed)
    head, body = overlap_table(res)
    print(f"attack {res['attack']}, identities {res['identities'][:10]}{' ...' if len(res['identities']) > 10 else ''}")
    print(md_table(head, body))
    print(f"wrote {args.run_dir}/analysis/features.json and {args.run_dir}/figures/features.png")
    if not args.no_report:
        from pathlib import Path

        if (Path(args.run_dir) / "report.html").exists():
            _, html = write_report(args.run_dir)
            print(f"updated {html}")
    return 0


def run_concealment(args: argparse.Namespace) -> int:
    from ..concealment import concealment_study

    res = concealment_study(args.config, args.out, levels=args.levels, attack=args.attack,
                            progress=not args.no_progress, device=args.device)
    print(res["paths"]["md"].read_text(encoding="utf-8"))
    print(f"wrote {res['paths']['md']}, {res['paths']['csv']}")
    return 0


def run_paired(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.paired import write_paired
    from ..errors import ArgumentError

    if args.n_boot < 1:
        raise ArgumentError(f"--n-boot must be at least 1, got {args.n_boot}")
    run_dir = Path(args.run_dir)
    md = write_paired(run_dir, args.reference, args.n_boot, args.seed)
    _show(md, run_dir, args.no_report, f"wrote {md}")
    return 0


def _show(md, run_dir, no_report: bool, last: str) -> None:
    """Print an analysis' markdown, re-render the run's report when it has one, then ``last``."""
    print(md.read_text(encoding="utf-8"))
    if not no_report and (run_dir / "report.md").exists():
        from ..report import write_report

        write_report(run_dir)
    print(last)


def run_curve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.curves import ae_curve_points, plot_ae_curve
    from ..errors import RunDirError
    from ..results import load_results
    from ..utils import atomic_write_json

    run_dir = Path(args.run_dir)
    rows = load_results(run_dir)
    if not rows:
        raise RunDirError(f"no results.csv in '{run_dir}'; run `midre run` or `midre sweep` into it first")
    pts = ae_curve_points(rows)
    path = plot_ae_curve(rows, run_dir / "figures" / "ae_curve.png")
    if path is None:
        raise RunDirError(f"'{run_dir}' has fewer than 2 a_e values (NoDef / MIDRE targets) per attack; sweep "
                          "a_e (analyses.sweep_area or a sweep grid over the midre area) first")
    atomic_write_json(run_dir / "analysis" / "ae_curve.json", pts)
    for attack, p in pts.items():
        print(f"{attack}: " + ", ".join(f"a_e {q['a_e']:g}: Acc {q['acc']:.2f} / AttAcc {q['att']:.2f}" for q in p))
    print(f"wrote {path}")
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.frontier import write_frontier
    from ..errors import ArgumentError

    if args.n_boot < 1:
        raise ArgumentError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.margin < 0:
        raise ArgumentError(f"--margin must be zero or positive, got {args.margin}")
    run_dir = Path(args.run_dir)
    md = write_frontier(run_dir, n_boot=args.n_boot, seed=args.seed, margin=args.margin)
    _show(md, run_dir, args.no_report, f"wrote {md} and {run_dir / 'analysis'}/frontier_<attack>.png")
    return 0


def run_verdict(args: argparse.Namespace) -> int:
    from ..analysis.verdict import write_verdict

    md = write_verdict(args.run_dir, args.rule)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}")
    return 0


def run_geometry(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.geometry import geometry, plot_geometry
    from ..errors import ArgumentError
    from ..rundir import check_out, record_format
    from ..utils import atomic_write_json

    if args.n < 100:
        raise ArgumentError(f"--n must be at least 100 draws, got {args.n}")
    check_out(Path(args.out), "geometry summary", lambda d: record_format(d / "summary.json") == "midre-geometry")
    res = geometry(n=args.n)
    atomic_write_json(Path(args.out) / "summary.json", res)
    plot_geometry(res, Path(args.figure))
    for r in res["rows"]:
        print(f"{r['setup']:40s} a_e {r['a_e']:.1f}: mean {100 * r['mean']:.1f} %, > 80 %: {100 * r['over_80']:.1f} %")
    print(f"wrote {args.out}/summary.json and {args.figure}")
    return 0


def run_learning(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.learning import learning_curves, plot_learning

    run_dir = Path(args.run_dir)
    curves = learning_curves(run_dir, args.target)
    out = Path(args.out) if args.out else run_dir / "figures" / "learning_curves.png"
    plot_learning(curves, out, f"learning curves: {run_dir.resolve().name}")
    for name, c in curves.items():
        st = c.get("stop") or {}
        last = c["history"][-1]
        print(f"{name}: {len(c['history'])} epochs, kept {st.get('kept_epoch', '-')}, {st.get('reason', '')} "
              f"test {last.get('test_acc', float('nan')):.1f} %")
    print(f"wrote {out}")
    return 0
