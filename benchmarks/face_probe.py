"""Where does identity live?  Ridge probes on the inner-face box, outside it, and the whole image.

Usage: ``python benchmarks/face_probe.py [--version 1 2] [--identities 50 300] [--features pixels random]``.
Prints one line per (version, identities, features): private-test top-1 of a ridge probe trained on
the whole image, the inner-face box (eyes to mouth) alone, and everything outside the box.  The design
target of synthetic2 (docs/notebook/benchmark-v2.md): box alone > box masked.
Both versions use 30 training and 10 test images per identity: v1 = ``synthetic`` at 32 px
(images_per_id 40, test_fraction 0.25, data seed 0), v2 = ``synthetic2`` at 64 px (its defaults).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from midre.analysis.probe import region_probe
from midre.data import load_dataset
from midre.data.synthetic2 import INNER_BOX

# v1 has no declared box: its eyes sit at y in [-0.16, -0.02], brows above them, the mouth near y 0.43,
# the eye corners within |x| < 0.45 (midre/data/synthetic.py ranges); the same eyes-to-mouth box:
V1_BOX = (-0.45, -0.32, 0.45, 0.58)


def load(version: int, n: int, resolution: int | None, variation: float = 1.0):
    if version == 1:
        s = load_dataset("synthetic", resolution=resolution or 32, seed=0, num_private=n, num_public=0,
                         images_per_id=40, test_fraction=0.25)
        return s, V1_BOX
    s = load_dataset("synthetic2", resolution=resolution or 64, num_private=n, num_public=0, variation=variation)
    return s, INNER_BOX


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--identities", type=int, nargs="+", default=[50, 300])
    ap.add_argument("--features", nargs="+", default=["pixels"], choices=["pixels", "random"])
    ap.add_argument("--resolution", type=int, default=None, help="default: 32 for v1, 64 for v2")
    ap.add_argument("--variation", type=float, default=1.0, help="synthetic2's nuisance scale (v2 only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for version in args.version:
        for n in args.identities:
            t0 = time.perf_counter()
            s, box = load(version, n, args.resolution, args.variation)
            tr, te = s.private_train, s.private_test
            for feat in args.features:
                r = region_probe(tr.images, tr.targets, te.images, te.targets, box, features=feat)
                row = {"version": version, "identities": n, "variation": args.variation if version == 2 else 1.0, "resolution": s.resolution, "features": feat,
                       "train": len(tr), "test": len(te), "box": list(box),
                       **{k: round(100 * v["acc"], 1) for k, v in r.items()},
                       "alphas": {k: v["alpha"] for k, v in r.items()}}
                rows.append(row)
                verdict = "box > masked" if row["box"] > row["masked"] else "box <= masked"
                print(f"v{version} {s.resolution}px {n:>4} ids {feat:>6}: whole {row['whole']:5.1f} %  box alone "
                      f"{row['box']:5.1f} %  box masked {row['masked']:5.1f} %  (chance {100 / n:.1f} %, "
                      f"{len(tr)} train / {len(te)} test, {time.perf_counter() - t0:.0f} s)  [{verdict}]",
                      flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
