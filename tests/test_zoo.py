"""The benchmark zoo (issue 9 item 4): build with a fixed config, verify hashes, refuse a tampered file,
use an entry when a run's config matches it and build the piece in the run otherwise."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import _toy_quadrants  # noqa: F401
import pytest
import yaml

from midre.cli import main

TOY = {"name": "toyzoo", "seed": 3, "device": "cpu", "dataset": {"name": "toy-quadrants", "seed": 0},
       "backbones": {"bb": {"arch": "tinycnn", "pool": "pretrain", "train": {"epochs": 1, "batch_size": 32, "amp": False}}},
       "eval_model": {"arch": "tinycnn", "seed": 0,
                      "train": {"epochs": 1, "batch_size": 32, "amp": False, "init": "zoo:bb"}},
       "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 32, "amp": False, "init": "zoo:bb"}},
       "targets": [{"name": "nodef", "defense": "nodef"}],
       "priors": {"preset": "quick", "seed": 0, "params": {"gan": {"iterations": 2}}},
       "attacks": [{"name": "gmi", "preset": "quick", "params": {"iterations": 1}, "identities": "0-1"}],
       "report": {"enabled": False}}
ENTRIES = ["toyzoo-backbone-bb", "toyzoo-eval", "toyzoo-prior-gan"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    cfg = root / "toyzoo.yaml"
    cfg.write_text(yaml.safe_dump(TOY))
    assert main(["zoo", "build", "--config", str(cfg), "--zoo-dir", str(root / "z"), "--work",
                 str(root / "work"), "--no-progress"]) == 0
    return root / "z", cfg


def _sources(run: Path) -> dict:
    return {k: v.get("source") for k, v in json.loads((run / "run.json").read_text())["stages"].items()
            if k in ("backbones/bb", "eval", "priors/gan")}


def test_build_writes_manifest_with_hashes_config_and_figures(zoo, capsys):
    root, _cfg = zoo
    from midre.utils import sha256_file
    from midre.zoo import load_manifest

    m = load_manifest(root)
    assert sorted(m["entries"]) == ENTRIES
    for name, e in m["entries"].items():
        assert e["files"] and all(sha256_file(root / "weights" / name / f) == h for f, h in e["files"].items())
        assert "toy-quadrants" in e["config_yaml"] and e["key"] and e["data_fingerprint"]
        assert e["built_on"].startswith("cpu: ") and "torch" in e["built_on"]
    assert m["entries"]["toyzoo-eval"]["figures"]["test_acc"] is not None
    assert m["entries"]["toyzoo-backbone-bb"]["figures"]["pool_classes"] == 6
    assert "coverage" in m["entries"]["toyzoo-prior-gan"]["figures"]["quality"]
    assert main(["zoo", "check", "--zoo-dir", str(root)]) == 0
    assert main(["zoo", "list", "--zoo-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ENTRIES)


def test_a_matching_run_uses_the_zoo_with_any_run_seed(zoo, tmp_path, monkeypatch):
    root, _cfg = zoo
    from midre.pipeline import run_pipeline
    from midre.zoo import load_manifest

    monkeypatch.setenv("MIDRE_ZOO_DIR", str(root))
    cfg = copy.deepcopy(TOY)
    cfg["seed"] = 7                            # another run seed: fixed-seed instrument pieces still match
    run_pipeline(cfg, tmp_path / "run", progress=False, stop_after="priors")
    assert _sources(tmp_path / "run") == {"backbones/bb": "zoo:toyzoo-backbone-bb", "eval": "zoo:toyzoo-eval",
                                          "priors/gan": "zoo:toyzoo-prior-gan"}
    e = load_manifest(root)["entries"]["toyzoo-eval"]
    assert (tmp_path / "run" / "eval" / "model.safetensors").read_bytes() == \
        (root / "weights" / "toyzoo-eval" / "model.safetensors").read_bytes()
    assert e["figures"]["test_acc"] == json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["eval"]["test_acc"]


def test_a_differing_config_builds_its_own_pieces(zoo, tmp_path, monkeypatch):
    root, _cfg = zoo
    from midre.pipeline import run_pipeline

    monkeypatch.setenv("MIDRE_ZOO_DIR", str(root))
    cfg = copy.deepcopy(TOY)
    cfg["backbones"]["bb"]["train"]["lr"] = 0.02      # another backbone -> another eval model (it starts from it)
    run_pipeline(cfg, tmp_path / "run", progress=False, stop_after="priors")
    assert _sources(tmp_path / "run") == {"backbones/bb": "trained", "eval": None,
                                          "priors/gan": "zoo:toyzoo-prior-gan"}
    assert (tmp_path / "run" / "backbones" / "bb" / "model.safetensors").exists()


def test_missing_entry_falls_back_to_a_build(zoo, tmp_path, monkeypatch):
    root, _cfg = zoo
    from midre.pipeline import run_pipeline

    empty = tmp_path / "emptyzoo"
    empty.mkdir()
    monkeypatch.setenv("MIDRE_ZOO_DIR", str(empty))
    run_pipeline(copy.deepcopy(TOY), tmp_path / "run", progress=False, stop_after="priors")
    assert _sources(tmp_path / "run") == {"backbones/bb": "trained", "eval": None, "priors/gan": None}


def test_data_summaries_match_within_rounding_only():
    """Another CPU renders a few pixels one level off: the fingerprint changes, the summary still matches;
    other labels, another image count or really different pixels do not."""
    import torch

    from midre.data.base import TensorImageSet
    from midre.priors import data_fingerprint, data_summary
    from midre.zoo import summaries_match

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(1, 255, (1500, 3, 32, 32), generator=g, dtype=torch.uint8)    # quickstart-sized
    labels = torch.arange(1500) % 50
    ref = TensorImageSet(imgs, labels)
    flipped = imgs.clone()
    flipped.view(-1)[torch.randperm(flipped.numel(), generator=g)[:25]] += 1     # 25 values one level up
    assert data_fingerprint(TensorImageSet(flipped, labels)) != data_fingerprint(ref)
    assert summaries_match(data_summary(ref), data_summary(TensorImageSet(flipped, labels)))
    relabelled = labels.clone()
    relabelled[[0, 1]] = relabelled[[1, 0]]
    assert not summaries_match(data_summary(ref), data_summary(TensorImageSet(imgs, relabelled)))
    assert not summaries_match(data_summary(ref), data_summary(TensorImageSet(imgs[:99], labels[:99])))
    other = imgs.clone()
    other[:10, :, :8, :8] = 0                        # a dark patch in 10 images: a different data set
    assert not summaries_match(data_summary(ref), data_summary(TensorImageSet(other, labels)))
    one = imgs.clone()
    one[0] = imgs[50]                                # one image replaced by another of its identity
    assert not summaries_match(data_summary(ref), data_summary(TensorImageSet(one, labels)))
    assert not summaries_match(data_summary(ref), None)


def test_images_rendered_on_another_machine_still_use_the_zoo(zoo, tmp_path, monkeypatch):
    """This machine's float rounding gives other fingerprints than the build machine's (simulated): the entries
    match by their data summaries, the GAN prior is installed under this machine's cache name and the attack
    uses it without training a prior; an entry whose summary differs beyond rounding is not used."""
    import shutil

    import midre.priors
    import midre.priors.base
    from midre.pipeline import run_pipeline
    from midre.zoo import load_manifest

    root, _cfg = zoo
    other = tmp_path / "other"
    shutil.copytree(root, other)
    exact = midre.priors.data_fingerprint
    other_cpu = lambda d: exact(d)[::-1]                                               # noqa: E731
    monkeypatch.setattr(midre.priors, "data_fingerprint", other_cpu)           # "another CPU": the zoo lookup
    monkeypatch.setattr(midre.priors.base, "data_fingerprint", other_cpu)      # and the prior cache's key
    monkeypatch.setenv("MIDRE_ZOO_DIR", str(other))
    man = load_manifest(other)
    run_pipeline(copy.deepcopy(TOY), tmp_path / "run", progress=False, stop_after="attacks")
    assert _sources(tmp_path / "run") == {"backbones/bb": "zoo:toyzoo-backbone-bb", "eval": "zoo:toyzoo-eval",
                                          "priors/gan": "zoo:toyzoo-prior-gan"}
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert stages["eval"]["data_match"] == "within rounding"
    installed = sorted((tmp_path / "run" / "priors" / "gan").glob("gan-*"))
    built = sorted((root / "weights" / "toyzoo-prior-gan").glob("gan-*"))
    assert len(installed) == 1 and len(built) == 1           # the attack found it: no second prior trained
    assert (installed[0] / "prior.safetensors").read_bytes() == (built[0] / "prior.safetensors").read_bytes()
    assert (tmp_path / "run" / "attacks" / "nodef" / "gmi").exists()

    man["entries"]["toyzoo-eval"]["data_summary"]["grid"][0] += 0.01        # really other images
    (other / "manifest.json").write_text(json.dumps(man))
    run_pipeline(copy.deepcopy(TOY), tmp_path / "run2", progress=False, stop_after="eval")
    assert not str(_sources(tmp_path / "run2")["eval"]).startswith("zoo:")       # trained here, and why:
    stages = json.loads((tmp_path / "run2" / "run.json").read_text())["stages"]
    assert "toyzoo-eval has this stage's config but was built on other data" in stages["eval"]["zoo_not_used"]


def test_a_tampered_file_is_refused(zoo, tmp_path, monkeypatch, capsys):
    import shutil

    root, cfg = zoo
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    f = bad / "weights" / "toyzoo-eval" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert main(["zoo", "check", "--zoo-dir", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "toyzoo-eval" in err and "sha256" in err
    monkeypatch.setenv("MIDRE_ZOO_DIR", str(bad))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sha256" in err and "refusing" in err


def test_unknown_entry_name_is_one_line(zoo, tmp_path, capsys):
    _root, cfg = zoo
    assert main(["zoo", "build", "toyzoo-evl", "--config", str(cfg), "--zoo-dir", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'toyzoo-eval'" in err


def test_package_zoo_is_consistent():
    """The shipped zoo (possibly empty) verifies, and its files are package data."""
    from midre.zoo import PACKAGE_ZOO, check

    check(PACKAGE_ZOO)
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "zoo/weights/**/*" in text and "zoo/manifest.json" in text


def test_the_shipped_zoo_verifies_and_serves_the_quickstart():
    """The package's zoo: every file's sha256 checks, and the quickstart's instrument stages all match an entry
    (same stage key; the data fingerprints are checked when a run renders the data)."""
    from midre.config import load_config
    from midre.plan import RunPlan
    from midre.stages import RunContext, instrument_names
    from midre.zoo import PACKAGE_ZOO, check, load_manifest

    assert len(check(PACKAGE_ZOO)) >= 4
    entries = load_manifest(PACKAGE_ZOO)["entries"]
    assert sum(e["bytes"] for e in entries.values()) < 50 * 2 ** 20           # tens of MB at most
    ctx = RunContext(load_config("quickstart"), PACKAGE_ZOO / ".probe", False)
    keys = RunPlan(load_config("quickstart")).keys
    for stage in instrument_names(ctx):
        assert any(e["stage"] == stage and e["key"] == keys[stage] for e in entries.values()), stage



@pytest.mark.slow
def test_a_fresh_quickstart_takes_its_whole_instrument_from_the_shipped_zoo(tmp_path, monkeypatch):
    """Rendered here, the quickstart's images equal the ones the shipped entries were built on (the same
    fingerprint on the build CPU, the same data summary within float rounding on others), so the backbones,
    the evaluation model and the GAN prior are installed (sha256-verified), never retrained."""
    from midre.config import load_config
    from midre.pipeline import run_pipeline

    monkeypatch.setenv("MIDRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIDRE_ZOO_DIR", raising=False)
    cfg = load_config("quickstart", overrides={"targets": [{"name": "nodef", "defense": "nodef"}],
                                               "attacks": [{"name": "gmi", "identities": "0-1"}],
                                               "device": "cpu"})
    run_pipeline(cfg, tmp_path / "run", progress=False, stop_after="priors")
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    for stage in ("backbones/smallcnn", "backbones/smallresnet", "eval", "priors/gan"):
        assert stages[stage]["source"].startswith("zoo:quickstart-"), (stage, stages[stage])
        assert stages[stage]["data_match"] in ("exact", "within rounding")
    assert "source" not in stages["targets/nodef"] or stages["targets/nodef"]["source"] == "trained"
