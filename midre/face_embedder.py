"""The δ_face embedder of the optional ``face`` extra: dlib's ResNet face descriptor (128-D).

``pip install 'midre[face]'`` installs ``face_recognition_models`` (its wheel ships
``dlib_face_recognition_resnet_model_v1.dat``, MIT licence) and ``dlib-bin`` (prebuilt dlib); nothing is
downloaded at run time.  PPA's δ_face uses FaceNet at 160 px, whose package downloads its weights; this
is the offline substitute, so δ_face values from midre are NOT comparable with PPA's numbers.

Input handling: an image in [0, 1] (any size, e.g. the 224-px reconstructions) is taken as an already
cropped face, resized (bilinear, antialiased) to dlib's 150 x 150 face chip, converted to uint8 RGB and
embedded; no face detection or landmark alignment (reconstructions are crops by construction).

Without the extra, :func:`resolve_face_embedder` returns ``(None, reason)`` and the metrics report
``delta_face = None`` with a ``delta_face_note``: unavailable, never a silent zero.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ArgumentError

CHIP = 150
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "install the 'face' extra: pip install 'midre[face]' (face_recognition_models + dlib-bin)"


def dlib_model_path() -> Path | None:
    """The descriptor model file inside the installed face_recognition_models package (not imported:
    its __init__ needs pkg_resources), or None."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    return p if p.is_file() else None


def face_embedder_status() -> tuple[bool, str]:
    """(available, reason): whether the dlib δ_face embedder can be built here."""
    if importlib.util.find_spec("dlib") is None:
        return False, f"dlib is not installed; {INSTALL_HINT}"
    if dlib_model_path() is None:
        return False, f"the dlib face-descriptor model file is not installed; {INSTALL_HINT}"
    return True, "dlib ResNet face descriptor (face_recognition_models)"


class DlibFaceEmbedder:
    """Callable: images (N, C, H, W) in [0, 1] -> (N, 128) float32 dlib face descriptors (CPU)."""

    name = "dlib-resnet-v1"

    def __init__(self, model_path: str | Path | None = None):
        ok, why = face_embedder_status()
        if model_path is None and not ok:
            raise ArgumentError(f"δ_face is unavailable: {why}")
        import dlib

        path = Path(model_path) if model_path is not None else dlib_model_path()
        if not path.is_file():
            raise ArgumentError(f"face-descriptor model '{path}' not found; {INSTALL_HINT}")
        self.model = dlib.face_recognition_model_v1(str(path))

    @staticmethod
    def chips(images: torch.Tensor) -> list[np.ndarray]:
        x = images.detach().float().cpu()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[1] != 3:
            raise ArgumentError(f"the face embedder takes RGB or grey images, got {x.shape[1]} channels")
        x = F.interpolate(x, size=(CHIP, CHIP), mode="bilinear", align_corners=False, antialias=True)
        u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return [np.ascontiguousarray(a) for a in u8]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chips = self.chips(images)
        if not chips:
            return torch.zeros(0, 128)
        desc = self.model.compute_face_descriptor(chips)
        return torch.tensor(np.array([np.array(d) for d in desc], dtype=np.float32))


def resolve_face_embedder(spec: Any) -> tuple[Any, str | None]:
    """``"dlib"`` / ``"auto"`` -> (DlibFaceEmbedder, None) or (None, reason); a callable -> (it, None)."""
    if spec is None or callable(spec):
        return spec, None
    if str(spec) not in ("dlib", "auto"):
        raise ArgumentError(f"unknown face embedder '{spec}'; use 'dlib' (the 'face' extra) or pass a callable")
    ok, why = face_embedder_status()
    return (DlibFaceEmbedder(), None) if ok else (None, f"unavailable: {why}")
