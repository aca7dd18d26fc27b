"""The privacy-utility frontier (midre.analysis.frontier), decision rules (midre.rules) and verdicts
(midre.analysis.verdict): the monotone curve by hand, known answers on synthetic per-identity data, and a
tiny study end to end in which a "defense" that is NoDef stopped early comes out "no better than losing
accuracy", and a rule edited after the run started is refused."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from midre.analysis.frontier import (
    HELPS,
    NO_BETTER,
    NOT_MATCHED,
    WORSE,
    Frame,
    isotonic,
    monotone_curve,
    summarize,
    verdict,
    wider,
)
from midre.cli import main
from midre.config import load_config
from midre.errors import ConfigError, RunDirError
from midre.pipeline import run_pipeline


def test_isotonic_pools_violators_and_curve_is_monotone():
    x, y = isotonic([70, 80, 90, 96], [50, 60, 55, 80])
    assert x.tolist() == [70, 80, 90, 96]
    assert y.tolist() == pytest.approx([50, 57.5, 57.5, 80])
    f = monotone_curve([96, 70, 90, 80], [80, 50, 55, 60])
    grid = np.linspace(70, 96, 50)
    vals = [f(g) for g in grid]
    assert all(b >= a - 1e-9 for a, b in zip(vals, vals[1:]))
    assert f(70) == pytest.approx(50) and f(96) == pytest.approx(80)
    assert np.isnan(f(60)) and np.isnan(f(97))                      # no extrapolation
    assert np.isnan(monotone_curve([80], [60])(80))                 # one point is no curve


def test_verdict_and_wider_interval():
    assert verdict(3.0, [0.5, 5.0]) == HELPS
    assert verdict(3.0, [0.5, 5.0], margin=1.0) == NO_BETTER
    assert verdict(-3.0, [-5.0, -0.5]) == WORSE
    assert verdict(0.2, [-1.0, 2.0]) == NO_BETTER
    assert verdict(float("nan"), None) == NOT_MATCHED
    assert wider([0, 1], [0, 3]) == ([0, 3], "t across seeds")
    assert wider([0, 4], [0, 3]) == ([0, 4], "bootstrap")
    assert wider([0, 4], None) == ([0, 4], "bootstrap")


def _synthetic(n_seeds=3, n_ids=100, seed=0):
    """NoDef at four budgets: per-identity Acc ~ q, AttAcc ~ q - 20 (one shared identity effect per seed).
    Defenses: 'early' = NoDef at q 85 (on the curve), 'good' = Acc 85 but AttAcc 25 below the curve,
    'bad' = 20 above it, 'far' = Acc 50 (below the curve's range)."""
    rng = np.random.default_rng(seed)
    spec = {"nodef": (96, 76), "c1": (70, 50), "c2": (80, 60), "c3": (90, 70),
            "early": (85, 65), "good": (85, 40), "bad": (85, 85), "far": (50, 30)}
    frame = Frame("gmi", "nodef", ["c1", "c2", "c3"], ["early", "good", "bad", "far"])
    mats = []
    for _ in range(n_seeds):
        ident = rng.normal(0, 8, n_ids)
        m = np.empty((len(frame.columns), n_ids))
        for (t, a), i in frame.idx.items():
            acc, att = spec[t]
            m[i] = (att if a else acc) + ident + rng.normal(0, 6, n_ids)
        mats.append(m)
    return frame, mats


def test_known_answers_on_synthetic_frontier():
    frame, mats = _synthetic()
    rows = {r["target"]: r for r in summarize(frame, mats, 400, np.random.default_rng(1))}
    assert rows["early"]["delta_f_verdict"] == NO_BETTER, rows["early"]
    assert abs(rows["early"]["delta_f"]) < 3
    assert rows["good"]["delta_f_verdict"] == HELPS and rows["good"]["delta_f"] == pytest.approx(25, abs=4)
    assert rows["bad"]["delta_f_verdict"] == WORSE
    assert rows["far"]["delta_f_verdict"] == NOT_MATCHED and np.isnan(rows["far"]["curve_attack_top1"])
    # the paired gap of an early-stopped NoDef is positive here (it loses AttAcc with Acc 1:1, so the gap
    # is ~0); the frontier and the gap agree on it, and each row carries both intervals
    for r in rows.values():
        for key in ("delta_f", "gap"):
            assert r[f"{key}_ci_kind"] in ("bootstrap", "t across seeds")
            assert len(r[f"{key}_per_seed"]) == 3
    assert rows["early"]["gap_verdict"] == NO_BETTER


def test_one_seed_uses_the_bootstrap_alone():
    frame, mats = _synthetic(n_seeds=1)
    rows = {r["target"]: r for r in summarize(frame, mats, 300, np.random.default_rng(2))}
    assert rows["good"]["delta_f_t_ci"] is None and rows["good"]["delta_f_ci_kind"] == "bootstrap"


# ---------------------------------------------------------------------------------------------- end to end
TINY = {
    "name": "tiny-frontier", "seed": 0, "device": "cpu", "seeds": [0],
    "dataset": {"name": "synthetic", "resolution": 32,
                "options": {"num_private": 6, "num_public": 6, "images_per_id": 10}},
    "eval_model": {"arch": "smallcnn", "train": {"epochs": 2, "batch_size": 16}},
    "defaults": {"arch": "tinycnn", "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "schedule": "none",
                                              "stop": {"val_per_class": 2, "patience": 2, "lr_drops": 0}}},
    "targets": [
        {"name": "nodef", "defense": "nodef"},
        {"name": "nodef-e1", "defense": "nodef", "curve": True, "train": {"epochs": 1}},
        {"name": "nodef-e2", "defense": "nodef", "curve": True, "train": {"epochs": 2}},
        # a "defense" that is NoDef stopped early: label smoothing with alpha 0 is plain cross-entropy
        {"name": "early", "defense": {"name": "nls", "alpha": 0.0}, "train": {"epochs": 2}},
    ],
    "attacks": [{"name": "gmi", "preset": "quick", "params": {"iterations": 3}, "identities": "all", "repeats": 2}],
    "priors": {"preset": "quick", "params": {"gan": {"iterations": 4, "batch_size": 16, "ckpt_every": 2}}},
    "metrics": {"fid": "none", "knn": False, "n_boot": 20},
    "report": {"enabled": True, "max_identities": 2},
    "gates": {"enabled": False},     # a tiny instrument cannot pass them; the verdict logic is what is tested
}

RULE = """experiment: tiny-frontier
question: is a NoDef stopped early better than losing accuracy?
statistic: delta_f
n_boot: 200
comparisons:
  - {target: early, attack: gmi, primary: true}
  - {target: missing, attack: gmi}
"""


@pytest.mark.slow
def test_study_frontier_and_verdict_end_to_end(tmp_path, capsys):
    rule = tmp_path / "rules" / "tiny-frontier.yaml"
    rule.parent.mkdir()
    rule.write_text(RULE)
    out = tmp_path / "study"
    run_pipeline(load_config(copy.deepcopy(TINY)), out, progress=False, rule=rule)
    assert json.loads((out / "rule.json").read_text())["sha256"]
    assert main(["analyze", "frontier", str(out), "--n-boot", "200"]) == 0
    res = json.loads((out / "analysis" / "frontier.json").read_text())
    assert res["reference"] == "nodef" and res["curve_targets"] == ["nodef-e1", "nodef-e2"]
    (row,) = res["attacks"]["gmi"]["rows"]
    assert row["target"] == "early"
    assert (out / "analysis" / "frontier_gmi.png").stat().st_size > 1000
    assert "Privacy-utility frontier" in (out / "report.md").read_text()
    assert main(["analyze", "verdict", str(out)]) == 0
    v = json.loads((out / "analysis" / "verdict.json").read_text())
    early = next(r for r in v["rows"] if r["target"] == "early")
    assert early["verdict"] in (NO_BETTER, NOT_MATCHED), early
    assert early["verdict"] != HELPS
    assert next(r for r in v["rows"] if r["target"] == "missing")["verdict"] == "not run"
    # a study run in parts: seed 1 in another directory, both collected into one summary
    raw = copy.deepcopy(TINY)
    raw["seeds"] = [1]
    run_pipeline(load_config(raw), tmp_path / "part2", progress=False, rule=rule)
    summ = tmp_path / "results" / "tiny-frontier"
    for part in (out, tmp_path / "part2"):
        assert main(["results", "collect", str(part), "tiny-frontier", "--into", str(tmp_path / "results")]) == 0
    s = json.loads((summ / "summary.json").read_text())
    assert s["seeds"] == ["seed-0", "seed-1"] and s["frontier"]["seed_dirs"] == ["seed-0", "seed-1"]
    assert s["verdict"]["rows"][0]["n_seeds"] == 2
    assert main(["analyze", "verdict", str(summ)]) == 0
    _paired_from_the_summary_equals_the_run(out, tmp_path, s, capsys)
    # the rule edited after the run started: refused in one line, exit 2
    rule.write_text(RULE.replace("n_boot: 200", "n_boot: 300"))
    assert main(["analyze", "verdict", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed after the run started" in err[0]
    assert main(["analyze", "verdict", str(summ)]) == 2             # the summary keeps the recorded sha256 too
    capsys.readouterr()
    with pytest.raises(RunDirError, match="changed since this run started"):
        run_pipeline(load_config(copy.deepcopy(TINY)), out, progress=False, rule=rule)


def _paired_from_the_summary_equals_the_run(run: Path, tmp_path: Path, both: dict, capsys) -> None:
    """`midre analyze paired results/NAME` reproduces the run directory's paired differences (the summary's
    records were recomputed from it), the summary carries them, and `midre results render` shows them."""
    from midre.analysis.paired import paired_differences
    from midre.resultsdoc import TABLES

    assert both["paired"] and {r["n_seeds"] for r in both["paired"]} == {2}
    assert main(["results", "collect", str(run), "one", "--into", str(tmp_path / "results")]) == 0
    one = tmp_path / "results" / "one"
    from_run, from_summary = paired_differences(run, n_boot=300), paired_differences(one, n_boot=300)
    assert [(r["target"], r["attack"]) for r in from_run] == [(r["target"], r["attack"]) for r in from_summary]
    for a, b in zip(from_run, from_summary):
        for k in ("d_att", "d_acc", "gap", "gap_ci", "d_att_ci"):
            assert np.allclose(a[k], b[k], atol=1e-3), (k, a[k], b[k])
    assert main(["analyze", "paired", str(one), "--reference", "nodef-e1"]) == 0
    assert "Reference: nodef-e1" in (one / "analysis" / "paired.md").read_text()
    capsys.readouterr()
    assert main(["analyze", "paired", str(one), "--reference", "nobody"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no target named 'nobody'" in err[0]
    table = TABLES["paired"](json.loads((one / "summary.json").read_text())).splitlines()
    assert table[0].startswith("| defense target | attack | d_att (pp) |") and len(table) >= 3
    assert "no paired differences" in TABLES["paired"]({"paired": None})


def test_rule_files_are_validated(tmp_path):
    from midre.rules import load_rule, recorded_rule

    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nstatistic: median\ncomparisons: [{target: a, attack: gmi}]\n")
    with pytest.raises(ConfigError, match="'statistic'"):
        load_rule(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_rule(tmp_path / "nope.yaml")
    with pytest.raises(RunDirError, match="recorded no decision rule"):
        recorded_rule(tmp_path)


def test_committed_rules_parse():
    from pathlib import Path

    from midre.config import builtin_configs
    from midre.rules import load_rule

    rules = sorted((Path(__file__).resolve().parents[1] / "rules").glob("*.yaml"))
    assert rules, "no committed rule files under rules/"
    names = set(builtin_configs())
    for p in rules:
        r = load_rule(p)
        assert r.experiment == p.stem, f"{p.name} names experiment {r.experiment}"
        assert r.experiment in names, f"{p.name}: no built-in config named {r.experiment}"


def test_curve_points_are_not_gated(tmp_path):
    """The validity gates apply to the reference NoDef alone (docs/gates.md): a curve point at 40 % accuracy
    must not fail the NoDef-accuracy gate."""
    from midre.pipeline import write_gates

    raw = copy.deepcopy(TINY)
    raw.pop("gates")
    cfg = load_config(raw)
    rows = [{"target": "nodef", "defense": "nodef", "attack": "", "acc": 99.0, "attack_top1": float("nan")},
            {"target": "nodef-e1", "defense": "nodef", "attack": "", "acc": 40.0, "attack_top1": float("nan")}]
    res = write_gates(tmp_path, cfg, rows, 99.0)
    subjects = [c["subject"] for c in res["checks"] if c["gate"].startswith("NoDef target")]
    assert subjects == ["nodef"], subjects


def test_learning_curves_figure_and_bad_inputs(tmp_path, capsys):
    """`midre analyze learning` plots every target's curve (a target still training included); the frontier,
    verdict and learning commands refuse a directory that is not a run in one line (exit 2)."""
    t = tmp_path / "run" / "targets"
    for name, vals, stop in (("nodef", [50, 80, 90, 91], {"kept_epoch": 4, "reason": "patience"}),
                             ("midre-0.4", [30, 60], None)):
        (t / name).mkdir(parents=True)
        (t / name / "history.json").write_text(json.dumps(
            [{"epoch": i + 1, "val_acc": v, "test_acc": v - 1} for i, v in enumerate(vals)]))
        if stop:
            (t / name / "model.json").write_text(json.dumps({"stop": stop, "complete": True}))
    assert main(["analyze", "learning", str(tmp_path / "run"), "--out", str(tmp_path / "lc.png")]) == 0
    out = capsys.readouterr().out
    assert "nodef: 4 epochs, kept 4" in out and "midre-0.4: 2 epochs" in out
    assert (tmp_path / "lc.png").stat().st_size > 1000
    for cmd in (["analyze", "frontier"], ["analyze", "verdict"], ["analyze", "learning"]):
        assert main([*cmd, str(tmp_path / "nowhere")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nowhere" in err[0], err


def test_rule_lookup_and_experiment_mismatch(tmp_path):
    from midre.rules import default_rule_path, record_rule

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "tiny-frontier.yaml").write_text(RULE)
    assert default_rule_path("tiny-frontier", tmp_path) == tmp_path / "rules" / "tiny-frontier.yaml"
    assert default_rule_path("other", tmp_path) is None
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError, match="is for experiment 'tiny-frontier', not 'other'"):
        record_rule(run, tmp_path / "rules" / "tiny-frontier.yaml", "other")
    assert not (run / "rule.json").exists()
    rec = record_rule(run, tmp_path / "rules" / "tiny-frontier.yaml", "tiny-frontier")
    assert record_rule(run, tmp_path / "rules" / "tiny-frontier.yaml", "tiny-frontier") == rec   # a resume


def test_ungated_attacks_priors_are_listed_and_a_rule_may_not_name_them(tmp_path):
    """``gated: false`` on an attack: write_gates lists the priors only it uses as information (a prior a gated
    attack also uses stays gated; a prior on disk that no attack of the config uses is not checked), and a rule
    that decides on that attack is refused before anything is recorded."""
    from midre.pipeline import write_gates
    from midre.rules import record_rule

    raw = copy.deepcopy(TINY)
    raw.pop("gates")
    raw["attacks"].append({"name": "plgmi", "preset": "quick", "identities": "all", "adaptive": True, "gated": False})
    cfg = load_config(raw)
    for unit, cov in (("gan", 0.9), ("cgan-nodef", 0.1), ("kedmi-nodef", 0.0)):   # kedmi: no attack uses it
        d = tmp_path / "priors" / unit / "k"
        d.mkdir(parents=True)
        (d / "prior.json").write_text(json.dumps({"quality": {"relative_coverage": cov}}))
    rows = [{"target": "nodef", "defense": "nodef", "attack": a, "acc": 99.0, "attack_top1": v}
            for a, v in (("gmi", 40.0), ("plgmi-adaptive", 5.0))]
    res = write_gates(tmp_path, cfg, rows, 99.0)
    assert res["valid"], [c for c in res["checks"] if c["status"] not in ("passed", "info")]
    status = {c["subject"]: c["status"] for c in res["checks"]}
    assert status["cgan-nodef (nodef)"] == "info" and status["plgmi-adaptive -> nodef"] == "info"
    assert status["gan"] == "passed"
    assert not any(k.startswith("kedmi") for k in status), "a prior no attack of the config uses is not checked"
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "rule.yaml").write_text(RULE.replace("attack: gmi, primary", "attack: plgmi-adaptive, primary"))
    with pytest.raises(ConfigError, match="decides on attack 'plgmi-adaptive'.*gated: false"):
        record_rule(run, tmp_path / "rule.yaml", "tiny-frontier", {"plgmi-adaptive"})
    assert not (run / "rule.json").exists()


def test_run_refuses_a_rule_naming_an_ungated_attack_before_writing_anything(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["attacks"].append({"name": "plgmi", "preset": "quick", "identities": "all", "adaptive": True, "gated": False})
    (tmp_path / "rule.yaml").write_text(RULE.replace("attack: gmi, primary", "attack: plgmi-adaptive, primary"))
    with pytest.raises(ConfigError, match="decides on attack 'plgmi-adaptive'"):
        run_pipeline(load_config(raw), tmp_path / "run", progress=False, rule=tmp_path / "rule.yaml")
    assert not (tmp_path / "run").exists()

