"""`midre datasets | models | defenses | attacks` stay readable in an 80-column terminal."""
from __future__ import annotations

import pytest

from midre.cli import main
from midre.cli.info import _registries


@pytest.mark.parametrize("what", ["datasets", "models", "defenses", "attacks"])
@pytest.mark.parametrize("columns", [80, 60])
def test_listing_fits_the_terminal_and_keeps_names_whole(what, columns, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main([what]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in lines) <= columns, max(lines, key=len)
    starts = {ln.split()[0] for ln in lines if ln.startswith("  ") and not ln.startswith("   ")}
    for _, reg in _registries(what):
        for name in reg.names():
            assert name in starts, name                    # every name on its own line start, unbroken
            desc = reg.info(name).get("description", "")
            if desc:                                       # the description's first word is shown
                assert any(desc.split()[0] in ln for ln in lines), (name, desc)


def test_listing_shows_parameters_and_facts(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    main(["attacks"])
    out = capsys.readouterr().out
    assert "access: label-only" in out and "prior: gan" in out
    assert "parameters: iterations=1500, lr=0.02" in out             # gmi's defaults
    main(["datasets"])
    out = capsys.readouterr().out
    assert "midre dataset families (" in out and "midre public-only sets" in out
    assert "kind: embedded" in out


def test_a_long_name_gets_its_own_line():
    from midre.cli.info import NAME_WIDTH, entry_lines
    from midre.registry import Registry

    reg = Registry("thing")

    def f(alpha: int = 1, beta: str = "x"):
        """A thing with a long name whose description wraps over more than one line of the listing."""

    long_name = "n" * (NAME_WIDTH + 5)
    reg.register(long_name, family="test")(f)
    lines = entry_lines(reg, long_name, 40)
    assert lines[0] == f"  {long_name}" and all(len(ln) <= 40 for ln in lines)
    assert any("parameters: alpha=1, beta=x" in ln for ln in lines)
