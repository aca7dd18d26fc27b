"""`midre audit` on models midre did not train.

The models here are trained by PLAIN torchvision / torch code inside the test (ImageFolder + a torch
loop), on a tiny image folder the test writes (synthetic faces exported as PNG files); then the real
command line audits them end to end at a tiny budget, and the bad inputs of the issue each give one line
and exit code 2 without leaving anything on disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from midre.cli import main

RES = 16
CLASSES = 4
TINY = ["--resolution", str(RES), "--preset", "quick", "--repeats", "2", "--eval-arch", "tinycnn",
        "--eval-epochs", "3", "--train-epochs", "2", "--no-progress", "--device", "cpu"]


# ----------------------------------------------------------------------------------------- fixtures
def _export(root: Path, classes: int, per_class: int, public: int) -> None:
    from PIL import Image

    from midre.data.synthetic import generate_faces

    x, y = generate_faces(0, "private", classes, per_class, RES, variation=0.3)
    for i, (img, c) in enumerate(zip(x, y.tolist())):
        d = root / "private" / f"person_{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    (root / "public").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(generate_faces(0, "public", public, 1, RES, variation=0.3)[0]):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / "public" / f"{i:03d}.png")


def _plain_train(model: nn.Module, folder: Path, epochs: int, size: int = RES) -> nn.Module:
    """What a user's own script does: torchvision ImageFolder, ImageNet normalisation, Adam."""
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    tf = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _plain_accuracy(model: nn.Module, folder: Path, size: int) -> float:
    """The user's own evaluation: eval mode, their transforms, every image of the folder."""
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return float((model.eval()(x).argmax(1) == torch.tensor(ds.targets)).float().mean() * 100)


class PlainCNN(nn.Module):
    """A user's own small network (not a midre architecture), exported as TorchScript."""

    def __init__(self, k: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(32, k))

    def forward(self, x):
        return self.net(x)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    import torchvision

    root = tmp_path_factory.mktemp("audit")
    _export(root, CLASSES, 10, 48)
    resnet = _plain_train(torchvision.models.resnet18(num_classes=CLASSES), root / "private", 3, size=32)
    torch.save(resnet.state_dict(), root / "resnet18.pth")
    (root / "resnet18_acc.txt").write_text(str(_plain_accuracy(resnet, root / "private", 32)))
    cnn = _plain_train(PlainCNN(CLASSES), root / "private", 3)
    torch.jit.script(cnn).save(str(root / "cnn_script.pt"))
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), root / "resnet18_7.pth")
    return {"root": root, "private": root / "private", "public": root / "public",
            "resnet": root / "resnet18.pth", "script": root / "cnn_script.pt", "resnet7": root / "resnet18_7.pth"}


def _audit(world, out: Path, *extra: str, model: str = "resnet") -> int:
    return main(["audit", str(world[model]), "--data", str(world["private"]), "--public", str(world["public"]),
                 "--out", str(out), *TINY, *extra])


GMI = ["--arch", "resnet18", "--input-size", "32", "--attacks", "gmi", "--attack-param", "gmi.iterations=4",
       "--prior-param", "gan.iterations=4", "--prior-param", "gan.batch_size=16"]


# ----------------------------------------------------------------------------------------- end to end
def test_audit_end_to_end_white_box(world, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _audit(world, out, *GMI) == 0
    md = (out / "report.md").read_text()
    for needle in ("## Verdict", "## Validity gates", "target fits its private data", "evaluation model is accurate",
                   "attack gmi converged", "### Attack: gmi", "## Retrain with MIDRE",
                   "midre train --dataset imagefolder", "--arch resnet18 --defense midre --area 0.4",
                   "Expected cost", "nearest private image: gmi"):
        assert needle in md, needle
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "src='http" not in html and 'src="http' not in html
    audit = json.loads((out / "audit.json").read_text())
    assert [g["gate"] for g in audit["gates"]["checks"]][:2] == ["target fits its private data",
                                                                 "evaluation model is accurate"]
    assert json.loads((out / "gates.json").read_text()) == audit["gates"]    # the report's one gates section reads it
    # midre reads the model as the user's own pipeline does (class order, normalisation, input size);
    # the two resize 16 -> 32 px differently (PIL vs torch bilinear), hence one image of slack
    assert abs(audit["private_acc"] - float((world["root"] / "resnet18_acc.txt").read_text())) <= 100 / 40 + 1e-6
    assert audit["verdict"]["level"] in ("inconclusive", "high leakage", "moderate leakage", "low leakage",
                                        "no leakage measured")
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["attack"] == "gmi" and 0 <= row["attack_top1"] <= 100 and row["knn"] > 0
    assert row["top1_ci_lo"] <= row["attack_top1"] <= row["top1_ci_hi"]
    nearest = json.loads((out / "attacks" / "resnet18" / "gmi" / "metrics.json").read_text())["nearest"]
    assert sorted(nearest) == [str(i) for i in range(CLASSES)]
    assert all(v["sq_dist"] >= 0 for v in nearest.values())
    assert (out / "figures" / "nearest_gmi.png").stat().st_size > 1000
    assert audit["retrain"]["cost"]["seconds_per_image"] > 0
    # resume: the same command skips every finished stage and reproduces the numbers
    stamp = json.loads((out / "run.json").read_text())["stages"]["attacks/resnet18/gmi"]["finished"]
    assert _audit(world, out, *GMI) == 0
    assert json.loads((out / "run.json").read_text())["stages"]["attacks/resnet18/gmi"]["finished"] == stamp
    assert json.loads((out / "results.json").read_text())["rows"][0]["attack_top1"] == row["attack_top1"]
    # the same directory with other settings, or for another model, is refused before anything is written
    capsys.readouterr()
    assert _audit(world, out, *GMI[:-1], "gan.batch_size=8") == 2
    assert "incompatible" in capsys.readouterr().err
    assert _audit(world, out, "--attacks", "gmi", model="script") == 2
    assert "another model" in capsys.readouterr().err
    # `midre report` would drop the verdict and gates: it points back to `midre audit`
    assert main(["report", str(out)]) == 2
    assert "re-run the same `midre audit`" in capsys.readouterr().err


def test_audit_torchscript_label_only_is_seeded(world, tmp_path):
    args = ["--access", "label-only", "--attacks", "brepmi", "--attack-param", "brepmi.iterations=3", "--attack-param",
            "brepmi.init_rounds=3", "--attack-param", "brepmi.sphere_points=4", "--prior-param", "gan.iterations=3",
            "--prior-param", "gan.batch_size=16", "--identities", "0-1", "--repeats", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _audit(world, a, *args, model="script") == 0
    assert _audit(world, b, *args, model="script") == 0
    audit = json.loads((a / "audit.json").read_text())
    assert audit["attacks"] == ["brepmi"]
    assert audit["retrain"]["command"] is None and "BatchRandomErasing" in audit["retrain"]["notes"][0]
    ra, rb = (json.loads((d / "results.json").read_text())["rows"] for d in (a, b))
    assert ra == rb                                 # same seed -> same numbers
    assert (a / "report.html").exists()


# ----------------------------------------------------------------------------------------- bad input
def _bad(world, tmp_path, capsys, args: list[str], needle: str, model: str = "resnet") -> None:
    out = tmp_path / "never"
    capsys.readouterr()
    size = ["--input-size", "32"] if "--arch" in args else []
    rc = main(["audit", str(world[model]), "--out", str(out), *TINY, *size, *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not out.exists()                         # nothing half-written


def test_state_dict_of_another_architecture_names_the_key(world, tmp_path, capsys):
    _bad(world, tmp_path, capsys, ["--arch", "resnet50", "--data", str(world["private"]), "--public",
                                   str(world["public"])],
         "'layer1.0.conv1.weight' has shape (64, 64, 3, 3) in the file")


def test_class_count_that_does_not_match_the_folder(world, tmp_path, capsys):
    _bad(world, tmp_path, capsys, ["--arch", "resnet18", "--data", str(world["private"]), "--public",
                                   str(world["public"])], "4 classes", model="resnet7")
    _bad(world, tmp_path, capsys, ["--data", str(world["private"]), "--public", str(world["public"]),
                                   "--classes", "person_0,person_1,person_2"], "3 classes", model="script")


def test_empty_class_folder(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["private"], data)
    (data / "person_9").mkdir()
    _bad(world, tmp_path, capsys, ["--arch", "resnet18", "--data", str(data), "--public", str(world["public"])],
         "holds no images")


def test_missing_public_set(world, tmp_path, capsys):
    base = ["--arch", "resnet18", "--data", str(world["private"])]
    _bad(world, tmp_path, capsys, base, "no public data")
    _bad(world, tmp_path, capsys, base + ["--public", str(tmp_path / "nope")], "not found")
    # the pitfall of a prior trained on private images: refused
    _bad(world, tmp_path, capsys, base + ["--public", str(world["private"])], "shares")


def test_access_level_an_attack_cannot_use(world, tmp_path, capsys):
    base = ["--arch", "resnet18", "--data", str(world["private"]), "--public", str(world["public"])]
    _bad(world, tmp_path, capsys, base + ["--access", "label-only", "--attacks", "gmi"], "needs white-box access")
    _bad(world, tmp_path, capsys, base + ["--access", "black-box", "--attacks", "plgmi"], "needs white-box access")
    _bad(world, tmp_path, capsys, base + ["--access", "root"], "unknown --access")


def test_torchscript_and_state_dict_confusions(world, tmp_path, capsys):
    data = ["--data", str(world["private"]), "--public", str(world["public"])]
    _bad(world, tmp_path, capsys, data, "give its architecture with --arch")          # state dict, no --arch
    _bad(world, tmp_path, capsys, ["--arch", "resnet18", *data], "TorchScript archive", model="script")


# ----------------------------------------------------------------------------------------- mechanisms
def test_select_attacks_by_access():
    from midre.audit import select_attacks

    assert select_attacks("label-only", None) == ["lokt", "brepmi"]      # the two label-only attacks, strongest first
    wb = select_attacks("white-box", None)
    assert len(wb) == 2 and "plgmi" in wb          # the strongest first
    assert select_attacks("white-box", ["brepmi", "gmi"]) == ["brepmi", "gmi"]   # more access never hurts
    assert select_attacks("black-box", None) == ["mirror", "rlbmi"]


def test_equal_strengths_are_ranked_by_name(monkeypatch):
    """lokt and c2fmi both declare strength 35: the audit's choice must not hang on the registry's listing order."""
    import midre.attacks
    import midre.audit as audit

    assert audit.attack_strength("lokt") == audit.attack_strength("c2fmi") == 35
    names = midre.attacks.ATTACKS.names()
    monkeypatch.setattr(midre.attacks.ATTACKS, "names", lambda: sorted(names, reverse=True))
    monkeypatch.setattr(audit, "attack_strength", lambda n: 35 if n in ("lokt", "c2fmi") else 1)
    assert audit.select_attacks("black-box", None) == ["c2fmi", "lokt"]
    assert audit.select_attacks("label-only", None) == ["lokt", "brepmi"]


def test_every_registered_attack_is_ranked_by_its_own_class():
    """The audit ranks attacks by the ``strength`` each class declares (a hand-written list once spelled IF-GMI
    'if_gmi', so it ranked last); name, access and priors are declared once, on the class."""
    from midre.attacks import ATTACKS
    from midre.audit import attack_strength

    builtin = [n for n in ATTACKS.names() if not ATTACKS.info(n).get("plugin")]
    for n in builtin:
        info, cls = ATTACKS.info(n), ATTACKS.get(n)
        assert attack_strength(n) is not None, f"attack '{n}' declares no strength"
        assert (info["access"], info["prior"]) == (cls.access, "+".join(cls.prior_kinds) or "none") and cls.name == n
    order = sorted(builtin, key=lambda n: -attack_strength(n))
    assert order.index("ifgmi") < order.index("lomma_gmi") < order.index("gmi") < order.index("brepmi")
    assert order[0] == "plgmi"


def test_class_order_relabels_the_folder(world):
    from midre.audit import AuditSpec, prepare_data

    base = dict(model=str(world["resnet"]), data=str(world["private"]), public=str(world["public"]), resolution=RES)
    plain = prepare_data(AuditSpec(**base))
    order = [f"person_{i}" for i in reversed(range(CLASSES))]
    rev = prepare_data(AuditSpec(**base, classes=order))
    assert rev.class_names == order and plain.class_names == sorted(order)
    assert torch.equal(rev.private.images, plain.private.images)
    assert torch.equal(rev.private.targets, CLASSES - 1 - plain.private.targets)


def test_measuring_the_cost_leaves_the_model_untouched(world):
    from midre.audit import AuditSpec, load_user_model, measure_step

    spec = AuditSpec(model=str(world["resnet"]), data="", arch="resnet18", input_size=32)
    model, _ = load_user_model(spec, CLASSES, RES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost = measure_step(model, torch.rand(8, 3, RES, RES), 0.4, torch.device("cpu"), reps=1)
    assert cost["seconds_per_image"] > 0 and not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # BatchNorm running stats included


def test_verdict_levels():
    from midre.audit import verdict
    from midre.gates import check_audit as gates

    ok = gates(90.0, 90.0, {"gmi": 95.0})
    row = {"attack": "gmi", "attack_top1": 80.0, "top1_ci_lo": 70.0, "top1_ci_hi": 90.0}
    assert verdict([row], ok, 10, "white-box")["level"] == "high leakage"
    low = {**row, "attack_top1": 12.0, "top1_ci_lo": 4.0, "top1_ci_hi": 20.0}
    assert verdict([low], ok, 10, "white-box")["level"] == "no leakage measured"
    bad = gates(90.0, 20.0, {"gmi": 95.0})
    v = verdict([row], bad, 10, "white-box")
    assert v["level"] == "inconclusive" and "evaluation model is accurate" in v["text"]
