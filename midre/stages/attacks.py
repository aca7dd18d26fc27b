"""The attack stages (reconstructions of each attacked identity, per target) and the metric stages
(attack accuracy by the evaluation model, KNN distance, FID, ... of those reconstructions)."""
from __future__ import annotations

import shutil

from ..attacks import build_attack
from ..attacks.base import Reconstructions, adaptive_eraser_from_meta
from ..attacks.highres import resolve_preset
from ..attacks.masked import give_masked_private
from ..config import AttackSection, TargetSection
from ..engine import Stage
from ..errors import MidreError
from ..metrics import evaluate_reconstructions
from ..utils import atomic_write_json, derive_seed, seed_everything
from .context import RunContext
from .priors import build_prior


def attack_stages(ctx: RunContext) -> list[Stage]:
    out = []
    for a in ctx.cfg.attacks:
        for t in ctx.cfg.attack_targets(a):
            priors = tuple(ctx.plan.attack_priors[(a.key, t.name)].values())
            out.append(Stage(f"attacks/{t.name}/{a.key}", lambda a=a, t=t: run_attack(ctx, a, t),
                             lambda a=a, t=t: _attack_label(ctx, a, t), key=ctx.keys[f"attacks/{t.name}/{a.key}"],
                             needs=(f"targets/{t.name}", *priors)))
    return out


def _attack_label(ctx: RunContext, a: AttackSection, t: TargetSection) -> str:
    n = len(ctx.data.ids[a.key]) if ctx.data is not None else "?"
    return f"attack {a.key} -> {t.name} ({n} identities x {a.repeats})"


def metric_stages(ctx: RunContext) -> list[Stage]:
    return [Stage(f"metrics/{t.name}/{a.key}", lambda a=a, t=t: evaluate_attack(ctx, a, t),
                  f"evaluate {a.key} -> {t.name}", key=ctx.keys[f"metrics/{t.name}/{a.key}"],
                  needs=(f"attacks/{t.name}/{a.key}", "eval"),
                  artefact=ctx.run_dir / "attacks" / t.name / a.key / "metrics.json")
            for a in ctx.cfg.attacks for t in ctx.cfg.attack_targets(a)]


def run_attack(ctx: RunContext, a: AttackSection, t: TargetSection) -> dict:
    tdir = ctx.run_dir / "targets" / t.name
    target, tmeta = ctx.load(tdir)
    units = ctx.plan.attack_priors[(a.key, t.name)]
    priors = {kind: build_prior(ctx, pname, load_only=True) for kind, pname in units.items()}
    eraser = adaptive_eraser(tmeta) if a.adaptive else None
    if hasattr(eraser, "bind"):      # Trap-MID: the trapdoor-aware attacker's signatures
        eraser.bind(target, ctx.data.prior_public)
    preset = resolve_preset(a.name, a.preset, ctx.cfg.dataset.name)   # plain 'paper': the dataset's preset
    attack = build_attack(a.name, **({"preset": preset} if preset else {}), **a.params)
    if attack.params.get("target_resolution") == 0:      # StyleGAN attacks: images at the target's size
        attack.params["target_resolution"] = int(ctx.data.splits.resolution)
    give_masked_private(attack, priors, ctx.data.train_set, ctx.data.ids[a.key])   # SecretGen: hole zeroed
    seed = derive_seed(ctx.cfg.seed, "attack", a.key)
    seed_everything(seed)
    adir = ctx.run_dir / "attacks" / t.name / a.key
    rec = attack.run(target, ctx.data.ids[a.key], a.repeats, prior=priors, seed=seed, progress=ctx.progress,
                     adaptive_eraser=eraser, target_path=str(tdir / "model.safetensors"), device=ctx.device,
                     resume_dir=adir / "partial")
    rec.meta["eval"] = str(ctx.run_dir / "eval" / "model.safetensors")
    rec.meta["target_name"] = t.name
    rec.meta["attack_key"] = a.key
    rec.meta["adaptive_requested"] = a.adaptive
    rec.save(adir)
    shutil.rmtree(adir / "partial", ignore_errors=True)     # finished chunks of an interrupted attack
    return {"seconds_attack": rec.meta.get("seconds"), "queries": rec.meta.get("queries")}


def evaluate_attack(ctx: RunContext, a: AttackSection, t: TargetSection) -> dict:
    adir = ctx.run_dir / "attacks" / t.name / a.key
    rec = Reconstructions.load(adir)
    target = ctx.load(ctx.run_dir / "targets" / t.name)[0]
    m = ctx.cfg.metrics
    seed = derive_seed(ctx.cfg.seed, "metrics", a.key, t.name)
    seed_everything(seed)
    out = evaluate_reconstructions(
        rec, ctx.eval_model(), ctx.data.train_set, ctx.data.test_set, target_model=target, fid=m.fid != "none",
        fid_extractor=m.inception_weights if m.fid == "inception" else None, n_boot=m.n_boot, seed=seed,
        batch_size=m.batch_size, device=ctx.device, progress=ctx.progress)
    out.update({"target": t.name, "attack_key": a.key})
    atomic_write_json(adir / "metrics.json", out)
    return {}


def adaptive_eraser(tmeta: dict):
    """The target's own eraser (paper D.5); None when its defense erases nothing (then: a normal attack)."""

    try:
        return adaptive_eraser_from_meta(tmeta)
    except MidreError:
        return None
