"""Priors never see private data (issue 10, item 6): the pipeline refuses a public set that shares
images with the private splits before any training, and every prior it trains or loads is checked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _imagefolder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"person{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.slow
def test_public_set_overlapping_the_private_identities_is_a_one_line_refusal(tmp_path):
    data = _imagefolder(tmp_path / "faces")
    cfg = {
        "name": "leak", "seed": 0, "device": "cpu",
        # every class is private, and the "public" set is the same folder: the prior would see them
        "dataset": {"name": "imagefolder", "root": str(data), "resolution": 16,
                    "options": {"public": f"images:{data}", "test_fraction": 0.25}},
        "eval_model": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 4}},
        "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 4}},
        "targets": [{"name": "nodef", "defense": "nodef"}],
        "attacks": [{"name": "gmi", "preset": "quick", "params": {"iterations": 1}, "identities": "0", "repeats": 1}],
        "priors": {"preset": "quick", "params": {"gan": {"iterations": 1, "batch_size": 4}}},
        "report": {"enabled": False},
    }
    path = tmp_path / "leak.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    code = "import sys; from midre.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "run", str(path), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "public set shares 9 image(s) with the private splits" in lines[0]   # the 9 training images
    assert "dataset.options.public" in lines[0]
    assert not (out / "eval").exists() and not (out / "targets").exists() and not (out / "priors").exists()


def test_every_prior_the_pipeline_trains_or_loads_is_checked(tmp_path, monkeypatch):
    import midre.priors as P
    from midre.config import load_config
    from midre.pipeline import run_pipeline

    calls: list[int] = []
    real = P.assert_public_only

    def spy(public, *private):
        calls.append(len(private))
        return real(public, *private)

    monkeypatch.setattr(P, "assert_public_only", spy)
    raw = {
        "name": "tiny", "seed": 0, "device": "cpu",
        "dataset": {"name": "synthetic", "resolution": 32,
                    "options": {"num_private": 3, "num_public": 3, "images_per_id": 4}},
        "eval_model": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
        "defaults": {"arch": "tinycnn", "train": {"epochs": 1, "batch_size": 16}},
        "targets": [{"name": "nodef", "defense": "nodef"}],
        "attacks": [{"name": "gmi", "preset": "quick", "params": {"iterations": 1}, "identities": "0", "repeats": 1}],
        "priors": {"preset": "quick", "params": {"gan": {"iterations": 1, "batch_size": 8}}},
        "metrics": {"fid": "none", "n_boot": 10},
        "report": {"enabled": False},
    }
    run_pipeline(load_config(raw), tmp_path / "run", progress=False)
    # the data stage (before any training), the gan prior when trained, and again when loaded to attack
    assert calls == [2, 2, 2]
