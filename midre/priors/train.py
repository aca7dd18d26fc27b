"""Train, cache and load priors of any registered kind (:data:`midre.priors.PRIORS`)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel

from ..errors import ArgumentError, DataError, did_you_mean
from ..gan_state import GanResume
from ..utils import derive_seed, frozen, model_fingerprint, resolve_device
from .base import PRIORS, Prior, get_prior, prior_key
from .data import PublicImages, data_fingerprint


def prior_config(kind: str, preset: str = "paper", config: Any = None) -> BaseModel:
    """Resolve a kind's preset plus overrides (dict or config model) into its validated config."""
    return get_prior(kind).config(preset, config)


def _train_fresh(kind: Any, cfg: BaseModel, public_set: Any, target: nn.Module | None, root: Path, preset: str,
                 seed: int, progress: bool, dev: torch.device, until: int | None, holdout: Any,
                 key: str) -> tuple[Prior, bool]:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    data = PublicImages(public_set, dev, cfg.hflip)
    t0 = time.perf_counter()
    with frozen(target.to(dev)) if target is not None else contextlib.nullcontext(), \
            torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        meta: dict[str, Any] = {
            "key": key, "config": cfg.model_dump(), "preset": preset, "seed": int(seed),
            "public_fingerprint": data_fingerprint(public_set), "public_images": len(public_set),
            "target_fingerprint": model_fingerprint(target), "resolution": data.resolution,
            "channels": data.channels,
        }
        prior, extra, complete = kind.train(cfg, data, target, root, gen, progress, until, meta)
        meta.update(extra)
        meta["seconds"] = time.perf_counter() - t0
        meta["complete"] = complete
        if complete and holdout is not None:
            meta["quality"] = kind.quality(prior, holdout, public_set, int(seed), dev)
        prior.meta = meta
    return prior, complete


def train_prior(kind: str, public_set: Any, target: nn.Module | None = None, out_dir: str | Path | None = None,
                config: Any = None, preset: str = "paper", seed: int = 0, progress: bool = False,
                device: Any = "auto", until: int | None = None, holdout: Any = None) -> Prior:
    """Train (or load from the cache in ``out_dir``) a prior of ``kind`` on ``public_set`` only.

    Parameters
    ----------
    kind : a registered prior kind (:data:`midre.priors.PRIORS`: gan, kedmi, cgan, lomma, stylegan2, tacgan,
        c2fmi, plugins).
    public_set : ImageSet of PUBLIC images (labels are ignored).
    target : the target Classifier (needed by per-target kinds; queried on public images only).
    out_dir : cache root; the prior lives in ``out_dir/<kind>-<key>``.  None = no cache, no resume.
    config : dict / config model overriding the preset.
    until : stop after this many generator iterations (lomma: epochs) and return the partly trained state;
        calling again resumes.  For time-boxed runs and resume tests.
    holdout : public images kept OUT of ``public_set``; the prior records its sample quality on them in
        ``meta["quality"]`` (the kind's :meth:`~midre.priors.PriorKind.quality`).
    """
    k = get_prior(kind)
    cfg = k.config(preset, config)
    if k.needs_target and target is None:
        raise ArgumentError(f"the '{kind}' prior is trained per target: pass target=")
    dev = resolve_device(device)
    ready = k.pretrained(cfg)                # e.g. converted weights: nothing trained, no public data needed
    if ready is not None:
        return ready.to(dev)
    if public_set is None or len(public_set) < 2:
        raise DataError("the public set has fewer than 2 images; priors need public images (check --public)")
    key = prior_key(kind, public_set, target, cfg, seed)
    root = Path(out_dir) / f"{kind}-{key}" if out_dir is not None else None
    if root is not None and (root / "prior.json").exists():
        return Prior.load(root).to(dev)
    tmp_root = root
    if tmp_root is None:
        import tempfile

        tmp_root = Path(tempfile.mkdtemp(prefix="midre-prior-"))
    prior, complete = _train_fresh(k, cfg, public_set, target, tmp_root, preset, seed, progress, dev, until,
                                   holdout, key)
    if complete and root is not None:
        prior.save(root)
        GanResume(root).clear()
    if out_dir is None:
        import shutil

        shutil.rmtree(tmp_root, ignore_errors=True)
    return prior.to(dev)


def load_prior(path: str | Path, device: Any = "cpu") -> Prior:
    """Load a prior directory written by :func:`train_prior`."""
    return Prior.load(path).to(resolve_device(device))


def prepare_priors(attack: Any, public_set: Any, target: nn.Module | None, out_dir: str | Path | None = None,
                   preset: str = "paper", seed: int = 0, progress: bool = False, device: Any = "auto",
                   configs: dict[str, Any] | None = None) -> dict[str, Prior]:
    """Train or load every prior an attack needs (``attack.prior_kinds``) -> {kind: Prior}.

    ``configs`` maps a kind to overrides of its preset, e.g. ``{"gan": {"iterations": 100}}``.
    """
    configs = dict(configs or {})
    unknown = [k for k in configs if k not in PRIORS]
    if unknown:
        names = PRIORS.names()
        raise ArgumentError(f"unknown prior kind '{unknown[0]}'{did_you_mean(unknown[0], names)} in the prior "
                            f"configs; choose from: {', '.join(names)}")
    out: dict[str, Prior] = {}
    for kind in attack.prior_kinds:
        needs = get_prior(kind).needs_target
        out[kind] = train_prior(kind, public_set, target if needs else None, out_dir=out_dir,
                                config=configs.get(kind), preset=preset, seed=derive_seed(seed, "prior", kind),
                                progress=progress, device=device)
    return out
