"""Speed of the embedded ``synthetic`` dataset: 10,000 face images at 32 px (target: under 30 s on 2 cores).

Usage: ``python benchmarks/synthetic_data.py [--threads 2] [--images 10000] [--resolution 32]``.
Prints wall time for sampling + rendering + uint8 conversion, and the breakdown.
"""
from __future__ import annotations

import argparse
import time

import torch

from midre.data.synthetic import render_faces, sample_identities, sample_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k = max(1, args.images // args.identities)
    n = args.identities * k
    print(f"torch {torch.__version__}, {args.threads} threads, {n} images ({args.identities} identities x {k})")
    for res in args.resolution:
        t0 = time.perf_counter()
        ids = sample_identities(0, "private", args.identities)
        params, _ = sample_images(ids, k, 0, "private")
        t1 = time.perf_counter()
        imgs = render_faces(params, res).mul_(255).round_().to(torch.uint8)
        t2 = time.perf_counter()
        total = t2 - t0
        verdict = "PASS" if (res != 32 or total < 30) else "FAIL"
        print(f"{res:>3} px: {total:6.2f} s total ({t1 - t0:.2f} s sampling, {t2 - t1:.2f} s rendering), "
              f"{n / total:,.0f} images/s, {imgs.numel() / 2**20:.0f} MiB uint8"
              + (f"  [target < 30 s at 32 px: {verdict}]" if res == 32 else ""))


if __name__ == "__main__":
    main()
