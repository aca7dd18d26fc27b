"""The prior stages: what the attacks need of public data (GANs, augmented models), trained on public
identities only; a per-target prior (KedMI's GAN, PLG-MI's cGAN, LOMMA's augmented models) also sees its
target.  A prior shared by all targets may come from the zoo."""
from __future__ import annotations

from typing import Any

from .. import priors as P
from ..engine import Stage
from ..utils import seed_everything
from .context import RunContext
from .data import assert_public_only
from .models import from_zoo


def prior_stages(ctx: RunContext) -> list[Stage]:
    return [prior_stage(ctx, p) for p in ctx.plan.prior_units]


def prior_stage(ctx: RunContext, pname: str) -> Stage:
    kind, tname = ctx.plan.prior_units[pname]
    return Stage(pname, lambda: build_prior(ctx, pname),
                 f"prior {kind}" + (f" for {tname}" if tname else "") + " (public data only)", key=ctx.keys[pname],
                 needs=("data",) + ((f"targets/{tname}",) if tname else ()))


def prior_options(ctx: RunContext, kind: str) -> dict:
    """The preset and params of a prior kind, as the config gives them."""
    return {"preset": ctx.cfg.priors.preset or "paper", "params": dict(ctx.cfg.priors.params.get(kind, {}))}


def build_prior(ctx: RunContext, pname: str, load_only: bool = False) -> Any:
    """Train the prior ``pname`` (or, ``load_only``, load the one already trained): the loaded prior, the zoo
    entry's record when installed from the zoo, else None."""

    kind, tname = ctx.plan.prior_units[pname]
    assert_public_only(ctx)          # every prior the pipeline trains or loads
    target = ctx.load(ctx.run_dir / "targets" / tname)[0] if tname else None
    seed = ctx.plan.prior_seed(kind, tname)
    seed_everything(seed)
    pk = prior_options(ctx, kind)
    public = ctx.data.prior_public
    if tname is None and not load_only:
        def local() -> str:                # train_prior's cache name for this machine's public images
            pcfg = P.prior_config(kind, pk["preset"], pk["params"])
            return f"{kind}-{P.prior_key(kind, public, None, pcfg, seed)}"

        hit = from_zoo(ctx, pname, ctx.run_dir / pname, public, prior_dir=local)
        if hit is not None:
            return hit
    prior = P.train_prior(kind, public, target=target, out_dir=ctx.run_dir / pname, config=pk["params"],
                          preset=pk["preset"], seed=seed, device=ctx.device, holdout=ctx.data.public_holdout,
                          progress=ctx.progress and not load_only)
    return prior if load_only else None
