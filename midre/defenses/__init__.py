"""Defenses: one file each, all registered in DEFENSES (see base.py for the hooks)."""
from .base import DEFENSES, Compose, Defense, StepContext, TrainContext, build_defense  # noqa: F401
from . import midre  # noqa: F401,E402  (registers midre + the erasing ablations)
from . import mid, bido, nls, tldmi, mirad, dp, trapmid  # noqa: F401,E402  (the baseline defenses)
