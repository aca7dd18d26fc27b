"""The benchmark zoo: the target-independent pieces of a benchmark, trained once and shipped.

What does not depend on a target -- the backbones pretrained on the pretraining pool, the evaluation
model, the public GAN prior -- is trained by ``midre zoo build`` with a fixed seed and config and
shipped inside the package (``midre/zoo/weights/<entry>/``) with ``midre/zoo/manifest.json``::

    {"format": "midre-zoo", "entries": {"<entry>": {
        "kind": "backbone" | "eval" | "prior",        # the pipeline stage it stands in for
        "stage": "backbones/<name>" | "eval" | "priors/gan",
        "key": "<the pipeline's stage key>",           # hash of everything the stage depends on
        "data_fingerprint": "<hash of the images it trained on>",
        "data_summary": {"n", "shape", "labels", "mean", "std", "grid"},   # midre.priors.data_summary
        "files": {"<path relative to the stage dir>": "<sha256>", ...},
        "config": "<the config that made it>", "config_yaml": "...", "figures": {...}, "built": "..."}}}

A run uses an entry when its own stage key equals the entry's (its config matches the one that made the
entry) AND its data are the entry's: the same fingerprint, or, when the images were rendered on another
machine and a few pixels differ by float rounding, the same ``data_summary`` within 1e-5
(``summaries_match``).  The files are verified and copied into the run directory.
Otherwise the run trains the piece itself, into its run directory; nothing is ever downloaded.  A file
whose sha256 differs from the manifest is refused (:class:`ZooError`, one line, exit 2).

``MIDRE_ZOO_DIR`` points the zoo elsewhere (a private build, tests).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import MidreError
from ..utils import atomic_path, atomic_write_json, sha256_file

PACKAGE_ZOO = Path(__file__).resolve().parent
FORMAT = "midre-zoo"


class ZooError(MidreError, ValueError):
    """A zoo file is missing or fails its sha256 check, or the manifest is unreadable."""


def zoo_dir(root: str | os.PathLike | None = None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("MIDRE_ZOO_DIR")
    return Path(env) if env else PACKAGE_ZOO


def load_manifest(root: str | os.PathLike | None = None) -> dict[str, Any]:
    p = zoo_dir(root) / "manifest.json"
    if not p.exists():
        return {"format": FORMAT, "entries": {}}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ZooError(f"zoo manifest '{p}' is unreadable; restore it (reinstall midre) or rebuild with "
                       "`midre zoo build`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise ZooError(f"'{p}' is not a midre zoo manifest; restore it or rebuild with `midre zoo build`")
    return data


def entry_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    return zoo_dir(root) / "weights" / name


def verify_entry(name: str, entry: dict[str, Any], root: str | os.PathLike | None = None) -> None:
    """Raise ZooError (one line) when a file of the entry is missing or its sha256 differs."""
    base = entry_dir(name, root)
    for rel, digest in entry.get("files", {}).items():
        p = base / rel
        if not p.is_file():
            raise ZooError(f"zoo entry '{name}': file '{p}' is missing; reinstall midre or rebuild it with "
                           f"`midre zoo build {name}`")
        if sha256_file(p) != digest:
            raise ZooError(f"zoo entry '{name}': '{p}' fails its sha256 check (modified or corrupt); refusing it -- "
                           f"reinstall midre or rebuild it with `midre zoo build {name}`")


def check(root: str | os.PathLike | None = None) -> list[str]:
    """Verify every entry; returns the names checked, raises ZooError at the first bad file."""
    entries = load_manifest(root)["entries"]
    for name, entry in entries.items():
        verify_entry(name, entry, root)
    return list(entries)


SUMMARY_TOL = 1e-5      # data summaries (fractions of the pixel range) equal within float rounding


def summaries_match(a: dict[str, Any] | None, b: dict[str, Any] | None, tol: float = SUMMARY_TOL) -> bool:
    """Two :func:`midre.priors.data_summary` records describe the same images up to float rounding.

    Count, shape and labels must be equal; the means, stds and the 8 x 8 mean image within ``tol``.  One
    pixel off by one level moves a grid cell of 1,500 images of 32 px by about 1.6e-7 (of 100 images by
    2.5e-6: the tolerance is sized for benchmark-sized sets); rendering the quickstart's sets with torch's
    generic CPU kernels moved the summaries by at most 2e-7; one image of its 13,500-image pretraining pool
    replaced by another of the same identity moved them by 4e-5 to 5e-5 (not matched)."""
    if not a or not b:
        return False
    if (a.get("n"), a.get("shape"), a.get("labels")) != (b.get("n"), b.get("shape"), b.get("labels")):
        return False
    for k in ("mean", "std", "grid"):
        va, vb = a.get(k) or [], b.get(k) or []
        if len(va) != len(vb) or not va or max(abs(float(x) - float(y)) for x, y in zip(va, vb)) > tol:
            return False
    return True


def find(stage: str, key: str, fingerprint: str, root: str | os.PathLike | None = None,
         summary: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]] | None:
    """The entry made by the same config for ``stage`` (same stage key and data), verified; else None.

    Same data: the exact fingerprint, or else (``summary`` given) the entry's data summary equal within float
    rounding -- the same images rendered on another machine (:func:`summaries_match`)."""
    same_key = _entries_for(stage, key, root)
    for name, entry in sorted(same_key, key=lambda ne: ne[1].get("data_fingerprint") != fingerprint):
        if entry.get("data_fingerprint") == fingerprint or summaries_match(entry.get("data_summary"), summary):
            verify_entry(name, entry, root)
            return name, entry
    return None


def _entries_for(stage: str, key: str, root: str | os.PathLike | None) -> list[tuple[str, dict[str, Any]]]:
    return [(n, e) for n, e in load_manifest(root)["entries"].items() if e.get("stage") == stage and e.get("key") == key]


def same_config(stage: str, key: str, root: str | os.PathLike | None = None) -> list[str]:
    """The entries made by the same config for ``stage`` (same stage key), whatever data they were built on."""
    return [n for n, _e in _entries_for(stage, key, root)]


def install(name: str, entry: dict[str, Any], dest: Path, root: str | os.PathLike | None = None,
            folder: str | None = None) -> None:
    """Copy an entry's files into a run's stage directory (atomically, file by file).

    ``folder`` names, in ``dest``, the one top folder of a prior entry (a prior's cache directory is named
    after the fingerprint of the data it was trained on, which differs across machines by float rounding)."""
    base = entry_dir(name, root)
    built = {rel.split("/", 1)[0] for rel in entry["files"] if "/" in rel}
    if folder is not None and len(built) != 1:
        raise ZooError(f"zoo entry '{name}' should hold one prior folder, found {len(built)}; rebuild it with "
                       "`midre zoo build`")
    for rel in entry["files"]:
        head, _, tail = rel.partition("/")
        target = dest / (f"{folder or head}/{tail}" if tail else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(base / rel, tmp)


def add_entry(name: str, *, kind: str, stage: str, key: str, fingerprint: str, src: Path, files: list[str],
              config: str, config_yaml: str, figures: dict[str, Any], built_on: str | None = None,
              root: str | os.PathLike | None = None, summary: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Copy built files into the zoo and record them (sha256, config, figures) in the manifest."""
    dest = entry_dir(name, root)
    if dest.exists():
        shutil.rmtree(dest)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    entry = {"kind": kind, "stage": stage, "key": key, "data_fingerprint": fingerprint, "data_summary": summary,
             "files": {rel: sha256_file(dest / rel) for rel in files},
             "bytes": sum((dest / rel).stat().st_size for rel in files), "config": config,
             "config_yaml": config_yaml, "figures": figures,
             "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if built_on:
        entry["built_on"] = built_on
    manifest = load_manifest(root)
    manifest["entries"][name] = entry
    manifest["entries"] = dict(sorted(manifest["entries"].items()))
    atomic_write_json(zoo_dir(root) / "manifest.json", manifest)
    return entry
