"""The ``midre`` command.  Each sub-command lives in its own module here and defines
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` runs the command.

User errors (MidreError) become one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

# Order = order in `midre --help`.  A module is listed only if it exists in this installation.
COMMAND_MODULES = ["run", "train", "attack", "evaluate", "report", "sweep", "analyze", "info", "convert", "userstudy",
                   "audit", "zoo", "results"]


def _worth_showing(default: object) -> bool:
    """A default worth printing in --help (0 is; None, False, [] and SUPPRESS are not)."""
    return not (default is None or default is False or default == [] or default == argparse.SUPPRESS)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in ``--help`` unless the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = _worth_showing(action.default) and action.option_strings
        if shown and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


class MidreParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2; --help shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):  # type: ignore[override]
        # an option without help text still lists its default (argparse hides help-less options' defaults)
        if kwargs.get("help") is None and _worth_showing(kwargs.get("default")):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = MidreParser(prog="midre", description="Model-inversion defense (MIDRE) and evaluation toolkit.")
    parser.add_argument("--version", action="version", version=f"midre {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MidreParser)
    for name in COMMAND_MODULES:
        modname = f"{__name__}.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import MidreError

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if args.command is None:
            # `midre` alone runs the main job with the embedded quickstart when available.
            if importlib.util.find_spec(f"{__name__}.run") is not None:
                args = parser.parse_args(["run", *([] if argv is None else list(argv))])
            else:
                parser.print_help()
                return 0
        else:
            parser.parse_args([args.command, "--help"])
    try:
        return int(args.func(args) or 0)
    except MidreError as e:
        sys.stderr.write(f"midre: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("midre: interrupted; re-run the same command to resume\n")
        return 130


def console_main() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:          # `midre run --list | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    raise SystemExit(code)
