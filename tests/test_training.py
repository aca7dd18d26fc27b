import json

import pytest
import torch

from midre.checkpoint import save_checkpoint
from midre.defenses.base import Defense, build_defense
from midre.errors import ArgumentError, CheckpointError, TrainingDivergedError
from midre.loading import load_model
from midre.models import create_model
from midre.training import evaluate_accuracy, make_config, train_classifier

CFG = dict(epochs=3, batch_size=16, lr=0.05, device="cpu", seed=1, schedule="cosine")


def fresh(seed=0):
    torch.manual_seed(seed)
    return create_model("tinycnn", num_classes=4, resolution=16)


def test_training_learns_and_checkpoints(tiny_sets, tmp_path):
    train, test = tiny_sets
    model = create_model("tinycnn", num_classes=4, resolution=16)
    before = evaluate_accuracy(model, test)
    res = train_classifier(model, train, test, config=CFG, out_dir=tmp_path, progress=False)
    assert res.test_acc > 80 and res.test_acc > before
    assert len(res.history) == 3 and all("test_acc" in h for h in res.history)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["arch"] == "tinycnn" and meta["num_classes"] == 4 and meta["resolution"] == 16
    assert meta["defense"] == {"name": "nodef"} and meta["complete"] is True
    loaded, meta2 = load_model(tmp_path)
    assert evaluate_accuracy(loaded, test) == pytest.approx(res.test_acc)


def test_resume_gives_identical_weights(tiny_sets, tmp_path):
    train, test = tiny_sets
    full = train_classifier(fresh(), train, test,
                            config=CFG, out_dir=tmp_path / "a", progress=False)
    # interrupted after 2 epochs: train 2 epochs with the same settings except epochs, then rewrite the
    # metadata as if the 3-epoch run had stopped there -> simulate by training a 3-epoch run that dies
    class Boom(Exception):
        pass

    calls = {"n": 0}

    class DieInEpoch3(Defense):
        name = "nodef"

        def on_epoch_start(self, epoch, epochs):
            if epoch == 2 and calls["n"] == 0:
                calls["n"] += 1
                raise Boom()

    with pytest.raises(Boom):
        train_classifier(fresh(), train, test, defense=DieInEpoch3(),
                         config=CFG, out_dir=tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "model.json").read_text())["epoch"] == 2
    resumed = train_classifier(fresh(), train, test,
                               defense=DieInEpoch3(), config=CFG, out_dir=tmp_path / "b", progress=False)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # every recorded figure but the wall-clock time must match epoch by epoch
    def figures(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert len(resumed.history) == len(full.history)
    for got, want in zip(figures(resumed.history), figures(full.history)):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-6)


def test_same_seed_same_numbers(tiny_sets):
    train, test = tiny_sets
    a = train_classifier(fresh(), train, test, config=CFG, progress=False)
    b = train_classifier(fresh(), train, test, config=CFG, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_hooks_are_called_in_order(tiny_sets):
    train, test = tiny_sets
    seen = []

    class Spy(Defense):
        name = "spy"

        def prepare(self, ctx):
            seen.append("prepare")

        def on_epoch_start(self, epoch, epochs):
            seen.append(f"epoch{epoch}/{epochs}")

        def transform_batch(self, x, y, idx=None):
            assert idx is not None and len(idx) == len(y)
            seen.append("t")
            return x, y

        def regularizer(self, ctx):
            return ctx.logits.sum() * 0.0

    train_classifier(fresh(), train, test, defense=Spy(),
                     config=dict(CFG, epochs=2), progress=False)
    assert seen[0] == "prepare" and "epoch0/2" in seen and "epoch1/2" in seen and seen.count("t") == 2 * 6


def test_grad_clip_is_applied_after_backward(tiny_sets, monkeypatch):
    """Pitfall: clipping before backward() clips nothing. The clip must see real gradients."""
    train, _ = tiny_sets
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        out = real(params, max_norm, *a, **k)
        norms.append(torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None)).item())
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train_classifier(fresh(), train, None,
                     config=dict(CFG, epochs=1, grad_clip=0.01), progress=False)
    assert norms and max(norms) <= 0.01 + 1e-6


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_sets, tmp_path):
    train, test = tiny_sets

    class Poison(Defense):
        name = "nodef"

        def regularizer(self, ctx):
            return ctx.logits.sum() * (float("nan") if ctx.epoch == 1 else 0.0)

    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        train_classifier(fresh(), train, test, defense=Poison(),
                         config=CFG, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "model.json").read_text())["epoch"] == 1
    load_model(tmp_path)


@pytest.mark.parametrize("bad", [dict(epochs=-1), dict(batch_size=0), dict(lr=0), dict(optimiser="sgd")])
def test_bad_train_config(bad):
    with pytest.raises(ArgumentError):
        make_config(**bad)


def test_checkpoint_rejects_mismatch_and_garbage(tmp_path):
    m = create_model("tinycnn", num_classes=4, resolution=16)
    save_checkpoint(tmp_path / "model", m, {"arch": "tinycnn", "num_classes": 5, "resolution": 16})
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    (tmp_path / "x.json").write_text(json.dumps({"format": "midre-checkpoint", "arch": "tinycnn",
                                                 "num_classes": 4, "resolution": 16}))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")


def test_build_defense_errors():
    from midre.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'nodef'"):
        build_defense("nodeff")
