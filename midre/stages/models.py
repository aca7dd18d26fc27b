"""The model stages: pretrained backbones, the evaluation model and the targets, trained by the one training
loop (midre.training) or installed, verified, from the zoo when the zoo holds this stage's config and data."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import priors as P  # module attributes, looked up at call time (tests stand in for them)
from .. import zoo
from ..config import TargetSection
from ..defenses import build_defense
from ..distributed import world
from ..engine import Stage
from ..models import create_model
from ..stopping import budget_of, early_stop_of
from ..training import train_classifier
from ..utils import derive_seed, seed_everything
from .context import RunContext
from .data import pool_sets


def model_stages(ctx: RunContext, targets: bool = True) -> list[Stage]:
    """Backbones, the evaluation model and (``targets``) every target, in config order."""
    cfg, keys = ctx.cfg, ctx.keys
    out = [Stage(f"backbones/{n}", lambda n=n: train_backbone(ctx, n),
                 f"backbone {n} ({b.arch}, pretrained on the {b.pool} pool)", key=keys[f"backbones/{n}"],
                 needs=("data",)) for n, b in cfg.backbones.items()]
    out.append(Stage("eval", lambda: train_eval(ctx), f"evaluation model {cfg.eval_model.arch}", key=keys["eval"],
                     needs=("data", *_init_needs(ctx.plan.eval_train))))
    if targets:
        out += [Stage(f"targets/{t.name}", lambda t=t: train_target(ctx, t),
                      f"target {t.name} ({cfg.target_arch(t)}, defense {defense_label(t)})",
                      key=keys[f"targets/{t.name}"],
                      needs=("data", *_init_needs(ctx.plan.train_cfgs[t.name]), *_reference_needs(t)))
                for t in ctx.targets]
    return out


def _init_needs(train: dict) -> tuple[str, ...]:
    init = train.get("init")
    return (f"backbones/{init[4:]}",) if init and init.startswith("zoo:") else ()


def _reference_needs(t: TargetSection) -> tuple[str, ...]:
    refs = [t.epochs_from, t.stop_early.of if t.stop_early else None]
    return tuple(f"targets/{r}" for r in refs if r)


def defense_label(t: TargetSection) -> str:
    """The defense as the user wrote it (name + given parameters)."""
    def one(s: Any) -> str:
        if isinstance(s, dict):
            params = ", ".join(f"{k}={v}" for k, v in s.items() if k != "name")
            return str(s.get("name")) + (f"({params})" if params else "")
        return str(s)

    return " + ".join(one(s) for s in t.defense) if isinstance(t.defense, list) else one(t.defense)


# ----------------------------------------------------------------------------- stage bodies
def backbone_pool(ctx: RunContext, bname: str) -> tuple[Any, Any, int]:
    """(train, test, classes) of a backbone's pretraining pool, built once per run."""
    key = f"pool/{bname}"
    if key not in ctx.cache:
        b = ctx.cfg.backbones[bname]
        ctx.cache[key] = pool_sets(ctx.data.splits, ctx.cfg.dataset.name, b.pool, b.pool_options, bname,
                                   derive_seed(ctx.plan.data_seed, "pool-holdout"))
    return ctx.cache[key]


def train_backbone(ctx: RunContext, bname: str) -> dict:
    b = ctx.cfg.backbones[bname]
    out = ctx.run_dir / "backbones" / bname
    train, test, k = backbone_pool(ctx, bname)
    hit = from_zoo(ctx, f"backbones/{bname}", out, train)
    if hit is not None:
        return hit
    world().send((ctx.cfg.seed, "backbone", bname))   # ranks > 0 train it too
    seed = derive_seed(b.seed, "backbone", bname)
    seed_everything(seed)
    model = create_model(b.arch, num_classes=k, resolution=ctx.data.splits.resolution, **b.model_kwargs)
    tcfg = {**ctx.plan.backbone_train[bname], "seed": seed, "device": str(ctx.device)}
    res = train_classifier(model, train, test, config=tcfg, out_dir=out, progress=ctx.progress,
                           meta={"role": "backbone", "pool": b.pool, "model_kwargs": dict(b.model_kwargs),
                                 "dataset": ctx.data.meta, "pool_images": len(train) + len(test)},
                           description=f"backbone {bname} ({b.pool} pool)")
    hist = res.history[-1] if res.history else {}
    return {"source": "trained", "test_acc": res.test_acc, "train_acc": hist.get("train_acc"), "pool_classes": k}


def train_eval(ctx: RunContext) -> dict:
    hit = from_zoo(ctx, "eval", ctx.run_dir / "eval", ctx.data.train_set)
    if hit is not None:
        return hit
    e = ctx.cfg.eval_model
    return _train(ctx, ctx.run_dir / "eval", e.arch, e.model_kwargs, None, ctx.plan.eval_train, "eval",
                  {"role": "eval"}, f"eval {e.arch}")


def train_target(ctx: RunContext, t: TargetSection) -> dict:
    defense = build_defense(json.loads(json.dumps(ctx.plan.def_specs[t.name])))
    arch = ctx.cfg.target_arch(t)
    train = ctx.plan.train_cfgs[t.name]
    if t.epochs_from:     # the paper's rule: the converged reference's kept epochs and LR drops

        train = budget_of(train, ctx.run_dir / "targets" / t.epochs_from / "model.json")
    if t.stop_early:      # a NoDef curve point: the reference's training stopped at a share of its accuracy

        train = early_stop_of(train, ctx.run_dir / "targets" / t.stop_early.of / "model.json",
                              t.stop_early.val_fraction)
    # every target shares one seed: same initialisation and batch order -> paired comparisons
    return _train(ctx, ctx.run_dir / "targets" / t.name, arch, ctx.cfg.target_model_kwargs(t), defense, train,
                  "targets", {"role": "curve" if t.curve else "target", "target": t.name}, f"{t.name} {arch}",
                  public=ctx.data.public_set)


def _train(ctx: RunContext, out: Path, arch: str, kwargs: dict, defense: Any, train: dict, seed_key: str,
           meta: dict, description: str, public: Any = None) -> dict:
    world().send((ctx.cfg.seed, meta.get("role"), meta.get("target")))   # ranks > 0 train it too
    seed = derive_seed(ctx.plan.eval_seed if seed_key == "eval" else ctx.cfg.seed, seed_key)
    seed_everything(seed)
    splits = ctx.data.splits
    model = create_model(arch, num_classes=splits.num_classes, resolution=splits.resolution, **kwargs)
    init = train.get("init")
    if init and init.startswith("zoo:"):   # this run's copy of that backbone (from the zoo or trained here)
        init = str(ctx.run_dir / "backbones" / init[4:] / "model.safetensors")
    tcfg = {**train, "seed": seed, "device": str(ctx.device), "init": init}
    res = train_classifier(model, ctx.data.train_set, ctx.data.test_set, defense=defense, config=tcfg, out_dir=out,
                           public_set=public, meta={"dataset": ctx.data.meta, "model_kwargs": dict(kwargs),
                                                    "class_names": list(splits.class_names), **meta},
                           progress=ctx.progress, description=description)
    return {"test_acc": res.test_acc, "defense_report": res.defense_report}


def from_zoo(ctx: RunContext, stage: str, dest: Path, data: Any,
             prior_dir: Callable[[], str] | None = None) -> dict | None:
    """Install the zoo entry made by this stage's config and data, if there is one (verified).

    The same images rendered on another machine may differ from the build's by float rounding: the entry
    then matches by its data summary, and a prior's cache directory (``prior_dir()``, named after the data
    fingerprint) is installed under this machine's name so that the attacks find it."""

    if not ctx.use_zoo or data is None:   # no data (a converted generator): nothing the zoo could match
        return None
    key = ctx.keys[stage]
    same = zoo.same_config(stage, key)
    if not same:                          # no entry for this config: nothing to hash
        return None
    rec = ctx.state.stages.setdefault(stage, {})
    fp = P.data_fingerprint(data)
    hit = zoo.find(stage, key, fp) or zoo.find(stage, key, fp, summary=P.data_summary(data))   # exact first
    if hit is None:                       # say why a long training starts although the zoo has the config
        rec["zoo_not_used"] = f"{', '.join(same)} has this stage's config but was built on other data"
        ctx.state.save()
        ctx.console.print(f"[yellow]    not from the zoo: {rec['zoo_not_used']}; training it here[/yellow]")
        return None
    rec.pop("zoo_not_used", None)
    name, entry = hit
    exact = entry.get("data_fingerprint") == fp
    zoo.install(name, entry, dest, folder=prior_dir() if prior_dir else None)
    how = "" if exact else "; the images equal the build's within float rounding"
    ctx.console.print(f"[dim]    from the zoo: {name} (sha256 verified{how})[/dim]")
    figs = entry.get("figures", {})
    return {"source": f"zoo:{name}", "data_match": "exact" if exact else "within rounding",
            **{k: figs[k] for k in ("test_acc", "train_acc", "pool_classes") if k in figs}}


def stage_data(ctx: RunContext, stage: str) -> Any:
    """The images a target-independent stage trains on (its zoo entry's data fingerprint)."""
    if stage.startswith("backbones/"):
        return backbone_pool(ctx, stage.split("/", 1)[1])[0]
    return ctx.data.train_set if stage == "eval" else ctx.data.prior_public
