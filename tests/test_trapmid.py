"""Trap-MID (defense ``trapmid``) and its trapdoor-aware adaptive attacker (PLG-MI++).

The reference's formulas (ntuaislab/Trap-MID engine.py, paper eq. 2-5 and 7) are written out here
independently of midre.defenses.trapmid and compared with it; everything runs on tinycnn at 16 px.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from midre.data.base import TensorImageSet
from midre.defenses import DEFENSES, TrainContext, build_defense
from midre.defenses.trapmid import (
    TrapdoorAdversary,
    TrapMID,
    balanced_labels,
    trapdoor_accuracy,
    trapdoor_augment,
)
from midre.errors import ArgumentError, ConfigError
from midre.loading import load_model
from midre.models import create_model
from midre.training import TrainConfig, train_classifier

RES, C = 16, 4


def _set(n: int, seed: int = 0) -> TensorImageSet:
    g = torch.Generator().manual_seed(seed)
    return TensorImageSet(torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8), torch.arange(n) % C)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("tinycnn", num_classes=C, resolution=RES)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=16, lr=0.05, device="cpu", amp=False, seed=0), **kw})


def _prepared(defense: TrapMID, n: int = 32):
    """A tinycnn wrapped and prepared by ``defense`` as train_classifier does, at epoch 0."""
    model = defense.wrap_model(_model())
    train = _set(n)
    defense.prepare(TrainContext(model=model, train_set=train, test_set=_set(8, 1), config=_cfg()))
    defense.on_epoch_start(0, 2)
    return model, train


# ----------------------------------------------------------------------------------- injection and labels
def test_registered_with_the_reference_defaults():
    assert "trapmid" in DEFENSES
    d = build_defense("trapmid")
    assert d.params() == {"alpha": 0.02, "beta": 0.2, "step": 0.01, "optimize": True, "discriminator": True,
                          "augment": True}
    assert build_defense(d.spec()).params() == d.params()


def test_injection_is_the_blend_at_ratio_alpha_with_balanced_trapdoor_labels():
    d = TrapMID(augment=False, optimize=False)
    model, train = _prepared(d, n=32)
    trig = model.trapdoor_triggers
    assert trig.shape == (C, 3, RES, RES) and 0 <= float(trig.min()) and float(trig.max()) <= 1
    assert float(trig.std()) > 0.2                                   # U(0, 1) as the reference, not zeros
    x, y = train.batch(torch.arange(16))
    idx = torch.arange(16)
    xx, yy = d.transform_batch(x, y, idx)
    assert xx.shape[0] == 32 and torch.equal(xx[:16], x) and torch.equal(yy[:16], y)
    yt = yy[16:]
    expected = 0.98 * x + 0.02 * trig[yt]                            # (1 - alpha) x + alpha t_yhat, alpha 0.02
    torch.testing.assert_close(xx[16:], expected)
    # every class is a trapdoor label equally often over the epoch (32 images, 4 classes -> 8 each)
    assert torch.bincount(d._labels, minlength=C).tolist() == [8, 8, 8, 8]


def test_balanced_labels_remainder_is_distinct_classes():
    lab = balanced_labels(10, 4, torch.Generator().manual_seed(3))
    counts = torch.bincount(lab, minlength=4)
    assert sorted(counts.tolist()) == [2, 2, 3, 3]                    # 10 = 2 * 4 + two distinct extra classes


def test_augment_identity_flip_and_frame():
    x = torch.rand(6, 3, RES, RES)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(trapdoor_augment(x, g, p=0.0), x)
    flipped = trapdoor_augment(x, torch.Generator().manual_seed(0), p=1.0, scale=(1.0, 1.0), degrees=0.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)
    ones = torch.ones(2, 1, 32, 32)
    rot = trapdoor_augment(ones, torch.Generator().manual_seed(1), p=1.0, scale=(1.0, 1.0), degrees=30.0)
    assert float(rot[..., 16, 16].min()) == pytest.approx(1.0, abs=1e-5)   # centre kept
    assert float(rot[..., 0, 0].max()) == 0.0                        # corner outside the rotated frame: zeros


# ----------------------------------------------------------------------------------- the losses (parity)
def test_model_loss_is_the_weighted_sum_of_clean_and_trapdoor_terms():
    d = TrapMID(beta=0.2)
    d._n_clean = 3
    logits, y = torch.randn(6, C), torch.tensor([0, 1, 2, 3, 3, 1])
    ref = 0.8 * F.cross_entropy(logits[:3], y[:3]) + 0.2 * F.cross_entropy(logits[3:], y[3:])
    torch.testing.assert_close(d.task_loss(logits, y), ref)
    # with NLS the reference applies NegLS to both terms (trapdoor criterion defaults to the main one)
    comp = build_defense([{"name": "nls", "alpha": -0.05, "start": 0.0, "end": 0.0}, "trapmid"])
    comp.members()[1]._n_clean = 3
    comp.on_epoch_start(0, 10)

    def negls(z, t, a=-0.05):
        logp = z.log_softmax(1)
        return ((1 - a) * -logp.gather(1, t[:, None]).squeeze(1) + a * -logp.mean(1)).mean()

    torch.testing.assert_close(comp.task_loss(logits, y), 0.8 * negls(logits[:3], y[:3]) + 0.2 * negls(logits[3:], y[3:]))


def test_trigger_step_matches_the_reference_update():
    """engine.py: D takes one BCE step (real x, fake x'), then L_t = BCE(D(x'), 1) + CE(f(x'), yhat) and
    t <- clip(t - 0.01 sign(grad), 0, 1), with f in eval mode."""
    d = TrapMID(augment=False)
    model, train = _prepared(d)
    x, _ = train.batch(torch.arange(8))
    yt = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    t0 = model.trapdoor_triggers.clone()
    D = copy.deepcopy(d._D)
    optD = torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    # --- the reference, written out
    t = t0.clone().requires_grad_(True)
    xt = (1 - 0.02) * x + 0.02 * torch.stack([t[j] for j in yt])
    D.train()
    d_loss = nn.BCEWithLogitsLoss()(D(torch.cat([x, xt.detach()])), torch.cat([torch.ones(8, 1), torch.zeros(8, 1)]))
    optD.zero_grad()
    d_loss.backward()
    optD.step()
    D.eval()
    model.eval()
    trig_loss = nn.BCEWithLogitsLoss()(D(xt), torch.ones(8, 1)) + nn.CrossEntropyLoss()(model(xt), yt)
    trig_loss.backward()
    expected = (t0 - 0.01 * t.grad.sign()).clamp(0, 1)
    model.train()
    # --- midre
    got_loss = d.trigger_step(x, yt)
    torch.testing.assert_close(model.trapdoor_triggers, expected)
    assert float(got_loss) == pytest.approx(float(trig_loss.detach()), rel=1e-5)
    for (k, a), b in zip(D.state_dict().items(), d._D.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    changed = (model.trapdoor_triggers != t0).flatten(1).any(1)
    assert changed.tolist() == [True] * C                            # only drawn classes move; all drawn here


def test_trigger_step_leaves_no_gradient_on_the_model():
    d = TrapMID(augment=False)
    model, train = _prepared(d)
    x, _ = train.batch(torch.arange(8))
    d.trigger_step(x, torch.arange(8) % C)
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------- composition
def test_composition_order_names_and_refusals():
    a, b = build_defense("midre+trapmid"), build_defense("trapmid+midre")
    assert a.name == b.name == "midre+trapmid" and a.spec() == b.spec()
    with pytest.raises(ConfigError, match="cannot be combined with 'dp'"):
        build_defense("trapmid+dp")
    with pytest.raises(ConfigError, match="append images"):
        build_defense("trapmid+trapmid")
    comp = build_defense("trapmid+nls")
    assert comp.members()[1].base_loss == comp.members()[0].task_loss


def test_midre_plus_trapmid_erases_before_the_triggers_are_blended():
    comp = build_defense([{"name": "midre", "area": 0.4, "fill": "zero"}, {"name": "trapmid", "augment": False,
                                                                            "optimize": False}])
    model = comp.wrap_model(_model())
    train = _set(16)
    comp.prepare(TrainContext(model=model, train_set=train, config=_cfg()))
    comp.on_epoch_start(0, 1)
    x = torch.full((8, 3, RES, RES), 0.5)
    xx, yy = comp.transform_batch(x, torch.arange(8) % C, torch.arange(8))
    erased = xx[:8] == 0
    assert erased.any() and xx.shape[0] == 16
    blended = 0.98 * xx[:8] + 0.02 * model.trapdoor_triggers[yy[8:]]
    torch.testing.assert_close(xx[8:], blended)                       # the triggered copy of the ERASED image


def test_train_with_midre_and_trapmid_records_trapdoor_accuracy(tmp_path):
    res = train_classifier(_model(), _set(32), _set(8, 1), defense="midre+trapmid", config=_cfg(epochs=1),
                           out_dir=tmp_path / "t", progress=False)
    assert 0.0 <= res.defense_report["trapdoor_acc"] <= 100.0
    meta = json.loads((tmp_path / "t" / "model.json").read_text())
    assert meta["defense_report"]["trapdoor_acc"] == res.defense_report["trapdoor_acc"]
    model, _ = load_model(tmp_path / "t")
    torch.testing.assert_close(model.trapdoor_triggers, res.model.trapdoor_triggers)
    assert float(model.trapdoor_signatures.abs().sum()) > 0            # refreshed from the training images


# ----------------------------------------------------------------------------------- determinism and resume
def test_same_seed_same_weights(tmp_path):
    runs = [train_classifier(_model(), _set(32), _set(8, 1), defense="trapmid", config=_cfg(epochs=1),
                             progress=False) for _ in range(2)]
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_classifier(_model(), _set(32), _set(8, 1), defense="trapmid", config=_cfg(epochs=1, seed=1),
                             progress=False)
    assert not torch.equal(other.model.trapdoor_triggers, a["trapdoor_triggers"])


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    class Boom(Exception):
        pass

    calls = {"n": 0}

    class DiesInEpoch2(TrapMID):
        def on_epoch_start(self, epoch, epochs):
            if epoch == 1 and calls["n"] == 0:
                calls["n"] += 1
                raise Boom()
            super().on_epoch_start(epoch, epochs)

    full = train_classifier(_model(), _set(32), _set(8, 1), defense=TrapMID(), config=_cfg(), out_dir=tmp_path / "a",
                            progress=False)
    with pytest.raises(Boom):
        train_classifier(_model(), _set(32), _set(8, 1), defense=DiesInEpoch2(), config=_cfg(),
                         out_dir=tmp_path / "b", progress=False)
    resumed = train_classifier(_model(), _set(32), _set(8, 1), defense=DiesInEpoch2(), config=_cfg(),
                               out_dir=tmp_path / "b", progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.defense_report == full.defense_report


# ----------------------------------------------------------------------------------- trapdoor accuracy
class _NearestTrigger(nn.Module):
    """Predicts the class whose trigger is nearest to the image: a perfect trapdoor at alpha = 1."""

    def __init__(self, triggers):
        super().__init__()
        self.t = triggers

    def forward(self, x):
        return -((x[:, None] - self.t[None]) ** 2).flatten(2).sum(2)


def test_trapdoor_accuracy_on_known_answers():
    test = _set(20)
    trig = torch.rand(C, 3, RES, RES, generator=torch.Generator().manual_seed(5))
    assert trapdoor_accuracy(_NearestTrigger(trig), test, trig, alpha=1.0, seed=0) == 100.0

    class Always0(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0, 0, 0]]).repeat(len(x), 1)

    # balanced labels: 20 images / 4 classes -> exactly 5 carry trapdoor label 0
    assert trapdoor_accuracy(Always0(), test, trig, alpha=0.02, seed=0) == 25.0


# ----------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("spec, msg", [
    ({"name": "trapmid", "alpha": 0}, "alpha"),
    ({"name": "trapmid", "alpha": 1.5}, "alpha"),
    ({"name": "trapmid", "beta": -0.1}, "beta"),
    ({"name": "trapmid", "step": -1}, "step"),
    ({"name": "trapmid", "optimize": "yes"}, "optimize"),
    ({"name": "trapmid", "ratio": 0.1}, "no parameter 'ratio'"),
])
def test_bad_options_refused(spec, msg):
    with pytest.raises(ArgumentError, match=msg):
        build_defense(spec)


@pytest.mark.parametrize("extra, needle", [
    (["--defense", "trapmid", "--defense-param", "beta=2"], "beta"),
    (["--defense", "trapmid+dp"], "cannot be combined"),
])
def test_bad_option_through_the_cli_is_one_line_exit_2(extra, needle, tmp_path, capsys):
    from midre.cli import main

    out = tmp_path / "t"
    capsys.readouterr()
    rc = main(["train", "--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
               "--data-option", "num_public=2", "--data-option", "images_per_id=4", "--arch", "tinycnn",
               "--epochs", "1", "--no-progress", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------------- the adaptive attack
def test_signature_loss_is_the_papers_formula():
    adv = TrapdoorAdversary()
    adv.aux, adv.trap = torch.randn(C, 5), torch.randn(C, 5)
    f, logits, y = torch.randn(3, 5), torch.randn(3, C), torch.tensor([0, 2, 3])
    yhat = logits.argmax(1)
    ref = (-10 * torch.stack([F.cosine_similarity(f[i], adv.aux[y[i]], dim=0) for i in range(3)]).mean()
           + 10 * torch.stack([F.cosine_similarity(f[i], adv.trap[yhat[i]], dim=0) for i in range(3)]).mean())
    torch.testing.assert_close(adv.signature_loss(f, logits, y), ref)


def test_adaptive_against_trapmid_is_plgmi_plus_plus(tmp_path):
    from midre.attacks import adaptive_eraser_from_meta, build_attack
    from midre.priors import train_prior

    res = train_classifier(_model(), _set(32), _set(8, 1), defense="trapmid", config=_cfg(epochs=1),
                           out_dir=tmp_path / "t", progress=False)
    target, meta = load_model(tmp_path / "t")
    public = _set(24, 7)
    adv = adaptive_eraser_from_meta(meta, target, public)
    assert isinstance(adv, TrapdoorAdversary) and adv.eraser is None
    torch.testing.assert_close(adv.trap, target.trapdoor_signatures)   # the defender's signatures, as given
    assert adv.aux.shape == (C, target.feature_dim)
    both = adaptive_eraser_from_meta({"defense": build_defense("midre+trapmid").spec()})
    assert both.eraser is not None and both.aux is None                # erases as MIDRE's D.5 too; bound later
    prior = train_prior("cgan", public, target, preset="quick", config={"iterations": 2, "batch_size": 8}, seed=0)

    def run(name, eraser):
        atk = build_attack(name, preset="quick", iterations=3)
        return atk.run(target, [0, 1], 1, prior if name == "plgmi" else None, seed=0, adaptive_eraser=eraser)

    plain, plus = run("plgmi", None), run("plgmi", adv)
    assert not torch.equal(plain.images, plus.images)                  # the signature terms change the search
    assert plus.meta["adaptive"] and "trapdoor_adversary" in plus.meta["adaptive_eraser"]
    assert res.defense_report["trapdoor_acc"] >= 0


def test_attacks_without_a_trapdoor_aware_form_run_unchanged():
    from midre.attacks import build_attack
    from midre.attacks.base import Attack

    assert build_attack("plgmi").trapdoor_aware and not Attack.trapdoor_aware
    assert not build_attack("gmi").trapdoor_aware


# ----------------------------------------------------------------------------------- end to end
TINY_TRAPMID_RUN = """
name: tiny-trapmid
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 4, images_per_id: 4}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
targets:
  - {name: nodef, defense: nodef}
  - {name: trapmid, defense: {name: trapmid, beta: 0.5}}
  - {name: midre-trapmid, defense: midre+trapmid}
attacks:
  - {name: plgmi, preset: quick, params: {iterations: 2}, identities: "0-1", repeats: 1, adaptive: true}
priors: {preset: quick, params: {cgan: {iterations: 2, batch_size: 8}}}
metrics: {fid: none, n_boot: 10}
report: {enabled: false}
"""


def test_midre_run_with_trapmid_targets_end_to_end(tmp_path, capsys):
    from midre.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_TRAPMID_RUN)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    run = tmp_path / "run"
    for name in ("trapmid", "midre-trapmid"):
        meta = json.loads((run / "targets" / name / "model.json").read_text())
        assert 0.0 <= meta["defense_report"]["trapdoor_acc"] <= 100.0
        rec = json.loads((run / "attacks" / name / "plgmi-adaptive" / "reconstructions.json").read_text())
        assert rec["adaptive"] and rec["adaptive_eraser"].startswith("trapdoor_adversary(")
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert "trapdoor_acc" in json.dumps(stages["targets/trapmid"])     # the pipeline's record of the target
    nodef = json.loads((run / "attacks" / "nodef" / "plgmi-adaptive" / "reconstructions.json").read_text())
    assert not nodef["adaptive"]                                       # NoDef: nothing to adapt to, a plain attack
    rows = {r["target"]: r for r in json.loads((run / "results.json").read_text())["rows"]}
    for name in ("trapmid", "midre-trapmid"):                          # the results table carries it beside acc
        meta = json.loads((run / "targets" / name / "model.json").read_text())
        assert rows[name]["trapdoor_acc"] == meta["defense_report"]["trapdoor_acc"]
    assert "trapdoor_acc" not in rows["nodef"]
    assert "trapdoor_acc" in (run / "results.csv").read_text().splitlines()[0].split(",")


def test_midre_attack_adaptive_against_a_trapmid_target(tmp_path, capsys):
    from midre.cli import main

    data = ["--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
            "--data-option", "num_public=4", "--data-option", "images_per_id=4"]
    assert main(["train", *data, "--arch", "tinycnn", "--epochs", "1", "--batch-size", "8", "--defense", "trapmid",
                 "--no-progress", "--out", str(tmp_path / "t")]) == 0
    assert "trapdoor_acc" in capsys.readouterr().out                   # the summary line
    assert main(["attack", "--target", str(tmp_path / "t"), "--attack", "plgmi", "--preset", "quick",
                 "--param", "iterations=2", "--prior-param", "cgan.iterations=2", "--prior-param", "cgan.batch_size=8",
                 "--identities", "0-1", "--adaptive", "--no-progress", "--out", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "a" / "reconstructions.json").read_text())
    assert rec["adaptive"] and rec["adaptive_eraser"].startswith("trapdoor_adversary(")
