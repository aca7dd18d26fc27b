"""`midre datasets | models | defenses | attacks`: list what is registered."""
from __future__ import annotations

import argparse
import inspect


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


_SKIP = {"root", "resolution", "seed", "num_classes", "options", "params", "kwargs"}


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(str(k) for k in v)
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for title, reg in _registries(args.what):
        table = Table(title=f"midre {title}", show_lines=False)
        table.add_column("name", style="bold", no_wrap=True)
        extra = []
        for n in reg.names():
            for k in reg.info(n):
                if k not in ("description", "options", "params") and k not in extra:
                    extra.append(k)
        for k in extra:
            table.add_column(k)
        table.add_column("parameters / options")
        table.add_column("description")
        for n in reg.names():
            info = reg.info(n)
            try:
                sig = [p for p in inspect.signature(reg.get(n)).parameters if p not in _SKIP]
            except (TypeError, ValueError):
                sig = []
            opts = info.get("options") or info.get("params")
            params = _fmt(opts) if opts else ", ".join(sig)
            table.add_row(n, *[escape(_fmt(info.get(k, ""))) for k in extra], escape(params),
                          escape(info.get("description", "")))
        console.print(table)
    return 0
