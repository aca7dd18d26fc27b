"""Training to convergence (midre.stopping + train.stop in midre.training): the rule, the validation split,
the best-validation checkpoint and exact resume after a kill."""
import json

import pytest
import torch

from midre.defenses.base import Defense
from midre.errors import ArgumentError
from midre.models import create_model
from midre.stopping import StopRule, StopState, holdout_indices, replay, step
from midre.training import make_config, train_classifier

STOP = {"val_per_class": 4, "patience": 2, "lr_drops": 1, "factor": 0.1}
CFG = dict(epochs=12, batch_size=16, lr=0.05, device="cpu", seed=1, schedule="none", stop=STOP)


def fresh(seed=0):
    torch.manual_seed(seed)
    return create_model("tinycnn", num_classes=4, resolution=16)


def recs(vals):
    return [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(vals)]


def test_rule_drops_then_stops_on_a_known_curve():
    rule = StopRule(patience=2, lr_drops=1, min_delta=0.5)
    st = StopState()
    actions = [step(rule, st, r) for r in recs([50, 60, 60.4, 59, 61, 61, 61])]
    # 60.4 is not an improvement (min_delta 0.5); two epochs without one -> drop after epoch 4;
    # 61 at epoch 5 improves; epochs 6 and 7 do not -> the one drop is used, so stop after epoch 7
    assert actions[:7] == ["", "", "", "drop", "", "", "stop"]
    assert st.best_epoch == 5 and st.best == 61 and st.drops == [4] and st.stopped
    # replaying the history reproduces the state (what a resume relies on)
    again = replay(rule, recs([50, 60, 60.4, 59, 61, 61, 61]))
    assert (again.best_epoch, again.drops, again.stopped) == (5, [4], True)


def test_loss_metric_lower_is_better_and_no_patience_never_stops():
    rule = StopRule(metric="val_loss", patience=1, lr_drops=0)
    st = StopState()
    assert [step(rule, st, {"epoch": i + 1, "val_loss": v}) for i, v in enumerate([2.0, 1.0, 1.5])] == \
        ["", "", "stop"]
    assert st.best_epoch == 2
    fixed = StopRule(patience=None, keep="last")
    st = StopState()
    assert all(step(fixed, st, r) == "" for r in recs([50, 40, 30, 20, 10]))


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = torch.arange(40) % 4
    tr, va = holdout_indices(labels, 3, seed=7)
    assert len(va) == 12 and set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 40
    assert torch.bincount(labels[va]).tolist() == [3, 3, 3, 3]
    tr2, va2 = holdout_indices(labels, 3, seed=7)
    assert torch.equal(va, va2)
    assert not torch.equal(va, holdout_indices(labels, 3, seed=8)[1])
    with pytest.raises(ArgumentError, match="val_per_class is 10 but class 0 has only 10"):
        holdout_indices(labels, 10, seed=0)


def test_lr_drops_need_a_constant_schedule():
    with pytest.raises(ArgumentError, match="schedule: none"):
        make_config({**CFG, "schedule": "cosine"})
    make_config({**CFG, "schedule": "cosine", "stop": {**STOP, "lr_drops": 0}})   # allowed


def test_training_stops_keeps_best_and_records_the_curve(tiny_sets, tmp_path):
    train, test = tiny_sets
    res = train_classifier(fresh(), train, test, config=CFG, out_dir=tmp_path, progress=False)
    meta = json.loads((tmp_path / "model.json").read_text())
    stop = meta["stop"]
    assert meta["complete"] is True
    assert stop["stopped_epoch"] == len(res.history) <= 12
    assert all("val_acc" in h and "lr" in h for h in res.history)
    best = max(h["val_acc"] for h in res.history)
    assert stop["best"] == best and res.history[stop["best_epoch"] - 1]["val_acc"] == best
    # the kept model is the best-validation epoch's: its test accuracy is that epoch's
    assert res.test_acc == res.history[stop["best_epoch"] - 1]["test_acc"] == meta["test_acc"]
    from midre.loading import load_model
    from midre.training import evaluate_accuracy

    loaded, _ = load_model(tmp_path)
    assert evaluate_accuracy(loaded, test) == pytest.approx(res.test_acc)
    # the validation images come out of the training split: 4 per class of 96 -> 80 trained on
    assert res.meta["stop"]["max_epochs"] == 12


def test_stopped_run_is_not_continued(tiny_sets, tmp_path):
    train, test = tiny_sets
    cfg = {**CFG, "stop": {**STOP, "patience": 1, "lr_drops": 0}, "lr": 0.5}
    first = train_classifier(fresh(), train, test, config=cfg, out_dir=tmp_path, progress=False)
    assert first.meta["stop"]["reason"] in ("patience", "max_epochs")
    again = train_classifier(fresh(), train, test, config=cfg, out_dir=tmp_path, progress=False)
    assert len(again.history) == len(first.history) and again.test_acc == first.test_acc


@pytest.mark.slow
def test_resume_after_a_kill_takes_the_same_decisions(tiny_sets, tmp_path):
    train, test = tiny_sets
    full = train_classifier(fresh(), train, test, config=CFG, out_dir=tmp_path / "a", progress=False)
    n = len(full.history)
    assert n >= 3, "the curve is too short to kill mid-way"

    class Boom(Exception):
        pass

    calls = {"n": 0}

    class DieMidway(Defense):
        name = "nodef"

        def on_epoch_start(self, epoch, epochs):
            if epoch == n - 1 and calls["n"] == 0:
                calls["n"] += 1
                raise Boom()

    with pytest.raises(Boom):
        train_classifier(fresh(), train, test, defense=DieMidway(), config=CFG, out_dir=tmp_path / "b",
                         progress=False)
    resumed = train_classifier(fresh(), train, test, defense=DieMidway(), config=CFG, out_dir=tmp_path / "b",
                               progress=False)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    got = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert got == strip
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.meta["stop"] == full.meta["stop"]


def test_at_val_acc_stops_at_the_first_epoch_reaching_it():
    rule = StopRule(patience=5, at_val_acc=60.0)
    st = StopState()
    assert [step(rule, st, r) for r in recs([20, 50, 61, 70])][:3] == ["", "", "stop"]
    assert st.best_epoch == 3 and st.reason == "reached at_val_acc"


@pytest.mark.slow
def test_stop_early_is_the_reference_run_cut_short(tiny_sets, tmp_path):
    """A curve point with the reference's settings and seed retraces its trajectory and stops at the share."""
    from midre.stopping import early_stop_of

    train, test = tiny_sets
    cfg = {**CFG, "stop": {**STOP, "patience": 3}}
    ref = train_classifier(fresh(), train, test, config=cfg, out_dir=tmp_path / "ref", progress=False)
    best = ref.meta["stop"]["best"]
    cut = early_stop_of(cfg, tmp_path / "ref" / "model.json", 0.9)
    assert cut["stop"]["at_val_acc"] == pytest.approx(0.9 * best, abs=1e-3) and cut["stop"]["keep"] == "last"
    early = train_classifier(fresh(), train, test, config=cut, out_dir=tmp_path / "early", progress=False)
    k = early.meta["stop"]["stopped_epoch"]
    assert early.history[-1]["val_acc"] >= 0.9 * best - 1e-3
    assert all(h["val_acc"] < 0.9 * best - 1e-3 for h in early.history[:-1])
    strip = lambda hs: [{a: b for a, b in h.items() if a != "seconds"} for h in hs]   # noqa: E731
    assert strip(early.history) == strip(ref.history[:k])          # the same trajectory, cut short
