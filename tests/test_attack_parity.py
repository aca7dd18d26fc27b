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
        v1 = random_views(x, g, (0.8, 1.0), 0.2, 5.0, rotation_p=0.5)     # kornia's RandomRotation: p 0.5
        v2 = random_views(x, g, (0.8, 1.0), 0.2, 5.0, rotation_p=0.5)
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


def test_plgmi_views_rotate_and_jitter_with_their_probabilities():
    """The release's kornia pipeline rotates with p 0.5 (RandomRotation's default) and its cGAN training jitters
    with p 0.5; a view left alone by every transform is the input itself.  p = 1 keeps the old stream of draws."""
    x = torch.rand(400, 3, 16, 16, generator=_gen(2))
    same = lambda v: (v - x).abs().flatten(1).amax(1) < 1e-5      # noqa: E731
    rot = random_views(x, _gen(3), (1.0, 1.0), 0.0, 45.0, flip=False, rotation_p=0.5)
    jit = random_views(x, _gen(3), (1.0, 1.0), 0.5, 0.0, flip=False, jitter_p=0.5)
    for v in (rot, jit):
        assert 0.4 < same(v).float().mean() < 0.6
    assert not same(random_views(x, _gen(3), (1.0, 1.0), 0.0, 45.0, flip=False)).any()
    g, ref = _gen(4), _gen(4)
    random_views(x, g, rotation_p=1.0, jitter_p=1.0)
    for _ in range(7):          # scale, angle, 2 offsets, flip, brightness, contrast: the stream without coins
        torch.rand(len(x), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


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
    from midre.priors.kedmi import kedmi_discriminator_loss, kedmi_generator_loss

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
    assert torch.allclose(kedmi_discriminator_loss(Dk, real, soft, unl, fake), lab + unlab, atol=1e-6)
    mom = (Dk.features(fake).mean(0) - Dk.features(real).mean(0)).abs().mean()
    p = F.softmax(k_logits(fake), 1)
    h = -(p * F.log_softmax(k_logits(fake), 1)).sum()
    assert torch.allclose(kedmi_generator_loss(Dk, fake, real), mom + 1e-4 * h, atol=1e-6)


# ============================================================================== high-resolution / black-box
# PPA, IF-GMI, MIRROR and RLB-MI (issue 26).  The reference rules below are written from the releases'
# update rules (LukasStruppek/Plug-and-Play-Attacks, final-solution/IF-GMI, njuaplusplus/mirror,
# HanGyojin/RLB-MI) on a tiny random StyleGAN2 (16 px, 6 ws) and a tinycnn target; the generator's
# blocks and midre's seeding plumbing (ChunkContext, the draw order of random_resized_crop: one
# rand(n, 5) per call, u[:, 4] < 0.5 flips) are shared, every rule under test is re-derived here.
HR = 16


@pytest.fixture(scope="module")
def hr():
    from midre.models.stylegan2 import tiny_generator

    torch.set_num_threads(1)
    G = _frozen(tiny_generator(HR, seed=0, channels=8))
    with torch.no_grad():                       # a non-zero w_avg, as trained weights have
        G.mapping.w_avg.copy_(G.mapping(torch.randn(64, G.z_dim, generator=_gen(0)),
                                        skip_w_avg_update=True)[:, 0].mean(0) + 0.3)
    torch.manual_seed(1)
    T = _frozen(create_model("tinycnn", num_classes=K, resolution=HR))
    return SimpleNamespace(G=G, T=T, priors={"stylegan2": Prior("stylegan2", generator=G, meta={"resolution": HR})})


def ref_poincare(logits, y, xi=1e-4):
    """PPA's loss: arccosh(1 + 2|u - v|^2 / ((1 - |u|^2)(1 - |v|^2))), u = logits / |logits|_1, v = onehot - xi."""
    u = logits / logits.abs().sum(1, keepdim=True)
    v = (torch.eye(logits.shape[1])[y] - xi).clamp(0, 1)
    d = 2 * (u - v).pow(2).sum(1) / ((1 - u.pow(2).sum(1)) * (1 - v.pow(2).sum(1)))
    return torch.acosh(1 + d)


def ref_img(G, ws):
    """Synthesis of full ws, constant noise, mapped to [0, 1] scale, NOT clamped (16 px = the target's input)."""
    return (G.synthesis(ws, noise_mode="const") + 1) / 2


def ref_flip_score(T, imgs, y, views, g):
    """PPA's final-selection score with the crop covering the whole image: mean p_y over views, each image
    flipped with probability 0.5."""
    score = torch.zeros(len(imgs))
    for _ in range(views):
        u = torch.rand(len(imgs), 5, generator=g)
        v = torch.where((u[:, 4] < 0.5)[:, None, None, None], imgs.flip(-1), imgs)
        score += T(v).softmax(1)[torch.arange(len(imgs)), y]
    return score


def ref_l1_ball(v, r):
    """Euclidean projection of each row onto the L1 ball of radius r (sort-based, Duchi et al.)."""
    flat = v.flatten(1)
    out = []
    for row in flat:
        if row.abs().sum() <= r:
            out.append(row)
            continue
        mu = row.abs().sort(descending=True).values
        css = mu.cumsum(0)
        j = torch.arange(1, len(mu) + 1, dtype=row.dtype)
        rho = int(torch.nonzero(mu - (css - r) / j > 0).max())
        theta = (css[rho] - r) / (rho + 1)
        out.append(row.sign() * (row.abs() - theta).clamp_min(0))
    return torch.stack(out).view_as(v)


def test_highres_paper_presets_are_the_reference_configs():
    """PPA: FaceScrub as used against MIDRE (protocols.md: MultiStepLR [30, 40]), the release's CelebA and
    Stanford Dogs configs; IF-GMI: the release's three configs."""
    from midre.attacks.highres import paper_preset

    P = {n: build_attack("ppa", preset=n).params for n in ("paper", "paper-facescrub", "paper-celeba", "paper-dogs")}
    assert P["paper"] == P["paper-facescrub"]
    pick = ("pool", "iterations", "lr", "milestone_1", "milestone_2", "crop_scale_min", "center_crop")
    assert [P["paper-facescrub"][k] for k in pick] == [2000, 50, 0.005, 30, 40, 0.9, 800 / 1024]
    assert [P["paper-celeba"][k] for k in pick] == [5000, 70, 0.005, 0, 0, 0.9, 800 / 1024]
    assert [P["paper-dogs"][k] for k in pick] == [2000, 100, 0.01, 0, 0, 0.75, 1.0]
    for p in P.values():
        assert (p["psi"], p["cutoff"], p["single_w"], p["beta1"], p["beta2"], p["final_views"]) == \
            (0.5, 8, True, 0.1, 0.1, 100)
    radii = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0]
    I = {n: build_attack("ifgmi", preset=n).params for n in ("paper", "paper-facescrub", "paper-celeba", "paper-dogs")}
    assert I["paper"] == I["paper-facescrub"]
    assert (I["paper"]["stages"], I["paper"]["lr"], I["paper"]["pool"]) == ([50] + [10] * 7, 0.005, 2000)
    assert (I["paper-celeba"]["stages"], I["paper-celeba"]["lr"], I["paper-celeba"]["pool"]) == \
        ([70, 25, 25, 25, 25], 0.005, 5000)
    assert (I["paper-dogs"]["stages"], I["paper-dogs"]["lr"], I["paper-dogs"]["crop_scale_min"],
            I["paper-dogs"]["center_crop"]) == ([100] + [10] * 6, 0.01, 0.75, 1.0)
    for p in I.values():
        n = len(p["stages"])
        assert p["radii_w"] == radii[:n] and p["radii_features"] == radii[:n]
        assert (p["milestone_1"], p["milestone_2"]) == (0, 0)
    assert [paper_preset(d) for d in ("facescrub", "celeba", "stanford_dogs")] == \
        ["paper-facescrub", "paper-celeba", "paper-dogs"]


def test_ppa_search_scores_the_full_ws_and_keeps_a_joint_top_k(hr):
    a = build_attack("ppa", pool=40, cutoff=2, center_crop=1.0, gen_batch=16)
    a.init_latents(hr.T, IDS, hr.priors, _gen())
    k = 5
    w, y, conf = a.search(hr.T, IDS, _gen(3), k)
    with torch.no_grad():
        z = torch.randn(40, hr.G.z_dim, generator=_gen(3))
        ws = hr.G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)      # layers >= 2 untruncated

        def probs(v):
            x = ref_img(hr.G, v)
            return (hr.T(x).softmax(1) + hr.T(x.flip(-1)).softmax(1)) / 2

        def top(p):
            return torch.stack([p[:, c].argsort(descending=True)[:k] for c in IDS])

        want = top(probs(ws))
        old = top(probs(ws[:, :1].expand(-1, hr.G.num_ws, -1)))        # the old rule: one w copied to all layers
    assert torch.equal(y, IDS.repeat_interleave(k))
    assert torch.allclose(w, ws[want.flatten(), :1], atol=1e-6)
    assert torch.allclose(conf, probs(ws)[want, IDS[:, None]], atol=1e-6)
    assert not torch.equal(old, want), "the test must tell full-ws scoring from copied-w scoring"


def test_ppa_optimisation_is_adam_on_w_with_the_poincare_loss_and_multistep_lr(hr):
    a = build_attack("ppa", iterations=6, milestone_1=2, milestone_2=4, crop_scale_min=1.0, center_crop=1.0,
                     lr=0.05, opt_batch=4, cutoff=2)
    a.init_latents(hr.T, IDS, hr.priors, _gen())
    with torch.no_grad():
        w0 = hr.G.mapping(torch.randn(6, hr.G.z_dim, generator=_gen(1)), None, truncation_psi=0.5,
                          truncation_cutoff=2)[:, :1]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    got = a.optimise(hr.T, w0, y, _gen(2), None, lambda: None)["w"]
    # the release: Adam betas (0.1, 0.1) on the mean Poincaré loss of the batch, lr x 0.1 at steps 2 and 4
    opt, w = HandAdam([w0.clone()], 0.05, 0.1, 0.1), w0.clone()
    for t in range(6):
        opt.lr = 0.05 * 0.1 ** ((t >= 2) + (t >= 4))
        ww = w.clone().requires_grad_(True)
        loss = ref_poincare(hr.T(ref_img(hr.G, ww.expand(-1, hr.G.num_ws, -1))), y).mean()
        g, = torch.autograd.grad(loss, ww)
        w, = opt.step([g])
    assert (w - w0).abs().max() > 1e-3
    assert torch.allclose(got, w, atol=1e-5), float((got - w).abs().max())


def test_ppa_final_selection_ranks_unclamped_images_jointly(hr):
    a = build_attack("ppa", final_views=5, final_scale_min=1.0, final_scale_max=1.0, final_ratio_min=1.0,
                     final_ratio_max=1.0, gen_batch=7)
    imgs = torch.rand(12, 3, HR, HR, generator=_gen(4)) * 3 - 1           # far outside [0, 1]
    y = torch.tensor([0, 3]).repeat_interleave(6)
    got = a.rank(hr.T, imgs, y, 2, 3, _gen(5))
    with torch.no_grad():
        want = ref_flip_score(hr.T, imgs, y, 5, _gen(5)).view(2, 6).argsort(1, descending=True)[:, :3]
        clamped = ref_flip_score(hr.T, imgs.clamp(0, 1), y, 5, _gen(5)).view(2, 6).argsort(1, descending=True)[:, :3]
    assert torch.equal(got, want)
    assert not torch.equal(clamped, want), "the test must tell unclamped from clamped scoring"


def test_ppa_repeats_share_one_pool_and_split_its_joint_top_k(hr):
    """3 repeats x 2 candidates: ONE pool, the top 6 per identity, the 3 best after final selection; repeat r
    gets the r-th (the release's num_candidates / samples_per_target)."""
    from midre.attacks import ChunkContext

    R, C, views = 3, 2, 4
    a = build_attack("ppa", pool=30, candidates=C, iterations=2, lr=0.0, milestone_1=0, milestone_2=0,
                     crop_scale_min=1.0, center_crop=1.0, cutoff=2, final_views=views, final_scale_min=1.0,
                     final_scale_max=1.0, final_ratio_min=1.0, final_ratio_max=1.0, opt_batch=64, gen_batch=64)
    ids = torch.tensor([0, 3])
    rec = a.run(hr.T, ids.tolist(), R, hr.priors, seed=11)
    g = ChunkContext(11, 0, R, 0).generator("ppa", "shared")
    with torch.no_grad():
        ws = hr.G.mapping(torch.randn(30, hr.G.z_dim, generator=g), None, truncation_psi=0.5, truncation_cutoff=2)
        x = ref_img(hr.G, ws)
        p = (hr.T(x).softmax(1) + hr.T(x.flip(-1)).softmax(1)) / 2
        cand = torch.stack([ws[p[:, c].argsort(descending=True)[:C * R], :1] for c in ids])   # (2, 6, 1, d)
        for _ in range(2):                                   # lr 0: w stays; the identity crops draw
            torch.rand(2 * C * R, 5, generator=g)
        imgs = ref_img(hr.G, cand.flatten(0, 1).expand(-1, hr.G.num_ws, -1))
        score = ref_flip_score(hr.T, imgs, ids.repeat_interleave(C * R), views, g).view(2, C * R)
        best = score.argsort(1, descending=True)[:, :R]                                     # (2, R)
    want = torch.stack([cand[i, best[i, r]] for r in range(R) for i in range(2)])
    assert torch.equal(rec.repeat, torch.arange(R).repeat_interleave(2))
    assert torch.allclose(rec.latents, want, atol=1e-6)


def test_ifgmi_drops_the_skip_image_and_keeps_each_stages_last_forward_pass(hr, monkeypatch):
    from midre.attacks import ifgmi

    stages, rw, rf, lr = [3, 2, 2], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0], 0.05
    a = build_attack("ifgmi", stages=stages, radii_w=rw, radii_features=rf, lr=lr, crop_scale_min=1.0,
                     center_crop=1.0, opt_batch=8, cutoff=2)
    a.init_latents(hr.T, IDS, hr.priors, _gen())
    calls = []

    def scripted(self, access, x, y):           # later stages score higher: the last stage is kept
        calls.append(1)
        return torch.full((len(x),), float(len(calls)))

    monkeypatch.setattr(ifgmi.IFGMI, "_confidence", scripted)
    with torch.no_grad():
        w0 = hr.G.mapping(torch.randn(4, hr.G.z_dim, generator=_gen(1)), None, truncation_psi=0.5,
                          truncation_cutoff=2)[:, :1]
    y = torch.tensor([0, 1, 2, 3])
    got = a.optimise(hr.T, w0, y, _gen(2), None, lambda: None)
    G, L = hr.G, hr.G.num_ws

    def ref(carry_skip=False, after_step=False, mean=True):
        w, f, img = w0.clone(), None, None
        for i, n in enumerate(stages):
            state0 = [w.clone()] + ([f.clone()] if i else [])
            opt, cur = HandAdam([v.clone() for v in state0], lr, 0.1, 0.1), [v.clone() for v in state0]
            for _ in range(n):
                var = [v.clone().requires_grad_(True) for v in cur]
                feats = None if i == 0 else (var[1], img if carry_skip else None)
                x = (G.synthesis(var[0].expand(-1, L, -1), features=feats, start_block=i, noise_mode="const") + 1) / 2
                last = x.detach()
                loss = ref_poincare(hr.T(x), y)
                grads = torch.autograd.grad(loss.mean() if mean else loss.sum(), var)
                cur = opt.step(list(grads))
                cur[0] = state0[0] + ref_l1_ball(cur[0] - state0[0], rw[i])
                if i:
                    cur[1] = state0[1] + ref_l1_ball(cur[1] - state0[1], rf[i])
                opt.p = [v.clone() for v in cur]
            w = cur[0]
            f = cur[1] if i else None
            with torch.no_grad():
                if after_step:
                    feats = None if i == 0 else (f, img if carry_skip else None)
                    last = (G.synthesis(w.expand(-1, L, -1), features=feats, start_block=i) + 1) / 2
                if i + 1 < len(stages):
                    f, img = G.synthesis(w.expand(-1, L, -1), features=None if i == 0 else (f, img if carry_skip
                                         else None), start_block=i, end_block=i + 1, return_features=True)
        return w, last

    assert torch.equal(got["stage"], torch.full((4,), 2))
    # midre sums the loss over candidates (a documented deviation): with the sum the rule matches to float
    # precision; with the release's batch mean only Adam's eps tells them apart (~1e-5 on this tiny case)
    w_sum, img_sum = ref(mean=False)
    assert torch.allclose(got["w"], w_sum, atol=1e-6) and torch.allclose(got["images"], img_sum, atol=1e-6)
    w_ref, img_ref = ref()
    assert torch.allclose(got["w"], w_ref, atol=1e-4) and torch.allclose(got["images"], img_ref, atol=2e-4)
    for old in (ref(carry_skip=True)[1], ref(after_step=True)[1]):      # the two old rules give other images
        assert (old - img_ref).abs().max() > 1e-3
    # carry_skip: true (not the published rule, an option) hands the frozen skip image on
    b = build_attack("ifgmi", stages=stages, radii_w=rw, radii_features=rf, lr=lr, crop_scale_min=1.0,
                     center_crop=1.0, opt_batch=8, cutoff=2, carry_skip=True)
    b.init_latents(hr.T, IDS, hr.priors, _gen())
    got_skip = b.optimise(hr.T, w0, y, _gen(2), None, lambda: None)
    assert torch.allclose(got_skip["images"], ref(carry_skip=True, mean=False)[1], atol=1e-6)


def ref_mirror_images(G, w, psi=0.7, cutoff=8):
    """MIRROR's generator call: raw w repeated over the layers, truncated towards w_avg on layers < cutoff."""
    ws = w[:, None].repeat(1, G.num_ws, 1)
    ws[:, :cutoff] = G.mapping.w_avg + psi * (ws[:, :cutoff] - G.mapping.w_avg)
    return ref_img(G, ws).clamp(0, 1)


def ref_mirror_logp(G, T, w, y, cutoff):
    with torch.no_grad():
        return T(ref_mirror_images(G, w, cutoff=cutoff)).softmax(1)[:, y].clamp_min(1e-38).log()


def ref_mirror_children(pop, fit, gen, lo, hi, std, mp=0.1, mc=0.1):
    """One generation's N - 1 children: parents ~ softmax(fitness), uniform crossover weighted p1 / (p1 + p2)
    (midre's documented choice), mutation of each coordinate with probability mp by mc U(-std, std) in
    p = lrelu^-1(w) space, clipped to the bounds."""
    n, d = pop.shape
    par = torch.multinomial(fit.softmax(0), 2 * (n - 1), replacement=True, generator=gen)
    e1, e2 = fit[par[:n - 1]].exp(), fit[par[n - 1:]].exp()
    take1 = torch.rand(n - 1, d, generator=gen) < (e1 / (e1 + e2))[:, None]
    child = torch.where(take1, pop[par[:n - 1]], pop[par[n - 1:]])
    mut = torch.rand(n - 1, d, generator=gen) < mp
    noise = mc * (2 * torch.rand(n - 1, d, generator=gen) - 1) * std
    child = F.leaky_relu(F.leaky_relu(child, 5.0) + mut * noise, 0.2)
    return torch.max(torch.min(child, hi), lo)


def test_mirror_searches_raw_w_truncates_only_to_generate_and_bounds_the_raw_pool(hr):
    from midre.attacks import QueryOracle

    a = build_attack("mirror", pool=40, population=6, cutoff=2, gen_batch=16)
    a.extra_meta = {}
    oracle = QueryOracle(hr.T)
    st = a.init_latents(oracle, IDS, hr.priors, _gen(8))
    with torch.no_grad():
        w = hr.G.mapping(torch.randn(40, hr.G.z_dim, generator=_gen(8)), None)[:, 0]        # raw w
        logp = ref_mirror_logp(hr.G, hr.T, w, IDS, 2)
        p = F.leaky_relu(w, 5.0)
        mean, std = p.mean(0, keepdim=True), p.std(0, unbiased=False, keepdim=True)
        lo, hi = F.leaky_relu(mean - std, 0.2), F.leaky_relu(mean + std, 0.2)
        top = logp.T.topk(6, dim=1).indices
        # the old rule pre-truncated the pool (psi 0.5 on every layer): its bounds are narrower
        wt = hr.G.mapping(torch.randn(40, hr.G.z_dim, generator=_gen(8)), None, truncation_psi=0.5)[:, 0]
        pt = F.leaky_relu(wt, 5.0)
    assert oracle.queries == 40
    assert torch.allclose(st["pop"], w[top], atol=1e-6)
    assert torch.allclose(st["fit"], logp.T.gather(1, top), atol=1e-5)
    assert torch.allclose(st["lo"], lo, atol=1e-6) and torch.allclose(st["hi"], hi, atol=1e-6)
    assert float(pt.std(0, unbiased=False).mean()) < 0.75 * float(std.mean())


def test_mirror_generation_requeries_the_whole_population_elite_included(hr):
    from midre.attacks import QueryOracle

    N, gens, y = 6, 3, torch.tensor([2])
    a = build_attack("mirror", pool=40, population=N, generations=gens, cutoff=2, gen_batch=16, min_score=0.999999)
    oracle, g = QueryOracle(hr.T), _gen(9)
    a.extra_meta = {}
    st = a.init_latents(oracle, y, hr.priors, g)
    q0 = oracle.queries
    out = a.invert(oracle, y, hr.priors, st, g, None, lambda v: None, lambda: None)
    g2 = _gen(9)
    torch.randn(40, hr.G.z_dim, generator=g2)                  # the pool's draw
    pop, fit = st["pop"][0].clone(), st["fit"][0].clone()
    for _ in range(gens):
        order = fit.argsort(descending=True)
        pop, fit = pop[order], fit[order]
        kids = ref_mirror_children(pop, fit, g2, st["lo"][0], st["hi"][0], st["p_std"][0])
        pop = torch.cat([pop[:1], kids])
        fit = ref_mirror_logp(hr.G, hr.T, pop, y, 2)[:, 0]      # all N queried: the elite's score is re-drawn
    assert oracle.queries - q0 == gens * N                    # the old rule: gens * (N - 1)
    assert torch.allclose(out["w"][0], pop[fit.argmax()], atol=1e-6)
    assert torch.allclose(out["fit"][0], fit.max(), atol=1e-5)


def test_mirror_elite_is_rescored_against_a_target_that_samples():
    """Against a stochastic target the elite's kept score is the latest query, not the luckiest one."""
    a = build_attack("mirror", pool=8, population=3, generations=1)
    a.extra_meta = {}

    class Resampled:        # the pool's 0.9 was a lucky draw: every later query of any image says 0.5 / K
        queries = 0

        def __call__(self, x):
            self.queries += len(x)
            return torch.full((len(x), K), 0.5 / K)

    a.sg = SimpleNamespace(images=lambda ws: torch.zeros(len(ws), 3, 4, 4), truncate=lambda w, p, c: w[:, None])
    a.res = 4
    st = {"pop": torch.zeros(1, 3, 2), "fit": torch.full((1, 3), math.log(0.9)), "p_std": torch.ones(1, 2),
          "lo": -torch.ones(1, 2), "hi": torch.ones(1, 2)}
    out = a.invert(Resampled(), torch.tensor([0]), {}, st, _gen(), None, lambda v: None, lambda: None)
    assert torch.allclose(out["fit"], torch.tensor([math.log(0.5 / K)]))     # 0.9 is not kept for good


# ------------------------------------------------------------------------------ RLB-MI
def test_rlbmi_reward_is_the_releases():
    from midre.attacks.rlbmi import rlbmi_reward

    g = _gen(3)
    ps, pa = torch.rand(5, K, generator=g).softmax(1), torch.rand(5, K, generator=g).softmax(1)
    y = torch.tensor([0, 1, 2, 3, 1])
    want = []
    for i in range(5):
        others = [float(ps[i, c]) for c in range(K) if c != int(y[i])]
        want.append(2 * math.log(ps[i, y[i]]) + 2 * math.log(pa[i, y[i]]) +
                    8 * math.log(max(1e-7, float(ps[i, y[i]]) - max(others))))
    assert torch.allclose(rlbmi_reward(ps, pa, y), torch.tensor(want), atol=1e-4)


def _agent(kind: str, dim=5, hidden=16, batch=4):
    from midre.attacks.rlbmi import RLBMI, SACAgent

    p = {**RLBMI.defaults, "hidden": hidden, "sac_batch": batch, "agent": kind}
    return SACAgent(dim, p, _gen(1), torch.device("cpu"), 64), p


def test_rlbmi_released_agent_one_noise_scalar_one_critic_and_its_initialisation():
    import torch.nn as nn

    ag, _ = _agent("faithful")
    assert all(torch.equal(a, b) for a, b in zip(ag.q1.state_dict().values(), ag.q2.state_dict().values()))
    lin = [m for m in ag.q1.net if isinstance(m, nn.Linear)]
    assert float(lin[-1].weight.detach().abs().max()) <= 3e-3
    assert all(float(m.weight.detach().abs().max()) <= 1 / math.sqrt(m.weight.shape[0]) for m in lin[:-1])
    s = torch.randn(7, 5, generator=_gen(2))
    with torch.no_grad():
        a, _ = ag.policy(s)
        mu, ls = ag.actor(s).chunk(2, 1)
        eps = (torch.atanh(a) - mu) / ls.clamp(-20, 2).exp()
    assert torch.allclose(eps, eps[0, 0].expand_as(eps), atol=1e-4)         # one scalar for the whole call
    tb, _ = _agent("textbook")
    with torch.no_grad():
        a, _ = tb.policy(s)
        mu, ls = tb.actor(s).chunk(2, 1)
        eps = (torch.atanh(a) - mu) / ls.clamp(-20, 2).exp()
    assert float(eps.std()) > 0.1
    assert not torch.equal(tb.q1.net[-1].weight, tb.q2.net[-1].weight)


def test_rlbmi_released_sac_update(monkeypatch):
    """Two learning steps of the released agent against the release's update written out: critic target
    r + gamma (1 - done) (min(Q1', Q2')(s', a') - alpha_prev log pi(a'|s')) with alpha_prev the temperature
    before the previous update (1 at first), 0.5 MSE for each critic, temperature loss
    -log_alpha (log pi + target entropy), actor loss alpha log pi - Q1, soft target updates (tau)."""
    import copy

    ag, p = _agent("faithful")
    g = _gen(5)
    for _ in range(10):
        ag.store(torch.randn(5, generator=g), torch.rand(5, generator=g) * 2 - 1, torch.randn(1, generator=g),
                 torch.randn(5, generator=g), torch.ones(1))
    nets = {k: copy.deepcopy(getattr(ag, k)) for k in ("actor", "q1", "q2", "q1_t", "q2_t")}
    log_alpha = ag.log_alpha.detach().clone().requires_grad_(True)
    opts = {k: torch.optim.Adam(nets[k].parameters(), lr=5e-4) for k in ("actor", "q1", "q2")}
    opt_a = torch.optim.Adam([log_alpha], lr=5e-4)
    gr = torch.Generator()
    gr.set_state(ag.gen.get_state())
    ag.learn()
    ag.learn()

    def pi(s):
        mu, ls = nets["actor"](s).chunk(2, 1)
        std = ls.clamp(-20, 2).exp()
        e = torch.randn((), generator=gr)                        # ONE scalar per call
        a = torch.tanh(mu + e * std)
        lp = torch.distributions.Normal(mu, std).log_prob(mu + e * std) - torch.log(1 - a.pow(2) + 1e-6)
        return a, lp.sum(1, keepdim=True)                        # summed: midre's documented deviation

    alpha_prev = 1.0
    for _ in range(2):
        idx = torch.randint(ag.size, (4,), generator=gr)          # with replacement: documented deviation
        s, a, r, s2, d = (ag.buf[k][idx] for k in ("s", "a", "r", "s2", "done"))
        with torch.no_grad():
            a2, lp2 = pi(s2)
            q = torch.min(nets["q1_t"](torch.cat([s2, a2], 1)), nets["q2_t"](torch.cat([s2, a2], 1)))
            target = r + 0.99 * (1 - d) * (q - alpha_prev * lp2)
        for k in ("q1", "q2"):
            opts[k].zero_grad()
            (0.5 * F.mse_loss(nets[k](torch.cat([s, a], 1)), target)).backward()
            opts[k].step()
        a_new, lp = pi(s)
        alpha = log_alpha.exp().detach()
        opt_a.zero_grad()
        (-(log_alpha * (lp - 5).detach()).mean()).backward()
        opt_a.step()
        alpha_prev = alpha
        opts["actor"].zero_grad()
        (alpha * lp - nets["q1"](torch.cat([s, a_new], 1))).mean().backward()
        opts["actor"].step()
        with torch.no_grad():
            for k in ("q1", "q2"):
                for pt, pn in zip(nets[k + "_t"].parameters(), nets[k].parameters()):
                    pt.copy_(0.01 * pn + 0.99 * pt)
    for k, net in nets.items():
        for x, y in zip(getattr(ag, k).parameters(), net.parameters()):
            assert torch.allclose(x, y, atol=1e-6), k
    assert torch.allclose(ag.log_alpha, log_alpha, atol=1e-7)
    assert all(torch.equal(x, y) for x, y in zip(ag.q1.parameters(), ag.q2.parameters()))   # one Q in effect


# ------------------------------------------------------------------------------ VMI (Wang et al. 2021)
class HandSGDMomentum:
    """SGD with momentum as PyTorch (and the VMI release through it) defines it: the buffer starts as the first
    gradient, then v <- mu v + g; p <- p - lr v."""

    def __init__(self, params, lr, mu=0.9):
        self.p, self.lr, self.mu, self.v = params, lr, mu, None

    def step(self, grads):
        self.v = list(grads) if self.v is None else [self.mu * v + g for v, g in zip(self.v, grads)]
        self.p = [(q - self.lr * v).detach() for q, v in zip(self.p, self.v)]
        return self.p


def ref_vmi(T, G, ids, steps, gen, samples, kl_samples, lr=1e-4, lam=1e-3):
    """The release's 'minegan' q: z = m + eps L^T (float64, m = 0, L = I); loss = CE(T(clamp(G(z))), y)
    + lam * (-1/2 logdet(L L^T) + 1/2 mean ||z_kl||^2), one q per identity, SGD momentum 0.9."""
    B, d = len(ids), G.z_dim
    m = torch.zeros(B, d, dtype=torch.float64)
    L = torch.eye(d, dtype=torch.float64).repeat(B, 1, 1)
    opt = HandSGDMomentum([m, L], lr)
    for _ in range(steps):
        eps = torch.randn(B, samples, d, generator=gen, dtype=torch.float64)
        eps_kl = torch.randn(B, kl_samples, d, generator=gen, dtype=torch.float64)
        m_, L_ = m.clone().requires_grad_(True), L.clone().requires_grad_(True)
        total = 0.0
        for b in range(B):                                  # one identity at a time, as the release
            z = m_[b] + eps[b] @ L_[b].T
            lsm = F.log_softmax(T(G(z.float()).clamp(0, 1)), 1)
            ce = -lsm[:, int(ids[b])].mean()
            zk = m_[b] + eps_kl[b] @ L_[b].T
            kl = -0.5 * torch.logdet(L_[b] @ L_[b].T) + 0.5 * zk.pow(2).sum(1).mean()
            total = total + ce + lam * kl
        m, L = opt.step(torch.autograd.grad(total, [m_, L_]))
    return m, L


def test_vmi_parity_gaussian_elbo_with_sgd_momentum(nets):
    S, KS = 5, 11
    lr = 0.05                       # larger than the release's 1e-4 so that 5 steps move q measurably
    out = _run("vmi", nets, refit_per_repeat=True, samples=S, kl_samples=KS, lr=lr)
    m, L = ref_vmi(nets.T, nets.G, IDS, STEPS, _gen(), S, KS, lr=lr)
    assert out["m"].dtype == torch.float64
    assert torch.allclose(out["m"], m, atol=1e-9) and torch.allclose(out["L"], L, atol=1e-9)
    assert out["m"].abs().max() > 1e-4 and (out["L"] - torch.eye(ZD)).abs().max() > 1e-4     # q moved
    m0, _ = ref_vmi(nets.T, nets.G, IDS, STEPS, _gen(), S, KS, lr=lr, lam=0.0)                 # KL matters
    assert not torch.allclose(m0, m, atol=1e-9)


def test_vmi_kl_estimate_is_the_gaussian_kl_up_to_its_constant():
    """-1/2 logdet C + 1/2 E||z||^2 = KL(N(m, C) || N(0, I)) + d/2 (closed form 1/2 (tr C + |m|^2 - d - logdet C))."""
    from midre.attacks.vmi import gaussian_q_kl

    g = _gen(3)
    d = 4
    m = torch.randn(2, d, generator=g, dtype=torch.float64)
    L = torch.randn(2, d, d, generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)
    C = L @ L.transpose(1, 2)
    exact = 0.5 * (C.diagonal(dim1=1, dim2=2).sum(1) + m.pow(2).sum(1) - d - torch.logdet(C))
    est = gaussian_q_kl(m, L, torch.randn(2, 200000, d, generator=g, dtype=torch.float64))
    assert torch.allclose(est, exact + d / 2, atol=0.02)


def test_vmi_repeats_are_samples_of_one_fit_as_in_the_release(nets):
    a = build_attack("vmi", iterations=2, samples=3, kl_samples=4)
    rec = a.run(nets.T, [0, 3], 3, nets.priors, seed=0)
    z = rec.latents.view(3, 2, ZD)                       # repeat-major
    assert not torch.allclose(z[0], z[1]) and not torch.allclose(z[1], z[2])    # distinct samples
    assert rec.meta["loss_curve"] and len(rec.meta["loss_curve"]) == 2


# ------------------------------------------------------------------------------ LOKT (Nguyen et al. 2023)
def test_lokt_tacgan_losses_follow_the_release():
    """D: BCE(sigmoid(D(real)), 1) + BCE(sigmoid(D(fake)), 0) + alpha CE(D_cls(fake), y_hat); G: BCE(sigmoid(D(fake)), 1)
    + alpha CE(D_cls(fake), y); the class terms only once they are switched on."""
    from midre.models.tacgan import ACGANDiscriminator
    from midre.priors.tacgan import tacgan_discriminator_loss, tacgan_generator_loss

    torch.manual_seed(0)
    D = ACGANDiscriminator(K, RES, 3, 4).eval()     # eval: spectral norm's power iteration stands still
    real, fake = torch.rand(6, 3, RES, RES), torch.rand(6, 3, RES, RES)
    y, y_hat = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 2, 1, 0, 0])
    bce = nn.BCELoss()
    s_r, _ = D(real)
    s_f, c_f = D(fake)
    p_r, p_f = torch.sigmoid(s_r)[:, None], torch.sigmoid(s_f)[:, None]
    ref_d = bce(p_f, torch.zeros(6, 1)) + bce(p_r, torch.ones(6, 1)) + 1.5 * nn.CrossEntropyLoss()(c_f, y_hat)
    ref_g = bce(p_f, torch.ones(6, 1)) + 1.5 * nn.CrossEntropyLoss()(c_f, y)
    assert torch.allclose(tacgan_discriminator_loss(D, real, fake, y_hat, 1.5), ref_d, atol=1e-5)
    assert torch.allclose(tacgan_generator_loss(D, fake, y, 1.5, True), ref_g, atol=1e-5)
    assert torch.allclose(tacgan_discriminator_loss(D, real, fake, None, 1.5),
                          bce(p_f, torch.zeros(6, 1)) + bce(p_r, torch.ones(6, 1)), atol=1e-5)
    assert torch.allclose(tacgan_generator_loss(D, fake, y, 1.5, False), bce(p_f, torch.ones(6, 1)), atol=1e-5)
    assert D(real)[1].shape == (6, K)


def test_lokt_gan_iteration_queries_labels_only_after_the_unconditional_phase(nets):
    """One G step then n_critic D steps; the target is asked for LABELS of generated images only once the
    iteration number (1-based) exceeds uncond_iterations: n_critic x batch queries per iteration."""
    from midre.attacks.base import QueryOracle
    from midre.models.tacgan import ACGANDiscriminator
    from midre.priors.tacgan import TACGANConfig, tacgan_iteration

    cfg = TACGANConfig(uncond_iterations=2, batch_size=5, n_critic=3, z_dim=ZD, width=4)
    G, D = CondGenerator(K, ZD, RES, 3, 4), ACGANDiscriminator(K, RES, 3, 4)
    optG, optD = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    images = (torch.rand(20, 3, RES, RES) * 255).to(torch.uint8)
    oracle = QueryOracle(nets.T, "labels")
    seen = []
    orig = QueryOracle.__call__

    def spy(self, x):
        out = orig(self, x)
        seen.append(out)
        return out

    try:
        QueryOracle.__call__ = spy
        for n in (1, 2):
            tacgan_iteration(n, cfg, G, D, optG, optD, images, oracle, K, _gen())
        assert oracle.queries == 0
        tacgan_iteration(3, cfg, G, D, optG, optD, images, oracle, K, _gen())
    finally:
        QueryOracle.__call__ = orig
    assert oracle.queries == 3 * 5 and len(seen) == 3
    assert all(s.dtype == torch.long and s.dim() == 1 for s in seen)        # hard labels, nothing else


def test_lokt_surrogate_step_is_half_clean_half_augmented_ce_with_sgd():
    """One surrogate batch: loss 0.5 CE(S(x), y_hat) + 0.5 CE(S(A(x)), y_hat), SGD lr, momentum 0.9, wd 5e-4."""
    from midre.priors.tacgan import TACGANConfig, surrogate_epoch, surrogate_views

    torch.manual_seed(1)
    G = _frozen(CondGenerator(K, ZD, RES, 3, 4))
    S = create_model("tinycnn", num_classes=K, resolution=RES)
    S_ref = create_model("tinycnn", num_classes=K, resolution=RES)
    S_ref.load_state_dict(S.state_dict())
    lab = {"z": torch.randn(12, ZD), "y": torch.randint(K, (12,)), "y_hat": torch.randint(K, (12,))}
    cfg = TACGANConfig(surrogate_batches=1, surrogate_batch_size=6, z_dim=ZD)
    opt = torch.optim.SGD(S.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    surrogate_epoch(S, opt, G, lab, cfg, _gen(5))
    g = _gen(5)
    idx = torch.randint(12, (6,), generator=g)
    x = G(lab["z"][idx], lab["y"][idx]).detach()
    xa = surrogate_views(x, g)
    S_ref.train()
    loss = 0.5 * F.cross_entropy(S_ref(x), lab["y_hat"][idx]) + 0.5 * F.cross_entropy(S_ref(xa), lab["y_hat"][idx])
    params = [p for p in S_ref.parameters()]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        want = [p - 0.1 * (gr + 5e-4 * p) for p, gr in zip(params, grads)]   # first step: v = g + wd p
    got = list(S.parameters())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    assert any(not torch.allclose(a, p) for a, p in zip(got, params))


def test_lokt_parity_plgmi_on_the_surrogates(nets):
    """plg_tacgan.py: Adam on z of G(z, y); per step, for every surrogate two fresh views, max-margin each,
    summed, divided by the number of surrogates."""
    from midre.priors import Prior

    pri = {"tacgan": Prior("tacgan", nets.cG, aug_models=nets.aug)}
    a = build_attack("lokt", iterations=STEPS)
    g = _gen()
    st = a.init_latents(None, IDS, pri, g)

    class _Oracle:
        queries = 0
    a.extra_meta = {}
    out = a.invert(_Oracle(), IDS, pri, st, g, None, lambda v: None, lambda: None)
    g = _gen()
    z = torch.randn(len(IDS), ZD, generator=g)
    opt = HandAdam([z], 0.1)
    for _ in range(STEPS):
        zz = z.clone().requires_grad_(True)
        x = nets.cG(zz, IDS)
        loss = 0.0
        for s in nets.aug:
            v1, v2 = (random_views(x, g, rotation_p=0.5) for _ in range(2))   # kornia's RandomRotation: p 0.5
            loss = loss + ref_max_margin(s(v1), IDS) + ref_max_margin(s(v2), IDS)
        loss = loss / len(nets.aug)
        z, = opt.step(torch.autograd.grad(loss, [zz]))
    assert torch.allclose(out["z"], z, atol=1e-5)
    assert (out["z"] - st["z"]).abs().max() > 1e-3
    assert a.extra_meta["queries_attack"] == 0


# ------------------------------------------------------------------------------ C2FMI
# Written from the authors' release (MiLabHITSZ/2022YeC2FMI: main_attack.py, utils/DE.py's DE_c2b_5_bin2,
# models/predict2feature.py): loops per child and per coordinate as the release has them; the random draws
# come from one generator in midre's order (pool z, start indices, prediction noise per coarse step, three
# distinct parents + three fresh z per added member, then per generation (P, nv, 2) pair indices and a
# (P, d) uniform for the crossover).
def ref_truncated_log(probs, trunc):
    """predict2feature's input: top-``trunc`` probabilities -> log, clamp(min=-1000) + 50, shifted to be >= 0,
    written back at their classes in a zero vector, L2-normalised."""
    out = torch.zeros_like(probs)
    for b in range(len(probs)):
        order = sorted(range(probs.shape[1]), key=lambda c: -float(probs[b, c]))[:trunc]
        vals = [max(math.log(float(probs[b, c])), -1000.0) + 50.0 for c in order]
        lift = max(0.0, -min(vals))
        for c, v in zip(order, vals):
            out[b, c] = v + lift
        out[b] /= out[b].norm().clamp_min(1e-12)
    return out


def test_c2fmi_inverse_model_input_is_the_releases_truncated_log():
    from midre.priors.c2fmi import truncated_log_input

    p = torch.rand(5, 7, generator=_gen(1)).pow(4).softmax(1)
    for trunc in (1, 3, 7):
        assert torch.allclose(truncated_log_input(p, trunc), ref_truncated_log(p, trunc), atol=1e-6)
    one = truncated_log_input(p, 1)                            # trunc 1 (the release): the one-hot of the top class
    assert torch.equal(one, F.one_hot(p.argmax(1), 7).float())
    assert not torch.allclose(truncated_log_input(p, 3), F.normalize(p, dim=1), atol=1e-3)


def _c2fmi_nets(hr):
    from midre.priors.c2fmi import InverseMapping

    torch.manual_seed(3)
    E = _frozen(create_model("tinycnn", num_classes=5, resolution=8))        # the embedding model reads 8 px
    M = _frozen(InverseMapping(K, 5, hidden=8, dropout=0.25, trunc=1))
    return E, M, {**hr.priors, "c2fmi": Prior("c2fmi", aug_models=[E, M], meta={"resolution": 8})}


def ref_c2fmi_view(G, w, res):
    """G([w], input_is_latent=True) -> resize to the model's input -> clamp to [-1, 1] -> [0, 1]."""
    x = G.synthesis(w[:, None].repeat(1, G.num_ws, 1), noise_mode="const")
    x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=x.shape[-1] > res)
    return x.clamp(-1, 1).add(1).div(2)


def test_c2fmi_start_and_coarse_stage_follow_the_release(hr):
    from midre.attacks import QueryOracle

    E, M, priors = _c2fmi_nets(hr)
    pool, B, S, steps, y = 1200, 5, 3, 4, 2
    a = build_attack("c2fmi", pool=pool, candidates=B, select=S, coarse_steps=steps, lr_step=2, lr_gamma=0.5)
    oracle = QueryOracle(hr.T)
    a.extra_meta = {}
    g = _gen(4)
    st = a.init_latents(oracle, torch.tensor([y]), priors, g)
    got = a.coarse(oracle, st["w"][0], y, g, None, lambda v: None)
    # the release
    r = _gen(4)
    with torch.no_grad():
        lat = hr.G.mapping(torch.randn(pool, hr.G.z_dim, generator=r), None)[:, 0]        # g_ema.style(noise)
    j = torch.randint(0, pool // 10 - 100 + 1, (B,), generator=r)
    w = torch.stack([lat[2 * int(i):2 * (int(i) + 1)].mean(0) for i in j]).requires_grad_(True)
    assert torch.allclose(st["w"][0], w.detach(), atol=1e-6)
    opt = torch.optim.Adam([w], lr=0.02)
    sch = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for i in range(steps):
        if i + 1 == steps:                                    # the target scores this step's images
            with torch.no_grad():
                conf = hr.T(ref_c2fmi_view(hr.G, w, HR)).softmax(1)[:, y]
            idx = conf.argsort(descending=True)[:S]
        pred = torch.randn(B, K, generator=r).abs()
        pred[:, y] = 1e18
        loss = F.mse_loss(E(ref_c2fmi_view(hr.G, w, 8)), M(F.normalize(pred, dim=1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
    assert oracle.queries == B                                # one query per candidate, once
    assert torch.allclose(got, w.detach()[idx], atol=1e-5)
    assert (got - st["w"][0][idx]).abs().max() > 1e-4          # the latents moved


def ref_c2fmi_de(G, T, pop, y, gens, r, nv=4, pull=0.02, beta0=0.1, ramp=30, div=50.0, pr=0.5):
    """DE_c2b_5_bin2.run with disturb 0: per generation query the parents, mutate towards the best plus nv
    beta-weighted differences, binomial crossover with the parent, keep strictly better children."""
    def fitness(ws):
        with torch.no_grad():
            return T(ref_c2fmi_view(G, ws, HR)).softmax(1)[:, y]

    pop = pop.clone()
    n, d = pop.shape
    for step in range(gens):
        beta = beta0 if step < gens - ramp else beta0 * (gens - step) / div
        fit_par = fitness(pop)
        best = pop[int(fit_par.argmax())]
        pairs = torch.randint(0, n, (n, nv, 2), generator=r)
        children = []
        for i in range(n):
            tmp = pop[i] + pull * (best - pop[i])
            for k in range(nv):
                tmp = tmp + beta * (pop[pairs[i, k, 0]] - pop[pairs[i, k, 1]])
            children.append(tmp)
        u = torch.rand(n, d, generator=r)
        fi = torch.stack([torch.stack([children[i][c] if u[i, c] > pr else pop[i, c] for c in range(d)])
                          for i in range(n)])
        fit_chi = fitness(fi)
        for i in range(n):
            if fit_par[i] < fit_chi[i]:
                pop[i] = fi[i]
    return pop, fitness(pop)


def test_c2fmi_differential_evolution_is_the_releases(hr):
    from midre.attacks import QueryOracle

    E, M, priors = _c2fmi_nets(hr)
    P, S, gens, y = 6, 3, 34, 1                                # 34 generations: 4 at beta, 30 on the ramp
    a = build_attack("c2fmi", pool=1200, candidates=4, select=S, population=P, generations=gens)
    oracle = QueryOracle(hr.T)
    a.extra_meta = {}
    a.init_latents(oracle, torch.tensor([y]), priors, _gen(0))
    sel = hr.G.mapping(torch.randn(S, hr.G.z_dim, generator=_gen(5)), None)[:, 0]
    g = _gen(6)
    pop0 = a.extend(sel, g)
    q0 = oracle.queries
    got = a.evolve(oracle, pop0, y, g, None, lambda v: None)
    # the release's extension: 0.7 * 0.5 (0.5 (x1 + x2) + x3) + 0.3 * mean of three fresh mapped w
    r = _gen(6)
    ref0 = [sel[i] for i in range(S)]
    for _ in range(P - S):
        i1, i2, i3 = torch.randperm(S, generator=r)[:3].tolist()
        with torch.no_grad():
            wr = hr.G.mapping(torch.randn(3, hr.G.z_dim, generator=r), None)[:, 0].mean(0)
        ref0.append(0.7 * (0.5 * (0.5 * (sel[i1] + sel[i2]) + sel[i3])) + 0.3 * wr)
    ref0 = torch.stack(ref0)
    assert torch.allclose(pop0, ref0, atol=1e-6)
    ref_pop, _ = ref_c2fmi_de(hr.G, hr.T, ref0, y, gens, r)
    assert oracle.queries - q0 == 2 * P * gens                # parents and children queried every generation
    assert torch.allclose(got, ref_pop, atol=1e-5)
    assert (got - pop0).abs().max() > 1e-3
    # without the release's late beta ramp the search ends elsewhere
    r2 = _gen(6)
    for _ in range(P - S):
        torch.randperm(S, generator=r2)
        torch.randn(3, hr.G.z_dim, generator=r2)
    flat, _ = ref_c2fmi_de(hr.G, hr.T, ref0, y, gens, r2, ramp=0)
    assert (flat - ref_pop).abs().max() > 1e-4


# ============================================================================== DeepInversion (issue 24)
# The release's rules (NVlabs/DeepInversion deepinversion.py + utils/utils.py, cifar10/deepinversion_cifar10.py),
# written out below: the BN feature hook, the image priors, lr_cosine_policy, the per-stage Adam, the clip.
# midre's seeding plumbing is shared: one randint(-lim, lim + 1, (2,)) then one rand(1) per step from the
# chunk's generator (the release: Python's random.randint twice, then random.random()).
DI_RES = 16


@pytest.fixture(scope="module")
def di_target():
    """Three conv-BN blocks with smooth activations and average pooling: a max-pool's arg-max flips on
    float noise and would make two equal rules part ways after a few steps."""
    from midre.models.base import Classifier

    torch.set_num_threads(1)
    torch.manual_seed(2)
    blocks = [nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.SiLU(), nn.AvgPool2d(2))
              for a, b in ((3, 8), (8, 16), (16, 16))]
    T = Classifier(nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16, K)
    T.train()
    with torch.no_grad():                      # running statistics far from the BN defaults (0, 1)
        for _ in range(3):
            T(torch.rand(32, 3, DI_RES, DI_RES) * 0.6 + 0.3)
    return _frozen(T)


def ref_bn_hooks(T):
    """DeepInversionFeatureHook on every BatchNorm2d: ||running_var - var||_2 + ||running_mean - mean||_2 of
    the layer's input, var biased, over (N, H, W)."""
    layers = [m for m in T.modules() if isinstance(m, nn.BatchNorm2d)]
    vals = [None] * len(layers)

    def make(i):
        def hook(module, inputs, output):
            nch = inputs[0].shape[1]
            mean = inputs[0].mean([0, 2, 3])
            var = inputs[0].permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
            vals[i] = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)
        return hook
    return vals, [m.register_forward_hook(make(i)) for i, m in enumerate(layers)]


def ref_image_priors(x):
    """get_image_prior_losses: (loss_var_l1, loss_var_l2)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = torch.norm(d1) + torch.norm(d2) + torch.norm(d3) + torch.norm(d4)
    l1 = ((d1.abs() / 255.0).mean() + (d2.abs() / 255.0).mean() + (d3.abs() / 255.0).mean()
          + (d4.abs() / 255.0).mean()) * 255.0
    return l1, l2


def ref_lr_cosine(base, warmup, epochs, epoch):
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))) * base


DI_C = dict(lr=0.1, b1=0.5, b2=0.9, bn=0.05, first=10.0, tv1=0.5, tv2=1e-2, l2=1e-2, main=1.0, jitter=2,
            flip=True, clip=True, cosine=True, warmup=2)


def ref_deepinversion(T, y, gen, stages, c):
    """get_images: inputs ~ N(0, I) in the target's normalised space; per stage (iterations, lower_res) a
    fresh Adam and schedule; inputs_jit = pool / roll / flip; the loss; step; per-channel clip; the last
    iterate is returned (what the README command writes: the best batch is saved only with --store_best_images)."""
    mean, std = T.mean, T.std
    u = torch.randn(len(y), 3, DI_RES, DI_RES, generator=gen)
    vals, handles = ref_bn_hooks(T)
    try:
        for n, lower_res in stages:
            opt = HandAdam([u], c["lr"], c["b1"], c["b2"])
            lim = c["jitter"] // lower_res
            for it in range(n):
                opt.lr = ref_lr_cosine(c["lr"], c["warmup"], n, it) if c["cosine"] else c["lr"]
                uu = u.clone().requires_grad_(True)
                x = nn.AvgPool2d(kernel_size=2)(uu) if lower_res != 1 else uu
                off1, off2 = torch.randint(-lim, lim + 1, (2,), generator=gen).tolist()
                flip = torch.rand(1, generator=gen).item() > 0.5
                x = torch.roll(x, shifts=(off1, off2), dims=(2, 3))
                if flip and c["flip"]:
                    x = torch.flip(x, dims=(3,))
                loss = nn.CrossEntropyLoss()(T(x * std + mean), y)
                l1, l2 = ref_image_priors(x)
                rescale = [c["first"]] + [1.0] * (len(vals) - 1)
                r_feature = sum(v * rescale[i] for i, v in enumerate(vals))
                loss_l2 = torch.norm(x.view(len(y), -1), dim=1).mean()
                total = c["main"] * loss + c["tv2"] * l2 + c["tv1"] * l1 + c["bn"] * r_feature + c["l2"] * loss_l2
                g, = torch.autograd.grad(total, uu)
                u, = opt.step([g])
                if c["clip"]:
                    for ch in range(3):
                        m, s = T.mean[0, ch, 0, 0], T.std[0, ch, 0, 0]
                        u[:, ch] = torch.clamp(u[:, ch], -m / s, (1 - m) / s)
                    opt.p = [u]
    finally:
        for h in handles:
            h.remove()
    return u


def _di(T, seed=7, preset=None, **kw):
    """midre's init + invert; without a preset, DI_C's coefficients."""
    p = {} if preset else dict(lr=DI_C["lr"], beta1=DI_C["b1"], beta2=DI_C["b2"], r_feature=DI_C["bn"],
                               first_bn_multiplier=DI_C["first"], tv_l1=DI_C["tv1"], tv_l2=DI_C["tv2"], l2=DI_C["l2"],
                               jitter=DI_C["jitter"], warmup=DI_C["warmup"])
    p.update(kw, target_resolution=DI_RES, **({"preset": preset} if preset else {}))
    a = build_attack("deepinversion", **p)
    g = _gen(seed)
    st = a.init_latents(T, IDS, {}, g)
    return a.invert(T, IDS, {}, st, g, None, lambda v: None, lambda: None)


def test_deepinversion_parity_multi_resolution_release_loop(di_target):
    """Setting 0 of the ImageNet release: a half-resolution stage then a full one, each with its own Adam
    (betas 0.5, 0.9) and cosine schedule with warm-up, BN loss with the first-layer multiplier, TV-L1, TV-L2,
    L2, jitter (halved at half resolution), flip, clip to the valid pixel range."""
    out = _di(di_target, iterations=4, low_res_iterations=3)
    ref = ref_deepinversion(di_target, IDS, _gen(), [(3, 2), (4, 1)], DI_C)
    u0 = torch.randn(len(IDS), 3, DI_RES, DI_RES, generator=_gen())
    assert not torch.allclose(ref, u0, atol=1e-2)                                # it moved
    assert torch.allclose(out["u"], ref, atol=1e-5, rtol=1e-4)
    pix = out["u"] * di_target.std + di_target.mean                             # clipped in pixel terms
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6
    unclipped = ref_deepinversion(di_target, IDS, _gen(), [(3, 2), (4, 1)], {**DI_C, "clip": False})
    assert not torch.allclose(out["u"], unclipped, atol=1e-4)                   # the clip was active
    # the rules it must not be: no first-BN multiplier; the ToolBox's TV-L2 divided by 4; the unbiased variance
    assert not torch.allclose(_di(di_target, iterations=4, low_res_iterations=3, first_bn_multiplier=1.0)["u"],
                              ref, atol=1e-4)
    quarter = ref_deepinversion(di_target, IDS, _gen(), [(3, 2), (4, 1)], {**DI_C, "tv2": DI_C["tv2"] / 4})
    assert not torch.allclose(out["u"], quarter, atol=1e-4)


def test_deepinversion_bn_statistics_use_the_biased_variance_of_each_bn_input(di_target):
    from midre.attacks.deepinversion import BNStatistics

    x = torch.rand(5, 3, DI_RES, DI_RES)
    vals, handles = ref_bn_hooks(di_target)
    try:
        di_target(x)
    finally:
        for h in handles:
            h.remove()
    with BNStatistics(di_target) as bn:
        di_target(x)
        got = bn.loss(10.0)
    assert len(vals) == 3 and torch.allclose(got, 10 * vals[0] + vals[1] + vals[2], rtol=1e-5)
    unbiased = []                           # the old / textbook rule: unbiased variance, a different number
    hs = [m.register_forward_hook(lambda m, i, o: unbiased.append(torch.norm(m.running_var - i[0].transpose(0, 1)
                                                                             .flatten(1).var(1), 2)))
          for m in di_target.modules() if isinstance(m, nn.BatchNorm2d)]
    di_target(x)
    for h in hs:
        h.remove()
    assert not math.isclose(float(unbiased[0]), float(vals[0]), rel_tol=1e-4)


def test_deepinversion_cifar10_preset_is_the_32px_script_and_returns_the_last_iterate(di_target):
    """The CIFAR-10 script: constant lr, Adam's default betas, no flip, no first-BN scaling, no clip, and the
    returned images are the live tensor after the last step (its best_inputs aliases the optimised tensor)."""
    c = build_attack("deepinversion", preset="cifar10").params
    assert (c["iterations"], c["low_res_iterations"], c["lr"], c["r_feature"], c["tv_l2"], c["l2"], c["jitter"],
            c["flip"], c["clip"], c["schedule"], c["first_bn_multiplier"], c["beta1"], c["beta2"]) == \
        (2000, 0, 0.05, 10.0, 2.5e-5, 0.0, 2, False, False, "constant", 1.0, 0.9, 0.999)
    d = build_attack("deepinversion").params
    assert (d["iterations"], d["low_res_iterations"], d["lr"], d["r_feature"], d["first_bn_multiplier"], d["tv_l2"],
            d["tv_l1"], d["l2"], d["jitter"], d["flip"], d["clip"], d["beta1"], d["beta2"], d["warmup"]) == \
        (1000, 2000, 0.25, 0.01, 10.0, 1e-4, 0.0, 1e-5, 30, True, True, 0.5, 0.9, 100)
    kw = dict(preset="cifar10", iterations=5, lr=0.2, r_feature=0.05, tv_l2=1e-2, l2=0.0)
    out = _di(di_target, **kw)
    ref = ref_deepinversion(di_target, IDS, _gen(), [(5, 1)],
                            {**DI_C, "lr": 0.2, "b1": 0.9, "b2": 0.999, "first": 1.0, "tv1": 0.0, "l2": 0.0,
                             "flip": False, "clip": False, "cosine": False})
    assert torch.allclose(out["u"], ref, atol=1e-5, rtol=1e-4)
    pix = ref * di_target.std + di_target.mean
    assert pix.min() < 0 or pix.max() > 1                # not clipped (the script does not clip)


def test_deepinversion_lr_cosine_policy():
    from midre.attacks.deepinversion import cosine_lr

    for it in (0, 1, 99, 100, 101, 500, 999):
        assert math.isclose(cosine_lr(0.25, 100, 1000, it), ref_lr_cosine(0.25, 100, 1000, it), rel_tol=1e-12)


# ============================================================================== MIRROR white-box (issue 24)
# The release's white-box script (njuaplusplus/mirror face_inversion.py -> my_mirror.mirror_attack, latent
# space w from the pre-generated samples): raw w pool scored by the target, the nrow best per target, Adam
# (0.9, 0.999) with rosinality's projector lr ramp, loss_class_ce x CE, one flip coin per epoch for the batch,
# clip_quantile_bound to the p-space box after the step, best_inputs = w after the step of the lowest loss.
def ref_projector_lr(initial_lr, epoch, epochs, rampdown=0.25, rampup=0.05):
    t = epoch / epochs
    lr_ramp = min(1, (1 - t) / rampdown)
    lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
    lr_ramp = lr_ramp * min(1, t / rampup)
    return initial_lr * lr_ramp


def test_mirror_wb_parity_with_the_release_loop(hr):
    from midre.attacks import ChunkContext

    R, E, pool, ce, lr = 2, 8, 40, 10.0, 0.25
    a = build_attack("mirror_wb", pool=pool, iterations=E, cutoff=2, gen_batch=16, batch_size=3)
    a.extra_meta, a.chunk = {}, ChunkContext(5, 0, R, 0)
    st = a.init_latents(hr.T, IDS, hr.priors, _gen())
    out = a.invert(hr.T, IDS, hr.priors, st, _gen(), None, lambda v: None, lambda: None)["shared"]
    g = ChunkContext(5, 0, R, 0).generator("mirror_wb", "shared")
    with torch.no_grad():
        all_ws = hr.G.mapping(torch.randn(pool, hr.G.z_dim, generator=g), None)[:, 0]          # raw w
        conf = hr.T(ref_mirror_images(hr.G, all_ws, cutoff=2)).softmax(1)
        inputs = torch.cat([all_ws[torch.topk(conf[:, t], R, dim=0, largest=True, sorted=True)[1]] for t in IDS])
        all_ps = F.leaky_relu(all_ws, 5.0)
        m, s = all_ps.mean(0, keepdim=True), all_ps.std(0, keepdim=True, unbiased=False)
        w_min, w_max = F.leaky_relu(m - s, 0.2), F.leaky_relu(m + s, 0.2)
    targets = IDS.repeat_interleave(R)
    opt = HandAdam([inputs], lr, 0.9, 0.999)
    best_cost, best_inputs, w = 1e4, None, inputs
    for epoch in range(1, E + 1):
        opt.lr = ref_projector_lr(lr, epoch, E)
        ww = w.clone().requires_grad_(True)
        x = ref_mirror_images(hr.G, ww, cutoff=2)
        if torch.rand(1, generator=g).item() > 0.5:
            x = torch.flip(x, dims=(3,))
        loss = ce * nn.CrossEntropyLoss()(hr.T(x), targets)
        gr, = torch.autograd.grad(loss, ww)
        w, = opt.step([gr])
        w = torch.max(torch.min(w, w_max), w_min)
        opt.p = [w]
        if best_cost > loss.item():
            best_inputs, best_cost = w.clone(), loss.item()
    assert not torch.allclose(best_inputs, inputs, atol=1e-3)
    assert torch.allclose(out["w"], best_inputs, atol=1e-5, rtol=1e-4)
    assert len(out["curve"]) == E
    # the box is per dimension (the ToolBox averages it into one scalar pair)
    _, _, (lo, hi) = a.search(hr.T, IDS, ChunkContext(5, 0, R, 0).generator("mirror_wb", "shared"), R)
    assert torch.allclose(lo, w_min) and torch.allclose(hi, w_max) and lo.unique().numel() > 1
    # repeat r is each identity's r-th start; the image is the view of its w
    img = a.final_selection(hr.T, IDS, hr.priors, {"shared": out}, _gen())
    assert torch.allclose(img, ref_mirror_images(hr.G, best_inputs.view(len(IDS), R, -1)[:, 0], cutoff=2), atol=1e-5)


def test_mirror_wb_paper_preset_and_lr_ramp():
    p = build_attack("mirror_wb").params
    assert (p["pool"], p["iterations"], p["lr"], p["class_weight"], p["flip"], p["p_std_ce"], p["psi"], p["cutoff"]) \
        == (100000, 20000, 0.25, 10.0, True, 1.0, 0.7, 8)
    from midre.attacks.mirror_wb import projector_lr

    for e in (1, 10, 50, 51, 500, 750, 751, 999, 1000):
        assert math.isclose(projector_lr(0.25, e, 1000), ref_projector_lr(0.25, e, 1000), abs_tol=1e-15)
    assert projector_lr(0.25, 1000, 1000) == 0.0 and math.isclose(projector_lr(0.25, 500, 1000), 0.25)


# ============================================================================== SecretGen (issue 24)
# The reference's rules (AI-secure/SecretGen stage1.py, stage2.py, utils.py, losses.py; the MI ToolBox copy is
# identical), written out here without midre's helpers.  Random draws follow midre's order (one generator).
from midre.attacks.secretgen import cutouts, pseudo_labels  # noqa: E402
from midre.priors.data import PublicImages  # noqa: E402
from midre.priors.secretgen import Critics, InpaintingGenerator, SecretGenPrior, hole_mask  # noqa: E402

SG_RES, SG_K = 16, 5


@pytest.fixture(scope="module")
def sg():
    torch.manual_seed(0)
    G = InpaintingGenerator(z_dim=6, resolution=SG_RES, channels=3, width=8).eval()
    G.fill_value.copy_(torch.tensor([0.52, 0.43, 0.39]).view(1, 3, 1, 1))
    D = Critics(SG_RES, 3, 8).eval()
    T = create_model("tinycnn", num_classes=SG_K, resolution=SG_RES).eval()
    x = torch.rand(3, 3, SG_RES, SG_RES)
    return SimpleNamespace(G=G, D=D, T=T, x=x, m=hole_mask("center", SG_RES))


def ref_fill(G, x, m, z):
    """stage2.py: x_mask = x - x*m + mpv*m; inp = cat(x_mask, m); out = Net(inp, z); x - x*m + out*m."""
    x_mask = x - x * m + G.fill_value * m
    inp = torch.cat((x_mask, m.expand(x.shape[0], 1, -1, -1)), 1)
    out = G.decode(torch.cat([G.context(inp), G.identity(G.identity_fc(z).view(len(z), -1, G.s0, G.s0))], 1))
    return x - x * m + out * m


def ref_gp(D, a, b, alpha):
    """gradient_penalty_dl/dg: interpolate z = a + alpha (b - a), (||grad D(z)||_2 - 1)^2 averaged."""
    z = (a + alpha * (b - a)).detach().requires_grad_(True)
    g = torch.autograd.grad(D(z), z, grad_outputs=torch.ones(len(z)), create_graph=True)[0].view(len(z), -1)
    return ((g.norm(p=2, dim=1) - 1) ** 2).mean()


def test_secretgen_masks_are_the_references():
    c = hole_mask("center", 64)[0, 0]
    assert c.sum() == 32 * 32 and c[16:48, 16:48].all()                   # int(64*.25):int(64*.75)
    f = hole_mask("face", 64)[0, 0]
    ref = torch.zeros(64, 64)
    ref[25:40, 10:52] = 1
    ref[40:63, 26:38] = 1
    assert torch.equal(f, ref)
    assert hole_mask("center", 32)[0, 0].sum() == 16 * 16


def _sg_data(x, hflip=False):
    return PublicImages(SimpleNamespace(to_tensors=lambda: SimpleNamespace(images=(x * 255).round().to(torch.uint8))),
                        torch.device("cpu"), hflip)


def test_secretgen_stage1_critic_steps_are_wgan_gp_with_weight_10(sg):
    kind, cfg = SecretGenPrior(), SecretGenPrior().config("paper", {"batch_size": 3, "z_dim": 6})
    data = _sg_data(sg.x)
    ctx = {"mask": sg.m, "V": sg.T.features}
    got = kind.critic_loss(cfg, sg.G, sg.D, data, torch.Generator().manual_seed(5), ctx)
    g = torch.Generator().manual_seed(5)
    total = 0.0
    for which in ("local", "global"):
        x = data.images[torch.randint(data.n, (3,), generator=g)].float() / 255
        z = torch.randn(3, 6, generator=g)
        with torch.no_grad():
            out = ref_fill(sg.G, x, sg.m, z)
        Dc = sg.D.local if which == "local" else sg.D.global_
        if which == "local":                  # gen_hole_area: a random (R/2)^2 square, the same for real and fake
            top, left = torch.randint(SG_RES - SG_RES // 2 + 1, (2,), generator=g).tolist()
            sl = (..., slice(top, top + SG_RES // 2), slice(left, left + SG_RES // 2))
            x, out = x[sl], out[sl]
        alpha = torch.rand(3, 1, 1, 1, generator=g)
        wd = Dc(x).mean() - Dc(out).mean()
        total = total + (-wd + 10.0 * ref_gp(Dc, out, x, alpha))
    assert torch.allclose(got, total, rtol=1e-5, atol=1e-6)


def test_secretgen_stage1_generator_loss_subtracts_half_the_diversity_ratio(sg):
    kind, cfg = SecretGenPrior(), SecretGenPrior().config("paper", {"batch_size": 3, "z_dim": 6})
    data = _sg_data(sg.x)
    V = sg.T.features
    z1 = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    got = kind.generator_loss(cfg, sg.G, sg.D, data, torch.Generator().manual_seed(9), {"mask": sg.m, "V": V}, sg.T, z1)
    g = torch.Generator().manual_seed(9)
    x = data.images[torch.randint(data.n, (3,), generator=g)].float() / 255
    z2 = torch.randn(3, 6, generator=g)
    o1, o2 = ref_fill(sg.G, x, sg.m, z1), ref_fill(sg.G, x, sg.m, z2)
    top, left = torch.randint(SG_RES - SG_RES // 2 + 1, (2,), generator=g).tolist()
    crop1 = o1[..., top:top + SG_RES // 2, left:left + SG_RES // 2]
    gan_loss = (-sg.D.local(crop1).mean() - sg.D.global_(o1).mean()) / 2
    diff_loss = torch.mean(torch.abs(V(o1) - V(o2))) / torch.mean(torch.abs(z2 - z1))   # noise_loss / |z2 - z1|
    assert torch.allclose(got, gan_loss - diff_loss * 0.5, rtol=1e-5, atol=1e-6)


def test_secretgen_cutouts_are_the_fixed_4x4_grid_filled_with_the_mean_pixel(sg):
    fill_value = sg.G.fill_value
    outs = cutouts(sg.x, fill_value)
    assert len(outs) == 16
    q = SG_RES // 4
    for n, c in enumerate(outs):
        i, j = divmod(n, 4)                   # FixedCutOut(((16i, 16j), (16, 16))): mask[16i:16i+16, 16j:16j+16]
        m = torch.zeros(1, 1, SG_RES, SG_RES)
        m[..., q * i:q * (i + 1), q * j:q * (j + 1)] = 1
        assert torch.equal(c, sg.x - sg.x * m + fill_value * m)


def test_secretgen_pseudo_label_is_the_best_averaged_class_some_code_predicts():
    avg = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.4, 0.1, 0.2, 0.3]])
    labels = torch.tensor([[2, 3, 2], [0, 0, 1]])     # image 0: class 1 ranks first but no code predicts it
    assert pseudo_labels(avg, labels).tolist() == [2, 0]


def ref_secretgen_stage2(sg, ids, x, gen, n_init, iters, white_box=True, lr=0.01):
    """stage2.py ini-wb / ini-bb: init_full / init_latent_blackbox (pseudo-label, most confident z), then
    v = m v - 0.01 grad; z = z - m v_prev + (1 + m) v; clamp(z, -1, 1), loss -D_L - D_G (+ 100 NLL)."""
    G, D, T, m = sg.G, sg.D, sg.T, sg.m
    B = len(ids)
    zs = torch.randn(n_init, B, 6, generator=gen).clamp(-1, 1)
    probs_avg, conf, lab = torch.zeros(B, SG_K), [], []
    with torch.no_grad():
        for z in zs:
            filled = ref_fill(G, x, m, z)
            probs = T(filled).softmax(1)
            probs_avg += probs
            for c in cutouts(filled, G.fill_value):
                probs_avg += T(c).softmax(1)
            lab.append(probs.argmax(1))
            conf.append(probs.max(1).values)
    lab, conf = torch.stack(lab, 1), torch.stack(conf, 1)
    fresh = torch.randn(B, 6, generator=gen)
    ident, z = torch.zeros(B, dtype=torch.long), torch.zeros(B, 6)
    for b in range(B):
        ident[b] = next(c for c in probs_avg[b].argsort(descending=True) if (lab[b] == c).any())
        sel = lab[b] == ident[b]
        z[b] = zs[:, b][sel][conf[b][sel].argmax()] if sel.any() else fresh[b]
    v = torch.zeros_like(z)
    for _ in range(iters):
        z.requires_grad_(True)
        filled = ref_fill(G, x, m, z)
        top, left = torch.randint(SG_RES - SG_RES // 2 + 1, (2,), generator=gen).tolist()
        patch = filled[..., top:top + SG_RES // 2, left:left + SG_RES // 2]
        loss = -D.local(patch).mean() - D.global_(filled).mean()
        if white_box:
            loss = loss + 100 * F.nll_loss(torch.log(T(filled).softmax(1)), ident)
        grad, = torch.autograd.grad(loss, z)
        v_prev = v.clone()
        v = 0.9 * v - lr * grad
        z = torch.clamp((z + (-0.9 * v_prev + (1 + 0.9) * v)).detach(), -1, 1)
    return ident, z


LR = {"secretgen": 20.0, "secretgen_bb": 200.0}      # large steps: the move is far above the tolerance


@pytest.mark.parametrize("name", ["secretgen", "secretgen_bb"])
def test_secretgen_stage2_parity_with_the_release_loop(sg, name):
    from midre.attacks import QueryOracle
    from midre.attacks.masked import MaskedPrivate

    kind = "secretgen" if name == "secretgen" else "secretgen_bb"
    prior = {kind: Prior(kind, sg.G, sg.D, meta={"config": {"mask": "center"}})}
    a = build_attack(name, iterations=4, n_init=3, lr=LR[name])
    ids = torch.tensor([0, 2, 3])
    x = sg.x * (1 - sg.m)
    a.masked_private = MaskedPrivate(x, ids.clone(), sg.m)
    access = sg.T if name == "secretgen" else QueryOracle(sg.T)
    for p in [*sg.T.parameters(), *sg.G.parameters(), *sg.D.parameters()]:
        p.requires_grad_(False)
    state = a.init_latents(access, ids, prior, torch.Generator())
    out = a.invert(access, ids, prior, state, torch.Generator().manual_seed(3), None, lambda v: None, lambda: None)
    ident, z = ref_secretgen_stage2(sg, ids, x, torch.Generator().manual_seed(3), 3, 4, name == "secretgen", LR[name])
    assert torch.equal(out["label"], ident)
    moved = (out["z"] - out["start"]).abs().max()
    assert moved > 1e-2 and torch.allclose(out["z"], z, atol=1e-6)
    if name == "secretgen_bb":
        assert access.queries == 3 * 3 * 17               # n_init x (image + 16 cut-outs) per image, no more
