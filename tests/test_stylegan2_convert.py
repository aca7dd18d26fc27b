"""The safe StyleGAN2 converter: official-format pickles are read without running anything they contain."""
from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from midre.cli import main
from midre.errors import CheckpointError
from midre.models.stylegan2 import load_generator, save_generator, tiny_generator
from midre.models.stylegan2_convert import convert_stylegan2, read_official_pickle


@pytest.fixture
def fake_nvidia(monkeypatch, tmp_path):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` modules like NVIDIA's: the persistence hook
    EXECUTES the module source stored in the pickle, and that source creates a marker file."""
    marker = tmp_path / "code_ran.txt"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):          # what NVIDIA's loader does: exec the embedded source
        exec(compile(meta["module_src"], "<pickle>", "exec"), {})
        return meta["class_name"]

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)
    src = f"open({str(marker)!r}, 'w').write('the pickle ran code')\n"
    return types.SimpleNamespace(marker=marker, hook=_reconstruct_persistent_obj, EasyDict=EasyDict, src=src)


class _Persistent:
    """Pickles like an NVIDIA persistent object: REDUCE of the persistence hook on a meta dict."""

    def __init__(self, nv, module: torch.nn.Module, init_kwargs=None):
        self.nv, self.module, self.init_kwargs = nv, module, init_kwargs

    def __reduce__(self):
        m = self.module
        state = {"training": False, "_parameters": OrderedDict(m._parameters), "_buffers": OrderedDict(m._buffers),
                 "_non_persistent_buffers_set": set(), "_forward_hooks": OrderedDict(),
                 "_modules": OrderedDict((k, _Persistent(self.nv, v)) for k, v in m._modules.items()),
                 "_init_args": (), "_init_kwargs": self.nv.EasyDict(self.init_kwargs or {}),
                 "act_gain": np.sqrt(2), "weight_gain": np.float32(0.5)}   # numpy scalars, as in real pickles
        meta = dict(type="class", version=4, module_src=self.nv.src, class_name=type(m).__name__, state=state)
        return self.nv.hook, (meta,)


def _official_pickle(nv, G, path: Path, protocol: int = 4, extra=None) -> Path:
    kw = dict(G.init_kwargs)
    kw["mapping_kwargs"] = nv.EasyDict(kw["mapping_kwargs"])
    kw["synthesis_kwargs"] = nv.EasyDict(kw["synthesis_kwargs"])
    data = {"G": _Persistent(nv, G, kw), "D": None, "G_ema": _Persistent(nv, G, kw),
            "training_set_kwargs": nv.EasyDict(resolution=G.img_resolution), **(extra or {})}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [3, 4])
def test_round_trip_is_bit_exact_and_runs_nothing(fake_nvidia, tmp_path, protocol):
    G = tiny_generator(32, seed=0)
    with torch.no_grad():
        for p in G.parameters():                  # non-trivial values everywhere
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pkl = _official_pickle(fake_nvidia, G, tmp_path / "net.pkl", protocol)
    # the payload is live: the normal unpickler runs it
    pickle.loads(pkl.read_bytes())
    assert fake_nvidia.marker.exists()
    fake_nvidia.marker.unlink()
    out = tmp_path / "conv"
    assert main(["convert", "stylegan2", str(pkl), "--out", str(out)]) == 0
    assert not fake_nvidia.marker.exists()
    G2, meta = load_generator(out)
    assert meta["init_kwargs"] == G.init_kwargs and meta["source"]["file"] == "net.pkl"
    for k, v in G.state_dict().items():
        assert torch.equal(v, G2.state_dict()[k]), k
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(G(z, truncation_psi=0.7, truncation_cutoff=4, noise_mode="const"),
                       G2(z, truncation_psi=0.7, truncation_cutoff=4, noise_mode="const"))
    assert sorted(os.listdir(out)) == ["generator.json", "generator.safetensors"]


def test_save_and_load_generator(tmp_path):
    G = tiny_generator(32, seed=1)
    save_generator(tmp_path / "g" / "generator", G)
    G2, meta = load_generator(tmp_path / "g" / "generator.safetensors")
    assert meta["num_ws"] == G.num_ws and torch.equal(G2.mapping.w_avg, G.mapping.w_avg)
    with pytest.raises(CheckpointError):
        load_generator(tmp_path / "missing")


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload", ["os.system", "eval", "reconstructor"])
def test_other_globals_are_refused_through_the_cli(fake_nvidia, tmp_path, capsys, payload):
    import copyreg

    cmd = f"touch {fake_nvidia.marker}"
    evil = {"os.system": _Evil(os.system, cmd),
            "eval": _Evil(eval, f"__import__('os').system({cmd!r})"),
            "reconstructor": _Evil(copyreg._reconstructor, OrderedDict, dict, {})}[payload]
    G = tiny_generator(32, seed=0)
    pkl = _official_pickle(fake_nvidia, G, tmp_path / "evil.pkl", extra={"zz": evil})   # after a valid G_ema
    out = tmp_path / "conv"
    rc = main(["convert", "stylegan2", str(pkl), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "refusing" in err and "Traceback" not in err
    assert not fake_nvidia.marker.exists() and not out.exists()


def test_bad_files_are_one_line_errors(fake_nvidia, tmp_path, capsys):
    G = tiny_generator(32, seed=0)
    pkl = _official_pickle(fake_nvidia, G, tmp_path / "net.pkl")
    (tmp_path / "trunc.pkl").write_bytes(pkl.read_bytes()[: len(pkl.read_bytes()) // 2])
    (tmp_path / "nokey.pkl").write_bytes(pickle.dumps({"G": 1}))
    (tmp_path / "text.pkl").write_text("not a pickle")
    for name in ("trunc.pkl", "nokey.pkl", "text.pkl", "absent.pkl"):
        out = tmp_path / f"out-{name}"
        assert main(["convert", "stylegan2", str(tmp_path / name), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert not out.exists()
    assert not fake_nvidia.marker.exists()


def test_mismatched_weights_refused(fake_nvidia, tmp_path):
    G = tiny_generator(32, seed=0)
    G.synthesis.b4.conv1.bias = torch.nn.Parameter(torch.zeros(5))     # wrong shape for its init kwargs
    pkl = _official_pickle(fake_nvidia, G, tmp_path / "bad.pkl")
    with pytest.raises(CheckpointError, match="do not fit"):
        convert_stylegan2(pkl, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_records_keep_only_saved_state(fake_nvidia, tmp_path):
    G = tiny_generator(32, seed=0)
    pkl = _official_pickle(fake_nvidia, G, tmp_path / "net.pkl",
                           extra={"f64": np.float64(1.25), "f32": np.float32(-2.5), "i8": np.int64(7)})
    data = read_official_pickle(pkl)
    assert (data["f64"], data["f32"], data["i8"]) == (1.25, -2.5, 7)
    rec = data["G_ema"]
    assert isinstance(rec.init_kwargs, dict) and rec.class_name == "Generator"
    assert sorted(rec.modules) == ["mapping", "synthesis"]
    fc = rec.modules["mapping"].modules["fc0"]
    assert sorted(fc.parameters) == ["bias", "weight"] and isinstance(fc.parameters["weight"], torch.nn.Parameter)


def test_malformed_records_are_refused(fake_nvidia, tmp_path):
    bad = {"G_ema": _Evil(fake_nvidia.hook, dict(type="class", version=4, module_src=fake_nvidia.src,
                                                 class_name="Generator", state={"_parameters": [1, 2]}))}
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps(bad))
    with pytest.raises(CheckpointError, match="_parameters"):
        convert_stylegan2(pkl, tmp_path / "out")
    assert not fake_nvidia.marker.exists() and not (tmp_path / "out").exists()
