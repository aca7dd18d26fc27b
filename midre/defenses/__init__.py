"""Defenses: one file each, all registered in DEFENSES (see base.py for the hooks)."""
from . import (  # noqa: F401,E402  (the baseline defenses)
    bido,
    dp,
    mid,
    midre,  # noqa: F401,E402  (registers midre + the erasing ablations)
    mirad,
    nls,
    tldmi,
    trapmid,
)
from .base import DEFENSES, Compose, Defense, StepContext, TrainContext, build_defense  # noqa: F401
