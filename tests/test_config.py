"""midre.config: YAML in, validated up front, one-line ConfigError naming the key path and the fix."""
from __future__ import annotations

import copy

import pytest
import yaml

from midre.config import (
    RunConfig,
    builtin_configs,
    deep_merge,
    dump_yaml,
    load_config,
    load_raw,
    parse_config,
    set_override,
)
from midre.errors import ConfigError, MidreError

TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "resolution": 16,
                "options": {"num_private": 4, "num_public": 4, "images_per_id": 6}},
    "eval_model": {"arch": "smallcnn", "train": {"epochs": 1}},
    "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
    "targets": [{"name": "nodef", "defense": "nodef"},
                {"name": "midre-0.4", "defense": {"name": "midre", "area": 0.4}}],
}


def _err(raw, check=True) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(copy.deepcopy(raw), check=check)
    msg = str(ei.value)
    assert "\n" not in msg, "a ConfigError must be one line"
    assert isinstance(ei.value, MidreError)
    return msg


def _with(path: str, value) -> dict:
    raw = copy.deepcopy(TINY)
    return set_override(raw, path, value)


# ------------------------------------------------------------------------------------------ defaults
def test_tiny_config_validates_and_fills_defaults():
    cfg = load_config(copy.deepcopy(TINY))
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.seeds is None
    assert cfg.metrics.fid == "eval" and cfg.report.enabled and cfg.attacks == []
    t0, t1 = cfg.targets
    assert cfg.target_arch(t0) == "tinycnn"                       # inherited from defaults
    assert cfg.target_train(t1) == {"epochs": 1, "batch_size": 16}
    assert cfg.run_seeds() == [0]


def test_target_train_overrides_defaults_key_by_key():
    raw = _with("targets.1.train", {"epochs": 3})
    raw["targets"][1]["arch"] = "smallcnn"
    cfg = load_config(raw)
    t = cfg.targets[1]
    assert cfg.target_train(t) == {"epochs": 3, "batch_size": 16}
    assert cfg.target_arch(t) == "smallcnn"


def test_quickstart_is_the_papers_comparison():
    cfg = load_config("quickstart", check=False)
    names = [t.name for t in cfg.targets]
    assert names == ["nodef", "midre-0.4", "midre-0.8"]
    assert cfg.targets[1].defense == {"name": "midre", "area": 0.4}
    assert cfg.targets[2].defense == {"name": "midre", "area": 0.8}
    assert cfg.dataset.name == "synthetic2" and cfg.dataset.resolution == 32
    assert cfg.eval_model.arch != cfg.defaults.arch            # evaluation model: another architecture
    assert 2 <= len(cfg.attacks) <= 3
    names = [a.name for a in cfg.attacks]
    assert "gmi" in names and {"kedmi", "lomma_gmi", "lomma_kedmi", "plgmi"} & set(names)   # a strong attack too
    # every target starts from the shared backbone; the instrument's pieces have fixed seeds (zoo-shareable)
    assert cfg.defaults.train["init"] == "zoo:smallcnn" and cfg.eval_model.train["init"] == "zoo:smallresnet"
    assert cfg.eval_model.seed is not None and cfg.priors.seed is not None and cfg.dataset.seed is not None


def test_calibration_configs_share_the_quickstarts_instrument():
    """calibration-v2 measures the quickstart's own backbones, evaluation model and GAN prior (same keys)."""
    from midre.plan import RunPlan

    keys = [RunPlan(load_config(n)).keys for n in ("quickstart", "calibration-v2", "calibration-v2-strong")]
    for stage in ("backbones/smallcnn", "backbones/smallresnet", "eval"):
        assert keys[0][stage] == keys[1][stage] == keys[2][stage], stage
    assert keys[0]["priors/gan"] == keys[1]["priors/gan"]
    assert all(t.defense == "nodef" for n in ("calibration-v2", "calibration-v2-strong")
               for t in load_config(n).targets)


def test_strong_midre_continues_calibration_v2_strong():
    """strong-midre adds MIDRE targets to calibration-v2-strong: every NoDef stage keeps its key (a run directory
    holding calibration-v2-strong is continued, not redone) and the MIDRE targets share NoDef's schedule."""
    from midre.plan import RunPlan

    calib, strong = RunPlan(load_config("calibration-v2-strong")), RunPlan(load_config("strong-midre"))
    assert all(strong.keys.get(k) == v for k, v in calib.keys.items())
    midre = [t for t in load_config("strong-midre").targets if t.name.startswith("midre")]
    assert midre and all(strong.train_cfgs[t.name] == strong.train_cfgs["nodef-e6"] for t in midre)
    assert {("plgmi", "midre-0.4"), ("kedmi", "midre-0.4")} <= set((a, t) for a, t in strong.attack_priors)


def test_study_64_is_the_issue_sized_study_and_calibration_64_measures_its_instrument():
    """study-64: 64 px, >= 100 identities attacked x 5 restarts, 3 seeds; calibration-64 shares its pieces."""
    from midre.plan import RunPlan

    study = load_config("study-64", check=False)
    assert study.dataset.resolution == 64 and study.dataset.options["num_private"] >= 100
    assert len(study.run_seeds()) >= 3 and study.targets[0].defense == "nodef"
    assert all(a.identities == "all" and a.repeats >= 5 for a in study.attacks)
    assert {a.name for a in study.attacks} & {"kedmi", "lomma_gmi", "lomma_kedmi", "plgmi"}
    keys = [RunPlan(load_config(n)).keys for n in ("study-64", "calibration-64")]
    for stage in ("backbones/smallcnn", "backbones/smallresnet", "eval", "priors/gan"):
        assert keys[0][stage] == keys[1][stage], stage
    assert all(t.defense == "nodef" for t in load_config("calibration-64").targets)


@pytest.mark.parametrize("name", [n for n in builtin_configs() if not n.startswith("paper/")])
def test_every_builtin_config_validates_against_the_registries(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    # round trip: the resolved config written to RUN/config.yaml loads back to the same hash
    again = load_config(yaml.safe_load(dump_yaml(cfg)))
    assert again.hash() == cfg.hash()


def test_study_has_three_seeds_and_more_identities_on_the_quickstarts_instrument():
    study, quick = load_config("study", check=False), load_config("quickstart", check=False)
    assert len(study.run_seeds()) >= 3
    assert {t.name for t in quick.targets} <= {t.name for t in study.targets}
    assert [a.name for a in study.attacks] == [a.name for a in quick.attacks]
    assert all(a.identities == "all" and a.repeats >= 2 for a in study.attacks)
    for section in ("dataset", "backbones", "eval_model", "priors", "gates"):   # the calibrated instrument
        assert getattr(study, section) == getattr(quick, section), section
    assert study.for_seed(2).seed == 2 and study.for_seed(2).seeds is None


@pytest.mark.parametrize("name", ["baselines", "baselines-v1"])
def test_baselines_lists_every_defense(name):
    cfg = load_config(name, check=False)
    names = set()
    for t in cfg.targets:
        specs = t.defense if isinstance(t.defense, list) else [t.defense]
        names.add("+".join(s if isinstance(s, str) else s["name"] for s in specs))
    for d in ("nodef", "midre", "mid", "bido", "nls", "tldmi", "mirad", "dp", "midre+nls", "midre+bido"):
        assert any(n == d or n.startswith(d) for n in names), d


@pytest.mark.parametrize("name", [n for n in builtin_configs() if n.startswith("paper/")])
def test_paper_configs_require_a_root_and_never_hold_a_personal_path(name):
    cfg = load_config(name, check=False)
    assert cfg.dataset.root is None                      # no absolute placeholder path shipped
    from midre.data import DATASETS

    assert cfg.dataset.name in DATASETS
    msg = _err(load_raw(name))
    assert "dataset.root" in msg and "--root" in msg


def test_paper_config_with_missing_root_folder_is_refused(tmp_path):
    from midre.data import DATASETS

    assert "celeba" in DATASETS
    raw = load_raw("paper/celeba")
    raw["dataset"]["root"] = str(tmp_path / "nope")
    assert "does not exist" in _err(raw)


# ------------------------------------------------------------------------------------------ errors
def test_unknown_top_level_key_did_you_mean():
    raw = copy.deepcopy(TINY)
    raw["target"] = raw.pop("targets")
    msg = _err(raw)
    assert "unknown key 'target'" in msg and "did you mean 'targets'" in msg


def test_unknown_nested_key_names_the_path():
    raw = _with("targets.1.defence", "midre")
    msg = _err(raw)
    assert "'defence'" in msg and "targets[1]" in msg and "did you mean 'defense'" in msg


def test_unknown_train_key_did_you_mean():
    msg = _err(_with("defaults.train.epoch", 3))
    assert "'epoch'" in msg and "defaults.train" in msg and "did you mean 'epochs'" in msg


@pytest.mark.parametrize("path,value,words", [
    ("eval_model.train.epochs", "ten", ["eval_model.train.epochs", "integer"]),
    ("eval_model.train.epochs", -3, ["eval_model.train.epochs", ">= 1"]),
    ("defaults.train.batch_size", 0, ["defaults.train.batch_size", ">= 1"]),
    ("targets.0.train.lr", -0.1, ["targets[0].train.lr", "> 0"]),
    ("seed", -1, ["seed", ">= 0"]),
    ("seed", "abc", ["seed", "integer"]),
    ("dataset.resolution", 2, ["dataset.resolution", ">= 8"]),
    ("metrics.fid", "inceptoin", ["metrics.fid", "eval"]),
    ("report.enabled", "maybe", ["report.enabled", "true or false"]),
    ("targets", [], ["targets", "at least one"]),
    ("seeds", [1, 1], ["seeds", "repeat"]),
    ("targets.0.name", "no/slash", ["target name", "letters"]),
    ("analyses.sweep_area", [0.4, 1.5], ["sweep_area", "(0, 1]"]),
    ("targets.0.train.seed", 3, ["targets[0].train.seed", "top-level 'seed'"]),
])
def test_bad_values_are_one_line_errors_naming_the_key(path, value, words):
    msg = _err(_with(path, value))
    for w in words:
        assert w in msg, (w, msg)


def test_missing_targets_is_reported():
    raw = copy.deepcopy(TINY)
    del raw["targets"]
    assert "'targets' is required" in _err(raw)


@pytest.mark.parametrize("path,value,words", [
    ("dataset.name", "synthetc", ["dataset.name", "did you mean 'synthetic'"]),
    ("eval_model.arch", "smalcnn", ["eval_model.arch", "did you mean 'smallcnn'"]),
    ("targets.0.arch", "resnet19", ["targets[0].arch", "resnet18"]),
    ("targets.1.defense", "midrre", ["targets[1].defense", "did you mean 'midre'"]),
    ("targets.1.defense", {"name": "midre", "area": 2.0}, ["targets[1].defense", "area"]),
    ("targets.1.defense", {"name": "midre", "aera": 0.4}, ["targets[1].defense", "did you mean 'area'"]),
    ("device", "gpu", ["device", "cuda"]),
    ("dataset.options", {"num_privte": 5}, ["dataset.options.num_privte", "did you mean 'num_private'"]),
])
def test_unknown_names_checked_through_the_registries(path, value, words):
    msg = _err(_with(path, value))
    for w in words:
        assert w in msg, (w, msg)




@pytest.mark.parametrize("attack,words", [
    ({"name": "gmj"}, ["attacks[0].name", "did you mean 'gmi'"]),
    ({"name": "gmi", "params": {"iterations": -5}}, ["attacks[0].params", "iterations"]),
    ({"name": "gmi", "params": {"iteratoins": 5}}, ["attacks[0].params", "did you mean 'iterations'"]),
    ({"name": "gmi", "preset": "quik"}, ["attacks[0].params", "did you mean 'quick'"]),
    ({"name": "gmi", "repeats": 0}, ["attacks[0].repeats", ">= 1"]),
    ({"name": "gmi", "identities": "9-3"}, ["attacks[0].identities", "reversed"]),
    ({"name": "gmi", "identities": 0}, ["attacks[0].identities", "at least 1"]),
    ({"name": "gmi", "targets": ["nodeff"]}, ["attacks[0].targets", "did you mean 'nodef'"]),
])
def test_attack_sections_are_validated(attack, words):
    msg = _err(_with("attacks", [attack]))
    for w in words:
        assert w in msg, (w, msg)


def test_duplicate_attack_needs_a_label():
    msg = _err(_with("attacks", [{"name": "gmi"}, {"name": "gmi"}]))
    assert "listed twice" in msg and "label" in msg
    cfg = load_config(_with("attacks", [{"name": "gmi"}, {"name": "gmi", "adaptive": True}]))
    assert [a.key for a in cfg.attacks] == ["gmi", "gmi-adaptive"]


def test_prior_params_are_validated():
    msg = _err(_with("priors", {"preset": "quick", "params": {"gan": {"iteratons": 3}}}))
    assert "priors.params.gan" in msg and "iterations" in msg
    assert "priors.preset" in _err(_with("priors", {"preset": "fast"}))


def test_inception_fid_needs_a_local_weights_file(tmp_path):
    assert "inception_weights" in _err(_with("metrics", {"fid": "inception"}))
    assert "not found" in _err(_with("metrics", {"fid": "inception", "inception_weights": str(tmp_path / "w.pt")}))


def test_duplicate_target_names_and_bad_reference():
    raw = _with("targets.1.name", "nodef")
    assert "used twice" in _err(raw)
    assert "did you mean 'nodef'" in _err(_with("targets.1.reference", "nodeff"))


def test_root_required_for_real_data_and_must_exist(tmp_path):
    from midre.config import needs_root
    from midre.data import DATASETS

    real = next((n for n in DATASETS.names() if needs_root(n)), None)
    assert real is not None
    msg = _err(_with("dataset", {"name": real}))
    assert "dataset.root" in msg and "--root" in msg
    msg = _err(_with("dataset", {"name": real, "root": str(tmp_path / "missing")}))
    assert "does not exist" in msg
    assert not needs_root("synthetic")


# ------------------------------------------------------------------------------------------ files
def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntargets: [a, b\n")
    msg = _err(str(p))
    assert "not valid YAML" in msg and "line" in msg


def test_yaml_must_be_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    assert "mapping" in _err(str(p))


def test_missing_file_suggests_builtins():
    msg = _err("quickstrat")
    assert "not found" in msg and "did you mean 'quickstart'" in msg


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(yaml.safe_dump({
        "extends": "../base.yaml", "name": "child",
        "dataset": {"options": {"num_private": 5}},
        "targets": [{"name": "only", "defense": "nodef"}]}))
    cfg = load_config(str(child))
    assert cfg.name == "child"
    assert cfg.dataset.options == {"num_private": 5, "num_public": 4, "images_per_id": 6}   # merged
    assert cfg.dataset.resolution == 16
    assert [t.name for t in cfg.targets] == ["only"]                                      # replaced


def test_extends_a_builtin_by_name(tmp_path):
    child = tmp_path / "c.yaml"
    child.write_text("extends: quickstart\nname: mine\nseed: 7\n")
    cfg = load_config(str(child), check=False)
    assert cfg.name == "mine" and cfg.seed == 7 and len(cfg.targets) == 3


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    assert "extends itself" in _err(str(tmp_path / "a.yaml"))


def test_deep_merge_does_not_mutate_inputs():
    a = {"x": {"y": 1, "z": [1]}}
    b = {"x": {"y": 2}}
    out = deep_merge(a, b)
    assert out == {"x": {"y": 2, "z": [1]}} and a == {"x": {"y": 1, "z": [1]}}


def test_overrides_with_dotted_keys():
    cfg = load_config(copy.deepcopy(TINY), {"seed": 3, "targets.1.train.epochs": 2})
    assert cfg.seed == 3 and cfg.target_train(cfg.targets[1])["epochs"] == 2
    with pytest.raises(ConfigError):
        load_config(copy.deepcopy(TINY), {"targets.5.name": "x"})


# ------------------------------------------------------------------------------------------ hash
def test_hash_ignores_device_report_and_name_but_not_settings():
    a = load_config(copy.deepcopy(TINY))
    b = load_config(copy.deepcopy(TINY), {"device": "cpu", "report.enabled": False, "name": "other"})
    c = load_config(copy.deepcopy(TINY), {"defaults.train.epochs": 2})
    d = load_config(copy.deepcopy(TINY), {"seed": 1})
    assert a.hash() == b.hash()
    assert len({a.hash(), c.hash(), d.hash()}) == 3


def test_sweep_area_adds_midre_targets():
    cfg = load_config(copy.deepcopy(TINY), {"analyses.sweep_area": [0.2, 0.4]})
    names = [t.name for t in cfg.expanded_targets()]
    assert names == ["nodef", "midre-0.4", "midre-0.2"]       # 0.4 already present, not duplicated
    assert cfg.expanded_targets()[-1].defense == {"name": "midre", "area": 0.2}


def test_parse_config_reports_the_first_problem_and_counts_the_rest():
    raw = copy.deepcopy(TINY)
    raw["bogus1"] = 1
    raw["bogus2"] = 2
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    assert "+1 more problem" in str(ei.value)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    from midre.cli import main

    p = tmp_path / "bad.yaml"
    raw = _with("defaults.train.epochs", -1)
    p.write_text(yaml.safe_dump(raw))
    rc = main(["run", str(p), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "defaults.train.epochs" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()                   # nothing half-written


def test_cli_lists_builtin_configs(capsys):
    from midre.cli import main

    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out.split()
    assert "quickstart" in out and "study" in out and "baselines" in out


def test_cli_resume_of_a_non_run_is_refused(tmp_path, capsys):
    from midre.cli import main

    rc = main(["run", "--resume", str(tmp_path), "--no-progress"])
    assert rc == 2 and "no midre run to resume" in capsys.readouterr().err


def test_bad_model_kwargs_fail_at_load_time_naming_the_key(tmp_path):
    """A wrong architecture option is one ConfigError before any stage runs (built on the meta device)."""
    from midre.pipeline import run_pipeline

    with pytest.raises(ConfigError, match=r"'defaults.model_kwargs': option stem_stride=3 .*expected 1 or 2"):
        load_config({"extends": "study-64", "defaults": {"model_kwargs": {"stem_stride": 3}}})
    with pytest.raises(ConfigError, match=r"'eval_model.model_kwargs': 'smallresnet' .*needs at least 32 px"):
        load_config({"extends": "study-64", "dataset": {"resolution": 16}})
    with pytest.raises(ConfigError, match="model_kwargs"):
        run_pipeline({"extends": "study-64", "eval_model": {"model_kwargs": {"widht": [8]}}}, tmp_path / "run")
    assert not (tmp_path / "run").exists()
