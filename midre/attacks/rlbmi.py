"""RLB-MI, reinforcement-learning based black-box model inversion (Han et al., CVPR 2023).

Black-box: only the :class:`~midre.attacks.base.QueryOracle` (probabilities, counted).  Prior kind ``gan``
(the GMI generator the original and the MIDRE paper's 64-px setting use; any ``z -> image`` generator).

A soft actor-critic agent (one per identity, fresh for every repeat) acts in the latent space.  Each
episode: state z ~ N(0, I); for ``max_step`` steps the action a = tanh(mu + sigma * eps) (the squashed
Gaussian policy) moves the state, z' = alpha * z + (1 - alpha) * a; the reward is the original's

    r = 2 log p_y(G(z')) + 2 log p_y(G(a)) + 8 log max(1e-7, p_y(G(z')) - max_{c != y} p_c(G(z')))

(two queries).  After every episode a TEST image -- a fresh z through the current policy -- is queried
and, if its p_y is at least the best so far, becomes the identity's reconstruction (one query).
SAC: two critics with soft-updated targets (tau 0.01), gamma 0.99, hidden 256, replay buffer 1e6,
batch 256, Adam 5e-4, automatic entropy tuning (target entropy -dim(a)); updates start once the buffer
holds more than a batch.  Defaults = the original: 40,000 episodes, one step, alpha 0.  ``agent:
faithful`` (default) is the released agent: one noise scalar per policy call shared by all action
dimensions and the batch, both critics seeded identically (so they stay one Q network in effect), the
release's critic initialisation (last layer U(+-3e-3)), and the critic target's temperature one update
behind; ``agent: textbook`` is standard SAC (per-element noise, independent default-initialised
critics).

Known bugs of one public port that this file does not repeat (tests/test_attacks_highres.py checks
each): the best image is chosen by the TEST image's own confidence (not the state image's), the best
score IS updated, the label is the attacked identity (not derived from the latent size), and no agent
is pickled (nothing of the agent is saved).  Deviations (docs/highres-attacks.md): log-probabilities
of the tanh-Gaussian are summed over action dimensions (standard SAC; the original averages them while
its target entropy is -dim, which drives the temperature to zero), and replay batches are drawn with
replacement from the seeded generator.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArgumentError
from .base import Attack, register_attack
from .highres import Ticker


def rlbmi_reward(p_state: torch.Tensor, p_action: torch.Tensor, y: torch.Tensor,
                 weights: tuple[float, float, float] = (2.0, 2.0, 8.0)) -> torch.Tensor:
    """The original reward from the probability vectors of the state and action images (batch, K)."""
    ps = p_state.gather(1, y[:, None]).squeeze(1)
    pa = p_action.gather(1, y[:, None]).squeeze(1)
    other = p_state.masked_fill(F.one_hot(y, p_state.shape[1]).bool(), float("-inf")).amax(1)
    margin = (ps - other).clamp_min(1e-7)
    tiny = 1e-38
    return weights[0] * ps.clamp_min(tiny).log() + weights[1] * pa.clamp_min(tiny).log() + weights[2] * margin.log()


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def released_critic_init(q: _MLP) -> _MLP:
    """The release's critic initialisation: hidden weights U(+-1 / sqrt(n)) with n the layer's OUTPUT size
    (the release's ``hidden_init`` reads ``weight.size()[0]``), last weight U(+-3e-3); biases as created."""
    lin = [m for m in q.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in lin[:-1]:
            lim = 1.0 / math.sqrt(m.weight.shape[0])
            m.weight.uniform_(-lim, lim)
        lin[-1].weight.uniform_(-3e-3, 3e-3)
    return q


class SACAgent:
    """Soft actor-critic with a tanh-squashed Gaussian policy; every random draw from ``gen``.

    ``p["agent"]``: ``"faithful"`` (the release: one noise scalar per policy call shared by every action
    dimension and batch row, both critics built from the same seed -- identical, so they stay one Q
    network in effect --, critics initialised by :func:`released_critic_init`, and the critic target's
    temperature one update behind, as the release's ``self.alpha``), or ``"textbook"`` (per-element noise,
    independently initialised critics with PyTorch's default initialisation, the current temperature)."""

    def __init__(self, dim: int, p: dict, gen: torch.Generator, device: torch.device, capacity: int):
        self.dim, self.p, self.gen, self.dev = dim, p, gen, device
        self.faithful = p.get("agent", "faithful") == "faithful"
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.actor = _MLP(dim, p["hidden"], 2 * dim).to(device)
            qs = []
            for _ in range(2):
                if self.faithful:
                    torch.manual_seed(seed)                 # the release seeds every network identically
                q = _MLP(2 * dim, p["hidden"], 1)
                qs.append((released_critic_init(q) if self.faithful else q).to(device))
            self.q1, self.q2 = qs
        self.q1_t, self.q2_t = _MLP(2 * dim, p["hidden"], 1).to(device), _MLP(2 * dim, p["hidden"], 1).to(device)
        self.q1_t.load_state_dict(self.q1.state_dict())
        self.q2_t.load_state_dict(self.q2.state_dict())
        self.log_alpha = torch.zeros(1, device=device, requires_grad=True)
        self.alpha_critic = torch.ones(1, device=device)  # faithful: the temperature before the last update
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=p["lr_actor"])
        self.opt_q1 = torch.optim.Adam(self.q1.parameters(), lr=p["lr_critic"])
        self.opt_q2 = torch.optim.Adam(self.q2.parameters(), lr=p["lr_critic"])
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=p["lr_actor"])
        self.buf = {k: torch.zeros(capacity, n, device=device) for k, n in
                    (("s", dim), ("a", dim), ("r", 1), ("s2", dim), ("done", 1))}
        self.size, self.pos, self.capacity = 0, 0, capacity

    def policy(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled action and its log-probability (summed over dimensions, tanh-corrected)."""
        mu, log_std = self.actor(s).chunk(2, dim=1)
        std = log_std.clamp(-20, 2).exp()
        shape = () if self.faithful else mu.shape           # faithful: one scalar for the whole call
        eps = torch.randn(shape, generator=self.gen).to(mu.device).expand_as(mu)
        u = mu + std * eps
        a = torch.tanh(u)
        logp = (-0.5 * eps.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(1, keepdim=True)
        return a, logp - torch.log(1 - a.pow(2) + 1e-6).sum(1, keepdim=True)

    def act(self, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.policy(s)[0]

    def store(self, s, a, r, s2, done) -> None:
        for k, v in (("s", s), ("a", a), ("r", r), ("s2", s2), ("done", done)):
            self.buf[k][self.pos] = v
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def learn(self) -> None:
        if self.size <= self.p["sac_batch"]:
            return
        idx = torch.randint(self.size, (self.p["sac_batch"],), generator=self.gen).to(self.dev)
        s, a, r, s2, done = (self.buf[k][idx] for k in ("s", "a", "r", "s2", "done"))
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.policy(s2)
            sa2 = torch.cat([s2, a2], 1)
            alpha_t = self.alpha_critic if self.faithful else alpha
            q_next = torch.min(self.q1_t(sa2), self.q2_t(sa2)) - alpha_t * logp2
            target = r + self.p["gamma"] * (1 - done) * q_next
        sa = torch.cat([s, a], 1)
        for q, opt in ((self.q1, self.opt_q1), (self.q2, self.opt_q2)):
            loss = 0.5 * F.mse_loss(q(sa), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        a_new, logp = self.policy(s)
        alpha_loss = -(self.log_alpha * (logp.detach() - self.dim)).mean()
        self.opt_alpha.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.opt_alpha.step()
        self.alpha_critic = alpha
        actor_loss = (alpha * logp - self.q1(torch.cat([s, a_new], 1))).mean()
        self.opt_actor.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.opt_actor.step()
        tau = self.p["tau"]
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
                for pt, pn in zip(tgt.parameters(), net.parameters()):
                    pt.mul_(1 - tau).add_(tau * pn)


class RLBMI(Attack):
    """RLB-MI (black-box): a SAC agent per identity in the GAN's latent space, the original's reward."""

    name = "rlbmi"
    strength = 40
    access = "black-box"
    prior_kinds = ("gan",)
    defaults: dict[str, Any] = {
        "episodes": 40000, "max_step": 1, "alpha": 0.0, "hidden": 256, "gamma": 0.99, "tau": 0.01,
        "buffer": 1000000, "sac_batch": 256, "lr_actor": 5e-4, "lr_critic": 5e-4, "w_state": 2.0,
        "w_action": 2.0, "w_margin": 8.0, "batch_size": 60, "max_queries": 0, "agent": "faithful",
    }
    presets = {"quick": {"episodes": 100, "hidden": 64, "sac_batch": 32, "batch_size": 50}}

    def validate(self) -> None:
        super().validate()
        p = self.params
        for k in ("episodes", "max_step", "hidden", "buffer", "sac_batch"):
            if p[k] < 1:
                raise ArgumentError(f"attack '{self.name}': '{k}' must be >= 1, got {p[k]}")
        if p["agent"] not in ("faithful", "textbook"):
            raise ArgumentError(f"attack '{self.name}': 'agent' must be 'faithful' (the released SAC) or 'textbook', "
                                f"got {p['agent']!r}")
        if p["alpha"] > 1 or p["tau"] > 1 or p["gamma"] > 1:
            raise ArgumentError(f"attack '{self.name}': 'alpha', 'tau' and 'gamma' must be in [0, 1]")

    def steps_per_batch(self) -> int:
        return int(self.params["episodes"])

    def init_latents(self, oracle, ids, prior, gen):
        return {}

    def _query(self, oracle, G, z: torch.Tensor, eraser) -> torch.Tensor:
        with torch.no_grad():
            return oracle(self.to_target(G(z).clamp(0, 1), eraser)).float().to(z.device)

    def _episode(self, agent: SACAgent, oracle, G, y: torch.Tensor, eraser) -> float:
        p = self.params
        z = torch.randn(1, agent.dim, generator=agent.gen).to(agent.dev)
        reward = 0.0
        for t in range(p["max_step"]):
            a = agent.act(z)
            z2 = p["alpha"] * z + (1 - p["alpha"]) * a
            r = rlbmi_reward(self._query(oracle, G, z2, eraser), self._query(oracle, G, a, eraser), y,
                             (p["w_state"], p["w_action"], p["w_margin"]))
            done = torch.ones(1) if t == p["max_step"] - 1 else torch.zeros(1)
            agent.store(z[0], a[0], r, z2[0], done)
            agent.learn()
            z, reward = z2, float(r)
        return reward

    def _test(self, agent: SACAgent, oracle, G, y: torch.Tensor, eraser) -> tuple[torch.Tensor, torch.Tensor, float]:
        """A fresh z through the current policy; its image, latent and p_y (one query)."""
        z = torch.randn(1, agent.dim, generator=agent.gen).to(agent.dev)
        for _ in range(self.params["max_step"]):
            z = self.params["alpha"] * z + (1 - self.params["alpha"]) * agent.act(z)
        with torch.no_grad():
            x = G(z).clamp(0, 1)
            score = float(oracle(self.to_target(x, eraser)).float()[0, int(y)])
        return x, z, score

    def invert(self, oracle, ids, prior, state, gen, eraser, log, tick):
        p, G = self.params, prior["gan"].generator
        dev = ids.device
        E = p["episodes"]
        ticker = Ticker(tick, E, E * len(ids))
        curve = torch.zeros(E)
        imgs, zs, scores, hist = [], [], [], []
        for i in range(len(ids)):
            y = ids[i:i + 1]
            agent = SACAgent(int(G.z_dim), p, gen, dev, min(p["buffer"], E * p["max_step"]))
            best, best_x, best_z, trace = -1.0, None, None, []
            for e in range(E):
                curve[e] -= self._episode(agent, oracle, G, y, eraser)
                x, z, score = self._test(agent, oracle, G, y, eraser)
                if score >= best:                       # the TEST image's own confidence decides
                    best, best_x, best_z = score, x, z
                trace.append(best)
                ticker.step()
            imgs.append(best_x)
            zs.append(best_z)
            scores.append(best)
            hist.append(trace)
        for v in curve / len(ids):
            log(float(v))
        self.extra_meta.setdefault("best_test_confidence", []).extend(scores)
        return {"images": torch.cat(imgs), "z": torch.cat(zs), "best_trace": hist}

    def final_selection(self, oracle, ids, prior, state, gen):
        state["latents"] = state["z"].detach().float().cpu()
        return state["images"]


register_attack(RLBMI)
