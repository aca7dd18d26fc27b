"""Model registry tests: shapes, features, blocks, normalisation, resizing, skip_scale, weights, errors.

Big models run at batch 1-2 and small resolutions so the file stays fast on 2 CPU cores.
"""
from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from midre.errors import ArgumentError, CheckpointError, UnknownNameError
from midre.models import MODELS, Classifier, create_model
from midre.models.faces import BottleneckIR
from midre.models.small import last_stage_blocks, residual_stages, set_skip_scale
from midre.models.weights import load_pretrained

torch.set_num_threads(1)

# name -> (resolution, extra kwargs, batch); resolution is the data resolution fed to the model
SMALL_CONFIG: dict[str, tuple[int, dict, int]] = {
    "tinycnn": (32, {}, 2), "smallcnn": (32, {}, 2), "smallresnet": (32, {}, 2),
    "vgg16": (32, {}, 2), "ir50": (16, {}, 2), "ir152": (16, {}, 1),
    "facenet64": (32, {}, 1), "facenet112": (64, {}, 1),
    "resnet18": (32, {}, 2), "resnet34": (32, {}, 1), "resnet50": (32, {}, 1), "resnet101": (32, {}, 1),
    "resnet152": (32, {}, 1), "densenet121": (32, {}, 1), "densenet169": (32, {}, 1),
    "maxvit_t": (32, {"input_resolution": 64, "partition_size": 2}, 1),
    "inception_v3": (32, {"input_resolution": 75}, 1), "googlenet": (32, {}, 1),
    "efficientnet_b0": (32, {}, 1), "efficientnet_b1": (32, {}, 1), "efficientnet_b2": (32, {}, 1),
    "resnest101": (32, {}, 1),
}
REQUIRED = {"smallcnn", "tinycnn", "smallresnet", "vgg16", "ir50", "ir152", "facenet64", "facenet112",
            "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169",
            "maxvit_t", "inception_v3", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2"}
RESIDUAL = ["smallresnet", "ir50", "resnet18", "resnet50"]


@functools.cache
def _cached(name: str) -> Classifier:
    res, kw, _ = SMALL_CONFIG[name]
    torch.manual_seed(0)
    return create_model(name, 5, resolution=res, **kw).eval()


def _build(name: str) -> tuple[Classifier, torch.Tensor]:
    """The model in SMALL_CONFIG (built once per session: construction dominates the test time)."""
    if MODELS.info(name).get("family") == "timm":
        pytest.importorskip("timm", reason=f"'{name}' needs the optional timm extra: pip install -e '.[timm]'")
    res, _, batch = SMALL_CONFIG[name]
    x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(1))
    return _cached(name), x


def test_registry_holds_every_required_architecture():
    assert REQUIRED <= set(MODELS.names())
    assert set(MODELS.names()) == set(SMALL_CONFIG), "add new architectures to SMALL_CONFIG"
    for name in MODELS.names():
        info = MODELS.info(name)
        assert info["description"] and info["family"] and isinstance(info["resolution"], int)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIG))
def test_model_contract(name):
    """Logits/features shapes, blocks fire once in order, forward_features == forward, normalised input."""
    model, x = _build(name)
    assert model.arch == name
    calls: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(model.blocks)]
    seen: dict[str, torch.Tensor] = {}
    hooks.append(model.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0])))
    with torch.no_grad():
        logits, feats = model.forward_features(x)
    for h in hooks:
        h.remove()
    b = x.shape[0]
    assert logits.shape == (b, 5)
    assert feats.shape == (b, model.feature_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()
    # blocks: >= 3 distinct modules, every one runs exactly once, in list order (input -> output)
    assert len(model.blocks) >= 3 and len({id(m) for m in model.blocks}) == len(model.blocks)
    assert calls == list(range(len(model.blocks)))
    # head maps features to logits; forward agrees with forward_features
    with torch.no_grad():
        assert torch.allclose(model.head(feats), logits, atol=1e-5)
        assert torch.allclose(model(x), logits, atol=1e-5)
        assert torch.allclose(model.features(x), feats, atol=1e-5)
    # the backbone sees (resized) ImageNet-normalised pixels, not the raw [0, 1] image
    xin = x
    if model.input_resolution is not None and model.input_resolution != x.shape[-1]:
        xin = F.interpolate(x, size=(model.input_resolution,) * 2, mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(seen["in"], (xin - mean) / std, atol=1e-5)
    # the head is a replaceable module (MID swaps it)
    assert isinstance(model.head, nn.Module)


def test_models_are_trainable_and_differentiable_wrt_input():
    torch.manual_seed(0)
    model = create_model("smallcnn", 4, resolution=32)
    x = torch.rand(8, 3, 32, 32)
    y = torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    xr = torch.rand(2, 3, 32, 32, requires_grad=True)   # attacks need d logits / d pixels
    model.eval()(xr)[:, 0].sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0


def test_grayscale_input_is_expanded():
    model = create_model("tinycnn", 3, resolution=16).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


# ---------------------------------------------------------------- feature dimensions (pitfall)

@pytest.mark.parametrize("res,expected", [(32, 512), (64, 2048), (112, 512 * 3 * 3)])
def test_vgg16_feature_dim_follows_resolution(res, expected):
    model = create_model("vgg16", 3, resolution=res).eval()
    assert model.feature_dim == expected
    assert model.backbone.bn.num_features == expected and model.head.in_features == expected
    with torch.no_grad():
        logits, feats = model.forward_features(torch.rand(1, 3, res, res))
    assert feats.shape == (1, expected) and logits.shape == (1, 3)


@pytest.mark.parametrize("name,res,spatial", [("ir50", 64, 4), ("facenet64", None, 4), ("facenet112", None, 7),
                                              ("ir50", None, 1)])
def test_ir_output_layer_matches_resolution(name, res, spatial):
    model = create_model(name, 3, resolution=res) if res else _build(name)[0]
    linear = [m for m in model.backbone.output_layer if isinstance(m, nn.Linear)][0]
    assert linear.in_features == 512 * spatial * spatial
    assert model.feature_dim == 512 and model.head.in_features == 512
    assert isinstance(model.backbone.output_layer[0], nn.BatchNorm2d)
    assert isinstance(model.backbone.output_layer[-1], nn.BatchNorm1d)


def test_ir_depths_and_unit_layout():
    for name, depths in [("ir50", [3, 4, 14, 3]), ("ir152", [3, 8, 36, 3])]:
        model = _build(name)[0]
        assert [len(s) for s in model.backbone.body] == depths
        assert [len(s) for s in residual_stages(model)] == depths
    unit = _build("ir50")[0].backbone.body[1][0]
    kinds = [type(m).__name__ for m in unit.res_layer]
    assert kinds == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d"]
    evolve = BottleneckIR(64, 128, 2, mid_bn=False)
    assert [type(m).__name__ for m in evolve.res_layer] == ["BatchNorm2d", "Conv2d", "PReLU", "Conv2d",
                                                            "BatchNorm2d"]
    se = BottleneckIR(64, 64, 1, se=True)
    assert type(se.res_layer[-1]).__name__ == "SEModule"


def test_resize_models_read_64px_inputs():
    model = _build("facenet112")[0]
    assert model.input_resolution == 112
    sizes = []
    h = model.backbone.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    with torch.no_grad():
        out64 = model(torch.rand(1, 3, 64, 64))
        x112 = torch.rand(1, 3, 112, 112)
        out112 = model(x112)
    h.remove()
    assert sizes == [(112, 112), (112, 112)] and out64.shape == out112.shape == (1, 5)
    # a 64-px image and its exact bilinear upsampling give the same logits
    x = torch.rand(1, 3, 64, 64)
    up = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(model(x), model(up), atol=1e-5)
    assert create_model("maxvit_t", 3).input_resolution == 224
    assert create_model("inception_v3", 3, resolution=64).input_resolution == 299


# ---------------------------------------------------------------- skip connections (MI-RAD)

@pytest.mark.parametrize("name", RESIDUAL)
def test_skip_scale_changes_residual_models(name):
    model, x = _build(name)
    stages = residual_stages(model)
    assert len(stages) >= 3 and all(len(s) >= 1 for s in stages)
    last = last_stage_blocks(model)
    assert last == stages[-1] and all(b.skip_scale == 1.0 for b in last)
    with torch.no_grad():
        base = model(x)
        assert set_skip_scale(model, 0.5) == len(last)
        half = model(x)
        set_skip_scale(model, 0.0)
        none = model(x)
        set_skip_scale(model, 1.0)
        again = model(x)
    assert not torch.allclose(base, half) and not torch.allclose(base, none) and not torch.allclose(half, none)
    assert torch.allclose(base, again, atol=1e-6)
    # earlier stages are untouched
    assert all(b.skip_scale == 1.0 for s in stages[:-1] for b in s)


def test_skip_scale_formula_and_removed_shortcut_not_evaluated():
    torch.manual_seed(0)
    unit = BottleneckIR(8, 16, 2).eval()      # IR units: no activation after the addition
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        res, sc = unit.res_layer(x), unit.shortcut_layer(x)
        for s in (0.0, 0.3, 1.0):
            unit.skip_scale = s
            assert torch.allclose(unit(x), res + s * sc, atol=1e-6)
    called = []
    unit.shortcut_layer.register_forward_hook(lambda *a: called.append(1))
    unit.skip_scale = 0.0
    unit(x)
    assert called == []          # RoLSS: the skip connection is removed, not multiplied by zero


def test_residual_stage_discovery_fallback_and_errors():
    model = create_model("smallresnet", 3, resolution=32)
    named = residual_stages(model)
    del model.stage_names
    assert [[id(b) for b in s] for s in residual_stages(model)] == [[id(b) for b in s] for s in named]
    clone = copy.deepcopy(create_model("resnet18", 3, resolution=32))
    set_skip_scale(clone, 0.0)
    assert all(b.skip_scale == 0.0 for b in clone.backbone.layer4)
    with pytest.raises(ArgumentError, match="no residual blocks"):
        last_stage_blocks(create_model("smallcnn", 3, resolution=32))
    with pytest.raises(ArgumentError, match="out of range"):
        set_skip_scale(clone, 0.5, stages=(7,))
    with pytest.raises(ArgumentError):
        set_skip_scale(clone, -1.0)


# ---------------------------------------------------------------- validation

def test_unknown_architecture_suggests_close_name():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        create_model("resnet-18", 10)
    with pytest.raises(UnknownNameError, match="smallcnn"):
        create_model("nosuchnet", 10)


@pytest.mark.parametrize("name,res", [("vgg16", 16), ("smallcnn", 8), ("tinycnn", 4), ("resnet18", 16),
                                      ("ir50", 8), ("smallresnet", 8)])
def test_resolution_too_small(name, res):
    with pytest.raises(ArgumentError, match="at least"):
        create_model(name, 10, resolution=res)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "10"])
def test_bad_num_classes(bad):
    with pytest.raises(ArgumentError, match="num_classes"):
        create_model("tinycnn", bad, resolution=32)
    with pytest.raises(ArgumentError, match="num_classes"):
        MODELS.get("tinycnn")(num_classes=bad, resolution=32)


def test_bad_options():
    with pytest.raises(ArgumentError, match="unknown option 'widht'.*widths"):
        create_model("smallcnn", 10, resolution=32, widht=(8, 16, 32))
    with pytest.raises(ArgumentError, match="widths"):
        create_model("smallcnn", 10, resolution=32, widths=[8, -1, 32])
    with pytest.raises(ArgumentError, match="depths"):
        create_model("smallresnet", 10, resolution=32, depths=[1, 1])
    with pytest.raises(ArgumentError, match="partition_size"):
        create_model("maxvit_t", 10, input_resolution=64, partition_size=7)
    with pytest.raises(ArgumentError, match="multiple of 32"):
        create_model("maxvit_t", 10, input_resolution=100)
    with pytest.raises(ArgumentError, match="75 px"):
        create_model("inception_v3", 10, resolution=64, input_resolution=64)
    with pytest.raises(ArgumentError, match="dropout"):
        create_model("ir50", 10, resolution=16, dropout=1.5)
    with pytest.raises(ArgumentError, match="small_stem"):
        create_model("resnet18", 10, resolution=32, small_stem="yes")


def test_json_kwargs_and_small_stem():
    m = create_model("smallresnet", 3, resolution=32, widths=[8, 16, 32], depths=[1, 1, 2])
    assert m.feature_dim == 32 and [len(s) for s in residual_stages(m)] == [1, 1, 2]
    r = create_model("resnet18", 3, resolution=32, small_stem=True)
    assert r.backbone.conv1.kernel_size == (3, 3) and isinstance(r.backbone.maxpool, nn.Identity)
    with torch.no_grad():
        assert r.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name", ["smallcnn", "smallresnet"])
def test_stem_stride_quarters_the_first_maps_and_keeps_weight_shapes(name):
    plain = create_model(name, 5, resolution=64)
    fast = create_model(name, 5, resolution=64, stem_stride=2)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    first = [m for m in fast.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.stride == (2, 2)
    seen = []
    hook = first.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        assert fast.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    hook.remove()
    assert seen == [32]
    with pytest.raises(ArgumentError, match="stem_stride"):
        create_model(name, 5, resolution=64, stem_stride=3)
    with pytest.raises(ArgumentError, match="stem_stride=2 needs at least 32 px"):
        create_model(name, 5, resolution=16, stem_stride=2)


# ---------------------------------------------------------------- pretrained weights (local only)

def _same_params(a: nn.Module, b: nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


def test_load_whole_classifier_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = create_model("tinycnn", 3, resolution=16)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = create_model("tinycnn", 3, resolution=16, weights=str(path))
    assert _same_params(src, dst)
    fresh = create_model("tinycnn", 3, resolution=16)
    report = load_pretrained(fresh, path)
    assert report["head"] == "loaded" and report["loaded"] == len(src.state_dict())


def test_load_backbone_state_dict_ignores_head_with_other_class_count(tmp_path):
    torch.manual_seed(0)
    src = create_model("tinycnn", 7, resolution=16)
    state = {"state_dict": {"module." + k[len("backbone."):]: v for k, v in src.state_dict().items()
                            if k.startswith("backbone.")}}
    state["state_dict"].update({"module.fc.weight": torch.zeros(7, 32), "module.fc.bias": torch.zeros(7)})
    path = tmp_path / "w.pth"
    torch.save(state, path)
    dst = create_model("tinycnn", 3, resolution=16)
    dst.pretrained_head_prefixes = ["fc."]
    head_before = dst.head.weight.clone()
    report = load_pretrained(dst, path)
    assert report["head"].startswith("ignored") and "7 outputs" in report["head"]
    assert _same_params(src, dst, "backbone.") and torch.equal(dst.head.weight, head_before)


def test_load_torchvision_resnet_state_dict(tmp_path):
    """A torchvision state dict (as torchvision ships it) loads and reproduces torchvision's logits."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = create_model("resnet18", 10, resolution=32, weights=str(path)).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), tv((x - mean) / std), atol=1e-5)
    other = create_model("resnet18", 4, resolution=32)
    assert load_pretrained(other, path)["head"].startswith("ignored")
    with pytest.raises(CheckpointError, match="conv1.weight.*shape"):
        create_model("resnet18", 10, resolution=32, small_stem=True, weights=str(path))


def test_load_flat_reference_layouts(tmp_path):
    """GMI/KedMI-style flat keys (feature.<i>, body.<i>, fc_layer) map onto midre's nested stages."""
    torch.manual_seed(0)
    vgg = create_model("vgg16", 3, resolution=32)
    flat, i = {}, 0
    for s, stage in enumerate(vgg.backbone.features):
        for j in range(len(stage)):
            for k, v in stage[j].state_dict().items():
                flat[f"module.feature.{i}.{k}"] = v
            i += 1
    flat.update({f"module.bn.{k}": v for k, v in vgg.backbone.bn.state_dict().items()})
    flat.update({f"module.fc_layer.{k}": v for k, v in vgg.head.state_dict().items()})
    torch.save(flat, tmp_path / "vgg.pth")
    torch.manual_seed(1)
    assert _same_params(vgg, create_model("vgg16", 3, resolution=32, weights=str(tmp_path / "vgg.pth")))

    ir = create_model("ir50", 3, resolution=16, mid_bn=False)
    flat, i = {}, 0
    for stage in ir.backbone.body:
        for unit in stage:
            flat.update({f"body.{i}.{k}": v for k, v in unit.state_dict().items()})
            i += 1
    for name in ("input_layer", "output_layer"):
        flat.update({f"{name}.{k}": v for k, v in getattr(ir.backbone, name).state_dict().items()})
    torch.save(flat, tmp_path / "ir.pth")
    torch.manual_seed(1)
    loaded = create_model("ir50", 3, resolution=16, mid_bn=False, weights=str(tmp_path / "ir.pth"))
    assert _same_params(ir, loaded, "backbone.")


def test_load_legacy_densenet_keys(tmp_path):
    torch.manual_seed(0)
    src = create_model("densenet121", 3, resolution=32)
    legacy = {}
    for k, v in src.backbone.state_dict().items():
        for a in ("norm", "relu", "conv"):
            for n in ("1", "2"):
                k = k.replace(f".{a}{n}.", f".{a}.{n}.")
        legacy[k] = v
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "d.pth")
    assert _same_params(src, create_model("densenet121", 3, resolution=32, weights=str(tmp_path / "d.pth")),
                        "backbone.")


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"backbone.x": _Evil(str(target))}, f, protocol=2)
    torch.save({"weight": _Evil(str(target))}, tmp_path / "evil2.pt")
    assert not target.exists()
    model = create_model("tinycnn", 3, resolution=16)
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused"):
            load_pretrained(model, p)
        assert not target.exists()


def test_weight_file_errors(tmp_path):
    model = create_model("tinycnn", 3, resolution=16)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(model, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="local file"):
        load_pretrained(model, "https://example.com/w.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported suffix"):
        load_pretrained(model, tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_pretrained(model, tmp_path / "bad.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_pretrained(model, tmp_path / "bad.pth")
    torch.save({"a": 1}, tmp_path / "nontensor.pth")
    with pytest.raises(CheckpointError, match="non-tensor"):
        load_pretrained(model, tmp_path / "nontensor.pth")
    # wrong architecture: unexpected / missing keys
    torch.save(create_model("smallresnet", 3, resolution=16).state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="unexpected key|missing key"):
        load_pretrained(model, tmp_path / "small.pth")
    state = model.state_dict()
    state.pop("backbone.stages.0.0.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing key 'backbone.stages.0.0.weight'"):
        load_pretrained(model, tmp_path / "partial.pth")
    # shape mismatch: same keys, other widths
    torch.save(create_model("smallcnn", 3, resolution=16, widths=(8, 16, 32, 64)).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="shape"):
        create_model("smallcnn", 3, resolution=16, weights=str(tmp_path / "w.pth"))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, tmp_path / "partial.pth")
    assert "\n" not in str(info.value)           # one actionable line


def test_checkpoint_round_trip_keeps_architecture(tmp_path):
    from midre.checkpoint import save_checkpoint
    from midre.loading import load_model

    torch.manual_seed(0)
    model = create_model("smallresnet", 4, resolution=32, widths=[8, 16, 32], depths=[1, 1, 2]).eval()
    meta = {"arch": "smallresnet", "num_classes": 4, "resolution": 32,
            "model_kwargs": {"widths": [8, 16, 32], "depths": [1, 1, 2]}, "defense": None}
    save_checkpoint(tmp_path / "model", model, meta)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert [len(s) for s in residual_stages(loaded)] == [1, 1, 2]
