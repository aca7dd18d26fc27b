"""What every stage of a run reads: the config, its plan (stage keys), the run record and the loaded data."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, TargetSection
from ..loading import load_model
from ..plan import RunPlan
from ..rundir import RunState, StageConsole
from ..utils import resolve_device


@dataclass
class RunData:
    """The data of one seed, loaded once by the data stage (midre.stages.data)."""

    splits: Any
    train_set: Any
    test_set: Any
    public_set: Any
    prior_public: Any            # the public images the priors train on
    public_holdout: Any          # held out of them for the priors' quality figure
    ids: dict[str, list[int]]    # attack key -> the identities it attacks
    meta: dict[str, Any]         # recorded with every model (name, root, resolution, seed, options)


@dataclass
class RunContext:
    """One seed's run directory with its config; ``data`` is set by the data stage, ``state`` by :meth:`open`."""

    cfg: RunConfig
    run_dir: Path
    progress: bool = True
    use_zoo: bool = True               # False while `midre zoo build` makes the entries themselves
    plan: RunPlan = field(init=False)
    targets: list[TargetSection] = field(init=False)
    device: Any = field(init=False)
    console: StageConsole = field(init=False)
    state: RunState | None = None
    data: RunData | None = None
    cache: dict[str, Any] = field(default_factory=dict)   # loaded models and pools shared by stages

    def __post_init__(self) -> None:
        self.device = resolve_device(self.cfg.device)
        self.targets = self.cfg.expanded_targets()
        self.plan = RunPlan(self.cfg, self.targets, "config")   # stage keys and units; validates before any write
        self.console = StageConsole(self.progress)

    @property
    def keys(self) -> dict[str, str]:
        return self.plan.keys

    def open(self, *, read_only: bool = False) -> RunState:
        """The run record (RUN/run.json), created or continued; ``read_only``: never written (DDP ranks > 0)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState(self.run_dir, self.cfg)
        if read_only:
            self.state.save = lambda status=None: None   # type: ignore[method-assign]
        return self.state

    def target(self, name: str) -> TargetSection:
        return next(t for t in self.targets if t.name == name)

    def load(self, path: Path) -> tuple[Any, dict]:
        """A model of this run (target, evaluation model) on the run's device, with its metadata."""

        return load_model(path, device=self.device)

    def eval_model(self) -> Any:
        """The evaluation model, loaded once."""
        if "eval" not in self.cache:
            self.cache["eval"] = self.load(self.run_dir / "eval")[0]
        return self.cache["eval"]
