"""Priors and GAN modules: shapes at 32/64 px, presets/validation, cache, exact resume, public-data-only."""
from __future__ import annotations

import pytest
import torch

from midre.errors import ArgumentError, DataError
from midre.models.generators import CondGenerator, DCGANDiscriminator, DCGANGenerator, ProjectionDiscriminator
from midre.priors import PRESETS, Prior, assert_public_only, data_fingerprint, prepare_priors, prior_config, train_prior
from midre.utils import model_fingerprint

TINY = {"iterations": 4, "width": 8, "batch_size": 8, "ckpt_every": 2}


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    from midre.data import load_dataset
    from midre.models import create_model

    splits = load_dataset("synthetic", seed=0, num_private=4, num_public=4, images_per_id=8)
    torch.manual_seed(0)
    target = create_model("tinycnn", num_classes=4, resolution=32).eval()
    return splits, target


# ------------------------------------------------------------------------------ modules
@pytest.mark.parametrize("res", [32, 64])
def test_gan_modules_shapes_and_range(res):
    z = torch.randn(3, 100)
    g = DCGANGenerator(100, res, 3, 8)
    x = g(z)
    assert x.shape == (3, 3, res, res) and x.min() >= 0 and x.max() <= 1
    d = DCGANDiscriminator(res, 3, 8, 1)
    assert d(x).shape == (3, 1)
    assert d.features(x).shape == (3, d.feature_dim)          # no hard-coded feature constant
    k = DCGANDiscriminator(res, 3, 8, 5 + 1)
    assert k(x).shape == (3, 6) and k.class_logits(x).shape == (3, 5)
    assert torch.allclose(k.class_logits(x), k(x)[:, :5] - k(x)[:, 5:])
    y = torch.tensor([0, 4, 2])
    cg = CondGenerator(5, 128, res, 3, 8)
    xc = cg(torch.randn(3, 128), y)
    assert xc.shape == (3, 3, res, res) and xc.min() >= 0 and xc.max() <= 1
    pd = ProjectionDiscriminator(5, res, 3, 8)
    assert pd(xc, y).shape == (3,)


def test_conditional_generator_depends_on_class():
    cg = CondGenerator(3, 16, 32, 3, 8).eval()
    for m in cg.modules():   # non-trivial class embeddings
        if isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
    z = torch.randn(1, 16).repeat(2, 1)
    x = cg(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])


def test_conditional_generator_at_width_128_has_the_releases_channels():
    """PLG-MI's / LOKT's ResNet generator (nf 64) at 64 px: 1024 x 4 x 4, then 1024 -> 512 -> 256 -> 128 -> 64; the
    `paper` presets reach it with g_width 128 (midre's width w gives 8w ... w/2)."""
    g = CondGenerator(10, 128, 64, 3, 128)
    assert g.fc.out_features == 1024 * 16
    assert [b.conv1.in_channels for b in g.blocks] == [1024, 512, 256, 128]
    assert [b.conv2.out_channels for b in g.blocks] == [512, 256, 128, 64] and g.conv.in_channels == 64


def test_bad_resolution():
    with pytest.raises(ArgumentError, match="power-of-two"):
        DCGANGenerator(100, 48)


# ------------------------------------------------------------------------------ config
def test_presets_and_validation():
    g = prior_config("gan", "paper")         # the ToolBox's 150k critic iterations at 5 per G step; no flip (releases)
    assert (g.iterations, g.n_critic, g.hflip) == (30000, 5, False)
    c = prior_config("cgan", "paper")
    assert (c.topk, c.alpha, c.z_dim, c.betas, c.lr) == (30, 0.2, 128, (0.0, 0.9), 2e-4)
    assert (c.g_width, c.width, prior_config("cgan", "quick").g_width) == (128, 64, None)
    assert prior_config("kedmi", "paper").betas == (0.5, 0.999)
    k = prior_config("kedmi", "paper")       # the release: 5 D steps per G step, no flip (k+1_gan.py, mode "gan")
    assert (k.n_critic, k.iterations, k.hflip) == (5, 10000, False)
    lo = prior_config("lomma", "paper")
    assert lo.aug_archs == ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"] and lo.distill_epochs == 20
    assert prior_config("gan", "quick").iterations < 1000
    assert set(PRESETS) == {"paper", "quick"}
    with pytest.raises(ArgumentError, match="did you mean 'iterations'"):
        prior_config("gan", "quick", {"iteration": 3})
    with pytest.raises(ArgumentError, match="batch_size"):
        prior_config("gan", "quick", {"batch_size": 0})
    with pytest.raises(ArgumentError, match="did you mean 'cgan'"):
        prior_config("cgn")
    with pytest.raises(ArgumentError, match="preset"):
        prior_config("gan", "fast")


def test_per_target_priors_need_a_target(data):
    splits, _ = data
    with pytest.raises(ArgumentError, match="per target"):
        train_prior("kedmi", splits.public, None, config=TINY, preset="quick")


# ------------------------------------------------------------------------------ cache + resume
def test_cache_second_call_loads(data, tmp_path, monkeypatch):
    from midre import priors as P

    splits, _ = data
    p1 = train_prior("gan", splits.public, out_dir=tmp_path, config=TINY, preset="quick", seed=0, device="cpu")
    assert (tmp_path / f"gan-{p1.meta['key']}" / "prior.json").exists()
    monkeypatch.setattr(P.AdversarialPrior, "loop", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    p2 = train_prior("gan", splits.public, out_dir=tmp_path, config=TINY, preset="quick", seed=0, device="cpu")
    for a, b in zip(p1.generator.state_dict().values(), p2.generator.state_dict().values()):
        assert torch.equal(a, b)
    z = torch.randn(2, 100)
    assert torch.allclose(p1.generator.eval()(z), p2.generator(z))
    # another seed / config -> another key
    monkeypatch.undo()
    p3 = train_prior("gan", splits.public, out_dir=tmp_path, config={**TINY, "iterations": 2}, preset="quick",
                     seed=0, device="cpu")
    assert p3.meta["key"] != p1.meta["key"]


def test_resume_gives_same_weights_as_uninterrupted(data, tmp_path):
    splits, target = data
    full = train_prior("cgan", splits.public, target, out_dir=tmp_path / "a", config=TINY, preset="quick", seed=5,
                       device="cpu")
    part = train_prior("cgan", splits.public, target, out_dir=tmp_path / "b", config=TINY, preset="quick", seed=5,
                       device="cpu", until=2)
    assert part.meta["complete"] is False
    root = tmp_path / "b" / f"cgan-{full.meta['key']}"
    assert (root / "state.safetensors").exists() and not (root / "prior.json").exists()
    done = train_prior("cgan", splits.public, target, out_dir=tmp_path / "b", config=TINY, preset="quick", seed=5,
                       device="cpu")
    assert done.meta["complete"] and not (root / "state.safetensors").exists()
    for (k, a), b in zip(full.state().items(), done.state().values()):
        assert torch.equal(a, b), k


def test_lomma_prior_feature_dims_and_archs(data, tmp_path):
    splits, target = data
    p = train_prior("lomma", splits.public, target, out_dir=tmp_path, preset="quick",
                    config={"distill_epochs": 1, "aug_archs": ["tinycnn", "smallcnn"], "batch_size": 16},
                    device="cpu")
    assert p.p_reg.shape == (target.feature_dim,)      # p_reg lives in the target's penultimate space
    assert [m.arch for m in p.aug_models] == ["smallcnn"]  # the target's own architecture is skipped
    assert p.aug_models[0](torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with torch.no_grad():
        expect = torch.cat([target.features(splits.public.batch(range(i, min(i + 256, len(splits.public))))[0])
                            for i in range(0, len(splits.public), 256)]).mean(0)
    assert torch.allclose(p.p_reg, expect, atol=1e-5)  # n_feature_images >= public size -> all of them
    back = Prior.load(tmp_path / f"lomma-{p.meta['key']}")
    assert torch.equal(back.p_reg, p.p_reg) and back.aug_models[0].arch == "smallcnn"
    with pytest.raises(ArgumentError, match="OTHER architectures"):
        train_prior("lomma", splits.public, target, preset="quick", config={"aug_archs": ["tinycnn"]}, device="cpu")


def test_lomma_aug_kwargs_build_and_reload_the_same_models(data, tmp_path):
    from midre.priors import PriorConfig, prior_key

    splits, target = data
    p = train_prior("lomma", splits.public, target, out_dir=tmp_path, preset="quick",
                    config={"distill_epochs": 1, "aug_archs": ["smallresnet"], "aug_kwargs": {"stem_stride": 2},
                            "batch_size": 16}, device="cpu")
    back = Prior.load(tmp_path / f"lomma-{p.meta['key']}")
    for m in (p.aug_models[0], back.aug_models[0]):
        assert m.backbone.stem[0].stride == (2, 2)
    x = splits.public.batch(range(4))[0]
    with torch.no_grad():
        assert torch.equal(p.aug_models[0](x), back.aug_models[0](x))
    # an empty aug_kwargs leaves the keys of priors made before the field existed (the shipped zoo's)
    cfg = PriorConfig()
    old = {k: v for k, v in cfg.model_dump().items() if k not in ("aug_kwargs", "g_width")}
    from midre.utils import config_hash
    assert prior_key("gan", splits.public, None, cfg, 0) == config_hash(
        {"kind": "gan", "public": data_fingerprint(splits.public), "target": model_fingerprint(None),
         "config": old, "seed": 0, "version": 1})
    assert prior_key("gan", splits.public, None, cfg.model_copy(update={"aug_kwargs": {"stem_stride": 2}}), 0) \
        != prior_key("gan", splits.public, None, cfg, 0)
    assert prior_key("cgan", splits.public, None, cfg.model_copy(update={"g_width": 128}), 0) \
        != prior_key("cgan", splits.public, None, cfg, 0)


def test_kedmi_prior_uses_target_soft_labels(data, tmp_path):
    splits, target = data
    p = train_prior("kedmi", splits.public, target, out_dir=tmp_path, config=TINY, preset="quick", device="cpu")
    assert p.discriminator.num_outputs == target.num_classes + 1
    assert p.meta["target_fingerprint"] == model_fingerprint(target)
    # another target -> another prior key (one per target)
    import copy

    t2 = copy.deepcopy(target)   # same architecture, different weights
    with torch.no_grad():
        next(t2.parameters()).add_(1.0)
    from midre.priors import prior_key

    assert prior_key("kedmi", splits.public, t2, prior_config("kedmi", "quick", TINY), 0) != p.meta["key"]


# ------------------------------------------------------------------------------ public data only (pitfall)
def test_priors_only_ever_see_public_data(data, tmp_path, monkeypatch):
    """Pitfall: the GAN prior trained on the PRIVATE set.  Every prior records the fingerprint of the data
    it trained on; it must be the public split, and the guard refuses public data holding private images."""
    from midre import priors as P

    splits, target = data
    seen = []
    orig = P.PublicImages.__init__

    def spy(self, public_set, device, hflip):
        seen.append(data_fingerprint(public_set))
        orig(self, public_set, device, hflip)

    monkeypatch.setattr(P.PublicImages, "__init__", spy)

    class _Attack:
        prior_kinds = ("gan", "kedmi", "cgan", "lomma")

    cfg = {k: TINY for k in ("gan", "kedmi", "cgan")}
    cfg["lomma"] = {"distill_epochs": 1, "aug_archs": ["smallcnn"]}
    priors = prepare_priors(_Attack(), splits.public, target, out_dir=tmp_path, preset="quick", configs=cfg,
                            device="cpu")
    pub, priv = data_fingerprint(splits.public), data_fingerprint(splits.private_train)
    assert seen == [pub] * 4
    assert all(p.meta["public_fingerprint"] == pub != priv for p in priors.values())
    assert_public_only(splits.public, splits.private_train, splits.private_test)
    mixed = splits.public.subset(range(5))
    from midre.data import TensorImageSet

    leak = TensorImageSet(torch.cat([mixed.images, splits.private_train.images[:1]]),
                          torch.cat([mixed.targets, splits.private_train.targets[:1]]))
    with pytest.raises(DataError, match="private"):
        assert_public_only(leak, splits.private_train)
    with pytest.raises(ArgumentError, match="unknown prior kind"):
        prepare_priors(_Attack(), splits.public, target, configs={"gna": {}})


def test_cgan_g_width_widens_the_generator_only_and_reloads(data, tmp_path):
    from midre.priors.tacgan import PRESETS as TACGAN_PRESETS

    splits, target = data
    p = train_prior("cgan", splits.public, target, out_dir=tmp_path, config={**TINY, "g_width": 16, "topk": 2},
                    preset="quick", device="cpu")
    assert p.generator.config["width"] == 16 and p.discriminator.config["width"] == 8
    back = Prior.load(tmp_path / f"cgan-{p.meta['key']}")
    assert back.generator.config["width"] == 16
    assert TACGAN_PRESETS["paper"]["g_width"] == 128          # LOKT's T-ACGAN: the release's generator channels


def test_cgan_inversion_loss_sees_augmented_fakes(data, tmp_path, monkeypatch):
    """PLG-MI's release (train_cgan.py) and the ToolBox score the fakes through the augmentation pipeline; the
    kind's version gives priors trained before that change new keys."""
    from midre.priors import PriorConfig, cgan, prior_key

    calls = []
    orig = cgan.random_views

    def spy(x, gen, *a, **k):
        calls.append((a, k))
        return orig(x, gen, *a, **k)

    monkeypatch.setattr(cgan, "random_views", spy)
    splits, target = data
    train_prior("cgan", splits.public, target, out_dir=tmp_path, config={**TINY, "topk": 2, "iterations": 2},
                preset="quick", device="cpu")
    assert len(calls) == 2 and calls[0] == (((0.8, 1.0), 0.2, 5.0), {"rotation_p": 0.5, "jitter_p": 0.5})
    from midre.utils import config_hash

    cfg = PriorConfig()
    dump = {k: v for k, v in cfg.model_dump().items() if k not in ("aug_kwargs", "g_width")}
    v1 = config_hash({"kind": "cgan", "public": data_fingerprint(splits.public), "target": model_fingerprint(target),
                      "config": dump, "seed": 0, "version": 1})
    assert cgan.CganPrior.version == 2 and prior_key("cgan", splits.public, target, cfg, 0) != v1
    assert prior_key("gan", splits.public, None, cfg, 0) == config_hash(
        {"kind": "gan", "public": data_fingerprint(splits.public), "target": model_fingerprint(None),
         "config": dump, "seed": 0, "version": 1})                  # other kinds keep their keys (the zoo's)
