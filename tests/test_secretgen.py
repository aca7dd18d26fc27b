"""SecretGen (issue 24) as a user runs it, in both access modes: determinism, resume after a kill, exact query
counts in black-box mode, the hole's pixels never reaching the attack, ``midre attack`` and a ``midre run``
config.  The update rules themselves are checked in tests/test_attack_parity.py."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _tiny_attack import (  # the tests folder's shared tiny world
    DATA_OPTS,
    RES,
    cli_attack,
    tiny_splits,
    train_tiny_target,
)

from midre.attacks import Reconstructions, build_attack
from midre.attacks.masked import MaskedPrivate, give_masked_private, mask_private
from midre.errors import ArgumentError

PRIOR = {"iterations": 3, "batch_size": 8, "width": 8, "ckpt_every": 2}
ATK = {"iterations": 3, "n_init": 2, "batch_size": 2}
KIND = {"secretgen": "secretgen", "secretgen_bb": "secretgen_bb"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from midre.loading import load_model
    from midre.priors import train_prior

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sg")
    splits = tiny_splits()
    train_tiny_target(root, splits=splits)
    model = load_model(root / "target", device="cpu")[0].eval()
    priors = {k: train_prior(k, splits.public, model if k == "secretgen" else None, config=PRIOR, preset="quick",
                             device="cpu") for k in KIND.values()}
    return {"root": root, "ckpt": root / "target", "model": model, "splits": splits, "priors": priors}


def _attack(world, name, private=None, **kw):
    a = build_attack(name, preset="quick", **{**ATK, **kw})
    give_masked_private(a, world["priors"], private if private is not None else world["splits"].private_train,
                        [0, 1, 2])
    return a


def _run(world, name, seed, private=None, **kw):
    return _attack(world, name, private, **kw).run(world["model"], [0, 1, 2], 2,
                                                   {KIND[name]: world["priors"][KIND[name]]}, seed=seed)


# ------------------------------------------------------------------------------ the hole never reaches the attack
class _Private:
    """The private training split with every pixel inside the hole replaced (the rest unchanged)."""

    def __init__(self, base, mask, value):
        ts = base.to_tensors()
        self.images = torch.where(mask.bool(), torch.full_like(ts.images, value), ts.images)
        self.targets = ts.targets

    def to_tensors(self):
        return self


def test_masked_input_carries_zeros_in_the_hole_and_refuses_any_hole_pixel(world):
    a = _attack(world, "secretgen")
    m = a.masked_private
    assert m.mask.sum() == (RES // 2) ** 2 and sorted(set(m.identity.tolist())) == [0, 1, 2]
    assert (m.images * m.mask).abs().max() == 0 and (m.images * (1 - m.mask)).abs().max() > 0
    with pytest.raises(ValueError, match="hole"):
        MaskedPrivate(m.images + 0.1, m.identity, m.mask)


@pytest.mark.parametrize("name", ["secretgen", "secretgen_bb"])
def test_reconstructions_do_not_depend_on_the_holes_pixels(world, name):
    mask = world["priors"][KIND[name]].meta["config"]["mask"]
    from midre.priors.secretgen import hole_mask

    m = hole_mask(mask, RES)[0]
    r0 = _run(world, name, 4, _Private(world["splits"].private_train, m, 0))
    r1 = _run(world, name, 4, _Private(world["splits"].private_train, m, 255))
    r2 = _run(world, name, 4)
    assert torch.equal(r0.images, r1.images) and torch.equal(r0.images, r2.images)
    outside = _Private(world["splits"].private_train, 1 - m, 255)      # the known pixels do matter
    assert not torch.equal(r0.images, _run(world, name, 4, outside).images)


def test_without_masked_images_the_attack_refuses_in_one_line(world):
    a = build_attack("secretgen", preset="quick", **ATK)
    with pytest.raises(ArgumentError, match="masked private images"):
        a.run(world["model"], [0], 1, {"secretgen": world["priors"]["secretgen"]})


def test_mask_private_keeps_only_the_attacked_identities(world):
    from midre.priors.secretgen import hole_mask

    mp = mask_private(world["splits"].private_train, [1], hole_mask("face", RES))
    assert set(mp.identity.tolist()) == {1} and (mp.images * mp.mask).abs().max() == 0


# ------------------------------------------------------------------------------ determinism, queries, resume
@pytest.mark.parametrize("name", ["secretgen", "secretgen_bb"])
def test_same_seed_same_images_other_seed_other_images(world, name):
    r1, r2, r3 = _run(world, name, 5), _run(world, name, 5), _run(world, name, 6)
    assert torch.equal(r1.images, r2.images) and r1.meta["loss_curve"] == r2.meta["loss_curve"]
    assert not torch.equal(r1.images, r3.images)


def test_black_box_counts_every_query_exactly(world):
    rec = _run(world, "secretgen_bb", 0)
    assert rec.meta["access"] == "black-box"
    assert rec.meta["queries"] == 3 * 2 * ATK["n_init"] * 17          # identities x repeats x codes x (1 + 16)
    assert _run(world, "secretgen_bb", 0, true_label=True).meta["queries"] == 3 * 2 * ATK["n_init"]
    assert _run(world, "secretgen", 0).meta["queries"] is None
    with pytest.raises(ArgumentError, match="black-box"):
        build_attack("secretgen_bb", lambda_iden=1.0)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_images(world, tmp_path, monkeypatch):
    from midre.attacks import secretgen

    ref = _run(world, "secretgen", 3)
    calls = []
    orig = secretgen.SecretGen.invert

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(secretgen.SecretGen, "invert", crashing)
    prior = {"secretgen": world["priors"]["secretgen"]}
    with pytest.raises(_Killed):
        _attack(world, "secretgen").run(world["model"], [0, 1, 2], 2, prior, seed=3, resume_dir=tmp_path / "p")
    assert len(list((tmp_path / "p").glob("chunk-*.safetensors"))) == 2
    calls.clear()
    rec = _attack(world, "secretgen").run(world["model"], [0, 1, 2], 2, prior, seed=3, resume_dir=tmp_path / "p")
    assert len(calls) == 2 and rec.meta["resumed_chunks"] == 2
    assert torch.equal(rec.images, ref.images) and rec.meta["loss_curve"] == ref.meta["loss_curve"]


def test_prior_training_resumes_to_the_same_weights(world, tmp_path):
    from midre.priors import train_prior

    full = train_prior("secretgen_bb", world["splits"].public, config=PRIOR, preset="quick", device="cpu",
                       out_dir=tmp_path / "a")
    train_prior("secretgen_bb", world["splits"].public, config=PRIOR, preset="quick", device="cpu",
                out_dir=tmp_path / "b", until=2)
    resumed = train_prior("secretgen_bb", world["splits"].public, config=PRIOR, preset="quick", device="cpu",
                          out_dir=tmp_path / "b")
    for k, v in full.generator.state_dict().items():
        assert torch.equal(v, resumed.generator.state_dict()[k]), k


# ------------------------------------------------------------------------------ midre attack, midre run
def _cli(root: Path, target: Path, name: str, out: str, *extra: str) -> int:
    return cli_attack(target, name, root / out, "0-2", 1, ATK, [f"{KIND[name]}.{k}={v}" for k, v in PRIOR.items()],
                      *extra)


@pytest.mark.parametrize("name", ["secretgen", "secretgen_bb"])
def test_midre_attack_end_to_end(world, name, capsys):
    assert _cli(world["root"], world["ckpt"], name, f"atk-{name}") == 0
    rec = Reconstructions.load(world["root"] / f"atk-{name}")
    assert rec.images.shape == (3, 3, RES, RES) and rec.meta["attack"] == name
    assert rec.meta["queries"] == (3 * ATK["n_init"] * 17 if name == "secretgen_bb" else None)
    private = world["splits"].private_train.to_tensors()
    first = torch.stack([private.images[private.targets == y][0] for y in range(3)]).float() / 255
    from midre.priors.secretgen import hole_mask

    m = hole_mask("center", RES)
    assert torch.allclose(rec.images * (1 - m), first * (1 - m), atol=1e-6)   # the known pixels kept as given


CONFIG = f"""
name: sg
seed: 0
device: cpu
dataset: {{name: synthetic, resolution: {RES}, options: {json.dumps(DATA_OPTS)}}}
eval_model: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
defaults: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
targets: [{{name: nodef, defense: nodef}}]
attacks:
  - {{name: secretgen, preset: quick, params: {json.dumps(ATK)}, identities: "0-1"}}
  - {{name: secretgen_bb, preset: quick, params: {json.dumps(ATK)}, identities: "0-1"}}
priors: {{preset: quick, params: {{secretgen: {json.dumps(PRIOR)}, secretgen_bb: {json.dumps(PRIOR)}}}}}
metrics: {{fid: none, knn: false, n_boot: 0}}
report: {{enabled: false}}
"""


def test_midre_run_config_with_both_modes(tmp_path):
    from midre.config import load_config
    from midre.pipeline import run_pipeline

    cfg = tmp_path / "sg.yaml"
    cfg.write_text(CONFIG)
    run_pipeline(load_config(str(cfg)), tmp_path / "run", progress=False)
    wb = Reconstructions.load(tmp_path / "run" / "attacks" / "nodef" / "secretgen")
    bb = Reconstructions.load(tmp_path / "run" / "attacks" / "nodef" / "secretgen_bb")
    assert wb.images.shape == (2, 3, RES, RES) and wb.meta["queries"] is None
    assert bb.meta["queries"] == 2 * ATK["n_init"] * 17
    with open(tmp_path / "run" / "results.csv", newline="") as fh:
        assert sorted(r["attack"] for r in csv.DictReader(fh)) == ["secretgen", "secretgen_bb"]


@pytest.mark.parametrize("name", ["secretgen", "secretgen_bb"])
def test_a_short_last_chunk_is_weighted_by_its_share(world, descent_weights, name):
    """Stage 2's batch-mean loss under plain SGD: the last chunk (1 of 3 identities at batch 2) is weighted by its
    share of a full chunk, so its identities take the full chunks' step (midre.attacks.base.latent_descent)."""
    from midre.attacks import secretgen

    weights = descent_weights(secretgen)
    _run(world, name, 0, batch_size=2)
    assert weights == [1.0, 0.5, 1.0, 0.5]
