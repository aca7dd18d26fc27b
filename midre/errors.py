"""Errors a user can cause.

Every error that bad input can trigger is a :class:`MidreError`.  Its message is one actionable line
(what is wrong and how to fix it); the command line prints it on stderr and exits with code 2.
Subclasses also derive from the matching builtin (``ValueError``, ``FileNotFoundError`` ...) so that
library users can catch either.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class MidreError(Exception):
    """Base class for user-facing errors (one line, actionable)."""

    exit_code = 2


class ArgumentError(MidreError, ValueError):
    """An argument is out of range or of the wrong type."""


class UnknownNameError(MidreError, KeyError):
    """A dataset / model / defense / attack name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(MidreError, ValueError):
    """A dataset root is missing, in the wrong layout, or holds a corrupt file."""


class CheckpointError(MidreError, ValueError):
    """A checkpoint is missing, truncated, unsafe, or does not match the data."""


class ConfigError(MidreError, ValueError):
    """A YAML config is invalid."""


class RunDirError(MidreError, RuntimeError):
    """A run directory is locked, unwritable, or made by an incompatible config."""


class TrainingDivergedError(MidreError, RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' when a close match exists, else ''."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    choices = sorted(choices)
    return UnknownNameError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )
