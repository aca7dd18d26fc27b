"""Evaluation metrics against hand-computed values (midre/metrics.py) and `midre evaluate` end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from midre.data.base import TensorImageSet
from midre.errors import ArgumentError, CheckpointError, DataError, MidreError
from midre.metrics import (
    PrivateFeatureCache,
    attack_accuracy,
    attack_accuracy_from_logits,
    delta_eval,
    delta_face,
    evaluate_reconstructions,
    fid_from_features,
    fid_score,
    knn_distance,
    metrics_table_text,
    tradeoff,
)


def one_hot_logits(pred_rank: list[list[int]], k: int) -> torch.Tensor:
    """Logits whose ranking of classes is exactly ``pred_rank[i]`` (best first) for every row."""
    out = torch.zeros(len(pred_rank), k)
    for i, order in enumerate(pred_rank):
        for r, c in enumerate(order):
            out[i, c] = float(k - r)
    return out


# ----------------------------------------------------------------------------------------- attack accuracy
def test_attack_accuracy_hand_computed():
    k = 7
    # 2 repeats x 2 identities (0, 1); ranks: correct at position 1, 3, 6 (not in top-5), 1
    ranks = [[0, 1, 2, 3, 4, 5, 6],      # id 0, rep 0: top-1 hit
             [0, 2, 1, 3, 4, 5, 6],      # id 1, rep 0: rank 3 -> top-5 hit only
             [1, 2, 3, 4, 5, 6, 0],      # id 0, rep 1: rank 7 -> miss
             [1, 0, 2, 3, 4, 5, 6]]      # id 1, rep 1: top-1 hit
    res = attack_accuracy_from_logits(one_hot_logits(ranks, k), [0, 1, 0, 1], [0, 0, 1, 1], n_boot=0)
    assert res["top1_per_repeat"] == [50.0, 50.0]
    assert res["top5_per_repeat"] == [100.0, 50.0]
    assert res["top1"] == 50.0 and res["top1_std"] == 0.0
    assert res["top5"] == 75.0
    assert res["top5_std"] == pytest.approx(math.sqrt(((100 - 75) ** 2 + (50 - 75) ** 2) / 1))
    assert (res["n"], res["n_identities"], res["n_repeats"]) == (4, 2, 2)
    assert res["top1_ci95"] is None


def test_top5_is_mean_over_seeds_not_last_seed():
    """The public bug: reporting the last seed's top-5.  Per-seed top-5 = 100, 50, 0 -> 50, not 0."""
    k = 10
    hit5 = list(range(10))                                   # identity 0 at rank 1 -> top-5 hit
    miss5 = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]                   # identity 0 last -> miss
    rows = [hit5, hit5, hit5, miss5, miss5, miss5]
    rep = [0, 0, 1, 1, 2, 2]
    res = attack_accuracy_from_logits(one_hot_logits(rows, k), [0] * 6, rep, n_boot=0)
    assert res["top5_per_repeat"] == [100.0, 50.0, 0.0]
    assert res["top5"] == pytest.approx(50.0)
    assert res["top5"] != res["top5_per_repeat"][-1]
    assert res["top5_std"] == pytest.approx(50.0)            # sample std of (100, 50, 0)


def test_std_is_over_repeats_not_over_images():
    # every repeat has exactly half of its images right: per-repeat accuracy 50, 50, 50
    k = 4
    right, wrong = [0, 1, 2, 3], [1, 0, 2, 3]
    rows = [right, wrong] * 3
    res = attack_accuracy_from_logits(one_hot_logits(rows, k), [0] * 6, [0, 0, 1, 1, 2, 2], topk=(1,), n_boot=0)
    assert res["top1"] == 50.0
    assert res["top1_std"] == 0.0                            # over repeats
    per_image = torch.tensor([100.0, 0.0] * 3)
    assert float(per_image.std()) > 50.0                     # what the image-index bug would report


def test_topk_not_smaller_than_classes_is_none_and_single_repeat_std_zero():
    res = attack_accuracy_from_logits(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), [0, 0], None, n_boot=0)
    assert res["top5"] is None and res["top1"] == 50.0 and res["top1_std"] == 0.0 and res["n_repeats"] == 1


def test_bootstrap_resamples_identities():
    """Identity 0 is always found, identity 1 never: resampling IDENTITIES gives {0, 50, 100} only, so the
    95 % interval is [0, 100]; resampling the 20 images independently would give a narrow interval."""
    k = 5
    n_per = 10
    logits = torch.zeros(2 * n_per, k)
    logits[:, 0] = 1.0                                        # always predicts class 0
    ident = torch.tensor([0] * n_per + [1] * n_per)
    rep = torch.arange(2 * n_per) % 5
    res = attack_accuracy_from_logits(logits, ident, rep, topk=(1,), n_boot=2000, seed=3)
    assert res["top1"] == 50.0
    assert res["top1_ci95"] == [0.0, 100.0]
    again = attack_accuracy_from_logits(logits, ident, rep, topk=(1,), n_boot=2000, seed=3)
    assert again["top1_ci95"] == res["top1_ci95"]
    # a mixed case: interval contains the mean, is deterministic per seed
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 6, generator=g)
    ident = torch.arange(60) % 6
    rep = torch.arange(60) // 6 % 3
    a = attack_accuracy_from_logits(logits, ident, rep, n_boot=500, seed=1)
    b = attack_accuracy_from_logits(logits, ident, rep, n_boot=500, seed=1)
    assert a["top1_ci95"] == b["top1_ci95"]
    assert a["top1_ci95"][0] <= a["top1"] <= a["top1_ci95"][1]


def test_attack_accuracy_validation():
    lg = torch.zeros(2, 3)
    with pytest.raises(ArgumentError, match="outside the evaluation model's 3 classes"):
        attack_accuracy_from_logits(lg, [0, 3], [0, 0])
    with pytest.raises(ArgumentError, match="differ in length"):
        attack_accuracy_from_logits(lg, [0], [0, 0])
    with pytest.raises(ArgumentError, match="top-k"):
        attack_accuracy_from_logits(lg, [0, 1], [0, 0], topk=(0,))
    with pytest.raises(ArgumentError, match="no reconstructions"):
        attack_accuracy(nn.Flatten(), torch.zeros(0, 1, 1, 3), [], [])


class FlatNet(nn.Module):
    """features = the flattened input (exact, hand-computable); logits = a fixed linear map."""

    def __init__(self, num_classes: int, dim: int, bias: bool = False):
        super().__init__()
        self.head = nn.Linear(dim, num_classes, bias=bias)
        self.num_classes = num_classes
        self.feature_calls = 0
        self.seen = 0

    def features(self, x):
        self.feature_calls += 1
        self.seen += x.shape[0]
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


def test_attack_accuracy_with_a_model_equals_from_logits():
    net = FlatNet(3, 3)
    with torch.no_grad():
        net.head.weight.copy_(torch.eye(3))
    # images are one-hot-ish pixels: the argmax pixel is the predicted class
    imgs = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.0], [0.7, 0.0, 0.2], [0.0, 0.0, 0.6]]).view(4, 1, 1, 3)
    net.train()
    res = attack_accuracy(net, imgs, [0, 2, 2, 2], [0, 0, 1, 1], topk=(1,), n_boot=0, batch_size=3)
    assert res["top1_per_repeat"] == [50.0, 50.0]
    assert net.training                                      # mode restored


# ----------------------------------------------------------------------------------------- distances
def _pixels(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, -1)


def _private():
    # class 0: (0,0) and (1,1); class 1: (1,0); class 2: (0,1)  (exact in uint8: 0 and 255)
    x = _pixels([[0, 0], [1, 1], [1, 0], [0, 1]])
    return TensorImageSet((x * 255).round().to(torch.uint8), [0, 0, 1, 2])


def test_knn_distance_hand_computed_and_cached():
    net = FlatNet(3, 2)
    priv = _private()
    recon = _pixels([[0.5, 0.0], [1.0, 1.0], [0.0, 0.0]])
    ident = [0, 0, 1]
    # min squared L2 to own identity: 0.25 ; 0 ; 1 (the (0,0) image of class 0 does not count for class 1)
    expected = (0.25 + 0.0 + 1.0) / 3
    cache = PrivateFeatureCache(net.features, priv)
    assert knn_distance(net, recon, ident, priv, cache=cache) == pytest.approx(expected)
    calls = net.feature_calls
    assert delta_eval(net, recon, ident, priv, cache=cache) == pytest.approx(expected)
    assert net.feature_calls == calls + 1                    # only the reconstructions; private features cached
    with pytest.raises(DataError, match="no images of identity 2|identity 2"):
        empty = TensorImageSet(priv.images[:3], [0, 0, 1])
        knn_distance(net, recon[:1], [2], empty)


def test_delta_face_needs_an_embedder_and_normalises():
    priv = _private()
    with pytest.raises(ArgumentError, match="face embedder"):
        delta_face(None, _pixels([[1, 0]]), [2], priv)
    emb = lambda x: 3.0 * x.flatten(1)                     # noqa: E731 - scale must not matter
    # recon (1, 0) vs class 2's (0, 1): unit vectors at 90 degrees -> squared distance 2
    assert delta_face(emb, _pixels([[1.0, 0.0]]), [2], priv) == pytest.approx(2.0)
    # recon (0.5, 0.5) vs class 0's (1, 1) normalised: identical direction -> 0
    assert delta_face(emb, _pixels([[0.5, 0.5]]), [0], priv) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------- FID
def test_fid_zero_for_identical_and_shift_squared_for_shifted():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 4, generator=g)
    same = fid_from_features(f, f.clone())
    assert same["value"] == pytest.approx(0.0, abs=1e-6) and not same["rank_deficient"]
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0])
    moved = fid_from_features(f, f + shift)                  # same covariance -> FID = ||shift||^2
    assert moved["value"] == pytest.approx(float((shift ** 2).sum()), rel=1e-6)
    assert math.isfinite(moved["value"]) and moved["value"] > same["value"]


def test_fid_small_samples_flagged_or_refused():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g) + 1.0
    res = fid_from_features(a, b)                            # 3 samples, 16-d: singular covariances
    assert math.isfinite(res["value"]) and res["value"] > 0 and res["rank_deficient"]
    with pytest.raises(ArgumentError, match="at least 2"):
        fid_from_features(a[:1], b)
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(MidreError, match="NaN"):
        fid_from_features(bad, b)


def test_fid_score_with_model_features():
    net = FlatNet(2, 3 * 4 * 4)
    g = torch.Generator().manual_seed(2)
    imgs = torch.rand(12, 3, 4, 4, generator=g) * 0.5
    assert fid_score(net.features, imgs, imgs.clone())["value"] == pytest.approx(0.0, abs=1e-6)
    assert fid_score(net.features, imgs, imgs + 0.3)["value"] == pytest.approx(0.09 * 48, rel=1e-4)


def test_inception_fid_needs_a_valid_local_file(tmp_path):
    from midre.metrics import load_inception_extractor

    with pytest.raises(CheckpointError, match="not found"):
        load_inception_extractor(tmp_path / "nope.pth")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="inception_v3"):
        load_inception_extractor(tmp_path / "wrong.safetensors")


# ----------------------------------------------------------------------------------------- trade-off
def test_tradeoff():
    assert tradeoff(90.0, 85.0, 80.0, 40.0) == pytest.approx(8.0)
    assert tradeoff(90.0, 90.0, 80.0, 40.0) == "OP"          # zero denominator guarded
    assert tradeoff(90.0, 91.5, 80.0, 40.0) == "OP"
    assert tradeoff(90.0, 89.0, 40.0, 45.0) == pytest.approx(-5.0)   # the defense made it worse
    with pytest.raises(ArgumentError):
        tradeoff(float("nan"), 80.0, 1.0, 1.0)
    with pytest.raises(ArgumentError):
        tradeoff(None, 80.0, 1.0, 1.0)


# ----------------------------------------------------------------------------------------- all at once
def test_evaluate_reconstructions_and_table():
    net = FlatNet(3, 2, bias=True)
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]))
        net.head.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
    priv = _private()
    recon = {"images": _pixels([[0.0, 0.0], [1.0, 0.0], [0.9, 0.0], [0.0, 1.0]]),
             "identity": torch.tensor([0, 1, 1, 2]), "repeat": torch.tensor([0, 0, 1, 1]),
             "confidence": torch.tensor([0.5, 0.5, 1.0, 1.0]), "meta": {"attack": "gmi"}}
    m = evaluate_reconstructions(recon, net, priv, priv, target_model=net, n_boot=100, topk=(1,))
    assert m["attack"] == "gmi" and m["n"] == 4
    assert m["acc"] == pytest.approx(75.0)                   # only private (1, 1) of class 0 is misclassified
    assert m["attacc_top1"] == 100.0 and m["attacc_top1_std"] == 0.0
    assert m["knn_dist"] == pytest.approx(0.01 / 4)         # (0.9, 0) is 0.1 from (1, 0); the rest are exact and m["delta_eval"] == m["knn_dist"]
    assert m["fid_eval"] is not None and math.isfinite(m["fid_eval"])
    assert m["target_confidence"] == pytest.approx(0.75)
    m["defense"] = "midre"
    m2 = evaluate_reconstructions(recon, net, priv, priv, target_model=net, n_boot=0, topk=(1,), fid=False,
                                  baseline={"acc": 80.0, "attacc_top1": 100.0, "attack": "gmi"})
    assert m2["tradeoff"] == pytest.approx(0.0) and "fid_eval" not in m2
    with pytest.raises(ArgumentError, match="same attack"):
        evaluate_reconstructions(recon, net, priv, priv, target_model=net, n_boot=0, topk=(1,), fid=False,
                                 baseline={"acc": 80.0, "attacc_top1": 100.0, "attack": "kedmi"})
    one = dict(recon, images=recon["images"][:1], identity=recon["identity"][:1], repeat=recon["repeat"][:1],
               confidence=recon["confidence"][:1])
    m3 = evaluate_reconstructions(one, net, priv, n_boot=0, topk=(1,), progress=True)
    assert m3["fid_eval"] is None and "at least 2" in m3["fid_eval_note"]
    text = metrics_table_text([m])
    assert "FID_eval" in text and "gmi" in text and "midre" in text and "100.00 ± 0.00" in text


# ----------------------------------------------------------------------------------------- CLI
DS_OPTS = {"num_private": 4, "num_public": 0, "images_per_id": 5}


def _ckpt(path, arch: str, num_classes: int, seed: int, dataset: str = "synthetic"):
    from midre.checkpoint import save_checkpoint
    from midre.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, resolution=16)
    meta = {"arch": arch, "num_classes": num_classes, "resolution": 16, "channels": 3, "model_kwargs": {},
            "defense": {"name": "nodef"}, "test_acc": 0.0,
            "dataset": {"name": dataset, "root": None, "resolution": 16, "seed": 0, "options": dict(DS_OPTS)}}
    save_checkpoint(path / "model", model, meta)
    return path


@pytest.fixture
def attack_dir(tmp_path):
    from midre.attacks.base import Reconstructions
    from midre.data import load_dataset

    target = _ckpt(tmp_path / "target", "tinycnn", 4, seed=0)
    evalm = _ckpt(tmp_path / "eval", "tinycnn", 4, seed=1)
    splits = load_dataset("synthetic", resolution=16, seed=0, **DS_OPTS)
    train = splits.private_train.to_tensors()
    # reconstructions = the first two private train images of every identity (repeat 0 and 1)
    idx = torch.cat([(train.targets == c).nonzero().flatten()[:2] for c in range(4)])
    x, y = train.batch(idx)
    rep = torch.tensor([0, 1] * 4)
    out = tmp_path / "attack"
    Reconstructions(x, y, rep, torch.full((8,), 0.5), {"attack": "gmi", "target": str(target)}).save(out)
    return {"dir": out, "target": target, "eval": evalm, "splits": splits, "x": x, "y": y, "rep": rep,
            "root": tmp_path}


def test_cli_evaluate_end_to_end(attack_dir, capsys, monkeypatch):
    from midre.cli import main
    from midre.loading import load_model
    from midre.metrics import natural_accuracy

    d = attack_dir
    monkeypatch.setenv("COLUMNS", "200")                     # one table line per row in the captured output
    rc = main(["evaluate", str(d["dir"]), "--eval", str(d["eval"]), "--no-progress", "--n-boot", "200",
               "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    m = json.loads((d["dir"] / "metrics.json").read_text())
    ev, _ = load_model(d["eval"])
    tg, _ = load_model(d["target"])
    direct = attack_accuracy(ev, d["x"], d["y"], d["rep"], n_boot=0, topk=(1,))
    assert m["attacc_top1"] == pytest.approx(direct["top1"])
    assert m["attacc_top1_per_repeat"] == pytest.approx(direct["top1_per_repeat"])
    assert m["attacc_top5"] is None                          # 4 classes: top-5 is meaningless
    assert m["acc"] == pytest.approx(natural_accuracy(tg, d["splits"].private_test.to_tensors()))
    assert m["knn_dist"] == pytest.approx(0.0, abs=1e-6)     # every reconstruction IS a private train image
    assert m["fid_eval"] is not None and math.isfinite(m["fid_eval"]) and m["fid_eval_rank_deficient"]
    assert m["fid_eval_feature_dim"] == ev.feature_dim      # features come from the model, no constants
    assert m["n"] == 8 and m["n_repeats"] == 2 and m["n_identities"] == 4
    assert m["defense"] == "nodef" and m["attack"] == "gmi"
    assert "FID_eval" in cap.out and "AttAcc@1" in cap.out and "gmi" in cap.out
    assert f"{m['attacc_top1']:.2f} ± {m['attacc_top1_std']:.2f}" in cap.out

    # trade-off against a NoDef baseline with higher accuracy
    base = d["root"] / "nodef_metrics.json"
    base.write_text(json.dumps({"acc": m["acc"] + 10.0, "attacc_top1": m["attacc_top1"] + 20.0, "attack": "gmi"}))
    rc = main(["evaluate", str(d["dir"]), "--eval", str(d["eval"]), "--no-progress", "--no-fid", "--n-boot", "0",
               "--baseline", str(base)])
    assert rc == 0
    m2 = json.loads((d["dir"] / "metrics.json").read_text())
    assert m2["tradeoff"] == pytest.approx(2.0) and "fid_eval" not in m2


def test_cli_evaluate_bad_input_is_one_line(attack_dir, tmp_path, capsys):
    from midre.cli import main

    d = attack_dir

    def fails(argv, needle):
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1 and needle in err, err

    fails(["evaluate", str(tmp_path / "missing"), "--no-progress"], "not a directory")
    (tmp_path / "empty").mkdir()
    fails(["evaluate", str(tmp_path / "empty"), "--no-progress"], "no reconstructions")
    fails(["evaluate", str(d["dir"]), "--no-progress"], "--eval")
    wrong = _ckpt(tmp_path / "eval5", "tinycnn", 5, seed=2)
    fails(["evaluate", str(d["dir"]), "--eval", str(wrong), "--no-progress"], "5 classes")
    other = _ckpt(tmp_path / "eval_digits", "tinycnn", 4, seed=2, dataset="digits")
    fails(["evaluate", str(d["dir"]), "--eval", str(other), "--no-progress"], "trained on 'digits'")
    fails(["evaluate", str(d["dir"]), "--eval", str(d["eval"]), "--topk", "a,b", "--no-progress"], "--topk")
    fails(["evaluate", str(d["dir"]), "--eval", str(d["eval"]), "--baseline", str(tmp_path / "nope.json"),
           "--no-progress"], "baseline")
    assert not (d["dir"] / "metrics.json").exists()


@pytest.mark.slow
def test_inception_fid_from_a_local_torchvision_state_dict(tmp_path):
    """Inception FID only from a LOCAL file in torchvision's layout (random weights here: no download)."""
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    del net
    netflat = FlatNet(3, 2)
    priv = _private()
    recon = {"images": _pixels([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1]]).expand(-1, 3, 8, -1).contiguous(),
             "identity": torch.tensor([0, 1, 1]), "repeat": torch.tensor([0, 0, 1])}
    priv3 = TensorImageSet(priv.images.expand(-1, 3, 8, -1).contiguous(), priv.targets)
    netflat.head = nn.Linear(3 * 8 * 2, 3)
    m = evaluate_reconstructions(recon, netflat, priv3, fid_extractor=path, n_boot=0, topk=(1,), batch_size=4)
    assert "fid_eval" not in m and m["fid_inception_feature_dim"] == 2048
    assert math.isfinite(m["fid_inception"]) and m["fid_inception_rank_deficient"]
