"""VMI and LOKT end to end (issue 24): seeded, resumable after a kill (attack chunks and the tacgan prior's
three phases), LOKT's label-only queries counted exactly, and `midre attack` with each quick preset."""
from __future__ import annotations

import pytest
import torch

from midre.attacks import build_attack
from midre.attacks.base import QueryOracle

K = 4
DATA_OPTS = {"num_private": K, "num_public": K, "images_per_id": 20}
TAC = {"iterations": 4, "uncond_iterations": 2, "batch_size": 6, "n_critic": 2, "width": 4, "samples_per_class": 5,
       "surrogate_archs": ["tinycnn"], "surrogate_epochs": 2, "surrogate_batches": 2, "surrogate_batch_size": 6,
       "ckpt_every": 2}
GAN = {"iterations": 3, "width": 4, "batch_size": 16}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    from midre.data import load_dataset
    from midre.models import create_model
    from midre.priors import train_prior
    from midre.training import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("vmilokt")
    splits = load_dataset("synthetic", seed=0, **DATA_OPTS)
    meta = {"dataset": {"name": "synthetic", "root": None, "resolution": 32, "seed": 0, "options": DATA_OPTS}}
    res = train_classifier(create_model("tinycnn", num_classes=K, resolution=32), splits.private_train,
                           splits.private_test, config=TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu",
                                                                   amp=False, seed=0),
                           out_dir=root / "target", meta=meta, progress=False)
    target = res.model.eval()
    priors = {"gan": train_prior("gan", splits.public, None, out_dir=root / "priors", config=GAN, preset="quick",
                                 seed=1, device="cpu"),
              "tacgan": train_prior("tacgan", splits.public, target, out_dir=root / "priors", config=TAC,
                                    preset="quick", seed=1, device="cpu")}
    return {"root": root, "splits": splits, "target": target, "priors": priors, "ckpt": root / "target"}


class _Killed(Exception):
    pass


# ------------------------------------------------------------------------------ VMI
def _vmi(**kw):
    return build_attack("vmi", preset="quick", **{"iterations": 3, "samples": 2, "kl_samples": 8, **kw})


def test_vmi_same_seed_same_images_other_seed_differs(setup):
    t, p = setup["target"], setup["priors"]
    a = _vmi().run(t, [0, 1], 2, p, seed=3)
    b = _vmi().run(t, [0, 1], 2, p, seed=3)
    c = _vmi().run(t, [0, 1], 2, p, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    assert a.meta["attack"] == "vmi" and a.meta["access"] == "white-box" and a.meta["queries"] is None


def test_vmi_killed_after_its_first_repeat_resumes_to_the_same_samples(setup, tmp_path, monkeypatch):
    """Repeats draw samples of ONE q fitted on the first repeat; a run killed after that repeat was saved refits
    the identical q (seeded by the batch, not the repeat) and ends with the uninterrupted run's samples."""
    from midre.attacks import vmi

    t, p = setup["target"], setup["priors"]
    ref = _vmi(batch_size=1).run(t, [0, 1], 2, p, seed=5)
    calls = []
    orig = vmi.VMI.final_selection

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(vmi.VMI, "final_selection", crashing)
    with pytest.raises(_Killed):
        _vmi(batch_size=1).run(t, [0, 1], 2, p, seed=5, resume_dir=tmp_path / "r")
    monkeypatch.undo()
    rec = _vmi(batch_size=1).run(t, [0, 1], 2, p, seed=5, resume_dir=tmp_path / "r")
    assert rec.meta["resumed_chunks"] == 2
    assert torch.equal(rec.images, ref.images) and torch.equal(rec.latents, ref.latents)
    assert rec.meta["loss_curve"] == ref.meta["loss_curve"]


def test_vmi_validates_its_parameters():
    from midre.errors import ArgumentError

    with pytest.raises(ArgumentError, match="samples"):
        build_attack("vmi", samples=0)
    # the q the release keeps: miner_20.pt, saved at the start of epoch 20 (20 x 157 steps), not after its 31 epochs
    assert build_attack("vmi").params["iterations"] == 20 * 157 and build_attack("vmi").params["lambda_kl"] == 1e-3


# ------------------------------------------------------------------------------ LOKT
def test_tacgan_prior_counts_every_label_query_exactly(setup):
    m = setup["priors"]["tacgan"].meta
    per_iter = TAC["n_critic"] * TAC["batch_size"]
    assert m["queries_tacgan"] == TAC["iterations"] * per_iter          # only after the unconditional phase
    assert m["queries_labelling"] == K * TAC["samples_per_class"]
    assert m["queries"] == m["queries_tacgan"] + m["queries_labelling"]
    assert len(setup["priors"]["tacgan"].aug_models) == 1 and len(m["surrogate_agreement"]) == 1


def test_tacgan_prior_sees_the_target_only_through_a_label_oracle(setup, monkeypatch):
    from midre.priors import train_prior

    modes = []
    orig = QueryOracle.__call__

    def spy(self, x):
        modes.append(self.mode)
        return orig(self, x)

    monkeypatch.setattr(QueryOracle, "__call__", spy)
    target = setup["target"]

    calls = {"n": 0}     # every forward pass of the target happens inside a label-oracle call
    inner = target.forward

    def counted(x):
        calls["n"] += 1
        return inner(x)

    monkeypatch.setattr(target, "forward", counted)
    prior = train_prior("tacgan", setup["splits"].public, target, out_dir=None, config=TAC, preset="quick",
                        seed=2, device="cpu")
    assert modes and set(modes) == {"labels"} and calls["n"] == len(modes)
    assert prior.meta["queries"] == TAC["iterations"] * TAC["n_critic"] * TAC["batch_size"] + K * TAC["samples_per_class"]


def test_tacgan_prior_killed_in_each_phase_resumes_to_the_same_weights(setup, tmp_path):
    """Stopped mid-GAN, then mid-surrogates (``until``), then finished: the same weights and query count as an
    uninterrupted training (the labelled set is reloaded, not queried again)."""
    from midre.priors import train_prior

    pub, t = setup["splits"].public, setup["target"]
    gan_total = TAC["iterations"] + TAC["uncond_iterations"]
    for until in (3, gan_total + 1):
        part = train_prior("tacgan", pub, t, out_dir=tmp_path, config=TAC, preset="quick", seed=1, device="cpu",
                           until=until)
        assert not part.meta["complete"]
    done = train_prior("tacgan", pub, t, out_dir=tmp_path, config=TAC, preset="quick", seed=1, device="cpu")
    ref = setup["priors"]["tacgan"]
    assert done.meta["key"] == ref.meta["key"] and done.meta["queries"] == ref.meta["queries"]
    for a, b in ((done.generator, ref.generator), (done.aug_models[0], ref.aug_models[0])):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lokt_reports_the_priors_queries_and_never_queries_during_inversion(setup):
    a = build_attack("lokt", preset="quick", iterations=3)
    rec = a.run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=0)
    m = setup["priors"]["tacgan"].meta
    assert rec.meta["access"] == "label-only" and rec.meta["queries_attack"] == 0
    assert rec.meta["queries"] == m["queries"] == rec.meta["queries_tacgan"] + rec.meta["queries_labelling"]
    again = build_attack("lokt", preset="quick", iterations=3).run(setup["target"], [0, 1, 2], 2, setup["priors"],
                                                                   seed=0)
    assert torch.equal(rec.images, again.images)
    other = build_attack("lokt", preset="quick", iterations=3).run(setup["target"], [0, 1, 2], 2, setup["priors"],
                                                                   seed=1)
    assert not torch.equal(rec.latents, other.latents)


def test_lokt_killed_run_resumes_from_its_finished_chunks(setup, tmp_path, monkeypatch):
    from midre.attacks import lokt

    kw = {"iterations": 2, "batch_size": 1}
    ref = build_attack("lokt", preset="quick", **kw).run(setup["target"], [0, 1], 2, setup["priors"], seed=1)
    calls = []
    orig = lokt.LOKT.invert

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(lokt.LOKT, "invert", crashing)
    with pytest.raises(_Killed):
        build_attack("lokt", preset="quick", **kw).run(setup["target"], [0, 1], 2, setup["priors"], seed=1,
                                                      resume_dir=tmp_path / "r")
    monkeypatch.undo()
    rec = build_attack("lokt", preset="quick", **kw).run(setup["target"], [0, 1], 2, setup["priors"], seed=1,
                                                        resume_dir=tmp_path / "r")
    assert rec.meta["resumed_chunks"] == 2 and torch.equal(rec.images, ref.images)
    assert rec.meta["queries"] == ref.meta["queries"]


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("name,params,prior", [
    ("vmi", ["iterations=2", "samples=2", "kl_samples=4"], [f"gan.{k}={v}" for k, v in GAN.items()]),
    ("lokt", ["iterations=2"], [f"tacgan.{k}={v}" for k, v in TAC.items() if k != "surrogate_archs"]
     + ["tacgan.surrogate_archs=[tinycnn]"]),
])
def test_cli_attack_end_to_end(setup, tmp_path, name, params, prior):
    from midre.attacks.base import Reconstructions
    from midre.cli import main

    out = tmp_path / name
    args = ["attack", "--target", str(setup["ckpt"]), "--attack", name, "--identities", "0-1", "--repeats", "2",
            "--out", str(out), "--preset", "quick", "--device", "cpu", "--no-progress"]
    for p in params:
        args += ["--param", p]
    for p in prior:
        args += ["--prior-param", p]
    assert main(args) == 0
    rec = Reconstructions.load(out)
    assert len(rec) == 4 and rec.meta["attack"] == name
    if name == "lokt":
        assert rec.meta["queries"] == TAC["iterations"] * TAC["n_critic"] * TAC["batch_size"] + K * TAC["samples_per_class"]


def test_tacgan_refuses_a_flip_it_would_not_apply():
    """The T-ACGAN loop never flips real images (the release's loader does not); hflip: true used to be accepted
    and silently ignored."""
    from midre.errors import ArgumentError
    from midre.priors import prior_config

    with pytest.raises(ArgumentError, match="never flips"):
        prior_config("tacgan", "quick", {"hflip": True})
    assert prior_config("tacgan", "quick").hflip is False
