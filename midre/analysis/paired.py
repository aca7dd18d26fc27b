"""Paired differences between a reference target (NoDef) and every defense, with confidence intervals.

Does a defense lower attack accuracy more than it lowers natural accuracy?  In a midre run all targets of
one seed share their initialisation and batch order, the attacks attack the same identities with the same
repeats, and natural accuracy is measured on the same test images, so the comparison is PAIRED:

* attack:  ``d_att`` = AttAcc(reference) - AttAcc(defense), from the per-identity success rates (top-1 of
  the evaluation model, averaged over the repeats), identity by identity;
* utility: ``d_acc`` = Acc(reference) - Acc(defense), test image by test image;
* the gap ``d_att - d_acc`` (percentage points): > 0 when the defense removes more attack success than
  natural accuracy.

Each defense target is paired with its reference: the target named by its ``reference`` in the config,
else the run's first NoDef target (the same pairing as the trade-off Δ of the results table), so a
defense on another architecture is compared with the NoDef of that architecture.  An explicit
``reference`` pairs every target with that one target instead.

Every figure is the mean over seeds.  The 95 % interval (``*_ci``) is a two-stage percentile bootstrap:
resample the seeds, then within each drawn seed resample the identities and (independently) the test
images, all with replacement; ``d_att``, ``d_acc`` and the gap share the draws.  With few seeds the seed
stage has little to resample, so the t-interval across the per-seed differences is reported beside it
(``*_seed_t_ci``; needs >= 2 seeds) and the per-seed values are listed.

The analysis recomputes every prediction from the saved models and reconstructions and checks that they
reproduce the run's own AttAcc / Acc (within 0.01 points); a mismatch is an error, not a footnote.  A
target whose prediction is random at test time (MID samples its bottleneck in every mode, as the
reference does) has no single Acc to reproduce: its per-image correctness is the mean over
``STOCHASTIC_DRAWS`` seeded draws (the probability of a correct answer), the check is skipped, and the
output lists it under ``stochastic_targets``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks.base import Reconstructions
from ..config import load_config
from ..data import load_dataset
from ..data.base import in_memory
from ..errors import RunDirError
from ..loading import load_model
from ..metrics import eval_logits
from ..plan import RunPlan
from ..results import md_table, t_interval
from ..utils import atomic_write_json, atomic_write_text

CI_LEVEL = 0.95
STOCHASTIC_DRAWS = 8


def seed_dirs(run_dir: Path) -> list[Path]:
    subs = sorted((p for p in run_dir.glob("seed-*") if (p / "run.json").exists()),
                  key=lambda p: int(p.name.split("-", 1)[1]))
    if subs:
        return subs
    if (run_dir / "run.json").exists():
        return [run_dir]
    raise RunDirError(f"'{run_dir}' is not a midre run or study directory (no run.json); run `midre run` into it")


def _test_split(seed_dir: Path) -> Any:
    cfg = load_config(seed_dir / "config.yaml")
    d = cfg.dataset
    data_seed = d.seed if d.seed is not None else cfg.seed
    return load_dataset(d.name, root=d.root, resolution=d.resolution, seed=data_seed, **d.options).private_test


def _correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return (eval_logits(model, images).argmax(1) == labels).numpy().astype(np.float64)


def _target_correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int
                    ) -> tuple[np.ndarray, bool]:
    """(per-image correctness, stochastic?): two seeded passes; when they differ, the mean of
    STOCHASTIC_DRAWS seeded passes (each image's probability of being classified correctly)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first, second = _correct(model, images, labels), _correct(model, images, labels)
        if np.array_equal(first, second):
            return first, False
        rest = [_correct(model, images, labels) for _ in range(STOCHASTIC_DRAWS - 2)]
    return np.mean([first, second, *rest], axis=0), True


def _references(seed_dir: Path, reference: str | None) -> dict[str, str]:
    """target -> its reference target (see the module docstring); NoDef targets are references, not defenses."""

    cfg = load_config(seed_dir / "config.yaml", check=False)
    targets = cfg.expanded_targets()
    if reference is not None:
        if reference not in {t.name for t in targets}:
            raise RunDirError(f"'{seed_dir}' has no target named '{reference}' to compare against; targets are: "
                              f"{', '.join(t.name for t in targets)}")
        return {t.name: reference for t in targets if t.name != reference}
    refs = RunPlan(cfg).defense_references()
    if not refs:
        raise RunDirError(f"'{seed_dir}' has no NoDef target to compare against; pass --reference TARGET")
    return refs


def seed_record(seed_dir: Path, reference: str | None, seed: int = 0) -> dict[str, Any]:
    """Per-test-image correctness of every target, per-identity attack success of every (target, attack)."""

    refs = _references(seed_dir, reference)      # a wrong --reference is refused before any model is loaded
    results = json.loads((seed_dir / "results.json").read_text(encoding="utf-8"))
    rows = results.get("rows", [])
    test = in_memory(_test_split(seed_dir), False).to_tensors()
    eval_model, _ = load_model(seed_dir / "eval" / "model.safetensors")
    acc_correct, att_hits, recorded, stochastic = {}, {}, {}, []
    for r in rows:
        t, a = str(r["target"]), str(r.get("attack") or "")
        if t not in acc_correct:
            model, _ = load_model(seed_dir / "targets" / t / "model.safetensors")
            acc_correct[t], random_at_test = _target_correct(model, test.images, torch.as_tensor(test.targets).long(),
                                                             seed)
            if random_at_test:
                stochastic.append(t)
            else:
                _check(acc_correct[t].mean() * 100.0, r.get("acc"), f"{seed_dir.name}: Acc of {t}")
        if not a:
            continue
        rec = Reconstructions.load(seed_dir / "attacks" / t / a)
        hit = _correct(eval_model, rec.images, rec.identity.long())
        ids = rec.identity.long().numpy()
        uniq = np.unique(ids)
        att_hits[(t, a)] = {int(i): float(hit[ids == i].mean()) for i in uniq}
        _check(hit.mean() * 100.0, r.get("attack_top1"), f"{seed_dir.name}: AttAcc of {a} on {t}")
        recorded[(t, a)] = r
    missing = sorted({r for r in refs.values() if r not in acc_correct})
    if missing:
        raise RunDirError(f"'{seed_dir}' has no results for the reference target(s) {', '.join(missing)}; "
                          "let `midre run` finish it, or pass --reference TARGET")
    return {"acc": acc_correct, "att": att_hits, "rows": recorded, "refs": refs, "stochastic": stochastic,
            "labels": torch.as_tensor(test.targets).long().numpy()}


def _check(mine: float, theirs: Any, what: str) -> None:
    try:
        t = float(theirs)
    except (TypeError, ValueError):
        return
    if math.isfinite(t) and abs(mine - t) > 0.01:
        raise RunDirError(f"{what}: recomputed {mine:.3f} % but the run recorded {t:.3f} %; the run directory's "
                          "models or reconstructions changed after it was evaluated -- rerun `midre run` into it")


def _t_ci(values: Sequence[float]) -> list[float] | None:
    ci = t_interval(values, CI_LEVEL)
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _pair(seeds: list[dict], reference: str, target: str, attack: str, n_boot: int, rng: np.random.Generator
          ) -> dict[str, Any]:
    d_att, d_acc = [], []          # per seed: per-identity and per-image differences (arrays)
    for s in seeds:
        ref, dfn = s["att"][(reference, attack)], s["att"][(target, attack)]
        ids = sorted(set(ref) & set(dfn))
        d_att.append(np.array([ref[i] - dfn[i] for i in ids]) * 100.0)
        d_acc.append((s["acc"][reference] - s["acc"][target]) * 100.0)
    per_att = [float(x.mean()) for x in d_att]
    per_acc = [float(x.mean()) for x in d_acc]
    per_gap = [a - b for a, b in zip(per_att, per_acc)]
    boots = np.empty((n_boot, 3))
    k = len(seeds)
    for b in range(n_boot):
        pick = rng.integers(0, k, size=k)
        att = [d_att[j][rng.integers(0, len(d_att[j]), size=len(d_att[j]))].mean() for j in pick]
        acc = [d_acc[j][rng.integers(0, len(d_acc[j]), size=len(d_acc[j]))].mean() for j in pick]
        boots[b] = (np.mean(att), np.mean(acc), np.mean(att) - np.mean(acc))
    lo, hi = np.percentile(boots, [100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2], axis=0)
    row = seeds[0]["rows"][(target, attack)]
    return {"target": target, "defense": row.get("defense"), "attack": attack, "reference": reference,
            "n_seeds": k, "n_identities": int(np.mean([len(x) for x in d_att])),
            "n_test_images": int(np.mean([len(x) for x in d_acc])),
            "d_att": float(np.mean(per_att)), "d_att_ci": [float(lo[0]), float(hi[0])], "d_att_seed_t_ci": _t_ci(per_att),
            "d_acc": float(np.mean(per_acc)), "d_acc_ci": [float(lo[1]), float(hi[1])], "d_acc_seed_t_ci": _t_ci(per_acc),
            "gap": float(np.mean(per_gap)), "gap_ci": [float(lo[2]), float(hi[2])], "gap_seed_t_ci": _t_ci(per_gap),
            "d_att_per_seed": per_att, "d_acc_per_seed": per_acc}


def seed_records(run_dir: Path, reference: str | None = None, seed: int = 0
                 ) -> tuple[list[dict[str, Any]], list[str], Any]:
    """(per-seed records, seed names, the run's config) of a run or study directory (records computed by
    ``seed_record``), or of a collected summary (results/NAME, midre.analysis.summary), whose records were
    computed the same way when it was collected."""
    import yaml

    from .summary import is_summary, load_records

    if is_summary(run_dir):
        recs, names, text = load_records(run_dir)
        if reference is not None:
            for r in recs:
                if reference not in r["acc"]:
                    raise RunDirError(f"'{run_dir}' has no target named '{reference}' to compare against; targets "
                                      f"are: {', '.join(r['acc'])}")
                r["refs"] = {t: reference for t in r["acc"] if t != reference}
        return recs, names, load_config(yaml.safe_load(text), check=False)
    dirs = [d for d in seed_dirs(run_dir) if (d / "results.json").exists()]   # a study stopped early: its finished seeds
    if not dirs:
        raise RunDirError(f"'{run_dir}' has no finished seed (results.json); let `midre run` finish one first")
    cfg = load_config(dirs[0] / "config.yaml", check=False)
    return [seed_record(d, reference, seed) for d in dirs], [d.name for d in dirs], cfg


def paired_differences(run_dir: str | Path, reference: str | None = None, n_boot: int = 2000, seed: int = 0
                       ) -> list[dict[str, Any]]:
    """Paired NoDef - defense differences of a run or study directory, or of its collected summary (see the
    module docstring)."""
    seeds, names, _ = seed_records(Path(run_dir), reference, seed)
    rng = np.random.default_rng(seed)
    pairs = sorted({key for s in seeds for key in s["att"]}, key=lambda k: (k[1], k[0]))
    out = []
    for target, attack in pairs:
        ref = seeds[0]["refs"].get(target)
        if ref is None or not all(s["refs"].get(target) == ref and (ref, attack) in s["att"]
                                  and (target, attack) in s["att"] for s in seeds):
            continue
        random_at_test = sorted({t for s in seeds for t in s["stochastic"]} & {ref, target})
        out.append({**_pair(seeds, ref, target, attack, n_boot, rng), "seed_dirs": names,
                    "stochastic_targets": random_at_test})
    return out


def _ci(v: Sequence[float] | None) -> str:
    return "--" if v is None else f"[{v[0]:+.1f}, {v[1]:+.1f}]"


HEAD = ["defense target", "attack", "d_att (pp)", "95 % CI", "d_acc (pp)", "95 % CI", "gap d_att - d_acc", "95 % CI",
        "gap: t across seeds", "per seed d_att / d_acc"]


def paired_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]], str]:
    """(head, body, note) of the paired-differences table (markdown / HTML by midre.results)."""
    body = [[str(r["target"]), str(r["attack"]), f"{r['d_att']:+.1f}", _ci(r["d_att_ci"]), f"{r['d_acc']:+.1f}",
             _ci(r["d_acc_ci"]), f"{r['gap']:+.1f}", _ci(r["gap_ci"]), _ci(r["gap_seed_t_ci"]),
             ", ".join(f"{a:+.1f}/{b:+.1f}" for a, b in zip(r["d_att_per_seed"], r["d_acc_per_seed"]))]
            for r in rows]
    n = rows[0] if rows else {}
    note = (f"{_reference_note(rows)}; {n.get('n_seeds', 0)} seed(s), {n.get('n_identities', 0)} "
            f"identities attacked, {n.get('n_test_images', 0)} test images per seed. d_att = AttAcc(reference) - "
            "AttAcc(defense), d_acc = Acc(reference) - Acc(defense), in percentage points, paired per seed; gap > 0: "
            "the defense removes more attack success than natural accuracy. CI: two-stage percentile bootstrap "
            "(seeds, then identities / test images); 't across seeds': t-interval of the per-seed gaps."
            + _stochastic_note(rows))
    return HEAD, body, note


def _stochastic_note(rows: Sequence[dict[str, Any]]) -> str:
    names = sorted({t for r in rows for t in r.get("stochastic_targets") or []})
    if not names:
        return ""
    return (f" Random at test time: {', '.join(names)} (its Acc is the mean over {STOCHASTIC_DRAWS} seeded draws "
            "per test image, so it differs slightly from the one draw the run recorded).")


def _reference_note(rows: Sequence[dict[str, Any]]) -> str:
    by_ref: dict[str, list[str]] = {}
    for r in rows:
        names = by_ref.setdefault(str(r.get("reference", "nodef")), [])
        if r["target"] not in names:
            names.append(str(r["target"]))
    if len(by_ref) <= 1:
        return f"Reference: {next(iter(by_ref), 'nodef')}"
    return "References: " + "; ".join(f"{ref} for {', '.join(ts)}" for ref, ts in by_ref.items())


def paired_markdown(rows: Sequence[dict[str, Any]]) -> str:
    head, body, note = paired_table(rows)
    return md_table(head, body) + "\n\n" + note + "\n"


def write_paired(run_dir: str | Path, reference: str | None = None, n_boot: int = 2000, seed: int = 0) -> Path:
    """Compute and write RUN/analysis/paired.json + paired.md; returns the markdown path."""

    run_dir = Path(run_dir)
    rows = paired_differences(run_dir, reference, n_boot, seed)
    if not rows:
        raise RunDirError(f"'{run_dir}' has no attack run on both a defense target and its reference "
                          f"'{reference or 'NoDef'}'")
    atomic_write_json(run_dir / "analysis" / "paired.json", {"format": "midre-paired", "n_boot": n_boot,
                                                             "seed": seed, "rows": rows})
    md = run_dir / "analysis" / "paired.md"
    atomic_write_text(md, paired_markdown(rows))
    return md
