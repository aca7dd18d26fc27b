"""Pages of the documentation site that are generated at build time, so they cannot drift from the code.

mkdocs loads this file as a hook (``hooks:`` in mkdocs.yml); tests/test_docs_site.py imports it too.

- ``reference/cli/<command>.md``: one page per ``midre`` sub-command, walked from the real argparse parser
  (:func:`midre.cli.build_parser`), nested actions (``midre analyze paired``, ``midre zoo build`` ...) as
  sections of their command's page; ``reference/cli/index.md`` lists them.  The nav entry
  ``reference/cli/index.md`` in mkdocs.yml is expanded here into one entry per command.
- ``reference/config.md``: the config schema, walked from the pydantic models of :mod:`midre.config` (and the
  ``train`` mapping's :class:`midre.training.TrainConfig`): every field with its type, default, constraints
  and description.  A field's description is its pydantic ``description`` or, where the model has none, the
  comment on (or directly above) the field's line in the source.
- ``index.md``, ``results.md``, ``benchmarks.md``: README.md, RESULTS.md and BENCHMARKS.md as they are in the
  repository root (included at build time, never copied into docs/).

Links are written as they work on GitHub (relative to the file's place in the repository:
``docs/gates.md`` from README.md, ``../RESULTS.md`` from docs/); :func:`rewrite_links` maps them onto the
site's pages, so one spelling works in both places and a broken one fails ``mkdocs build --strict``.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import io
import json
import posixpath
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:          # document this checkout's midre, not another installed copy
    sys.path.insert(0, str(ROOT))

CLI_DIR = "reference/cli"
CLI_INDEX = f"{CLI_DIR}/index.md"
CONFIG_PAGE = "reference/config.md"
API_DIR = "reference/api"
API_INDEX = f"{API_DIR}/index.md"
# the public modules documented from their docstrings (a package: with each public submodule)
API_MODULES = ["erasing", "data", "models", "defenses", "attacks", "priors", "training", "stopping", "metrics",
               "gates", "results", "engine", "stages", "pipeline", "audit", "analysis", "config", "rules",
               "checkpoint", "loading", "plugins", "errors"]
# site page -> the repository file it shows
INCLUDED = {"index.md": "README.md", "results.md": "RESULTS.md", "benchmarks.md": "BENCHMARKS.md"}


# ============================================================================ the command line
def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every sub-command of ``parser``, in ``--help`` order."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def cli_commands() -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Every registered top-level command: name -> (one-line help, parser)."""
    from midre.cli import build_parser

    return {name: (helptext, sub) for name, helptext, sub in _subparsers(build_parser())}


def _md(text: str) -> str:
    """Plain help text made safe for Markdown (and for a table cell)."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*").replace("|", "\\|")


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = parser._get_formatter()
    if not action.option_strings:
        return fmt._metavar_formatter(action, action.dest)(1)[0]
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    meta = fmt._format_args(action, action.dest.upper())
    return ", ".join(f"{o} {meta}" for o in action.option_strings)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """One table per argument group (positionals, options, named groups); ``--help`` and the
    sub-command chooser left out."""
    fmt = parser._get_formatter()
    lines: list[str] = []
    for group in parser._action_groups:
        rows = [a for a in group._group_actions
                if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
                and a.help != argparse.SUPPRESS]
        if not rows:
            continue
        lines += ["", f"**{_md(group.title or 'arguments')}**", "", "| argument | what it does |", "|---|---|"]
        for a in rows:
            lines.append(f"| `{_invocation(parser, a)}` | {_md(fmt._expand_help(a)) if a.help else ''} |")
    return lines


def _command_section(path: str, helptext: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    if parser.description or helptext:
        lines += [_md(parser.description or helptext), ""]
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines += ["```text", usage, "```"]
    lines += _options(parser)
    for name, subhelp, sub in _subparsers(parser):
        lines += [""] + _command_section(f"{path} {name}", subhelp, sub, level + 1)
    return lines


def cli_pages() -> dict[str, str]:
    """``reference/cli/<command>.md`` for every registered command, and the index listing them."""
    commands = cli_commands()
    pages = {}
    index = ["# Command line", "",
             "Generated at build time from midre's own argument parsers (`midre.cli.build_parser`): what",
             "`midre COMMAND --help` prints, one page per command. `midre` alone runs `midre run` (the",
             "quickstart). A user error is one line on stderr and exit code 2.", "",
             "| command | what it does |", "|---|---|"]
    for name, (helptext, parser) in commands.items():
        pages[f"{CLI_DIR}/{name}.md"] = "\n".join(_command_section(f"midre {name}", helptext, parser, 1)) + "\n"
        index.append(f"| [`midre {name}`]({name}.md) | {_md(helptext)} |")
    pages[CLI_INDEX] = "\n".join(index) + "\n"
    return pages


# ============================================================================ the config schema
def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, or the comment lines directly above it, in ``cls``'s source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = src.splitlines()
    out = {}
    for i, line in enumerate(lines, start=1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if not m or m.group(1) not in getattr(cls, "model_fields", {}):
            continue
        if i in comments:
            out[m.group(1)] = comments[i]
            continue
        above, j = [], i - 1
        while j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, comments.get(j, ""))
            j -= 1
        if above:
            out[m.group(1)] = " ".join(above)
    return out


def _models_in(annotation: Any) -> Iterator[type]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _type_name(annotation: Any) -> str:
    """A field's type in words, each model type linked to its section (``int or null``, ``list[TargetSection]``)."""
    from pydantic import BaseModel

    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):       # Optional[X], Union[X, Y] and X | Y alike
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"`{a!r}`" for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: Any) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "at least", "max_length": "at most"}
    out = []
    for meta in field.metadata:
        for attr, word in words.items():
            value = getattr(meta, attr, None)
            if value is not None:
                unit = "" if "length" not in attr else (" entry" if value == 1 else " entries")
                out.append(f"{word} {value}{unit}")
    return ", ".join(out)


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        return "(section defaults)"
    return f"`{json.dumps(value, ensure_ascii=False)}`"      # JSON is YAML: null, true, "run", {}


def _model_table(model: type) -> list[str]:
    comments = _field_comments(model)
    lines = ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation).replace("|", "\\|")
        desc = field.description or comments.get(name, "")
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {_constraints(field)} | {_md(desc)} |")
    return lines


def schema_models() -> list[tuple[str, type]]:
    """(where it appears in a config, model) for every model of the config schema, parents first."""
    from midre.config import RunConfig
    from midre.stopping import StopRule
    from midre.training import TrainConfig

    seen: list[type] = []
    out: list[tuple[str, type]] = []

    def visit(where: str, model: type) -> None:
        if model in seen:
            return
        seen.append(model)
        out.append((where, model))
        for name, field in model.model_fields.items():
            for sub in _models_in(field.annotation):
                visit(f"{where}.{name}" if where else name, sub)

    visit("", RunConfig)
    visit("train", TrainConfig)          # the train mapping of defaults, targets[i], eval_model, backbones.NAME
    visit("train.stop", StopRule)
    return out


def config_page() -> str:
    import midre.config

    models = schema_models()
    example = re.search(r"::\n\n((?:    .*\n|\n)+)", midre.config.__doc__ or "")
    lines = ["# Config schema", "",
             "Generated at build time from the pydantic models that validate a config (`midre.config.RunConfig`",
             "and its sections; the `train` mappings are validated by `midre.training.TrainConfig`). Unknown keys",
             "are errors. How configs extend each other and how `--set` overrides a key: see the module",
             "documentation of [`midre.config`](api/config.md). The built-in configs: `midre run --list`.",
             ""]
    if example:          # the annotated example of midre.config's docstring
        lines += ["A config at a glance (from `midre.config`'s docstring):", "", "```yaml",
                  *[ln[4:] for ln in example.group(1).rstrip().splitlines()], "```", ""]
    for where, model in models:
        lines += [f"## {model.__name__}", ""]   # its anchor: the lower-cased name
        if where:
            lines += [f"*Where:* `{where}`" + (" (in `defaults`, `targets[i]`, `eval_model` and `backbones.NAME`)"
                                              if where.split(".")[0] == "train" else ""), ""]
        doc = inspect.getdoc(model)
        if doc and doc != inspect.getdoc(model.__mro__[1]):
            lines += [_md(doc), ""]
        lines += _model_table(model) + [""]
    return "\n".join(lines)


# ============================================================================ the Python API
def api_modules() -> dict[str, list[str]]:
    """``midre.<name>`` of :data:`API_MODULES` -> the dotted modules its page renders (a package's own
    module first, then each public submodule found on disk, so a new submodule appears by itself)."""
    out = {}
    for name in API_MODULES:
        pkg = ROOT / "midre" / name
        mods = [f"midre.{name}"]
        if pkg.is_dir():
            mods += [f"midre.{name}.{p.stem}" for p in sorted(pkg.glob("*.py")) if not p.stem.startswith("_")]
        out[name] = mods
    return out


def api_pages() -> dict[str, str]:
    pages = {}
    index = ["# Python API", "",
             "Generated from the docstrings by mkdocstrings. The stable entry points are the registries and",
             "builders (`create_model`, `load_dataset`, `build_defense`, `build_attack`), `train_classifier` and",
             "the metrics; everything else is documented for contributors.", "",
             "| module | what it is |", "|---|---|"]
    for name, mods in api_modules().items():
        pages[f"{API_DIR}/{name}.md"] = "\n\n".join(
            [f"# `midre.{name}`"] + [f"::: {m}\n    options:\n      show_root_heading: {'false' if i == 0 else 'true'}"
                                     for i, m in enumerate(mods)]) + "\n"
        index.append(f"| [`midre.{name}`]({name}.md) | {_md(_summary(ROOT / 'midre', name))} |")
    pages[API_INDEX] = "\n".join(index) + "\n"
    return pages


def _summary(base: Path, name: str) -> str:
    """The first sentence of a module's docstring, read without importing it."""
    import ast

    path = base / name / "__init__.py" if (base / name).is_dir() else base / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = re.split(r"(?<=[.:])\s", doc.strip(), maxsplit=1)[0] if doc else ""
    return first.rstrip(":")


# ============================================================================ included files, links
def included_pages() -> dict[str, str]:
    return {page: (ROOT / src).read_text(encoding="utf-8") for page, src in INCLUDED.items()}


def generated_pages() -> dict[str, str]:
    """Every page this hook adds to the site: path under docs/ -> Markdown."""
    return {**cli_pages(), CONFIG_PAGE: config_page(), **api_pages(), **included_pages()}


_LINK = re.compile(r"(\]\()(<?)([^)\s#>]+)(>?)(#[^)\s]*)?((?:\s+\"[^\"]*\")?\))")
_SOURCES = {src: page for page, src in INCLUDED.items()}


def site_path(repo_path: str) -> str | None:
    """The site page (path under docs/) that shows repository file ``repo_path``, if any."""
    if repo_path in _SOURCES:
        return _SOURCES[repo_path]
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/"):]
    if repo_path in result_figures():
        return repo_path
    return None


@functools.lru_cache(maxsize=1)
def result_figures() -> dict[str, Path]:
    """The figures committed with the results' summaries (``results/NAME/**.png``), which RESULTS.md shows:
    the site serves each at the same path."""
    return {p.relative_to(ROOT).as_posix(): p for p in sorted((ROOT / "results").rglob("*.png"))}


def rewrite_links(markdown: str, page: str) -> str:
    """Map each relative link of site page ``page``, written relative to the page's repository file, onto
    the site.  A link the site cannot show is left as it is (mkdocs --strict then names it)."""
    repo_file = INCLUDED.get(page, f"docs/{page}")
    here = posixpath.dirname(repo_file)

    def fix(m: re.Match) -> str:
        target = m.group(3)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        site = site_path(posixpath.normpath(posixpath.join(here, target)))
        if site is None:
            return m.group(0)
        rel = posixpath.relpath(site, posixpath.dirname(page) or ".")
        return f"{m.group(1)}{m.group(2)}{rel}{m.group(4)}{m.group(5) or ''}{m.group(6)}"

    return _LINK.sub(fix, markdown)


# ============================================================================ mkdocs hooks
def generated_nav() -> dict[str, tuple[str, list]]:
    """A nav entry naming one of these index pages becomes a section: index page -> (title, children)."""
    return {CLI_INDEX: ("Command line", [CLI_INDEX] + [{f"midre {n}": f"{CLI_DIR}/{n}.md"} for n in cli_commands()]),
            API_INDEX: ("Python API", [API_INDEX] + [{f"midre.{n}": f"{API_DIR}/{n}.md"} for n in API_MODULES])}


def expand_nav(nav: list, sections: dict[str, tuple[str, list]]) -> list:
    """``nav`` with every entry that names a key of ``sections`` (bare or titled) replaced by its section."""
    out: list = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) and len(item) == 1 else item
        title = next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None
        if isinstance(value, str) and value in sections:
            out.append({title or sections[value][0]: sections[value][1]})
        elif isinstance(value, list):
            out.append({title: expand_nav(value, sections)})
        else:
            out.append(item)
    return out


def on_config(config: Any) -> Any:
    config["nav"] = expand_nav(config["nav"] or [], generated_nav())
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, text in generated_pages().items():
        old = files.get_file_from_path(path)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=text))
    for path, src in result_figures().items():
        files.append(File.generated(config, path, content=src.read_bytes()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return rewrite_links(markdown, page.file.src_uri)
