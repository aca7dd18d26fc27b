"""C2FMI and its ``c2fmi`` prior: the prior reaches the target only through a counting oracle and resumes
exactly; the attack sees only the oracle, counts exactly the queries the release makes, is seeded, resumes
after a kill, refuses bad settings in one line, and runs end to end through ``midre attack``.

(The update rules against the release: tests/test_attack_parity.py.)
"""
from __future__ import annotations

import pytest
import torch
from _tiny_attack import RES, K, cli_attack, tiny_splits, train_tiny_target  # the tests folder's shared tiny world

from midre.attacks import QueryOracle, Reconstructions, build_attack
from midre.errors import ArgumentError, DataError

PRIOR_CFG = {"embed_arch": "tinycnn", "embed_epochs": 2, "hidden": 16, "epochs": 3, "batch_size": 16}
SMALL = {"pool": 300, "candidates": 5, "coarse_steps": 3, "select": 3, "population": 6, "generations": 4,
         "beta_ramp": 2, "beta_div": 3.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    from midre.models.stylegan2 import tiny_generator
    from midre.priors import Prior, train_prior

    root = tmp_path_factory.mktemp("c2fmi")
    splits = tiny_splits()
    target = train_tiny_target(root, epochs=6, splits=splits).model.eval()
    sg = Prior("stylegan2", generator=tiny_generator(RES, seed=0, channels=16), meta={"resolution": RES})
    c2 = train_prior("c2fmi", splits.public, target, out_dir=root / "priors", preset="quick", seed=1, device="cpu",
                     config=PRIOR_CFG)
    return {"root": root, "splits": splits, "target": target, "priors": {"stylegan2": sg, "c2fmi": c2}}


class _Spy(torch.nn.Module):
    """The target, counting every image it sees and whether any call could carry a gradient."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_classes, self.calls, self.graph = inner, inner.num_classes, 0, False

    def forward(self, x):
        self.calls += len(x)
        self.graph |= torch.is_grad_enabled() or x.requires_grad
        return self.inner(x)


def _run(setup, ids=(0, 1), repeats=1, seed=0, target=None, **kw):
    a = build_attack("c2fmi", preset="quick", **{**SMALL, **kw})
    return a, a.run(target if target is not None else setup["target"], list(ids), repeats, setup["priors"], seed=seed)


# ------------------------------------------------------------------------------ the prior
def test_prior_queries_the_target_once_per_public_image_without_gradients(setup):
    from midre.priors import train_prior

    spy = _Spy(setup["target"])
    p = train_prior("c2fmi", setup["splits"].public, spy, preset="quick", seed=3, device="cpu", config=PRIOR_CFG)
    n = len(setup["splits"].public)
    assert p.meta["target_queries"] == n and spy.calls == n and not spy.graph
    embed, M = p.aug_models
    assert (M.num_classes, M.embed_classes) == (K, embed.num_classes) and p.meta["embed_classes"] == K
    assert p.meta["inverse_epochs_done"] == PRIOR_CFG["epochs"]


def test_prior_is_cached_and_reloads_the_same_networks(setup):
    from midre.priors import load_prior, train_prior

    c2 = setup["priors"]["c2fmi"]
    dirs = [d for d in (setup["root"] / "priors").iterdir() if d.name.startswith("c2fmi-")]
    assert len(dirs) == 1 and (dirs[0] / "prior.json").exists()
    assert sorted(p.name for p in dirs[0].iterdir()) == ["prior.json", "prior.safetensors"]   # no training state
    back = load_prior(dirs[0])
    again = train_prior("c2fmi", setup["splits"].public, setup["target"], out_dir=setup["root"] / "priors",
                        preset="quick", seed=1, device="cpu", config=PRIOR_CFG)
    x, p = torch.rand(3, 3, RES, RES), torch.rand(5, K).softmax(1)
    for other in (back, again):
        assert torch.equal(other.aug_models[0](x), c2.aug_models[0](x))
        assert torch.equal(other.aug_models[1](p), c2.aug_models[1](p))


def test_prior_interrupted_and_resumed_equals_an_uninterrupted_one(setup, tmp_path):
    from midre.priors import train_prior

    pub, t = setup["splits"].public, setup["target"]
    full = train_prior("c2fmi", pub, t, preset="quick", seed=5, device="cpu", config=PRIOR_CFG)
    part = train_prior("c2fmi", pub, t, out_dir=tmp_path, preset="quick", seed=5, device="cpu", config=PRIOR_CFG,
                       until=1)
    assert part.meta["incomplete"] and part.meta["inverse_epochs_done"] == 1
    assert not any(tmp_path.glob("c2fmi-*/prior.json"))
    done = train_prior("c2fmi", pub, t, out_dir=tmp_path, preset="quick", seed=5, device="cpu", config=PRIOR_CFG)
    p = torch.rand(6, K).softmax(1)
    assert torch.equal(done.aug_models[1](p), full.aug_models[1](p))
    assert not torch.equal(part.aug_models[1](p), full.aug_models[1](p))       # one epoch is not three


def test_prior_needs_labelled_public_identities(setup):
    from midre.data.base import TensorImageSet
    from midre.priors import train_prior

    ts = setup["splits"].public.to_tensors()
    with pytest.raises(DataError, match="fewer than 2 labels"):
        train_prior("c2fmi", TensorImageSet(ts.images, torch.zeros(len(ts.images), dtype=torch.long)),
                    setup["target"], preset="quick", device="cpu", config=PRIOR_CFG)
    with pytest.raises(ArgumentError, match="no key 'hiden'"):
        train_prior("c2fmi", ts, setup["target"], preset="quick", device="cpu", config={"hiden": 3})


# ------------------------------------------------------------------------------ the attack
def test_blackbox_sees_only_the_oracle_and_counts_every_query_of_the_release(setup, monkeypatch):
    from midre.attacks import c2fmi

    seen = []
    orig = c2fmi.C2FMI.init_latents

    def spy_init(self, access, *a, **k):
        seen.append(access)
        return orig(self, access, *a, **k)

    monkeypatch.setattr(c2fmi.C2FMI, "init_latents", spy_init)
    target = _Spy(setup["target"])
    a, rec = _run(setup, ids=(0, 1, 3), repeats=2, target=target)
    assert isinstance(seen[0], QueryOracle) and seen[0].mode == "probs"
    assert not target.graph
    p = a.params
    per_identity = p["candidates"] + 2 * p["population"] * p["generations"] + p["population"]
    assert rec.meta["queries"] == 3 * 2 * per_identity == target.calls - len(rec)
    assert rec.meta["queries_coarse"] == 3 * 2 * p["candidates"]
    assert rec.meta["queries_prior"] == len(setup["splits"].public)        # the inverse model's training
    assert rec.images.shape == (6, 3, RES, RES) and rec.latents.shape == (6, a.sg.w_dim)
    # the reconstruction is the final population's best by the release's last query
    assert torch.allclose(rec.confidence, torch.tensor(rec.meta["best_confidence"]), atol=1e-5)


def test_max_queries_is_enforced(setup):
    from midre.attacks import AccessError

    with pytest.raises(AccessError, match="query budget"):
        _run(setup, ids=(0,), max_queries=20)


def test_fine_stage_never_loses_the_best_score(setup):
    _, rec = _run(setup, ids=range(K), generations=6)
    fine = rec.meta["loss_curve"][SMALL["coarse_steps"]:]     # -log best p_y per generation (parents or kids)
    assert all(b <= c + 1e-6 for c, b in zip(fine, fine[1:]))


def test_same_seed_same_reconstructions(setup):
    _, r1 = _run(setup, seed=5)
    _, r2 = _run(setup, seed=5)
    _, r3 = _run(setup, seed=6)
    assert torch.equal(r1.images, r2.images) and torch.equal(r1.latents, r2.latents)
    assert r1.meta["queries"] == r2.meta["queries"] and r1.meta["loss_curve"] == r2.meta["loss_curve"]
    assert not torch.equal(r1.latents, r3.latents)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_finished_chunks(setup, tmp_path, monkeypatch):
    from midre.attacks import c2fmi

    kw = {"batch_size": 1}
    _, ref = _run(setup, ids=(0, 1, 2), repeats=2, seed=1, **kw)
    calls = []
    orig = c2fmi.C2FMI.invert

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(c2fmi.C2FMI, "invert", crashing)
    a = build_attack("c2fmi", preset="quick", **{**SMALL, **kw})
    with pytest.raises(_Killed):
        a.run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=1, resume_dir=tmp_path / "p")
    calls.clear()
    rec = build_attack("c2fmi", preset="quick", **{**SMALL, **kw}).run(
        setup["target"], [0, 1, 2], 2, setup["priors"], seed=1, resume_dir=tmp_path / "p")
    assert len(calls) == 3 and rec.meta["resumed_chunks"] == 3
    assert torch.equal(rec.images, ref.images) and torch.equal(rec.latents, ref.latents)
    assert rec.meta["queries"] == ref.meta["queries"] and rec.meta["loss_curve"] == ref.meta["loss_curve"]
    assert rec.meta["best_confidence"] == ref.meta["best_confidence"]


@pytest.mark.parametrize("bad,msg", [({"select": 2}, "'select' must be between 3"),
                                     ({"select": 8, "candidates": 6}, "'select' must be between 3"),
                                     ({"population": 4, "select": 5, "candidates": 6}, "population >= select"),
                                     ({"cross_prob": 1.5}, "'cross_prob' must be in"),
                                     ({"center_crop": 0.0}, "'center_crop' must be in")])
def test_bad_settings_are_one_line_errors(bad, msg):
    with pytest.raises(ArgumentError, match=msg):
        build_attack("c2fmi", preset="quick", **bad)


def test_paper_preset_is_the_release():
    p = build_attack("c2fmi").params
    assert (p["pool"], p["candidates"], p["coarse_steps"], p["coarse_lr"], p["lr_step"], p["lr_gamma"]) == \
        (10000, 16, 20, 0.02, 20, 0.95)
    assert (p["select"], p["population"], p["generations"], p["nv"], p["best_pull"], p["beta"], p["beta_ramp"],
            p["beta_div"], p["cross_prob"]) == (10, 32, 500, 4, 0.02, 0.1, 30, 50.0, 0.5)
    from midre.priors import prior_config

    c = prior_config("c2fmi", "paper")
    assert (c.hidden, c.dropout, c.trunc, c.epochs, c.lr, c.lr_step, c.lr_gamma, c.batch_size) == \
        (4096, 0.25, 1, 20, 1e-3, 2, 0.8, 128)


# ------------------------------------------------------------------------------ end to end
def test_cli_quick_preset_end_to_end(setup, capsys):
    root = setup["root"]
    prior_params = ["stylegan2.iterations=4", "stylegan2.batch_size=8", "stylegan2.ckpt_every=2",
                    *[f"c2fmi.{k}={v}" for k, v in PRIOR_CFG.items()]]
    rc = cli_attack(root / "target", "c2fmi", root / "atk", "0-1", 1, SMALL, prior_params,
                    "--prior-dir", str(root / "cli-priors"))
    assert rc == 0, capsys.readouterr().err
    rec = Reconstructions.load(root / "atk")
    assert rec.images.shape == (2, 3, RES, RES) and rec.meta["attack"] == "c2fmi"
    a = build_attack("c2fmi", preset="quick", **SMALL)
    p = a.params
    assert rec.meta["queries"] == 2 * (p["candidates"] + 2 * p["population"] * p["generations"] + p["population"])
    kinds = {d.name.split("-", 1)[0] for d in (root / "cli-priors").iterdir()}
    assert {"stylegan2", "c2fmi"} <= kinds
