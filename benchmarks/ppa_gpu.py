"""PPA at the paper preset on a 1024-px StyleGAN2 in midre's converted format: time per identity and peak
memory, against the PPA author's estimate (about 14 h on one A100 for the 530 FaceScrub identities).

The generator has the official FFHQ configuration (z/w 512, 8 mapping layers, channel_base 32768,
channel_max 512, 18 ws) with RANDOM weights: it is written with ``save_generator`` and read back with
``load_generator``, the path converted official weights take.  The target is a randomly initialised
ResNet-18 with 530 classes at 224 px.  Timing does not depend on the weights' values.

Measured per phase, one identity batch (``--identities`` identities, ``--repeats`` repeats sharing one
pool, ``--candidates`` x ``--repeats`` candidates optimised per identity, ``--repeats`` kept):
  search  = ``pool`` latents mapped, synthesised, centre-cropped, resized, scored on image + flip
  invert  = ``iterations`` Adam steps for every candidate (``opt_batch`` candidates at a time)
  final   = ``final_views`` augmented target passes over every candidate
Extrapolations (printed; per candidate scaled to 50 iterations and 100 final views; with --tiny they are
for the 64-px generator, not the 1024-px one), all with ONE pool (the search is paid once per identity
batch, the rest per candidate): the MIDRE paper's PPA run (530 identities, 16 candidates -> 8 samples,
i.e. 8 repeats x 2 candidates), the candidate count of the PPA author's cost statement (530 x 50
candidates) and the released FaceScrub config (530 x 200 candidates -> 50 samples).

    python benchmarks/ppa_gpu.py                      # needs CUDA (refuses clearly otherwise)
    python benchmarks/ppa_gpu.py --device cpu --tiny  # a 64-px generator, seconds on a laptop CPU
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

import torch

REFERENCE_HOURS = 14.0   # PPA author's estimate, one A100, FaceScrub (530 identities)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(attack, name: str, dev: torch.device, out: dict) -> None:
    """Wrap attack.<name> so its wall time (synchronised) accumulates in out[name]."""
    fn = getattr(attack, name)

    def wrapper(*a, **k):
        _sync(dev)
        t = time.perf_counter()
        r = fn(*a, **k)
        _sync(dev)
        out[name] = out.get(name, 0.0) + time.perf_counter() - t
        return r

    setattr(attack, name, wrapper)


def _generator(tiny: bool, dev: torch.device):
    from midre.models.stylegan2 import Generator, load_generator, save_generator, tiny_kwargs

    kw = tiny_kwargs(64, z_dim=64, w_dim=64, channels=32, mapping_layers=2) if tiny else {
        "z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 1024, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 8}, "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512}}
    torch.manual_seed(0)
    G = Generator(**kw)
    with torch.no_grad():     # a non-zero w_avg, as trained weights have
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, G.z_dim), skip_w_avg_update=True)[:, 0].mean(0))
    with tempfile.TemporaryDirectory() as d:
        save_generator(f"{d}/generator", G, {"source": {"file": "random-weights", "converted_by": "benchmark"}})
        G2, _ = load_generator(d, device=dev)
    return G2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="64-px generator and a small search (CPU smoke run)")
    ap.add_argument("--identities", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=2, help="candidates per identity and repeat (MIDRE paper: 2 x 8)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats (samples kept per identity), sharing one pool")
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--final-views", type=int, default=100)
    ap.add_argument("--opt-batch", type=int, default=16)
    ap.add_argument("--gen-batch", type=int, default=25)
    ap.add_argument("--classes", type=int, default=530)
    ap.add_argument("--arch", default="resnet18")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("ppa_gpu: no CUDA device here; this benchmark measures PPA on a GPU. Run it on a GPU machine, or "
              "`python benchmarks/ppa_gpu.py --device cpu --tiny` for a small CPU run.", file=sys.stderr)
        return 2
    if args.tiny:
        args.pool, args.iterations, args.final_views, args.identities = min(args.pool, 64), min(args.iterations, 5), \
            min(args.final_views, 4), min(args.identities, 2)
    dev = torch.device(args.device)

    from midre.attacks import build_attack
    from midre.models import create_model
    from midre.priors import Prior

    G = _generator(args.tiny, dev)
    target = create_model(args.arch, num_classes=args.classes, resolution=224).to(dev).eval()
    attack = build_attack("ppa", preset="paper", pool=args.pool, candidates=args.candidates,
                          iterations=args.iterations, final_views=args.final_views, opt_batch=args.opt_batch,
                          gen_batch=args.gen_batch, target_resolution=224)
    phases: dict[str, float] = {}
    for name in ("search", "optimise", "rank"):
        _timed(attack, name, dev, phases)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    rec = attack.run(target, list(range(args.identities)), args.repeats, {"stylegan2": Prior("stylegan2", G)}, seed=0,
                     device=dev)
    total = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    search = phases["search"]
    n_cand = args.identities * args.candidates * args.repeats
    final = phases.get("rank", 0.0)                          # 0 when every candidate is kept (no scoring)
    per_cand = (phases["optimise"] + final) / n_cand
    # the paper setting per candidate: 50 iterations and 100 final views (measured per iteration / view)
    per_cand_paper = (phases["optimise"] / args.iterations * 50 + final / args.final_views * 100) / n_cand
    scale = 2000 / args.pool                                  # search cost per 2000-latent pool

    def hours(candidates: int) -> float:                     # 530 identities, one pool
        return round((search * scale + 530 * candidates * per_cand_paper) / 3600, 2)
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "tiny": args.tiny,
        "generator_px": G.img_resolution, "target": args.arch, "identities": args.identities,
        "candidates_per_identity": args.candidates * args.repeats, "samples_per_identity": args.repeats,
        "pool": args.pool, "iterations": args.iterations,
        "final_views": args.final_views, "opt_batch": args.opt_batch, "images": tuple(rec.images.shape),
        "seconds_total": round(total, 2), "seconds_search": round(search, 2),
        "seconds_invert": round(phases["optimise"], 2), "seconds_final": round(final, 2),
        "seconds_per_identity": round(total / args.identities, 2),
        "seconds_per_candidate_opt_and_final": round(per_cand, 3),
        "peak_memory_gib": round(peak, 2), "peak_memory_kind": "cuda allocated" if dev.type == "cuda" else "max RSS",
        "est_hours_midre_paper_530x16": hours(16), "est_hours_ppa_author_statement_530x50": hours(50),
        "est_hours_ppa_released_config_530x200": hours(200),
        "reference_hours_a100": REFERENCE_HOURS,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
