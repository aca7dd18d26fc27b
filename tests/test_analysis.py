"""midre.analysis: feature-space analysis (Sec. 3.2), concealment study (Table 1), a_e curves."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_report import make_run


# ----------------------------------------------------------------------------------------- geometry
def test_hull_overlap_and_inside_fraction():
    from midre.analysis.features import clip_convex, convex_hull, inside_fraction, overlap_fraction, polygon_area

    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], dtype=float)   # interior point dropped
    h = convex_hull(sq)
    assert len(h) == 4 and polygon_area(h) == pytest.approx(1.0)
    shifted = convex_hull(sq + [0.5, 0.0])
    assert overlap_fraction(h, shifted) == pytest.approx(0.5)
    assert overlap_fraction(h, h) == pytest.approx(1.0)
    assert overlap_fraction(h, convex_hull(sq + [3.0, 0.0])) == 0.0
    small = convex_hull(sq * 0.5 + 0.25)
    assert overlap_fraction(small, h) == pytest.approx(1.0)     # inside: all of small's area
    assert overlap_fraction(h, small) == pytest.approx(0.25)    # asymmetric by design
    # a triangle clipped by the unit square: orientation of inputs must not matter
    tri = np.array([[0.5, -1.0], [2.0, 0.5], [0.5, 2.0]])
    a1 = polygon_area(clip_convex(tri, h))
    a2 = polygon_area(clip_convex(tri[::-1], h[::-1]))
    assert a1 == pytest.approx(a2) and 0 < a1 < 1
    pts = np.array([[0.5, 0.5], [0.1, 0.9], [1.5, 0.5], [1.0, 0.5]])
    assert inside_fraction(pts, h) == pytest.approx(0.75)      # boundary counts as inside
    assert convex_hull(np.array([[0, 0], [1, 1], [2, 2]], float)) is None   # collinear -> degenerate
    assert math.isnan(overlap_fraction(None, h))


def test_pca_is_deterministic_and_sign_fixed():
    from midre.analysis.features import pca_2d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * [5, 2, 1, 1, 1, 1]
    c1, m1, r1 = pca_2d(x)
    c2, _, _ = pca_2d(-x + 0.0)
    assert c1.shape == (2, 6) and np.allclose(np.linalg.norm(c1, axis=1), 1)
    assert r1[0] > r1[1] > 0 and r1.sum() <= 1
    assert abs(c1[0, 0]) > 0.9                       # the high-variance axis is found
    assert np.allclose(c1, c2)                       # sign convention does not depend on the data's sign


# ----------------------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def run_identical(tmp_path_factory):
    """Reconstructions = the private images themselves (a perfect attack)."""
    return make_run(tmp_path_factory.mktemp("feat"), identical_recon=True)


def test_feature_analysis_detects_a_perfect_attack(run_identical):
    from midre.analysis.features import extract_features, feature_analysis, overlap_table
    from midre.loading import load_model

    res = feature_analysis(run_identical, max_images=6, seed=3)
    assert set(res["targets"]) == {"nodef", "midre-0.4"}            # default: NoDef + MIDRE nearest 0.4
    assert res["eraser"]["name"] == "midre" and res["eraser"]["area"] == 0.4   # the target's own eraser
    assert res["identities"] == [0, 1, 2] and res["attack"] == "gmi"
    for t, info in res["targets"].items():
        m = info["mean"]
        # recon == private: same features -> full overlap, zero centroid distance, closer to private
        assert m["overlap"]["recon|private"] == pytest.approx(1.0, abs=1e-6)
        assert m["inside"]["recon_in_private"] == pytest.approx(1.0)
        assert m["centroid"]["recon-private"] == pytest.approx(0.0, abs=1e-9)
        assert m["centroid"]["recon-re_private"] > 0
        assert info["closer_to"] == "private"
        assert info["pooled"]["overlap"]["recon|private"] == pytest.approx(1.0, abs=1e-6)
        assert info["pooled"]["n"]["recon"] == 18
        assert len(info["explained_variance"]) == 2
    # files: JSON (NaN -> null, valid JSON) and a PNG
    js = json.loads((run_identical / "analysis" / "features.json").read_text())
    assert js["targets"]["nodef"]["per_identity"]["0"]["n"] == {"private": 6, "re_private": 6, "recon": 6}
    assert (run_identical / "figures" / "features.png").read_bytes()[:4] == b"\x89PNG"
    head, body = overlap_table(res)
    assert len(body) == 2 and body[0][1] == "100.0"
    # feature dimension = the architecture's penultimate width (pitfall: mismatched constants)
    model, _ = load_model(run_identical / "targets" / "nodef")
    f = extract_features(model, torch.rand(2, 3, 16, 16))
    assert f.shape == (2, model.feature_dim)


def test_feature_analysis_eraser_changes_images_and_is_seeded():
    from midre.analysis.features import erase_images

    x = torch.rand(8, 3, 16, 16)
    y = torch.zeros(8, dtype=torch.long)
    spec = {"name": "midre", "area": 0.4}
    a = erase_images(x, y, spec, seed=1)
    b = erase_images(x, y, spec, seed=1)
    c = erase_images(x, y, spec, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).any(1).float().mean((1, 2))          # erased share per image
    assert ((changed >= 0.05) & (changed <= 0.45)).all()     # s ~ U(0.1, 0.4), rounding of the side
    assert torch.equal(x, x.clone())                          # input untouched


def test_feature_analysis_errors(run_identical, tmp_path):
    from midre.analysis.features import feature_analysis
    from midre.errors import ArgumentError, RunDirError

    with pytest.raises(ArgumentError, match="did you mean 'nodef'"):
        feature_analysis(run_identical, targets=["nodeff"], write=False)
    with pytest.raises(ArgumentError, match="not attacked"):
        feature_analysis(run_identical, identities=[3], write=False)
    with pytest.raises(RunDirError):
        feature_analysis(tmp_path / "missing")


def test_cli_analyze_features(run_identical, capsys):
    from midre.cli import main

    assert main(["analyze", "features", str(run_identical), "--target", "nodef", "--max-images", "4",
                 "--identities", "0-1", "--plot-identity", "1", "--area", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "recon∩private" in out and "| nodef |" in out
    js = json.loads((run_identical / "analysis" / "features.json").read_text())
    assert js["identities"] == [0, 1] and js["plot_identity"] == 1 and js["eraser"]["area"] == 0.3


# ----------------------------------------------------------------------------------------- concealment
def test_concealment_config_builds_the_paper_grid():
    from midre.concealment import concealment_config
    from midre.config import load_config

    base = {"name": "b", "dataset": {"name": "synthetic", "resolution": 16},
            "targets": [{"name": "x", "defense": "nodef"}],
            "attacks": [{"name": "gmi", "identities": "0-3"}, {"name": "kedmi"}],
            "sweep": {"grid": {"seed": [0, 1]}}}
    raw = concealment_config(base, levels=[0.1, 0.3])
    names = [t["name"] for t in raw["targets"]]
    assert names == ["nodef", "ee-0.1", "re-0.1", "fe-0.1", "ee-0.3", "re-0.3", "fe-0.3"]
    by = {t["name"]: t["defense"] for t in raw["targets"]}
    assert by["ee-0.3"] == {"name": "entire_erasing", "share": 0.3}
    assert by["re-0.3"]["name"] == "midre" and by["re-0.3"]["area"] == 0.3
    assert by["fe-0.1"]["name"] == "fixed_erasing"
    assert [a["name"] for a in raw["attacks"]] == ["gmi"] and "sweep" not in raw
    assert concealment_config(base, levels=[0.2], attack="kedmi")["attacks"][0]["name"] == "kedmi"
    load_config(raw, check=False)                                        # a valid pipeline config
    from midre.defenses import build_defense

    for t in raw["targets"]:
        build_defense(t["defense"])                                      # every scheme builds
    from midre.errors import ArgumentError, ConfigError

    with pytest.raises(ArgumentError, match="did you mean 'gmi'"):
        concealment_config(base, attack="gmj")
    with pytest.raises(ConfigError, match="needs an attack"):
        concealment_config({**base, "attacks": []})
    with pytest.raises(ArgumentError, match="at least one"):
        concealment_config(base, levels=[0.0])


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5])
def test_concealment_schemes_hide_the_same_share_of_pixels(level):
    """Equal pixel concealment (the premise of Table 1): RE and FE erase c of every image, EE leaves a share c
    of each identity's images out of the epoch (all their pixels hidden)."""
    from midre.concealment import scheme_defense
    from midre.data.base import TensorImageSet
    from midre.defenses import build_defense
    from midre.defenses.base import TrainContext

    n, hw = 40, 32
    y = torch.arange(n) % 4
    ds = TensorImageSet(torch.full((n, 3, hw, hw), 200, dtype=torch.uint8), y)
    x = ds.images.float() / 255
    for scheme in ("RE", "FE", "EE"):
        d = build_defense(scheme_defense(scheme, level))
        d.prepare(TrainContext(model=torch.nn.Identity(), train_set=ds))
        d.on_epoch_start(0, 1)
        out, _ = d.transform_batch(x.clone(), y.clone(), torch.arange(n))
        hidden = 1 - len(out) / n if scheme == "EE" else (out != x).any(1).float().mean().item()
        assert hidden == pytest.approx(level, abs=0.03), scheme


def test_concealment_table_pivot_and_files(tmp_path):
    from midre.concealment import concealment_table, table_markdown, write_table_files

    rows = [{"target": "nodef", "acc": 97.0, "attack_top1": 87.0, "attack_top1_std": 1.0}]
    for i, (s, acc, att) in enumerate([("ee", 97.5, 80.0), ("re", 96.0, 60.0), ("fe", 97.2, 86.0)]):
        rows.append({"target": f"{s}-0.1", "acc": acc, "attack_top1": att, "attack_top1_std": float("nan")})
    table = concealment_table(rows, levels=[0.1, 0.2])
    assert [r["concealment"] for r in table] == [0, 10, 20]
    assert table[0]["EE_acc"] == table[0]["RE_acc"] == table[0]["FE_acc"] == 97.0     # 0 % = NoDef
    assert table[1]["RE_attacc"] == 60.0 and table[1]["FE_acc"] == 97.2
    assert math.isnan(table[2]["EE_acc"])                                            # not run: missing
    md = table_markdown(table, "gmi")
    assert "| Concealment | Partial Erasure a_e | EE Acc ↑ | EE AttAcc ↓ | RE Acc ↑ | RE AttAcc ↓ | FE Acc ↑ | FE AttAcc ↓ |" in md
    assert "| 0% | 0 | 97.00 | 87.00 ± 1.00 |" in md and "| 20% | 0.2 | — |" in md
    paths = write_table_files(tmp_path, table, "gmi")
    csv_text = paths["csv"].read_text().splitlines()
    assert csv_text[0].startswith("concealment,a_e,EE_acc,EE_attacc") and len(csv_text) == 4
    assert json.loads(paths["json"].read_text())["rows"][2]["EE_acc"] is None


# ----------------------------------------------------------------------------------------- curves
def test_ae_curve_points_average_seeds_and_skip_other_defenses(tmp_path):
    from midre.analysis.curves import ae_curve_points, plot_ae_curve, row_area

    rows = [
        {"target": "nodef", "defense": "nodef", "attack": "gmi", "acc": 90.0, "attack_top1": 80.0},
        {"target": "m", "defense": "midre", "defense_params": '{"area": 0.4}', "attack": "gmi", "acc": 88.0,
         "attack_top1": 40.0, "seed": 0},
        {"target": "m", "defense": "midre", "defense_params": '{"area": 0.4}', "attack": "gmi", "acc": 86.0,
         "attack_top1": 50.0, "seed": 1},
        {"target": "n", "defense": "nls", "defense_params": "{}", "attack": "gmi", "acc": 1.0, "attack_top1": 1.0},
        {"target": "m8", "defense": "midre", "defense_params": '{"area": 0.8}', "attack": "gmi", "acc": "",
         "attack_top1": 20.0},
    ]
    assert row_area(rows[0]) == 0.0 and row_area(rows[1]) == 0.4 and row_area(rows[3]) is None
    pts = ae_curve_points(rows)["gmi"]
    assert [p["a_e"] for p in pts] == [0.0, 0.4]            # NLS skipped, missing Acc skipped
    assert pts[1]["acc"] == 87.0 and pts[1]["att"] == 45.0 and pts[1]["n"] == 2
    assert pts[1]["att_std"] == pytest.approx(math.sqrt(50.0))   # std across the two seeds
    assert plot_ae_curve(rows, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_ae_curve(rows[:1], tmp_path / "d.png") is None


def test_cli_analyze_curve(tmp_path, capsys):
    from midre.cli import main
    from midre.results import write_results_table

    write_results_table(tmp_path / "results.csv", [
        {"target": "nodef", "defense": "nodef", "attack": "gmi", "acc": 90.0, "attack_top1": 80.0},
        {"target": "m", "defense": "midre", "defense_params": '{"area": 0.4}', "attack": "gmi", "acc": 88.0,
         "attack_top1": 40.0}])
    assert main(["analyze", "curve", str(tmp_path)]) == 0
    assert "a_e 0.4: Acc 88.00 / AttAcc 40.00" in capsys.readouterr().out
    assert (tmp_path / "figures" / "ae_curve.png").exists()
    assert json.loads((tmp_path / "analysis" / "ae_curve.json").read_text())["gmi"][0]["a_e"] == 0.0
    assert main(["analyze", "curve", str(tmp_path / "none")]) == 2


@pytest.mark.slow
def test_concealment_study_end_to_end(tmp_path, capsys):
    """The whole study through the real pipeline (toy budgets): table rows for 0 % and one level."""
    import copy

    from test_report import TINY

    from midre.cli import main

    base = copy.deepcopy(TINY)
    base["attacks"] = [{"name": "gmi", "preset": "quick", "params": {"iterations": 3, "batch_size": 8},
                        "identities": "0-1", "repeats": 1}]
    base["priors"] = {"preset": "quick", "params": {"gan": {"iterations": 2, "batch_size": 16, "ckpt_every": 1}}}
    base["metrics"] = {"n_boot": 10, "fid": "none"}
    import yaml

    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = tmp_path / "study"
    assert main(["analyze", "concealment", str(cfg), "--out", str(out), "--levels", "20", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| 0% | 0 |" in printed and "| 20% | 0.2 |" in printed
    js = json.loads((out / "concealment.json").read_text())
    assert js["attack"] == "gmi" and [r["concealment"] for r in js["rows"]] == [0, 20]
    r20 = js["rows"][1]
    for s in ("EE", "RE", "FE"):
        assert 0 <= r20[f"{s}_acc"] <= 100 and 0 <= r20[f"{s}_attacc"] <= 100
    metas = {t: json.loads((out / "targets" / t / "model.json").read_text())["defense"]
             for t in ("ee-0.2", "re-0.2", "fe-0.2")}
    assert metas["ee-0.2"]["name"] == "entire_erasing" and metas["re-0.2"]["name"] == "midre"
    assert metas["fe-0.2"]["name"] == "fixed_erasing"
    assert (out / "attacks" / "re-0.2" / "gmi" / "reconstructions.safetensors").exists()


def test_cli_analyze_without_subcommand_shows_help(capsys):
    from midre.cli import main

    assert main(["analyze"]) == 2
    assert "features" in capsys.readouterr().out
