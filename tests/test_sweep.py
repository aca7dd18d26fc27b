"""midre.sweep: grid expansion, validation, a real 2-trial grid locally (resumable) and on local Ray."""
from __future__ import annotations

import copy
import csv
import json

import pytest
from test_report import TINY

BASE = {**copy.deepcopy(TINY), "targets": [{"name": "nodef", "defense": "nodef"},
                                          {"name": "midre", "defense": {"name": "midre", "area": 0.4}}],
        "sweep": {"grid": {"targets.1.defense.area": [0.2, 0.5]}}}


def test_expand_grid_and_parse():
    from midre.sweep import expand_grid, parse_sweep, trial_config

    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    raw = {**BASE, "sweep": {"grid": {"seed": [0, 1]}, "trials": [{"seed": 5, "targets.1.defense.area": 0.8}],
                             "num_cpus": 2, "num_gpus": 0.5}}
    spec = parse_sweep(raw)
    assert [t.params for t in spec.trials] == [{"seed": 0}, {"seed": 1}, {"seed": 5, "targets.1.defense.area": 0.8}]
    assert spec.grid_keys == ["seed", "targets.1.defense.area"] and spec.num_gpus == 0.5
    assert "sweep" not in spec.base
    cfg = trial_config(spec.base, spec.trials[2].params)
    assert cfg["seed"] == 5 and cfg["targets"][1]["defense"]["area"] == 0.8
    assert BASE["targets"][1]["defense"]["area"] == 0.4          # the base is never mutated
    # the shipped example sweep parses and every trial is a valid config
    from midre.config import load_config
    from midre.config import raw_config as _load_raw

    ex = parse_sweep(_load_raw("sweeps/area-seeds"))
    assert len(ex.trials) == 12 and ex.num_cpus == 2
    for t in ex.trials[:2]:
        load_config(trial_config(ex.base, t.params), check=False)


@pytest.mark.parametrize("sweep, match", [
    (None, "no 'sweep' section"),
    ({"grid": {"seed": []}}, "non-empty list"),
    ({"grid": {"seed": 3}}, "non-empty list"),
    ({"gird": {"seed": [1]}}, "did you mean 'grid'"),
    ({"grid": {"seed": [1, 1]}}, "appears twice"),
    ({"grid": {"seed": [1]}, "num_gpus": -1}, "non-negative"),
    ({"grid": {"seed": [1]}, "backend": "spark"}, "use one of: local, ray"),
    ({}, "defines no trial"),
])
def test_sweep_section_errors(sweep, match):
    from midre.errors import ConfigError
    from midre.sweep import parse_sweep

    raw = {**BASE, "sweep": sweep}
    with pytest.raises(ConfigError, match=match):
        parse_sweep(raw)


def test_trial_configs_validated_up_front(tmp_path):
    from midre.errors import ConfigError
    from midre.sweep import run_sweep

    raw = {**BASE, "sweep": {"grid": {"targets.1.defense.area": [0.4, 1.5]}}}
    with pytest.raises(ConfigError, match=r"sweep trial 1 .*area"):
        run_sweep(raw, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "trial-0").exists()              # nothing ran
    raw = {**BASE, "sweep": {"grid": {"targets.7.defense.area": [0.4]}}}
    with pytest.raises(ConfigError, match="has 2 entries"):
        run_sweep(raw, tmp_path / "s", progress=False)
    from midre.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--backend ray"):
        run_sweep(BASE, tmp_path / "s", backend="local", address="auto", progress=False)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_local_sweep_runs_collects_and_resumes(tmp_path):
    from midre.errors import RunDirError
    from midre.sweep import run_sweep

    out = tmp_path / "sweep"
    res = run_sweep(BASE, out, backend="local", progress=False)
    assert [t.status for t in res.trials] == ["done", "done"] and not res.failed
    rows = _read_csv(out / "results.csv")
    assert len(rows) == 4                                          # 2 trials x 2 targets
    assert list(rows[0])[:3] == ["trial", "targets.1.defense.area", "target"]
    assert [(r["trial"], r["targets.1.defense.area"], r["target"]) for r in rows] == [
        ("trial-0", "0.2", "nodef"), ("trial-0", "0.2", "midre"), ("trial-1", "0.5", "nodef"), ("trial-1", "0.5", "midre")]
    # each trial is a real pipeline with the override applied
    p0 = json.loads(rows[1]["defense_params"])
    p1 = json.loads(rows[3]["defense_params"])
    assert p0["area"] == 0.2 and p1["area"] == 0.5
    meta = json.loads((out / "trial-1" / "targets" / "midre" / "model.json").read_text())
    assert meta["defense"]["area"] == 0.5
    # same seed, same NoDef -> same accuracy in both trials (determinism)
    assert rows[0]["acc"] == rows[2]["acc"]
    state = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["done", "done"]
    assert json.loads((out / "results.json").read_text())[0]["trial"] == "trial-0"
    # the sweep directory renders as a report with the grid values in the labels
    from midre.report import write_report

    md = write_report(out)[0].read_text()
    assert "| midre [area=0.5] |" in md and "2 trials over targets.1.defense.area" in md

    # resume: finished trials are skipped (the runner is never called), the table is identical
    calls = []

    def spy(*a, **k):
        calls.append(a)
        raise AssertionError("a finished trial was re-run")

    before = (out / "results.csv").read_text()
    res2 = run_sweep(BASE, out, backend="local", progress=False, runner=spy)
    assert not calls and not res2.failed and (out / "results.csv").read_text() == before

    # an interrupted trial (status not done) is resumed through the real pipeline, others skipped
    state["trials"][1]["status"] = "pending"
    (out / "sweep.json").write_text(json.dumps(state))
    res3 = run_sweep(BASE, out, backend="local", progress=False)
    assert not res3.failed and (out / "results.csv").read_text() == before

    # another grid into the same directory is refused
    other = {**BASE, "sweep": {"grid": {"targets.1.defense.area": [0.3]}}}
    with pytest.raises(RunDirError, match="different sweep"):
        run_sweep(other, out, progress=False)
    with pytest.raises(RunDirError, match="already holds a sweep"):
        run_sweep(BASE, out, resume=False, progress=False)


def test_failed_trial_is_recorded_and_others_collected(tmp_path):
    from midre.errors import DataError
    from midre.sweep import run_sweep

    def runner(raw, trial_dir, resume, progress, threads):
        if raw["targets"][1]["defense"]["area"] == 0.5:
            raise DataError("disk on fire")
        return {"rows": [{"target": "nodef", "acc": 1.0}], "seconds": 0.1}

    res = run_sweep(BASE, tmp_path / "s", progress=False, runner=runner)
    assert [t.status for t in res.trials] == ["done", "failed"]
    assert "disk on fire" in res.trials[1].error
    assert len(_read_csv(tmp_path / "s" / "results.csv")) == 1
    state = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert state["trials"][1]["status"] == "failed"


def test_cli_sweep_local(tmp_path, capsys):
    import yaml

    from midre.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "sweep": {"grid": {"seed": [3]}}}))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--no-progress", "--set", "device=cpu"]) == 0
    assert "1/1 trials done" in capsys.readouterr().err
    assert _read_csv(tmp_path / "o" / "results.csv")[0]["seed"] == "3"
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--set", "nokey"]) == 2


def test_ray_missing_is_a_clear_error(monkeypatch):
    import builtins

    from midre.errors import MidreError
    from midre.sweep import import_ray

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MidreError, match=r"pip install midre\[ray\]"):
        import_ray()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_sweep_two_trials(tmp_path):
    ray = pytest.importorskip("ray", reason="needs the optional ray extra: pip install -e '.[ray]'")
    from midre.sweep import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(BASE, tmp_path / "ray", backend="ray", progress=False)
        assert ray.is_initialized()                       # an existing instance is left to its owner
    finally:
        ray.shutdown()
    assert [t.status for t in res.trials] == ["done", "done"], [t.error for t in res.trials]
    rows = _read_csv(tmp_path / "ray" / "results.csv")
    assert [(r["trial"], r["target"]) for r in rows] == [
        ("trial-0", "nodef"), ("trial-0", "midre"), ("trial-1", "nodef"), ("trial-1", "midre")]
    assert json.loads(rows[3]["defense_params"])["area"] == 0.5
    assert (tmp_path / "ray" / "trial-0" / "targets" / "midre" / "model.json").exists()
    # same numbers as the local backend (same seeds, CPU)
    local = run_sweep(BASE, tmp_path / "local", backend="local", progress=False)
    assert [r["acc"] for r in local.rows] == [float(r["acc"]) for r in rows]
