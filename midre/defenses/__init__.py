"""Defenses: one file each, all registered in DEFENSES (see base.py for the hooks)."""
from .base import DEFENSES, Compose, Defense, StepContext, TrainContext, build_defense  # noqa: F401
