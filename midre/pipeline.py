"""The main job: data -> evaluation model -> targets -> priors -> attacks -> metrics -> results -> report.

:func:`run_pipeline` runs a validated :class:`midre.config.RunConfig` into a run directory::

    RUN/config.yaml                       the resolved config (what was run)
    RUN/run.json                          config hash, versions, stage status + keys, timings, peak memory
    RUN/eval/model.safetensors + .json    the evaluation model (another, stronger architecture)
    RUN/targets/<target>/model.*          one per target (nodef, midre-0.4, ...)
    RUN/priors/<kind>[-<target>]/...      GAN priors / augmented models, trained on PUBLIC data only
    RUN/attacks/<target>/<attack>/        reconstructions.safetensors + .json, metrics.json
    RUN/results.csv, RUN/results.json     one row per target x attack (COLUMNS)
    RUN/report.md, RUN/report.html, RUN/figures/   (midre.report)

A multi-seed config (``seeds: [0, 1, 2]``) runs one pipeline per seed into ``RUN/seed-<s>/`` and writes
an aggregated ``RUN/results.csv`` (mean over seeds; ``*_std`` columns = std across seeds) plus
``RUN/results_per_seed.csv``.

Resume: every stage writes its artefact atomically and records a *stage key* (a hash of everything the
stage depends on) in run.json before it starts.  A stage whose key is recorded as done is skipped; the
trainer continues mid-training from its per-epoch checkpoint; each stage is seeded with
``derive_seed(seed, stage, ...)`` and always reloads its inputs from disk, so an interrupted and
resumed run reaches exactly the numbers of an uninterrupted one (on CPU).  A run directory whose
recorded stage keys conflict with the config (e.g. other epochs for a target that exists) is refused;
adding targets or attacks to an existing run is allowed.  A :class:`midre.utils.RunLock` keeps two
processes out of one directory.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from . import tblog
from .config import AttackSection, RunConfig, TargetSection, dump_yaml, load_config
from .distributed import world
from .errors import ConfigError, MidreError
from .plan import RunPlan
from .results import aggregate_rows, as_float  # noqa: F401  (aggregate_rows: re-exported)
from .rundir import (COLUMNS, STUDY_EXTRA_COLUMNS, RunState, StageConsole, crash_point, now, peak_rss_mib, prepare_dir,
                     remove_stale_temps, write_table)
from .utils import (RunLock, atomic_write_json, atomic_write_text, config_hash, derive_seed, parse_id_ranges,
                    resolve_device, seed_everything)

STAGE_GROUPS = ("data", "eval", "targets", "priors", "attacks", "metrics", "results", "report")


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    results_csv: Optional[Path] = None
    results_json: Optional[Path] = None
    report: Optional[Path] = None          # report.html when written
    complete: bool = False                 # False when stopped early (stop_after)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    seeds: list[int] = field(default_factory=list)


# ============================================================================ small helpers
def _identities(a: AttackSection, num_classes: int, where: str) -> list[int]:
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


# ============================================================================ the pipeline
def run_pipeline(config: Any, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                 device: Optional[str] = None, stop_after: Optional[str] = None,
                 on_stage: Optional[Callable[[str], None]] = None, rule: Optional[str | os.PathLike] = None
                 ) -> PipelineResult:
    """Run (or continue) a whole pipeline into ``out_dir``.

    Parameters
    ----------
    config : a RunConfig, a mapping, a YAML path or a built-in config name.
    out_dir : the run directory (created; a RunLock keeps other processes out).
    resume : continue a run found in ``out_dir`` (default).  False refuses a non-empty run directory.
    progress : rich stage lines and progress bars on stderr.
    device : overrides ``config.device`` (auto / cpu / cuda:N); not part of the config hash.
    stop_after : stop after this stage group (one of STAGE_GROUPS), e.g. ``"targets"``.
    on_stage : called with each finished stage's name (``"targets/nodef"``) -- a hook for tests and UIs.
    rule : the experiment's decision rule file (midre.rules), recorded with its sha256 in RUN/rule.json when
        the run starts; a later start with a changed rule is refused.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    if stop_after is not None and stop_after not in STAGE_GROUPS:
        raise ConfigError(f"stop_after '{stop_after}' is not a stage; use one of: {', '.join(STAGE_GROUPS)}")
    run_dir = Path(out_dir)
    t0 = time.perf_counter()
    logs = tblog.from_config(cfg, run_dir)   # checks the extra before anything is written
    ddp = world()   # under torchrun: rank 0 runs the pipeline, the others join its training stages
    prepare_dir(run_dir, resume, cfg.seeds)
    ddp.barrier()
    if not ddp.is_main:
        return _train_worker(cfg, run_dir, ddp)
    with RunLock(run_dir), logs:
        if rule is not None:
            from .rules import record_rule

            record_rule(run_dir, Path(rule), cfg.name)
        try:
            remove_stale_temps(run_dir)
            if cfg.seeds:
                res = _run_study(cfg, run_dir, progress, stop_after, on_stage)
            else:
                res = _Pipeline(cfg, run_dir, progress, on_stage).run(stop_after)
        finally:
            ddp.send(None)   # ranks > 0: no more training stages
    res.seconds = time.perf_counter() - t0
    res.peak_rss_mib = peak_rss_mib()
    return res


class _Pipeline:
    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool, on_stage: Optional[Callable[[str], None]]):
        self.cfg = cfg
        self.run_dir = run_dir
        self.progress = progress
        self.on_stage = on_stage
        self.console = StageConsole(progress)
        self.device = resolve_device(cfg.device)
        self.targets = cfg.expanded_targets()
        self.plan = RunPlan(cfg, self.targets, "config")   # stage keys and units; validates before any write
        self._count = 0
        self.use_zoo = True               # False while `midre zoo build` makes the entries themselves

    @property
    def keys(self) -> dict[str, str]:
        return self.plan.keys

    # ------------------------------------------------------------------ stage wrapper
    def _stage(self, name: str, fn: Callable[[], Any], label: str, derived: bool = False) -> Any:
        """Run ``fn`` unless ``name`` is done with the same key; record timings in run.json."""
        self._count += 1

        def guarded() -> Any:
            crash_point(name)
            return fn()

        extra = self.state.run_stage(name, self.keys[name], guarded, label, f"[{self._count}/{self.n_units}]",
                                     self.console)
        if extra is not None and self.on_stage is not None:
            self.on_stage(name)
        return extra

    # ------------------------------------------------------------------ run
    def run(self, stop_after: Optional[str] = None) -> PipelineResult:
        cfg, run_dir = self.cfg, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState(run_dir, cfg)
        self.state.check_keys(self.keys)
        self.n_units = len([k for k in self.keys]) + 2
        self.state.save()                       # run.json first: a directory with any artefact has one
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        res = PipelineResult(run_dir=run_dir, seeds=[cfg.seed])
        try:
            self._data()
            if stop_after == "data":
                return self._stopped(res)
            for bname, b in cfg.backbones.items():
                self._stage(f"backbones/{bname}", lambda n=bname: self._train_backbone(n),
                            f"backbone {bname} ({b.arch}, pretrained on the {b.pool} pool)")
            self._stage("eval", self._train_eval, f"evaluation model {cfg.eval_model.arch}")
            if stop_after == "eval":
                return self._stopped(res)
            for t in self.targets:
                self._stage(f"targets/{t.name}", lambda t=t: self._train_target(t),
                            f"target {t.name} ({cfg.target_arch(t)}, defense {self._defense_label(t)})")
            if stop_after == "targets":
                return self._stopped(res)
            for pname, (kind, tname) in self.plan.prior_units.items():
                self._stage(pname, lambda p=pname: self._prior(p), f"prior {kind}" + (f" for {tname}" if tname else "")
                            + " (public data only)")
            if stop_after == "priors":
                return self._stopped(res)
            for a in cfg.attacks:
                for t in self._attack_targets(a):
                    self._stage(f"attacks/{t.name}/{a.key}", lambda a=a, t=t: self._attack(a, t),
                                f"attack {a.key} -> {t.name} ({len(self.ids[a.key])} identities x {a.repeats})")
            if stop_after == "attacks":
                return self._stopped(res)
            for a in cfg.attacks:
                for t in self._attack_targets(a):
                    name = f"metrics/{t.name}/{a.key}"
                    if not (self.run_dir / "attacks" / t.name / a.key / "metrics.json").exists():
                        self.state.stages.pop(name, None)
                    self._stage(name, lambda a=a, t=t: self._metrics(a, t), f"evaluate {a.key} -> {t.name}")
            if stop_after == "metrics":
                return self._stopped(res)
            self._count += 1
            res.rows = self._results()
            res.results_csv, res.results_json = run_dir / "results.csv", run_dir / "results.json"
            self.console.print(f"[bold cyan][{self._count}/{self.n_units}][/bold cyan] results -> {res.results_csv}")
            if stop_after == "results":
                return self._stopped(res)
            if cfg.analyses.features and cfg.attacks:
                self._features()          # before the report, which shows its figure
            self._count += 1
            res.report = self._report()
            res.complete = True
            self.state.data["complete"] = True
            self.state.save(status="complete")
        except BaseException:            # Ctrl-C, a failing stage, ...: the record says so; re-run resumes
            self.state.save(status="interrupted")
            raise
        return res

    def _stopped(self, res: PipelineResult) -> PipelineResult:
        self.state.data["complete"] = False
        self.state.save(status="stopped")
        return res

    def _attack_targets(self, a: AttackSection) -> list[TargetSection]:
        return self.cfg.attack_targets(a)

    @staticmethod
    def _defense_label(t: TargetSection) -> str:
        """The defense as the user wrote it (name + given parameters)."""
        def one(s: Any) -> str:
            if isinstance(s, dict):
                params = ", ".join(f"{k}={v}" for k, v in s.items() if k != "name")
                return str(s.get("name")) + (f"({params})" if params else "")
            return str(s)

        return " + ".join(one(s) for s in t.defense) if isinstance(t.defense, list) else one(t.defense)

    # ------------------------------------------------------------------ data
    def _data(self) -> None:
        from .data.base import in_memory
        from .data import load_dataset

        cfg = self.cfg
        d = cfg.dataset
        t0, c0 = time.perf_counter(), time.process_time()
        self._count += 1
        self.console.print(f"[bold cyan][{self._count}/{self.n_units}][/bold cyan] data: {d.name}"
                           + (f" from {d.root}" if d.root else "") + f" (seed {self.plan.data_seed})")
        seed_everything(derive_seed(self.plan.data_seed, "data"))
        try:
            splits = load_dataset(d.name, root=d.root, resolution=d.resolution, seed=self.plan.data_seed, **d.options)
        except MidreError as e:
            raise type(e)(f"dataset '{d.name}': {e}") from None
        self.splits = splits
        self.train_set = in_memory(splits.private_train, self.progress)
        self.test_set = in_memory(splits.private_test, self.progress)
        self.public_set = in_memory(splits.public, self.progress) if len(splits.public) else None
        self.prior_public, self.public_holdout = _holdout_split(self.public_set, cfg.priors.holdout,
                                                                derive_seed(self.plan.data_seed, "public-holdout"))
        self.console.print(f"[dim]    {splits.summary()}[/dim]")
        # data-dependent checks, before any training
        self.ids: dict[str, list[int]] = {}
        for i, a in enumerate(cfg.attacks):
            self.ids[a.key] = _identities(a, splits.num_classes, f"attacks[{i}]")
        if cfg.attacks and self.public_set is None and not _priors_need_no_public(cfg, self.plan.prior_units):
            raise ConfigError(f"dataset '{d.name}' has no public images but the attacks need public data for their "
                              "priors; give a public set (dataset.options, e.g. public: ffhq:/path) or drop the attacks")
        if cfg.attacks:
            self._assert_public_only()       # refuse before any training, and again for every prior
        self.data_meta = {"name": d.name, "root": d.root, "resolution": splits.resolution, "seed": self.plan.data_seed,
                          "options": dict(d.options)}
        rec = self.state.stages.setdefault("data", {})
        rec.update({"key": self.keys["data"], "status": "done", "summary": splits.summary(),
                    "num_classes": splits.num_classes, "resolution": splits.resolution,
                    "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
                    "cpu_seconds": round(time.process_time() - c0, 3)})
        self.state.save()

    # ------------------------------------------------------------------ training
    def _train(self, out: Path, arch: str, kwargs: dict, defense: Any, train: dict, seed_key: str,
               meta: dict, description: str, public: Any = None) -> dict:
        from .models import create_model
        from .training import train_classifier

        world().send((self.cfg.seed, meta.get("role"), meta.get("target")))   # ranks > 0 train it too
        seed = derive_seed(self.plan.eval_seed if seed_key == "eval" else self.cfg.seed, seed_key)
        seed_everything(seed)
        model = create_model(arch, num_classes=self.splits.num_classes, resolution=self.splits.resolution, **kwargs)
        tcfg = {**train, "seed": seed, "device": str(self.device), "init": self._resolve_init(train.get("init"))}
        res = train_classifier(model, self.train_set, self.test_set, defense=defense, config=tcfg, out_dir=out,
                               public_set=public, meta={"dataset": self.data_meta, "model_kwargs": dict(kwargs),
                                                        "class_names": list(self.splits.class_names), **meta},
                               progress=self.progress, description=description)
        return {"test_acc": res.test_acc, "defense_report": res.defense_report}

    def _resolve_init(self, init: Optional[str]) -> Optional[str]:
        """``zoo:<backbone>`` -> this run's copy of that backbone (from the zoo or trained here)."""
        if init and init.startswith("zoo:"):
            return str(self.run_dir / "backbones" / init[4:] / "model.safetensors")
        return init

    def stage_data(self, stage: str) -> Any:
        """The images a target-independent stage trains on (its zoo entry's data fingerprint)."""
        if stage.startswith("backbones/"):
            name = stage.split("/", 1)[1]
            return self._pool(name)[0]
        return self.train_set if stage == "eval" else self.prior_public

    def instrument_stages(self) -> list[str]:
        """The target-independent stages: backbones, the evaluation model, the shared GAN prior(s)."""
        return ([f"backbones/{b}" for b in self.cfg.backbones] + ["eval"]
                + [p for p, (_k, t) in self.plan.prior_units.items() if t is None])

    def run_instrument(self, stages: Sequence[str]) -> None:
        """Data + the given target-independent stages only (``midre zoo build``); never reads the zoo."""
        self.use_zoo = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState(self.run_dir, self.cfg)
        self.n_units = len(stages) + 1
        self.state.save()
        self._data()
        for name in stages:
            if name.startswith("backbones/"):
                self._stage(name, lambda n=name.split("/", 1)[1]: self._train_backbone(n), f"backbone {name}")
            elif name == "eval":
                self._stage(name, self._train_eval, f"evaluation model {self.cfg.eval_model.arch}")
            else:
                self._stage(name, lambda p=name: self._prior(p), f"prior {name} (public data only)")
        self.state.save(status="complete")

    def _from_zoo(self, stage: str, dest: Path, data: Any,
                  prior_dir: Optional[Callable[[], str]] = None) -> Optional[dict]:
        """Install the zoo entry made by this stage's config and data, if there is one (verified).

        The same images rendered on another machine may differ from the build's by float rounding: the entry
        then matches by its data summary, and a prior's cache directory (``prior_dir()``, named after the data
        fingerprint) is installed under this machine's name so that the attacks find it."""
        from . import zoo
        from .priors import data_fingerprint, data_summary

        if not self.use_zoo or data is None:   # no data (a converted generator): nothing the zoo could match
            return None
        same = zoo.same_config(stage, self.keys[stage])
        if not same:                          # no entry for this config: nothing to hash
            return None
        rec = self.state.stages.setdefault(stage, {})
        fp = data_fingerprint(data)
        hit = (zoo.find(stage, self.keys[stage], fp)          # exact first: the summary only when needed
               or zoo.find(stage, self.keys[stage], fp, summary=data_summary(data)))
        if hit is None:                       # say why a long training starts although the zoo has the config
            rec["zoo_not_used"] = f"{', '.join(same)} has this stage's config but was built on other data"
            self.state.save()
            self.console.print(f"[yellow]    not from the zoo: {rec['zoo_not_used']}; training it here[/yellow]")
            return None
        rec.pop("zoo_not_used", None)
        name, entry = hit
        exact = entry.get("data_fingerprint") == fp
        zoo.install(name, entry, dest, folder=prior_dir() if prior_dir else None)
        how = "" if exact else "; the images equal the build's within float rounding"
        self.console.print(f"[dim]    from the zoo: {name} (sha256 verified{how})[/dim]")
        figs = entry.get("figures", {})
        return {"source": f"zoo:{name}", "data_match": "exact" if exact else "within rounding",
                **{k: figs[k] for k in ("test_acc", "train_acc", "pool_classes") if k in figs}}

    def _pool(self, bname: str) -> tuple[Any, Any, int]:
        if not hasattr(self, "_pools"):
            self._pools: dict[str, tuple[Any, Any, int]] = {}
        if bname not in self._pools:
            b = self.cfg.backbones[bname]
            self._pools[bname] = _pool_sets(self.splits, self.cfg.dataset.name, b.pool, b.pool_options, bname,
                                            derive_seed(self.plan.data_seed, "pool-holdout"))
        return self._pools[bname]

    def _train_backbone(self, bname: str) -> dict:
        from .models import create_model
        from .training import train_classifier

        b = self.cfg.backbones[bname]
        out = self.run_dir / "backbones" / bname
        train, test, k = self._pool(bname)
        hit = self._from_zoo(f"backbones/{bname}", out, train)
        if hit is not None:
            return hit
        world().send((self.cfg.seed, "backbone", bname))   # ranks > 0 train it too
        seed = derive_seed(b.seed, "backbone", bname)
        seed_everything(seed)
        model = create_model(b.arch, num_classes=k, resolution=self.splits.resolution, **b.model_kwargs)
        tcfg = {**self.plan.backbone_train[bname], "seed": seed, "device": str(self.device)}
        res = train_classifier(model, train, test, config=tcfg, out_dir=out, progress=self.progress,
                               meta={"role": "backbone", "pool": b.pool, "model_kwargs": dict(b.model_kwargs),
                                     "dataset": self.data_meta, "pool_images": len(train) + len(test)},
                               description=f"backbone {bname} ({b.pool} pool)")
        hist = res.history[-1] if res.history else {}
        return {"source": "trained", "test_acc": res.test_acc, "train_acc": hist.get("train_acc"),
                "pool_classes": k}

    def _train_eval(self) -> dict:
        hit = self._from_zoo("eval", self.run_dir / "eval", self.train_set)
        if hit is not None:
            return hit
        e = self.cfg.eval_model
        return self._train(self.run_dir / "eval", e.arch, e.model_kwargs, None, self.plan.eval_train, "eval",
                           {"role": "eval"}, f"eval {e.arch}")

    def _train_target(self, t: TargetSection) -> dict:
        from .defenses import build_defense

        defense = build_defense(json.loads(json.dumps(self.plan.def_specs[t.name])))
        arch = self.cfg.target_arch(t)
        train = self.plan.train_cfgs[t.name]
        if t.epochs_from:     # the paper's rule: the converged reference's kept epochs and LR drops
            from .stopping import budget_of

            train = budget_of(train, self.run_dir / "targets" / t.epochs_from / "model.json")
        if t.stop_early:      # a NoDef curve point: the reference's training stopped at a share of its accuracy
            from .stopping import early_stop_of

            train = early_stop_of(train, self.run_dir / "targets" / t.stop_early.of / "model.json",
                                  t.stop_early.val_fraction)
        # every target shares one seed: same initialisation and batch order -> paired comparisons
        return self._train(self.run_dir / "targets" / t.name, arch, self.cfg.target_model_kwargs(t), defense,
                           train, "targets", {"role": "curve" if t.curve else "target", "target": t.name},
                           f"{t.name} {arch}", public=self.public_set)

    def _load(self, path: Path):
        from .loading import load_model

        return load_model(path, device=self.device)

    # ------------------------------------------------------------------ priors
    def _prior_kwargs(self, kind: str) -> dict:
        return {"preset": self.cfg.priors.preset or "paper", "params": dict(self.cfg.priors.params.get(kind, {}))}

    def _assert_public_only(self) -> None:
        """Refuse (DataError, one line) when the public set shares any image with the private splits."""
        from . import priors as P
        from .errors import DataError

        try:
            P.assert_public_only(self.public_set, self.train_set, self.test_set)
        except DataError as e:
            n = str(e).split(" shares ", 1)[-1].split(" with", 1)[0]
            raise DataError(f"dataset '{self.cfg.dataset.name}': the public set shares {n} with the private "
                            "splits; priors must see public identities only: set dataset.options.public to "
                            "images of other identities") from None

    def _prior(self, pname: str, load_only: bool = False) -> Any:
        from . import priors as P

        kind, tname = self.plan.prior_units[pname]
        self._assert_public_only()          # every prior the pipeline trains or loads
        target = self._load(self.run_dir / "targets" / tname)[0] if tname else None
        seed = self.plan.prior_seed(kind, tname)
        seed_everything(seed)
        pk = self._prior_kwargs(kind)
        if tname is None and not load_only:
            def local() -> str:                # train_prior's cache name for this machine's public images
                pcfg = P.prior_config(kind, pk["preset"], pk["params"])
                return f"{kind}-{P.prior_key(kind, self.prior_public, None, pcfg, seed)}"

            hit = self._from_zoo(pname, self.run_dir / pname, self.prior_public, prior_dir=local)
            if hit is not None:
                return hit
        prior = P.train_prior(kind, self.prior_public, target=target, out_dir=self.run_dir / pname,
                              config=pk["params"], preset=pk["preset"], seed=seed, device=self.device,
                              holdout=self.public_holdout,
                              progress=self.progress and not load_only)
        return prior if load_only else None

    # ------------------------------------------------------------------ attacks
    def _attack(self, a: AttackSection, t: TargetSection) -> dict:
        from .attacks import build_attack

        tdir = self.run_dir / "targets" / t.name
        target, tmeta = self._load(tdir)
        units = self.plan.attack_priors[(a.key, t.name)]
        priors = {kind: self._prior(pname, load_only=True) for kind, pname in units.items()}
        eraser = None
        if a.adaptive:
            eraser = _adaptive_eraser(tmeta)
            if hasattr(eraser, "bind"):      # Trap-MID: the trapdoor-aware attacker's signatures
                eraser.bind(target, self.prior_public)
        from .attacks.highres import resolve_preset

        preset = resolve_preset(a.name, a.preset, self.cfg.dataset.name)   # plain 'paper': the dataset's preset
        attack = build_attack(a.name, **({"preset": preset} if preset else {}), **a.params)
        if attack.params.get("target_resolution") == 0:      # StyleGAN attacks: images at the target's size
            attack.params["target_resolution"] = int(self.splits.resolution)
        seed = derive_seed(self.cfg.seed, "attack", a.key)
        seed_everything(seed)
        adir = self.run_dir / "attacks" / t.name / a.key
        rec = attack.run(target, self.ids[a.key], a.repeats, prior=priors, seed=seed, progress=self.progress,
                         adaptive_eraser=eraser, target_path=str(tdir / "model.safetensors"), device=self.device,
                         resume_dir=adir / "partial")
        rec.meta["eval"] = str(self.run_dir / "eval" / "model.safetensors")
        rec.meta["target_name"] = t.name
        rec.meta["attack_key"] = a.key
        rec.meta["adaptive_requested"] = a.adaptive
        rec.save(adir)
        shutil.rmtree(adir / "partial", ignore_errors=True)     # finished chunks of an interrupted attack
        return {"seconds_attack": rec.meta.get("seconds"), "queries": rec.meta.get("queries")}

    # ------------------------------------------------------------------ metrics
    def _metrics(self, a: AttackSection, t: TargetSection) -> dict:
        from .attacks.base import Reconstructions
        from .metrics import evaluate_reconstructions

        adir = self.run_dir / "attacks" / t.name / a.key
        rec = Reconstructions.load(adir)
        if not hasattr(self, "_eval_model"):
            self._eval_model = self._load(self.run_dir / "eval")[0]
        target = self._load(self.run_dir / "targets" / t.name)[0]
        m = self.cfg.metrics
        seed = derive_seed(self.cfg.seed, "metrics", a.key, t.name)
        seed_everything(seed)
        out = evaluate_reconstructions(
            rec, self._eval_model, self.train_set, self.test_set, target_model=target, fid=m.fid != "none",
            fid_extractor=m.inception_weights if m.fid == "inception" else None, n_boot=m.n_boot, seed=seed,
            batch_size=m.batch_size, device=self.device, progress=self.progress)
        out.update({"target": t.name, "attack_key": a.key})
        atomic_write_json(adir / "metrics.json", out)
        return {}

    # ------------------------------------------------------------------ results + report
    def _results(self) -> list[dict[str, Any]]:
        from .checkpoint import read_meta
        from .metrics import tradeoff

        cfg = self.cfg
        crash_point("results")
        metas = {t.name: read_meta(self.run_dir / "targets" / t.name) for t in self.targets}
        eval_meta = read_meta(self.run_dir / "eval")
        nodef_default = self.plan.nodef_default
        rows: list[dict[str, Any]] = []
        attacks = cfg.attacks or [None]
        for a in attacks:
            metrics: dict[str, dict] = {}
            if a is not None:
                for t in self._attack_targets(a):
                    p = self.run_dir / "attacks" / t.name / a.key / "metrics.json"
                    metrics[t.name] = json.loads(p.read_text(encoding="utf-8"))
            for t in self.targets if a is None else self._attack_targets(a):
                meta = metas[t.name]
                spec = self.plan.def_specs[t.name]
                rep = meta.get("defense_report") or {}
                m = metrics.get(t.name, {})
                acc = as_float(meta.get("test_acc"))
                row: dict[str, Any] = {
                    "target": t.name, "defense": _defense_name(spec),
                    "defense_params": json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True),
                    "attack": a.key if a is not None else "", "acc": acc,
                    "attack_top1": as_float(m.get("attacc_top1")), "attack_top1_std": as_float(m.get("attacc_top1_std")),
                    "attack_top5": as_float(m.get("attacc_top5")), "attack_top5_std": as_float(m.get("attacc_top5_std")),
                    "top1_ci_lo": _ci(m.get("attacc_top1_ci95"), 0), "top1_ci_hi": _ci(m.get("attacc_top1_ci95"), 1),
                    "knn": as_float(m.get("knn_dist")), "fid_eval": as_float(m.get("fid_eval", m.get("fid_inception"))),
                    "delta": "", "epsilon": as_float(rep.get("epsilon")), "seed": cfg.seed,
                    "repeats": a.repeats if a is not None else "",
                    "identities": len(self.ids[a.key]) if a is not None else "",
                }
                if "delta" in rep:
                    row["dp_delta"] = rep["delta"]
                nodef = t.reference or nodef_default
                row["reference"] = nodef if nodef != t.name else ""
                if a is not None and nodef is not None and t.name != nodef and nodef in metrics:
                    row["delta"] = tradeoff(as_float(metas[nodef].get("test_acc")), acc,
                                            as_float(metrics[nodef].get("attacc_top1")), row["attack_top1"])
                rows.append(row)
        write_table(self.run_dir / "results.csv", rows, COLUMNS)
        gates = write_gates(self.run_dir, cfg, rows, as_float(eval_meta.get("test_acc")))
        atomic_write_json(self.run_dir / "results.json", {
            "format": "midre-results", "columns": COLUMNS, "rows": rows, "seed": cfg.seed, "name": cfg.name,
            "eval_model": {"arch": eval_meta.get("arch"), "acc": as_float(eval_meta.get("test_acc"))},
            "dataset": self.data_meta, "nodef_target": nodef_default, "config_hash": cfg.hash(), "gates": gates})
        self.state.stages["results"] = {"key": config_hash(rows), "status": "done", "finished": now()}
        self.state.save()
        return rows

    def _report(self) -> Optional[Path]:
        if not self.cfg.report.enabled:
            return None
        try:
            from .report import write_report
        except ImportError:
            self.console.print("[yellow]    report module not available; skipped[/yellow]")
            return None
        t0 = time.perf_counter()
        crash_point("report")
        self.console.print(f"[bold cyan][{self._count}/{self.n_units}][/bold cyan] report")
        _md, html = write_report(self.run_dir, max_identities=self.cfg.report.max_identities, splits=self.splits,
                                 title=self.cfg.report.title or f"midre report: {self.cfg.name} (seed {self.cfg.seed})")
        self.state.stages["report"] = {"status": "done", "finished": now(),
                                       "seconds": round(time.perf_counter() - t0, 3)}
        self.state.save()
        return Path(html)

    def _features(self) -> None:
        try:
            from .analysis import features as F
        except ImportError:
            self.console.print("[yellow]    feature analysis not available; skipped[/yellow]")
            return
        t0 = time.perf_counter()
        self.console.print("    feature-space analysis (paper 3.2)")
        seed_everything(derive_seed(self.cfg.seed, "features"))
        F.feature_analysis(self.run_dir, splits=self.splits, seed=derive_seed(self.cfg.seed, "features"))
        self.state.stages["analysis/features"] = {"status": "done", "finished": now(),
                                                  "seconds": round(time.perf_counter() - t0, 3)}
        self.state.save()


def write_gates(run_dir: Path, cfg: RunConfig, rows: Sequence[dict[str, Any]], eval_acc: float) -> Optional[dict]:
    """Check the instrument on NoDef (midre.gates) and write RUN/gates.json; None when gates are disabled."""
    if not cfg.gates.enabled:
        return None
    from .gates import check_gates, prior_quality_of_run

    curve = set(RunPlan(cfg).curve_targets)   # the NoDef curve's points are not the reference: not gated
    res = check_gates([r for r in rows if str(r.get("target")) not in curve], eval_acc, cfg.gates,
                      {a.key: a.name for a in cfg.attacks}, prior_quality_of_run(run_dir))
    atomic_write_json(run_dir / "gates.json", res)
    return res


def _holdout_split(public: Any, share: float, seed: int) -> tuple[Any, Any]:
    """(images the priors train on, held-out images for their quality figure); a fixed per-data split."""
    if public is None or share <= 0 or not hasattr(public, "subset") or len(public) < 20:
        return public, None
    perm = torch.randperm(len(public), generator=torch.Generator().manual_seed(seed))
    n_out = max(int(round(share * len(public))), 5)
    return public.subset(perm[n_out:].sort().values), public.subset(perm[:n_out].sort().values)


def _pretraining_pool(splits: Any, dataset: str, options: dict, bname: str) -> Any:
    """The dataset family's pretraining pool (midre.data.load_pretraining), or a ``pretrain`` split."""
    from .data import base

    if getattr(splits, "pretrain", None) is not None:
        return splits.pretrain
    if str(dataset).lower() not in getattr(base, "PRETRAINING_POOLS", {}):
        return None
    try:
        return base.load_pretraining(dataset, resolution=splits.resolution, **options)
    except MidreError as e:
        raise ConfigError(f"'backbones.{bname}.pool_options': {e}") from None


def _pool_sets(splits: Any, dataset: str, pool: str, options: dict, bname: str, seed: int) -> tuple[Any, Any, int]:
    """(train, test, classes) of a backbone's pretraining pool, labels relabelled 0..K-1, 10 % held out."""
    from .data.base import TensorImageSet, in_memory

    src = _pretraining_pool(splits, dataset, options, bname) if pool == "pretrain" else splits.public
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


def _defense_name(spec: dict) -> str:
    if spec.get("name") == "compose":
        return "+".join(d.get("name", "?") for d in spec.get("defenses", []))
    return str(spec.get("name"))


def _ci(v: Any, i: int) -> float:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return as_float(v[i])
    return float("nan")


def _priors_need_no_public(cfg: RunConfig, units: dict) -> bool:
    """True when every prior of the run is a StyleGAN2 given by ``path`` (nothing trained on public data)."""
    return all(kind == "stylegan2" and cfg.priors.params.get("stylegan2", {}).get("path") for kind, _ in units.values())


def _adaptive_eraser(tmeta: dict):
    """The target's own eraser (paper D.5); None when its defense erases nothing (then: a normal attack)."""
    from .attacks.base import adaptive_eraser_from_meta

    try:
        return adaptive_eraser_from_meta(tmeta)
    except MidreError:
        return None


def _train_worker(cfg: RunConfig, run_dir: Path, ddp: Any) -> PipelineResult:
    """Ranks > 0 under torchrun: train the stages rank 0 announces (eval / a target of a seed), in
    lock-step with it; rank 0 alone records run.json, skips finished stages and runs everything else."""
    pipes: dict[int, _Pipeline] = {}
    while (msg := ddp.receive()) is not None:
        seed, role, target = msg
        p = pipes.get(seed)
        if p is None:
            sub_cfg, sub = (cfg.for_seed(seed), run_dir / f"seed-{seed}") if cfg.seeds else (cfg, run_dir)
            p = pipes[seed] = _Pipeline(sub_cfg, sub, False, None)
            p.n_units = 0
            p.state = RunState(sub, sub_cfg)
            p.state.save = lambda status=None: None   # read-only: rank 0 owns run.json
            p._data()
        if role == "eval":
            p._train_eval()
        elif role == "backbone":
            p._train_backbone(target)
        else:
            p._train_target(next(t for t in p.targets if t.name == target))
    return PipelineResult(run_dir=run_dir, seeds=cfg.run_seeds())


# ============================================================================ multi-seed study
def _run_study(cfg: RunConfig, run_dir: Path, progress: bool, stop_after: Optional[str],
               on_stage: Optional[Callable[[str], None]]) -> PipelineResult:
    seeds = cfg.run_seeds()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(run_dir, cfg, kind="study")
    for s in seeds:   # an incompatible config is refused before config.yaml or run.json is rewritten
        sub = run_dir / f"seed-{s}"
        if (sub / "run.json").exists():
            RunState(sub, cfg.for_seed(s)).check_keys(RunPlan(cfg.for_seed(s)).keys, resume_dir=run_dir)
    state.save()
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    console = StageConsole(progress)
    res = PipelineResult(run_dir=run_dir, seeds=seeds)
    per_seed: list[dict[str, Any]] = []
    complete = True
    for s in seeds:
        console.print(f"[bold magenta]== seed {s} ({seeds.index(s) + 1}/{len(seeds)}) ==[/bold magenta]")
        sub = run_dir / f"seed-{s}"
        sub_cfg = cfg.for_seed(s)
        with RunLock(sub):
            r = _Pipeline(sub_cfg, sub, progress, on_stage).run(stop_after)
        state.stages[f"seed-{s}"] = {"status": "done" if r.complete else "stopped", "finished": now(),
                                     "seconds": (json.loads((sub / "run.json").read_text()).get("total_stage_seconds"))}
        state.save()
        complete = complete and r.complete
        per_seed.extend(r.rows)
    if stop_after in (None, "report") or (stop_after == "results"):
        if per_seed:
            rows = aggregate_rows(per_seed)
            write_table(run_dir / "results.csv", rows, COLUMNS + STUDY_EXTRA_COLUMNS)
            eval_accs = [as_float(json.loads((run_dir / f"seed-{s}" / "results.json").read_text()).get("eval_model", {})
                              .get("acc")) for s in seeds if (run_dir / f"seed-{s}" / "results.json").exists()]
            gates = write_gates(run_dir, cfg, rows, sum(eval_accs) / len(eval_accs) if eval_accs else float("nan"))
            write_table(run_dir / "results_per_seed.csv", per_seed, COLUMNS)
            atomic_write_json(run_dir / "results.json", {
                "format": "midre-results", "kind": "study", "columns": COLUMNS + STUDY_EXTRA_COLUMNS, "rows": rows,
                "per_seed": per_seed, "seeds": seeds, "name": cfg.name, "config_hash": cfg.hash(), "gates": gates,
                "aggregation": "mean over seeds; *_std and attack_top1_std/attack_top5_std = sample std across "
                               "seeds of the per-seed values; top1_ci = t-interval (95%) across seeds; "
                               "delta = trade-off of the seed means"})
            res.rows = rows
            res.results_csv, res.results_json = run_dir / "results.csv", run_dir / "results.json"
        if stop_after is None and complete and per_seed and len(cfg.targets) > 1 and cfg.attacks \
                and RunPlan(cfg).defense_references():
            from .analysis.paired import write_paired

            console.print(f"paired differences -> {write_paired(run_dir)}")
            if RunPlan(cfg).curve_targets:   # a NoDef curve: the privacy-utility frontier too
                from .analysis.frontier import write_frontier

                console.print(f"privacy-utility frontier -> {write_frontier(run_dir)}")
        if stop_after is None and cfg.report.enabled and complete:
            try:
                from .report import write_report
            except ImportError:
                write_report = None
            if write_report is not None:
                _md, html = write_report(run_dir, max_identities=cfg.report.max_identities,
                                         title=cfg.report.title or f"midre study: {cfg.name} ({len(seeds)} seeds)")
                res.report = Path(html)
    res.complete = complete and stop_after is None
    state.data["complete"] = res.complete
    state.save(status="complete" if res.complete else "stopped")
    return res
