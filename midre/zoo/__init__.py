"""The benchmark zoo: the target-independent pieces of a benchmark, trained once and shipped.

What does not depend on a target -- the backbones pretrained on the pretraining pool, the evaluation
model, the public GAN prior -- is trained by ``midre zoo build`` with a fixed seed and config and
shipped inside the package (``midre/zoo/weights/<entry>/``) with ``midre/zoo/manifest.json``::

    {"format": "midre-zoo", "entries": {"<entry>": {
        "kind": "backbone" | "eval" | "prior",        # the pipeline stage it stands in for
        "stage": "backbones/<name>" | "eval" | "priors/gan",
        "key": "<the pipeline's stage key>",           # hash of everything the stage depends on
        "data_fingerprint": "<hash of the images it trained on>",
        "files": {"<path relative to the stage dir>": "<sha256>", ...},
        "config": "<the config that made it>", "config_yaml": "...", "figures": {...}, "built": "..."}}}

A run uses an entry when its own stage key AND the fingerprint of its data equal the entry's (its config
matches the one that made the entry): the files are verified and copied into the run directory.
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
from typing import Any, Optional

from ..errors import MidreError
from ..utils import atomic_path, atomic_write_json, sha256_file

PACKAGE_ZOO = Path(__file__).resolve().parent
FORMAT = "midre-zoo"


class ZooError(MidreError, ValueError):
    """A zoo file is missing or fails its sha256 check, or the manifest is unreadable."""


def zoo_dir(root: Optional[str | os.PathLike] = None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("MIDRE_ZOO_DIR")
    return Path(env) if env else PACKAGE_ZOO


def load_manifest(root: Optional[str | os.PathLike] = None) -> dict[str, Any]:
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


def entry_dir(name: str, root: Optional[str | os.PathLike] = None) -> Path:
    return zoo_dir(root) / "weights" / name


def verify_entry(name: str, entry: dict[str, Any], root: Optional[str | os.PathLike] = None) -> None:
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


def check(root: Optional[str | os.PathLike] = None) -> list[str]:
    """Verify every entry; returns the names checked, raises ZooError at the first bad file."""
    entries = load_manifest(root)["entries"]
    for name, entry in entries.items():
        verify_entry(name, entry, root)
    return list(entries)


def find(stage: str, key: str, fingerprint: str, root: Optional[str | os.PathLike] = None
         ) -> Optional[tuple[str, dict[str, Any]]]:
    """The entry made by the same config for ``stage`` (same stage key and data), verified; else None."""
    for name, entry in load_manifest(root)["entries"].items():
        if entry.get("stage") == stage and entry.get("key") == key and entry.get("data_fingerprint") == fingerprint:
            verify_entry(name, entry, root)
            return name, entry
    return None


def install(name: str, entry: dict[str, Any], dest: Path, root: Optional[str | os.PathLike] = None) -> None:
    """Copy an entry's files into a run's stage directory (atomically, file by file)."""
    base = entry_dir(name, root)
    for rel in entry["files"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(base / rel, tmp)


def add_entry(name: str, *, kind: str, stage: str, key: str, fingerprint: str, src: Path, files: list[str],
              config: str, config_yaml: str, figures: dict[str, Any], built_on: Optional[str] = None,
              root: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Copy built files into the zoo and record them (sha256, config, figures) in the manifest."""
    dest = entry_dir(name, root)
    if dest.exists():
        shutil.rmtree(dest)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    entry = {"kind": kind, "stage": stage, "key": key, "data_fingerprint": fingerprint,
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
