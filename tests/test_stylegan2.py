"""The StyleGAN2 generator and discriminator (midre/models/stylegan2.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midre.errors import ArgumentError
from midre.models.stylegan2 import (
    Discriminator,
    Generator,
    conv2d_resample,
    setup_filter,
    tiny_generator,
    upfirdn2d,
    upsample2d,
)


def test_shapes_and_attributes():
    G = tiny_generator(32, seed=0)
    assert (G.z_dim, G.w_dim, G.num_ws, G.img_resolution, G.num_blocks) == (32, 32, 8, 32, 4)
    ws = G.mapping(torch.randn(5, 32))
    assert ws.shape == (5, 8, 32)
    img = G.synthesis(ws)
    assert img.shape == (5, 3, 32, 32) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert tiny_generator(64, seed=0).num_ws == 10
    u = G.to_unit(img)
    assert u.min() >= 0 and u.max() <= 1


def test_official_state_dict_names_and_shapes():
    with torch.device("meta"):
        G = Generator(z_dim=512, w_dim=512, img_resolution=1024, img_channels=3,
                      mapping_kwargs={"num_layers": 8},
                      synthesis_kwargs={"channel_base": 32768, "channel_max": 512, "num_fp16_res": 4, "conv_clamp": 256})
    sd = G.state_dict()
    assert G.num_ws == 18
    expect = {"mapping.fc0.weight": (512, 512), "mapping.fc7.bias": (512,), "mapping.w_avg": (512,),
              "synthesis.b4.const": (512, 4, 4), "synthesis.b4.resample_filter": (4, 4),
              "synthesis.b4.conv1.noise_const": (4, 4), "synthesis.b4.conv1.noise_strength": (),
              "synthesis.b4.torgb.weight": (3, 512, 1, 1), "synthesis.b128.conv0.weight": (256, 512, 3, 3),
              "synthesis.b128.conv1.affine.weight": (256, 512), "synthesis.b1024.conv1.weight": (32, 32, 3, 3),
              "synthesis.b1024.torgb.affine.bias": (32,), "synthesis.b1024.conv0.noise_const": (1024, 1024)}
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "mapping.fc8.weight" not in sd and "synthesis.b4.conv0.weight" not in sd
    assert sum(v.numel() for k, v in sd.items() if "noise_const" not in k and "resample_filter" not in k) > 30e6


def test_determinism():
    a, b = tiny_generator(32, seed=3), tiny_generator(32, seed=3)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a(z), b(z))
    assert torch.equal(a(z), a(z))                     # const noise: deterministic
    assert not torch.equal(a(z), tiny_generator(32, seed=4)(z))
    ws = a.mapping(z)
    r1 = a.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(0))
    r2 = a.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1, r2)


def test_truncation():
    G = tiny_generator(32, seed=0)
    G.mapping.w_avg.normal_(generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 32)
    w1 = G.mapping(z, psi=1.0)
    assert torch.allclose(w1[:, 0], w1[:, -1])         # broadcast
    w0 = G.mapping(z, psi=0.0)
    assert torch.allclose(w0, G.mapping.w_avg.expand_as(w0))
    wh = G.mapping(z, psi=0.5, cutoff=3)
    assert torch.allclose(wh[:, :3], G.mapping.w_avg + 0.5 * (w1[:, :3] - G.mapping.w_avg), atol=1e-6)
    assert torch.equal(wh[:, 3:], w1[:, 3:])
    assert torch.allclose(G.mapping(z, truncation_psi=0.5, truncation_cutoff=3), wh)


def test_w_avg_tracked_only_in_training():
    G = tiny_generator(32, seed=0)
    before = G.mapping.w_avg.clone()
    G.mapping(torch.randn(4, 32))
    assert torch.equal(G.mapping.w_avg, before)        # eval: untouched
    G.train()
    G.mapping(torch.randn(4, 32))
    assert not torch.equal(G.mapping.w_avg, before)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_blockwise_equals_full(split):
    G = tiny_generator(32, seed=0)
    for blk in range(G.num_blocks):                   # non-zero noise strength so noise inputs matter
        for name in ("conv0", "conv1"):
            layer = getattr(G.synthesis.block(blk), name, None)
            if layer is not None:
                layer.noise_strength.data.fill_(0.3)
    ws = G.mapping(torch.randn(2, 32))
    full = G.synthesis(ws)
    x, img = G.synthesis(ws, end_block=split, return_features=True)
    res = G.synthesis.block_resolutions[split - 1]
    assert x.shape[-1] == res and img.shape == (2, 3, res, res)
    out = G.synthesis(ws, features=(x, img), start_block=split)
    assert torch.allclose(out, full, atol=1e-6)
    # features can be optimised: gradients flow to them
    xf = x.detach().requires_grad_(True)
    G.synthesis(ws, features=(xf, img.detach()), start_block=split).sum().backward()
    assert xf.grad is not None and xf.grad.abs().sum() > 0


def test_bad_arguments():
    G = tiny_generator(32, seed=0)
    ws = G.mapping(torch.randn(1, 32))
    with pytest.raises(ArgumentError):
        G.synthesis(ws, start_block=1)                  # features missing
    with pytest.raises(ArgumentError):
        G.synthesis(ws[:, :3])
    with pytest.raises(ArgumentError):
        G.synthesis(ws, noise_mode="nope")
    with pytest.raises(ArgumentError):
        G.mapping(torch.randn(1, 7))
    with pytest.raises(ArgumentError):
        Generator(img_resolution=48)
    with pytest.raises(ArgumentError):
        Generator(img_resolution=32, synthesis_kwargs={"bogus": 1})


def test_upsampling_ops():
    f = setup_filter([1, 3, 3, 1])
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    x = torch.ones(1, 2, 4, 4)
    y = upsample2d(x, f)
    assert y.shape == (1, 2, 8, 8) and torch.allclose(y[:, :, 2:-2, 2:-2], torch.ones(1, 2, 4, 4))
    # transposed-conv fast path == generic path (zero insertion + filter, then true convolution)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 5, 5, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    fast = conv2d_resample(x, w, f, up=2, padding=1)
    ref = F.conv2d(upfirdn2d(x, f, up=2, pad=(3, 2, 3, 2), gain=4), w.flip([2, 3]))
    assert fast.shape == (2, 4, 10, 10) and torch.allclose(fast, ref, atol=1e-5)
    # strided-conv down path == filter, conv, then keep every second pixel
    x = torch.randn(2, 3, 8, 8, generator=g)
    fast = conv2d_resample(x, w, f, down=2, padding=1)
    ref = F.conv2d(upfirdn2d(x, f, pad=(2, 2, 2, 2)), w)[:, :, ::2, ::2]
    assert fast.shape == (2, 4, 4, 4) and torch.allclose(fast, ref, atol=1e-5)


def test_discriminator_and_resnet_generator():
    torch.manual_seed(0)
    D = Discriminator(32, 3, channel_base=1024, channel_max=32)
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 512, "channel_max": 16, "architecture": "resnet"})
    img = G(torch.randn(6, 16))
    assert img.shape == (6, 3, 32, 32)
    out = D(img)
    assert out.shape == (6,) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad and p.dim() > 0)


def test_fused_and_unfused_modulated_conv_agree():
    from midre.models.stylegan2 import modulated_conv2d

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 4, 6, 6, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    s, f = torch.randn(3, 4, generator=g), setup_filter([1, 3, 3, 1])
    for up, demod in [(1, True), (2, True), (1, False)]:
        a = modulated_conv2d(x, w, s, up=up, padding=1, f=f, demodulate=demod, fused=False)
        b = modulated_conv2d(x, w, s, up=up, padding=1, f=f, demodulate=demod, fused=True)
        assert torch.allclose(a, b, atol=1e-5), (up, demod)
    # demodulated outputs have unit-variance filters: scaling the style of a sample changes nothing
    a = modulated_conv2d(x, w, s, padding=1)
    assert torch.allclose(a, modulated_conv2d(x, w, s * 3.0, padding=1), atol=1e-4)


def test_init_kwargs_layouts_of_official_repositories():
    # stylegan2-ada (synthesis_kwargs dict, TF-converted pickles spell every option out) and the StyleGAN3
    # repository's stylegan2 config (synthesis options at the top level, fused_modconv_default)
    ada = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
               mapping_kwargs={"num_layers": 2, "embed_features": None, "layer_features": None, "activation": "lrelu",
                               "lr_multiplier": 0.01, "w_avg_beta": 0.995},
               synthesis_kwargs={"channel_base": 128, "channel_max": 8, "num_fp16_res": 0, "conv_clamp": 256,
                                 "architecture": "skip", "resample_filter": [1, 3, 3, 1], "use_noise": True,
                                 "activation": "lrelu"})
    sg3 = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
               channel_base=128, channel_max=8, num_fp16_res=0, conv_clamp=256, fused_modconv_default="inference_only")
    a, b = Generator(**ada), Generator(**sg3)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert Generator(**a.init_kwargs).state_dict().keys() == a.state_dict().keys()
    with pytest.raises(ArgumentError, match="magnitude_ema_beta"):
        Generator(**{**sg3, "magnitude_ema_beta": 0.999})            # a StyleGAN3 (alias-free) option


def test_official_forward_keywords_noise_default_and_execution_options():
    """G(z, c, truncation_psi, truncation_cutoff, noise_mode) as the official generator: 'random' noise by
    default (seeded by ``generator``), midre's older psi / cutoff names still accepted; fp16_channels_last
    (written by official training with --nhwc=1) is accepted and ignored like fused_modconv_default."""
    kw = dict(z_dim=16, w_dim=16, img_resolution=16, mapping_kwargs={"num_layers": 2},
              synthesis_kwargs={"channel_base": 256, "channel_max": 16, "fp16_channels_last": True,
                                "fused_modconv_default": "inference_only"})
    torch.manual_seed(0)
    G = Generator(**kw)
    torch.manual_seed(0)
    plain = Generator(**{**kw, "synthesis_kwargs": {"channel_base": 256, "channel_max": 16}})
    for k, v in G.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    G.eval()                                  # in training mode the mapping updates w_avg on every call
    with torch.no_grad():                     # noise strengths start at 0 (as the official): give them weight
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    a = G(z, None, 0.7, 4, "const")
    assert torch.equal(a, G(z, psi=0.7, cutoff=4, noise_mode="const"))
    r1 = G(z, generator=torch.Generator().manual_seed(3))
    r2 = G(z, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2) and not torch.equal(r1, G(z, noise_mode="const"))
