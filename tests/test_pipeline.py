"""midre.pipeline: a tiny end-to-end run, resume -> identical results, refusals, lock, study aggregation."""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path

import pytest
import yaml

from midre.config import builtin_configs, load_config
from midre.errors import ConfigError, RunDirError
from midre.pipeline import run_pipeline
from midre.results import COLUMNS, STUDY_EXTRA_COLUMNS, aggregate_rows

# results.csv's columns as users' scripts read them; changing one is a breaking change to say in the notes
RESULTS_CSV_HEADER = ["target", "defense", "defense_params", "attack", "acc", "attack_top1", "attack_top1_std",
                      "attack_top5", "attack_top5_std", "top1_ci_lo", "top1_ci_hi", "knn", "fid_eval", "delta",
                      "epsilon", "seed", "repeats", "identities"]
from midre.utils import RunLock

TINY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "synthetic", "resolution": 32,
                "options": {"num_private": 6, "num_public": 6, "images_per_id": 8}},
    "eval_model": {"arch": "smallcnn", "train": {"epochs": 1, "batch_size": 16}},
    "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
    "targets": [{"name": "nodef", "defense": "nodef"},
                {"name": "midre-0.4", "defense": {"name": "midre", "area": 0.4}}],
    "attacks": [{"name": "gmi", "preset": "quick", "params": {"iterations": 3}, "identities": "0-1", "repeats": 2}],
    "priors": {"preset": "quick", "params": {"gan": {"iterations": 4, "batch_size": 16, "ckpt_every": 2}}},
    "metrics": {"fid": "eval", "n_boot": 50},
    "report": {"enabled": True, "max_identities": 2},
    "analyses": {"features": True},
}



def tiny(**over) -> dict:
    raw = copy.deepcopy(TINY)
    for k, v in over.items():
        raw[k] = v
    return raw


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted tiny run shared by the tests below."""
    out = tmp_path_factory.mktemp("full") / "run"
    t0 = time.perf_counter()
    res = run_pipeline(load_config(tiny()), out, progress=False)
    return out, res, time.perf_counter() - t0


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ end to end
def test_tiny_pipeline_end_to_end_layout(full_run):
    out, res, _seconds = full_run       # times are for benchmarks/, not for unit tests (they vary with load)
    assert res.complete
    for p in ["config.yaml", "run.json", "results.csv", "results.json",
              "eval/model.safetensors", "eval/model.json",
              "targets/nodef/model.safetensors", "targets/midre-0.4/model.json"]:
        assert (out / p).is_file(), p
    for t in ("nodef", "midre-0.4"):
        adir = out / "attacks" / t / "gmi"
        for f in ("reconstructions.safetensors", "reconstructions.json", "metrics.json"):
            assert (adir / f).is_file(), (t, f)
    assert any((out / "priors").rglob("*.json")), "the GAN prior is stored under RUN/priors/"
    rows = _csv(out / "results.csv")
    with open(out / "results.csv") as fh:
        header = fh.readline().strip().split(",")
    assert header[:len(COLUMNS)] == COLUMNS == RESULTS_CSV_HEADER    # written out here: a renamed column fails
    assert [(r["target"], r["attack"]) for r in rows] == [("nodef", "gmi"), ("midre-0.4", "gmi")]
    for r in rows:
        assert 0.0 <= float(r["acc"]) <= 100.0
        assert 0.0 <= float(r["attack_top1"]) <= 100.0 and 0.0 <= float(r["attack_top5"]) <= 100.0
        assert float(r["attack_top1"]) <= float(r["attack_top5"])
        assert float(r["knn"]) >= 0.0
        assert r["repeats"] == "2" and r["identities"] == "2" and r["seed"] == "0"
    # the NoDef row has no trade-off; the MIDRE row has one (a number or OP) against NoDef
    assert rows[0]["delta"] == "" and rows[1]["delta"] != ""
    rec = json.loads((out / "attacks" / "nodef" / "gmi" / "reconstructions.json").read_text())
    assert rec["n"] == 2 * 2 and rec["target_name"] == "nodef"
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["config_hash"] == load_config(tiny()).hash()
    assert all(s["status"] == "done" for s in run["stages"].values())
    assert run["peak_rss_mib"] > 0 and run["timings"]["targets"] > 0 and run["versions"]["torch"]
    js = json.loads((out / "results.json").read_text())
    assert js["columns"] == COLUMNS and len(js["rows"]) == 2 and js["eval_model"]["arch"] == "smallcnn"
    # each attack row carries the target's own top-1 on its reconstructions, as the attack recorded it
    for row in js["rows"]:
        own = json.loads((out / "attacks" / row["target"] / "gmi" / "reconstructions.json").read_text())["target_top1"]
        assert row["target_top1"] == pytest.approx(own) and 0.0 <= row["target_top1"] <= 100.0
    assert "target_top1" in header[len(COLUMNS):]                      # an optional column, after the fixed ones
    assert [float(r["target_top1"]) for r in rows] == pytest.approx([r["target_top1"] for r in js["rows"]])
    cfg_back = load_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert cfg_back.hash() == load_config(tiny()).hash()


def test_report_is_written_when_available(full_run):
    out, res, _ = full_run
    assert res.report == out / "report.html" and res.report.is_file() and (out / "report.md").is_file()
    # analyses.features: the paper's Sec. 3.2 analysis runs before the report and lands in it
    assert (out / "analysis" / "features.json").is_file() and (out / "figures" / "features.png").is_file()
    assert "figures/features.png" in (out / "report.md").read_text()


def test_rerun_of_a_complete_run_skips_every_stage_and_keeps_the_numbers(full_run):
    out, _res, _ = full_run
    before = (out / "results.csv").read_bytes()
    seen: list[str] = []
    res = run_pipeline(load_config(tiny()), out, progress=False, on_stage=seen.append)
    assert seen == [] and res.complete          # nothing re-trained or re-attacked
    assert (out / "results.csv").read_bytes() == before


# ------------------------------------------------------------------------------------------ resume
def test_interrupted_runs_resume_to_identical_results(full_run, tmp_path):
    ref, _res, _ = full_run
    out = tmp_path / "run"
    cfg = load_config(tiny())
    # 1) stop after the targets stage
    res = run_pipeline(cfg, out, progress=False, stop_after="targets")
    assert not res.complete and not (out / "results.csv").exists() and not (out / "attacks").exists()
    assert (out / "targets" / "midre-0.4" / "model.json").exists()

    # 2) crash right after the first attack finished (as a kill would)
    def crash(name: str) -> None:
        if name.startswith("attacks/"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(cfg, out, progress=False, on_stage=crash)
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["targets/nodef"]["status"] == "done"
    assert run["sessions"][-1]["status"] == "interrupted"
    # 3) resume (what `midre run --resume DIR` does) and compare with the uninterrupted run
    seen: list[str] = []
    res = run_pipeline(cfg, out, progress=False, on_stage=seen.append)
    assert res.complete
    assert not any(s.startswith("targets/") or s == "eval" for s in seen), "finished stages must not re-run"
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    for t in ("nodef", "midre-0.4"):
        a = json.loads((out / "attacks" / t / "gmi" / "metrics.json").read_text())
        b = json.loads((ref / "attacks" / t / "gmi" / "metrics.json").read_text())
        assert a == b
    run = json.loads((out / "run.json").read_text())
    assert len(run["sessions"]) == 3 and run["sessions"][-1]["resumed"] and run["complete"]


def test_cli_resume_prints_the_table_and_report_path(full_run, capsys):
    from midre.cli import main

    out, _res, _ = full_run
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "midre results" in text and "nodef" in text and "midre-0.4" in text and str(out) in text


# ------------------------------------------------------------------------------------------ refusals
def test_incompatible_config_is_refused_before_any_write(full_run):
    out, _res, _ = full_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    raw = tiny(defaults={"arch": "tinycnn", "train": {"epochs": 2, "batch_size": 16}})
    with pytest.raises(RunDirError) as ei:
        run_pipeline(load_config(raw), out, progress=False)
    msg = str(ei.value)
    assert "incompatible config" in msg and "targets/nodef" in msg and "--resume" in msg and "\n" not in msg
    with pytest.raises(RunDirError, match="incompatible config"):
        run_pipeline(load_config(tiny(seed=1)), out, progress=False)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: t for p, t in before.items() if p.name != ".lock"}


def test_second_process_is_locked_out(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunDirError, match="in use by another midre process"):
            run_pipeline(load_config(tiny(attacks=[])), out, progress=False)


def test_foreign_directory_and_fresh_start_refusals(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no midre run"):
        run_pipeline(load_config(tiny(attacks=[])), foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "run"
    run_pipeline(load_config(tiny(attacks=[])), out, progress=False, stop_after="data")
    with pytest.raises(RunDirError, match="already holds a run"):
        run_pipeline(load_config(tiny(attacks=[])), out, resume=False, progress=False)


def test_identities_out_of_range_fail_before_training(tmp_path):
    raw = tiny()
    raw["attacks"][0]["identities"] = "0-9"          # only 6 private identities
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as ei:
        run_pipeline(load_config(raw), out, progress=False)
    assert "attacks[0].identities" in str(ei.value) and "6 classes" in str(ei.value)
    assert not (out / "eval").exists() and not (out / "targets").exists()


def test_without_attacks_one_row_per_target(tmp_path):
    out = tmp_path / "run"
    raw = tiny(attacks=[], report={"enabled": False})
    res = run_pipeline(load_config(raw), out, progress=False)
    rows = _csv(out / "results.csv")
    assert res.complete and [r["target"] for r in rows] == ["nodef", "midre-0.4"]
    assert all(r["attack"] == "" and r["attack_top1"] == "" for r in rows)
    assert not (out / "report.html").exists()


# ------------------------------------------------------------------------------------------ study
def test_multi_seed_study_layout(tmp_path):
    out = tmp_path / "study"
    raw = tiny(attacks=[], seeds=[0, 1], report={"enabled": False})
    res = run_pipeline(load_config(raw), out, progress=False)
    assert res.complete and res.seeds == [0, 1]
    for s in (0, 1):
        assert (out / f"seed-{s}" / "targets" / "nodef" / "model.json").exists()
        assert json.loads((out / f"seed-{s}" / "run.json").read_text())["seed"] == s
    top = json.loads((out / "run.json").read_text())
    assert top["kind"] == "study" and top["seeds"] == [0, 1]
    with open(out / "results.csv") as fh:
        header = fh.readline().strip().split(",")
    assert header[:len(COLUMNS) + len(STUDY_EXTRA_COLUMNS)] == COLUMNS + STUDY_EXTRA_COLUMNS == \
        RESULTS_CSV_HEADER + ["n_seeds", "acc_std", "knn_std", "fid_eval_std"]
    rows = _csv(out / "results.csv")
    assert [r["target"] for r in rows] == ["nodef", "midre-0.4"] and all(r["n_seeds"] == "2" for r in rows)
    per_seed = _csv(out / "results_per_seed.csv")
    accs = [float(r["acc"]) for r in per_seed if r["target"] == "nodef"]
    assert math.isclose(float(rows[0]["acc"]), sum(accs) / 2, rel_tol=1e-5)
    # a single-seed run into a study directory is refused
    with pytest.raises(RunDirError, match="study"):
        run_pipeline(load_config(tiny(attacks=[])), out, progress=False)
    # an incompatible study config is refused before the study's config.yaml or run.json is rewritten
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    other = tiny(attacks=[], seeds=[0, 1], report={"enabled": False},
                 defaults={"arch": "tinycnn", "train": {"epochs": 2, "batch_size": 16}})
    with pytest.raises(RunDirError) as ei:
        run_pipeline(load_config(other), out, progress=False)
    assert "incompatible config" in str(ei.value) and f"--resume {out}`" in str(ei.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_study_continues_a_single_seed_run_placed_as_seed_0(tmp_path):
    single = tmp_path / "single"
    run_pipeline(load_config(tiny(attacks=[], report={"enabled": False})), single, progress=False)
    model = single / "targets" / "nodef" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    out = tmp_path / "study"
    out.mkdir()
    single.rename(out / "seed-0")
    done: list[str] = []
    raw = tiny(attacks=[], seeds=[0, 1], report={"enabled": False})
    res = run_pipeline(load_config(raw), out, progress=False, on_stage=done.append)
    assert res.complete and (out / "seed-0" / "targets" / "nodef" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "seed-1" / "targets" / "nodef" / "model.json").exists()
    assert done.count("targets/nodef") == 1          # trained for seed 1 only; seed 0's is reused by key
    # a seed directory the config does not list, or anything else beside it, is still refused
    for i, names in enumerate((["seed-7"], ["seed-0", "notes"])):
        other = tmp_path / f"other{i}"
        for name in names:
            (other / name).mkdir(parents=True)
            (other / name / "run.json").write_text("{}")
        with pytest.raises(RunDirError, match="holds no midre run"):
            run_pipeline(load_config(raw), other, progress=False)
        assert sorted(p.name for p in other.iterdir()) == sorted(names)


def test_aggregate_rows_mean_std_ci_and_tradeoff_by_hand():
    def row(target, defense, seed, acc, top1, top5):
        return {"target": target, "defense": defense, "defense_params": "{}", "attack": "gmi", "acc": acc,
                "attack_top1": top1, "attack_top1_std": 99.0, "attack_top5": top5, "attack_top5_std": 99.0,
                "knn": 1.0, "fid_eval": float("nan"), "epsilon": float("nan"), "seed": seed, "repeats": 3,
                "identities": 10, "reference": "" if defense == "nodef" else "nodef"}

    per_seed = [row("nodef", "nodef", 0, 90.0, 80.0, 95.0), row("nodef", "nodef", 1, 92.0, 84.0, 97.0),
                row("midre", "midre", 0, 86.0, 40.0, 60.0), row("midre", "midre", 1, 88.0, 50.0, 70.0)]
    out = {r["target"]: r for r in aggregate_rows(per_seed)}
    n, m = out["nodef"], out["midre"]
    assert n["acc"] == 91.0 and math.isclose(n["acc_std"], math.sqrt(2.0))
    assert m["attack_top1"] == 45.0 and math.isclose(m["attack_top1_std"], math.sqrt(50.0))   # across seeds
    assert m["attack_top5"] == 65.0 and m["seed"] == "0,1" and m["n_seeds"] == 2
    half = 12.706204736174707 * math.sqrt(50.0) / math.sqrt(2)                       # t(0.975, df=1)
    assert math.isclose(m["top1_ci_lo"], 45.0 - half, rel_tol=1e-6)
    assert math.isclose(m["top1_ci_hi"], 45.0 + half, rel_tol=1e-6)
    assert math.isclose(m["delta"], (82.0 - 45.0) / (91.0 - 87.0))                  # trade-off of the means
    assert n["delta"] == "" and math.isnan(m["fid_eval"])
    assert "target_top1" not in n                                   # no seed carried it
    per_seed = [{**r, "target_top1": v} for r, v in zip(per_seed, (100.0, 98.0, 90.0, 96.0))]
    out = {r["target"]: r for r in aggregate_rows(per_seed)}
    assert out["nodef"]["target_top1"] == 99.0 and out["midre"]["target_top1"] == 93.0     # the seeds' mean


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_identical_results(full_run, tmp_path):
    """A real `midre run` process killed with SIGKILL, then `midre run --resume DIR`."""
    import os
    import signal
    import subprocess
    import sys

    ref, _res, _ = full_run
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny()))
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from midre.cli import main; raise SystemExit(main())"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + ["run", str(cfg_path), "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            stages = json.loads((out / "run.json").read_text()).get("stages", {})
        except (OSError, ValueError):
            stages = {}
        if stages.get("targets/nodef", {}).get("status") == "done":
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the run finished before it could be killed"
    assert not (out / "results.csv").exists()
    rc = subprocess.run(cmd + ["run", "--resume", str(out), "--no-progress"], env=env, capture_output=True,
                        text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()


def _tiny_version(name: str) -> dict:
    from midre.config import load_raw

    raw = load_raw(name)
    raw.pop("seeds", None)
    raw["dataset"] = copy.deepcopy(TINY["dataset"])
    raw["eval_model"]["train"] = {**raw["eval_model"].get("train", {}), "epochs": 1}
    raw["defaults"]["train"] = {**raw["defaults"].get("train", {}), "epochs": 1}
    for b in (raw.get("backbones") or {}).values():     # the tiny data has no pretraining pool
        b.update({"pool": "public", "pool_options": {}, "train": {**b.get("train", {}), "epochs": 1}})
    for t in raw["targets"]:
        (t.get("train") or {}).pop("epochs", None)
        if isinstance(t.get("defense"), dict) and t["defense"].get("name") == "tldmi":
            t["defense"]["pretrain_epochs"] = 1
    raw["attacks"] = []
    raw["report"] = {"enabled": False}
    raw["device"] = "cpu"
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in builtin_configs() if not n.startswith("paper/")])
def test_every_builtin_config_trains_all_its_targets_at_tiny_scale(tmp_path, name):
    """Every defense / ablation in the shipped configs goes through the one pipeline (1 epoch, tiny data);
    one test per config, so one failing config does not hide the others."""
    cfg = load_config(_tiny_version(name))
    res = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert res.complete, name
    assert [r["target"] for r in res.rows] == [t.name for t in cfg.expanded_targets()], name
    for r in res.rows:
        assert 0.0 <= r["acc"] <= 100.0, (name, r)
        if r["defense"] == "dp":
            assert math.isfinite(r["epsilon"]) and r["epsilon"] > 0, "DP's epsilon reaches the results"


def test_adaptive_attack_uses_the_targets_own_eraser(tmp_path):
    raw = tiny(attacks=[{"name": "gmi", "preset": "quick", "params": {"iterations": 2}, "identities": [0],
                         "repeats": 1, "adaptive": True}], report={"enabled": False})
    res = run_pipeline(load_config(raw), tmp_path / "run", progress=False)
    assert [r["attack"] for r in res.rows] == ["gmi-adaptive", "gmi-adaptive"]
    m = json.loads((tmp_path / "run" / "attacks" / "midre-0.4" / "gmi-adaptive" / "reconstructions.json").read_text())
    n = json.loads((tmp_path / "run" / "attacks" / "nodef" / "gmi-adaptive" / "reconstructions.json").read_text())
    assert m["adaptive"] is True and "Erasing" in m["adaptive_eraser"]
    assert n["adaptive"] is False and n["adaptive_requested"] is True     # NoDef erases nothing
