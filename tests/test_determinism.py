"""Determinism (issue 6): the same config and seed give identical metrics.json and results.csv on CPU
(two independent runs into two directories); another seed gives other numbers (so the comparison can fail).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

CONFIG = """
name: determinism
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 8, images_per_id: 6}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 2, batch_size: 8}}
targets:
  - {name: nodef, defense: nodef}
  - {name: midre-0.4, defense: {name: midre, area: 0.4}}
attacks: [{name: gmi, preset: quick, params: {iterations: 20}, identities: "0-3", repeats: 2}]
priors: {preset: quick, params: {gan: {iterations: 4, batch_size: 8}}}
metrics: {fid: eval, n_boot: 20}
report: {enabled: false}
"""

VOLATILE = ("seconds", "started", "finished", "created", "updated", "peak_rss")   # none is in metrics.json today


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _run(tmp: Path, name: str, seed: int) -> dict:
    from midre.attacks import ATTACKS
    from midre.config import load_config
    from midre.pipeline import run_pipeline

    assert "gmi" in ATTACKS
    raw = yaml.safe_load(CONFIG)
    raw["seed"] = seed
    out = tmp / name
    res = run_pipeline(load_config(raw), out, progress=False)
    assert res.complete
    metrics = {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("metrics.json"))}
    assert len(metrics) == 2
    return {"metrics": metrics, "csv": (out / "results.csv").read_text(),
            "recon": {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("reconstructions.safetensors"))}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    return _run(tmp, "a", 0), _run(tmp, "b", 0), _run(tmp, "c", 1)


def test_same_config_and_seed_give_identical_metrics_json(runs):
    a, b, _ = runs
    assert a["metrics"] == b["metrics"]      # byte-identical metrics.json files
    assert all("attacc_top1" in json.loads(m) and "fid_eval" in json.loads(m) for m in a["metrics"].values())
    assert a["csv"] == b["csv"]
    assert a["recon"] == b["recon"]          # bit-identical reconstructions


def test_another_seed_gives_other_numbers(runs):
    a, _, c = runs
    strip = [{k: _clean(json.loads(v)) for k, v in r["metrics"].items()} for r in (a, c)]
    assert strip[0] != strip[1]


def test_midre_train_same_seed_gives_identical_checkpoints(tmp_path, monkeypatch):
    """The CLI path too: `midre train` twice with one --seed -> bit-identical weights and metadata numbers."""
    from safetensors.torch import load_file

    from midre.cli import main

    monkeypatch.chdir(tmp_path)
    torch_state = []
    for name in ("a", "b"):
        import torch

        torch.manual_seed(1234 if name == "a" else 99)    # the process RNG state must not matter
        argv = ["train", "--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
                "--data-option", "images_per_id=6", "--arch", "tinycnn", "--epochs", "2", "--batch-size", "8",
                "--defense", "midre", "--area", "0.4", "--device", "cpu", "--no-progress", "--out", str(tmp_path / name)]
        assert main(argv) == 0
        torch_state.append(load_file(str(tmp_path / name / "model.safetensors")))
    a, b = torch_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / n / "model.json").read_text()) for n in ("a", "b"))
    assert ma["test_acc"] == mb["test_acc"]
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
