"""The attack contract: access levels, query oracles, the reconstructions artefact, the Attack base.

An attack declares the access it needs and is handed ONLY that:

===============  =================================================================================
access           what ``invert`` receives as ``access``
===============  =================================================================================
``white-box``    the target :class:`~midre.models.base.Classifier` itself (eval mode, parameters
                 frozen): logits, penultimate features and input gradients.
``black-box``    a :class:`QueryOracle` in ``"probs"`` mode: detached softmax probabilities, no
                 gradient, every queried image counted.
``label-only``   a :class:`QueryOracle` in ``"labels"`` mode: top-1 labels only, counted.
===============  =================================================================================

Asking an oracle for anything else (logits, features, gradients, the model) raises
:class:`AccessError`.

Life cycle of :meth:`Attack.run` (the hooks let later attacks plug in without forking the loop)::

    for repeat r in 0..R-1, for each batch of identities (many identities in one tensor):
        gen      = torch.Generator seeded with derive_seed(seed, attack, r, batch)
        state    = attack.init_latents(access, ids, prior, gen)          # e.g. z ~ N(0, I)
        state    = attack.select_candidates(access, ids, prior, state, gen)   # PPA: keep the best of many
        state    = attack.invert(access, ids, prior, state, gen, eraser, log)  # the optimisation
        images   = attack.final_selection(access, ids, prior, state, gen)     # PPA: pick final samples
    confidence = softmax(target(images))[identity]   (measured by the library, not charged as queries)

* PPA / IF-GMI (StyleGAN): ``init_latents`` samples many w-vectors, ``select_candidates`` keeps the top
  ones by target confidence on {image, flip}, ``invert`` optimises w (or intermediate features, IF-GMI),
  ``final_selection`` ranks by mean confidence over augmentations.  A StyleGAN prior is just another
  ``prior_kinds`` entry.
* MIRROR / RLB-MI (black-box): ``access = "black-box"`` and ``invert`` only calls the oracle (genetic
  search / RL policy over the latent space); the query count lands in ``meta["queries"]``.
* Adaptive attack (MIDRE paper D.5): when ``adaptive_eraser`` is given, every attack applies it to its
  candidate images before each target evaluation (:meth:`Attack.to_target`).  Against a Trap-MID target
  it is a :class:`~midre.defenses.trapmid.TrapdoorAdversary`: attacks with a trapdoor-aware form
  (``trapdoor_aware``: PLG-MI, giving the Trap-MID paper's PLG-MI++) add its ``signature_loss``; the
  others keep only its eraser (``midre+trapmid``), or run unchanged.

``invert`` appends the batch's objective value per iteration through ``log(value)``; the mean curve
over batches is kept in ``meta["loss_curve"]`` (the paper's Fig. D.7 compares these curves).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import tblog
from ..checkpoint import read_json_record
from ..errors import ArgumentError, CheckpointError, MidreError, did_you_mean
from ..registry import Registry
from ..utils import atomic_path, atomic_write_json, derive_seed, frozen, make_progress, model_fingerprint

ACCESS_LEVELS = ("white-box", "black-box", "label-only")
RECON_FORMAT = "midre-reconstructions"


class AccessError(MidreError, PermissionError):
    """An attack asked its oracle for more than its declared access (logits, gradients, the model)."""


# ============================================================================ reconstructions
@dataclass
class Reconstructions:
    """What an attack produces: one image per (identity, repeat), plus the target's confidence.

    Attributes
    ----------
    images : (N, C, H, W) float in [0, 1]
    identity : (N,) long, the attacked class
    repeat : (N,) long, repeat (seed) index 0..R-1
    confidence : (N,) float, the target's softmax probability of ``identity`` for that image
    meta : dict, attack name + params, access, target checkpoint, seeds, queries, seconds, adaptive
    latents : optional (N, ...) float, the latent code of each image (StyleGAN / black-box attacks)
    """

    images: torch.Tensor
    identity: torch.Tensor
    repeat: torch.Tensor
    confidence: torch.Tensor
    meta: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4:
            raise ValueError("Reconstructions.images must be (N, C, H, W)")
        for name in ("identity", "repeat", "confidence"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"Reconstructions.{name} must be a 1-D tensor of length {n}")
        if self.latents is not None and self.latents.shape[0] != n:
            raise ValueError(f"Reconstructions.latents must have {n} rows")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_repeats(self) -> int:
        return int(self.repeat.max().item()) + 1 if len(self) else 0

    def save(self, out_dir: str | Path) -> None:
        """Write ``out_dir/reconstructions.safetensors`` then ``reconstructions.json`` (atomic each)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        tensors = {
            "images": self.images.detach().float().cpu().contiguous(),
            "identity": self.identity.detach().long().cpu().contiguous(),
            "repeat": self.repeat.detach().long().cpu().contiguous(),
            "confidence": self.confidence.detach().float().cpu().contiguous(),
        }
        if self.latents is not None:
            tensors["latents"] = self.latents.detach().float().cpu().contiguous()
        with atomic_path(out / "reconstructions.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": RECON_FORMAT})
        atomic_write_json(out / "reconstructions.json", {"format": RECON_FORMAT, "n": len(self), **self.meta})
        tblog.reconstructions(self, out)   # no-op unless a TensorBoard session is open

    @classmethod
    def load(cls, out_dir: str | Path) -> Reconstructions:
        """Read an artefact written by :meth:`save` (directory, or either of its two files)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        p = Path(out_dir)
        if p.suffix in (".safetensors", ".json"):
            p = p.parent
        st, js = p / "reconstructions.safetensors", p / "reconstructions.json"
        if not st.exists() or not js.exists():
            raise CheckpointError(f"no reconstructions in '{p}' (need reconstructions.safetensors + .json); "
                                  "run `midre attack --out DIR` first")
        meta = read_json_record(js, f"'{js}' is corrupt (not JSON); re-run the attack",
                                f"'{js}' is not a midre reconstructions file; re-run the attack",
                                lambda m: m.get("format") == RECON_FORMAT)
        try:
            t = load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"'{st}' is unreadable ({e}); re-run the attack") from None
        missing = [k for k in ("images", "identity", "repeat", "confidence") if k not in t]
        if missing:
            raise CheckpointError(f"'{st}' lacks tensor '{missing[0]}'; re-run the attack")
        meta.pop("format", None)
        meta.pop("n", None)
        try:
            return cls(t["images"], t["identity"], t["repeat"], t["confidence"], meta, t.get("latents"))
        except ValueError as e:
            raise CheckpointError(f"'{st}' is inconsistent ({e}); re-run the attack") from None


# ============================================================================ oracles
class QueryOracle:
    """Black-box access to a classifier: detached probabilities (``mode="probs"``) or top-1 labels
    (``mode="labels"``).  Every queried image is counted in :attr:`queries`; ``max_queries`` bounds it.

    The oracle never exposes gradients, logits, features or the model: those raise AccessError.
    Inputs are detached, evaluated under ``torch.no_grad`` and outputs carry no autograd graph.
    """

    __slots__ = ("_query", "mode", "num_classes", "queries", "max_queries", "resolution", "channels")

    def __init__(self, model: nn.Module, mode: str = "probs", max_queries: int | None = None,
                 batch_size: int = 512):
        if mode not in ("probs", "labels"):
            raise ArgumentError(f"oracle mode must be 'probs' or 'labels', got '{mode}'")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device

        def query(x: torch.Tensor) -> torch.Tensor:
            outs = []
            with torch.no_grad():
                for i in range(0, x.shape[0], batch_size):
                    xb = x[i:i + batch_size].detach().to(device).clamp(0, 1)
                    logits = model(xb).float()
                    outs.append(logits.softmax(1) if mode == "probs" else logits.argmax(1))
            return torch.cat(outs).detach()

        del was_training
        self._query = query
        self.mode = mode
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.resolution = getattr(model, "input_resolution", None)
        self.channels = None
        self.queries = 0
        self.max_queries = max_queries

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ArgumentError("the oracle takes a (B, C, H, W) float tensor of images in [0, 1]")
        n = int(x.shape[0])
        if self.max_queries is not None and self.queries + n > self.max_queries:
            raise AccessError(f"query budget exhausted ({self.queries} + {n} > {self.max_queries}); "
                              "raise max_queries or attack fewer identities")
        self.queries += n
        return self._query(x)

    # --- everything an oracle must refuse, with a message that says why
    def _refuse(self, what: str):
        raise AccessError(f"a {self.mode} oracle gives no {what}; this attack's access is "
                          f"'{'black-box' if self.mode == 'probs' else 'label-only'}'")

    def logits(self, x=None):
        self._refuse("logits")

    def features(self, x=None):
        self._refuse("features")

    def gradient(self, *a, **k):
        self._refuse("gradients")

    def forward_features(self, x=None):
        self._refuse("features")

    @property
    def model(self):
        self._refuse("model")

    def __getattr__(self, name: str):
        # only reached for attributes that do not exist: parameters, state_dict, backbone, head, ...
        raise AccessError(f"a query oracle exposes only its outputs and query count, not '{name}'")

    def __repr__(self) -> str:
        return f"QueryOracle(mode={self.mode!r}, queries={self.queries})"


# ============================================================================ batch-level resume
class _Partial:
    """Finished (repeat, batch) chunks of an interrupted ``Attack.run``, one safetensors + JSON per chunk.

    A chunk is written (atomically) as soon as it is done; a later run with the same ``key`` (attack
    spec, identities, repeats, seed, target weights, priors, adaptive) reloads it instead of recomputing
    it.  Each chunk is seeded on its own, so a resumed run equals an uninterrupted one."""

    def __init__(self, root: Path, key: str):
        self.root, self.key = Path(root), key

    def _paths(self, r: int, b: int) -> tuple[Path, Path]:
        return self.root / f"chunk-{r}-{b}.safetensors", self.root / f"chunk-{r}-{b}.json"

    def save(self, r: int, b: int, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        st, js = self._paths(r, b)
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(st) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        atomic_write_json(js, {"key": self.key, **info})

    def load(self, r: int, b: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        from safetensors.torch import load_file

        st, js = self._paths(r, b)
        if not (st.exists() and js.exists()):
            return None
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
            if info.get("key") != self.key:
                return None
            return load_file(str(st)), info
        except Exception:   # noqa: BLE001 - a damaged chunk is recomputed
            return None


def _check_run_args(identities: Sequence[int], repeats: Any, num_classes: int) -> list[int]:
    ids = [int(i) for i in identities]
    if not ids:
        raise ArgumentError("no identities to attack; give e.g. --identities 0-9")
    bad = [i for i in ids if i < 0 or (num_classes and i >= num_classes)]
    if bad:
        raise ArgumentError(f"identity {bad[0]} is out of range; the target has {num_classes} classes, "
                            f"use 0-{num_classes - 1}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ArgumentError(f"repeats must be an integer >= 1, got {repeats!r}")
    return ids


class _Chunks:
    """The finished (repeat, batch) chunks of one ``Attack.run``, in order."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.identity: list[torch.Tensor] = []
        self.repeat: list[torch.Tensor] = []
        self.latents: list[torch.Tensor | None] = []
        self.curves: list[list[float]] = []
        self.resumed = 0

    def add(self, images: torch.Tensor, identity: torch.Tensor, r: int, latents: torch.Tensor | None,
            curve: list[float]) -> None:
        self.images.append(images)
        self.identity.append(identity)
        self.repeat.append(torch.full((len(identity),), r, dtype=torch.long))
        self.latents.append(latents)
        self.curves.append(curve)

    def add_resumed(self, t: dict[str, torch.Tensor], info: dict[str, Any], oracle: QueryOracle | None) -> dict:
        """Append a chunk saved before an interruption; returns its attack's ``extra_meta``."""
        self.images.append(t["images"])
        self.identity.append(t["identity"])
        self.repeat.append(t["repeat"])
        self.latents.append(t.get("latents"))
        self.curves.append(list(info["curve"]))
        if oracle is not None:
            oracle.queries = int(info["queries"])
        self.resumed += 1
        return dict(info["extra_meta"])

    def last_tensors(self) -> dict[str, torch.Tensor]:
        t = {"images": self.images[-1], "identity": self.identity[-1], "repeat": self.repeat[-1]}
        if self.latents[-1] is not None:
            t["latents"] = self.latents[-1]
        return t

    def mean_curve(self) -> list[float]:
        n_it = min((len(c) for c in self.curves), default=0)
        return [float(sum(c[i] for c in self.curves) / len(self.curves)) for i in range(n_it)]

    def all_latents(self) -> torch.Tensor | None:
        lat = self.latents
        return torch.cat(lat) if lat and all(v is not None for v in lat) else None


@torch.no_grad()
def _target_scores(model: nn.Module, imgs: torch.Tensor, ident: torch.Tensor,
                   dev: torch.device) -> tuple[torch.Tensor, int]:
    """The target's confidence in the attacked identity for each image, and its top-1 hit count."""
    conf, hits = [], 0
    for i in range(0, len(imgs), 256):
        p = model(imgs[i:i + 256].to(dev)).float().softmax(1)
        yb = ident[i:i + 256].to(dev)
        conf.append(p.gather(1, yb[:, None]).squeeze(1).cpu())
        hits += int((p.argmax(1) == yb).sum())
    return torch.cat(conf), hits


# ============================================================================ attack base
@dataclass(frozen=True)
class ChunkContext:
    """Where one (repeat, identity batch) chunk of :meth:`Attack.run` stands; set as ``attack.chunk``
    before the chunk's hooks run.  Attacks whose repeats share work (PPA and IF-GMI: one candidate pool
    and a joint top-k over all repeats of an identity, as the references do) seed that shared work with
    :meth:`generator`, which does not depend on the repeat."""

    seed: int = 0
    repeat: int = 0
    repeats: int = 1
    batch: int = 0
    full: int = 0          # identities in a full chunk (the run's first); the last chunk may hold fewer

    def share(self, n: int) -> float:
        """``n`` identities' share of a full chunk: the weight that gives a batch-mean loss of a short last chunk
        the per-identity gradient a full chunk's mean gives (1 for a full chunk, or outside a run)."""
        return n / self.full if self.full else 1.0

    def rngs(self, attack: str, repeat: int | None = None) -> tuple[torch.Generator, int]:
        """The randomness of ``attack``'s chunk (``repeat``, default this one; this batch): its CPU generator
        (``gen`` of the hooks) and the global torch seed set while its hooks run."""
        r = self.repeat if repeat is None else repeat
        gen = torch.Generator(device="cpu")
        gen.manual_seed(derive_seed(self.seed, attack, r, self.batch))
        return gen, derive_seed(self.seed, attack, "global", r, self.batch)

    def generator(self, *keys: Any) -> torch.Generator:
        """A CPU generator seeded from (seed, keys, batch): the same for every repeat of this batch."""
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.seed, *keys, "batch", self.batch))
        return g


ATTACKS: Registry[Callable[..., Attack]] = Registry("attack", group="midre.attacks")


class Attack:
    """Base class of every model-inversion attack (see the module docstring for the life cycle).

    Subclasses set ``name``, ``access``, ``prior_kinds`` (priors from :mod:`midre.priors`, the first
    one provides the generator), ``defaults`` (the paper's 64 px CelebA hyper-parameters) and
    ``presets`` (named overrides, e.g. ``"quick"`` for the embedded synthetic benchmark), and implement
    :meth:`init_latents` / :meth:`invert` / :meth:`decode`.

    Parameters are validated at construction: unknown names raise ArgumentError with did-you-mean.
    """

    name: str = "attack"
    access: str = "white-box"
    prior_kinds: tuple[str, ...] = ()
    # the literature's ranking at equal budget (higher = stronger); `midre audit` runs the strongest that fit
    # its access level; None: unranked (listed after the ranked ones)
    strength: int | None = None
    version: int = 1        # raised when the rule changes unseen by its parameters (the run's stage keys change)
    trapdoor_aware: bool = False       # adds a TrapdoorAdversary's signature loss when adaptive (PLG-MI++)
    # SecretGen's threat model: the attacker also holds the attacked identities' private training images with a
    # hole; callers give them (midre.attacks.masked.give_masked_private, hole zeroed) as ``masked_private``
    needs_masked_private: bool = False
    masked_private: Any = None
    defaults: dict[str, Any] = {}
    presets: dict[str, dict[str, Any]] = {}
    chunk: ChunkContext = ChunkContext()     # the chunk being attacked (set by run)

    def __init__(self, preset: str = "paper", **params: Any):
        presets = {"paper": {}, **self.presets}
        if preset not in presets:
            raise ArgumentError(f"attack '{self.name}' has no preset '{preset}'{did_you_mean(preset, presets)}; "
                                f"choose one of: {', '.join(sorted(presets))}")
        allowed = dict(self.defaults)
        for k in params:
            if k not in allowed:
                raise ArgumentError(f"attack '{self.name}' has no parameter '{k}'{did_you_mean(k, allowed)}; "
                                    f"its parameters are: {', '.join(sorted(allowed))}")
        merged = {**allowed, **presets[preset], **params}
        for k, v in merged.items():
            ref = allowed[k]
            if isinstance(ref, bool):
                if not isinstance(v, bool):
                    raise ArgumentError(f"attack '{self.name}': '{k}' must be true or false, got {v!r}")
            elif isinstance(ref, int) and not isinstance(ref, bool):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ArgumentError(f"attack '{self.name}': '{k}' must be a non-negative integer, got {v!r}")
            elif isinstance(ref, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ArgumentError(f"attack '{self.name}': '{k}' must be a non-negative number, got {v!r}")
                merged[k] = float(v)
        self.preset = preset
        self.params = merged
        self.validate()

    # --------------------------------------------------------------------- hooks
    def validate(self) -> None:
        """Extra parameter checks (raise ArgumentError)."""
        for k in ("iterations", "batch_size"):
            if k in self.params and self.params[k] < 1:
                raise ArgumentError(f"attack '{self.name}': '{k}' must be >= 1, got {self.params[k]}")

    def check_target(self, target: nn.Module) -> None:
        """Refuse a target this attack cannot work on (raise a MidreError saying why and what to do);
        :meth:`run` calls it before any work, ``midre attack`` before anything is written.  Default: any."""

    def init_latents(self, access: Any, ids: torch.Tensor, prior: Mapping[str, Any], gen: torch.Generator) -> dict:
        raise NotImplementedError

    def select_candidates(self, access: Any, ids: torch.Tensor, prior: Mapping[str, Any], state: dict,
                          gen: torch.Generator) -> dict:
        """Keep the most promising initial candidates (PPA); default: keep all."""
        return state

    def invert(self, access: Any, ids: torch.Tensor, prior: Mapping[str, Any], state: dict,
               gen: torch.Generator, eraser: nn.Module | None, log: Callable[[float], None],
               tick: Callable[[], None]) -> dict:
        raise NotImplementedError

    def decode(self, prior: Mapping[str, Any], state: dict, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def final_selection(self, access: Any, ids: torch.Tensor, prior: Mapping[str, Any], state: dict,
                        gen: torch.Generator) -> torch.Tensor:
        """Images to return, one per identity in ``ids`` (PPA would rank many here); default: decode."""
        with torch.no_grad():
            return self.decode(prior, state, ids, gen).clamp(0, 1)

    def steps_per_batch(self) -> int:
        return int(self.params.get("iterations", 1))

    # --------------------------------------------------------------------- helpers for subclasses
    @staticmethod
    def to_target(x: torch.Tensor, eraser: nn.Module | None) -> torch.Tensor:
        """Candidate images as the target sees them: erased by the defense's own eraser when adaptive."""
        return eraser(x) if eraser is not None else x

    # --------------------------------------------------------------------- run
    def run(self, target: nn.Module, identities: Sequence[int], repeats: int, prior: Any = None, seed: int = 0,
            progress: bool = False, adaptive_eraser: nn.Module | None = None,
            target_path: str | None = None, device: Any = None,
            resume_dir: str | Path | None = None) -> Reconstructions:
        """Attack ``identities`` (each ``repeats`` times) and return the reconstructions.

        ``prior`` is a mapping {kind: Prior} for the kinds in ``prior_kinds`` (a single Prior is accepted
        when the attack needs one).  Images come back on the CPU.  With ``resume_dir`` every finished
        (repeat, batch) chunk is kept there, and a run interrupted (killed) part-way continues from the
        chunks already done, with the same result as an uninterrupted run.
        """
        from ..utils import resolve_device

        self.check_target(target)
        priors = self._priors(prior)
        num_classes = int(getattr(target, "num_classes", 0))
        ids_all = _check_run_args(identities, repeats, num_classes)
        dev = resolve_device(device) if device is not None else next(target.parameters()).device
        target = target.to(dev)
        for p in priors.values():
            p.to(dev)
        if hasattr(adaptive_eraser, "signature_loss") and not self.trapdoor_aware:
            adaptive_eraser = adaptive_eraser.eraser   # Trap-MID: no trapdoor-aware form, keep its eraser only
        if isinstance(adaptive_eraser, nn.Module):
            adaptive_eraser = adaptive_eraser.to(dev)
        bs = int(self.params.get("batch_size", len(ids_all)))
        chunks = [ids_all[i:i + bs] for i in range(0, len(ids_all), bs)]
        out = _Chunks()
        self.extra_meta: dict[str, Any] = {}     # attacks may report facts of the run here
        part = _Partial(Path(resume_dir), self._resume_key(target, ids_all, repeats, seed, priors,
                                                           adaptive_eraser)) if resume_dir is not None else None
        t0 = time.perf_counter()
        prior_modules = [m for p in priors.values() if hasattr(p, "modules") for m in p.modules()]
        with frozen(target, *prior_modules) as model:
            access, oracle = self._access_to(model)
            steps = self.steps_per_batch()
            with make_progress(progress) as prog:
                task = prog.add_task(f"{self.name}", total=repeats * len(chunks) * steps, status="")
                for r in range(repeats):
                    for b, chunk in enumerate(chunks):
                        done = part.load(r, b) if part is not None else None
                        if done is not None:           # finished before an interruption: reuse it
                            self.extra_meta = out.add_resumed(*done, oracle)
                            prog.update(task, advance=steps)
                            continue
                        where = f"rep {r + 1}/{repeats} batch {b + 1}/{len(chunks)}"
                        self.chunk = ChunkContext(seed, r, repeats, b, len(chunks[0]))
                        self._attack_chunk(out, access, priors, chunk, r, b, seed, dev, adaptive_eraser,
                                           lambda status: prog.update(task, advance=1, status=f"{where} {status}"))
                        if part is not None:
                            part.save(r, b, out.last_tensors(), {
                                "curve": out.curves[-1], "extra_meta": self.extra_meta,
                                "queries": oracle.queries if oracle is not None else None})
            imgs, ident = torch.cat(out.images), torch.cat(out.identity)
            conf, hits = _target_scores(model, imgs, ident, dev)
        meta = self._run_meta(priors, target_path, num_classes, ids_all, repeats, seed, len(chunks), oracle,
                              time.perf_counter() - t0, adaptive_eraser, out, hits, len(imgs))
        return Reconstructions(imgs, ident, torch.cat(out.repeat), conf, meta, out.all_latents())

    def _access_to(self, model: nn.Module) -> tuple[Any, QueryOracle | None]:
        """What the attack may touch: the model itself (white-box) or a counting query oracle."""
        if self.access == "white-box":
            return model, None
        if self.access in ("black-box", "label-only"):
            oracle = QueryOracle(model, "probs" if self.access == "black-box" else "labels",
                                 max_queries=self.params.get("max_queries") or None)
            return oracle, oracle
        raise ArgumentError(f"attack '{self.name}' declares unknown access '{self.access}'")  # pragma: no cover

    def _attack_chunk(self, out: _Chunks, access: Any, priors: dict[str, Any], chunk: list[int], r: int, b: int,
                      seed: int, dev: torch.device, eraser: Any, advance: Callable[[str], None]) -> None:
        """Invert one (repeat, batch) chunk, seeded on its own, and append it to ``out``."""
        gen, global_seed = ChunkContext(seed, r, batch=b).rngs(self.name)
        ids = torch.tensor(chunk, dtype=torch.long, device=dev)
        curve: list[float] = []

        def log(v: float) -> None:
            curve.append(float(v))

        def tick() -> None:
            advance(f"loss {curve[-1]:.3g}" if curve else "")

        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(global_seed)
            state = self.init_latents(access, ids, priors, gen)
            state = self.select_candidates(access, ids, priors, state, gen)
            state = self.invert(access, ids, priors, state, gen, eraser, log, tick)
            x = self.final_selection(access, ids, priors, state, gen)
        out.add(x.detach().float().cpu(), ids.cpu(), r, state.get("latents") if isinstance(state, dict) else None,
                curve)

    def _run_meta(self, priors: dict[str, Any], target_path: Any, num_classes: int, ids_all: list[int],
                  repeats: int, seed: int, n_chunks: int, oracle: QueryOracle | None, seconds: float,
                  eraser: Any, out: _Chunks, hits: int, n_images: int) -> dict[str, Any]:
        return {
            "attack": self.name,
            "access": self.access,
            "preset": self.preset,
            "params": dict(self.params),
            "prior_kinds": list(self.prior_kinds),
            "priors": {k: getattr(p, "meta", {}).get("key") for k, p in priors.items()},
            "target": str(target_path) if target_path is not None else None,
            "num_classes": num_classes,
            "identities": ids_all,
            "repeats": repeats,
            "seed": seed,
            "seeds": [[derive_seed(seed, self.name, r, b) for b in range(n_chunks)] for r in range(repeats)],
            "queries": oracle.queries if oracle is not None else None,
            "seconds": seconds,
            "adaptive": eraser is not None,
            "adaptive_eraser": repr(eraser) if eraser is not None else None,
            "loss_curve": out.mean_curve(),
            "target_top1": 100.0 * hits / max(1, n_images),
            "resumed_chunks": out.resumed,
            **self.extra_meta,
        }

    def _resume_key(self, target: nn.Module, ids: list[int], repeats: int, seed: int, priors: dict[str, Any],
                    eraser: Any) -> str:
        from ..utils import config_hash

        return config_hash({"spec": self.spec(), "ids": ids, "repeats": repeats, "seed": seed,
                            "target": model_fingerprint(target), "adaptive": repr(eraser),
                            "priors": {k: getattr(p, "meta", {}).get("key") or
                                       model_fingerprint(getattr(p, "generator", None)) for k, p in priors.items()}})

    def _priors(self, prior: Any) -> dict[str, Any]:
        if prior is None:
            priors: dict[str, Any] = {}
        elif isinstance(prior, Mapping):
            priors = dict(prior)
        else:
            priors = {getattr(prior, "kind", self.prior_kinds[0] if self.prior_kinds else "prior"): prior}
        missing = [k for k in self.prior_kinds if k not in priors]
        if missing:
            raise ArgumentError(f"attack '{self.name}' needs the '{missing[0]}' prior; train it with "
                                f"midre.priors.train_prior('{missing[0]}', public_set, target) or prepare_priors()")
        return priors

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset, **self.params}

    def __repr__(self) -> str:
        """Its name, preset and the settings that differ from the preset's: ``gmi(preset='quick', iterations=2)``."""
        base = {**self.defaults, **{"paper": {}, **self.presets}[self.preset]}
        shown = [f"{k}={v!r}" for k, v in self.params.items() if k not in base or v != base[k]]
        return f"{self.name}(" + ", ".join([f"preset={self.preset!r}", *shown]) + ")"


def build_attack(name: str, preset: str = "paper", **params: Any) -> Attack:
    """Build a registered attack (gmi, kedmi, lomma_gmi, lomma_kedmi, plgmi, brepmi) with validated params."""
    return ATTACKS.get(name)(preset=preset, **params)


# ============================================================================ shared steps
def latent_descent(z0: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], p: Mapping[str, Any],
                   log: Callable[[float], Any], tick: Callable[[], Any], weight: float = 1.0) -> torch.Tensor:
    """GMI's latent search, shared by the attacks that keep it (GMI and its kin, SecretGen's white-box stage):
    ``p["iterations"]`` steps of SGD with Nesterov momentum ``p["momentum"]`` (plain SGD at 0) and learning rate
    ``p["lr"]`` on ``weight * loss_of(z)``, each followed by the clamp of z to [-z_clip, z_clip] (none at 0); the
    loss (unweighted) is logged and the progress ticked once per step.  Returns the final z, detached.

    The losses are batch means, as in the references, so plain SGD moves each identity's z by lr / B times its
    own gradient: the batch size is part of the step.  ``weight`` (the chunk's :meth:`ChunkContext.share`)
    keeps that step the full chunks' one in a short last chunk."""
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=p["lr"], momentum=p["momentum"], nesterov=p["momentum"] > 0)
    for _ in range(p["iterations"]):
        loss = loss_of(z)
        opt.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        opt.step()
        if p["z_clip"] > 0:
            with torch.no_grad():
                z.clamp_(-p["z_clip"], p["z_clip"])
        log(float(loss.detach()))
        tick()
    return z.detach()


# ============================================================================ shared losses
def adaptive_eraser_from_meta(meta: Mapping[str, Any], target: nn.Module | None = None,
                              public: Any = None) -> nn.Module:
    """The batched eraser of the target's own defense (paper D.5), built from its checkpoint metadata; for a
    Trap-MID target the trapdoor-aware attacker's knowledge (bound to ``target`` and ``public`` images
    when given, else later with its ``bind``)."""
    from ..defenses import build_defense
    from ..defenses.midre import eraser_for

    spec = meta.get("defense") if isinstance(meta, Mapping) else meta
    if any(m.name == "trapmid" for m in build_defense(spec).members()):
        from ..defenses.trapmid import trapdoor_adversary

        return trapdoor_adversary(spec, target, public)
    name = spec.get("name") if isinstance(spec, Mapping) else spec
    try:
        eraser = eraser_for(spec, batched=True)
    except ArgumentError:
        raise ArgumentError(f"the target's defense '{name or 'nodef'}' does not erase images, so --adaptive has "
                            "nothing to apply; use --adaptive only against MIDRE / erasing / Trap-MID targets") from None
    if getattr(eraser, "needs_index", False):
        raise ArgumentError(f"the target's defense '{name}' erases by training-image index (each image's own region "
                            "or turn), which an attacker's image does not have, so --adaptive has nothing to apply; "
                            "use --adaptive against MIDRE, multi_patch or Trap-MID targets")
    return eraser


def register_attack(cls: type) -> type:
    """Register an Attack subclass under its own ``name`` with the ``access``, priors and ``strength`` it
    declares (stated once, on the class; `midre attacks` and the audit read them from the registry)."""
    return ATTACKS.register(cls.name, access=cls.access, prior="+".join(cls.prior_kinds) or "none",
                            strength=cls.strength)(cls)
