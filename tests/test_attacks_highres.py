"""PPA, IF-GMI, MIRROR and RLB-MI: helpers by hand, each objective improves on a tiny setup, black-box
attacks see only the query oracle (no gradient, every query counted), the known bugs of a public RLB-MI
port are absent, determinism, and the latent codes in the artefact.

One tiny setup for the module: synthetic faces (4 private identities, 16 px), a tinycnn target, a
randomly initialised 16-px StyleGAN2 (midre's own) as the ``stylegan2`` prior and a tiny WGAN ``gan``
prior for RLB-MI.
"""
from __future__ import annotations

import math

import pytest
import torch

from midre.attacks import QueryOracle, Reconstructions, build_attack
from midre.attacks.highres import (
    Ticker,
    poincare_loss,
    project_l1_ball,
    random_resized_crop,
    to_target_view,
    top_per_class,
)
from midre.errors import ArgumentError

K = 4
RES = 16


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    from midre.data import load_dataset
    from midre.models import create_model
    from midre.models.stylegan2 import tiny_generator
    from midre.priors import Prior, train_prior
    from midre.training import TrainConfig, train_classifier

    splits = load_dataset("synthetic", seed=0, num_private=K, num_public=K, images_per_id=20, resolution=RES)
    model = create_model("tinycnn", num_classes=K, resolution=RES)
    res = train_classifier(model, splits.private_train, splits.private_test,
                           config=TrainConfig(epochs=8, batch_size=16, lr=0.05, device="cpu", amp=False, seed=0),
                           progress=False)
    sg = Prior("stylegan2", generator=tiny_generator(RES, seed=0, channels=16), meta={"resolution": RES})
    gan = train_prior("gan", splits.public, None, preset="quick", seed=1, device="cpu",
                      config={"iterations": 30, "width": 8, "batch_size": 16, "n_critic": 1})
    return {"target": res.model.eval(), "priors": {"stylegan2": sg, "gan": gan}, "splits": splits}


SMALL = {
    "ppa": {"pool": 64, "iterations": 20, "final_views": 4},
    "ifgmi": {"pool": 64, "stages": [10, 5, 5], "radii_w": [100.0, 100.0, 100.0],
              "radii_features": [100.0, 100.0, 100.0], "final_views": 4},
    "mirror": {"pool": 64, "population": 8, "generations": 6},
    "mirror_wb": {"pool": 64, "iterations": 6},
    "rlbmi": {"episodes": 40, "hidden": 32, "sac_batch": 16},
}


def _run(setup, name, ids=(0, 1), repeats=1, seed=0, **kw):
    a = build_attack(name, preset="quick", **{**SMALL[name], **kw})
    return a, a.run(setup["target"], list(ids), repeats, setup["priors"], seed=seed)


# ------------------------------------------------------------------------------ registry / parameters
def test_registered_with_paper_defaults():
    p = build_attack("ppa").params
    assert (p["lr"], p["beta1"], p["beta2"], p["iterations"], p["psi"], p["cutoff"]) == (0.005, 0.1, 0.1, 50, 0.5, 8)
    assert (p["pool"], p["milestone_1"], p["milestone_2"], p["final_views"], p["center_crop"]) == (2000, 30, 40, 100,
                                                                                                  800 / 1024)
    f = build_attack("ifgmi").params
    assert f["stages"] == [50, 10, 10, 10, 10, 10, 10, 10] and f["radii_w"][0] == 1000 and f["radii_w"][-1] == 8000
    assert "iterations" not in f
    m = build_attack("mirror")
    assert m.access == "black-box" and (m.params["pool"], m.params["population"], m.params["generations"]) == (
        100000, 1000, 100)
    r = build_attack("rlbmi")
    assert r.access == "black-box" and r.prior_kinds == ("gan",)
    assert (r.params["episodes"], r.params["hidden"], r.params["sac_batch"], r.params["tau"]) == (40000, 256, 256, 0.01)
    assert build_attack("ppa").prior_kinds == build_attack("ifgmi").prior_kinds == ("stylegan2",)


def test_bad_parameters_are_refused():
    with pytest.raises(ArgumentError, match="radii_w"):
        build_attack("ifgmi", stages=[5, 5], radii_w=[1.0])
    with pytest.raises(ArgumentError, match="stages"):
        build_attack("ifgmi", stages=[])
    with pytest.raises(ArgumentError, match="cannot exceed"):
        build_attack("ppa", pool=3, candidates=4)
    with pytest.raises(ArgumentError, match="center_crop"):
        build_attack("ppa", center_crop=1.5)
    with pytest.raises(ArgumentError, match="population"):
        build_attack("mirror", pool=10, population=20)


# ------------------------------------------------------------------------------ helpers by hand
def test_poincare_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 1.0]])
    u = logits / logits.abs().sum()
    v = torch.tensor([[1 - 1e-4, 0.0, 0.0]])
    want = torch.acosh(1 + 2 * (u - v).pow(2).sum() / ((1 - u.pow(2).sum()) * (1 - v.pow(2).sum())))
    assert torch.allclose(poincare_loss(logits, torch.tensor([0])), want.reshape(1))
    assert poincare_loss(logits, torch.tensor([0])) < poincare_loss(logits, torch.tensor([1]))


def test_l1_projection_is_the_closest_point_of_the_ball():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, generator=g) * 3
    r = 2.0
    p = project_l1_ball(x, r)
    assert torch.allclose(p.flatten(1).abs().sum(1), torch.full((6,), r), atol=1e-4)
    inside = torch.randn(6, 2, 5, generator=g) * 0.01
    assert torch.equal(project_l1_ball(inside, r), inside)
    for _ in range(200):   # no random point of the ball is closer than the projection
        q = torch.randn(6, 10, generator=g)
        q = q / q.abs().sum(1, keepdim=True) * r * torch.rand(6, 1, generator=g)
        assert ((q - x.flatten(1)).norm(dim=1) >= (p.flatten(1) - x.flatten(1)).norm(dim=1) - 1e-5).all()


def test_views_crop_resize_and_random_resized_crop():
    x = torch.rand(2, 3, 32, 32)
    v = to_target_view(x, 16, 0.5)
    assert v.shape == (2, 3, 16, 16)
    assert torch.allclose(to_target_view(x, 32, 1.0), x)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(random_resized_crop(x, g, (1.0, 1.0), (1.0, 1.0)), x, atol=1e-5)   # whole image
    f = random_resized_crop(x, torch.Generator().manual_seed(1), (1.0, 1.0), (1.0, 1.0), flip=True)
    for i in range(2):
        assert torch.allclose(f[i], x[i], atol=1e-5) or torch.allclose(f[i], x[i].flip(-1), atol=1e-5)
    y = random_resized_crop(x.requires_grad_(True), g, (0.5, 0.9), (0.8, 1.2), flip=True)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_top_per_class_and_ticker():
    s = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.9], [0.5, 0.2]])
    assert top_per_class(s, torch.tensor([0, 1]), 2).tolist() == [[0, 1], [2, 1]]
    ticks = []
    t = Ticker(lambda: ticks.append(1), 10, 35)
    for _ in range(35):
        t.step()
    assert len(ticks) == 10


# ------------------------------------------------------------------------------ white-box attacks improve
@pytest.mark.parametrize("name", ["ppa", "ifgmi"])
def test_whitebox_objective_improves_over_the_search(setup, name):
    a, rec = _run(setup, name, ids=range(K))
    curve = rec.meta["loss_curve"]
    assert len(curve) == a.steps_per_batch()
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, f"{name}: Poincaré loss did not decrease"
    assert rec.images.shape == (K, 3, RES, RES) and rec.images.min() >= 0 and rec.images.max() <= 1
    if name == "ppa":
        # the optimised latents are more confidently the identity than the searched candidates were, scored
        # like for like: unclamped target view and its flip, as the search scores (the reference's rule; the
        # library's own confidence is of the clamped images, which an untrained generator's range changes)
        with torch.no_grad():
            x = a.view(rec.latents.float())
            p = (setup["target"](x).softmax(1) + setup["target"](x.flip(-1)).softmax(1)) / 2
        assert p[torch.arange(K), rec.identity].mean() > torch.tensor(rec.meta["search_confidence"]).mean()
    assert rec.latents is not None and rec.latents.shape[0] == K and rec.meta["queries"] is None


def test_ppa_final_selection_picks_the_best_candidate(setup, monkeypatch):
    from midre.attacks import ppa

    a = build_attack("ppa", preset="quick", **{**SMALL["ppa"], "candidates": 3, "iterations": 2})
    # score the candidates by hand: the kept one has the highest mean confidence over the same views
    rec = a.run(setup["target"], [0, 1], 1, setup["priors"], seed=0)
    assert rec.latents.shape == (2, 1, a.sg.w_dim)
    with torch.no_grad():
        x = a.view(rec.latents.to(torch.float32)).clamp(0, 1)
    assert torch.allclose(x, rec.images, atol=1e-5)          # the stored w reproduces the stored image
    assert ppa.PPA.final_selection is a.final_selection.__func__


def test_ifgmi_projects_onto_l1_balls_and_picks_the_stage_by_target_confidence(setup, monkeypatch):
    from midre.attacks import highres, ifgmi

    seen = []
    orig = highres.project_l1_ball

    def spy(x, r):
        out = orig(x, r)
        seen.append((float(out.flatten(1).abs().sum(1).max()), r))
        return out

    monkeypatch.setattr(ifgmi, "project_l1_ball", spy)
    a, rec = _run(setup, "ifgmi", radii_w=[0.5, 0.5, 0.5], radii_features=[1.0, 2.0, 3.0])
    assert seen and all(n <= r + 1e-4 for n, r in seen)
    assert {r for _, r in seen} == {0.5, 2.0, 3.0}      # w at every stage, features from stage 1 on

    # the kept stage is the one where the TARGET is most confident (scripted confidences: stage 1 wins)
    calls = []

    def scripted(self, access, x, y):
        calls.append(1)
        return torch.full((len(x),), [0.2, 0.9, 0.5][len(calls) - 1])

    monkeypatch.setattr(ifgmi.IFGMI, "_confidence", scripted)
    a, rec = _run(setup, "ifgmi", ids=(0,), candidates=1)
    assert rec.meta["selected_stage"] == [1]


# ------------------------------------------------------------------------------ black-box attacks
class _Spy(torch.nn.Module):
    """Wraps the target: records whether any call could build a graph (grad mode or inputs with grad)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_classes, self.calls, self.graph = inner, inner.num_classes, 0, False

    def forward(self, x):
        self.calls += len(x)
        self.graph |= torch.is_grad_enabled() or x.requires_grad
        return self.inner(x)


@pytest.mark.parametrize("name", ["mirror", "rlbmi"])
def test_blackbox_sees_only_the_oracle_and_counts_every_query(setup, name, monkeypatch):
    mod = __import__(f"midre.attacks.{name}", fromlist=["x"])
    cls = getattr(mod, name.upper())
    seen = []
    orig = cls.init_latents

    def spy_init(self, access, *a, **k):
        seen.append(access)
        return orig(self, access, *a, **k)

    monkeypatch.setattr(cls, "init_latents", spy_init)
    target = _Spy(setup["target"])
    a = build_attack(name, preset="quick", **SMALL[name])
    rec = a.run(target, [0, 1], 1, setup["priors"], seed=0)
    assert isinstance(seen[0], QueryOracle) and seen[0].mode == "probs"
    assert not target.graph                                   # never a gradient through the target
    assert rec.meta["queries"] == target.calls - len(rec)     # every target call but the library's scoring
    p = a.params
    if name == "mirror":
        assert rec.meta["queries_search"] == p["pool"]
        # every generation re-queries the whole population (elite included) of each identity still running
        ran = [g if g >= 0 else p["generations"] for g in rec.meta["generations_to_min_score"]]
        assert rec.meta["queries"] == p["pool"] + sum(ran) * p["population"]
    else:
        assert rec.meta["queries"] == 2 * p["episodes"] * 3   # state + action images, one test image


def test_mirror_elitism_never_loses_fitness(setup):
    a, rec = _run(setup, "mirror", ids=range(K), generations=8)
    curve = rec.meta["loss_curve"]                            # -mean elite log p_y per generation
    assert all(b <= c + 1e-6 for c, b in zip(curve, curve[1:]))
    assert curve[-1] < curve[0]
    assert torch.allclose(rec.confidence, torch.tensor(rec.meta["elite_confidence"]), atol=1e-5)
    assert rec.latents.shape == (K, a.sg.w_dim)


def test_mirror_stops_an_identity_at_min_score(setup):
    a, rec = _run(setup, "mirror", ids=(0,), min_score=1e-6)      # the first elite already passes
    assert rec.meta["generations_to_min_score"] == [0]
    assert rec.meta["queries"] == a.params["pool"]


def test_rlbmi_reward_uses_the_identity_label():
    from midre.attacks.rlbmi import rlbmi_reward

    ps = torch.tensor([[0.1, 0.2, 0.6, 0.1]])
    pa = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    y = torch.tensor([2])
    want = 2 * math.log(0.6) + 2 * math.log(0.25) + 8 * math.log(0.6 - 0.2)
    assert abs(float(rlbmi_reward(ps, pa, y)) - want) < 1e-5
    # a label below the best other class: the margin term floors at log 1e-7
    assert abs(float(rlbmi_reward(ps, pa, torch.tensor([0]))) - (2 * math.log(0.1) + 2 * math.log(0.25)
                                                                 + 8 * math.log(1e-7))) < 1e-4


def test_rlbmi_keeps_the_best_test_image_not_the_state_image(setup, monkeypatch):
    """Known port bugs: scoring the state image instead of the test image, never updating the best score,
    labels built from the latent size."""
    from midre.attacks import rlbmi

    scores = iter([0.1, 0.5, 0.3, 0.7, 0.2, 0.6] * 10)
    labels = []

    def scripted_test(self, agent, oracle, G, y, eraser):
        labels.append(int(y))
        s = next(scores)
        return torch.full((1, 3, RES, RES), s), torch.full((1, agent.dim), s), s

    monkeypatch.setattr(rlbmi.RLBMI, "_test", scripted_test)
    a, rec = _run(setup, "rlbmi", ids=(3,), episodes=6)
    assert set(labels) == {3}
    assert torch.allclose(rec.images, torch.full((1, 3, RES, RES), 0.7))   # the best TEST image
    assert torch.allclose(rec.latents, torch.full((1, 100), 0.7))
    assert rec.meta["best_test_confidence"] == [0.7]


def test_sac_agent_learns_a_bandit():
    from midre.attacks.rlbmi import SACAgent

    g = torch.Generator().manual_seed(0)
    p = {"hidden": 32, "lr_actor": 3e-3, "lr_critic": 3e-3, "sac_batch": 32, "gamma": 0.99, "tau": 0.05}
    agent = SACAgent(2, p, g, torch.device("cpu"), 400)
    goal = torch.tensor([0.6, -0.4])

    def mean_reward():
        s = torch.randn(64, 2, generator=g)
        return float(-(agent.act(s) - goal).pow(2).sum(1).mean())

    before = mean_reward()
    for _ in range(400):
        s = torch.randn(1, 2, generator=g)
        a = agent.act(s)
        agent.store(s[0], a[0], -(a[0] - goal).pow(2).sum().reshape(1), s[0], torch.ones(1))
        agent.learn()
    assert mean_reward() > before + 0.1


# ------------------------------------------------------------------------------ determinism, artefact
@pytest.mark.parametrize("name", ["ppa", "mirror", "rlbmi", "mirror_wb"])
def test_same_seed_same_reconstructions(setup, name):
    kw = {"iterations": 3} if name in ("ppa", "mirror_wb") else {"generations": 3} if name == "mirror" else \
        {"episodes": 20}
    _, r1 = _run(setup, name, seed=5, **kw)
    _, r2 = _run(setup, name, seed=5, **kw)
    _, r3 = _run(setup, name, seed=6, **kw)
    assert torch.equal(r1.images, r2.images) and torch.equal(r1.latents, r2.latents)
    assert r1.meta["queries"] == r2.meta["queries"]
    assert not torch.equal(r1.images, r3.images)


def test_latents_roundtrip_and_nothing_pickled(setup, tmp_path):
    _, rec = _run(setup, "rlbmi", episodes=5)
    rec.save(tmp_path / "r")
    back = Reconstructions.load(tmp_path / "r")
    assert torch.equal(back.latents, rec.latents) and torch.equal(back.images, rec.images)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["reconstructions.json",
                                                                  "reconstructions.safetensors"]


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_finished_chunks(setup, tmp_path, monkeypatch):
    """Attack.run(resume_dir=...): chunks finished before a crash are reused, the rest recomputed, and the
    result equals an uninterrupted run (queries and metadata included)."""
    from midre.attacks import mirror

    kw = {**SMALL["mirror"], "batch_size": 1, "generations": 3}
    ref = build_attack("mirror", preset="quick", **kw).run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=1)
    calls = []
    orig = mirror.MIRROR.invert

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(mirror.MIRROR, "invert", crashing)
    with pytest.raises(_Killed):
        build_attack("mirror", preset="quick", **kw).run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=1,
                                                        resume_dir=tmp_path / "p")
    assert len(list((tmp_path / "p").glob("chunk-*.safetensors"))) == 3
    calls.clear()
    rec = build_attack("mirror", preset="quick", **kw).run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=1,
                                                          resume_dir=tmp_path / "p")
    assert len(calls) == 3 and rec.meta["resumed_chunks"] == 3          # only the 3 unfinished chunks ran
    assert torch.equal(rec.images, ref.images) and torch.equal(rec.latents, ref.latents)
    assert rec.meta["queries"] == ref.meta["queries"] and rec.meta["loss_curve"] == ref.meta["loss_curve"]
    assert rec.meta["elite_confidence"] == ref.meta["elite_confidence"]
    # another seed does not reuse the chunks
    monkeypatch.undo()
    other = build_attack("mirror", preset="quick", **kw).run(setup["target"], [0, 1, 2], 2, setup["priors"], seed=2,
                                                            resume_dir=tmp_path / "p")
    assert other.meta["resumed_chunks"] == 0


def test_ppa_resumed_after_its_first_repeat_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    """The repeats of a batch share one pipeline run on the first repeat; a run killed after that repeat was
    saved recomputes it (seeded by the batch, not the repeat) and gives the same samples and metadata."""
    from midre.attacks import ppa

    kw = {**SMALL["ppa"], "iterations": 3, "candidates": 2}
    ref = build_attack("ppa", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4)
    calls = []
    orig = ppa.PPA.final_selection

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(ppa.PPA, "final_selection", crashing)
    with pytest.raises(_Killed):
        build_attack("ppa", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4,
                                                     resume_dir=tmp_path / "p")
    monkeypatch.undo()
    rec = build_attack("ppa", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4,
                                                       resume_dir=tmp_path / "p")
    assert rec.meta["resumed_chunks"] == 1
    assert torch.equal(rec.images, ref.images) and torch.equal(rec.latents, ref.latents)
    assert rec.meta["search_confidence"] == ref.meta["search_confidence"]
    assert len({tuple(v.flatten().tolist()) for v in rec.latents}) == 6     # 3 distinct samples per identity


def test_mirror_wb_resumed_after_its_first_repeat_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    """MIRROR's white-box form optimises every start of a batch at once on the first repeat (the release's
    nrow starts per target); a run killed after that repeat was saved recomputes it, same samples."""
    from midre.attacks import mirror_wb

    kw = {**SMALL["mirror_wb"], "iterations": 3}
    ref = build_attack("mirror_wb", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4)
    calls = []
    orig = mirror_wb.MirrorWB.final_selection

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise _Killed("killed")
        return orig(self, *a, **k)

    monkeypatch.setattr(mirror_wb.MirrorWB, "final_selection", crashing)
    with pytest.raises(_Killed):
        build_attack("mirror_wb", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4,
                                                           resume_dir=tmp_path / "p")
    monkeypatch.undo()
    rec = build_attack("mirror_wb", preset="quick", **kw).run(setup["target"], [0, 1], 3, setup["priors"], seed=4,
                                                             resume_dir=tmp_path / "p")
    assert rec.meta["resumed_chunks"] == 1 and rec.meta["queries"] is None and rec.meta["access"] == "white-box"
    assert torch.equal(rec.images, ref.images) and torch.equal(rec.latents, ref.latents)
    assert rec.meta["start_confidence"] == ref.meta["start_confidence"]
    assert len({tuple(v.tolist()) for v in rec.latents}) == 6            # 3 distinct starts per identity
