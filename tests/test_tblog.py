"""midre.tblog: TensorBoard event files of training, priors and attacks, read back with EventAccumulator;
logging never changes results; without the extra, asking for it is one line and exit 2."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard", reason="needs the optional tensorboard extra: pip install -e '.[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from midre import tblog  # noqa: E402
from midre.cli import main  # noqa: E402

DATA = ["--dataset", "synthetic", "--data-option", "num_private=4", "--data-option", "num_public=4",
        "--data-option", "images_per_id=8"]


def events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def runs(log_dir: Path) -> set[str]:
    return {p.parent.relative_to(log_dir).as_posix() for p in log_dir.rglob("events.out.tfevents.*")}


def decode(img) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(io.BytesIO(img.encoded_image_string)).convert("RGB")))


# ------------------------------------------------------------------------------------------ CLI
def test_train_and_attack_cli_write_scalars_and_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tb = tmp_path / "tb"
    assert main(["train", *DATA, "--arch", "tinycnn", "--defense", "midre", "--area", "0.6", "--epochs", "2",
                 "--batch-size", "8", "--out", "target", "--tensorboard", str(tb), "--no-progress"]) == 0
    assert main(["attack", "--target", "target", "--attack", "gmi", "--identities", "0-1", "--repeats", "1",
                 "--param", "iterations=3", "--prior-param", "gan.iterations=4", "--prior-param", "gan.batch_size=8",
                 "--out", "attack", "--tensorboard", str(tb), "--no-progress"]) == 0
    names = runs(tb)
    prior_run = [n for n in names if n.startswith("priors/gan-")]
    assert {"target", "attack"} <= names and len(prior_run) == 1, names

    ea = events(tb / "target")
    assert {"train/loss", "train/acc", "train/lr", "epoch/loss", "epoch/train_acc", "epoch/test_acc",
            "epoch/lr"} <= set(ea.Tags()["scalars"])
    history = json.loads((tmp_path / "target" / "history.json").read_text())
    assert [(e.step, round(e.value, 5)) for e in ea.Scalars("epoch/loss")] == \
        [(h["epoch"], round(h["loss"], 5)) for h in history]
    assert [e.step for e in ea.Scalars("train/loss")] == [0, 3]          # 3 steps per epoch: every 10th
    batches = ea.Images("train/batch_as_trained")
    assert len(batches) == 2 and batches[0].height == 32                  # one batch per epoch

    ep = events(tb / prior_run[0])
    assert {"prior/d_loss", "prior/g_loss"} <= set(ep.Tags()["scalars"])
    assert [e.step for e in ep.Scalars("prior/g_loss")] == [1, 4]
    assert len(ep.Images("prior/samples")) == 4 and ep.Images("prior/samples")[0].height == 64

    ea = events(tb / "attack")
    rec = json.loads((tmp_path / "attack" / "reconstructions.json").read_text())
    assert [round(e.value, 4) for e in ea.Scalars("attack/loss")] == [round(v, 4) for v in rec["loss_curve"]]
    assert ea.Scalars("attack/target_top1")[0].value == pytest.approx(rec["target_top1"])
    img = ea.Images("attack/reconstructions")[0]
    assert (img.width, img.height) == (64, 32)                             # two identities side by side


def test_logged_batch_is_what_the_model_sees_and_logging_changes_nothing(tmp_path, tiny_sets):
    from midre.defenses import Defense
    from midre.models import create_model
    from midre.training import train_classifier
    from midre.utils import seed_everything

    class BlackLeft(Defense):
        name = "black_left"

        def transform_batch(self, x, y, idx=None):
            x = x.clone()
            x[..., : x.shape[-1] // 2] = 0.0
            return x, y

    train, test = tiny_sets

    def fit():
        seed_everything(0)
        model = create_model("tinycnn", num_classes=4, resolution=16)
        cfg = {"epochs": 2, "batch_size": 32, "device": "cpu", "amp": False}
        return train_classifier(model, train, test, defense=BlackLeft(), config=cfg, progress=False)

    plain = fit()
    with tblog.session(tmp_path / "tb"):
        logged = fit()
    for (k, a), b in zip(plain.model.state_dict().items(), logged.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in logged.history]
    (run,) = runs(tmp_path / "tb")
    assert run == "train"                                   # no out_dir: named after the description
    img = decode(events(tmp_path / "tb" / run).Images("train/batch_as_trained")[0])
    assert img.shape[:2] == (32, 128)                       # 16 images of 16 px, 8 per row
    for r in range(2):                                      # each tile: left half black, right half not
        for c in range(8):
            tile = img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
            assert tile[:, :8].max() == 0 and tile[:, 8:].max() > 0
    assert tblog.active() is None


@pytest.mark.slow
def test_run_cli_flag_logs_every_stage(tmp_path):
    import yaml
    from test_pipeline import tiny

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(analyses={"features": False})))
    tb = tmp_path / "tb"
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--tensorboard", str(tb), "--no-progress"]) == 0
    names = runs(tb)
    assert {"eval", "targets/nodef", "targets/midre-0.4", "attacks/nodef/gmi", "attacks/midre-0.4/gmi"} <= names
    assert any(n.startswith("priors/") for n in names), names
    assert len(events(tb / "attacks/midre-0.4/gmi").Scalars("attack/loss")) == 3


def test_config_key_logs_into_the_run_dir(tmp_path):
    from test_pipeline import tiny

    from midre.config import load_config
    from midre.pipeline import run_pipeline

    cfg = load_config(tiny(logging={"tensorboard": True}))
    assert cfg.hash() == load_config(tiny()).hash()          # logging does not change the results' identity
    run_pipeline(cfg, tmp_path / "run", progress=False, stop_after="eval")
    assert runs(tmp_path / "run" / "tensorboard") == {"eval"}
    assert "epoch/test_acc" in events(tmp_path / "run" / "tensorboard" / "eval").Tags()["scalars"]


# ------------------------------------------------------------------------------------------ refusals
@pytest.fixture
def no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # import raises ImportError


@pytest.mark.parametrize("argv", [
    ["train", *DATA, "--epochs", "1", "--out", "OUT"],
    ["attack", "--target", "OUT", "--attack", "gmi", "--out", "OUT"],
    ["run", "--out", "OUT"],
])
def test_without_the_extra_the_flag_is_one_line_and_exit_2(argv, tmp_path, capsys, no_tensorboard):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    assert main([*argv, "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'midre[tensorboard]'" in err[0], err
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_without_the_extra_the_config_key_fails_before_writing(tmp_path, no_tensorboard):
    from test_pipeline import tiny

    from midre.config import load_config
    from midre.pipeline import run_pipeline

    with pytest.raises(tblog.MissingExtraError, match="midre\\[tensorboard\\]"):
        run_pipeline(load_config(tiny(logging={"tensorboard": True})), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_tensorboard_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", *DATA, "--epochs", "1", "--out", str(tmp_path / "t"), "--tensorboard", str(f),
                 "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
