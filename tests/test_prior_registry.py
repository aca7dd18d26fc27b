"""Priors as a registry: a prior kind defined outside midre (tests/_toy_prior.py) is registered, trained and
used by an attack through `midre run` without editing midre; config checks read the registry."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from midre.errors import ArgumentError
from midre.priors import PRIORS, PriorKind, get_prior, register_prior

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

RUN_YAML = """
name: toyprior
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 6, images_per_id: 4}}   # 24 public: 5 held out
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
targets: [{name: nodef, defense: nodef}]
attacks: [{name: pca_gmi, preset: quick, params: {iterations: 3, batch_size: 2}, identities: "0-1", repeats: 1}]
priors: {preset: quick, params: {pca: {components: 4}}}
metrics: {fid: none, n_boot: 10}
report: {enabled: false}
"""


def _python(*code: str, site: Path | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    paths = [str(p) for p in (site, TESTS, REPO) if p is not None]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def _plugin_site(root: Path) -> Path:
    """_toy_prior installed as a plugin package: entry points only (nothing calls its register())."""
    d = root / "toy_prior_plugin-0.1.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-prior-plugin\nVersion: 0.1.0\n")
    (d / "entry_points.txt").write_text("[midre.priors]\npca = _toy_prior:PCAPrior\n\n"
                                        "[midre.attacks]\npca_gmi = _toy_prior:PcaGMI\n")
    return root


@pytest.mark.slow     # a whole `midre run` in a subprocess: about 40 s of CPU
def test_a_plugin_prior_kind_is_trained_and_used_by_an_attack_in_midre_run(tmp_path):
    site = _plugin_site(tmp_path / "site")
    (tmp_path / "run.yaml").write_text(RUN_YAML)
    out = tmp_path / "run"
    r = _python("from midre.cli import main",
                f"rc = main(['run', {str(tmp_path / 'run.yaml')!r}, '--out', {str(out)!r}, '--no-progress'])",
                "assert rc == 0, rc", site=site)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stderr, r.stderr          # a good plugin is silent
    # trained once, on public data, shared by all targets (needs_target False): priors/pca/pca-<key>/
    (pj,) = list((out / "priors" / "pca").glob("pca-*/prior.json"))
    meta = json.loads(pj.read_text())
    assert meta["kind"] == "pca" and meta["complete"] and meta["generator"]["config"]["z_dim"] == 4
    assert 0.0 < meta["explained"] <= 1.0
    assert meta["quality"]["relative_coverage"] is not None     # measured by the kind's quality()
    # the attack ran on the prior's generator and was evaluated
    recon = json.loads((out / "attacks" / "nodef" / "pca_gmi" / "reconstructions.json").read_text())
    assert recon["n"] == 2 and recon["priors"] == {"pca": meta["key"]}, recon.get("priors")
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["target"], r["attack"]) for r in rows] == [("nodef", "pca_gmi")], rows
    assert 0.0 <= float(rows[0]["attack_top1"]) <= 100.0
    # the gates read its quality, because the kind declares quality_gate
    gates = json.loads((out / "gates.json").read_text())
    assert [c["subject"] for c in gates["checks"] if c["gate"].startswith("prior relative coverage")] == ["pca"]
    # reloaded from the cache by the kind's load(): the same generator
    r2 = _python("import torch",
                 "from midre.priors import load_prior",
                 f"p = load_prior({str(pj.parent)!r})",
                 "z = torch.zeros(1, 4); z[0, 0] = 1.0",
                 "x = p.generator(z)",
                 "assert p.kind == 'pca' and x.shape == (1, 3, 16, 16), x.shape",
                 "assert not torch.allclose(x, p.generator(torch.zeros(1, 4)))", site=site)
    assert r2.returncode == 0, r2.stderr[-3000:]


def test_config_refuses_an_attack_whose_prior_kind_is_not_registered(tmp_path):
    (tmp_path / "run.yaml").write_text(RUN_YAML)
    r = _python("import _toy_prior", "_toy_prior.register(prior=False)",      # the attack, not its prior
                "from midre.config import load_config",
                "from midre.errors import ConfigError",
                "try:",
                f"    load_config({str(tmp_path / 'run.yaml')!r})",
                "except ConfigError as e:",
                "    print(e)",
                "else:",
                "    raise SystemExit('accepted')")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout
    assert "'attacks[0]' (pca_gmi) needs prior kind 'pca', which is not registered" in r.stdout, r.stdout


def test_registered_kind_is_validated_and_planned_like_a_builtin(tmp_path):
    (tmp_path / "run.yaml").write_text(RUN_YAML.replace("{components: 4}", "{components: 0}"))
    r = _python("import _toy_prior", "_toy_prior.register()",
                "from midre.config import load_config",
                "from midre.errors import ConfigError",
                "from midre.plan import RunPlan",
                "try:",
                f"    load_config({str(tmp_path / 'run.yaml')!r})",
                "except ConfigError as e:",
                "    print(e)",
                f"cfg = load_config({str(tmp_path / 'run.yaml')!r}, {{'priors.params.pca.components': 4}})",
                "print(sorted(RunPlan(cfg.for_seed(0)).prior_units.items()))")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'priors.params.pca': pca prior config 'components': Input should be greater than or equal to 1" \
        in r.stdout, r.stdout
    assert "[('priors/pca', ('pca', None))]" in r.stdout, r.stdout      # shared: one prior for all targets


def test_builtin_kinds_and_lookup_errors():
    assert set(PRIORS.names()) >= {"gan", "kedmi", "cgan", "lomma", "stylegan2"}
    shared = {k for k in ("gan", "kedmi", "cgan", "lomma", "stylegan2") if not get_prior(k).needs_target}
    assert shared == {"gan", "stylegan2"}           # KedMI's GAN, PLG-MI's cGAN and LOMMA's models are per target
    gated = {k for k in ("gan", "kedmi", "cgan", "lomma", "stylegan2") if get_prior(k).quality_gate}
    assert gated == {"gan", "kedmi", "cgan"}        # the gate's kinds before the registry existed
    assert get_prior("gan").zoo_entry("quickstart") == "quickstart-prior-gan"   # the shipped zoo's names
    with pytest.raises(ArgumentError, match="unknown prior kind 'kedm' \\(did you mean 'kedmi'"):
        get_prior("kedm")
    with pytest.raises(TypeError, match="not a PriorKind"):
        register_prior(dict)

    class Nameless(PriorKind):
        pass

    with pytest.raises(TypeError, match="with a name"):
        register_prior(Nameless)
