"""Overhead of one attack step (GMI and PLG-MI) relative to the bare forward+backward of generator + target.

Both are measured in the same run, on the same batch and device:

* bare:    x = G(z); loss = CE(T(x), y); loss.backward()                       (the irreducible work)
* attack:  the attack's own ``invert`` loop (midre.attacks), timed per iteration, with everything it
           does per step: GMI adds the discriminator prior, SGD step and clamp; PLG-MI adds two
           augmented views (two target passes) and the Adam step.

Target: attack step <= 1.3x the bare step.  Each attack is also compared with the bare work its
method inherently needs (GMI: + the discriminator prior; PLG-MI: a second target view), which
isolates the framework overhead (bookkeeping, optimiser step, clamp, augmentation).

    python benchmarks/attack_step.py [--device cpu|cuda] [--resolution 32|64] [--batch 60] [--arch smallcnn]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(dev)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--width", type=int, default=32, help="GAN width (64 = paper scale)")
    ap.add_argument("--arch", default="smallcnn", help="target architecture")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--iters", type=int, default=10, help="attack iterations per timed sample")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from midre.attacks import build_attack
    from midre.models import create_model
    from midre.models.generators import CondGenerator, DCGANDiscriminator, DCGANGenerator, ProjectionDiscriminator
    from midre.priors import Prior
    from midre.utils import resolve_device

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    r, b, K = args.resolution, args.batch, args.classes
    T = create_model(args.arch, num_classes=K, resolution=r).to(dev).eval()
    for p in T.parameters():
        p.requires_grad_(False)
    G = DCGANGenerator(100, r, 3, args.width).to(dev).eval()
    D = DCGANDiscriminator(r, 3, args.width, 1).to(dev).eval()
    CG = CondGenerator(K, 128, r, 3, args.width).to(dev).eval()
    PD = ProjectionDiscriminator(K, r, 3, args.width).to(dev).eval()
    for m in (G, D, CG, PD):
        for p in m.parameters():
            p.requires_grad_(False)
    ids = torch.arange(b, device=dev) % K
    gen = torch.Generator()
    gen.manual_seed(0)
    rows = []

    # ---------------------------------------------------------------- GMI
    z0 = torch.randn(b, 100, device=dev).clamp(-1, 1)

    def bare_gmi():
        z = z0.clone().requires_grad_(True)
        F.cross_entropy(T(G(z)), ids).backward()

    gmi = build_attack("gmi", iterations=args.iters, batch_size=b)
    prior = {"gan": Prior("gan", G, D)}

    def step_gmi():
        gmi.invert(T, ids, prior, {"z": z0}, gen, None, lambda v: None, lambda: None)

    t_bare = _time(bare_gmi, dev, args.reps * args.iters)
    t_att = _time(step_gmi, dev, args.reps) / args.iters
    rows.append(("GMI", t_bare, t_att, t_att / t_bare))

    def bare_gmi_d():   # the method's own work: G + its discriminator prior + T
        z = z0.clone().requires_grad_(True)
        x = G(z)
        (-D(x).mean() + F.cross_entropy(T(x), ids)).backward()

    t_bare_d = _time(bare_gmi_d, dev, args.reps * args.iters)
    rows.append(("GMI vs G + D + T", t_bare_d, t_att, t_att / t_bare_d))

    # ---------------------------------------------------------------- PLG-MI
    zc = torch.randn(b, 128, device=dev)

    def bare_plg():
        z = zc.clone().requires_grad_(True)
        F.cross_entropy(T(CG(z, ids)), ids).backward()

    plg = build_attack("plgmi", iterations=args.iters, batch_size=b)
    cprior = {"cgan": Prior("cgan", CG, PD)}

    def step_plg():
        plg.invert(T, ids, cprior, {"z": zc}, gen, None, lambda v: None, lambda: None)

    t_bare = _time(bare_plg, dev, args.reps * args.iters)
    t_att = _time(step_plg, dev, args.reps) / args.iters
    rows.append(("PLG-MI", t_bare, t_att, t_att / t_bare))

    # bare with two target views (the method's own work: G once, T twice)
    def bare_plg2():
        z = zc.clone().requires_grad_(True)
        x = CG(z, ids)
        (F.cross_entropy(T(x), ids) + F.cross_entropy(T(x.flip(-1)), ids)).backward()

    t_bare2 = _time(bare_plg2, dev, args.reps * args.iters)
    rows.append(("PLG-MI vs G + 2 views", t_bare2, t_att, t_att / t_bare2))

    print(f"device {dev} | {args.arch} target, {K} classes | {r} px | batch {b} | GAN width {args.width}")
    print(f"{'attack':<24}{'bare fwd+bwd (ms)':>20}{'attack step (ms)':>20}{'ratio':>8}  target <= 1.3x")
    for name, tb, ta, ratio in rows:
        verdict = "PASS" if ratio <= 1.3 else "FAIL"
        print(f"{name:<24}{tb * 1e3:>20.2f}{ta * 1e3:>20.2f}{ratio:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
