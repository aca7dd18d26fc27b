"""synthetic2 (benchmark v2): fixed pools, determinism, disjointness, splits, cache, the region probe, and
v1 left exactly as it was."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from midre.analysis.probe import box_mask, region_probe
from midre.data import DATASETS, TensorImageSet, facecache, load_dataset, load_pretraining
from midre.data.synthetic2 import (
    INNER_BOX,
    MAX_IMAGES,
    POOLS,
    PRIVATE_TRAIN,
    generate,
    identity_vectors,
    sample_identities,
)
from midre.errors import ArgumentError, DataError


@pytest.fixture(autouse=True)
def no_home_cache(monkeypatch, tmp_path):
    """Never touch the user's cache from the tests."""
    monkeypatch.setenv("MIDRE_CACHE_DIR", str(tmp_path / "cache"))


def _v2(**kw):
    opts = dict(resolution=32, num_private=4, num_public=3, train_per_id=5, test_per_id=2, public_per_id=4)
    opts.update(kw)
    return load_dataset("synthetic2", **opts)


def test_shapes_ranges_split_sizes():
    s = _v2()
    assert s.name == "synthetic2" and s.num_classes == 4 and s.resolution == 32
    assert len(s.private_train) == 4 * 5 and len(s.private_test) == 4 * 2 and len(s.public) == 3 * 4
    for part in (s.private_train, s.private_test, s.public):
        assert isinstance(part, TensorImageSet) and part.images.shape[1:] == (3, 32, 32)
    assert torch.equal(s.private_train.targets.bincount(), torch.full((4,), 5))
    assert torch.equal(s.private_test.targets.bincount(), torch.full((4,), 2))
    assert torch.equal(s.public.targets.bincount(), torch.full((3,), 4))
    x, y = s.private_train[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and isinstance(y, int)
    assert s.private_train.images.float().std() > 20          # real content
    assert s.info["seed_changes_images"] is False and s.info["generator_version"] == 2


def test_default_is_64px_and_registered_as_embedded():
    info = DATASETS.info("synthetic2")
    assert info["kind"] == "embedded" and info["default_resolution"] == 64
    assert info["options"]["num_private"] >= 300
    s = load_dataset("synthetic2", num_private=2, num_public=0, train_per_id=1, test_per_id=1)
    assert s.resolution == 64 and s.private_train.images.shape[-1] == 64


def test_run_seed_does_not_change_the_pools():
    a, b = _v2(seed=0), _v2(seed=12345)
    for part in ("private_train", "private_test", "public"):
        assert torch.equal(getattr(a, part).images, getattr(b, part).images)
        assert torch.equal(getattr(a, part).targets, getattr(b, part).targets)
    assert torch.equal(identity_vectors(sample_identities("private", range(5))),
                       identity_vectors(sample_identities("private", range(5))))


def test_smaller_options_select_a_prefix_of_the_same_faces():
    small = _v2(num_private=2, num_public=1, train_per_id=3)
    big = _v2(num_private=4, num_public=3, train_per_id=5)
    keep = (big.private_train.targets < 2) & (torch.arange(len(big.private_train)) % 5 < 3)
    assert torch.equal(small.private_train.images, big.private_train.images[keep])
    # the test split does not depend on how many training images are used
    assert torch.equal(small.private_test.images, big.private_test.images[big.private_test.targets < 2])
    assert torch.equal(small.public.images, big.public.images[big.public.targets < 1])


def test_test_images_are_not_training_images():
    s = _v2(train_per_id=PRIVATE_TRAIN, num_private=2, num_public=0)
    tr = {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in s.private_train.images}
    te = {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in s.private_test.images}
    assert len(tr) == len(s.private_train) and not tr & te


def test_pools_are_disjoint():
    vecs = {p: identity_vectors(sample_identities(p, range(n))) for p, n in zip(POOLS, (300, 300, 500))}
    for i, a in enumerate(POOLS):
        for b in POOLS[i + 1:]:
            d = torch.cdist(vecs[a], vecs[b])
            assert d.min() > 0.05, (a, b)
    # and every identity inside a pool is a different person
    d = torch.cdist(vecs["private"], vecs["private"]) + torch.eye(300) * 1e3
    assert d.min() > 0.05


def test_pretraining_pool():
    pre = load_pretraining("synthetic2", resolution=16, num_identities=3, images_per_id=2)
    assert pre.images.shape == (6, 3, 16, 16) and pre.targets.tolist() == [0, 0, 1, 1, 2, 2]
    imgs, _ = generate("pretrain", [0, 1, 2], 0, 2, 16)
    assert torch.equal(pre.images, imgs)
    priv, _ = generate("private", [0, 1, 2], 0, 2, 16)
    assert not torch.equal(pre.images, priv)
    with pytest.raises(DataError, match="no pretraining pool"):
        load_pretraining("synthetic")


def test_images_vary_within_identity_and_identity_is_in_the_face():
    """Nuisance is visible (images of one identity differ) and the same identity id -> same geometry."""
    imgs, labels = generate("private", [0, 1], 0, 6, 32)
    x = imgs.float()
    within = (x[:6] - x[:6].mean(0)).abs().mean()
    assert within > 10                                            # pose, hair, colour, background change
    assert labels.tolist() == [0] * 6 + [1] * 6


@pytest.mark.parametrize("bad", [dict(num_private=1), dict(num_private=5000), dict(train_per_id=31),
                                 dict(test_per_id=0), dict(public_per_id=MAX_IMAGES + 1), dict(variation=9),
                                 dict(colour="blue"), dict(resolution=8), dict(num_private="many")])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(ArgumentError):
        _v2(**bad)


def test_cache_returns_exactly_the_rendered_bytes(monkeypatch, tmp_path):
    monkeypatch.setattr(facecache, "MIN_IMAGES", 1)
    monkeypatch.setattr(facecache, "BLOCK", 3)
    cold = _v2(resolution=16, num_private=4, num_public=2, train_per_id=2, test_per_id=1, public_per_id=2)
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2 + 2 + 1                 # private train 2 blocks, private test 2, public 1
    warm = _v2(resolution=16, num_private=4, num_public=2, train_per_id=2, test_per_id=1, public_per_id=2)
    direct, _ = generate("private", [0, 1, 2, 3], 0, 2, 16)
    assert torch.equal(cold.private_train.images, direct) and torch.equal(warm.private_train.images, direct)
    files[0].write_bytes(b"damaged")                # a damaged block is re-rendered, not trusted
    again = _v2(resolution=16, num_private=4, num_public=2, train_per_id=2, test_per_id=1, public_per_id=2)
    assert torch.equal(again.private_train.images, cold.private_train.images)
    assert torch.equal(again.public.images, cold.public.images)
    assert facecache._load(files[0], tuple(direct[:6].shape)) is not None      # and written again
    monkeypatch.setenv("MIDRE_CACHE_DIR", "off")
    assert facecache.cache_dir() is None


def test_region_probe_finds_where_identity_lives():
    g = torch.Generator().manual_seed(0)
    n_cls, res = 5, 16
    inside = box_mask(res, INNER_BOX)
    assert inside.any() and not inside.all()

    def make(k):
        y = torch.arange(n_cls).repeat_interleave(k)
        x = torch.rand(len(y), 3, res, res, generator=g) * 255
        proto = torch.rand(n_cls, 3, res, res, generator=torch.Generator().manual_seed(1)) * 255
        x = torch.where(inside, 0.5 * x + 0.5 * proto[y], x)   # identity only inside the box
        return x.round().to(torch.uint8), y

    (xtr, ytr), (xte, yte) = make(10), make(4)
    r = region_probe(xtr, ytr, xte, yte, INNER_BOX)
    assert r["box"]["acc"] > 0.9 and r["masked"]["acc"] < 0.5 and r["whole"]["acc"] > 0.8


def test_v1_is_unchanged():
    """v1 (``synthetic``) renders as the code before v2 existed did (recorded per-image pixel sums).

    Another CPU may round a pixel or two differently (one unit each), so each image's sum of pixel values may
    move by a few units; a change of the generator moves whole images by thousands."""
    s = load_dataset("synthetic", num_private=3, num_public=2, images_per_id=4, seed=0)
    x = s.private_train.images
    assert x.dtype == torch.uint8 and tuple(x.shape) == (9, 3, 32, 32)
    ref = [372056, 371932, 284763, 358553, 263808, 263004, 501893, 523846, 445803]   # recorded at 29223a37…
    sums = [int(v) for v in x.long().sum(dim=(1, 2, 3))]
    off = [abs(a - b) for a, b in zip(sums, ref)]
    assert max(off) <= 4, f"per-image pixel sums moved from the recorded v1 rendering: {sums} vs {ref}"
    assert s.info["generator_version"] == 1 and s.resolution == 32


def test_configs_accept_synthetic2_without_a_root():
    from midre.config import load_config
    from midre.errors import ConfigError

    cfg = load_config("quickstart-v1", overrides={"dataset.name": "synthetic2", "dataset.resolution": 32,
                                               "dataset.options": {"num_private": 20, "train_per_id": 10}})
    assert cfg.dataset.name == "synthetic2" and cfg.dataset.root is None
    with pytest.raises(ConfigError, match="images_per_id"):
        load_config("quickstart-v1", overrides={"dataset.name": "synthetic2"})   # a v1 option, not v2's


def test_synthetic2_runs_through_the_pipeline(tmp_path):
    """A tiny `midre run` on synthetic2 (16 px): data, eval model, target, prior, GMI, report."""
    from midre.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
name: tiny2
seed: 0
device: cpu
dataset: {name: synthetic2, resolution: 16, options: {num_private: 4, num_public: 4, train_per_id: 4,
          test_per_id: 2, public_per_id: 4}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
targets: [{name: nodef, defense: nodef}]
attacks: [{name: gmi, preset: quick, params: {iterations: 2}, identities: "0-1", repeats: 1}]
priors: {preset: quick, params: {gan: {iterations: 2, batch_size: 8}}}
metrics: {fid: none, n_boot: 10}
report: {enabled: true}
""")
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert (out / "results.csv").exists() and (out / "report.html").exists()
    meta = json.loads((out / "targets" / "nodef" / "model.json").read_text())
    assert meta["dataset"]["name"] == "synthetic2"


def test_cache_min_images_setting_is_checked(monkeypatch):
    from midre.data.facecache import MIN_IMAGES, _min_images
    from midre.errors import ArgumentError

    monkeypatch.delenv("MIDRE_CACHE_MIN_IMAGES", raising=False)
    assert _min_images() == MIN_IMAGES
    monkeypatch.setenv("MIDRE_CACHE_MIN_IMAGES", "0")
    assert _min_images() == 0
    monkeypatch.setenv("MIDRE_CACHE_MIN_IMAGES", "lots")
    with pytest.raises(ArgumentError, match="MIDRE_CACHE_MIN_IMAGES"):
        _min_images()
