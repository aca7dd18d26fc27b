"""The bad-input catalog (issue 6): every user mistake -> exit code 2, ONE actionable line on stderr, no
traceback, and nothing half-written in the output directory.

Each case runs the real command line (``midre.cli.main``) in-process; almost all of them fail during
validation, before any training, so the whole catalog takes a few seconds.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _tiny_run import TINY_RUN_YAML  # the tests folder's shared tiny config

from midre.cli import main

TINY_DATA = ["--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
             "--data-option", "num_public=2", "--data-option", "images_per_id=4"]
TRAIN = ["train", *TINY_DATA, "--arch", "tinycnn", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
         "--no-progress"]


def _save_ckpt(stem: Path, num_classes: int = 4, resolution: int = 16, arch: str = "tinycnn") -> Path:
    from midre.checkpoint import save_checkpoint
    from midre.defenses import build_defense
    from midre.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=num_classes, resolution=resolution)
    meta = {"arch": arch, "num_classes": num_classes, "resolution": resolution, "channels": 3, "model_kwargs": {},
            "defense": build_defense("nodef").spec(), "defense_report": {}, "test_acc": 50.0,
            "dataset": {"name": "synthetic", "root": None, "resolution": resolution, "seed": 0,
                        "options": {"num_private": num_classes, "num_public": 2, "images_per_id": 4}}}
    return save_checkpoint(stem, model, meta)


def _tree(root: Path, classes: dict[str, int], corrupt: str | None = None) -> Path:
    """ROOT/<class>/<n images>, optionally one corrupt file in class ``corrupt``."""
    from PIL import Image

    for c, n in classes.items():
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (i * 40 % 255, 80, 120)).save(d / f"{i}.png")
    if corrupt:
        (root / corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return root


def _yaml(tmp: Path, text: str, name: str = "cfg.yaml") -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)




def _run_dir_of_other_config(tmp: Path) -> list[str]:
    """A run dir whose run.json records another target key -> incompatible config."""
    out = tmp / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "midre-run", "kind": "single", "stages": {
        "targets/nodef": {"key": "0000000000000000", "status": "done"}}, "sessions": []}))
    return ["run", _yaml(tmp, TINY_RUN_YAML), "--out", str(out), "--no-progress"]


def _nan_training(tmp: Path) -> list[str]:
    return [*TRAIN, "--lr", "1e30", "--optimizer", "sgd", "--schedule", "none", "--epochs", "2",
            "--batch-size", "16",   # one step per epoch: epoch 1 is finite and saved, epoch 2 diverges

            "--out", str(tmp / "out")]


# name -> (argv builder(tmp) -> list[str], substrings the one stderr line must contain (case-insensitive))
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "area-above-1": (lambda t: [*TRAIN, "--defense", "midre", "--area", "1.5", "--out", str(t / "out")],
                     ["area", "1.5"]),
    "area-below-lower": (lambda t: [*TRAIN, "--defense", "midre", "--area", "0.05", "--out", str(t / "out")],
                         ["area", "lower"]),
    "area-negative": (lambda t: [*TRAIN, "--defense", "midre", "--area", "-0.4", "--out", str(t / "out")],
                      ["area"]),
    "area-for-a-defense-without-it": (lambda t: [*TRAIN, "--defense", "nodef", "--area", "0.4",
                                                 "--out", str(t / "out")], ["--area", "nodef"]),
    "ratio-reversed": (lambda t: [*TRAIN, "--defense", "midre", "--defense-param", "ratio=[2.0, 0.5]",
                                  "--out", str(t / "out")], ["ratio"]),
    "unknown-dataset": (lambda t: ["train", "--dataset", "synthetc", "--out", str(t / "out")],
                        ["synthetc", "did you mean 'synthetic'"]),
    "unknown-arch": (lambda t: [*TRAIN, "--arch", "tinycn", "--out", str(t / "out")], ["tinycn", "did you mean"]),
    "unknown-defense": (lambda t: [*TRAIN, "--defense", "midr", "--out", str(t / "out")], ["midr", "did you mean"]),
    "unknown-attack": (lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model")), "--attack", "gmj",
                                  "--out", str(t / "out")], ["gmj", "did you mean 'gmi'"]),
    "dataset-root-missing": (lambda t: ["train", "--dataset", "imagefolder", "--root", str(t / "nope"),
                                        "--arch", "tinycnn", "--out", str(t / "out")], ["does not exist", "--root"]),
    "dataset-root-needed": (lambda t: ["train", "--dataset", "imagefolder", "--arch", "tinycnn",
                                       "--out", str(t / "out")], ["--root"]),
    "dataset-wrong-layout": (lambda t: ["train", "--dataset", "imagefolder", "--root",
                                        str(_flat_images(t / "flat")), "--arch", "tinycnn", "--out", str(t / "out")],
                             ["layout"]),
    "corrupt-image-file": (lambda t: [*TRAIN[:1], "--dataset", "imagefolder", "--root",
                                      str(_tree(t / "data", {"a": 3, "b": 3}, corrupt="a")), "--resolution", "16",
                                      "--arch", "tinycnn", "--epochs", "1", "--device", "cpu", "--no-progress",
                                      "--out", str(t / "out")], ["broken.png"]),
    "empty-identity": (lambda t: ["train", "--dataset", "imagefolder", "--root",
                                  str(_tree(t / "data", {"a": 3, "b": 0})), "--arch", "tinycnn",
                                  "--out", str(t / "out")], ["holds no images"]),
    "celeba-split-file-naming-missing-files": (lambda t: _celeba_with_bad_split(t), ["split file", "not in"]),
    "checkpoint-class-count-mismatch": (
        lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model", num_classes=4)),
                   "--eval", str(_save_ckpt(t / "ev" / "model", num_classes=6)), "--attack", "gmi",
                   "--identities", "0-1", "--out", str(t / "out")], ["classes"]),
    "checkpoint-architecture-mismatch": (lambda t: _arch_mismatch(t), ["does not match"]),
    "weights-of-another-architecture": (lambda t: [*TRAIN, "--weights", str(_save_ckpt(t / "w" / "model",
                                                                                          arch="smallcnn")),
                                                   "--out", str(t / "out")], ["do not fit"]),
    "truncated-checkpoint": (lambda t: _truncated(t), ["truncated or corrupt"]),
    "non-checkpoint-file": (lambda t: _non_ckpt(t), ["not a midre checkpoint"]),
    "missing-target-file": (lambda t: ["attack", "--target", str(t / "missing" / "model.safetensors"),
                                       "--attack", "gmi", "--out", str(t / "out")], ["not found"]),
    "invalid-yaml": (lambda t: ["run", _yaml(t, "name: [unclosed\n  seed: 0\n"), "--out", str(t / "out")],
                     ["yaml"]),
    "empty-yaml": (lambda t: ["run", _yaml(t, ""), "--out", str(t / "out")], ["required"]),
    "yaml-is-a-list": (lambda t: ["run", _yaml(t, "- a\n- b\n"), "--out", str(t / "out")], ["mapping"]),
    "unknown-config-key": (lambda t: ["run", _yaml(t, TINY_RUN_YAML + "atacks_extra: 1\n"), "--out", str(t / "out")],
                           ["atacks_extra"]),
    "mistyped-config-key": (lambda t: ["run", _yaml(t, TINY_RUN_YAML.replace("metrics:", "metircs:")),
                                       "--out", str(t / "out")], ["metircs", "did you mean 'metrics'"]),
    "negative-epochs": (lambda t: [*TRAIN, "--epochs", "-3", "--out", str(t / "out")], ["--epochs"]),
    "zero-batch-size": (lambda t: [*TRAIN, "--batch-size", "0", "--out", str(t / "out")], ["--batch-size"]),
    "negative-attack-iterations-in-config": (
        lambda t: ["run", _yaml(t, TINY_RUN_YAML.replace("iterations: 2}, identities", "iterations: -5}, identities")),
                   "--out", str(t / "out")], ["iterations"]),
    "negative-epochs-in-config": (lambda t: ["run", _yaml(t, TINY_RUN_YAML.replace(
        "eval_model: {arch: tinycnn, train: {epochs: 1", "eval_model: {arch: tinycnn, train: {epochs: -1")),
        "--out", str(t / "out")], ["epochs"]),
    "identities-out-of-range": (lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model")),
                                           "--attack", "gmi", "--identities", "0-9", "--out", str(t / "out")],
                                ["out of range"]),
    "identities-reversed-range": (lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model")),
                                             "--attack", "gmi", "--identities", "3-1", "--out", str(t / "out")],
                                  ["3-1"]),
    "identities-garbage": (lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model")),
                                      "--attack", "gmi", "--identities", "all-of-them!", "--out", str(t / "out")],
                           ["identities"]),
    "identities-out-of-range-in-config": (lambda t: ["run", _yaml(t, TINY_RUN_YAML.replace('"0-1"', '"0-40"')),
                                                     "--out", str(t / "out")], ["identities"]),
    "zero-repeats": (lambda t: ["attack", "--target", str(_save_ckpt(t / "ck" / "model")), "--attack", "gmi",
                                "--repeats", "0", "--out", str(t / "out")], ["--repeats"]),
    "output-under-a-regular-file": (lambda t: [*TRAIN, "--out", str(_file(t / "afile") / "sub")], ["afile"]),
    "run-out-is-a-file": (lambda t: ["run", _yaml(t, TINY_RUN_YAML), "--out", str(_file(t / "out"))],
                          ["is a file"]),
    "run-dir-of-an-incompatible-config": (_run_dir_of_other_config, ["incompatible config"]),
    "resume-a-dir-without-a-run": (lambda t: ["run", "--resume", str(t)], ["no run.json"]),
    "bad-device": (lambda t: [*TRAIN[:-3], "--device", "tpu:7", "--no-progress", "--out", str(t / "out")],
                   ["device", "tpu:7"]),
    "cuda-device-without-gpu": (lambda t: [*TRAIN[:-3], "--device", "cuda:0", "--no-progress",
                                           "--out", str(t / "out")], ["cuda"]),
    "bad-data-option-syntax": (lambda t: [*TRAIN, "--data-option", "num_private", "--out", str(t / "out")],
                               ["KEY=VALUE"]),
    "unknown-data-option": (lambda t: [*TRAIN, "--data-option", "num_privat=3", "--out", str(t / "out")],
                            ["num_privat"]),
    "resolution-too-small": (lambda t: [*TRAIN, "--resolution", "2", "--out", str(t / "out")], ["resolution"]),
    "unknown-subcommand-option": (lambda t: [*TRAIN, "--epoch", "x", "--out", str(t / "out")], ["--epoch"]),
    "nan-loss-during-training": (_nan_training, ["nan", "checkpoint"]),
    "checkpoint-class-count-vs-its-dataset": (lambda t: ["attack", "--target", str(_patch_meta(
        _save_ckpt(t / "ck" / "model", num_classes=6), ("dataset", "options", "num_private"), 4)), "--attack", "gmi",
        "--identities", "0-1", "--repeats", "1", "--device", "cpu", "--no-progress", "--out", str(t / "out")],
        ["6 classes", "4 identities"]),
    "checkpoint-resolution-vs-the-data": (lambda t: ["attack", "--target", str(_patch_meta(
        _save_ckpt(t / "ck" / "model", resolution=24), ("dataset", "resolution"), 16)), "--attack", "gmi",
        "--identities", "0-1", "--repeats", "1", "--device", "cpu", "--no-progress", "--out", str(t / "out")],
        ["16 px", "24 px"]),
    "report-of-a-missing-run-dir": (lambda t: ["report", str(t / "nothere")], ["not found"]),
    "evaluate-a-dir-without-reconstructions": (lambda t: ["evaluate", str(t), "--no-progress"],
                                               ["no reconstructions"]),
    "evaluate-bad-topk": (lambda t: ["evaluate", str(t), "--topk", "0,x", "--no-progress"], ["--topk"]),
    "sweep-config-without-a-sweep-section": (lambda t: ["sweep", _yaml(t, TINY_RUN_YAML), "--out", str(t / "out")],
                                             ["sweep"]),
    "unknown-built-in-config": (lambda t: ["run", "quickstar", "--out", str(t / "out")], ["quickstart"]),
    "negative-seed-override": (lambda t: ["run", _yaml(t, TINY_RUN_YAML), "--set", "seed=-4",
                                          "--out", str(t / "out")], ["seed"]),
    "zero-repeats-in-config": (lambda t: ["run", _yaml(t, TINY_RUN_YAML), "--set", "attacks.0.repeats=0",
                                          "--out", str(t / "out")], ["repeats"]),
    "negative-prior-batch-size": (lambda t: ["run", _yaml(t, TINY_RUN_YAML), "--set",
                                             "priors.params.gan.batch_size=-1", "--out", str(t / "out")],
                                  ["batch_size"]),
}


# cases that can only fail once work has started (training diverges); the informational lines printed
# before it are allowed, the error is still exactly one line and the last one
LATE = {"nan-loss-during-training"}


def _patch_meta(st: Path, keys: tuple, value) -> Path:
    """Edit one nested key of a checkpoint's JSON metadata (the weights stay as they are)."""
    js = st.with_suffix(".json")
    meta = json.loads(js.read_text())
    d = meta
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    js.write_text(json.dumps(meta))
    return st


def _flat_images(root: Path) -> Path:
    """Images directly under ROOT (no class sub-folders): the wrong layout for imagefolder."""
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 50, 10, 10)).save(root / f"{i}.png")
    return root


def _file(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("I am a regular file\n")
    return p


def _celeba_with_bad_split(t: Path) -> list[str]:
    from PIL import Image

    img = t / "celeba" / "img_align_celeba"
    img.mkdir(parents=True)
    lines = []
    for i in range(6):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (30, 36), (i * 30, 60, 90)).save(img / name)
        lines.append(f"{name} {i % 3 + 1}")
    (t / "celeba" / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    split = t / "split.txt"
    split.write_text("000001.jpg 0 train\n000002.jpg 1 train\n999999.jpg 1 test\n")
    return ["train", "--dataset", "celeba", "--root", str(t / "celeba"), "--data-option", f"split_file={split}",
            "--arch", "tinycnn", "--out", str(t / "out")]


def _arch_mismatch(t: Path) -> list[str]:
    """Weights of a tinycnn under metadata that claims smallcnn."""
    st = _save_ckpt(t / "ck" / "model", arch="tinycnn")
    js = st.with_suffix(".json")
    meta = json.loads(js.read_text())
    meta["arch"] = "smallcnn"
    js.write_text(json.dumps(meta))
    return ["attack", "--target", str(st), "--attack", "gmi", "--identities", "0-1", "--repeats", "1",
            "--device", "cpu", "--no-progress", "--out", str(t / "out")]


def _truncated(t: Path) -> list[str]:
    st = _save_ckpt(t / "ck" / "model")
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    return ["attack", "--target", str(st), "--attack", "gmi", "--identities", "0-1", "--repeats", "1",
            "--device", "cpu", "--no-progress", "--out", str(t / "out")]


def _non_ckpt(t: Path) -> list[str]:
    p = _file(t / "notes.txt")
    return ["attack", "--target", str(p), "--attack", "gmi", "--out", str(t / "out")]


def _half_written(root: Path, out: Path) -> list[str]:
    """Temp files anywhere under root; unparsable JSON or unloadable safetensors under out."""
    from safetensors.torch import load_file

    bad = [f"temp file {p}" for p in root.rglob("*.tmp")]
    if not out.exists():
        return bad
    for p in out.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except ValueError:
                bad.append(f"bad json {p}")
        elif p.suffix == ".safetensors":
            try:
                load_file(str(p))
            except Exception:
                bad.append(f"bad safetensors {p}")
    return bad


def test_catalog_has_at_least_25_distinct_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, needles = CASES[case]
    argv = build(tmp_path)
    if argv[0] == "run" and "--no-progress" not in argv:
        argv.append("--no-progress")
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:   # argparse usage errors
        rc = e.code
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    if case in LATE:   # fails after the informational "training ..." lines: the error is the one last line
        assert sum("error" in ln for ln in lines) == 1, cap.err[-2000:]
        lines = lines[-1:]
    assert rc == 2, (rc, cap.err[-2000:])
    assert len(lines) == 1, cap.err[-2000:]
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert len(lines[0]) < 600
    assert not _half_written(tmp_path, tmp_path / "out"), _half_written(tmp_path, tmp_path / "out")
    if case == "nan-loss-during-training":
        # the last good checkpoint (epoch 1) is kept and loads
        from midre.loading import load_model

        model, meta = load_model(tmp_path / "out")
        assert meta["epoch"] == 1 and all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------- library-level validation
@pytest.mark.parametrize("cls,bad", [
    ("BatchRandomErasing", torch.rand(3, 16, 16)),                    # no batch dimension
    ("BatchRandomErasing", torch.rand(2, 3, 16)),                     # not an image batch
    ("BatchRandomErasing", (torch.rand(2, 3, 16, 16) * 255).long()),  # integer tensor, not [0, 1] floats
    ("RandomErasing", torch.rand(2, 3, 16, 16)),                      # a batch given to the per-image eraser
    ("RandomErasing", torch.zeros(3, 0, 16)),                         # empty image
    ("RandomErasing", [[0.0, 1.0]]),                                  # not a tensor
])
def test_eraser_refuses_non_image_inputs(cls, bad):
    from midre import erasing
    from midre.errors import ArgumentError

    er = getattr(erasing, cls)(area=0.4)
    with pytest.raises(ArgumentError) as ei:
        er(bad)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("cls", ["RandomErasing", "BatchRandomErasing"])
def test_region_larger_than_the_image_is_refused(cls):
    from midre import erasing
    from midre.errors import ArgumentError

    er = getattr(erasing, cls)(size=64)
    x = torch.rand(2, 3, 16, 16) if cls.startswith("Batch") else torch.rand(3, 16, 16)
    with pytest.raises(ArgumentError, match="larger than"):
        er(x)


def test_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch):
    """os.replace failing with ENOSPC: one-line RunDirError, no temp file, the old file intact."""
    import errno

    from midre.errors import RunDirError
    from midre.utils import atomic_write_json

    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"ok": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(RunDirError) as ei:
        atomic_write_json(target, {"ok": 2})
    assert "\n" not in str(ei.value) and "space" in str(ei.value).lower()
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_dev_full_write_is_a_one_line_error():
    """A real ENOSPC from the kernel (/dev/full, present on every Linux CI machine)."""
    from midre.errors import RunDirError
    from midre.utils import atomic_path

    assert Path("/dev/full").exists()
    # atomic_path writes next to the target; emulate a full disk by making the body write to /dev/full
    with pytest.raises(RunDirError):
        with atomic_path(Path("/tmp") / "midre-dev-full-test.json"):
            with open("/dev/full", "w") as fh:
                fh.write("x" * 10)
                fh.flush()
    assert not Path("/tmp/midre-dev-full-test.json").exists()
