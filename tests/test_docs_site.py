"""The documentation site (mkdocs.yml, docs/_site/midre_site.py): the generated CLI reference covers every
command and option that ``midre ... --help`` shows, the nav names only pages that exist (and every page is in
it), links written for GitHub land on the site's pages, and the config schema shows the real fields.  CI also
builds the site with ``mkdocs build --strict`` (.ci/run)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from midre.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _site():
    spec = importlib.util.spec_from_file_location("midre_site", DOCS / "_site" / "midre_site.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def site():
    return _site()


@pytest.fixture(scope="module")
def cli_pages(site):
    return site.cli_pages()


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def _listed_commands(help_text: str) -> list[str]:
    """The sub-command names argparse lists under a COMMAND / ACTION / ANALYSIS positional (4-space indent)."""
    return re.findall(r"^    ([a-z][\w-]*)(?:\s|$)", help_text, flags=re.M)


def _options(help_text: str) -> set[str]:
    """The option strings of an argparse --help: the first column of each line that starts with a dash."""
    heads = [re.split(r"\s{2,}", ln.strip())[0] for ln in help_text.splitlines() if re.match(r"^\s+-", ln)]
    return {o for h in heads for o in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", h)}


def test_cli_reference_covers_every_command_and_option(capsys, cli_pages):
    """Read the commands and options from argparse's own --help output, not from the generator's walk."""
    top = _listed_commands(_help(capsys))
    assert {"run", "train", "attack", "audit", "zoo", "results", "analyze"} <= set(top), top
    checked = 0
    todo = [(c,) for c in top]
    while todo:
        path = todo.pop()
        text = _help(capsys, *path)
        page = cli_pages.get(f"reference/cli/{path[0]}.md")
        assert page is not None, f"no CLI reference page for `midre {path[0]}`"
        heading = "#" * len(path) + f" `midre {' '.join(path)}`"
        assert heading in page, f"reference/cli/{path[0]}.md lacks a section `midre {' '.join(path)}`"
        section = page.split(heading, 1)[1].split("\n#", 1)[0]          # up to the next (sub-)command
        rows = {o for cell in re.findall(r"^\| `([^`]*)` \|", section, flags=re.M)
                for o in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", cell)}
        missing = _options(text) - {"-h", "--help"} - rows
        assert not missing, f"`midre {' '.join(path)}`: options {sorted(missing)} have no row on its reference page"
        subs = _listed_commands(text) if len(path) == 1 else []
        todo += [(*path, s) for s in subs]
        checked += 1
    assert checked >= len(top) + 10                     # the nested actions (analyze, zoo, results ...) too
    index = cli_pages["reference/cli/index.md"]
    assert all(f"[`midre {c}`]({c}.md)" in index for c in top)
    assert set(cli_pages) == {f"reference/cli/{c}.md" for c in top} | {"reference/cli/index.md"}


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def missing_from_nav(nav, generated: set[str]) -> list[str]:
    """Nav entries that are neither a file under docs/ nor a page the hook generates."""
    return [f for f in _nav_files(nav) if not (DOCS / f).is_file() and f not in generated]


def test_nav_names_only_existing_pages_and_every_page_is_in_it(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    generated = set(site.generated_pages())
    nav = site.expand_nav(config["nav"], site.generated_nav())
    assert missing_from_nav(nav, generated) == []
    # the check itself fails on a page that does not exist
    bad = [{"Gone": "concepts/no-such-page.md"}, "gates.md"]
    assert missing_from_nav(bad, generated) == ["concepts/no-such-page.md"]
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "_site" not in p.parts}
    assert on_disk - set(_nav_files(nav)) == set(), "pages under docs/ that the nav leaves out"
    assert {"reference/cli/run.md", "reference/config.md", "reference/api/erasing.md", "results.md",
            "benchmarks.md", "index.md", "notebook/benchmark-v2.md"} <= set(_nav_files(nav))


def test_links_written_for_github_land_on_site_pages(site):
    fix = site.rewrite_links
    assert fix("[g](docs/gates.md#prior-quality)", "index.md") == "[g](gates.md#prior-quality)"
    assert fix("![r](docs/audit/report.png)", "index.md") == "![r](audit/report.png)"
    # from docs/concepts/, ../BENCHMARKS.md is docs/BENCHMARKS.md: no such page, left for --strict to name
    assert (fix("[R](../../RESULTS.md) [B](../BENCHMARKS.md)", "concepts/paired.md")
            == "[R](../results.md) [B](../BENCHMARKS.md)")
    assert fix("[B](../BENCHMARKS.md)", "getting-started.md") == "[B](benchmarks.md)"
    assert fix("[n](docs/notebook/benchmark-v2.md)", "results.md") == "[n](notebook/benchmark-v2.md)"
    # a figure committed with a results summary is served at its own path (RESULTS.md shows frontier-64's)
    assert "results/frontier-64/analysis/frontier_gmi.png" in site.result_figures()
    assert (fix("![f](results/frontier-64/analysis/frontier_gmi.png)", "results.md")
            == "![f](results/frontier-64/analysis/frontier_gmi.png)")
    assert (fix("![f](../../results/frontier-64/analysis/frontier_gmi.png)", "concepts/paired.md")
            == "![f](../results/frontier-64/analysis/frontier_gmi.png)")
    for untouched in ("[w](https://example.org/x.md)", "[a](#install)", "[e](../examples/plugin)"):
        assert fix(untouched, "plugins.md") == untouched


def test_config_reference_shows_the_real_fields(site):
    page = site.config_page()
    gates = page.split("## GatesSection", 1)[1].split("\n## ", 1)[0]
    assert "| `eval_acc` | float | `95.0` | >= 0, <= 100 |" in gates
    assert "| `weakest` | str or null | `\"gmi\"` |" in gates
    targets = page.split("## TargetSection", 1)[1].split("\n## ", 1)[0]
    assert "| `stop_early` | [StopEarly](#stopearly) or null | `null` |" in targets
    assert "the NoDef target for the trade-off" in targets          # a source comment became the description
    assert "## TrainConfig" in page and "## StopRule" in page and "*Where:* `train.stop`" in page


def test_getting_started_installs_what_readme_and_ci_install():
    lines = (ROOT / "README.md").read_text().splitlines()
    install = lines[lines.index("<!-- test-install -->") + 2]
    assert "docs" in re.search(r"\.\[([a-z0-9_,-]+)\]", install).group(1).split(",")
    assert install in (DOCS / "getting-started.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'mkdocs build --strict -d "$work/site"' in ci
    assert ci.index("mkdocs build --strict") > ci.index('eval "$cmd"')
