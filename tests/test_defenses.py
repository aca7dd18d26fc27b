"""Baseline defenses (MID, BiDO, NLS, TL-DMI, MI-RAD, DP-SGD) and their combinations with MIDRE.

Each test checks the MECHANISM (a value, a shape, what is frozen, what the forward computes), on
tinycnn / smallresnet and random 16-px images, so the file stays fast on 2 CPU cores.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from midre.data.base import TensorImageSet
from midre.defenses import DEFENSES, Compose, StepContext, TrainContext, build_defense
from midre.defenses.bido import BiDO, coco, evenly_spaced, gaussian_kernel, hsic, nhsic
from midre.defenses.dp import DPSGD
from midre.defenses.mid import MID, VIBHead, gaussian_kl
from midre.defenses.mirad import MIRAD
from midre.defenses.nls import NLS, smoothed_ce
from midre.defenses.tldmi import TLDMI, leaf_modules
from midre.errors import ArgumentError, ConfigError, DataError, MidreError
from midre.models import create_model
from midre.training import TrainConfig, train_classifier

RES = 16


def _set(n: int, classes: int, seed: int = 0, label_offset: int = 0) -> TensorImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8)
    return TensorImageSet(x, torch.arange(n) % classes + label_offset)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=16, lr=0.05, device="cpu", amp=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _tiny(classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("tinycnn", num_classes=classes, resolution=RES)


def _resnet(classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("smallresnet", num_classes=classes, resolution=RES)


# ----------------------------------------------------------------------------------- registry / params
BASELINES = ["mid", "bido", "nls", "tldmi", "rolss", "ssf", "tts", "mirad", "dp"]


@pytest.mark.parametrize("name", BASELINES)
def test_registered_and_params_round_trip(name):
    assert name in DEFENSES
    d = build_defense(name)
    again = build_defense(d.spec())
    assert again.spec() == d.spec()
    assert type(again) is type(d)


@pytest.mark.parametrize("spec", [
    {"name": "mid", "beta": -1}, {"name": "mid", "k": 0}, {"name": "mid", "k": 2.5},
    {"name": "bido", "measure": "mmd"}, {"name": "bido", "sigma": 0}, {"name": "bido", "lambda_x": -0.1},
    {"name": "bido", "layers": []}, {"name": "nls", "alpha": 1.5}, {"name": "nls", "start": 0.8, "end": 0.5},
    {"name": "tldmi", "freeze": 1.5}, {"name": "tldmi", "freeze": -1}, {"name": "tldmi", "pretrain_optimizer": "rmsprop"},
    {"name": "rolss", "stages": 0}, {"name": "ssf", "scale": 1.0}, {"name": "ssf", "scale": 0.0},
    {"name": "tts", "switch": 1.0}, {"name": "tts", "order": "random"}, {"name": "mirad", "mode": "repvgg"},
    {"name": "mirad", "mode": "rolss", "scale": 0.5},
    {"name": "dp", "max_grad_norm": 0}, {"name": "dp", "delta": 2}, {"name": "dp", "noise_multiplier": -1},
    {"name": "dp", "target_epsilon": 0}, {"name": "mid", "bta": 0.1},
])
def test_bad_hyper_parameters_are_one_line_errors(spec):
    with pytest.raises(MidreError) as e:
        build_defense(spec)
    assert "\n" not in str(e.value) and str(e.value)


def test_numbers_written_as_yaml_strings_are_accepted():
    # YAML 1.1 (and --defense-param delta=1e-5) reads "1e-5" as a string
    assert build_defense({"name": "dp", "delta": "1e-5"}).delta == 1e-5
    assert build_defense({"name": "mid", "beta": "3e-3", "k": "64"}).params() == {"beta": 0.003, "k": 64,
                                                                              "sample_at_test": True}
    assert build_defense({"name": "tldmi", "freeze": "2"}).freeze == 2
    assert build_defense({"name": "tldmi", "freeze": "0.25"}).freeze == 0.25
    with pytest.raises(ArgumentError, match="beta must be a number"):
        build_defense({"name": "mid", "beta": "lots"})


def test_unknown_parameter_suggests_the_right_one():
    with pytest.raises(ArgumentError, match="did you mean 'beta'"):
        build_defense({"name": "mid", "bta": 0.1})


# ----------------------------------------------------------------------------------- MID

def test_mid_default_code_is_half_the_feature_dimension():
    """The references' rule (the release's VGG16 2048 -> 1024, the ToolBox's VibWrapper, TL-DMI's IR152 512 ->
    256), not a fixed size; the checkpoint's defense parameters rebuild the same head."""
    m = _tiny(classes=5)
    d = build_defense("mid")
    assert d.params()["k"] is None
    head = d.wrap_model(m).head
    assert head.k == m.feature_dim // 2
    assert build_defense(d.spec()).wrap_model(_tiny(classes=5)).head.k == head.k

def test_mid_bottleneck_shapes_and_sigma_definition():
    model = MID(k=6).wrap_model(_tiny(classes=5))
    head = model.head
    assert isinstance(head, VIBHead)
    assert head.encoder.in_features == model.feature_dim and head.encoder.out_features == 12
    assert head.classifier.in_features == 6 and head.classifier.out_features == 5
    x = torch.rand(3, 3, RES, RES)
    f = model.features(x)
    mu, sigma = head.stats(f)
    assert mu.shape == sigma.shape == (3, 6)
    raw = head.encoder(f)
    assert torch.allclose(mu, raw[:, :6])
    assert torch.allclose(sigma, F.softplus(raw[:, 6:] - 5.0))
    assert model(x).shape == (3, 5)


def test_mid_kl_matches_closed_form_and_regularizer():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    sigma = torch.tensor([[0.1, 1.0], [2.0, 0.5]])
    # by hand: 0.5 * (mu^2 + s^2 - 1 - log s^2), summed over dims, mean over batch
    per = 0.5 * (mu ** 2 + sigma ** 2 - 1 - torch.log(sigma ** 2))
    expected = per.sum(1).mean()
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                            torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(gaussian_kl(mu, sigma), expected) and torch.allclose(expected, ref)

    d = MID(beta=0.01, k=4)
    model = d.wrap_model(_tiny())
    model.train()
    x, y = torch.rand(5, 3, RES, RES), torch.tensor([0, 1, 2, 3, 0])
    logits = model(x)
    mu, sigma = model.head.stats(model.features(x))
    reg = d.regularizer(StepContext(model=model, x=x, y=y, logits=logits, features=None, epoch=0, epochs=1))
    assert torch.allclose(reg, 0.01 * gaussian_kl(mu, sigma), atol=1e-6)
    reg.backward()
    assert model.head.encoder.weight.grad is not None


def test_mid_test_time_prediction_sampled_by_default_or_the_mean():
    model = MID(k=8, sample_at_test=False).wrap_model(_tiny())
    x = torch.rand(4, 3, RES, RES)
    with torch.no_grad():
        model.train()
        # sigma = softplus(raw - 5) is small but not zero: sampling changes the logits in training
        assert not torch.equal(model(x), model(x))
        model.eval()
        a, b = model(x), model(x)
        mu, sigma = model.head.stats(model.features(x))
        assert torch.equal(a, b) and torch.allclose(a, model.head.classifier(mu))
        # the default (the reference): z = mu + sigma * eps in eval mode too, eps from torch's global RNG
        sampled = MID(k=8).wrap_model(model)
        assert sampled.head.sample_at_test and not sampled.training
        assert not torch.equal(sampled(x), sampled(x))
        torch.manual_seed(3)
        s1 = sampled(x)
        torch.manual_seed(3)
        eps = torch.randn_like(sigma)
        assert torch.allclose(s1, model.head.classifier(mu + sigma * eps), atol=1e-6)


def test_mid_checkpoint_round_trip(tmp_path):
    from midre.loading import load_model

    train = _set(32, 4)
    res = train_classifier(_tiny(), train, train, defense={"name": "mid", "k": 8}, config=_cfg(),
                           out_dir=tmp_path / "mid", progress=False)
    loaded, meta = load_model(tmp_path / "mid")
    assert isinstance(loaded.head, VIBHead) and loaded.head.k == 8
    assert loaded.head.sample_at_test                 # the recorded default comes back
    x = torch.rand(3, 3, RES, RES)
    with torch.no_grad():
        torch.manual_seed(0)
        a = loaded(x)
        torch.manual_seed(0)
        assert torch.allclose(a, res.model.eval()(x), atol=1e-6)


# ----------------------------------------------------------------------------------- BiDO
def test_hsic_hand_value_and_normalisation():
    # n = 2, K = [[1, a], [a, 1]], L = [[1, b], [b, 1]]: tr(KHLH) = (1 - a)(1 - b), (n - 1)^2 = 1
    a, b = 0.2, 0.5
    K = torch.tensor([[1.0, a], [a, 1.0]])
    L = torch.tensor([[1.0, b], [b, 1.0]])
    assert hsic(K, L).item() == pytest.approx((1 - a) * (1 - b), abs=1e-7)
    # HKH = (1 - a) H, ||H||_F = 1 -> COCO = sqrt((1 - a)(1 - b)) / n
    assert coco(K, L).item() == pytest.approx(math.sqrt((1 - a) * (1 - b)) / 2, abs=1e-5)
    # n = 3, against the expansion sum(K*L) - 2/n sum_i K_i. L_i. + sum(K) sum(L) / n^2, over (n-1)^2
    K3 = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
    L3 = torch.tensor([[1.0, 0.1, 0.7], [0.1, 1.0, 0.4], [0.7, 0.4, 1.0]])
    n = 3
    by_hand = ((K3 * L3).sum() - 2 / n * (K3.sum(1) * L3.sum(1)).sum() + K3.sum() * L3.sum() / n ** 2) / (n - 1) ** 2
    assert hsic(K3, L3).item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_gaussian_kernel_bandwidth_scales_with_dimension():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    K = gaussian_kernel(x, sigma=1.0)
    # ||a - b||^2 = 2, d = 2: exp(-2 / (2 * 1 * 2))
    assert K[0, 1].item() == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert K[0, 0].item() == pytest.approx(1.0)


def test_normalised_hsic_hand_value():
    # n = 2: K_c = (1 - a) H, H a rank-1 projection, so R = c / (c + eps) H with eps = 1e-5 * n
    a, b, eps = 0.2, 0.5, 2e-5
    K = torch.tensor([[1.0, a], [a, 1.0]], dtype=torch.float64)
    L = torch.tensor([[1.0, b], [b, 1.0]], dtype=torch.float64)
    c, d = 1 - a, 1 - b
    assert nhsic(K, L).item() == pytest.approx(c * d / ((c + eps) * (d + eps)), rel=1e-9)
    # scale invariance (the reason the reference lambdas work for any layer width)
    assert nhsic(0.01 * K, L).item() == pytest.approx(nhsic(K, L).item(), rel=1e-2)


@pytest.mark.parametrize("measure,y_kernel", [("hsic", "linear"), ("hsic_plain", "gaussian"), ("coco", "linear")])
def test_bido_regularizer_value_over_hooked_blocks(measure, y_kernel):
    assert evenly_spaced(3) == [0, 1, 2] and evenly_spaced(5) == [0, 2, 4] and evenly_spaced(2) == [0, 1]
    torch.manual_seed(0)
    d = BiDO(lambda_x=0.05, lambda_y=0.5, sigma=5.0, measure=measure, y_kernel=y_kernel)
    model = _tiny()
    d.prepare(TrainContext(model=model, train_set=None))
    acts = {}
    hs = [b.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o)) for k, b in enumerate(model.blocks)]
    model.train()
    x, y = torch.rand(6, 3, RES, RES), torch.tensor([0, 1, 2, 3, 0, 1])
    logits = model(x)
    reg = d.regularizer(StepContext(model=model, x=x, y=y, logits=logits, features=None, epoch=0, epochs=1))
    for h in hs:
        h.remove()
    onehot = F.one_hot(y, 4).float()
    fn = {"hsic": nhsic, "hsic_plain": hsic, "coco": coco}[measure]
    Kx = gaussian_kernel(x.flatten(1), 5.0)
    Ky = onehot @ onehot.T if y_kernel == "linear" else gaussian_kernel(onehot, 5.0)
    expected = 0.0
    for j in [0, 1, 2]:
        Kz = gaussian_kernel(acts[j].flatten(1), 5.0)
        expected = expected + 0.05 * fn(Kz, Kx) - 0.5 * fn(Kz, Ky)
    assert torch.allclose(reg, expected, rtol=1e-4, atol=1e-7)
    reg.backward()
    assert model.blocks[0][0].weight.grad is not None and model.blocks[0][0].weight.grad.abs().sum() > 0
    # eval mode / no grad: nothing is recorded
    model.eval()
    with torch.no_grad():
        model(x)
    assert d._acts == {}


def test_bido_release_layers_are_all_blocks_but_the_last_and_the_penultimate_feature():
    """The BiDO release's VGG16 (hsic_training) returns the four pooled block outputs and the feature after its
    BatchNorm1d, and sums the penalty over all five; `layers: release` hooks the same places on any Classifier."""
    model = _tiny()
    d = BiDO(layers="release")
    assert d.params()["layers"] == "release" and d.hooked_indices(model) == list(range(len(model.blocks) - 1))
    d.prepare(TrainContext(model=model, train_set=None))
    feats = {}
    h = model.head.register_forward_hook(lambda m, i, o: feats.__setitem__("f", i[0]))
    model.train()
    x, y = torch.rand(6, 3, RES, RES), torch.tensor([0, 1, 2, 3, 0, 1])
    logits = model(x)
    h.remove()
    acts = dict(d._acts)
    assert sorted(acts) == [*range(len(model.blocks) - 1), len(model.blocks)]
    assert torch.equal(acts[len(model.blocks)], feats["f"])
    reg = d.regularizer(StepContext(model=model, x=x, y=y, logits=logits, features=None, epoch=0, epochs=1))
    onehot = F.one_hot(y, 4).float()
    Kx, Ky = gaussian_kernel(x.flatten(1), 5.0), onehot @ onehot.T
    expected = sum(0.05 * nhsic(gaussian_kernel(a.flatten(1), 5.0), Kx) - 0.5 * nhsic(gaussian_kernel(a.flatten(1), 5.0), Ky)
                   for a in acts.values())
    assert torch.allclose(reg, expected, rtol=1e-4, atol=1e-7)
    with pytest.raises(ArgumentError, match="release"):
        BiDO(layers="all")


def test_bido_layer_choice_and_errors():
    model = _tiny()
    d = BiDO(layers=[-1])
    assert d.hooked_indices(model) == [2]
    with pytest.raises(ArgumentError, match="out of range"):
        BiDO(layers=[7]).hooked_indices(model)
    with pytest.raises(ArgumentError, match="prepare"):
        x = torch.rand(2, 3, RES, RES)
        BiDO().regularizer(StepContext(model=model, x=x, y=torch.tensor([0, 1]), logits=model(x), features=None,
                                       epoch=0, epochs=1))


# ----------------------------------------------------------------------------------- NLS
def test_nls_ramp_per_epoch_reference_schedule():
    d = NLS(alpha=-0.05)
    got = {}
    for e in range(100):
        d.on_epoch_start(e, 100)
        got[e] = d.current_alpha
    assert all(got[e] == 0.0 for e in range(0, 51))          # plain CE for the first half
    assert got[60] == pytest.approx(-0.05 * 10 / 25)
    assert got[70] == pytest.approx(-0.05 * 20 / 25)
    assert all(got[e] == pytest.approx(-0.05) for e in range(75, 100))
    assert all(got[e + 1] <= got[e] for e in range(99))       # monotone towards alpha
    # short run, 8 epochs: ramp over epochs 4 -> 6
    assert [NLS(alpha=-0.1).alpha_at(e, 8) for e in range(8)] == pytest.approx([0, 0, 0, 0, 0, -0.05, -0.1, -0.1])
    assert NLS(alpha=-0.1, start=0.0, end=0.0).alpha_at(0, 8) == -0.1


def test_nls_loss_formula():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 0])
    logp = torch.log_softmax(logits, 1)
    alpha = -0.05
    by_hand = ((1 - alpha) * -logp[torch.arange(5), y] + alpha * (-logp).mean(1)).mean()
    assert torch.allclose(smoothed_ce(logits, y, alpha), by_hand)
    assert torch.allclose(smoothed_ce(logits, y, 0.0), F.cross_entropy(logits, y))
    assert torch.allclose(smoothed_ce(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)
    d = NLS(alpha=alpha)
    d.on_epoch_start(0, 4)
    assert torch.allclose(d.task_loss(logits, y), F.cross_entropy(logits, y))
    d.on_epoch_start(3, 4)
    assert torch.allclose(d.task_loss(logits, y), by_hand)


# ----------------------------------------------------------------------------------- TL-DMI
def test_tldmi_which_modules_are_frozen():
    model = _tiny()
    leaves = [n for n, _ in leaf_modules(model)]
    assert leaves == ["backbone.stages.0.0", "backbone.stages.0.1", "backbone.stages.1.0", "backbone.stages.1.1",
                      "backbone.stages.2.0", "backbone.stages.2.1"]      # conv, bn per block; head excluded
    assert [n for n, _ in TLDMI(freeze=0.5).frozen_modules(model)] == leaves[:3]
    assert [n for n, _ in TLDMI(freeze=1).frozen_modules(model)] == leaves[:2]
    assert [n for n, _ in TLDMI(freeze=2).frozen_modules(model)] == leaves[:4]
    assert TLDMI(freeze=0).frozen_modules(model) == []
    assert [n for n, _ in TLDMI(freeze=1.0).frozen_modules(model)] == leaves
    # the stem before the first block is frozen with it
    rn = _resnet()
    names = [n for n, _ in TLDMI(freeze=1).frozen_modules(rn)]
    assert names[0].startswith("backbone.stem") and names[-1].startswith("backbone.stages.0")
    with pytest.raises(ArgumentError, match="cannot freeze 9 blocks"):
        TLDMI(freeze=9).frozen_modules(model)


class _SpyTLDMI(TLDMI):
    def apply_freeze(self, model):
        self.after_pretrain = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return super().apply_freeze(model)


def test_tldmi_pretrains_on_public_then_fine_tunes_only_later_layers():
    private = _set(32, 4, seed=1)
    public = _set(48, 6, seed=2, label_offset=10)       # other identities, labels 10..15
    model = _tiny()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = _SpyTLDMI(freeze=0.5, pretrain_epochs=1, pretrain_batch_size=16, pretrain_lr=0.05)
    res = train_classifier(model, private, None, defense=d, config=_cfg(epochs=2), public_set=public, progress=False)
    final = res.model.state_dict()
    frozen = set(d.frozen_names)
    assert frozen == {"backbone.stages.0.0", "backbone.stages.0.1", "backbone.stages.1.0"}
    # pre-training on public data changed the backbone
    assert not torch.equal(d.after_pretrain["backbone.stages.0.0.weight"], init["backbone.stages.0.0.weight"])
    for name, p in res.model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in frozen:
            assert not p.requires_grad
            assert torch.equal(p.detach(), d.after_pretrain[name]), name      # unchanged by fine-tuning
        else:
            assert p.requires_grad
            assert not torch.equal(p.detach(), d.after_pretrain[name]), name  # fine-tuned
    # the frozen BN kept its running statistics (eval mode in the frozen part)
    assert torch.equal(final["backbone.stages.0.1.running_mean"], d.after_pretrain["backbone.stages.0.1.running_mean"])
    assert not torch.equal(final["backbone.stages.1.1.running_mean"], d.after_pretrain["backbone.stages.1.1.running_mean"])
    assert res.defense_report["tldmi_public_classes"] == 6


def test_tldmi_needs_labelled_public_data_and_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    unlabelled = TensorImageSet(torch.zeros(8, 3, RES, RES, dtype=torch.uint8), torch.full((8,), -1))
    with pytest.raises(DataError, match="unlabelled"):
        TLDMI(pretrain_epochs=1).prepare(TrainContext(model=_tiny(), train_set=None, public_set=unlabelled,
                                                      config=_cfg()))
    with pytest.raises(ArgumentError, match="no public set"):
        TLDMI(pretrain_epochs=1).prepare(TrainContext(model=_tiny(), train_set=None, config=_cfg()))
    donor = _tiny(seed=5)
    path = tmp_path / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = _tiny(seed=6)
    d = TLDMI(freeze=1, pretrained=str(path))
    d.prepare(TrainContext(model=model, train_set=None, config=_cfg()))
    assert torch.equal(model.backbone.stages[2][0].weight, donor.backbone.stages[2][0].weight)
    assert not model.backbone.stages[0][0].weight.requires_grad and model.backbone.stages[1][0].weight.requires_grad


# ----------------------------------------------------------------------------------- MI-RAD
def _branch(block, x):
    return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))


def test_rolss_and_ssf_change_the_last_stage_forward_as_stated():
    from midre.models.small import residual_stages

    x = torch.rand(2, 3, RES, RES)
    plain = _resnet().eval()
    rolss = MIRAD("rolss").wrap_model(copy.deepcopy(plain)).eval()
    ssf = MIRAD("ssf", scale=0.3).wrap_model(copy.deepcopy(plain)).eval()
    stages = residual_stages(rolss)
    assert [b.skip_scale for b in stages[-1]] == [0.0] * len(stages[-1])
    assert all(b.skip_scale == 1.0 for st in stages[:-1] for b in st)
    assert all(b.skip_scale == 0.3 for b in residual_stages(ssf)[-1])
    with torch.no_grad():
        for st_r, st_s, st_p in zip(residual_stages(rolss), residual_stages(ssf), residual_stages(plain)):
            for br, bs, bp in zip(st_r, st_s, st_p):
                h = torch.rand(2, br.conv1.in_channels, 4, 4)
                f = _branch(br, h)
                if br.skip_scale == 0.0:
                    assert torch.allclose(br(h), torch.relu(f))                          # residual branch only
                    assert torch.allclose(bs(h), torch.relu(f + 0.3 * bs.shortcut(h)))  # scaled skip
                assert torch.allclose(bp(h), torch.relu(f + bp.shortcut(h)))
        assert not torch.allclose(rolss(x), plain(x)) and not torch.allclose(ssf(x), plain(x))


def test_tts_switches_stages_per_epoch():
    from midre.models.small import last_stage_blocks

    d = MIRAD("tts", scale=0.0, switch=0.5)
    model = d.wrap_model(_resnet())
    last = last_stage_blocks(model)
    assert all(b.skip_scale == 1.0 for b in last)          # deployed: plain (modified first)
    seen = []
    for e in range(4):
        d.on_epoch_start(e, 4)
        seen.append(last[0].skip_scale)
    assert seen == [0.0, 0.0, 1.0, 1.0]
    d2 = MIRAD("tts", scale=0.2, order="plain_first")
    m2 = d2.wrap_model(_resnet())
    assert all(b.skip_scale == 0.2 for b in last_stage_blocks(m2))
    assert [d2.scale_at(e, 4) for e in range(4)] == [1.0, 1.0, 0.2, 0.2]


def test_mirad_on_plain_torchvision_resnet_and_non_residual_model():
    from torchvision.models import resnet as tv_resnet

    from midre.models.base import Classifier

    net = tv_resnet.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1])
    net.fc = nn.Identity()
    model = Classifier(net, 512, 3, blocks=[net.layer1, net.layer2, net.layer3, net.layer4]).eval()
    keys = list(model.state_dict())
    block = net.layer4[0]
    h = torch.rand(1, 256, 4, 4)
    with torch.no_grad():
        before = block(h)
        MIRAD("rolss").wrap_model(model)
        assert block.skip_scale == 0.0 and net.layer3[0].skip_scale == 1.0
        assert torch.allclose(block(h), torch.relu(_branch(block, h)))
        assert not torch.allclose(block(h), before)
    assert list(model.state_dict()) == keys
    with pytest.raises(ArgumentError, match="no residual blocks"):
        MIRAD("rolss").wrap_model(_tiny())


def test_rolss_checkpoint_round_trip(tmp_path):
    from midre.loading import load_model
    from midre.models.small import last_stage_blocks

    res = train_classifier(_resnet(), _set(16, 4), None, defense="rolss", config=_cfg(), out_dir=tmp_path / "r",
                           progress=False)
    loaded, _ = load_model(tmp_path / "r")
    assert all(b.skip_scale == 0.0 for b in last_stage_blocks(loaded))
    x = torch.rand(2, 3, RES, RES)
    with torch.no_grad():
        assert torch.allclose(loaded(x), res.model(x), atol=1e-6)


# ----------------------------------------------------------------------------------- DP-SGD
def test_dp_wrap_model_replaces_batchnorm_deterministically():
    d = DPSGD()
    a = d.wrap_model(_resnet())
    b = d.wrap_model(_resnet(seed=3))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in a.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in a.modules())
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert len(a.blocks) == 4 and a(torch.rand(2, 3, RES, RES)).shape == (2, 4)


def _per_sample_grads(model, x, y):
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
    model.zero_grad()
    return grads


@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_dp_clips_and_noises_per_sample_gradients(noise):
    torch.manual_seed(0)
    n, C = 8, 0.05
    data = _set(n, 4)
    d = DPSGD(noise_multiplier=noise, max_grad_norm=C, poisson_sampling=False)
    model = d.wrap_model(_tiny())
    model.train()
    x, y = data.batch(torch.arange(n))
    grads = _per_sample_grads(model, x, y)
    norms = torch.stack([torch.sqrt(sum((g ** 2).sum() for g in gs)) for gs in grads])
    assert (norms > C).all()                                            # clipping is active for every sample
    factors = (C / (norms + 1e-6)).clamp(max=1.0)
    clipped_sum = [sum(f * gs[j] for f, gs in zip(factors, grads)) for j in range(len(grads[0]))]
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(data, batch_size=n)
    train_model, opt, _ = d.wrap_training(model, opt, loader)
    assert opt.expected_batch_size == n
    opt.zero_grad()
    F.cross_entropy(train_model(x), y).backward()
    opt.step()
    deltas = [b - p.detach() for b, p in zip(before, model.parameters())]       # = lr * noisy clipped mean
    expected = [s / n for s in clipped_sum]
    diff = torch.cat([(dl - e).flatten() for dl, e in zip(deltas, expected)])
    if noise == 0.0:
        assert diff.abs().max() < 1e-5
        total = torch.sqrt(sum((dl ** 2).sum() for dl in deltas))
        assert total <= C + 1e-5                                         # mean of clipped grads has norm <= C
    else:
        # Gaussian noise N(0, (noise * C)^2) per coordinate, divided by the expected batch size
        assert diff.std().item() == pytest.approx(noise * C / n, rel=0.25)


def test_dp_training_reports_epsilon_and_saves_unwrapped_model(tmp_path):
    from midre.loading import load_model

    d = build_defense({"name": "dp", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3})
    res = train_classifier(_tiny(), _set(32, 4), None, defense=d, config=_cfg(epochs=2, batch_size=8, amp=True),
                           out_dir=tmp_path / "dp", progress=False)
    rep = res.defense_report
    assert res.meta["train_config"]["amp"] is False            # DP-SGD clips float32 per-sample gradients
    assert rep["delta"] == 1e-3 and rep["noise_multiplier"] == 1.0 and rep["max_grad_norm"] == 1.0
    assert rep["epsilon"] is not None and 0 < rep["epsilon"] < math.inf
    # the accountant of Opacus' engine (counting the real optimizer steps) agrees
    assert rep["epsilon"] == pytest.approx(d.engine.get_epsilon(1e-3), rel=1e-6)
    assert d.epsilon(steps=4) < rep["epsilon"]                           # more steps, more epsilon
    loaded, meta = load_model(tmp_path / "dp")
    assert meta["defense_report"]["epsilon"] == pytest.approx(rep["epsilon"])
    # calling again on the finished run dir trains nothing and still reports the epsilon spent
    again = train_classifier(_tiny(), _set(32, 4), None, defense=dict(d.spec()), config=_cfg(epochs=2, batch_size=8, amp=True),
                             out_dir=tmp_path / "dp", progress=False)
    assert again.defense_report["epsilon"] == pytest.approx(rep["epsilon"])
    assert not any(k.startswith("_module") for k in loaded.state_dict())


def test_dp_target_epsilon_calibrates_noise():
    d = DPSGD(target_epsilon=5.0, delta=1e-3, max_grad_norm=1.0)
    res = train_classifier(_tiny(), _set(32, 4), None, defense=d, config=_cfg(epochs=2, batch_size=8), progress=False)
    rep = res.defense_report
    assert rep["noise_multiplier"] > 0
    assert rep["epsilon"] <= 5.0 + 0.1


def test_pitfall_gradient_clipping_happens_after_backward():
    """The trainer clips the real gradients (after backward): one SGD step with lr 1 moves the
    parameters by at most grad_clip, though the raw gradient is much larger."""
    data = _set(16, 4)

    def step_norm(clip):
        model = _tiny()
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        res = train_classifier(model, data, None, config=_cfg(batch_size=16, lr=1.0, momentum=0.0, weight_decay=0.0,
                                                              hflip=False, grad_clip=clip), progress=False)
        after = dict(res.model.named_parameters())
        return math.sqrt(sum(((after[k].detach() - v) ** 2).sum().item() for k, v in before.items()))

    raw = step_norm(None)
    clipped = step_norm(1e-3)
    assert raw > 1e-2
    assert clipped == pytest.approx(1e-3, rel=1e-3)


# ----------------------------------------------------------------------------------- combinations
def test_midre_plus_nls_erases_batches_and_uses_the_nls_loss():
    d = build_defense("midre+nls")
    assert isinstance(d, Compose) and [m.name for m in d.members()] == ["midre", "nls"]
    d.on_epoch_start(3, 4)                       # NLS at its final alpha
    x = torch.ones(4, 3, RES, RES)
    y = torch.tensor([0, 1, 2, 3])
    xe, ye = d.transform_batch(x.clone(), y, torch.arange(4))
    assert torch.equal(ye, y)
    assert all((xe[i] != 1).any() for i in range(4))      # every image got a square erased
    logits = torch.randn(4, 4)
    assert torch.allclose(d.task_loss(logits, y), smoothed_ce(logits, y, -0.05))
    assert not torch.allclose(d.task_loss(logits, y), F.cross_entropy(logits, y))
    spec = d.spec()
    assert spec["name"] == "compose" and build_defense(spec).spec() == spec


def test_midre_plus_bido_trains_with_both_parts():
    d = build_defense([{"name": "midre"}, {"name": "bido", "lambda_y": 0.5}])
    assert [m.name for m in d.members()] == ["midre", "bido"]
    bido = d.members()[1]
    seen = {}
    orig = bido.regularizer

    def spy(ctx):
        seen["x"] = ctx.x.detach().clone()
        out = orig(ctx)
        seen["reg"] = out
        return out

    bido.regularizer = spy
    data = TensorImageSet(torch.full((8, 3, RES, RES), 255, dtype=torch.uint8), torch.arange(8) % 4)
    res = train_classifier(_tiny(), data, None, defense=d, config=_cfg(batch_size=8, hflip=False), progress=False)
    assert seen["reg"] is not None and torch.isfinite(seen["reg"])
    assert (seen["x"] != 1).any(dim=(1, 2, 3)).all()        # BiDO saw the erased batch
    assert math.isfinite(res.history[-1]["loss"])


def test_two_task_losses_cannot_be_combined():
    class OtherLoss(NLS):
        name = "other"

    with pytest.raises(ConfigError):
        Compose([NLS(), OtherLoss()])
