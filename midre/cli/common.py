"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError


def parse_kv(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """['a=1', 'fill=mean', 'ratio=[1, 2]'] -> {'a': 1, 'fill': 'mean', 'ratio': [1, 2]} (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ArgumentError(f"{what} '{item}' is not KEY=VALUE; write e.g. --{what} fill=mean")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=required, default=None if required else "synthetic",
                   help="dataset family (see `midre datasets`)")
    g.add_argument("--root", default=None, help="local root of a real dataset (CelebA, FaceScrub, ...)")
    g.add_argument("--resolution", type=int, default=None, help="image size in pixels (dataset default)")
    g.add_argument("--data-option", action="append", metavar="KEY=VALUE", default=[],
                   help="dataset option, e.g. num_private=100 (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="seed for data generation, splits and training")


def load_splits(args: argparse.Namespace, progress: bool = True):
    from ..data import load_dataset

    opts = parse_kv(args.data_option, "data-option")
    if args.resolution is not None and args.resolution < 8:
        raise ArgumentError(f"--resolution {args.resolution} is too small; use at least 8 pixels")
    return load_dataset(args.dataset, root=args.root, resolution=args.resolution, seed=args.seed, **opts)
