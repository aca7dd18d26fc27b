"""Numbers from one place (midre.analysis.summary + midre.resultsdoc, `midre results collect|render`): the
repository's generated tables are up to date, a stale or hand-edited block is caught and rewritten, and a
collected summary carries no machine paths."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from midre.cli import main
from midre.errors import RunDirError
from midre.resultsdoc import render

ROOT = Path(__file__).resolve().parents[1]


def test_repository_tables_are_up_to_date():
    """CI's check: RESULTS.md / README.md / BENCHMARKS.md blocks equal what results/ generates."""
    assert render(ROOT, check=True) == [], "run `midre results render` and commit the docs"


def _fake_repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "results" / "calibration-64-curve", tmp_path / "results" / "calibration-64-curve")
    (tmp_path / "RESULTS.md").write_text(
        "# R\n\nProse stays.\n\n<!-- midre:results calibration-64-curve training -->\n| typed by hand |\n"
        "<!-- /midre:results -->\n\nMore prose.\n")
    return tmp_path


def test_stale_block_is_reported_then_rewritten(tmp_path, capsys):
    root = _fake_repo(tmp_path)
    assert render(root, check=True) == ["RESULTS.md: calibration-64-curve training"]
    assert "typed by hand" in (root / "RESULTS.md").read_text()          # --check writes nothing
    assert main(["results", "render", "--root", str(root), "--check"]) == 1
    assert "out of date: RESULTS.md: calibration-64-curve training" in capsys.readouterr().err
    assert main(["results", "render", "--root", str(root)]) == 0
    text = (root / "RESULTS.md").read_text()
    assert "typed by hand" not in text and "Prose stays." in text and "More prose." in text
    assert "| nodef |" in text
    assert render(root, check=True) == []


def test_unknown_summary_or_table_is_one_line(tmp_path, capsys):
    root = _fake_repo(tmp_path)
    (root / "README.md").write_text("<!-- midre:results nope results -->\nx\n<!-- /midre:results -->\n")
    with pytest.raises(RunDirError, match="results/nope/summary.json not found"):
        render(root, check=True)
    (root / "README.md").write_text("<!-- midre:results calibration-64-curve pie -->\nx\n<!-- /midre:results -->\n")
    assert main(["results", "render", "--root", str(root), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown generated table 'pie'" in err[0]


def test_committed_summaries_have_no_machine_paths():
    for p in (ROOT / "results").glob("*/*.json"):
        text = p.read_text()
        for bad in ("/work/", "/tmp/", "/home/", "/root/"):
            assert bad not in text, f"{p.relative_to(ROOT)} contains a machine path ({bad})"
        json.loads(text)


def test_collect_and_geometry_refuse_a_foreign_folder(tmp_path, capsys):
    mine = tmp_path / "results" / "x"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own file")
    assert main(["results", "collect", str(tmp_path / "nowhere"), "x", "--into", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no midre run summary" in err[0]
    assert main(["analyze", "geometry", "--out", str(mine), "--figure", str(tmp_path / "g.png"), "--n", "200"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and not (tmp_path / "g.png").exists()


def test_timing_table_sums_sessions_and_stage_groups():
    """BENCHMARKS' run times come from the summary's run records: wall and CPU summed over the sessions that
    ran a seed (a run resumed across sessions included), stage seconds summed per group."""
    from midre.resultsdoc import TABLES

    run = {"sessions": [{"seconds": 600.0, "cpu_seconds": 1100.0}, {"seconds": 1200.0, "cpu_seconds": 2300.0}],
           "peak_rss_mib": 2048.0,
           "stages": {"targets/nodef": {"seconds": 300.0}, "targets/midre": {"seconds": 600.0},
                      "priors/gan": {"seconds": 60.0}, "attacks/nodef/gmi": {"seconds": 720.0},
                      "metrics/nodef/gmi": {"seconds": 6.0}, "data": {"seconds": 99.0}}}
    lines = TABLES["timing"]({"runs": {"seed-0": run}}).splitlines()
    assert lines[0].startswith("| seed | sessions | wall (min) | CPU (min) | peak RSS (GiB) | targets (min)")
    assert lines[2] == "| seed-0 | 2 | 30.0 | 56.7 | 2.00 | 15.0 | 1.0 | 12.0 | 0.1 |"


def test_results_table_shows_the_targets_own_top1_when_the_rows_carry_it():
    from midre.resultsdoc import TABLES

    row = {"target": "nodef", "defense": "nodef", "attack": "gmi", "acc": 96.0, "attack_top1": 40.0,
           "attack_top5": 70.0, "knn": 200.0, "fid_eval": 70.0}
    plain = TABLES["results"]({"rows": [row], "seeds": ["seed-0"]})
    assert "target's own top-1" not in plain
    lines = TABLES["results"]({"rows": [{**row, "target_top1": 99.0}], "seeds": ["seed-0"]}).splitlines()
    assert "| target's own top-1 (%) |" in lines[0]
    assert lines[2] == "| nodef | nodef | gmi | 96.0 | 40.0 | 70.0 | 99.0 | 200 | 70 | 1 |"


def test_results_table_shows_trapdoor_accuracy_beside_natural_accuracy_when_a_row_has_it():
    from midre.resultsdoc import TABLES

    row = {"target": "nodef", "defense": "nodef", "attack": "gmi", "acc": 96.0, "attack_top1": 40.0,
           "attack_top5": 70.0, "knn": 200.0, "fid_eval": 70.0, "trapdoor_acc": float("nan")}
    assert "trapdoor" not in TABLES["results"]({"rows": [row], "seeds": ["seed-0"]})   # no Trap-MID target
    trap = {**row, "target": "trapmid", "defense": "trapmid", "acc": 95.0, "trapdoor_acc": 2.5}
    lines = TABLES["results"]({"rows": [row, trap], "seeds": ["seed-0"]}).splitlines()
    assert lines[0].startswith("| target | defense | attack | Acc (%) | trapdoor Acc (%) | AttAcc top-1 (%) |")
    assert lines[2] == "| nodef | nodef | gmi | 96.0 | -- | 40.0 | 70.0 | 200 | 70 | 1 |"
    assert lines[3] == "| trapmid | trapmid | gmi | 95.0 | 2.5 | 40.0 | 70.0 | 200 | 70 | 1 |"
