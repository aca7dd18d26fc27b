"""The pixel limit on image files: a guard against decompression bombs and stray giant scans.

An image file whose header declares more pixels than the limit (a PNG that claims 60,000 x 60,000 pixels
inflates to gigabytes) is never decoded.  Folder-based data sets (image folders, FaceScrub, VGGFace2,
Stanford Dogs, the public sets) read every header when they are scanned and *skip* such a file with one
warning line naming it; when skipping would leave a class folder (or a public set) empty, the load is
refused in one line instead.  A file that reaches the decoder anyway (CelebA, whose file list comes from
its identity file) is refused in one line naming it.

The limit is Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels, about 9,459 x 9,459, by default);
the environment variable ``MIDRE_MAX_IMAGE_PIXELS`` sets another one (and raises Pillow's own to match).
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import ArgumentError

ENV = "MIDRE_MAX_IMAGE_PIXELS"
PILLOW_DEFAULT = 89_478_485
_warned: set[str] = set()   # files already named in a warning line (a data set is often loaded twice)


def pixel_limit() -> int | None:
    """The largest number of pixels an image may have (None: no limit, as Pillow's ``MAX_IMAGE_PIXELS = None``)."""
    from PIL import Image

    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else None
    try:
        limit = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ArgumentError(f"{ENV}={raw!r} is not a positive whole number of pixels; set e.g. {ENV}=200000000 "
                            f"or unset it for Pillow's limit ({PILLOW_DEFAULT:,} pixels)")
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit   # Pillow would refuse what the user allowed
    return limit


def limit_text(limit: int) -> str:
    return f"the pixel limit of {limit:,} pixels ({ENV})"


def oversize(path: str | os.PathLike, limit: int | None) -> str | None:
    """``'W x H px'`` when the file's header declares more than ``limit`` pixels, else None (also for a file
    Pillow cannot read: the decoder names that one later).  Reads the header only."""
    from PIL import Image

    if limit is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # DecompressionBombWarning and other header noise
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Image.DecompressionBombError as e:   # over twice Pillow's limit: it names only the pixel count
            m = re.search(r"\((\d+) pixels\)", str(e))
            return f"{int(m.group(1)):,} px" if m else "over twice Pillow's limit"
        except Exception:  # noqa: BLE001 - corrupt or foreign files are the decoder's to report, by name
            return None
    return f"{w:,} x {h:,} px" if w * h > limit else None


def split_oversized(files: Sequence[Path], limit: int | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(files within the limit, [(file over it, its size)])``, in the given order."""
    kept: list[Path] = []
    dropped: list[tuple[Path, str]] = []
    for f in files:
        size = oversize(f, limit)
        if size is None:
            kept.append(f)
        else:
            dropped.append((f, size))
    return kept, dropped


def warn_skipped(dropped: Sequence[tuple[Path, str]], limit: int | None) -> None:
    """One warning line on stderr naming the (first) skipped file; files named before are not repeated."""
    new = [(f, s) for f, s in dropped if str(f) not in _warned]
    if not new or limit is None:
        return
    _warned.update(str(f) for f, _ in new)
    first, size = new[0]
    more = f" and {len(new) - 1} more image(s)" if len(new) > 1 else ""
    sys.stderr.write(f"midre: warning: skipped '{first}' ({size}){more}: over {limit_text(limit)}; shrink or "
                     f"remove the file, or raise the limit\n")
