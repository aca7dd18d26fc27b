"""DeepInversion (issue 24) as a user runs it: ``midre attack`` with no prior and no public data, the one-line
refusal of a target without BatchNorm (a DP-SGD target, whose BatchNorm Opacus replaced by GroupNorm, as
the CLI loads it), determinism, resume after a kill, and ``midre run`` configs with ``deepinversion`` and
``mirror_wb``.  The update rules themselves are checked in tests/test_attack_parity.py.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _tiny_attack import DATA_OPTS, RES, K, cli_attack, train_tiny_target  # the tests folder's shared tiny world

from midre.attacks import Reconstructions, build_attack
from midre.errors import ArgumentError

DI = {"iterations": 4, "batch_size": 2}       # quick preset, 4 steps, two identities per batch


def _train(root: Path, name: str, defense=None) -> Path:
    train_tiny_target(root, name, defense=defense)
    return root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from midre.loading import load_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("di")
    ckpt = _train(root, "target")
    return {"root": root, "ckpt": ckpt, "model": load_model(ckpt, device="cpu")[0].eval()}


def _cli(root: Path, target: Path, out: str, *extra: str) -> int:
    return cli_attack(target, "deepinversion", root / out, "0-3", 2, DI, (), *extra)


# ------------------------------------------------------------------------------ CLI
def test_cli_runs_without_prior_or_public_data(world, capsys):
    assert _cli(world["root"], world["ckpt"], "atk") == 0
    rec = Reconstructions.load(world["root"] / "atk")
    assert rec.images.shape == (8, 3, RES, RES) and rec.latents is None          # 4 identities x 2 repeats
    assert rec.meta["attack"] == "deepinversion" and rec.meta["public"] == "none (no prior)"
    assert rec.meta["params"]["target_resolution"] == RES and len(rec.meta["loss_curve"]) == DI["iterations"]
    assert not (world["root"] / "priors").exists()                                 # nothing trained or cached
    assert "priors none" in capsys.readouterr().err


def test_cli_refuses_a_target_without_batchnorm_in_one_line(world, capsys):
    pytest.importorskip("opacus", reason="pip install -e '.[test]' (DP-SGD targets need opacus)")
    from midre.loading import load_model

    dp = _train(world["root"], "dp", {"name": "dp", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3})
    model = load_model(dp, device="cpu")[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())          # GroupNorm, as trained
    capsys.readouterr()
    assert _cli(world["root"], dp, "atk-dp") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "BatchNorm2d" in err[0] and "DP-SGD" in err[0] and "--attack gmi" in err[0]
    assert not (world["root"] / "atk-dp").exists()                                 # nothing written


def test_library_refuses_before_any_work(tmp_path):
    from midre.models.base import Classifier

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    with pytest.raises(ArgumentError, match="BatchNorm2d"):
        build_attack("deepinversion", preset="quick", target_resolution=RES).run(
            Classifier(net, 8, K), [0, 1], 1, None, resume_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------ determinism, resume
def _run(model, seed, **kw):
    a = build_attack("deepinversion", preset="quick", target_resolution=RES, **{**DI, **kw})
    return a.run(model, [0, 1, 2], 2, None, seed=seed)


def test_same_seed_same_images_other_seed_other_images(world):
    r1, r2, r3 = _run(world["model"], 5), _run(world["model"], 5), _run(world["model"], 6)
    assert torch.equal(r1.images, r2.images) and r1.meta["loss_curve"] == r2.meta["loss_curve"]
    assert not torch.equal(r1.images, r3.images)
    assert not torch.allclose(r1.images[0], r1.images[3])        # the two repeats of identity 0 differ


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_images(world, tmp_path, monkeypatch):
    from midre.attacks import deepinversion

    ref = _run(world["model"], 3)
    calls = []
    orig = deepinversion.DeepInversion.invert

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(deepinversion.DeepInversion, "invert", crashing)
    kw = dict(preset="quick", target_resolution=RES, **DI)
    with pytest.raises(_Killed):
        build_attack("deepinversion", **kw).run(world["model"], [0, 1, 2], 2, None, seed=3, resume_dir=tmp_path / "p")
    assert len(list((tmp_path / "p").glob("chunk-*.safetensors"))) == 2
    calls.clear()
    rec = build_attack("deepinversion", **kw).run(world["model"], [0, 1, 2], 2, None, seed=3, resume_dir=tmp_path / "p")
    assert len(calls) == 2 and rec.meta["resumed_chunks"] == 2          # 2 of the 4 chunks were done
    assert torch.equal(rec.images, ref.images) and rec.meta["loss_curve"] == ref.meta["loss_curve"]


# ------------------------------------------------------------------------------ midre run
CONFIG = f"""
name: di
seed: 0
device: cpu
dataset: {{name: synthetic, resolution: {RES}, options: {json.dumps(DATA_OPTS)}}}
eval_model: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
defaults: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
targets: [{{name: nodef, defense: nodef}}]
attacks:
  - {{name: deepinversion, preset: quick, params: {{iterations: 3}}, identities: "0-1"}}
  - {{name: mirror_wb, preset: quick, params: {{pool: 16, iterations: 3}}, identities: "0-1", repeats: 2}}
priors: {{preset: quick, params: {{stylegan2: {{iterations: 2, batch_size: 8, ckpt_every: 2}}}}}}
metrics: {{fid: none, knn: false, n_boot: 0}}
report: {{enabled: false}}
"""


def test_midre_run_config_with_deepinversion_and_mirror_wb(tmp_path):
    from midre.config import load_config
    from midre.pipeline import run_pipeline

    cfg = tmp_path / "di.yaml"
    cfg.write_text(CONFIG)
    run_pipeline(load_config(str(cfg)), tmp_path / "run", progress=False)
    di = Reconstructions.load(tmp_path / "run" / "attacks" / "nodef" / "deepinversion")
    wb = Reconstructions.load(tmp_path / "run" / "attacks" / "nodef" / "mirror_wb")
    assert di.images.shape == (2, 3, RES, RES) and di.meta["params"]["target_resolution"] == RES
    assert wb.images.shape == (4, 3, RES, RES) and wb.latents is not None and wb.meta["queries"] is None
    assert not (tmp_path / "run" / "priors" / "stylegan2" / "deepinversion").exists()
    with open(tmp_path / "run" / "results.csv", newline="") as fh:
        assert sorted(r["attack"] for r in csv.DictReader(fh)) == ["deepinversion", "mirror_wb"]


def test_midre_run_refuses_deepinversion_on_a_dp_target_before_training(tmp_path, capsys):
    """A DP-SGD target has no BatchNorm once trained: the config is refused in one line before anything runs
    (not at the attack stage, after the targets have trained), and naming only the other targets fixes it."""
    pytest.importorskip("opacus", reason="pip install -e '.[test]' (DP-SGD targets need opacus)")
    from midre.cli import main

    dp = "{name: dp, defense: {name: dp, noise_multiplier: 1.0, max_grad_norm: 1.0, delta: 0.001}}"
    cfg = tmp_path / "di.yaml"
    cfg.write_text(CONFIG.replace("targets: [{name: nodef, defense: nodef}]", f"targets: [{{name: nodef, defense: nodef}}, {dp}]"))
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "'attacks[0]' (deepinversion) cannot attack target 'dp'" in err[0] and "BatchNorm2d" in err[0]
    assert "'attacks[0].targets'" in err[0]
    assert not (tmp_path / "run").exists()

    from midre.config import load_config

    fixed = cfg.read_text().replace('identities: "0-1"}', 'identities: "0-1", targets: [nodef]}', 1)
    cfg.write_text(fixed)
    load_config(str(cfg))                       # valid once the attack names only the targets it can attack
