"""Deterministic on-disk cache of rendered ``synthetic2`` blocks (50 identities x a range of images).

Rendering the full pools at 64 px takes minutes on one core, so large requests are rendered block by
block and each block is kept as safetensors under ``$MIDRE_CACHE_DIR`` (default
``~/.cache/midre/synthetic2``; ``MIDRE_CACHE_DIR=off`` disables it).  The cache key covers the pool,
block, image range, resolution, variation, the torch version and a hash of the generator's source, so
a changed generator never reads stale images; a cached block holds exactly the bytes a fresh render
gives (tests/test_data_v2.py checks it).  Writes are atomic; a damaged file is re-rendered.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

BLOCK = 50                      # identities per cached block
MIN_IMAGES = 2000               # smaller requests are rendered directly (faster than a whole block)
_SOURCES = ("synthetic2.py", "facerender.py", "synthetic.py")


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off (``MIDRE_CACHE_DIR=off``)."""
    env = os.environ.get("MIDRE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "midre" / "synthetic2"


def _min_images() -> int:
    """Smallest request cached (``MIDRE_CACHE_MIN_IMAGES``; 0 caches every request)."""
    raw = os.environ.get("MIDRE_CACHE_MIN_IMAGES", "").strip()
    if not raw:
        return MIN_IMAGES
    if not raw.isdigit():
        from ..errors import ArgumentError

        raise ArgumentError(f"MIDRE_CACHE_MIN_IMAGES must be a whole number of images (0 caches everything), "
                            f"got {raw!r}; fix or unset it")
    return int(raw)


def _source_hash() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _load(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        t = load_file(str(path))["images"]
    except Exception:  # noqa: BLE001 - a damaged or foreign file is simply re-rendered
        return None
    return t if tuple(t.shape) == shape and t.dtype == torch.uint8 else None


def _save(path: Path, images: torch.Tensor) -> None:
    from safetensors.torch import save_file

    from ..utils import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file({"images": images.contiguous()}, str(tmp))
    except Exception:  # noqa: BLE001 - an unwritable cache only costs time, never correctness
        pass


def render_cached(render: Callable[[list[int]], torch.Tensor], pool: str, ids: list[int], first: int,
                  count: int, resolution: int, variation: float) -> torch.Tensor:
    """Images of identities ``ids`` (a range starting anywhere), images ``first..first+count-1`` each.

    ``render(block_ids)`` renders uint8 images (identity-major) of the given identities.
    """
    root = cache_dir()
    min_images = _min_images()
    if root is None or len(ids) * count < min_images:
        return render(ids)
    key = _source_hash()
    out = []
    lo_block, hi_block = ids[0] // BLOCK, ids[-1] // BLOCK
    for b in range(lo_block, hi_block + 1):
        block_ids = list(range(b * BLOCK, (b + 1) * BLOCK))
        path = root / f"{pool}-b{b:03d}-i{first}-{count}-r{resolution}-v{variation:g}-{key}.safetensors"
        shape = (BLOCK * count, 3, resolution, resolution)
        imgs = _load(path, shape) if path.exists() else None
        if imgs is None:
            imgs = render(block_ids)
            _save(path, imgs)
        keep = [i - b * BLOCK for i in ids if b * BLOCK <= i < (b + 1) * BLOCK]
        out.append(imgs.view(BLOCK, count, *shape[1:])[keep].reshape(-1, *shape[1:]))
    return torch.cat(out)
