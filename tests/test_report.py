"""midre.report and `midre report`: a real run directory (tiny pipeline + real reconstructions artefacts)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

TINY = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "dataset": {"name": "synthetic", "resolution": 16,
                "options": {"num_private": 4, "num_public": 4, "images_per_id": 12}},
    "eval_model": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 32, "amp": False}},
    "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 32, "amp": False}},
    "targets": [{"name": "nodef", "defense": "nodef"},
                {"name": "midre-0.4", "defense": {"name": "midre", "area": 0.4}}],
    "report": {"enabled": False},
}

# (target, defense, params, acc, top1, top1_std, top5, knn, fid, delta)
ROWS = [
    ("nodef", "nodef", {}, 80.0, 75.0, 5.0, 90.0, 10.5, 120.25, ""),
    ("midre-0.4", "midre", {"area": 0.4, "lower": 0.1}, 77.5, 30.0, 2.5, 55.0, 14.25, float("nan"), 18.0),
    ("midre-0.8", "midre", {"area": 0.8, "lower": 0.1}, 81.0, 20.0, 1.0, 40.0, 15.0, 130.0, "OP"),
]


def make_run(root: Path, identical_recon: bool = False, attack: str = "gmi", rows: bool = True) -> Path:
    """A run directory in the fixed layout: real checkpoints from the pipeline (no attack stage),
    real Reconstructions artefacts, and a results table with known numbers."""
    from midre.attacks.base import Reconstructions
    from midre.data import load_dataset
    from midre.loading import load_model
    from midre.pipeline import run_pipeline
    from midre.results import write_results_table

    run = root / "run"
    run_pipeline(TINY, run, progress=False)
    d = TINY["dataset"]
    splits = load_dataset("synthetic", resolution=16, seed=0, **d["options"])
    priv = splits.private_train
    labels = torch.as_tensor(priv.targets)
    g = torch.Generator().manual_seed(1)
    for t in ("nodef", "midre-0.4"):
        model, _ = load_model(run / "targets" / t)
        imgs, ids, reps = [], [], []
        for i in (0, 1, 2):
            idx = (labels == i).nonzero().flatten()[:6]
            x = torch.stack([priv[int(j)][0] for j in idx])
            if not identical_recon:
                x = (0.5 * x + 0.5 * torch.rand(x.shape, generator=g)).clamp(0, 1)
            imgs.append(x)
            ids.append(torch.full((len(x),), i))
            reps.append(torch.arange(len(x)) % 3)
        x = torch.cat(imgs)
        ident = torch.cat(ids)
        with torch.no_grad():
            conf = model(x).softmax(1)[torch.arange(len(x)), ident]
        Reconstructions(x, ident, torch.cat(reps), conf, {"attack": attack}).save(run / "attacks" / t / attack)
    if rows:
        out = []
        for (t, dfn, p, acc, a1, s1, a5, knn, fid, delta) in ROWS:
            out.append({"target": t, "defense": dfn, "defense_params": json.dumps(p), "attack": attack, "acc": acc,
                        "attack_top1": a1, "attack_top1_std": s1, "attack_top5": a5, "attack_top5_std": 1.0,
                        "top1_ci_lo": a1 - 3, "top1_ci_hi": a1 + 3, "knn": knn, "fid_eval": fid, "delta": delta,
                        "epsilon": float("nan"), "seed": 0, "repeats": 3, "identities": 3})
        write_results_table(run / "results.csv", out)
        (run / "results.json").unlink(missing_ok=True)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def test_format_helpers():
    from midre.results import DASH, fmt, fmt_pm, parse_params, to_number

    assert fmt(float("nan")) == DASH and fmt("") == DASH and fmt(None) == DASH
    assert fmt("OP") == "OP"
    assert fmt(3.14159) == "3.14" and fmt("2.5", 1) == "2.5"
    assert fmt_pm(75, 5) == "75.00 ± 5.00"
    assert fmt_pm(75, float("nan")) == "75.00"
    assert fmt_pm(float("nan"), 2) == DASH
    assert math.isnan(to_number("nan")) and to_number("12") == 12.0
    assert parse_params('{"area": 0.4}') == {"area": 0.4} and parse_params("garbage") == {}


def test_report_tables_and_self_contained_html(run_dir):
    from midre.report import write_report

    md, html = write_report(run_dir)
    text = md.read_text()
    # the paper-style table with mean ± std, CI, NaN -> dash, OP kept
    assert "### Attack: gmi" in text
    assert "| nodef | 80.00 | 75.00 ± 5.00 | [72.00, 78.00] | 90.00 ± 1.00 | 10.50 | 120.25 | — |" in text
    assert "| midre-0.4 (midre) | 77.50 | 30.00 ± 2.50 |" in text
    row04 = next(line for line in text.splitlines() if line.startswith("| midre-0.4 (midre)"))
    assert row04.split("|")[7].strip() == "—"          # FID NaN shown as a dash, not 'nan'
    row08 = next(line for line in text.splitlines() if line.startswith("| midre-0.8 (midre)"))
    assert row08.split("|")[8].strip() == "OP"
    assert "nan" not in text.lower().replace("nan-", "")
    assert "ε" not in text                             # no DP row -> no epsilon column
    # settings from the checkpoints
    assert "evaluation model" in text and "tinycnn" in text
    h = html.read_text()
    assert "<table>" in h and "75.00 ± 5.00" in h
    assert "http://" not in h and "https://" not in h and "<link" not in h and "<script" not in h
    imgs = h.count("data:image/png;base64,")
    assert imgs >= 3                                    # scatter, a_e curve, grid
    for name in ("privacy_utility.png", "ae_curve.png", "reconstructions_gmi.png"):
        p = run_dir / "figures" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}" in text


def test_report_grid_uses_best_reconstruction_per_identity(run_dir):
    from midre.attacks.base import Reconstructions
    from midre.report import _best_per_identity

    rec = Reconstructions.load(run_dir / "attacks" / "nodef" / "gmi")
    best = _best_per_identity(rec)
    assert sorted(best) == [0, 1, 2]
    for i, img in best.items():
        sel = (rec.identity == i).nonzero().flatten()
        j = sel[rec.confidence[sel].argmax()]
        assert torch.equal(img, rec.images[j])


def test_epsilon_column_and_missing_results(tmp_path):
    from midre.report import attack_tables, write_report
    from midre.results import load_results, write_results_table

    rows = [{"target": "dp", "defense": "dp", "attack": "gmi", "acc": 50.0, "attack_top1": 10.0,
             "attack_top1_std": 1.0, "epsilon": 8.0},
            {"target": "nodef", "defense": "nodef", "attack": "gmi", "acc": 60.0, "attack_top1": 40.0}]
    write_results_table(tmp_path / "results.csv", rows)
    loaded = load_results(tmp_path)
    assert loaded[0]["epsilon"] == 8.0 and math.isnan(loaded[1]["epsilon"])
    head, body = attack_tables(loaded)["gmi"]
    assert head[-1] == "ε" and body[0][-1] == "8.00" and body[1][-1] == "—"
    md, _ = write_report(tmp_path)
    assert "| dp | 50.00 | 10.00 ± 1.00 |" in md.read_text()
    # a directory with nothing in it is a clear error
    from midre.errors import RunDirError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirError, match="midre run"):
        write_report(empty)


def test_results_json_rows_preferred(tmp_path):
    from midre.results import load_results

    (tmp_path / "results.json").write_text(json.dumps({"rows": [{"target": "a", "acc": "12.5", "delta": "OP"}]}))
    (tmp_path / "results.csv").write_text("target,acc\nb,1\n")
    rows = load_results(tmp_path)
    assert rows == [{"target": "a", "acc": 12.5, "delta": "OP"}]


def test_cli_report(run_dir, capsys, tmp_path):
    from midre.cli import main

    assert main(["report", str(run_dir), "--max-identities", "2", "--title", "T"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (run_dir / "report.md").read_text().startswith("# T")
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err


def test_report_of_a_multi_seed_study(tmp_path):
    """seeds: [..] runs seed-<s>/ pipelines; the report reads the aggregated table and the first seed's models."""
    from midre.pipeline import run_pipeline
    from midre.report import write_report

    cfg = {**TINY, "seeds": [0, 1]}
    run_pipeline(cfg, tmp_path / "study", progress=False)
    md = write_report(tmp_path / "study")[0].read_text()
    assert "Multi-seed study (2 seeds)" in md and "seed-0" in md
    assert "| seeds | 0, 1 |" in md
    assert "| evaluation model | tinycnn |" in md                      # models from seed-0
    nodef = next(line for line in md.splitlines() if line.startswith("| nodef |") and "±" in line)
    assert nodef.split("|")[2].strip().count("±") == 1                  # Acc mean ± std across seeds
