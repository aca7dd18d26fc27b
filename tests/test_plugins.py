"""midre.plugins: the example plugin package installed into a temp dir (never the shared venv) is listed,
trains and attacks in a `midre run` config, lands in the report; broken plugins cost one warning line.

Every case runs midre in a subprocess with the temp dir on PYTHONPATH, so entry points are discovered
exactly as for an installed package and this test process's registries stay untouched.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "midre-plugin-example"


def _handmade_install(src: Path, target: Path) -> None:
    """What pip would install: the package + a dist-info with METADATA and entry_points.txt."""
    meta = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    pkg = meta["name"].replace("-", "_")
    shutil.copytree(src / pkg, target / pkg)
    _dist_info(target, meta["name"], meta.get("entry-points", {}))


def _dist_info(target: Path, name: str, groups: dict[str, dict[str, str]]) -> None:
    d = target / f"{name.replace('-', '_')}-0.1.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (d / "entry_points.txt").write_text("".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin installed with pip into a temp dir (from a copy: pip builds in the source tree)."""
    base = tmp_path_factory.mktemp("plugin")
    src, site = base / "src", base / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    if importlib.util.find_spec("setuptools") is not None:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "--target", str(site), str(src)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    else:   # no build backend in this environment: install by hand, same layout
        site.mkdir()
        _handmade_install(src, site)
    assert list(site.glob("midre_plugin_example-*.dist-info/entry_points.txt"))
    return site


def midre(site: Path, *code: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run python code (lines) with ``site`` and the repo on PYTHONPATH, 80 columns, one thread."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "COLUMNS": "80",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=timeout)


def cli(*argv: str) -> str:
    return f"from midre.cli import main; rc = main({list(argv)!r}); assert rc == 0, rc"


# ------------------------------------------------------------------------------------------ listings
@pytest.mark.slow
def test_example_plugin_is_listed_like_a_builtin(plugin_site):
    r = midre(plugin_site, cli("defenses"), cli("attacks"), cli("models"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr                      # a good plugin is silent
    out = r.stdout
    for name in ("gaussian_noise", "random_search", "mlp", "midre", "gmi", "smallcnn"):
        assert any(ln.startswith(f"  {name} ") for ln in out.splitlines()), name
    assert out.count("plugin package: midre-plugin-example") == 3
    assert "access: black-box" in out and "parameters: std=0.1" in out
    assert max(len(ln) for ln in out.splitlines()) <= 80


@pytest.mark.slow
def test_plugin_objects_behave_like_builtins(plugin_site):
    r = midre(plugin_site, textwrap.dedent("""
        import torch
        from midre.attacks import ATTACKS, build_attack
        from midre.defenses import build_defense
        from midre.models import create_model
        d = build_defense({"name": "gaussian_noise", "std": 0.25})
        assert d.spec() == {"name": "gaussian_noise", "std": 0.25}, d.spec()
        x = torch.full((4, 3, 8, 8), 0.5)
        torch.manual_seed(0); a, _ = d.transform_batch(x, torch.zeros(4))
        torch.manual_seed(0); b, _ = d.transform_batch(x, torch.zeros(4))
        assert torch.equal(a, b) and 0.15 < float((a - x).std()) < 0.35 and a.min() >= 0 and a.max() <= 1
        combo = build_defense("midre+gaussian_noise")
        assert combo.name == "midre+gaussian_noise", combo.name
        m = create_model("mlp", num_classes=5, resolution=16)
        assert m(torch.rand(2, 3, 16, 16)).shape == (2, 5) and m.arch == "mlp"
        atk = build_attack("random_search", preset="quick", iterations=2)
        assert atk.access == "black-box" and atk.params["population"] == 16
        from midre.errors import ArgumentError
        try:
            build_attack("random_search", elite=40)
        except ArgumentError as e:
            print("refused:", e)
        """))
    assert r.returncode == 0, r.stderr
    assert "refused: attack 'random_search': elite must be" in r.stdout


# ------------------------------------------------------------------------------------------ run + report
PLUGIN_RUN = {
    "name": "plug", "seed": 0, "device": "cpu",
    "dataset": {"name": "synthetic", "resolution": 32,
                "options": {"num_private": 6, "num_public": 6, "images_per_id": 8}},
    "eval_model": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
    "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
    "targets": [{"name": "nodef", "defense": "nodef"},
                {"name": "mlp-noise", "arch": "mlp", "defense": {"name": "gaussian_noise", "std": 0.2}}],
    "attacks": [{"name": "random_search", "preset": "quick", "params": {"iterations": 3, "population": 8},
                 "identities": "0-1", "repeats": 1}],
    "priors": {"preset": "quick", "params": {"gan": {"iterations": 4, "batch_size": 16, "ckpt_every": 2}}},
    "metrics": {"fid": "eval", "n_boot": 50},
    "report": {"enabled": True, "max_identities": 2},
}


@pytest.mark.slow
def test_plugin_defense_attack_and_model_in_a_run_and_its_report(plugin_site, tmp_path):
    cfg = tmp_path / "plug.yaml"
    cfg.write_text(yaml.safe_dump(PLUGIN_RUN))
    r = midre(plugin_site, cli("run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    rows = {row["target"]: row for row in csv.DictReader(open(run / "results.csv", newline=""))}
    assert rows["mlp-noise"]["defense"] == "gaussian_noise" and rows["mlp-noise"]["attack"] == "random_search"
    assert rows["nodef"]["attack"] == "random_search"
    meta = json.loads((run / "targets" / "mlp-noise" / "model.json").read_text())
    assert meta["arch"] == "mlp" and meta["defense"] == {"name": "gaussian_noise", "std": 0.2}
    rec = json.loads((run / "attacks" / "mlp-noise" / "random_search" / "reconstructions.json").read_text())
    assert rec["access"] == "black-box" and rec["queries"] == 2 * (8 + 3 * (8 - 4))   # counted by the oracle
    assert len(rec["loss_curve"]) == 3
    report = (run / "report.md").read_text()
    assert "random_search" in report and "gaussian_noise" in report
    assert "random_search" in (run / "report.html").read_text()


# ------------------------------------------------------------------------------------------ broken plugins
BROKEN = {
    "broken_import_pkg/__init__.py": "import a_module_that_does_not_exist\n",
    "clash_pkg/__init__.py": "from midre.defenses import Defense\nclass Other(Defense):\n    name = 'midre'\n",
    "wrong_type_pkg/__init__.py": textwrap.dedent("""
        from midre.defenses import Defense
        class NotAnAttack:
            name = 'not_an_attack'
        class Misnamed(Defense):
            '''A defense whose name attribute disagrees with its entry point.'''
            name = 'something_else'
        CONSTANT = 3
        def no_params():
            return None
        """),
    "good_data_pkg/__init__.py": textwrap.dedent("""
        def blobs(root=None, resolution=None, seed=0, num_private=3):
            '''Tiny synthetic identities from a plugin.'''
            import dataclasses
            from midre.data import load_dataset
            s = load_dataset('synthetic', resolution=resolution or 32, seed=seed, num_private=num_private,
                             num_public=3, images_per_id=4)
            return dataclasses.replace(s, name='blobs')   # the name checkpoints record and reload by
        blobs.midre_info = {'kind': 'embedded', 'default_resolution': 32}
        """),
}
BROKEN_EPS = {
    "broken-import": {"midre.defenses": {"kaput": "broken_import_pkg:Thing"}},
    "clash-pkg": {"midre.defenses": {"midre": "clash_pkg:Other"}},
    "wrong-type": {"midre.attacks": {"not_an_attack": "wrong_type_pkg:NotAnAttack"},
                   "midre.defenses": {"misnamed": "wrong_type_pkg:Misnamed"},
                   "midre.models": {"constant": "wrong_type_pkg:CONSTANT"},
                   "midre.datasets": {"noparams": "wrong_type_pkg:no_params"}},
    "good-data": {"midre.datasets": {"blobs": "good_data_pkg:blobs"}},
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("broken")
    for rel, text in BROKEN.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    for name, groups in BROKEN_EPS.items():
        _dist_info(site, name, groups)
    return site


@pytest.mark.slow
def test_broken_plugins_warn_one_line_each_and_midre_still_works(broken_site):
    r = midre(broken_site, cli("defenses"), cli("attacks"), cli("models"), cli("datasets"),
              "from midre.defenses import build_defense; print('BUILT', type(build_defense('midre')).__module__)")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 6, r.stderr
    assert all(ln.startswith("midre: warning: plugin package '") for ln in lines), lines
    by_pkg = {ln.split("'")[1]: ln for ln in lines}
    assert "import failed (ModuleNotFoundError" in by_pkg["broken-import"]
    assert "name clash with the built-in defense 'midre'" in by_pkg["clash-pkg"]
    wrong = [ln for ln in lines if "'wrong-type'" in ln]
    assert len(wrong) == 4, wrong
    assert any("not_an_attack" in ln and "expected a midre.attacks.Attack subclass" in ln for ln in wrong)
    assert any("Misnamed.name is 'something_else'" in ln for ln in wrong)
    assert any("constant" in ln and "expected a factory taking num_classes" in ln for ln in wrong)
    assert any("noparams" in ln and "expected a factory taking root, resolution and seed" in ln for ln in wrong)
    out = r.stdout
    assert "BUILT midre.defenses.midre" in out                       # the built-in won the clash
    for name in ("midre", "gmi", "smallcnn", "synthetic", "blobs"):  # built-ins + the good plugin are there
        assert any(ln.startswith(f"  {name} ") for ln in out.splitlines()), name
    for name in ("kaput", "not_an_attack", "misnamed", "constant", "noparams"):
        assert not any(ln.startswith(f"  {name} ") for ln in out.splitlines()), name


@pytest.mark.slow
def test_a_refused_plugin_name_is_an_unknown_name_with_exit_2(broken_site, tmp_path):
    r = midre(broken_site, "import sys; from midre.cli import main; sys.exit(main(['train', '--defense', 'kaput', "
                           f"'--epochs', '1', '--out', {str(tmp_path / 't')!r}]))")
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("midre: warning:")]
    assert len(err) == 1 and "kaput" in err[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_a_good_dataset_plugin_trains(broken_site, tmp_path):
    r = midre(broken_site, cli("train", "--dataset", "blobs", "--arch", "tinycnn", "--epochs", "1",
                                "--out", str(tmp_path / "t"), "--no-progress"))
    assert r.returncode == 0, r.stderr
    assert "natural accuracy" in r.stdout
    assert json.loads((tmp_path / "t" / "model.json").read_text())["dataset"]["name"] == "blobs"


# ------------------------------------------------------------------------------------------ in-process
class _EP:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj, self.dist = name, value, obj, type("D", (), {"name": "fake-pkg"})()

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_load_into_waits_for_the_builtins_and_loads_once(monkeypatch, capsys):
    from midre import plugins
    from midre.defenses.base import Defense
    from midre.registry import Registry

    class Noise(Defense):
        """Fake plugin defense."""
        name = "fake_noise"

    calls = []

    def fake_eps(group):
        calls.append(group)
        return [_EP("fake_noise", "x:Noise", Noise), _EP("boom", "x:boom", RuntimeError("bad\nthing"))]

    monkeypatch.setattr(plugins, "_entry_points", fake_eps)
    reg = Registry("defense", group="midre.defenses")
    monkeypatch.setattr(plugins, "_builtins_ready", lambda pkg: False)     # package still importing
    assert "fake_noise" not in reg and calls == []
    monkeypatch.setattr(plugins, "_builtins_ready", lambda pkg: True)
    assert "fake_noise" in reg and reg.get("fake_noise") is Noise
    assert reg.info("fake_noise") == {"description": "Fake plugin defense.", "plugin": "fake-pkg"}
    reg.names()
    assert calls == ["midre.defenses"]                                      # loaded once
    err = capsys.readouterr().err.splitlines()
    assert err == ["midre: warning: plugin package 'fake-pkg': midre.defenses entry 'boom' (x:boom) ignored: "
                   "import failed (RuntimeError: bad thing)"]


def test_a_builtin_registered_after_the_plugins_still_wins(monkeypatch, capsys):
    from midre import plugins
    from midre.defenses.base import Defense
    from midre.registry import Registry

    class Late(Defense):
        """Plugin defense."""
        name = "late"

    monkeypatch.setattr(plugins, "_entry_points", lambda group: [_EP("late", "x:Late", Late)])
    monkeypatch.setattr(plugins, "_builtins_ready", lambda pkg: True)
    reg = Registry("defense", group="midre.defenses")
    assert reg.get("late") is Late

    def builtin():
        """The built-in one."""

    reg.register("late")(builtin)
    assert reg.get("late") is builtin and "plugin" not in reg.info("late")
    assert "name clash with the built-in defense 'late'" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="registered twice"):
        reg.register("late")(builtin)
