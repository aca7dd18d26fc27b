"""The stage engine: a tiny make over a run directory.

A :class:`Stage` has a name (``targets/nodef``), a key (a hash of everything it depends on, from
:class:`midre.plan.RunPlan`), the stages it needs, and a ``run()`` that builds its artefact.  The plan says
what to build, :class:`midre.rundir.RunState` (``RUN/run.json``) what is built: :func:`run_stages` skips a
stage recorded done with the same key, records the others (start, time, peak memory, the figures ``run``
returns), and stops after a stage group when asked.  ``midre run`` (each seed of a study), ``midre audit`` and
``midre zoo build`` are lists of stages run by this one function.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MidreError
from .rundir import crash_point


@dataclass(frozen=True)
class Stage:
    """One unit of work of a run.

    ``key`` None: the stage is not resumable by key (loading data, the results table, the report); it runs every
    time and records itself.  ``artefact``: a file the stage leaves; when it is missing the stage's record is
    dropped and the stage runs again (metrics are re-derived from the attacks' artefacts).
    """

    name: str
    run: Callable[[], dict | None]
    label: str | Callable[[], str]    # a callable when it needs what earlier stages load
    key: str | None = None
    needs: tuple[str, ...] = ()
    artefact: Path | None = None

    @property
    def group(self) -> str:
        """The stage group (``targets``, ``priors``, ...): what ``stop_after`` names."""
        head = self.name.split("/", 1)[0]
        if head not in GROUPS:
            raise StageOrderError(f"stage '{self.name}' is in no stage group; groups: {', '.join(GROUPS)}")
        return head


class StageOrderError(MidreError):
    """A composition lists a stage before one it needs (a bug in the composition, not user input)."""


def check_order(stages: Sequence[Stage], done: Sequence[str] = ()) -> None:
    """Refuse a list in which a stage comes before a stage it needs (that is neither listed earlier nor done)."""
    seen = set(done)
    for s in stages:
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise StageOrderError(f"stage '{s.name}' needs '{missing[0]}', which does not come before it")
        seen.add(s.name)


# the order of the stage groups in every composition; ``stop_after`` names one of them
GROUPS = ("data", "backbones", "eval", "targets", "cost", "priors", "attacks", "metrics", "results", "analysis",
          "report")


def run_stages(stages: Sequence[Stage], state: Any, console: Any, *, stop_after: str | None = None,
               on_stage: Callable[[str], None] | None = None, measure: bool = True) -> bool:
    """Run ``stages`` in order over ``state`` (a RunState); True when the run is complete, False when it was
    asked to stop after a group before the last.

    ``stop_after`` (a group of :data:`GROUPS`): stop before the first stage of a later group.  ``on_stage`` is
    called with the name of each stage that ran (not skipped); ``measure`` records CPU seconds and peak memory.
    """
    check_order(stages)
    last = GROUPS.index(stop_after) if stop_after is not None else len(GROUPS)
    for i, s in enumerate(stages, start=1):
        if GROUPS.index(s.group) > last:
            return False
        head = f"[{i}/{len(stages)}]"
        label = s.label() if callable(s.label) else s.label
        if s.key is None:
            console.print(f"[bold cyan]{head}[/bold cyan] {label}")
            _guarded(s)()
        else:
            if s.artefact is not None and not s.artefact.exists():
                state.stages.pop(s.name, None)
            extra = state.run_stage(s.name, s.key, _guarded(s), label, head, console, cpu_seconds=measure,
                                    note_memory=measure)
            if extra is not None and on_stage is not None:
                on_stage(s.name)
    return last >= len(GROUPS) - 1          # asked to stop before the last group: not complete


def _guarded(s: Stage) -> Callable[[], dict | None]:
    def run() -> dict | None:
        crash_point(s.name)          # the crash tests' hook (MIDRE_CRASH_AT)
        return s.run()

    return run
