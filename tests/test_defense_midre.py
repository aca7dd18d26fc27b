"""The midre defense and the erasing-ablation defenses as plugged into THE training loop."""
import json

import pytest
import torch
import torch.nn as nn

from midre.data.base import TensorImageSet
from midre.defenses import Compose, Defense, TrainContext, build_defense
from midre.defenses.midre import MIDRE, eraser_for
from midre.erasing import IMAGENET_MEAN, BatchRandomErasing, FixedErasing, RandomErasing
from midre.errors import ArgumentError

NAMES = ["midre", "fixed_erasing", "entire_erasing", "pixel_masking", "multi_patch"]


def batch(n=8, seed=0, c=3, r=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, r, r, generator=g), torch.arange(n) % 4


class _Cfg:
    seed = 7


def prepared(spec, train_set=None):
    d = build_defense(spec)
    d.prepare(TrainContext(model=nn.Identity(), train_set=train_set, config=_Cfg()))
    d.on_epoch_start(0, 3)
    return d


def erased(x, out):
    return (out != x).any(1)


def test_midre_defaults_are_the_papers():
    d = build_defense("midre")
    assert isinstance(d, MIDRE)
    assert d.params() == {"area": 0.4, "lower": 0.1, "fill": "mean", "ratio": [1.0, 1.0], "released": False,
                          "position": "valid", "seed": None}
    assert d.eraser.max_attempts is None and d.eraser.p == 1.0


def test_midre_erases_every_image_of_every_batch_with_fresh_regions():
    d = prepared("midre")
    x, y = batch(32)
    out1, y1 = d.transform_batch(x, y, torch.arange(32))
    out2, _ = d.transform_batch(x, y, torch.arange(32))
    assert torch.equal(y1, y)
    frac1 = erased(x, out1).float().mean((1, 2))
    assert (frac1 >= 0.05).all() and (frac1 <= 0.42).all()           # every image erased, within a_e
    assert not torch.equal(out1, out2)                                # new regions every batch
    vals = out1.permute(1, 0, 2, 3)[:, erased(x, out1)]
    assert torch.equal(vals, torch.tensor(IMAGENET_MEAN).view(3, 1).expand_as(vals))


def test_midre_seeded_per_epoch_reproducible_and_resumable():
    x, y = batch(16)
    a, b = prepared("midre"), prepared("midre")
    assert torch.equal(a.transform_batch(x, y)[0], b.transform_batch(x, y)[0])
    a.on_epoch_start(1, 3)
    b.on_epoch_start(1, 3)
    e1 = a.transform_batch(x, y)[0]
    assert torch.equal(e1, b.transform_batch(x, y)[0])
    a.on_epoch_start(0, 3)
    assert not torch.equal(a.transform_batch(x, y)[0], e1)
    c = prepared({"name": "midre", "seed": 3})
    assert not torch.equal(c.transform_batch(x, y)[0], prepared("midre").transform_batch(x, y)[0])


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_through_build_defense_and_json(name):
    d = build_defense(name)
    spec = json.loads(json.dumps(d.spec()))
    assert spec["name"] == name
    assert build_defense(spec).spec() == d.spec()


def test_non_default_params_round_trip():
    for spec in [{"name": "midre", "area": 0.8, "lower": 0.2, "fill": [0.1, 0.2, 0.3], "ratio": [0.5, 2.0],
                  "released": False, "position": "any", "seed": 5},
                 {"name": "midre", "area": 0.4, "lower": 0.1, "fill": "zero", "ratio": [1.0, 1.0], "released": True,
                  "position": "valid", "seed": None},
                 {"name": "pixel_masking", "fraction": [0.1, 0.6], "fill": "random", "seed": 1},
                 {"name": "multi_patch", "patches": 8, "area": 0.4, "lower": 0.1, "fill": "one",
                  "ratio": [1.0, 1.0], "seed": None}]:
        assert build_defense(spec).spec() == spec
        assert build_defense(json.loads(json.dumps(build_defense(spec).spec()))).spec() == spec


@pytest.mark.parametrize("spec", [
    {"name": "midre", "area": 1.5},
    {"name": "midre", "area": 0.05},
    {"name": "midre", "fill": "meen"},
    {"name": "midre", "ratio": [2.0, 1.0]},
    {"name": "midre", "seed": "x"},
    {"name": "midre", "position": "centre"},
    {"name": "midre", "areaa": 0.4},
    {"name": "entire_erasing", "share": 1.2},
    {"name": "pixel_masking", "fraction": 0.0},
    {"name": "multi_patch", "patches": 0},
    {"name": "fixed_erasing", "lower": 0.5, "area": 0.4},
])
def test_params_validated_at_construction(spec):
    with pytest.raises(ArgumentError) as e:
        build_defense(spec)
    assert "\n" not in str(e.value)


class _LossOwner(Defense):
    """Stand-in for a loss-replacing defense (NLS)."""

    name = "loss_owner"

    def task_loss(self, logits, y):
        return nn.functional.cross_entropy(logits, y)


def test_compose_with_another_defense_keeps_erasing():
    d = Compose([build_defense("midre"), _LossOwner()])
    x, y = batch(8)
    out, _ = d.transform_batch(x, y, torch.arange(8))
    assert (erased(x, out).float().mean((1, 2)) >= 0.05).all()
    assert d.spec()["defenses"][0]["name"] == "midre"
    assert isinstance(eraser_for(d), BatchRandomErasing)


def _tiny_model():
    from midre.models.base import Classifier

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(backbone, 8, 4, arch="tiny")


def _sets():
    x, _ = batch(24, seed=1)
    y = torch.arange(24) % 4
    u8 = (x * 255).round().to(torch.uint8)
    return TensorImageSet(u8[:16], y[:16]), TensorImageSet(u8[16:], y[16:])


def test_erases_on_every_training_batch_and_not_at_eval():
    from midre.training import evaluate_accuracy, train_classifier

    calls = {"n": 0, "erased": []}

    class Spy(MIDRE):
        def transform_batch(self, x, y, idx=None):
            out, y2 = super().transform_batch(x, y, idx)
            calls["n"] += 1
            calls["erased"].append(float(erased(x, out).float().mean((1, 2)).min()))
            return out, y2

    train, test = _sets()
    d = Spy()
    model = _tiny_model()
    assert d.wrap_model(model) is model                  # no model surgery: evaluation sees clean images
    res = train_classifier(model, train, test, defense=d,
                           config=dict(epochs=2, batch_size=4, device="cpu", seed=0, amp=False), progress=False)
    assert calls["n"] == 2 * 4                           # every batch of every epoch
    assert min(calls["erased"]) >= 0.05                  # every image of every batch
    before = calls["n"]
    evaluate_accuracy(res.model, test)
    assert calls["n"] == before                          # not at evaluation


def test_fixed_erasing_defense_same_region_per_index_across_epochs():
    d = prepared("fixed_erasing")
    x, y = batch(8)
    idx = torch.tensor([4, 1, 7, 0, 3, 2, 6, 5])
    first = d.transform_batch(x, y, idx)[0]
    d.on_epoch_start(1, 3)
    assert torch.equal(d.transform_batch(x, y, idx)[0], first)
    assert isinstance(d.eraser, FixedErasing) and d.eraser.seed != 0      # derived from the training seed


def test_entire_erasing_defense_uses_training_labels():
    train, _ = _sets()
    d = prepared({"name": "entire_erasing", "mode": "fill"}, train_set=train)
    x, y = train.batch(torch.arange(16))
    out, _ = d.transform_batch(x, y, torch.arange(16))
    whole = erased(x, out).all(-1).all(-1)
    for c in range(4):                                   # 4 images per identity, share 0.4 -> 2 erased
        assert int(whole[y == c].sum()) == 2
    with pytest.raises(ArgumentError, match="targets"):
        prepared("entire_erasing", train_set=[1, 2, 3])


def test_entire_erasing_drops_the_epochs_share_of_each_identity_as_the_paper():
    """Sec. 3.3: EE "reduces the number of samples per ID" in each epoch: the chosen images leave the batch
    (default), they are not kept as constant images with their labels ('fill', the earlier rule)."""
    train, _ = _sets()
    d = prepared("entire_erasing", train_set=train)
    assert d.params()["mode"] == "drop"
    x, y = train.batch(torch.arange(16))
    out, yk = d.transform_batch(x, y, torch.arange(16))
    assert out.shape[0] == yk.shape[0] == 8                      # 2 of each identity's 4 images left out
    assert all(int((yk == c).sum()) == 2 for c in range(4))
    plan = d.eraser.selection()[:16]
    assert torch.equal(out, x[~plan]) and torch.equal(yk, y[~plan])   # the kept images untouched
    d.on_epoch_start(1, 3)
    assert not torch.equal(d.eraser.selection()[:16], plan)     # a fresh choice each epoch
    with pytest.raises(ArgumentError, match="mode must be"):
        build_defense({"name": "entire_erasing", "mode": "skip"})


def test_a_batch_emptied_by_entire_erasing_takes_no_step(tmp_path):
    from midre.data import load_dataset
    from midre.models import create_model
    from midre.training import TrainConfig, train_classifier

    torch.set_num_threads(1)
    splits = load_dataset("synthetic", seed=0, num_private=4, num_public=4, images_per_id=12)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.05, device="cpu", amp=False, seed=0)
    from midre import training

    outcomes = []
    orig = training._train_step

    def spy(*a, **k):
        out = orig(*a, **k)
        outcomes.append(out is None)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(training, "_train_step", spy)
    try:
        res = train_classifier(create_model("tinycnn", num_classes=4, resolution=32), splits.private_train,
                               splits.private_test, defense={"name": "entire_erasing", "share": 0.5}, config=cfg,
                               progress=False)
    finally:
        mp.undo()
    assert any(outcomes) and not all(outcomes)          # some batches were emptied and skipped, others trained
    assert res.history[0]["train_acc"] >= 0


def test_entire_erasing_drop_hands_later_members_the_kept_indices():
    """Composed after a dropping Entire Erasing, an index-keyed member (here Fixed Erasing) gets the indices of
    the images that stayed (it used to get the whole batch's and refuse the shapes)."""
    train, _ = _sets()
    d = build_defense([{"name": "entire_erasing", "share": 0.5}, {"name": "fixed_erasing", "area": 0.2}])
    d.prepare(TrainContext(model=nn.Identity(), train_set=train, config=_Cfg()))
    d.on_epoch_start(0, 3)
    x, y = train.batch(torch.arange(16))
    out, yk = d.transform_batch(x, y, torch.arange(16))
    ee, fe = d.members()
    assert out.shape[0] == yk.shape[0] == int(ee.kept.sum()) == 8
    alone = fe.transform_batch(x[ee.kept], y[ee.kept], torch.arange(16)[ee.kept])[0]
    assert torch.equal(out, alone)


@pytest.mark.parametrize("name", ["pixel_masking", "multi_patch"])
def test_other_ablation_defenses_erase_every_batch(name):
    d = prepared(name)
    x, y = batch(8)
    out, _ = d.transform_batch(x, y, torch.arange(8))
    f = erased(x, out).float().mean((1, 2))
    assert (f > 0.05).all() and (f < 0.5).all()


def test_eraser_for_returns_the_defenses_own_eraser():
    spec = {"name": "midre", "area": 0.8, "lower": 0.1, "fill": "zero", "ratio": [1.0, 1.0], "released": False,
            "position": "any", "seed": None}
    e = eraser_for(spec)
    assert isinstance(e, BatchRandomErasing) and e.area == 0.8 and e.fill == (0.0,)
    s = eraser_for(spec, batched=False)
    assert isinstance(s, RandomErasing) and s.area == 0.8 and s.position == "any" and e.position == "any"
    assert eraser_for("fixed_erasing").needs_index
    with pytest.raises(ArgumentError, match="does not erase"):
        eraser_for("nodef")
    with pytest.raises(ArgumentError, match="per-image"):
        eraser_for("multi_patch", batched=False)
