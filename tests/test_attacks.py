"""Attacks: interface, oracles (no gradient, counted), each attack converges on a tiny target, artefact, CLI.

One tiny setup shared by the whole module: synthetic faces (8 private / 8 public identities, 32 px),
a tinycnn target trained for a few epochs, tiny priors of every kind.
"""
from __future__ import annotations

import pytest
import torch

from midre.attacks import (
    ATTACKS,
    AccessError,
    QueryOracle,
    Reconstructions,
    adaptive_eraser_from_meta,
    build_attack,
    logit_loss,
    max_margin_loss,
)
from midre.errors import ArgumentError, CheckpointError, UnknownNameError

K = 8
DATA_OPTS = {"num_private": K, "num_public": K, "images_per_id": 30}
PRIOR_CFG = {
    "gan": {"iterations": 100, "width": 16, "batch_size": 32, "lr": 1e-3, "n_critic": 2, "ckpt_every": 1000},
    "kedmi": {"iterations": 100, "width": 16, "batch_size": 32, "lr": 1e-3, "ckpt_every": 1000},
    "cgan": {"iterations": 80, "width": 8, "batch_size": 32, "ckpt_every": 1000, "topk": 10},
    "lomma": {"distill_epochs": 2, "aug_archs": ["smallcnn"]},
}
ATTACK_PARAMS = {
    "gmi": {"iterations": 100, "lr": 0.05},
    # KedMI starts from the reference's log_var = 1 (std 1.65): at lr 0.02 it needs more steps to narrow
    "kedmi": {"iterations": 300},
    "lomma_gmi": {"iterations": 100, "lr": 0.05},
    "lomma_kedmi": {"iterations": 300},
    "plgmi": {"iterations": 40},
    "brepmi": {"iterations": 12, "sphere_points": 8, "init_batch": 64, "init_rounds": 10},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    from midre.data import load_dataset
    from midre.models import create_model
    from midre.priors import train_prior
    from midre.training import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("attacks")
    splits = load_dataset("synthetic", seed=0, **DATA_OPTS)
    model = create_model("tinycnn", num_classes=K, resolution=32)
    meta = {"dataset": {"name": "synthetic", "root": None, "resolution": 32, "seed": 0, "options": DATA_OPTS}}
    res = train_classifier(model, splits.private_train, splits.private_test,
                           config=TrainConfig(epochs=12, batch_size=32, lr=0.05, device="cpu", amp=False, seed=0),
                           out_dir=root / "target", meta=meta, progress=False)
    target = res.model.eval()
    priors = {kind: train_prior(kind, splits.public, None if kind == "gan" else target, out_dir=root / "priors",
                                config=PRIOR_CFG[kind], preset="quick", seed=1, device="cpu")
              for kind in ("gan", "kedmi", "cgan", "lomma")}
    return {"root": root, "splits": splits, "target": target, "priors": priors, "ckpt": root / "target",
            "acc": res.test_acc}


# ------------------------------------------------------------------------------ registry / params
def test_registry_names_and_access():
    assert set(ATTACKS.names()) == {"gmi", "kedmi", "lomma_gmi", "lomma_kedmi", "plgmi", "brepmi",
                                    "ppa", "ifgmi", "mirror", "rlbmi", "deepinversion", "mirror_wb", "vmi", "lokt",
                                    "c2fmi", "secretgen", "secretgen_bb"}
    for name in ATTACKS.names():
        a = build_attack(name)
        assert a.access in ("white-box", "black-box", "label-only")
        assert (a.prior_kinds or name == "deepinversion") and \
            all(k in ("gan", "kedmi", "cgan", "lomma", "stylegan2", "tacgan", "c2fmi", "secretgen", "secretgen_bb")
                for k in a.prior_kinds)
    assert build_attack("brepmi").access == "label-only" and build_attack("lokt").access == "label-only"


def test_paper_defaults():
    assert build_attack("gmi").params == {"iterations": 1500, "lr": 0.02, "momentum": 0.9, "lambda_iden": 100.0,
                                          "lambda_prior": 1.0, "z_clip": 1.0, "batch_size": 60}
    k = build_attack("kedmi").params
    assert (k["iterations"], k["lr"], k["lambda_iden"]) == (2400, 0.02, 100.0)
    p = build_attack("plgmi").params
    assert (p["iterations"], p["lr"], p["views"]) == (600, 0.1, 2)
    lo = build_attack("lomma_gmi").params
    assert (lo["iterations"], lo["lambda_feat"]) == (2400, 1.0)


def test_unknown_attack_and_params():
    with pytest.raises(UnknownNameError, match="did you mean 'plgmi'"):
        build_attack("plgm")
    with pytest.raises(ArgumentError, match="did you mean 'iterations'"):
        build_attack("gmi", iteration=10)
    with pytest.raises(ArgumentError, match="non-negative integer"):
        build_attack("gmi", iterations=-1)
    with pytest.raises(ArgumentError, match=">= 1"):
        build_attack("gmi", iterations=0)
    with pytest.raises(ArgumentError, match="number"):
        build_attack("gmi", lr="fast")
    with pytest.raises(ArgumentError, match="preset"):
        build_attack("gmi", preset="quik")


def test_losses_by_hand():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(max_margin_loss(logits, y), torch.tensor([3.0, -3.0]))
    assert torch.allclose(logit_loss(logits, y), torch.tensor([-2.0, -3.0]))


# ------------------------------------------------------------------------------ oracles
def test_oracle_probs_carry_no_gradient_and_count(setup):
    o = QueryOracle(setup["target"], "probs")
    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    p = o(x)
    assert p.shape == (5, K) and not p.requires_grad and p.grad_fn is None
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    with pytest.raises(RuntimeError):
        p.sum().backward()
    assert x.grad is None
    o(torch.rand(3, 3, 32, 32))
    assert o.queries == 8


def test_oracle_labels_and_refusals(setup):
    o = QueryOracle(setup["target"], "labels", max_queries=10)
    lab = o(torch.rand(4, 3, 32, 32))
    assert lab.dtype == torch.long and lab.shape == (4,) and o.queries == 4
    for ask in (lambda: o.logits(torch.rand(1, 3, 32, 32)), lambda: o.features(torch.rand(1, 3, 32, 32)),
                lambda: o.gradient(), lambda: o.model, lambda: o.parameters(), lambda: o.state_dict(),
                lambda: o.forward_features(torch.rand(1, 3, 32, 32))):
        with pytest.raises(AccessError):
            ask()
    with pytest.raises(AccessError, match="budget"):
        o(torch.rand(7, 3, 32, 32))


def test_label_only_attack_receives_only_the_oracle(setup, monkeypatch):
    from midre.attacks import brepmi

    seen = []
    orig = brepmi.BREPMI.invert

    def spy(self, access, *a, **k):
        seen.append(access)
        return orig(self, access, *a, **k)

    monkeypatch.setattr(brepmi.BREPMI, "invert", spy)
    a = build_attack("brepmi", preset="quick", iterations=2, sphere_points=4, init_batch=16, init_rounds=2)
    rec = a.run(setup["target"], [0, 1], 1, setup["priors"], seed=0)
    assert isinstance(seen[0], QueryOracle) and seen[0].mode == "labels"
    assert rec.meta["queries"] == seen[0].queries > 0


# ------------------------------------------------------------------------------ each attack converges
@pytest.mark.parametrize("name", ["gmi", "kedmi", "lomma_gmi", "lomma_kedmi", "plgmi", "brepmi"])
def test_attack_objective_decreases_and_hits_identity(setup, name):
    ids = list(range(K))
    a = build_attack(name, preset="quick", **ATTACK_PARAMS[name])
    rec = a.run(setup["target"], ids, 2, setup["priors"], seed=0)
    assert rec.images.shape == (2 * K, 3, 32, 32)
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    assert sorted(rec.identity.tolist()) == sorted(ids * 2)
    assert rec.repeat.bincount().tolist() == [K, K]
    curve = rec.meta["loss_curve"]
    n = max(1, len(curve) // 5)
    assert sum(curve[-n:]) / n < sum(curve[:n]) / n, f"{name}: objective did not decrease"
    with torch.no_grad():
        pred = setup["target"](rec.images).argmax(1)
    hit = (pred == rec.identity).float().mean().item()
    if name == "brepmi":
        # label-only: starts only from latents the target already labels y, and every move keeps the
        # label, so every identity with an initial point is reconstructed as y
        found = rec.meta["initial_points_found"]
        assert found > 0 and hit >= found / len(rec) - 1e-6
    else:
        assert hit >= 3.0 / K, f"{name}: target top-1 on reconstructions {hit:.2f} (chance {1 / K:.2f})"
    assert abs(rec.meta["target_top1"] - 100 * hit) < 1e-3
    assert torch.allclose(rec.confidence, setup["target"](rec.images).softmax(1).gather(
        1, rec.identity[:, None]).squeeze(1).detach(), atol=1e-5)


def test_brepmi_repels_from_the_boundary(setup):
    a = build_attack("brepmi", preset="quick", **ATTACK_PARAMS["brepmi"])
    rec = a.run(setup["target"], list(range(K)), 1, setup["priors"], seed=0)
    # the radius of the class-consistent ball grew (the logged objective is -mean radius)
    assert rec.meta["loss_curve"][-1] < -a.params["init_radius"]
    assert rec.meta["queries"] > 0


def test_same_seed_same_images_and_different_seed_differs(setup):
    a = build_attack("gmi", preset="quick", iterations=5)
    r1 = a.run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=3)
    r2 = a.run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=3)
    r3 = a.run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=4)
    assert torch.equal(r1.images, r2.images)
    assert not torch.equal(r1.images, r3.images)
    # repeats are distinct seeds
    assert not torch.equal(r1.images[r1.repeat == 0], r1.images[r1.repeat == 1])


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["kedmi", "lomma_kedmi"])
def test_kedmi_killed_after_its_first_repeat_resumes_to_the_same_samples(setup, tmp_path, monkeypatch, name):
    """KedMI fits ONE distribution per identity in repeat 0 and later repeats sample it.  A run killed after
    repeat 0 was saved has no fit in memory: it must remake repeat 0's fit (not fit anew with the later
    repeat's seed) and end with the uninterrupted run's images, the defense's eraser (global RNG) included."""
    from midre.attacks import kedmi

    eraser = adaptive_eraser_from_meta({"defense": {"name": "midre", "area": 0.4}})
    kw = {"iterations": 4, "batch_size": 2}
    t, p = setup["target"], setup["priors"]
    ref = build_attack(name, **kw).run(t, [0, 1, 2], 3, p, seed=5, adaptive_eraser=eraser)
    calls = []
    orig = kedmi.KedMI.decode

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:                   # repeat 0's two batches are saved, repeat 1's first is not
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(kedmi.KedMI, "decode", crashing)
    with pytest.raises(_Killed):
        build_attack(name, **kw).run(t, [0, 1, 2], 3, p, seed=5, adaptive_eraser=eraser, resume_dir=tmp_path / "r")
    monkeypatch.undo()
    rec = build_attack(name, **kw).run(t, [0, 1, 2], 3, p, seed=5, adaptive_eraser=eraser, resume_dir=tmp_path / "r")
    assert rec.meta["resumed_chunks"] == 2
    assert torch.equal(rec.images, ref.images), "the resumed run's later repeats sample another fit"
    assert rec.meta["loss_curve"] == ref.meta["loss_curve"]
    assert not torch.equal(ref.images[ref.repeat == 1], ref.images[ref.repeat == 2])   # one fit, new samples


def test_run_validates_inputs(setup):
    a = build_attack("gmi", preset="quick", iterations=1)
    with pytest.raises(ArgumentError, match="out of range"):
        a.run(setup["target"], [K], 1, setup["priors"])
    with pytest.raises(ArgumentError, match="repeats"):
        a.run(setup["target"], [0], 0, setup["priors"])
    with pytest.raises(ArgumentError, match="needs the 'cgan' prior"):
        build_attack("plgmi").run(setup["target"], [0], 1, {"gan": setup["priors"]["gan"]})


def test_latent_descent_gives_a_short_chunk_the_full_chunks_step():
    """Batch-mean losses under plain SGD step each z by lr / B x its own gradient; a short last chunk weighted by
    its share of a full chunk moves its identities exactly as a full chunk would (and unweighted it does not)."""
    from midre.attacks.base import ChunkContext, latent_descent

    target = torch.tensor([[0.3, -0.2], [0.1, 0.5]])
    p = {"iterations": 7, "lr": 0.5, "momentum": 0.9, "z_clip": 1.0}
    z0 = torch.tensor([[0.0, 0.0], [0.4, -0.4]])

    def loss_of(z):
        return ((z - target[:len(z)]) ** 2).sum(1).mean()

    full = latent_descent(z0, loss_of, p, lambda v: None, lambda: None)
    ctx = ChunkContext(full=2)
    short = latent_descent(z0[:1], loss_of, p, lambda v: None, lambda: None, ctx.share(1))
    plain = latent_descent(z0[:1], loss_of, p, lambda v: None, lambda: None)
    assert ctx.share(1) == 0.5 and ChunkContext().share(5) == 1.0
    torch.testing.assert_close(short[0], full[0])
    assert not torch.allclose(plain[0], full[0]), "unweighted, the short chunk takes twice the step"


@pytest.mark.parametrize("name", ["gmi", "lomma_gmi"])
def test_gmi_weights_a_short_last_chunk_by_its_share(setup, descent_weights, name):
    from midre.attacks import gmi

    weights = descent_weights(gmi)
    build_attack(name, iterations=2, batch_size=2).run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=0)
    assert weights == [1.0, 0.5, 1.0, 0.5]       # chunks of 2 and 1 identities, in each of the 2 repeats


def test_identities_are_batched(setup):
    a = build_attack("gmi", preset="quick", iterations=2, batch_size=3)
    rec = a.run(setup["target"], list(range(7)), 1, setup["priors"], seed=0)
    assert len(rec.meta["seeds"][0]) == 3            # 7 identities in batches of 3
    assert rec.identity.tolist() == list(range(7))


# ------------------------------------------------------------------------------ adaptive attack
def test_adaptive_attack_applies_the_defense_eraser_every_step(setup):
    eraser = adaptive_eraser_from_meta({"defense": {"name": "midre", "area": 0.4}})
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            calls.append(float((out != x).float().mean()))
            return out

    a = build_attack("gmi", preset="quick", iterations=4)
    rec = a.run(setup["target"], [0, 1], 1, setup["priors"], seed=0, adaptive_eraser=Counting(eraser))
    assert len(calls) == 4 and all(c > 0 for c in calls)   # every step, and it really erased something
    assert rec.meta["adaptive"] is True
    with pytest.raises(ArgumentError, match="does not erase"):
        adaptive_eraser_from_meta({"defense": {"name": "nodef"}})
    # index-keyed ablations: refused in one line up front (it used to fail inside the first step)
    for spec in ({"name": "fixed_erasing", "area": 0.4}, {"name": "entire_erasing", "share": 0.5}):
        with pytest.raises(ArgumentError, match="training-image index"):
            adaptive_eraser_from_meta({"defense": spec})
    assert adaptive_eraser_from_meta({"defense": {"name": "multi_patch", "area": 0.4}}) is not None


# ------------------------------------------------------------------------------ artefact
def test_reconstructions_roundtrip_and_corruption(setup, tmp_path):
    a = build_attack("gmi", preset="quick", iterations=2)
    rec = a.run(setup["target"], [0, 1], 2, setup["priors"], seed=0, target_path="x/target")
    rec.save(tmp_path / "r")
    back = Reconstructions.load(tmp_path / "r")
    for k in ("images", "identity", "repeat", "confidence"):
        assert torch.equal(getattr(back, k), getattr(rec, k))
    for k in ("attack", "access", "params", "target", "seeds", "queries", "seconds", "adaptive"):
        assert k in back.meta
    assert back.meta["attack"] == "gmi" and back.meta["target"] == "x/target"
    (tmp_path / "r" / "reconstructions.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        Reconstructions.load(tmp_path / "r")
    with pytest.raises(CheckpointError, match="no reconstructions"):
        Reconstructions.load(tmp_path / "nothing")


# ------------------------------------------------------------------------------ CLI
def test_cli_attack_end_to_end_uses_public_split_only(setup, tmp_path, monkeypatch, capsys):
    from midre.cli import main
    from midre.priors.data import PublicImages

    seen = []
    orig = PublicImages.__init__

    def spy(self, public_set, device, hflip):
        seen.append(public_set.to_tensors().images.clone())
        orig(self, public_set, device, hflip)

    monkeypatch.setattr(PublicImages, "__init__", spy)
    out = tmp_path / "atk"
    rc = main(["attack", "--target", str(setup["ckpt"]), "--attack", "gmi", "--identities", "0-2", "--repeats", "2",
               "--out", str(out), "--preset", "quick", "--param", "iterations=3", "--prior-param",
               "gan.iterations=2", "--prior-param", "gan.width=8", "--device", "cpu", "--no-progress"])
    assert rc == 0
    rec = Reconstructions.load(out)
    assert len(rec) == 6 and rec.meta["attack"] == "gmi" and rec.meta["target"] == str(setup["ckpt"])
    assert seen, "the prior was not trained"
    public = setup["splits"].public.images
    private = torch.cat([setup["splits"].private_train.images, setup["splits"].private_test.images])
    for imgs in seen:   # the prior saw exactly the public split, and no private image
        assert torch.equal(imgs, public)
        assert not (imgs.flatten(1)[:, None, :] == private.flatten(1)[None]).all(-1).any()
    assert (out.parent / "priors").is_dir()


def test_cli_attack_errors(setup, tmp_path, capsys):
    from midre.cli import main

    base = ["attack", "--target", str(setup["ckpt"]), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--attack", "plgm"]) == 2
    assert "did you mean 'plgmi'" in capsys.readouterr().err
    assert main(base + ["--attack", "gmi", "--identities", f"0-{K}"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["attack", "--target", str(tmp_path / "missing"), "--attack", "gmi", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--attack", "gmi", "--identities", "0-2", "--adaptive"]) == 2
    assert "does not erase" in capsys.readouterr().err
    assert main(base + ["--attack", "gmi", "--identities", "0-2", "--param", "iteration=3"]) == 2
    assert "did you mean 'iterations'" in capsys.readouterr().err


def test_cli_attack_refuses_private_data_as_public(setup, tmp_path, capsys, monkeypatch):
    from midre import priors as priors_mod
    from midre.cli import main
    from midre.errors import DataError

    # a public set that contains private images must be refused before any training
    with pytest.raises(DataError, match="private"):
        priors_mod.assert_public_only(setup["splits"].private_train, setup["splits"].private_train)
    priors_mod.assert_public_only(setup["splits"].public, setup["splits"].private_train,
                                  setup["splits"].private_test)
    del main


def test_frozen_restores_modes_and_flags_also_on_error():
    """Attacks and per-target priors freeze the target with midre.utils.frozen; it must hand it back intact."""
    from midre.utils import frozen

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    a.train()
    b.eval()
    b.bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(a, b) as m:
            assert m is a and not a.training and not b.training
            assert not any(p.requires_grad for p in [*a.parameters(), *b.parameters()])
            raise RuntimeError("boom")
    assert a.training and not b.training
    assert [p.requires_grad for p in a.parameters()] == [True, True]
    assert [p.requires_grad for p in b.parameters()] == [True, False]
