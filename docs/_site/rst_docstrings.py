"""A Griffe extension (mkdocs.yml, mkdocstrings ``extensions``): midre's docstrings use two reStructuredText
habits that Markdown would garble, and this shows them as meant, at build time, without touching the source:

- a simple table (rows between ``====  ====`` border lines) becomes a fenced ``text`` block, kept aligned;
- a role (``:class:`midre.errors.ConfigError```, ``:func:`x```, ``:mod:`.features```) becomes inline code.
"""
from __future__ import annotations

import re
from typing import Any

from griffe import Extension

BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`~?([^`]+)`")


def fence_tables(text: str) -> str:
    """Wrap every simple table (its three border lines and the rows between) in a ```text fence."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if BORDER.match(lines[i]):
            borders = [j for j in range(i, len(lines)) if BORDER.match(lines[j])]
            end = borders[2] if len(borders) >= 3 else (borders[-1] if len(borders) > 1 else i)
            indent = re.match(r"\s*", lines[i]).group(0)
            out += [f"{indent}```text", *lines[i:end + 1], f"{indent}```"]
            i = end + 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def markdown_of(text: str) -> str:
    return ROLE.sub(r"`\1`", fence_tables(text))


class RstDocstrings(Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = markdown_of(obj.docstring.value)
