"""What a new user meets in the first hour (issue 13): readable files, no stale lock, honest error bars,
a useful `midre run --list`, defaults shown in --help, and a README / .ci/run that install what the
test suite needs."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from midre.cli import main
from midre.plotting import percent_yerr
from midre.utils import RunLock, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "report.html") == 0o666 & ~umask


def test_training_checkpoints_are_world_readable_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["train", "--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
                     "--data-option", "num_public=2", "--data-option", "images_per_id=4", "--arch", "tinycnn",
                     "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "t")]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "t").rglob("*") if p.is_file()]
    assert files and {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_run_lock_is_removed_when_the_run_ends(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):  # and the directory can be locked again
        pass
    assert not (tmp_path / ".lock").exists()


def test_a_second_holder_is_still_refused(tmp_path):
    from midre.errors import RunDirError

    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            with RunLock(tmp_path):
                pass


def test_error_bars_stay_inside_0_100():
    lo, hi = percent_yerr([3.33, 98.0, 50.0, 10.0], [5.77, 4.0, 10.0, float("nan")])
    assert lo[0] == pytest.approx(3.33) and hi[0] == pytest.approx(5.77)   # 0 .. 9.10
    assert lo[1] == pytest.approx(4.0) and hi[1] == pytest.approx(2.0)     # 94 .. 100
    assert (lo[2], hi[2]) == (pytest.approx(10.0), pytest.approx(10.0))
    assert (lo[3], hi[3]) == (0.0, 0.0)


def test_run_list_gives_description_and_time_in_80_columns(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(s) for s in lines) <= 80
    i = lines.index("quickstart")
    assert "NoDef vs MIDRE" in lines[i + 1]
    assert any(s.strip().startswith("time:") for s in lines[i + 1:i + 5])
    assert out.count("time:") == sum(1 for s in lines if s and not s.startswith(" "))


def test_attack_help_shows_the_default_preset(capsys):
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "default: quick" in text
    assert "--seed SEED (default: 0)" in text


def _readme_block(marker: str) -> str:
    lines = (REPO / "README.md").read_text().splitlines()
    i = lines.index(f"<!-- {marker} -->")
    assert lines[i + 1].startswith("```")
    return lines[i + 2]


def test_readme_install_line_brings_every_extra_the_suite_needs():
    install = _readme_block("test-install")
    assert _readme_block("test-command") == "python3 -m pytest -q"
    extras = set(re.search(r"\.\[([a-z0-9_,-]+)\]", install).group(1).split(","))
    assert {"test", "ray", "timm", "tensorboard", "face", "userstudy-test"} <= extras
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "test-install" in ci and "test-command" in ci


def test_ci_script_parses():
    subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], check=True)


def test_piping_a_listing_into_head_is_not_a_traceback():
    import subprocess
    import sys

    p = subprocess.run(f"{sys.executable} -m midre run --list | head -1", shell=True, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout.strip() and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
