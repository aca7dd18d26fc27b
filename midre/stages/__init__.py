"""The stages of a run, one module per step of the data flow, and the compositions that run them.

    context    RunContext: the config, the plan (stage keys), the run record and the data every stage reads
    data       the private / public splits (loaded into the context, checked before anything trains)
    models     backbones, the evaluation model and the targets (trained, or installed from the zoo)
    priors     GAN priors / augmented models, trained on public data only
    attacks    the attacks and the metrics of their reconstructions
    results    the results table (typed rows), the validity gates, the feature analysis and the report

:func:`pipeline_stages` is ``midre run`` for one seed; :func:`instrument_stages` is what ``midre zoo build``
builds.  Both are lists of :class:`midre.engine.Stage` run by :func:`midre.engine.run_stages`.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..engine import Stage, run_stages
from .attacks import attack_stages, metric_stages
from .context import RunContext
from .data import data_stage
from .models import model_stages
from .priors import prior_stage, prior_stages
from .results import report_stages

__all__ = ["RunContext", "pipeline_stages", "instrument_stages", "instrument_names", "build_instrument"]


def pipeline_stages(ctx: RunContext) -> list[Stage]:
    """Every stage of one seed's run, in the order the data flows."""
    return [data_stage(ctx), *model_stages(ctx), *prior_stages(ctx), *attack_stages(ctx), *metric_stages(ctx),
            *report_stages(ctx)]


def instrument_stages(ctx: RunContext, names: Sequence[str]) -> list[Stage]:
    """Data + the given target-independent stages (backbones, ``eval``, shared priors): ``midre zoo build``."""
    by_name = {s.name: s for s in model_stages(ctx, targets=False)}
    return [data_stage(ctx)] + [by_name[n] if n in by_name else prior_stage(ctx, n) for n in names]


def instrument_names(ctx: RunContext) -> list[str]:
    """The target-independent stages: backbones, the evaluation model, the shared GAN prior(s)."""
    return ([f"backbones/{b}" for b in ctx.cfg.backbones] + ["eval"]
            + [p for p, (_k, t) in ctx.plan.prior_units.items() if t is None])


def build_instrument(ctx: RunContext, names: Sequence[str]) -> None:
    """Run data + the given target-independent stages into ``ctx.run_dir``, never reading the zoo (they are
    what ``midre zoo build`` makes)."""
    ctx.use_zoo = False
    state = ctx.open()
    state.save()
    run_stages(instrument_stages(ctx, names), state, ctx.console)
    state.save(status="complete")
