"""PPA, IF-GMI, MIRROR, RLB-MI through the real CLI and pipeline: ``midre attack --preset quick`` trains and
caches the priors on the public split and runs end to end; a converted generator (``stylegan2.path``)
needs no public data; the paper configs say in one line what is missing; a pipeline killed inside the
attack stage resumes to the same results.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_attack import DATA_OPTS, RES, cli_attack, train_tiny_target  # the tests folder's shared tiny world

from midre.attacks import Reconstructions

# tiny priors: seconds on one core
PRIOR_PARAMS = ["stylegan2.iterations=6", "stylegan2.batch_size=8", "stylegan2.ckpt_every=3", "gan.iterations=5",
                "gan.width=8", "gan.batch_size=8"]
ATTACK_PARAMS = {
    "ppa": ["pool=32", "iterations=3", "final_views=2"],
    "ifgmi": ["pool=32", "stages=[2, 2]", "radii_w=[10, 10]", "radii_features=[10, 10]", "final_views=2"],
    "mirror": ["pool=32", "population=6", "generations=3"],
    "mirror_wb": ["pool=32", "iterations=3"],
    "rlbmi": ["episodes=6", "hidden=16", "sac_batch=4"],
}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hrcli")
    train_tiny_target(root, epochs=2)
    return root


def _attack(root: Path, name: str, out: str, *extra: str) -> int:
    return cli_attack(root / "target", name, root / out, "0-1", 1, ATTACK_PARAMS[name], PRIOR_PARAMS,
                      "--prior-dir", str(root / "priors"), *extra)


@pytest.mark.parametrize("name", ["ppa", "ifgmi", "mirror", "rlbmi", "mirror_wb"])
def test_cli_quick_preset_end_to_end(target, name):
    assert _attack(target, name, f"atk-{name}") == 0
    rec = Reconstructions.load(target / f"atk-{name}")
    assert rec.images.shape == (2, 3, RES, RES)               # at the target's resolution
    assert rec.latents is not None and rec.latents.shape[0] == 2
    assert rec.meta["attack"] == name and rec.meta["params"].get("target_resolution", RES) == RES
    if name in ("mirror", "rlbmi"):
        assert rec.meta["queries"] > 0
    kind = "gan" if name == "rlbmi" else "stylegan2"
    assert any(p.name.startswith(kind) for p in (target / "priors").iterdir())   # trained and cached


def test_cli_converted_generator_needs_no_public_data(target, tmp_path, capsys):
    from midre.models.stylegan2 import save_generator, tiny_generator

    save_generator(tmp_path / "g" / "generator", tiny_generator(32, seed=1, channels=8))
    assert _attack(target, "ppa", "atk-conv", "--prior-param", f"stylegan2.path={tmp_path / 'g'}") == 0
    rec = Reconstructions.load(target / "atk-conv")
    assert rec.images.shape == (2, 3, RES, RES)               # 32-px generator, resized to the 16-px target
    capsys.readouterr()
    assert _attack(target, "ppa", "atk-bad", "--prior-param", f"stylegan2.path={tmp_path / 'none'}") == 2
    err = capsys.readouterr().err.strip().splitlines()      # the banner, then ONE error line, no traceback
    assert "convert" in err[-1] and "Traceback" not in "".join(err) and len(err) == 2
    assert not (target / "atk-bad" / "reconstructions.json").exists()


@pytest.mark.parametrize("name", ["paper/facescrub", "paper/dogs", "paper/celeba-ppa"])
def test_paper_configs_say_the_generator_is_missing(tmp_path, capsys, monkeypatch, name):
    from midre.cli import main
    from midre.config import raw_config, resolve_config_path

    def inits(node):   # every train.init of the config (local pretrained weights, relative to the cwd)
        if isinstance(node, dict):
            yield from ([node["init"]] if isinstance(node.get("init"), str) else [])
            for v in node.values():
                yield from inits(v)
        elif isinstance(node, list):
            for v in node:
                yield from inits(v)

    monkeypatch.chdir(tmp_path)   # the pretrained weights are present: only the generator is missing
    for rel in set(inits(raw_config(str(resolve_config_path(name))))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert main(["run", name, "--root", str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "priors.params.stylegan2.path" in err[0] and "midre convert stylegan2" in err[0]
    assert not (tmp_path / "run").exists()


CONFIG = f"""
name: hr
seed: 0
device: cpu
dataset: {{name: synthetic, resolution: {RES}, options: {json.dumps(DATA_OPTS)}}}
eval_model: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
defaults: {{arch: tinycnn, train: {{epochs: 1, batch_size: 16}}}}
targets: [{{name: nodef, defense: nodef}}]
attacks:
  - {{name: ppa, preset: quick, params: {{pool: 16, iterations: 2, final_views: 2}}, identities: "0-1"}}
  - {{name: ifgmi, preset: quick, params: {{pool: 16, stages: [2, 1], radii_w: [5, 5], radii_features: [5, 5],
                                          final_views: 2}}, identities: "0-1"}}
  - {{name: mirror, preset: quick, params: {{pool: 16, population: 4, generations: 2}}, identities: "0-1"}}
  - {{name: rlbmi, preset: quick, params: {{episodes: 4, hidden: 16, sac_batch: 2}}, identities: "0-1"}}
priors: {{preset: quick, params: {{stylegan2: {{iterations: 4, batch_size: 8, ckpt_every: 2}},
                                   gan: {{iterations: 4, width: 8, batch_size: 8}}}}}}
metrics: {{fid: eval, n_boot: 10}}
report: {{enabled: false}}
"""


def _run(cfg: Path, out: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIDRE_CRASH_AT", None)
    if crash_at:
        env["MIDRE_CRASH_AT"] = crash_at
    code = "import sys; from midre.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "run", str(cfg), "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_pipeline_runs_the_four_and_resumes_after_a_kill_in_the_attacks(tmp_path):
    cfg = tmp_path / "hr.yaml"
    cfg.write_text(CONFIG)
    ref = _run(cfg, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    rows = _rows(tmp_path / "ref")
    assert sorted(r["attack"] for r in rows) == ["ifgmi", "mirror", "ppa", "rlbmi"]
    killed = _run(cfg, tmp_path / "killed", crash_at="attacks/nodef/mirror")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "attacks" / "nodef" / "mirror" / "reconstructions.json").exists()
    again = _run(cfg, tmp_path / "killed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rows(tmp_path / "killed") == rows
    for name in ("ppa", "ifgmi", "mirror", "rlbmi"):
        a = Reconstructions.load(tmp_path / "ref" / "attacks" / "nodef" / name)
        b = Reconstructions.load(tmp_path / "killed" / "attacks" / "nodef" / name)
        assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)


def test_pipeline_with_a_converted_generator_needs_no_public_split(tmp_path):
    """A run whose only prior is a converted StyleGAN2 (the 224-px configs' situation: no public split)."""
    from midre.config import load_config
    from midre.models.stylegan2 import save_generator, tiny_generator
    from midre.pipeline import run_pipeline

    save_generator(tmp_path / "g" / "generator", tiny_generator(32, seed=1, channels=8))
    opts = {**DATA_OPTS, "num_public": 0}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace(json.dumps(DATA_OPTS), json.dumps(opts)).split("attacks:")[0] + f"""attacks:
  - {{name: ppa, preset: quick, params: {{pool: 8, iterations: 1, final_views: 1}}, identities: "0-1"}}
priors: {{preset: quick, params: {{stylegan2: {{path: "{tmp_path / 'g'}"}}}}}}
metrics: {{fid: none, knn: false, n_boot: 0}}
report: {{enabled: false}}
""")
    res = run_pipeline(load_config(str(cfg)), tmp_path / "run", progress=False)
    rec = Reconstructions.load(tmp_path / "run" / "attacks" / "nodef" / "ppa")
    assert rec.images.shape == (2, 3, RES, RES) and res.run_dir.exists()
    assert not (tmp_path / "run" / "attacks" / "nodef" / "ppa" / "partial").exists()


@pytest.mark.parametrize("name", ["paper/facescrub", "paper/dogs", "paper/celeba-ppa"])
def test_paper_configs_run_the_reference_preset_of_their_dataset(name):
    """Each high-resolution paper config attacks with the PPA / IF-GMI preset of the reference config for
    its dataset (a config that kept FaceScrub's settings on Stanford Dogs or CelebA fails here)."""
    from midre.attacks import build_attack
    from midre.attacks.highres import paper_preset
    from midre.config import raw_config, resolve_config_path

    raw = raw_config(str(resolve_config_path(name)))
    want = paper_preset(raw["dataset"]["name"])
    assert want == {"facescrub": "paper-facescrub", "celeba": "paper-celeba",
                    "stanford_dogs": "paper-dogs"}[raw["dataset"]["name"]]
    hr = [a for a in raw["attacks"] if a["name"] in ("ppa", "ifgmi")]
    assert {a["name"] for a in hr} == {"ppa", "ifgmi"}
    for a in hr:
        assert a["preset"] == want, f"{name}: {a['name']} runs preset {a['preset']!r}, the dataset's is {want!r}"
        # the config does not override what the preset fixes (iterations, lr, crops, stages)
        fixed = set(build_attack(a["name"], preset=want).presets[want])
        assert not fixed & set(a.get("params", {})), f"{name}: {a['name']} overrides {fixed & set(a['params'])}"


def test_plain_paper_preset_follows_the_attacked_dataset():
    """`preset: paper` on ppa / ifgmi in a run config means the reference config of the attacked dataset."""
    from midre.attacks.highres import resolve_preset

    assert resolve_preset("ppa", "paper", "celeba") == "paper-celeba"
    assert resolve_preset("ifgmi", "paper", "stanford_dogs") == "paper-dogs"
    assert resolve_preset("ppa", "paper", "synthetic2") == "paper-facescrub"
    assert resolve_preset("ppa", "quick", "celeba") == "quick" and resolve_preset("gmi", "paper", "celeba") == "paper"
    assert resolve_preset("ppa", None, "celeba") is None
