"""The data stage: the private / public splits of one seed, loaded into the context and checked before any
training (attacked identities, public images for the priors, no image shared by public and private)."""
from __future__ import annotations

import time
from typing import Any

import torch

from .. import priors as P  # module attributes, looked up at call time (tests stand in for them)
from ..config import AttackSection, RunConfig
from ..data import base, load_dataset
from ..data.base import TensorImageSet, in_memory
from ..engine import Stage
from ..errors import ConfigError, DataError, MidreError
from ..rundir import peak_rss_mib
from ..utils import derive_seed, parse_id_ranges, seed_everything
from .context import RunContext, RunData


def data_stage(ctx: RunContext) -> Stage:
    d = ctx.cfg.dataset
    return Stage("data", lambda: load_data(ctx), f"data: {d.name}" + (f" from {d.root}" if d.root else "")
                 + f" (seed {ctx.plan.data_seed})")


def load_data(ctx: RunContext) -> None:
    """Load the splits into ``ctx.data`` and record the data stage in run.json."""

    cfg, d = ctx.cfg, ctx.cfg.dataset
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(derive_seed(ctx.plan.data_seed, "data"))
    try:
        splits = load_dataset(d.name, root=d.root, resolution=d.resolution, seed=ctx.plan.data_seed, **d.options)
    except MidreError as e:
        raise type(e)(f"dataset '{d.name}': {e}") from None
    train_set, test_set = in_memory(splits.private_train, ctx.progress), in_memory(splits.private_test, ctx.progress)
    public = in_memory(splits.public, ctx.progress) if len(splits.public) else None
    prior_public, holdout = holdout_split(public, cfg.priors.holdout, derive_seed(ctx.plan.data_seed, "public-holdout"))
    ctx.console.print(f"[dim]    {splits.summary()}[/dim]")
    ids = {a.key: identities(a, splits.num_classes, f"attacks[{i}]") for i, a in enumerate(cfg.attacks)}
    ctx.data = RunData(splits=splits, train_set=train_set, test_set=test_set, public_set=public,
                       prior_public=prior_public, public_holdout=holdout, ids=ids,
                       meta={"name": d.name, "root": d.root, "resolution": splits.resolution,
                             "seed": ctx.plan.data_seed, "options": dict(d.options)})
    # data-dependent checks, before any training
    if cfg.attacks and public is None and not priors_need_no_public(cfg, ctx.plan.prior_units):
        raise ConfigError(f"dataset '{d.name}' has no public images but the attacks need public data for their "
                          "priors; give a public set (dataset.options, e.g. public: ffhq:/path) or drop the attacks")
    if cfg.attacks:
        assert_public_only(ctx)          # refuse before any training, and again for every prior
    if ctx.state is not None:
        rec = ctx.state.stages.setdefault("data", {})
        rec.update({"key": ctx.keys["data"], "status": "done", "summary": splits.summary(),
                    "num_classes": splits.num_classes, "resolution": splits.resolution,
                    "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
                    "cpu_seconds": round(time.process_time() - c0, 3)})
        ctx.state.save()


def identities(a: AttackSection, num_classes: int, where: str) -> list[int]:
    """The identities an attack entry asks for (``all``, the first N, or ranges like ``0-9,20``)."""
    spec = a.identities
    try:
        if spec == "all":
            return list(range(num_classes))
        if isinstance(spec, int):
            if spec > num_classes:
                raise ConfigError(f"{where}.identities asks for the first {spec} identities but the dataset has "
                                  f"{num_classes}; use at most {num_classes}")
            return list(range(spec))
        return parse_id_ranges(spec, num_classes)
    except ConfigError:
        raise
    except MidreError as e:
        raise ConfigError(f"'{where}.identities': {e}") from None


def assert_public_only(ctx: RunContext) -> None:
    """Refuse (DataError, one line) when the public set shares any image with the private splits."""

    data = ctx.data
    try:
        P.assert_public_only(data.public_set, data.train_set, data.test_set)
    except DataError as e:
        n = str(e).split(" shares ", 1)[-1].split(" with", 1)[0]
        raise DataError(f"dataset '{ctx.cfg.dataset.name}': the public set shares {n} with the private "
                        "splits; priors must see public identities only: set dataset.options.public to "
                        "images of other identities") from None


def holdout_split(public: Any, share: float, seed: int) -> tuple[Any, Any]:
    """(images the priors train on, held-out images for their quality figure); a fixed per-data split."""
    if public is None or share <= 0 or not hasattr(public, "subset") or len(public) < 20:
        return public, None
    perm = torch.randperm(len(public), generator=torch.Generator().manual_seed(seed))
    n_out = max(int(round(share * len(public))), 5)
    return public.subset(perm[n_out:].sort().values), public.subset(perm[:n_out].sort().values)


def priors_need_no_public(cfg: RunConfig, units: dict) -> bool:
    """True when no prior of the run trains on public data (e.g. a StyleGAN2 given by ``path``)."""

    return all(not P.get_prior(kind).uses_public_data(cfg.priors.params.get(kind, {})) for kind, _ in units.values())


def pretraining_pool(splits: Any, dataset: str, options: dict, bname: str) -> Any:
    """The dataset family's pretraining pool (midre.data.load_pretraining), or a ``pretrain`` split."""

    if getattr(splits, "pretrain", None) is not None:
        return splits.pretrain
    if str(dataset).lower() not in getattr(base, "PRETRAINING_POOLS", {}):
        return None
    try:
        return base.load_pretraining(dataset, resolution=splits.resolution, **options)
    except MidreError as e:
        raise ConfigError(f"'backbones.{bname}.pool_options': {e}") from None


def pool_sets(splits: Any, dataset: str, pool: str, options: dict, bname: str, seed: int) -> tuple[Any, Any, int]:
    """(train, test, classes) of a backbone's pretraining pool, labels relabelled 0..K-1, 10 % held out."""

    src = pretraining_pool(splits, dataset, options, bname) if pool == "pretrain" else splits.public
    if src is None or len(src) == 0:
        raise ConfigError(f"'backbones.{bname}.pool' is '{pool}' but the dataset has no {pool} images; "
                          + ("use pool: public" if pool == "pretrain" else "give the dataset a public split"))
    ts = in_memory(src, False).to_tensors()
    labels = torch.as_tensor(ts.targets).long()
    if bool((labels < 0).any()):
        raise ConfigError(f"'backbones.{bname}.pool': the {pool} images have no identity labels; a backbone is "
                          "pretrained with cross-entropy on identities")
    uniq, y = torch.unique(labels, return_inverse=True)
    if len(uniq) < 2:
        raise ConfigError(f"'backbones.{bname}.pool': the {pool} pool has fewer than 2 identities")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(len(y) // 10, 1)
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return (TensorImageSet(ts.images[train_idx], y[train_idx]), TensorImageSet(ts.images[test_idx], y[test_idx]),
            int(len(uniq)))
