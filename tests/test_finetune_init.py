"""Targets trained the paper's way (issue 9 item 2): every target fine-tuned from one pretrained backbone
(``backbones:`` + ``train.init: zoo:<name>``), head re-initialised, TL-DMI differing only by its freezing,
and paper configs that name local pretrained weights (missing file -> one line, exit 2)."""
from __future__ import annotations

import copy
import json

import _toy_quadrants  # noqa: F401  (registers the toy dataset)
import pytest
import torch

from midre.cli import main

TOY = {"name": "toy", "seed": 0, "device": "cpu", "dataset": {"name": "toy-quadrants"},
       "backbones": {"bb": {"arch": "tinycnn", "pool": "pretrain",
                            "train": {"epochs": 1, "batch_size": 32, "amp": False, "lr": 0.05}}},
       "eval_model": {"arch": "tinycnn", "seed": 0,
                      "train": {"epochs": 1, "batch_size": 32, "amp": False, "init": "zoo:bb"}},
       "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 32, "amp": False, "init": "zoo:bb"}},
       "targets": [{"name": "nodef", "defense": "nodef"},
                   {"name": "midre-0.4", "defense": {"name": "midre", "area": 0.4}},
                   {"name": "tldmi", "defense": {"name": "tldmi", "freeze": 1.0}}],
       "report": {"enabled": False}}


def _backbone(path):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if not k.startswith("head.")}


def test_load_pretrained_reinitialises_the_head(tmp_path):
    from midre.checkpoint import save_checkpoint
    from midre.models import create_model
    from midre.models.weights import load_pretrained

    torch.manual_seed(0)
    src = create_model("tinycnn", num_classes=4, resolution=16)
    path = save_checkpoint(tmp_path / "bb", src, {"arch": "tinycnn", "num_classes": 4, "resolution": 16})
    torch.manual_seed(1)
    a = create_model("tinycnn", num_classes=4, resolution=16)     # same class count: head still fresh
    head_before = a.head.weight.detach().clone()
    rep = load_pretrained(a, path, keep_head=False)
    torch.manual_seed(2)
    b = create_model("tinycnn", num_classes=7, resolution=16)
    load_pretrained(b, path, keep_head=False)
    assert rep["head"] == "re-initialised"
    assert torch.equal(a.head.weight, head_before) and not torch.equal(a.head.weight, src.head.weight)
    assert b.head.weight.shape[0] == 7
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v), k


def test_targets_start_from_the_same_backbone_and_tldmi_only_freezes(tmp_path):
    from midre.checkpoint import read_meta
    from midre.pipeline import run_pipeline

    run = tmp_path / "run"
    run_pipeline(copy.deepcopy(TOY), run, progress=False, stop_after="targets")
    bb_meta = read_meta(run / "backbones" / "bb")
    assert bb_meta["num_classes"] == 6 and bb_meta["role"] == "backbone"     # the pretraining pool's classes
    shared = _backbone(run / "backbones" / "bb" / "model.safetensors")
    for t in ("nodef", "midre-0.4", "tldmi"):
        meta = read_meta(run / "targets" / t)
        assert meta["train_config"]["init"].endswith("backbones/bb/model.safetensors")
        assert meta["init_report"]["head"] == "re-initialised"
    # TL-DMI with everything but the head frozen keeps the shared backbone exactly: no pre-training of its own
    tl = _backbone(run / "targets" / "tldmi" / "model.safetensors")
    assert set(tl) == set(shared) and all(torch.equal(tl[k], shared[k]) for k in shared)
    rep = read_meta(run / "targets" / "tldmi")["defense_report"]
    assert rep.get("tldmi_pretrained_from") == "shared init (train.init)" and "tldmi_public_classes" not in rep
    # the others fine-tuned from it (moved away from the same start)
    nd = _backbone(run / "targets" / "nodef" / "model.safetensors")
    assert any(not torch.equal(nd[k], shared[k]) for k in shared if nd[k].is_floating_point())
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert stages["backbones/bb"]["source"] == "trained" and stages["eval"]["status"] == "done"


def test_changing_the_backbone_invalidates_the_targets(tmp_path):
    from midre.errors import RunDirError
    from midre.pipeline import run_pipeline

    run = tmp_path / "run"
    cfg = copy.deepcopy(TOY)
    cfg["targets"] = cfg["targets"][:1]
    run_pipeline(cfg, run, progress=False, stop_after="targets")
    cfg["backbones"]["bb"]["train"]["epochs"] = 2
    with pytest.raises(RunDirError):
        run_pipeline(cfg, run, progress=False, stop_after="targets")


def test_unknown_backbone_and_missing_weights_are_one_line_errors(tmp_path, capsys):
    import yaml

    cfg = copy.deepcopy(TOY)
    cfg["defaults"]["train"]["init"] = "zoo:nope"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zoo:nope" in err and "backbones" in err
    cfg["defaults"]["train"]["init"] = str(tmp_path / "missing.safetensors")
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and "missing.safetensors" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["paper/celeba", "paper/celeba-vgg16", "paper/facescrub"])
def test_paper_configs_name_local_pretrained_weights(name, tmp_path, capsys, monkeypatch):
    from midre.config import load_config

    cfg = load_config(name, check=False)
    inits = [cfg.eval_model.train.get("init")] + [cfg.target_train(t).get("init") for t in cfg.targets]
    assert all(i and i.startswith("pretrained/") for i in inits)      # relative, never a personal path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main(["run", name, "--root", str(tmp_path / "data"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pretrained weights" in err and "not found" in err


def test_a_fixed_pretraining_pool_backbone_does_not_depend_on_the_private_options(tmp_path):
    """A family's pretraining pool (synthetic2) depends only on family + resolution: configs that differ in their
    private / public options or data seed share the backbone (and its zoo entry); its own settings still count."""
    from midre.config import load_config
    from midre.plan import RunPlan

    def keys(**over):
        return RunPlan(load_config("quickstart", overrides=over)).keys

    base = keys()
    other = keys(**{"dataset.options": {"num_private": 20, "num_public": 40}, "dataset.seed": 3})
    assert other["backbones/smallcnn"] == base["backbones/smallcnn"]
    assert other["eval"] != base["eval"]                      # the evaluation model trains on the private data
    assert keys(**{"dataset.resolution": 48})["backbones/smallcnn"] != base["backbones/smallcnn"]
    assert keys(**{"backbones.smallcnn.pool_options.num_identities": 400})["backbones/smallcnn"] \
        != base["backbones/smallcnn"]
    assert keys(**{"backbones.smallcnn.pool": "public"})["backbones/smallcnn"] != base["backbones/smallcnn"]
