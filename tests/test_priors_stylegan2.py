"""The stylegan2 prior: small StyleGAN2 trained on public images (seeded, cached, resumable) or
converted weights loaded from ``path``."""
from __future__ import annotations

import pytest
import torch

from midre.data.base import TensorImageSet
from midre.errors import ArgumentError, DataError
from midre.models.stylegan2 import Generator, save_generator, tiny_generator
from midre.priors import Prior, prepare_priors, prior_config, train_prior

TINY = {"iterations": 4, "batch_size": 4, "channel_base": 64, "channel_max": 8, "z_dim": 8, "w_dim": 8,
        "r1_interval": 2, "ckpt_every": 2}


def _weights(m: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trains_caches_and_reloads(tiny_sets, tmp_path):
    pub, _ = tiny_sets
    p = train_prior("stylegan2", pub, out_dir=tmp_path, preset="quick", config=TINY, seed=0, device="cpu")
    G = p.generator
    assert isinstance(G, Generator) and G.img_resolution == 16 and G.z_dim == 8 and not G.training
    assert p.meta["iterations_done"] == 4 and p.meta["complete"] and p.discriminator is not None
    img = G(torch.randn(2, 8))
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert not torch.equal(G.mapping.w_avg, torch.zeros(8))             # w_avg tracked during training
    (d,) = [x for x in tmp_path.iterdir() if x.name.startswith("stylegan2-")]
    assert (d / "prior.safetensors").exists() and not (d / "state.json").exists()
    again = train_prior("stylegan2", pub, out_dir=tmp_path, preset="quick", config=TINY, seed=0, device="cpu")
    assert _same(_weights(again.generator), _weights(G))
    loaded = Prior.load(d)
    assert _same(_weights(loaded.generator), _weights(G)) and loaded.kind == "stylegan2"


def test_resume_after_interruption_equals_uninterrupted(tiny_sets, tmp_path):
    pub, _ = tiny_sets
    full = train_prior("stylegan2", pub, out_dir=tmp_path / "a", preset="quick", config=TINY, seed=3, device="cpu")
    part = train_prior("stylegan2", pub, out_dir=tmp_path / "b", preset="quick", config=TINY, seed=3, device="cpu",
                       until=2)
    assert not part.meta["complete"]
    resumed = train_prior("stylegan2", pub, out_dir=tmp_path / "b", preset="quick", config=TINY, seed=3, device="cpu")
    assert resumed.meta["complete"]
    assert _same(_weights(resumed.generator), _weights(full.generator))
    assert _same(_weights(resumed.discriminator), _weights(full.discriminator))
    other = train_prior("stylegan2", pub, preset="quick", config=TINY, seed=4, device="cpu")
    assert not _same(_weights(other.generator), _weights(full.generator))


def test_converted_weights_via_path_and_paper_preset(tmp_path, tiny_sets):
    pub, _ = tiny_sets
    with pytest.raises(ArgumentError, match="midre convert stylegan2"):
        prior_config("stylegan2", "paper")
    G = tiny_generator(32, seed=5)
    save_generator(tmp_path / "conv" / "generator", G)
    p = train_prior("stylegan2", pub, out_dir=tmp_path / "cache", preset="paper",
                    config={"path": str(tmp_path / "conv")}, device="cpu")
    assert _same(_weights(p.generator), _weights(G)) and p.meta["trained"] is False
    assert not (tmp_path / "cache").exists()                           # nothing trained, nothing cached


def test_bad_inputs(tiny_sets):
    pub, _ = tiny_sets
    with pytest.raises(ArgumentError, match="no key 'itrations'"):
        prior_config("stylegan2", "quick", {"itrations": 3})
    x = pub.to_tensors().images[:, :, :12, :12].contiguous()
    with pytest.raises(DataError, match="power-of-two"):
        train_prior("stylegan2", TensorImageSet(x, [0] * len(x)), preset="quick", config=TINY, device="cpu")


def test_prepare_priors_trains_it_without_the_target(tiny_sets, tmp_path):
    pub, _ = tiny_sets

    class _Attack:
        prior_kinds = ("stylegan2",)

    out = prepare_priors(_Attack(), pub, target=None, out_dir=tmp_path, preset="quick",
                         configs={"stylegan2": {**TINY, "iterations": 1}}, device="cpu")
    assert out["stylegan2"].generator.img_resolution == 16
