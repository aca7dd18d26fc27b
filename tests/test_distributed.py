"""Data-parallel training (midre.distributed): sharding, per-rank streams, 2 gloo processes on CPU
against one process with the same global batch, rank-0-only checkpoints, and kill + resume under torchrun."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from midre.distributed import ShardSampler, World
from midre.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(3)   # BatchNorm-free: per-rank statistics cannot differ from the global batch's
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 4))


CFG = {"epochs": 2, "batch_size": 8, "lr": 0.2, "hflip": False, "device": "cpu", "seed": 5, "schedule": "cosine",
       "grad_clip": 0.05}   # clipping (after backward) acts on the all-reduced gradient: same as one process


# ------------------------------------------------------------------------------ sharding (no processes)
def test_shards_of_a_step_are_the_single_process_batch():
    n, B, W = 24, 8, 2
    gen1 = torch.Generator().manual_seed(11)
    one = [b.tolist() for b in DataLoader(torch.arange(n), **World().loader_kwargs(n, B, gen1))]
    shards = []
    for r in range(W):
        g = torch.Generator().manual_seed(11)
        shards.append([b.tolist() for b in DataLoader(torch.arange(n), **World(rank=r, size=W).loader_kwargs(n, B, g))])
    assert len(shards[0]) == len(one) == 3
    for k, batch in enumerate(one):
        assert sorted(shards[0][k] + shards[1][k]) == sorted(batch)
        assert not set(shards[0][k]) & set(shards[1][k])


def test_uneven_set_is_padded_like_distributed_sampler():
    parts = [list(ShardSampler(5, r, 2, torch.Generator().manual_seed(0))) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 3
    assert set(parts[0] + parts[1]) == set(range(5))


def test_global_batch_must_split_over_ranks():
    with pytest.raises(ArgumentError, match="multiple of 2"):
        World(rank=0, size=2).loader_kwargs(10, 7, torch.Generator())
    with pytest.raises(ArgumentError, match="at least 4"):
        World(rank=0, size=2).loader_kwargs(10, 2, torch.Generator())


def test_rank_streams_differ_per_rank_and_not_in_one_process():
    from midre.defenses import build_defense
    from midre.defenses.base import TrainContext

    def base(w: World) -> int:
        d = build_defense({"name": "midre", "area": 0.4})
        d.prepare(TrainContext(model=nn.Linear(1, 1), train_set=None, config=type("C", (), {"seed": 5})()))
        w.rank_streams(d)
        return d._base_seed

    one = base(World())
    r0, r1 = base(World(rank=0, size=2)), base(World(rank=1, size=2))
    assert len({one, r0, r1}) == 3
    assert r0 == base(World(rank=0, size=2))          # reproducible for a given world size
    assert r0 != base(World(rank=0, size=4))


def test_dp_sgd_is_refused_under_ddp():
    m, wrapped = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ArgumentError, match="one process"):
        World(rank=0, size=2).wrap(m, wrapped, torch.device("cpu"))


# ------------------------------------------------------------------------------ 2 gloo processes
def _child(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    import midre.training as T

    real = T._save_epoch

    def spy(out_dir, *a, **k):   # record who writes checkpoints
        (Path(out) / f"saved-by-rank{rank}").write_text("yes")
        return real(out_dir, *a, **k)

    T._save_epoch = spy
    res = T.train_classifier(_model(), _data(), _data(8), config=CFG, out_dir=Path(out) / "ckpt", progress=False)
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, Path(out) / f"weights{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from midre.training import train_classifier

    one = train_classifier(_model(), _data(), _data(8), config=CFG, progress=False)
    mp.spawn(_child, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "weights0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights1.pt", weights_only=True)
    for k, v in one.model.state_dict().items():
        assert torch.equal(w0[k], w1[k]), k                       # ranks stay in lock-step
        assert torch.allclose(w0[k], v, atol=1e-5, rtol=1e-4), k  # = one process, up to summation order
        assert not torch.equal(v, _model().state_dict()[k])       # and it did train
    assert (tmp_path / "saved-by-rank0").exists() and not (tmp_path / "saved-by-rank1").exists()
    hist = json.loads((tmp_path / "ckpt" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert abs(hist[-1]["loss"] - one.history[-1]["loss"]) < 1e-4      # statistics summed over ranks


# ------------------------------------------------------------------------------ torchrun: kill + resume
def _torchrun(tmp_path: Path, out: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "midre.cli",
           "train", "--dataset", "synthetic", "--resolution", "16", "--data-option", "num_private=4",
           "--data-option", "num_public=0", "--data-option", "images_per_id=10", "--arch", "tinycnn",
           "--defense", "midre", "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--no-progress",
           "--out", out]
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_kill_and_resume_reaches_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    full = _torchrun(tmp_path, "full")
    assert full.returncode == 0, full.stderr[-2000:]
    assert full.stdout.count("natural accuracy") == 1             # rank 0 alone reports
    killed = _torchrun(tmp_path, "resumed", MIDRE_DDP_KILL_AFTER_EPOCH="1")
    assert killed.returncode != 0
    assert json.loads((tmp_path / "resumed" / "model.json").read_text())["epoch"] == 1
    again = _torchrun(tmp_path, "resumed")
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "full" / "history.json").read_text())
    hb = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb] and len(ha) == 3


TINY_RUN = """
name: tiny-ddp
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 4, images_per_id: 4}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 2, batch_size: 8}}
targets: [{name: nodef, defense: nodef}, {name: midre, defense: {name: midre, area: 0.4}}]
attacks: [{name: gmi, preset: quick, params: {iterations: 2}, identities: "0-1", repeats: 1}]
priors: {preset: quick, params: {gan: {iterations: 2, batch_size: 8}}}
metrics: {fid: none, n_boot: 10}
report: {enabled: false}
"""


@pytest.mark.slow
def test_torchrun_pipeline_trains_data_parallel_and_attacks_on_rank_0(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "midre.cli",
           "run", "tiny.yaml", "--out", "run", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["complete"] is True
    for d in ("eval", "targets/nodef", "targets/midre"):
        assert json.loads((run / d / "model.json").read_text())["world_size"] == 2
    assert (run / "attacks" / "midre" / "gmi" / "metrics.json").exists()
    assert r.stdout.count("midre results") == 1


def test_world_size_without_torchrun_rendezvous_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    import midre.distributed as D
    from midre.cli import main

    monkeypatch.setattr(D, "_WORLD", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    rc = main(["train", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "torchrun" in err, err
    assert not (tmp_path / "o").exists()
