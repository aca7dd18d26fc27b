"""Attack fidelity (issue 10): each attack's update rule against an independent, minimal implementation
of the reference release's rule, on fixed tiny networks, plus BREP-MI's behaviours one by one.

The reference loops below are written from the method descriptions and protocols.md (the releases'
update rules), not from midre's code: hand-written Adam and Nesterov momentum, the releases' loss
compositions.  Both sides draw their randomness (initial z, KedMI's eps, PLG-MI's augmentation
parameters, BREP-MI's sphere directions) from identically seeded generators in the same order, so
after a few steps the latents must agree to float precision.  Each test also checks that the latent
moved (so it cannot pass by doing nothing) and, where a past deviation existed, that the old rule
gives a DIFFERENT latent (so the test can tell them apart).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from midre.attacks import build_attack
from midre.attacks.brepmi import sphere_step
from midre.attacks.plgmi import random_views
from midre.models import create_model
from midre.models.generators import CondGenerator, DCGANDiscriminator, DCGANGenerator
from midre.priors import Prior

K, RES, ZD, STEPS = 4, 8, 6, 5
IDS = torch.tensor([0, 3, 1])


def _frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def nets():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G = _frozen(DCGANGenerator(ZD, RES, 3, 4))
    D = _frozen(DCGANDiscriminator(RES, 3, 4, 1))
    Dk = _frozen(DCGANDiscriminator(RES, 3, 4, K + 1))
    T = _frozen(create_model("tinycnn", num_classes=K, resolution=RES))
    aug = [_frozen(create_model("tinycnn", num_classes=K, resolution=RES)) for _ in range(2)]
    cG = _frozen(CondGenerator(K, ZD, RES, 3, 4))
    with torch.no_grad():
        p_reg = T.features(torch.rand(16, 3, RES, RES)).mean(0)
    priors = {"gan": Prior("gan", G, D), "kedmi": Prior("kedmi", G, Dk), "cgan": Prior("cgan", cG),
              "lomma": Prior("lomma", aug_models=aug, p_reg=p_reg)}
    return SimpleNamespace(G=G, D=D, Dk=Dk, T=T, aug=aug, cG=cG, p_reg=p_reg, priors=priors)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(name: str, nets, seed: int = 7, **params) -> dict:
    """midre's own init + invert (what Attack.run calls per batch), without the run() wrapper."""
    a = build_attack(name, iterations=STEPS, **params)
    g = _gen(seed)
    state = a.init_latents(nets.T, IDS, nets.priors, g)
    return a.invert(nets.T, IDS, nets.priors, state, g, None, lambda v: None, lambda: None)


# ------------------------------------------------------------------------------ reference pieces
class HandAdam:
    """Adam written out (Kingma & Ba; PyTorch defaults betas (0.9, 0.999), eps 1e-8)."""

    def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps, self.t = params, lr, b1, b2, eps, 0
        self.m = [torch.zeros_like(q) for q in params]
        self.v = [torch.zeros_like(q) for q in params]

    def step(self, grads):
        self.t += 1
        out = []
        for i, (q, g) in enumerate(zip(self.p, grads)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            mh, vh = self.m[i] / (1 - self.b1 ** self.t), self.v[i] / (1 - self.b2 ** self.t)
            out.append((q - self.lr * mh / (vh.sqrt() + self.eps)).detach())
        self.p = out
        return out


def ref_momentum(loss_fn, z0, steps, lr=0.02, m=0.9, clip=1.0):
    """GMI release: v <- m v - lr g ; z <- clamp(z - m v_prev + (1 + m) v); z0 not clamped."""
    z, v = z0.clone(), torch.zeros_like(z0)
    for _ in range(steps):
        zz = z.clone().requires_grad_(True)
        g, = torch.autograd.grad(loss_fn(zz), zz)
        v_prev, v = v, m * v - lr * g
        z = (z - m * v_prev + (1 + m) * v).clamp(-clip, clip)
    return z


def ref_distribution(loss_fn, shape, steps, gen, lr=0.02, clipz=False):
    """KedMI release: mu = 0, log_var = 1, one reparameterised sample per step, Adam on (mu, log_var)."""
    mu, lv = torch.zeros(shape), torch.ones(shape)
    opt = HandAdam([mu, lv], lr)
    for _ in range(steps):
        mu_, lv_ = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
        eps = torch.randn(shape, generator=gen)
        z = mu_ + eps * torch.exp(0.5 * lv_)
        if clipz:
            z = torch.clamp(z, -1.0, 1.0)
        grads = torch.autograd.grad(loss_fn(z), [mu_, lv_])
        mu, lv = opt.step(grads)
    return mu, lv


def gmi_prior(D):
    return lambda x: -D(x).mean()


def kedmi_prior(Dk):
    def f(x):
        out = Dk(x)
        lse = torch.logsumexp(out[:, :K] - out[:, K:], 1)
        return F.softplus(lse).mean() - lse.mean()
    return f


def lomma_iden(nets, reg_inside_mean=False):
    """Re-thinking_MI: mean over [target, aug...] of -logit_y (NLLLoss on logits) + lam * mean((f - p_reg)^2)."""
    def f(x):
        feats = nets.T.features(x)
        logits = nets.T.head(feats)
        losses = [-logits.gather(1, IDS[:, None]).mean()] + [-m(x).gather(1, IDS[:, None]).mean() for m in nets.aug]
        reg = 1.0 * (feats - nets.p_reg).pow(2).mean()
        if reg_inside_mean:                     # the old midre rule: the regulariser divided by N + 1
            return (sum(losses) + reg) / len(losses)
        return sum(losses) / len(losses) + reg
    return f


# ------------------------------------------------------------------------------ parity per attack
def test_gmi_parity_nesterov_momentum_on_an_unclamped_initial_z(nets):
    out = _run("gmi", nets)
    z0 = torch.randn(len(IDS), ZD, generator=_gen())
    assert z0.abs().max() > 1.0                         # the reference does not clamp the initial z
    loss = lambda z: gmi_prior(nets.D)(nets.G(z)) + 100 * F.cross_entropy(nets.T(nets.G(z)), IDS)  # noqa: E731
    ref = ref_momentum(loss, z0, STEPS)
    assert not torch.allclose(ref, z0.clamp(-1, 1), atol=1e-4)
    assert torch.allclose(out["z"], ref, atol=1e-5, rtol=1e-4)
    # the old rule (heavy-ball momentum from a clamped start) lands elsewhere
    zc = z0.clamp(-1, 1).requires_grad_(True)
    heavy = torch.optim.SGD([zc], lr=0.02, momentum=0.9)
    for _ in range(STEPS):
        heavy.zero_grad()
        loss(zc).backward()
        heavy.step()
        with torch.no_grad():
            zc.clamp_(-1, 1)
    assert not torch.allclose(out["z"], zc.detach(), atol=1e-4)


def test_kedmi_parity_distribution_from_log_var_one(nets):
    out = _run("kedmi", nets)
    loss = lambda z: kedmi_prior(nets.Dk)(nets.G(z)) + 100 * F.cross_entropy(nets.T(nets.G(z)), IDS)  # noqa: E731
    mu, lv = ref_distribution(loss, (len(IDS), ZD), STEPS, _gen())
    assert torch.allclose(out["mu"], mu, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out["log_var"], lv, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(lv, torch.ones_like(lv), atol=1e-3)
    old = _run("kedmi", nets, log_var_init=0.0)         # the old start (log_var = 0) differs
    assert not torch.allclose(old["log_var"], lv, atol=1e-3)


@pytest.mark.parametrize("refit", [False, True])
def test_kedmi_repeats_are_samples_of_one_fit_as_in_the_release(nets, refit):
    a = build_attack("kedmi", iterations=3, refit_per_repeat=refit)
    fits = []
    fit = a._fit

    def counting(*args, **kw):
        fits.append(1)
        return fit(*args, **kw)

    a._fit = counting
    rec = a.run(nets.T, [0, 1], 3, nets.priors, seed=0)
    assert len(fits) == (3 if refit else 1)
    assert len(rec.meta["loss_curve"]) == 3
    img = [rec.images[rec.repeat == r] for r in range(3)]
    assert not torch.equal(img[0], img[1]) and not torch.equal(img[1], img[2])   # a new sample per repeat


def test_lomma_gmi_parity_regulariser_added_to_the_mean_identity_loss(nets):
    out = _run("lomma_gmi", nets)
    z0 = torch.randn(len(IDS), ZD, generator=_gen())

    def loss(z, old=False):
        x = nets.G(z)
        return gmi_prior(nets.D)(x) + 100 * lomma_iden(nets, old)(x)

    ref = ref_momentum(loss, z0, STEPS)
    assert torch.allclose(out["z"], ref, atol=1e-5, rtol=1e-4)
    old = ref_momentum(lambda z: loss(z, old=True), z0, STEPS)
    assert not torch.allclose(old, ref, atol=1e-4)


def test_lomma_kedmi_parity_with_clipz(nets):
    out = _run("lomma_kedmi", nets)

    def loss(z):
        x = nets.G(z)
        return kedmi_prior(nets.Dk)(x) + 100 * lomma_iden(nets)(x)

    mu, lv = ref_distribution(loss, (len(IDS), ZD), STEPS, _gen(), clipz=True)
    assert torch.allclose(out["mu"], mu, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out["log_var"], lv, atol=1e-5, rtol=1e-4)
    noclip, _ = ref_distribution(loss, (len(IDS), ZD), STEPS, _gen(), clipz=False)
    assert not torch.allclose(noclip, mu, atol=1e-4)


def ref_max_margin(out, y):
    """PLG-MI release: mean(-logit_y) + mean(largest logit among the other classes)."""
    real = out.gather(1, y[:, None]).squeeze(1)
    top2 = torch.argsort(out, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    return -real.mean() + out.gather(1, other[:, None]).squeeze(1).mean()


def test_plgmi_parity_adam_on_z_two_augmented_views(nets):
    out = _run("plgmi", nets)
    g = _gen()
    z = torch.randn(len(IDS), ZD, generator=g)
    opt = HandAdam([z], 0.1)
    for _ in range(STEPS):
        zz = z.clone().requires_grad_(True)
        x = nets.cG(zz, IDS)
        v1 = random_views(x, g, (0.8, 1.0), 0.2, 5.0)
        v2 = random_views(x, g, (0.8, 1.0), 0.2, 5.0)
        loss = ref_max_margin(nets.T(v1), IDS) + ref_max_margin(nets.T(v2), IDS)
        z, = opt.step(torch.autograd.grad(loss, [zz]))
    assert not torch.allclose(z, torch.randn(len(IDS), ZD, generator=_gen()), atol=1e-3)
    assert torch.allclose(out["z"], z, atol=1e-5, rtol=1e-4)


def test_plgmi_views_are_square_crops_within_scale_and_rotation():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, :, :8] = 1.0                                  # left half white
    v = random_views(x, _gen(1), (0.8, 1.0), 0.0, 0.0, flip=True)
    share = v.mean(dim=(1, 2, 3))
    assert share.min() > 0.3 and share.max() < 0.7       # a crop of >= 80 % of the area, never off-image
    left = v[:, :, :, :4].mean(dim=(1, 2, 3))
    assert (left > 0.9).any() and (left < 0.1).any()     # both flips occur


# ------------------------------------------------------------------------------ BREP-MI
BREP = {"sphere_points": 16, "init_radius": 2.0, "radius_growth": 1.3, "growth_threshold": 0.75,
        "step_ratio": 1.0 / 3.0, "max_step": 3.0, "repulsion_only": True, "z_clip": 1.5}


class _LatentImage(nn.Module):
    """G for BREP-MI tests: the image IS the latent (B, 1, 1, d), so class regions are regions of z."""

    def __init__(self, d: int):
        super().__init__()
        self.z_dim = d
        self.seen: list[torch.Tensor] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return z.view(z.shape[0], 1, 1, -1)


def _ball_oracle(center: torch.Tensor, r: float):
    """Label 0 inside a ball of z-space, 1 outside (a label-only target)."""
    def oracle(x):
        z = x.flatten(1)
        return torch.where((z - center).norm(dim=1) < r, 0, 1)
    return oracle


def ref_brep(oracle, z0, y, gen, max_iters, p=BREP):
    """BREP-MI release, one identity: grow when sum(c) > 0.75 N; step min(R/3, 3) * mean(r u) / R_new;
    only the candidate clamped; rejected and growing rounds do not count; return the point accepted in
    the last growing round."""
    z, R, it, last, best = z0.clone(), p["init_radius"], 0, 0, z0.clone()
    d, N = z0.shape[0], p["sphere_points"]
    while it - last < max_iters:
        step = min(R / 3, 3)
        u = torch.randn(1, N, d, generator=gen)[0]
        u = R * u / u.norm(dim=1, keepdim=True)
        c = torch.where(oracle((z + u).view(N, 1, 1, d)) == y, 1.0, -1.0)
        grew = bool(c.sum() > 0.75 * N)
        if grew:
            R, last = R * 1.3, it
        direction = (((c - 1) / 2)[:, None] * u).mean(0) / R
        cand = (z + step * direction).clamp(-1.5, 1.5)
        if int(oracle(cand.view(1, 1, 1, d))[0]) != y:
            continue
        z = cand
        if grew:
            best = z.clone()
            continue
        it += 1
    return best, z, R


def _brep_case():
    d = 4
    center = torch.tensor([1.2, 0.0, 0.0, 0.0])          # near the clamp box: the clamp matters
    return d, center, _ball_oracle(center, 3.0)


def test_brepmi_parity_with_the_release_loop():
    d, center, oracle = _brep_case()
    G = _LatentImage(d)
    prior = {"gan": SimpleNamespace(generator=G)}
    a = build_attack("brepmi", **BREP, max_iters_at_radius=6, iterations=0, max_radius=0.0)
    y = torch.tensor([0])
    g = _gen(3)
    a.extra_meta = {}
    state = a.init_latents(oracle, y, prior, g)
    # the initial point: the first of a clamped N(0, I) batch that the target labels y
    cand = torch.randn(a.params["init_batch"], d, generator=_gen(3)).clamp(-1.5, 1.5)
    first = int((oracle(cand.view(-1, 1, 1, d)) == 0).nonzero()[0])
    assert bool(state["found"][0]) and torch.equal(state["z"][0], cand[first])
    out = a.invert(oracle, y, prior, state, g, None, lambda v: None, lambda: None)
    g_ref = _gen(3)
    torch.randn(a.params["init_batch"], d, generator=g_ref)   # the same draws as the initial search
    best, last, R = ref_brep(oracle, cand[first], 0, g_ref, 6)
    assert math.isclose(float(out["radius"][0]), R, rel_tol=1e-5) and R > BREP["init_radius"]
    assert torch.allclose(out["z_last"][0], last, atol=1e-5)
    assert torch.allclose(out["z"][0], best, atol=1e-5)
    assert not torch.allclose(best, last, atol=1e-4)      # the returned point is not the final one


def test_brepmi_grows_when_the_label_sum_exceeds_three_quarters():
    p = {**BREP}
    n, d = 32, 4
    u = torch.randn(2, n, d, generator=_gen())
    u = 2.0 * u / u.norm(dim=2, keepdim=True)
    inside = torch.ones(2, n, dtype=torch.bool)
    inside[0, :3] = False                                  # 29 in: sum 26 > 24 -> grows
    inside[1, :4] = False                                  # 28 in: sum 24, not > 24 -> stays
    st = sphere_step(torch.zeros(2, d), u, inside, torch.full((2,), 2.0), p)
    assert st.grow.tolist() == [True, False]
    assert torch.allclose(st.radius, torch.tensor([2.6, 2.0]))


def test_brepmi_step_is_capped_and_scales_with_the_share_outside():
    p = {**BREP, "z_clip": 0.0}
    n, d = 16, 3
    u0 = torch.randn(n, d, generator=_gen(5))
    u0 = u0 / u0.norm(dim=1, keepdim=True)
    for R in (2.0, 30.0):                                  # min(R / 3, 3): 2/3, then the cap 3
        u = (R * u0)[None].expand(2, n, d)
        inside = torch.ones(2, n, dtype=torch.bool)
        inside[0, :2] = False                              # 2 points outside
        inside[1, :4] = False                              # 4 points outside (the first two included)
        st = sphere_step(torch.zeros(2, d), u, inside, torch.full((2,), R), p)
        expect = min(R / 3, 3) * (-(R * u0)[:2].sum(0) / n) / R
        assert torch.allclose(st.candidate[0], expect, atol=1e-6)
        assert not st.grow.any()
        # with only the two extra points' contribution subtracted, the 4-outside step is the sum
        extra = min(R / 3, 3) * (-(R * u0)[2:4].sum(0) / n) / R
        assert torch.allclose(st.candidate[1], expect + extra, atol=1e-6)
    # every point inside: no repulsion, no move
    st = sphere_step(torch.zeros(1, d), (2.0 * u0)[None], torch.ones(1, n, dtype=torch.bool), torch.full((1,), 2.0), p)
    assert torch.equal(st.candidate, torch.zeros(1, d))


def test_brepmi_clamps_only_the_accepted_point():
    d, center, oracle = _brep_case()
    G = _LatentImage(d)
    a = build_attack("brepmi", **BREP, max_iters_at_radius=4, iterations=200)
    y, g = torch.tensor([0]), _gen(3)
    a.extra_meta = {}
    state = a.init_latents(oracle, y, {"gan": SimpleNamespace(generator=G)}, g)
    G.seen.clear()
    out = a.invert(oracle, y, {"gan": SimpleNamespace(generator=G)}, state, g, None, lambda v: None, lambda: None)
    spheres = [s for s in G.seen if s.shape[0] == BREP["sphere_points"]]
    cands = [s for s in G.seen if s.shape[0] == 1]
    assert spheres and cands
    assert max(float(s.abs().max()) for s in spheres) > 1.5        # sphere points leave the box
    assert max(float(s.abs().max()) for s in cands) <= 1.5         # candidates are clamped
    assert float(out["z_last"].abs().max()) <= 1.5


def test_brepmi_query_budget_counts_every_oracle_call_including_the_initial_search(monkeypatch):
    from midre.attacks.base import QueryOracle

    d, center, oracle = _brep_case()

    class Target(nn.Module):
        num_classes = 2

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            inside = (x.flatten(1) - center).norm(dim=1) < 3.0
            return torch.stack([inside.float(), (~inside).float()], 1) + 0 * self.w

    sizes: list[int] = []
    orig = QueryOracle.__call__

    def spy(self, x):
        sizes.append(int(x.shape[0]))
        return orig(self, x)

    monkeypatch.setattr(QueryOracle, "__call__", spy)
    G = _LatentImage(d)
    # the oracle clamps images to [0, 1], where this target labels everything 0: only the guards stop it
    a = build_attack("brepmi", **BREP, max_iters_at_radius=3, init_batch=8, iterations=25)
    rec = a.run(Target(), [0], 1, {"gan": Prior("gan", G)}, seed=0)
    m = rec.meta
    assert m["queries"] == sum(sizes) > 0
    assert m["queries_initial_search"] >= 8 and m["queries_initial_search"] % 8 == 0
    assert m["queries_initial_search"] + m["queries_repulsion"] == m["queries"]
    rounds = m["rounds"][0]
    assert m["queries_repulsion"] == rounds * (BREP["sphere_points"] + 1) and rounds == 25
    # a budget smaller than the run refuses instead of silently stopping
    from midre.attacks import AccessError

    with pytest.raises(AccessError, match="query budget"):
        build_attack("brepmi", **BREP, max_iters_at_radius=3, init_batch=8, iterations=25, max_queries=20).run(
            Target(), [0], 1, {"gan": Prior("gan", G)}, seed=0)


def test_brepmi_guards_stop_a_target_that_labels_everything_y():
    d = 4
    G = _LatentImage(d)
    a = build_attack("brepmi", **BREP, max_iters_at_radius=5, iterations=0, max_radius=100.0)
    y, g = torch.tensor([0]), _gen(2)
    a.extra_meta = {}
    everything = lambda x: torch.zeros(x.shape[0], dtype=torch.long)  # noqa: E731
    state = a.init_latents(everything, y, {"gan": SimpleNamespace(generator=G)}, g)
    out = a.invert(everything, y, {"gan": SimpleNamespace(generator=G)}, state, g, None, lambda v: None, lambda: None)
    assert 100.0 <= float(out["radius"][0]) < 130.0 and torch.isfinite(out["z"]).all()


# ------------------------------------------------------------------------------ KedMI's GAN losses
def test_kedmi_gan_losses_follow_the_release(nets):
    from midre.priors import _kedmi_discriminator_loss, _kedmi_generator_loss

    g = _gen(4)
    real, unl, fake = (torch.rand(6, 3, RES, RES, generator=g) for _ in range(3))
    soft = torch.softmax(torch.randn(6, K, generator=g), 1)
    Dk = nets.Dk

    def k_logits(x):                       # the release's K logits (fake class implicit)
        out = Dk(x)
        return out[:, :K] - out[:, K:]

    def lse(x):
        return torch.logsumexp(k_logits(x), 1)

    lab = -(soft * F.log_softmax(k_logits(real), 1)).sum() / 6
    unlab = 0.5 * (F.softplus(lse(unl)).mean() - lse(unl).mean() + F.softplus(lse(fake)).mean())
    assert torch.allclose(_kedmi_discriminator_loss(Dk, real, soft, unl, fake), lab + unlab, atol=1e-6)
    mom = (Dk.features(fake).mean(0) - Dk.features(real).mean(0)).abs().mean()
    p = F.softmax(k_logits(fake), 1)
    h = -(p * F.log_softmax(k_logits(fake), 1)).sum()
    assert torch.allclose(_kedmi_generator_loss(Dk, fake, real), mom + 1e-4 * h, atol=1e-6)
