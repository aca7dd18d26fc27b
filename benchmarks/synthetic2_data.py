"""Speed of the ``synthetic2`` generator (one thread) and a grid of sample faces.

Usage: ``python benchmarks/synthetic2_data.py [--resolution 64 32] [--images 2000] [--pools] [--grid PNG]``.
Prints images/s per resolution (wall clock and CPU time: on a busy machine the CPU figure is the one
to compare), optionally the time to build the full default pools (300 private x 40, 300 public x 30,
500 pretraining x 30 images; the on-disk cache is bypassed), and writes a PNG grid: rows are identities,
columns are images of the same identity.
"""
from __future__ import annotations

import argparse
import time

import torch

from midre.data.synthetic2 import generate


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--pools", action="store_true", help="also time the full default pools at the first resolution")
    ap.add_argument("--grid", default=None, help="write a PNG grid of sample faces here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    generate("private", [0], 0, 1, args.resolution[0])         # warm-up (noise bank)
    k = 40
    ids = list(range(max(1, args.images // k)))
    for res in args.resolution:
        _, wall, cpu = timed(lambda: generate("private", ids, 0, k, res))
        n = len(ids) * k
        print(f"{res:>3} px: {n} images in {wall:.1f} s wall ({n / wall:,.0f} images/s), "
              f"{cpu:.1f} s CPU ({n / cpu:,.0f} images/s per CPU-second), 1 thread")
    if args.pools:
        res = args.resolution[0]
        total_w = total_c = 0.0
        for pool, n_ids, k in (("private", 300, 40), ("public", 300, 30), ("pretrain", 500, 30)):
            _, w, c = timed(lambda: [generate(pool, list(range(lo, min(lo + 50, n_ids))), 0, k, res)
                                     for lo in range(0, n_ids, 50)])
            total_w, total_c = total_w + w, total_c + c
            print(f"    pool {pool:>8}: {n_ids} x {k} images at {res} px: {w:.1f} s wall, {c:.1f} s CPU")
        print(f"    all pools: {total_w:.1f} s wall, {total_c:.1f} s CPU")
    if args.grid:
        from torchvision.utils import save_image

        imgs, _ = generate("private", list(range(8)), 0, 10, args.resolution[0])
        save_image(imgs.float() / 255, args.grid, nrow=10, padding=2)
        print(f"grid of 8 identities x 10 images written to {args.grid}")


if __name__ == "__main__":
    main()
