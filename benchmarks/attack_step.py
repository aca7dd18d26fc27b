"""Overhead of one attack step against the bare forward + backward of the networks the method needs.

For each white-box attack, in one run, on the same batch and device:

* bare:    the method's irreducible work, written out: the latent -> the networks the method itself
           needs -> its loss -> backward to the latent (no optimiser, no bookkeeping);
* attack:  midre's own ``invert`` loop (midre.attacks) timed over ``--iters`` iterations, per step.

==============  =================================================================================
attack          bare work (forward + backward)
==============  =================================================================================
GMI             G + D (WGAN critic) + T
KedMI           reparameterised z -> G + D (K+1 outputs) + T
LOMMA+GMI       G + D + T (logits and penultimate features) + the N augmented models
LOMMA+KedMI     reparameterised z -> G + D (K+1) + T (logits, features) + the N augmented models
PLG-MI          G + T on 2 views (the image and its flip); the cost of the two random augmentations
                (crop/rotate/flip resampling + jitter, forward + backward) is measured and shown
                separately, and a second ratio includes it in the bare work
BREP-MI         (label-only, no backward) G + T forward on the sphere points + the candidate
==============  =================================================================================

Target: attack step <= 1.3x the bare work.  Bare and attack samples alternate (so a change in the
machine's load hits both) and the median per-step time is reported.

    python benchmarks/attack_step.py [--device cpu|cuda] [--resolution 32] [--batch 60] [--arch smallcnn]
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


def _clock(fn, dev) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


def _pair(bare, attack, iters: int, reps: int, dev) -> tuple[float, float]:
    """Median per-step seconds of (bare, attack), samples interleaved, after one warm-up of each."""
    bare()
    attack()
    tb, ta = [], []
    for _ in range(reps):
        tb.append(_clock(lambda: [bare() for _ in range(iters)], dev) / iters)
        ta.append(_clock(attack, dev) / iters)
    return statistics.median(tb), statistics.median(ta)


def _frozen(m, dev):
    m = m.to(dev).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _setup(args):
    from midre.models import create_model
    from midre.models.generators import CondGenerator, DCGANDiscriminator, DCGANGenerator, ProjectionDiscriminator
    from midre.priors import Prior
    from midre.utils import resolve_device

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    r, K = args.resolution, args.classes
    n = dict(T=create_model(args.arch, num_classes=K, resolution=r), G=DCGANGenerator(100, r, 3, args.width),
             D=DCGANDiscriminator(r, 3, args.width, 1), Dk=DCGANDiscriminator(r, 3, args.width, K + 1),
             CG=CondGenerator(K, 128, r, 3, args.width), PD=ProjectionDiscriminator(K, r, 3, args.width))
    n = {k: _frozen(v, dev) for k, v in n.items()}
    n["aug"] = [_frozen(create_model(args.aug_arch, num_classes=K, resolution=r), dev) for _ in range(args.n_aug)]
    with torch.no_grad():
        p_reg = n["T"].features(torch.rand(64, 3, r, r, device=dev)).mean(0)
    n["priors"] = {"gan": Prior("gan", n["G"], n["D"]), "kedmi": Prior("kedmi", n["G"], n["Dk"]),
                   "cgan": Prior("cgan", n["CG"], n["PD"]), "lomma": Prior("lomma", aug_models=n["aug"], p_reg=p_reg)}
    n["p_reg"], n["dev"] = p_reg, dev
    n["ids"] = torch.arange(args.batch, device=dev) % K
    return n


def _bare_losses(n):
    """The bare work per method: latent -> networks -> loss (what backward differentiates)."""
    T, D, Dk, ids = n["T"], n["D"], n["Dk"], n["ids"]

    def kedmi_prior(x):
        lse = Dk.class_logits(x).logsumexp(1)
        return (F.softplus(lse) - lse).mean()

    def lomma_iden(x):
        logits, f = T.forward_features(x)
        ls = [-logits.gather(1, ids[:, None]).mean()] + [-m(x).gather(1, ids[:, None]).mean() for m in n["aug"]]
        return sum(ls) / len(ls) + (f - n["p_reg"]).pow(2).mean()

    return {
        "gmi": lambda x: -D(x).mean() + 100 * F.cross_entropy(T(x), ids),
        "kedmi": lambda x: kedmi_prior(x) + 100 * F.cross_entropy(T(x), ids),
        "lomma_gmi": lambda x: -D(x).mean() + 100 * lomma_iden(x),
        "lomma_kedmi": lambda x: kedmi_prior(x) + 100 * lomma_iden(x),
    }


def _rows(args, n) -> list[tuple[str, str, float, float]]:
    from midre.attacks import build_attack
    from midre.attacks.plgmi import random_views
    from midre.losses import max_margin_loss

    dev, b, ids, G = n["dev"], args.batch, n["ids"], n["G"]
    gen = torch.Generator().manual_seed(0)
    noop = (lambda v: None, lambda: None)
    rows = []
    z0 = torch.randn(b, 100, device=dev)
    for name, loss in _bare_losses(n).items():
        a = build_attack(name, iterations=args.iters, batch_size=b)
        dist = name.endswith("kedmi")
        state = a.init_latents(n["T"], ids, n["priors"], gen)

        def bare(loss=loss, dist=dist):
            if dist:
                mu, lv = torch.zeros_like(z0, requires_grad=True), torch.ones_like(z0, requires_grad=True)
                z = mu + torch.randn_like(z0) * torch.exp(0.5 * lv)
            else:
                z = z0.clone().requires_grad_(True)
            loss(G(z)).backward()

        def attack(a=a, state=state):
            a.invert(n["T"], ids, n["priors"], state, gen, None, *noop)

        nets = {"gmi": "G + D + T", "kedmi": "G + D(K+1) + T"}.get(name, "G + D + T + ") + (
            f"{args.n_aug} aug" if name.startswith("lomma") else "")
        rows.append((name, nets, *_pair(bare, attack, args.iters, args.reps, dev)))

    # PLG-MI: G + T on two views; the augmentation measured on its own
    zc, CG, T = torch.randn(b, 128, device=dev), n["CG"], n["T"]
    plg = build_attack("plgmi", iterations=args.iters, batch_size=b)

    def bare_plg():
        x = CG(zc.clone().requires_grad_(True), ids)
        (max_margin_loss(T(x), ids).mean() + max_margin_loss(T(x.flip(-1)), ids).mean()).backward()

    def attack_plg():
        plg.invert(T, ids, n["priors"], {"z": zc}, gen, None, *noop)

    xa = torch.rand(b, 3, args.resolution, args.resolution, device=dev)

    def aug_only():
        x = xa.clone().requires_grad_(True)
        (random_views(x, gen).sum() + random_views(x, gen).sum()).backward()

    tb, ta = _pair(bare_plg, attack_plg, args.iters, args.reps, dev)
    t_aug, _ = _pair(aug_only, lambda: None, args.iters, args.reps, dev)
    rows.append(("plgmi", "G + 2 x T", tb, ta))
    rows.append(("plgmi", f"G + 2 x T + 2 augmentations ({t_aug * 1e3:.1f} ms)", tb + t_aug, ta))

    # BREP-MI: label-only, forward only
    br = build_attack("brepmi", iterations=args.iters, max_iters_at_radius=10 ** 6, batch_size=b)
    P = br.params["sphere_points"]
    zb = torch.rand(b, 100, device=dev) - 0.5

    def bare_brep():
        with torch.no_grad():
            T(G(torch.cat([zb.repeat_interleave(P, 0), zb]))).argmax(1)

    from midre.attacks.base import QueryOracle

    oracle = QueryOracle(T, "labels")             # what BREP-MI receives in a run (clamp, chunks, count)

    def attack_brep():
        br.extra_meta = {}
        br.invert(oracle, ids, n["priors"], {"z": zb, "found": torch.ones(b, dtype=torch.bool, device=dev)},
                  gen, None, *noop)

    rows.append(("brepmi", f"G + T forward on {P}+1 points", *_pair(bare_brep, attack_brep, args.iters, args.reps,
                                                                   dev)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--width", type=int, default=32, help="GAN width (64 = paper scale)")
    ap.add_argument("--arch", default="smallcnn", help="target architecture")
    ap.add_argument("--aug-arch", default="smallcnn", help="LOMMA's augmented models (EfficientNet-B0..B2 in the paper)")
    ap.add_argument("--n-aug", type=int, default=3)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--iters", type=int, default=5, help="attack iterations per timed sample")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n = _setup(args)
    rows = _rows(args, n)
    print(f"device {n['dev']} | torch threads {torch.get_num_threads()} | {args.arch} target, {args.classes} classes"
          f" | {args.resolution} px | batch {args.batch} | GAN width {args.width} | LOMMA {args.n_aug} x {args.aug_arch}")
    print(f"{'attack':<13}{'bare work':<46}{'bare (ms)':>10}{'step (ms)':>11}{'ratio':>7}  target <= 1.3x")
    for name, nets, tb, ta in rows:
        ratio = ta / tb
        print(f"{name:<13}{nets:<46}{tb * 1e3:>10.2f}{ta * 1e3:>11.2f}{ratio:>7.2f}  {'PASS' if ratio <= 1.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
