"""δ_face with the optional 'face' extra (dlib ResNet descriptor) and without it (reported unavailable)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from midre.data.base import TensorImageSet
from midre.face_embedder import DlibFaceEmbedder, face_embedder_status, resolve_face_embedder
from midre.metrics import delta_face, evaluate_reconstructions

HAVE_FACE, WHY = face_embedder_status()


def _images(n: int, res: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(res, res), mode="bilinear", align_corners=False)


def _set(x: torch.Tensor, y) -> TensorImageSet:
    return TensorImageSet((x * 255).round().to(torch.uint8), list(y))


def _hide_dlib(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))


def test_without_the_extra_delta_face_is_unavailable_not_zero(monkeypatch):
    from midre.models import create_model

    _hide_dlib(monkeypatch)
    ok, why = face_embedder_status()
    assert not ok and "midre[face]" in why
    emb, note = resolve_face_embedder("dlib")
    assert emb is None and note.startswith("unavailable")
    torch.manual_seed(0)
    net = create_model("tinycnn", num_classes=2, resolution=16)
    priv = _set(_images(4, 16, 0), [0, 0, 1, 1])
    recon = {"images": _images(2, 16, 1), "identity": torch.tensor([0, 1]), "repeat": torch.tensor([0, 0]),
             "confidence": torch.tensor([0.5, 0.5]), "meta": {"attack": "ppa"}}
    m = evaluate_reconstructions(recon, net, priv, fid=False, n_boot=0, topk=(1,), face_embedder="dlib")
    assert m["delta_face"] is None and "midre[face]" in m["delta_face_note"]
    m = evaluate_reconstructions(recon, net, priv, fid=False, n_boot=0, topk=(1,))
    assert "delta_face" not in m                               # not asked for: not reported


@pytest.mark.skipif(not HAVE_FACE, reason=f"the optional 'face' extra is not installed ({WHY})")
def test_dlib_embedder_at_224_px():
    emb = DlibFaceEmbedder()
    priv_x = _images(4, 224, 2)
    priv = _set(priv_x, [0, 0, 1, 1])
    exact = priv.to_tensors().images[:2].float() / 255      # copies of identity 0's private images
    e = emb(exact)
    assert e.shape == (2, 128) and e.dtype == torch.float32 and torch.isfinite(e).all()
    assert torch.equal(e, emb(exact))                                      # deterministic
    assert not torch.allclose(e[0], e[1])
    assert delta_face(emb, exact, [0, 0], priv) == pytest.approx(0.0, abs=1e-6)
    other = _images(2, 224, 9)
    d = delta_face(emb, other, [0, 0], priv)
    assert d > 1e-4
