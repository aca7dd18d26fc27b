"""Safe loading (issue 6): a malicious pickle -- one whose ``__reduce__`` would create a marker file when
unpickled -- is refused by EVERY loading path, with a one-line CheckpointError, and runs nothing.

Loading paths covered: checkpoint.load_state (.pt and a pickle disguised as .safetensors), load_model
(checkpoint dir whose model.safetensors is a pickle), models.weights.read_state_dict / load_pretrained,
create_model(weights=...), ``midre train --weights`` and ``midre attack --target`` (CLI), priors.Prior.load
and load_prior, attacks.Reconstructions.load, ``midre evaluate``, metrics' Inception-v3 weights, and the
trainer's resume state (train_state.pt).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from midre.errors import CheckpointError


class Evil:
    """Unpickling this calls open(marker, 'w') -- i.e. it creates the marker file (runs code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """(factory(path) -> path of a malicious torch file, marker path)."""
    marker = tmp_path / "PWNED"

    def make(path: Path, fmt: str = "torch") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"state_dict": {"weight": torch.zeros(2)}, "extra": Evil(marker)}
        if fmt == "torch":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))
        return path

    return make, marker


def test_control_the_payload_really_runs_code_when_unpickled_unsafely(evil, tmp_path):
    """Without weights_only the file WOULD run code -- so the refusals below are meaningful."""
    make, marker = evil
    p = make(tmp_path / "evil.pt")
    obj = torch.load(p, weights_only=False)
    assert marker.exists()
    obj["extra"].close()
    marker.unlink()


def _tiny_ckpt(d: Path) -> Path:
    from midre.checkpoint import save_checkpoint
    from midre.defenses import build_defense
    from midre.models import create_model

    m = create_model("tinycnn", num_classes=4, resolution=16)
    return save_checkpoint(d / "model", m, {"arch": "tinycnn", "num_classes": 4, "resolution": 16, "channels": 3,
                                            "model_kwargs": {}, "defense": build_defense("nodef").spec(),
                                            "dataset": {"name": "synthetic", "resolution": 16, "seed": 0,
                                                        "options": {"num_private": 4, "num_public": 2,
                                                                    "images_per_id": 4}}})


def _one_line(e: BaseException) -> None:
    assert str(e) and "\n" not in str(e)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_load_state_refuses(evil, tmp_path, suffix):
    from midre.checkpoint import load_state

    make, marker = evil
    p = make(tmp_path / f"evil{suffix}")
    with pytest.raises(CheckpointError) as ei:
        load_state(p)
    _one_line(ei.value)
    assert not marker.exists()


def test_load_model_refuses_a_pickle_in_place_of_the_weights(evil, tmp_path):
    from midre.loading import load_model

    make, marker = evil
    st = _tiny_ckpt(tmp_path / "ck")
    st.unlink()
    make(st, fmt="pickle")       # model.safetensors is now a plain pickle; model.json is genuine
    with pytest.raises(CheckpointError) as ei:
        load_model(tmp_path / "ck")
    _one_line(ei.value)
    with pytest.raises(CheckpointError):
        load_model(make(tmp_path / "x" / "model.pt"))   # a bare .pt is not a midre checkpoint
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".safetensors"])
def test_pretrained_weights_refused(evil, tmp_path, suffix):
    from midre.models import create_model
    from midre.models.weights import load_pretrained, read_state_dict

    make, marker = evil
    p = make(tmp_path / f"evil{suffix}")
    with pytest.raises(CheckpointError) as ei:
        read_state_dict(p)
    _one_line(ei.value)
    with pytest.raises(CheckpointError):
        load_pretrained(create_model("tinycnn", num_classes=4, resolution=16), p)
    with pytest.raises(CheckpointError):
        create_model("tinycnn", num_classes=4, resolution=16, weights=str(p))
    assert not marker.exists()


def test_plain_weights_only_file_still_loads(tmp_path):
    """The safe path is not just 'refuse everything': a plain tensor state dict loads."""
    from midre.checkpoint import load_state
    from midre.models import create_model
    from midre.models.weights import load_pretrained

    m = create_model("tinycnn", num_classes=4, resolution=16)
    p = tmp_path / "plain.pt"
    torch.save(m.state_dict(), p)
    assert set(load_state(p)) == set(m.state_dict())
    m2 = create_model("tinycnn", num_classes=4, resolution=16)
    load_pretrained(m2, p)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def _cli(argv, capsys) -> tuple[int, str]:
    from midre.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_cli_train_weights_refused(evil, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, marker = evil
    p = make(tmp_path / "evil.pth")
    rc, err = _cli(["train", "--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
                    "--data-option", "num_public=2", "--data-option", "images_per_id=4", "--arch", "tinycnn",
                    "--epochs", "1", "--device", "cpu", "--no-progress", "--weights", str(p),
                    "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "Traceback" not in err and "refused" in err.splitlines()[-1]
    assert not marker.exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_attack_target_refused(evil, tmp_path, capsys):
    make, marker = evil
    st = _tiny_ckpt(tmp_path / "ck")
    st.unlink()
    make(st, fmt="pickle")
    rc, err = _cli(["attack", "--target", str(tmp_path / "ck"), "--attack", "gmi", "--identities", "0-1",
                    "--repeats", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "out" / "reconstructions.json").exists()


def test_prior_loaders_refuse(evil, tmp_path):
    from midre.priors import PRIOR_FORMAT, Prior, load_prior

    make, marker = evil
    d = tmp_path / "prior"
    make(d / "prior.safetensors", fmt="pickle")
    (d / "prior.json").write_text(json.dumps({"format": PRIOR_FORMAT, "kind": "gan"}))
    for fn in (Prior.load, load_prior):
        with pytest.raises(CheckpointError) as ei:
            fn(d)
        _one_line(ei.value)
    assert not marker.exists()


def test_reconstructions_loader_and_cli_evaluate_refuse(evil, tmp_path, capsys):
    from midre.attacks.base import RECON_FORMAT, Reconstructions

    make, marker = evil
    d = tmp_path / "attack"
    make(d / "reconstructions.safetensors", fmt="pickle")
    (d / "reconstructions.json").write_text(json.dumps({"format": RECON_FORMAT, "n": 2}))
    with pytest.raises(CheckpointError) as ei:
        Reconstructions.load(d)
    _one_line(ei.value)
    st = _tiny_ckpt(tmp_path / "ck")
    rc, err = _cli(["evaluate", str(d), "--eval", str(st), "--target", str(st), "--no-fid", "--device", "cpu",
                    "--no-progress"], capsys)
    assert rc == 2 and "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not marker.exists()


def test_inception_weights_refused(evil, tmp_path):
    from midre.metrics import load_inception_extractor

    make, marker = evil
    with pytest.raises(CheckpointError) as ei:
        load_inception_extractor(make(tmp_path / "inception.pth"))
    _one_line(ei.value)
    assert not marker.exists()


def test_training_resume_state_is_never_unpickled(evil, tmp_path, tiny_sets):
    """A tampered train_state.pt in an output dir: resume refuses it (starts over) and runs nothing."""
    from midre.models import create_model
    from midre.training import TrainConfig, train_classifier

    make, marker = evil
    train, test = tiny_sets
    out = tmp_path / "out"
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", seed=0, amp=False)
    train_classifier(create_model("tinycnn", num_classes=4, resolution=16), train, test, config=cfg, out_dir=out)
    # pretend the run was interrupted: a 2-epoch run resumes from train_state.pt, which is now malicious
    make(out / "train_state.pt")
    cfg2 = TrainConfig(epochs=1, batch_size=32, device="cpu", seed=0, amp=False)
    res = train_classifier(create_model("tinycnn", num_classes=4, resolution=16), train, test, config=cfg2,
                           out_dir=out)
    assert res.test_acc >= 0
    assert not marker.exists()
