"""The bad-input catalog, extended to the commands added after it (issue 25): audit, convert, userstudy, zoo,
analyze and report, plus the three holes found by trying them as a new user would:

- an image over the pixel limit (a PNG header declaring 60,000 x 60,000 pixels, a decompression bomb) is
  skipped with one warning line naming it, or refused in one line when skipping would leave a class empty;
- an ``--out`` (or ``--zoo-dir``, ``--work``, ``--prior-dir``) that is a non-empty folder midre did not make
  is refused before anything is written into it; one's own earlier output is still continued;
- a refused ``.pth`` prints midre's one line only (torch's pickle-protocol warning is captured, and the
  protocol goes into the line).

Every catalog case runs the real command line in-process and checks: exit code 2, exactly one line on
stderr that names the problem, no traceback, no library warning, and nothing written (every file and folder
under the test's directory is byte-for-byte and time-stamp the same afterwards).
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _tiny_run import TINY_RUN_YAML  # the tests folder's shared tiny config

from midre.cli import main


# ------------------------------------------------------------------------------------------- files
def bomb_png(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (the classic decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def tree(root: Path, classes: dict[str, int], size: int = 20, hue: int = 0) -> Path:
    """ROOT/<class>/<n images>; ``hue`` keeps two trees' images apart (no accidental overlap)."""
    from PIL import Image

    for k, (c, n) in enumerate(classes.items()):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), ((i * 37 + hue) % 256, (k * 60 + hue) % 256, 120)).save(d / f"{i}.png")
    return root


def user_folder(p: Path) -> Path:
    """A folder of the user's own: a notes file and an images/ sub-folder with a picture."""
    (p / "images").mkdir(parents=True, exist_ok=True)
    (p / "notes.txt").write_text("my own notes\n")
    (p / "images" / "1.png").write_bytes(b"\x89PNG my holiday picture")
    return p


def state_dict_file(path: Path, arch: str = "tinycnn", num_classes: int = 3, resolution: int = 16) -> Path:
    from midre.models import create_model

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create_model(arch, num_classes=num_classes, resolution=resolution).state_dict(), path)
    return path


class _Smuggler:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def unsafe_pth(path: Path, protocol: int = 4) -> Path:
    """A pickle that would run a shell command, in a protocol torch's weights-only loader warns about."""
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Smuggler()}, fh, protocol=protocol)
    return path


def fabricated_run(run: Path) -> Path:
    """A `midre run`-like folder (config.yaml + two targets' reconstructions) without run.json."""
    import yaml

    from midre.attacks.base import Reconstructions

    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "fab", "seed": 0, "dataset": {
        "name": "synthetic", "resolution": 16, "seed": 0,
        "options": {"num_private": 4, "num_public": 0, "images_per_id": 4}}}))
    g = torch.Generator().manual_seed(0)
    for t in ("nodef", "midre"):
        ids = torch.arange(4).repeat_interleave(2)
        Reconstructions(torch.rand(len(ids), 3, 16, 16, generator=g), ids, torch.arange(2).repeat(4),
                        torch.rand(len(ids), generator=g), {"attack": "gmi"}).save(run / "attacks" / t / "gmi")
    return run


def _file(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------- audit
def audit(t: Path, model: Path, *extra: str, data: Path | None = None, public: Path | None = None,
          arch: str | None = "tinycnn", out: Path | None = None) -> list[str]:
    data = data if data is not None else tree(t / "data", {"a": 4, "b": 4, "c": 4})
    public = public if public is not None else tree(t / "pub", {"p": 6}, size=24, hue=101)
    return ["audit", str(model), *(["--arch", arch] if arch else []), "--data", str(data), "--public", str(public),
            "--resolution", "16", "--device", "cpu", "--no-progress", "--out", str(out or t / "out"), *extra]


def _truncated(p: Path) -> Path:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _renamed_png(t: Path) -> Path:
    src = tree(t / "img", {"x": 1})
    p = t / "model.pth"
    p.write_bytes((src / "x" / "0.png").read_bytes())
    return p


def _torchscript(t: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # torch.jit.script's deprecation note, not the code under test
        m = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)))
    m.save(str(t / "scripted.pt"))
    return t / "scripted.pt"


def _bomb_class(t: Path) -> Path:
    root = tree(t / "data", {"a": 4, "b": 4})
    bomb_png(root / "c" / "scan.png")
    return root


AUDIT_CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "audit-class-of-only-a-decompression-bomb": (lambda t: audit(t, state_dict_file(t / "m.pth"), data=_bomb_class(t)),
                                                 ["scan.png", "pixel limit"]),
    "audit-public-folder-of-only-a-bomb": (lambda t: audit(t, state_dict_file(t / "m.pth"),
                                                           public=bomb_png(t / "pub" / "big.png").parent),
                                           ["big.png", "pixel limit"]),
    "audit-unsafe-pth-protocol-4": (lambda t: audit(t, unsafe_pth(t / "m.pth")),
                                    ["refused", "could run code", "pickle protocol 4"]),
    "audit-unsafe-pth-protocol-2": (lambda t: audit(t, unsafe_pth(t / "m.pth", protocol=2)),
                                    ["refused", "posix.system"]),
    "audit-weights-of-another-architecture": (lambda t: audit(t, state_dict_file(t / "m.pth", arch="smallcnn")),
                                              ["do not fit", "tinycnn"]),
    "audit-truncated-pth": (lambda t: audit(t, _truncated(state_dict_file(t / "m.pth"))), ["corrupt"]),
    "audit-png-renamed-to-pth": (lambda t: audit(t, _renamed_png(t)), ["not a pickle"]),
    "audit-torchscript-given-an-arch": (lambda t: audit(t, _torchscript(t)), ["TorchScript", "drop --arch"]),
    "audit-state-dict-without-arch": (lambda t: audit(t, state_dict_file(t / "m.pth"), arch=None),
                                      ["not a TorchScript", "--arch"]),
    "audit-model-of-other-class-count": (lambda t: audit(t, state_dict_file(t / "m.pth", num_classes=5)),
                                         ["3 classes"]),
    "audit-public-overlaps-private": (lambda t: audit(t, state_dict_file(t / "m.pth"),
                                                      public=tree(t / "data", {"a": 4, "b": 4, "c": 4})),
                                      ["shares", "--public"]),
    "audit-one-class-folder": (lambda t: audit(t, state_dict_file(t / "m.pth"), data=tree(t / "one", {"a": 4})),
                               ["at least 2"]),
    "audit-empty-class-folder": (lambda t: audit(t, state_dict_file(t / "m.pth"),
                                                 data=tree(t / "data", {"a": 4, "b": 4, "c": 0})), ["holds no images"]),
    "audit-identities-reversed": (lambda t: audit(t, state_dict_file(t / "m.pth"), "--identities", "2-0"),
                                  ["reversed"]),
    "audit-identities-out-of-range": (lambda t: audit(t, state_dict_file(t / "m.pth"), "--identities", "0-7"),
                                      ["out of range", "0-2"]),
    "audit-classes-not-in-the-data": (lambda t: audit(t, state_dict_file(t / "m.pth"), "--classes", "a,b,z"),
                                      ["'z'"]),
    "audit-eval-is-foreign-json": (lambda t: audit(t, state_dict_file(t / "m.pth"), "--eval",
                                                   str(_file(t / "eval.json", '{"hello": 1}'))),
                                   ["not midre checkpoint metadata"]),
    "audit-data-is-a-csv-file": (lambda t: audit(t, state_dict_file(t / "m.pth"), data=_file(t / "d.csv", "a,b\n")),
                                 ["neither an existing folder"]),
    "audit-out-is-a-foreign-folder": (lambda t: audit(t, state_dict_file(t / "m.pth"), out=user_folder(t / "mine")),
                                      ["holds no midre audit", "--out"]),
    "audit-out-is-a-midre-run": (lambda t: audit(t, state_dict_file(t / "m.pth"), out=fabricated_run(t / "run")),
                                 ["holds no midre audit"]),
}


# ------------------------------------------------------------------------------------------- the other commands
def _train(t: Path, root: Path, out: Path, epochs: int = 1) -> list[str]:
    return ["train", "--dataset", "imagefolder", "--root", str(root), "--resolution", "16", "--arch", "tinycnn",
            "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--out", str(out)]


def _celeba_with_a_bomb(t: Path) -> list[str]:
    """A CelebA-style root whose identity file lists a 60,000 x 60,000 'jpg' (found when decoded)."""
    from PIL import Image

    img = t / "celeba" / "img_align_celeba"
    img.mkdir(parents=True)
    lines = []
    for i in range(9):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (30, 36), (i * 25, 60, 90)).save(img / name, format="JPEG")
        lines.append(f"{name} {i % 3 + 1}")
    bomb_png(img / "000010.jpg")
    lines.append("000010.jpg 1")
    (t / "celeba" / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return ["train", "--dataset", "celeba", "--root", str(t / "celeba"), "--data-option", "num_private=2",
            "--resolution", "16", "--arch", "tinycnn", "--epochs", "1", "--device", "cpu", "--no-progress",
            "--out", str(t / "out")]


def _midre_checkpoint(stem: Path) -> Path:
    from midre.checkpoint import save_checkpoint
    from midre.defenses import build_defense
    from midre.models import create_model

    meta = {"arch": "tinycnn", "num_classes": 4, "resolution": 16, "channels": 3, "model_kwargs": {},
            "defense": build_defense("nodef").spec(), "test_acc": 50.0,
            "dataset": {"name": "synthetic", "root": None, "resolution": 16, "seed": 0,
                        "options": {"num_private": 4, "num_public": 2, "images_per_id": 4}}}
    return save_checkpoint(stem, create_model("tinycnn", num_classes=4, resolution=16), meta)


def _audit_run_json(out: Path) -> Path:
    _file(out / "run.json", json.dumps({"format": "midre-run", "kind": "single", "command": "audit",
                                        "stages": {}, "sessions": []}))
    return out


def _sweep_yaml(t: Path) -> str:
    return str(_file(t / "sweep.yaml", TINY_RUN_YAML + "sweep: {grid: {seed: [0, 1]}}\n"))


def _key(t: Path) -> Path:
    return _file(t / "key.json", json.dumps({"format": "midre-userstudy-key", "study_id": "s", "pairs": []}))


CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    **AUDIT_CASES,
    # train / run / attack / sweep: foreign --out folders, images over the pixel limit
    "train-out-is-a-foreign-folder": (lambda t: _train(t, tree(t / "data", {"a": 3, "b": 3}), user_folder(t / "mine")),
                                      ["holds no midre training output", "images", "--out"]),
    "train-out-is-the-data-folder": (lambda t: _train(t, tree(t / "data", {"a": 3, "b": 3}), t / "data"),
                                     ["holds no midre training output", "'a'"]),
    "train-class-of-only-a-decompression-bomb": (lambda t: _train(t, _bomb_class(t), t / "out"),
                                                 ["scan.png", "pixel limit"]),
    "train-celeba-file-over-the-pixel-limit": (_celeba_with_a_bomb, ["000010.jpg", "pixel limit"]),
    "run-out-holds-an-audit": (lambda t: ["run", str(_file(t / "c.yaml", TINY_RUN_YAML)), "--out",
                                          str(_audit_run_json(t / "out")), "--no-progress"], ["audit"]),
    "run-out-is-a-foreign-folder": (lambda t: ["run", str(_file(t / "c.yaml", TINY_RUN_YAML)), "--out",
                                               str(user_folder(t / "mine")), "--no-progress"], ["holds no midre run"]),
    "attack-out-is-a-foreign-folder": (lambda t: ["attack", "--target", str(_midre_checkpoint(t / "ck" / "model")),
                                                  "--attack", "gmi", "--identities", "0-1", "--out",
                                                  str(user_folder(t / "mine"))], ["holds no midre attack output"]),
    "attack-prior-dir-is-a-foreign-folder": (lambda t: ["attack", "--target", str(_midre_checkpoint(t / "ck" / "model")),
                                                        "--attack", "gmi", "--out", str(t / "out"), "--prior-dir",
                                                        str(user_folder(t / "mine"))], ["prior cache", "--prior-dir"]),
    "sweep-out-is-a-foreign-folder": (lambda t: ["sweep", _sweep_yaml(t), "--out", str(user_folder(t / "mine")),
                                                 "--no-progress"], ["holds no midre sweep"]),
    "evaluate-foreign-reconstructions-json": (lambda t: ["evaluate", str(_file(t / "rec" / "reconstructions.json",
                                                                               '{"hello": 1}').parent), "--no-progress"],
                                              ["reconstructions"]),
    # convert
    "convert-not-a-pickle": (lambda t: ["convert", "stylegan2", str(_file(t / "g.pkl", "not a pickle")),
                                        "--out", str(t / "out")], ["StyleGAN2 pickle"]),
    "convert-pickle-that-runs-code": (lambda t: ["convert", "stylegan2", str(unsafe_pth(t / "g.pkl", protocol=2)),
                                                 "--out", str(t / "out")], ["posix.system"]),
    "convert-a-torch-state-dict": (lambda t: ["convert", "stylegan2", str(state_dict_file(t / "g.pkl")),
                                              "--out", str(t / "out")], ["g.pkl"]),
    "convert-missing-file": (lambda t: ["convert", "stylegan2", str(t / "nope.pkl"), "--out", str(t / "out")],
                             ["not found"]),
    "convert-out-is-a-foreign-folder": (lambda t: ["convert", "stylegan2", str(t / "nope.pkl"), "--out",
                                                   str(user_folder(t / "mine"))], ["holds no midre converted generator"]),
    # userstudy
    "userstudy-make-out-is-a-foreign-folder": (lambda t: ["userstudy", "make", str(fabricated_run(t / "run")), "--out",
                                                          str(user_folder(t / "mine"))], ["holds no midre user study"]),
    "userstudy-make-on-a-foreign-folder": (lambda t: ["userstudy", "make", str(user_folder(t / "mine"))],
                                           ["no reconstructions"]),
    "userstudy-make-zero-identities": (lambda t: ["userstudy", "make", str(fabricated_run(t / "run")),
                                                  "--max-identities", "0"], ["--max-identities"]),
    "userstudy-tally-foreign-json": (lambda t: ["userstudy", "tally", str(_file(t / "v.json", '{"a": 1}')),
                                                "--key", str(_key(t))], ["not a midre user-study votes"]),
    "userstudy-tally-foreign-csv": (lambda t: ["userstudy", "tally", str(_file(t / "v.csv", "a,b\n1,2\n")),
                                               "--key", str(_key(t))], ["pair_id"]),
    "userstudy-tally-foreign-key": (lambda t: ["userstudy", "tally", str(_file(t / "v.csv", "pair_id,answer,rater\n"
                                                                                "p1,left,r1\n")),
                                               "--key", str(_file(t / "k.json", '{"a": 1}'))], ["k.json"]),
    "userstudy-tally-json-would-overwrite-the-votes": (lambda t: ["userstudy", "tally", str(_file(
        t / "v.csv", "pair_id,answer,rater\np1,left,r1\n")), "--key", str(_key(t)), "--json", str(t / "v.csv")],
        ["--json", "overwritten"]),
    # zoo
    "zoo-check-a-folder-without-a-manifest": (lambda t: ["zoo", "check", "--zoo-dir", str(user_folder(t / "mine"))],
                                              ["no manifest.json"]),
    "zoo-check-a-foreign-manifest": (lambda t: ["zoo", "check", "--zoo-dir",
                                                str(_file(t / "z" / "manifest.json", '{"hello": 1}').parent)],
                                     ["not a midre zoo manifest"]),
    "zoo-list-a-missing-folder": (lambda t: ["zoo", "list", "--zoo-dir", str(t / "nope")], ["no manifest.json"]),
    "zoo-build-unknown-entry": (lambda t: ["zoo", "build", "quickstart-evl", "--zoo-dir", str(t / "z")],
                                ["quickstart-evl", "did you mean"]),
    "zoo-build-zoo-dir-is-a-foreign-folder": (lambda t: ["zoo", "build", "--zoo-dir", str(user_folder(t / "mine"))],
                                              ["holds no midre zoo", "--zoo-dir"]),
    "zoo-build-work-is-a-foreign-folder": (lambda t: ["zoo", "build", "--zoo-dir", str(t / "z"), "--work",
                                                      str(user_folder(t / "mine"))], ["zoo work folder", "--work"]),
    # analyze and report
    "analyze-features-on-a-foreign-folder": (lambda t: ["analyze", "features", str(user_folder(t / "mine"))],
                                             ["not a midre run"]),
    "analyze-paired-on-a-foreign-folder": (lambda t: ["analyze", "paired", str(user_folder(t / "mine"))],
                                           ["run.json"]),
    "analyze-curve-on-a-foreign-csv": (lambda t: ["analyze", "curve", str(_file(t / "mine" / "results.csv",
                                                                              "a,b\n1,2\n").parent)], ["a_e"]),
    "analyze-concealment-out-is-a-foreign-folder": (lambda t: ["analyze", "concealment", "--out",
                                                               str(user_folder(t / "mine")), "--no-progress"],
                                                    ["holds no midre run"]),
    "analyze-concealment-level-out-of-range": (lambda t: ["analyze", "concealment", "--out", str(t / "out"),
                                                          "--levels", "0", "--no-progress"], ["level"]),
    "analyze-features-reversed-identities": (lambda t: ["analyze", "features", str(_audit_run_json(t / "run")),
                                                        "--identities", "5-2"], ["5-2"]),
    "report-on-a-foreign-folder-with-a-results-csv": (lambda t: ["report", str(_file(t / "mine" / "results.csv",
                                                                                    "a,b\n1,2\n").parent)],
                                                      ["not a midre run"]),
}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root with its size, time stamp and (files) content hash."""
    import hashlib

    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
    return out


def test_catalog_covers_the_commands_added_since_the_first_catalog():
    commands = {name.split("-")[0] for name in CASES}
    assert {"audit", "convert", "userstudy", "zoo", "analyze", "train", "run", "attack", "sweep"} <= commands
    assert len(CASES) >= 50


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIDRE_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setenv("MIDRE_ZOO_DIR", str(tmp_path / "no-zoo-here"))
    build, needles = CASES[case]
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:   # argparse usage errors
        rc = e.code
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert rc == 2, (rc, cap.err[-2000:])
    assert len(lines) == 1, cap.err[-2000:]
    assert "Traceback" not in cap.err + cap.out
    assert "warning" not in cap.err.lower(), cap.err       # no library warning before midre's line
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert len(lines[0]) < 600
    after = snapshot(tmp_path)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"written: {changed[:5]}"


# ------------------------------------------------------------------------------------------- what still works
def test_an_oversized_image_is_skipped_with_one_warning_naming_it(tmp_path, capsys, monkeypatch):
    """A bomb beside ordinary images: one warning line naming the file, then a normal run; the defense prints
    as its name."""
    monkeypatch.delenv("MIDRE_MAX_IMAGE_PIXELS", raising=False)
    root = tree(tmp_path / "data", {"a": 4, "b": 4})
    bomb_png(root / "a" / "huge-scan.png")
    capsys.readouterr()
    assert main(_train(tmp_path, root, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    warns = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert len(warns) == 1 and "huge-scan.png" in warns[0] and "pixel limit" in warns[0], err
    assert "Traceback" not in err and "with defense nodef for 1 epochs" in err, err
    assert (tmp_path / "out" / "model.json").exists()


def test_the_pixel_limit_can_be_set_and_a_bad_setting_is_one_line(tmp_path, capsys, monkeypatch):
    from midre.data import load_dataset
    from midre.data.folders import load_public
    from midre.errors import ArgumentError

    root = tree(tmp_path / "data", {"a": 3, "b": 3}, size=20)
    tree(root, {"a": 1}, size=40)            # a/0.png becomes 40 x 40 = 1,600 pixels
    monkeypatch.setenv("MIDRE_MAX_IMAGE_PIXELS", "1000")
    splits = load_dataset("imagefolder", root=str(root), resolution=16)
    names = [Path(f).name for f in splits.private_train.files + splits.private_test.files]
    assert len(names) == 5 and "'" + str(root / "a" / "0.png") + "'" in capsys.readouterr().err
    assert len(load_public("images", root=str(root), resolution=16)) == 5
    monkeypatch.setenv("MIDRE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ArgumentError, match="MIDRE_MAX_IMAGE_PIXELS") as ei:
        load_dataset("imagefolder", root=str(root), resolution=16)
    assert "\n" not in str(ei.value)


def test_a_file_over_the_limit_met_while_decoding_is_one_data_error(tmp_path):
    from midre.data.folders import FileImageSet
    from midre.errors import DataError

    ds = FileImageSet([bomb_png(tmp_path / "b.png", 20_000, 20_000)], [0], 16)
    with pytest.raises(DataError, match="b.png") as ei:
        ds[0]
    assert "pixel limit" in str(ei.value) and "\n" not in str(ei.value)


def test_own_outputs_are_continued(tmp_path, capsys):
    """Resuming one's own training output still works; a train output is refused as an attack's --out."""
    root = tree(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("the user's note beside their model\n")
    assert main(_train(tmp_path, root, tmp_path / "out")) == 2           # not empty, not midre's: refused
    (tmp_path / "out" / "notes.txt").unlink()
    assert main(_train(tmp_path, root, tmp_path / "out")) == 0
    (tmp_path / "out" / "notes.txt").write_text("the user's note beside their model\n")
    assert main(_train(tmp_path, root, tmp_path / "out")) == 0           # its own output: continued
    assert len(json.loads((tmp_path / "out" / "history.json").read_text())) == 1
    capsys.readouterr()
    ck = _midre_checkpoint(tmp_path / "ck" / "model")
    assert main(["attack", "--target", str(ck), "--attack", "gmi", "--out", str(tmp_path / "out")]) == 2
    assert "holds no midre attack output" in capsys.readouterr().err


def test_check_out_recognises_each_commands_own_output(tmp_path):
    from midre.cli.attack import is_attack_output, is_prior_cache
    from midre.cli.train import is_training_output
    from midre.errors import RunDirError
    from midre.rundir import check_out, prepare_dir

    fab = fabricated_run(tmp_path / "run")
    assert is_attack_output(fab / "attacks" / "nodef" / "gmi") and not is_attack_output(fab)
    ck = _midre_checkpoint(tmp_path / "train" / "model").parent
    assert is_training_output(ck) and not is_training_output(fab)
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "train_state.pt").write_bytes(b"")          # killed before the first checkpoint
    assert is_training_output(tmp_path / "killed")
    (tmp_path / "priors" / "gan-0123abcd").mkdir(parents=True)            # a prior killed while training
    assert is_prior_cache(tmp_path / "priors") and not is_prior_cache(user_folder(tmp_path / "pics"))
    check_out(tmp_path / "new" / "deeper", "thing", lambda d: False)      # a new folder is always fine
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("")
    check_out(tmp_path / "empty", "thing", lambda d: False)               # hidden entries do not count
    with pytest.raises(RunDirError, match="holds a midre audit"):
        prepare_dir(_audit_run_json(tmp_path / "audit"), resume=True)
    with pytest.raises(RunDirError, match="'images' and 1 more"):
        check_out(user_folder(tmp_path / "mine") / "images" / "..", "thing", lambda d: False)


def test_defenses_and_attacks_print_as_name_and_settings():
    from midre.attacks import build_attack
    from midre.defenses import build_defense

    assert str(build_defense("nodef")) == "nodef"
    assert repr(build_defense("midre")) == "midre(area=0.4)"
    assert repr(build_defense({"name": "midre", "area": 0.6, "fill": "zero"})) == "midre(area=0.6, fill='zero')"
    assert repr(build_defense(["midre", "nls"])) == "midre(area=0.4)+nls(alpha=-0.05)"
    assert repr(build_attack("gmi", preset="quick", iterations=2)) == "gmi(preset='quick', iterations=2)"


def test_torch_warnings_are_captured_and_their_point_goes_into_the_line(tmp_path, recwarn):
    """torch's weights-only loader cannot read protocol 4 (it warns, then fails): the warning stays off the
    console and the protocol is named in midre's one line; a protocol-2 file loads."""
    from midre.checkpoint import load_state
    from midre.errors import CheckpointError

    p = tmp_path / "sd.pth"
    torch.save({"w": torch.ones(2)}, p, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="pickle protocol 4") as ei:
        load_state(p)
    assert "\n" not in str(ei.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    torch.save({"w": torch.ones(2)}, p, pickle_protocol=2)
    assert torch.equal(load_state(p)["w"], torch.ones(2))
