"""Crash and resume (issue 6): ``midre run`` is SIGKILLed at several points -- during evaluation-model and
target training, prior training, the attack, the evaluation (metrics), the results table and the report --
then re-run into the same directory.  The resumed run must reach exactly the results of an uninterrupted
run (results.csv, every metrics.json), and no artefact may ever be half-written (no temp files, every
JSON parses, every safetensors loads).  A second run into a directory in use is refused (RunLock).

The kill points use the pipeline's ``MIDRE_CRASH_AT=<stage>`` hook (SIGKILL when that stage begins) and,
for a kill in the middle of training, a watcher that SIGKILLs the process as soon as the first per-epoch
checkpoint of a target appears.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = """
name: crash
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 8, images_per_id: 6}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 3, batch_size: 8}}
targets:
  - {name: nodef, defense: nodef}
  - {name: midre-0.4, defense: {name: midre, area: 0.4}}
attacks: [{name: gmi, preset: quick, params: {iterations: 30}, identities: "0-1", repeats: 1}]
priors: {preset: quick, params: {gan: {iterations: 6, batch_size: 8, ckpt_every: 2}}}
metrics: {fid: eval, n_boot: 20}
report: {enabled: true, max_identities: 2}
"""

VOLATILE = ("seconds", "started", "finished", "created", "updated", "peak_rss")   # none is in metrics.json today


def _cmd(cfg: Path, out: Path) -> list[str]:
    code = "import sys; from midre.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "run", str(cfg), "--out", str(out), "--no-progress"]


def _env(crash_at: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIDRE_CRASH_AT", None)
    if crash_at:
        env["MIDRE_CRASH_AT"] = crash_at
    return env


def _run(cfg: Path, out: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(cfg, out), env=_env(crash_at), capture_output=True, text=True, timeout=300)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _results(out: Path) -> dict:
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    metrics = {str(p.relative_to(out)): _clean(json.loads(p.read_text())) for p in sorted(out.rglob("metrics.json"))}
    return {"rows": rows, "metrics": metrics}


def _assert_nothing_half_written(out: Path, after_kill: bool = False) -> None:
    """Every artefact is whole.  Right after a SIGKILL an atomic write's own temp file (``.<name>.*.tmp``)
    may be orphaned -- never under an artefact's name; the resumed run removes them, so none is left after."""
    from safetensors.torch import load_file

    tmp = [p for p in out.rglob("*.tmp")]
    if after_kill:
        assert all(p.name.startswith(".") for p in tmp), tmp
    else:
        assert not tmp, tmp
    for p in out.rglob("*.json"):
        json.loads(p.read_text())
    for p in out.rglob("*.safetensors"):
        load_file(str(p))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from midre.attacks import ATTACKS

    assert "gmi" in ATTACKS
    root = tmp_path_factory.mktemp("crash")
    cfg = root / "crash.yaml"
    cfg.write_text(CONFIG)
    ref = root / "reference"
    p = _run(cfg, ref)
    assert p.returncode == 0, p.stderr[-3000:]
    return root, cfg, _results(ref)


STAGES = ["eval", "targets/midre", "priors", "attacks", "metrics", "results", "report"]


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume_gives_identical_results(setup):
    """One run directory, killed once in each stage in turn (each session resumes the previous one and is
    killed further on), then finished: the results equal the uninterrupted run's."""
    root, cfg, reference = setup
    out = root / "killed"
    for stage in STAGES:
        p = _run(cfg, out, crash_at=stage)
        assert p.returncode == -signal.SIGKILL, (stage, p.returncode, p.stderr[-2000:])
        _assert_nothing_half_written(out, after_kill=True)
        state = json.loads((out / "run.json").read_text())
        assert not state.get("complete"), f"a run killed at {stage} claims to be complete"
        running = [k for k, v in state["stages"].items() if v.get("status") == "running"]
        if stage not in ("results", "report"):
            assert any(k.startswith(stage) for k in running), (stage, running)
        assert not (out / "report.html").exists()
    p = _run(cfg, out)
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_nothing_half_written(out)
    assert _results(out) == reference
    state = json.loads((out / "run.json").read_text())
    assert state["complete"] is True and len(state["sessions"]) == len(STAGES) + 1


@pytest.mark.slow
def test_sigkill_in_the_middle_of_training_then_resume(setup):
    """Killed right after target training's first per-epoch checkpoint (of 3 epochs)."""
    root, cfg, reference = setup
    out = root / "killed-mid-training"
    proc = subprocess.Popen(_cmd(cfg, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = out / "targets" / "nodef" / "model.json"
    t0 = time.time()
    while proc.poll() is None and not marker.exists() and time.time() - t0 < 240:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed, "the run finished before the watcher could kill it"
    _assert_nothing_half_written(out, after_kill=True)
    meta = json.loads(marker.read_text())
    assert meta["epoch"] < meta["epochs"] or not json.loads((out / "run.json").read_text()).get("complete")
    p = _run(cfg, out)
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_nothing_half_written(out)
    assert _results(out) == reference


@pytest.mark.slow
def test_second_run_into_a_busy_directory_is_refused(setup):
    root, cfg, _ = setup
    out = root / "busy"
    first = subprocess.Popen(_cmd(cfg, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while first.poll() is None and not (out / "run.json").exists() and time.time() - t0 < 120:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)   # freeze it while it holds the directory
        assert first.poll() is None, "the first run ended too early"
        second = _run(cfg, out)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2 and "in use by another midre process" in lines[-1], second.stderr[-2000:]
        assert sum("error" in ln for ln in lines) == 1 and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # the lock dies with its holder: the same directory can be resumed straight away
    p = _run(cfg, out)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_midre_train_then_resume_gives_identical_weights(tmp_path):
    """`midre train` killed after an epoch checkpoint, re-run with the same --out: the final weights equal
    an uninterrupted training's bit for bit (exact resume from the per-epoch checkpoint)."""
    from safetensors.torch import load_file

    code = "import sys; from midre.cli import main; sys.exit(main(sys.argv[1:]))"

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-c", code, "train", "--dataset", "synthetic", "--resolution", "16",
                "--data-option", "num_private=4", "--data-option", "images_per_id=12", "--arch", "tinycnn",
                "--epochs", "6", "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and not (out / "model.json").exists() and time.time() - t0 < 240:
        time.sleep(0.005)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed, "training finished before the watcher could kill it"
    _assert_nothing_half_written(out, after_kill=True)
    assert json.loads((out / "model.json").read_text())["epoch"] < 6
    p = subprocess.run(cmd(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    _assert_nothing_half_written(out)
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))
