"""What every prior kind declares (:class:`PriorKind`), the registry ``PRIORS`` and the trained :class:`Prior`.

A prior kind is one file in this package (or a plugin, entry-point group ``midre.priors``): a
:class:`PriorKind` subclass decorated with :func:`register_prior`.  It states once

* ``name`` (what attacks list in ``prior_kinds`` and configs key ``priors.params`` by),
* ``needs_target``: trained per target (it queries the target on public images) or shared by all targets,
* ``presets`` and ``config_model``: its hyper-parameters and their validation (:meth:`PriorKind.config`),
* :meth:`PriorKind.train`: how it trains from public images (and the target, when it needs one),
* :meth:`PriorKind.load`: how it is rebuilt from its checkpoint (``prior.json`` + ``prior.safetensors``),
* :meth:`PriorKind.quality` and ``quality_gate``: how its sample quality is measured, and whether the
  validity gate reads it (midre.gates),
* :meth:`PriorKind.zoo_entry`: the name of its zoo entry (``midre zoo build``); its cache folder is
  ``<kind>-<key>`` with :func:`prior_key` (kind, public data, target weights, config, seed).

The pipeline, the plan, the config checks, the audit, the gates and the zoo look kinds up here; nothing
outside this package names a kind.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..checkpoint import read_json_record
from ..errors import ArgumentError, CheckpointError, did_you_mean
from ..gan_state import load_module, load_safetensors
from ..models.generators import build_gan_module
from ..registry import Registry
from ..utils import atomic_path, atomic_write_json, config_hash, model_fingerprint
from .data import data_fingerprint

PRIOR_FORMAT = "midre-prior"
PRESETS = ("paper", "quick")     # every kind has both (a kind may refuse one, e.g. stylegan2's paper without path)

PRIORS: Registry[type] = Registry("prior kind", group="midre.priors")


class PriorConfig(BaseModel):
    """Hyper-parameters of the DCGAN-family and LOMMA priors (fields a kind does not use are ignored by it)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(50000, ge=0)        # generator steps (GANs)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = Field(5, ge=1)              # discriminator steps per generator step
    gp_weight: float = Field(10.0, ge=0)         # WGAN-GP
    z_dim: int = Field(100, ge=1)
    width: int = Field(64, ge=4)
    topk: int = Field(30, ge=1)                  # cgan: public images per class by pseudo-label
    alpha: float = Field(0.2, ge=0)              # cgan: weight of the target's inversion loss
    g_width: int | None = Field(None, ge=4)      # cgan: the generator's width when not `width` (paper: 128)
    aug_archs: list[str] = ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"]   # lomma
    aug_kwargs: dict[str, Any] = {}              # lomma: constructor options of the augmented models
    distill_epochs: int = Field(20, ge=0)
    distill_lr: float = Field(0.01, gt=0)
    n_feature_images: int = Field(5000, ge=1)    # lomma: public images for p_reg
    hflip: bool = True
    ckpt_every: int = Field(500, ge=1)


def prior_key(kind: str, public_set: Any, target: nn.Module | None, cfg: BaseModel, seed: int) -> str:
    """The cache key of a prior: its kind, public data (image bytes), target weights, resolved config, seed."""
    dump = cfg.model_dump()
    for late in ("aug_kwargs", "g_width"):   # added later: an unset value keeps the keys of earlier priors (the zoo's)
        if not dump.get(late):
            dump.pop(late, None)
    return config_hash({"kind": kind, "public": data_fingerprint(public_set), "target": model_fingerprint(target),
                        "config": dump, "seed": int(seed), "version": _kind_version(kind)})


def _kind_version(kind: str) -> int:
    return int(getattr(PRIORS.get(kind), "version", 1)) if kind in PRIORS else 1


# ================================================================================ the prior object
@dataclass
class Prior:
    """A trained prior: generator / discriminator (GAN kinds), augmented models + p_reg (lomma)."""

    kind: str
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None
    aug_models: list[nn.Module] = field(default_factory=list)
    p_reg: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim) if self.generator is not None else 0

    def to(self, device: Any) -> Prior:
        for m in self.modules():
            m.to(device).eval()
        if self.p_reg is not None:
            self.p_reg = self.p_reg.to(device)
        return self

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.generator, self.discriminator, *self.aug_models) if m is not None]

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.generator is not None:
            out.update({f"G.{k}": v for k, v in self.generator.state_dict().items()})
        if self.discriminator is not None:
            out.update({f"D.{k}": v for k, v in self.discriminator.state_dict().items()})
        for i, m in enumerate(self.aug_models):
            out.update({f"aug{i}.{k}": v for k, v in m.state_dict().items()})
        if self.p_reg is not None:
            out["p_reg"] = self.p_reg
        return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        with atomic_path(out / "prior.safetensors") as tmp:
            save_file(self.state(), str(tmp), metadata={"format": PRIOR_FORMAT})
        atomic_write_json(out / "prior.json", {"format": PRIOR_FORMAT, "kind": self.kind, **self.meta})

    @classmethod
    def load(cls, out_dir: str | Path) -> Prior:
        """Read a prior directory; its kind (registered) rebuilds the networks (:meth:`PriorKind.load`)."""
        out = Path(out_dir)
        js, st = out / "prior.json", out / "prior.safetensors"
        if not js.exists() or not st.exists():
            raise CheckpointError(f"no trained prior in '{out}'; train it with `midre attack` (it trains priors) "
                                  "or midre.priors.train_prior")
        meta = read_json_record(js, f"'{js}' is corrupt; delete '{out}' to retrain the prior",
                                f"'{js}' is not a midre prior; delete it or choose another --prior-dir",
                                lambda m: m.get("format") == PRIOR_FORMAT)
        state = load_safetensors(st)
        kind = get_prior(meta["kind"])
        prior = kind.load({k: v for k, v in meta.items() if k not in ("format", "kind")}, state, st)
        return prior.to("cpu")


# ================================================================================ the kind protocol
class PriorKind:
    """One kind of attack prior (subclass it in one file and decorate with :func:`register_prior`)."""

    name: ClassVar[str] = ""
    needs_target: ClassVar[bool] = True          # trained per target; False: one prior shared by all targets
    quality_gate: ClassVar[bool] = False         # the validity gate reads its sample quality (midre.gates)
    config_model: ClassVar[type[BaseModel]] = PriorConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "quick": {}}
    # raised when the kind's training (``version``) or a preset's contents (``preset_versions``) change in a way
    # its config does not show: the prior's cache key and the run's prior stage key change with them
    version: ClassVar[int] = 1
    preset_versions: ClassVar[dict[str, int]] = {}

    @classmethod
    def stage_version(cls, preset: str) -> list[int] | None:
        """What a run's prior stage key adds for this kind and preset (None while both are 1: keys unchanged)."""
        v = [cls.version, cls.preset_versions.get(preset, 1)]
        return None if v == [1, 1] else v

    # ---------------------------------------------------------------- configuration
    def config(self, preset: str = "paper", overrides: Any = None) -> BaseModel:
        """The preset plus overrides (a dict or a config model), validated: one-line ArgumentError."""
        if preset not in self.presets:
            raise ArgumentError(f"unknown prior preset '{preset}'{did_you_mean(preset, self.presets)}; choose one "
                                f"of: {', '.join(sorted(self.presets))}")
        over = overrides.model_dump(exclude_unset=True) if isinstance(overrides, BaseModel) else dict(overrides or {})
        allowed = list(self.config_model.model_fields)
        for k in over:
            if k not in allowed:
                raise ArgumentError(f"{self.name} prior config has no key '{k}'{did_you_mean(k, allowed)}; "
                                    f"keys: {', '.join(allowed)}")
        try:
            return self.config_model(**{**self.presets[preset], **over})
        except ValidationError as e:
            err = e.errors()[0]
            raise ArgumentError(f"{self.name} prior config '{'.'.join(str(p) for p in err['loc'])}': "
                                f"{err['msg']}") from None

    def check_run(self, params: Mapping[str, Any], attack: str | None, real_data: bool) -> str | None:
        """A run-level problem with this kind's ``priors.params`` (None: none).  ``attack``: the first attack
        of the run that needs this kind (None: no attack does); ``real_data``: the dataset needs a root."""
        return None

    def uses_public_data(self, params: Mapping[str, Any]) -> bool:
        """False when these settings train nothing on public images (e.g. converted weights)."""
        return True

    # ---------------------------------------------------------------- training and loading
    def pretrained(self, cfg: BaseModel) -> Prior | None:
        """A prior given ready-made by its settings (nothing trained, no public data); None: train one."""
        return None

    def train(self, cfg: BaseModel, data: Any, target: nn.Module | None, root: Path, gen: torch.Generator,
              progress: bool, until: int | None, meta: dict[str, Any]) -> tuple[Prior, dict[str, Any], bool]:
        """Train on ``data`` (:class:`midre.priors.data.PublicImages`, PUBLIC images on the device).

        Write the resume state under ``root`` (continue from it when present); record in ``meta`` what
        :meth:`load` needs to rebuild the networks.  Returns (prior, extra metadata, whether it finished);
        ``until`` stops early (generator iterations, or the kind's own unit) for time-boxed runs."""
        raise NotImplementedError

    def load(self, meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> Prior:
        """Rebuild a prior from its metadata (``prior.json``) and tensors: the generator / discriminator
        recorded by :meth:`train` as ``{"class", "config"}`` (:func:`midre.models.generators.build_gan_module`)."""
        prior = Prior(self.name, meta=meta)
        for role, prefix in (("generator", "G."), ("discriminator", "D.")):
            spec = meta.get(role)
            if spec:
                setattr(prior, role, load_module(build_gan_module(spec["class"], spec["config"]), state, prefix, where))
        return prior

    # ---------------------------------------------------------------- quality and zoo name
    def quality(self, prior: Prior, holdout: Any, public_set: Any, seed: int, device: Any) -> dict | None:
        """Sample quality on held-out public images (:func:`midre.prior_quality.prior_quality`); None when the
        prior has no generator."""
        from ..prior_quality import prior_quality

        return prior_quality(prior, holdout, public_set, seed=int(seed), device=device)

    def zoo_entry(self, config_name: str, target: str | None = None) -> str:
        """The zoo entry of this kind's prior in a config (only shared priors are in the zoo)."""
        return f"{config_name}-prior-{self.name}" + (f"-{target}" if target else "")


def register_prior(cls: type) -> type:
    """Class decorator: register a :class:`PriorKind` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, PriorKind)) or not cls.name:
        raise TypeError(f"{cls!r} is not a PriorKind subclass with a name")
    return PRIORS.register(cls.name, needs_target=cls.needs_target)(cls)


def get_prior(kind: str) -> PriorKind:
    """The registered prior kind ``kind`` (ArgumentError with did-you-mean when it is not registered)."""
    if kind not in PRIORS:
        names = PRIORS.names()
        raise ArgumentError(f"unknown prior kind '{kind}'{did_you_mean(kind, names)}; choose one of: "
                            f"{', '.join(names)}")
    return PRIORS.get(kind)()
