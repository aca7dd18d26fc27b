"""`midre datasets | models | defenses | attacks`: list what is registered."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in [("datasets", "list dataset families"), ("models", "list architectures"),
                           ("defenses", "list defenses"), ("attacks", "list attacks")]:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(func=run, what=name)


def _registry(what: str):
    if what == "datasets":
        from ..data import DATASETS
        return DATASETS
    if what == "models":
        from ..models import MODELS
        return MODELS
    if what == "defenses":
        from ..defenses import DEFENSES
        return DEFENSES
    from ..attacks import ATTACKS
    return ATTACKS


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    reg = _registry(args.what)
    table = Table(title=f"midre {args.what}")
    table.add_column("name", style="bold")
    extra_keys: list[str] = []
    for n in reg.names():
        for k in reg.info(n):
            if k != "description" and k not in extra_keys:
                extra_keys.append(k)
    for k in extra_keys:
        table.add_column(k)
    table.add_column("description")
    for n in reg.names():
        info = reg.info(n)
        table.add_row(n, *[str(info.get(k, "")) for k in extra_keys], info.get("description", ""))
    Console().print(table)
    return 0
