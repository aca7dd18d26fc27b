"""`midre datasets | models | defenses | attacks`: list what is registered (built-ins and plugins).

One block per entry, wrapped to the terminal's width (``COLUMNS``; 100 when not a terminal), so the
listing stays readable in an 80-column terminal; names are never broken::

    midre               MIDRE: random erasing of a random rectangle ...
                        parameters: area, ...
"""
from __future__ import annotations

import argparse
import inspect
import shutil
import textwrap


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in [("datasets", "list dataset families (private/public splits) and public sets"),
                           ("models", "list architectures"), ("defenses", "list defenses"),
                           ("attacks", "list attacks")]:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(func=run, what=name)


def _registries(what: str):
    if what == "datasets":
        from ..data import DATASETS
        from ..data.folders import PUBLIC_SETS
        return [("dataset families", DATASETS), ("public-only sets (for --public / public=)", PUBLIC_SETS)]
    if what == "models":
        from ..models import MODELS
        return [("architectures", MODELS)]
    if what == "defenses":
        from ..defenses import DEFENSES
        return [("defenses", DEFENSES)]
    from ..attacks import ATTACKS
    return [("attacks", ATTACKS)]


_SKIP = {"root", "resolution", "seed", "num_classes", "options", "params", "kwargs", "preset", "self"}
NAME_WIDTH = 16     # names up to this long share their line with the description


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def _parameters(reg, name: str, info: dict) -> str:
    opts = info.get("options") or info.get("params")
    if opts:
        return _fmt(opts)
    obj = reg.get(name)
    defaults = getattr(obj, "defaults", None)      # attacks: their hyper-parameters with defaults
    if isinstance(defaults, dict) and defaults:
        return _fmt(defaults)
    try:
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return ""
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}"
                     for p in params if p.name not in _SKIP and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def entry_lines(reg, name: str, width: int) -> list[str]:
    """The block of one registry entry, every line at most ``width`` characters."""
    info = reg.info(name)
    facts = [info.get("description", "") or "(no description)"]
    facts += [f"{k}: {_fmt(v)}" for k, v in info.items() if k not in ("description", "options", "params", "plugin")]
    params = _parameters(reg, name, info)
    if params:
        facts.append(f"parameters: {params}")
    if info.get("plugin"):
        facts.append(f"plugin package: {info['plugin']}")
    indent = 2 + NAME_WIDTH + 2
    if width - indent < 30:                # very narrow: everything below the name
        indent = 6
    body = [ln for f in facts for ln in textwrap.wrap(f, width - indent, break_on_hyphens=False) or [""]]
    head = f"  {name}"
    if len(head) + 2 <= indent:
        return [head.ljust(indent) + body[0], *[" " * indent + ln for ln in body[1:]]]
    return [head, *[" " * indent + ln for ln in body]]


def run(args: argparse.Namespace) -> int:
    width = max(40, shutil.get_terminal_size((100, 24)).columns)
    out: list[str] = []
    for title, reg in _registries(args.what):
        names = reg.names()
        out.append(f"midre {title} ({len(names)})")
        out.append("")
        for n in names:
            out.extend(entry_lines(reg, n, width))
        out.append("")
    print("\n".join(out).rstrip("\n"))
    return 0
