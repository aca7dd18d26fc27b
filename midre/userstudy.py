"""The paper's user study (supplementary B.3): humans judge which of two defenses leaks more.

For every attacked identity a rater sees one private training image and two reconstructions of the
same attack against two defended targets, shown as "Image A" (left) and "Image B" (right), and answers
which reconstruction looks like the private person: A, B, neither or both.  The sides are drawn at
random (from the seed) and recorded in a key the raters never see.

:func:`make_study` turns a run directory of ``midre run`` into::

    OUT/study.html    self-contained page (images inlined as data URIs, works offline from a file);
                      votes live in the browser (localStorage) and are exported as JSON
    OUT/key.json      the blinded key: pair id -> identity, left/right defense, chosen images, seed
    OUT/pairs.csv     one row per pair for a crowd-sourcing service (image URLs = --base-url + file)
    OUT/images/       the PNGs the CSV points to

:func:`tally` reads exported votes (the page's JSON, or a crowd-sourcing results CSV with
pair id / answer / worker columns), maps sides back to defenses and gives the counts of the paper's
Tab. B.11 / B.12, a two-sided sign test (scipy ``binomtest``) over the votes that chose exactly one
defense, and Fleiss' kappa over raters.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .attacks.base import Reconstructions
from .errors import ArgumentError, DataError
from .results import artefact_dir, attack_dirs, private_images
from .rundir import check_out, record_format
from .userstudy_page import PAGE
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text, config_hash, derive_seed

KEY_FORMAT = "midre-userstudy-key"
VOTES_FORMAT = "midre-userstudy-votes"
ANSWERS = ("left", "right", "neither", "both")          # what the page records (side-based, blinded)
QUESTION = "Which reconstructed image shows the same person as the private image?"


# ============================================================================ choosing what to show
def _attacks(art_dir: Path) -> dict[str, dict[str, Path]]:
    out: dict[str, dict[str, Path]] = {}
    for target, attack, adir in attack_dirs(art_dir):
        out.setdefault(attack, {})[target] = adir
    return out


def _choose(run_dir: Path, attack: str | None, defenses: Sequence[str] | None) -> tuple[Path, str, list[str], dict]:
    if not run_dir.is_dir():
        raise ArgumentError(f"run directory '{run_dir}' does not exist; give the --out of a `midre run`")
    art, _note = artefact_dir(run_dir)
    found = _attacks(art)
    if not found:
        raise DataError(f"'{run_dir}' holds no reconstructions (attacks/<target>/<attack>/); run the attacks first")
    if attack is None:
        if len(found) != 1:
            raise ArgumentError(f"the run has several attacks ({', '.join(sorted(found))}); choose one with --attack")
        attack = next(iter(found))
    if attack not in found:
        raise ArgumentError(f"attack '{attack}' is not in the run; choose one of: {', '.join(sorted(found))}")
    targets = found[attack]
    if defenses is None:
        if len(targets) != 2:
            raise ArgumentError(f"attack '{attack}' ran against {len(targets)} targets ({', '.join(sorted(targets))}); "
                                "choose two with --defenses A,B")
        defenses = sorted(targets)
    defenses = list(defenses)
    if len(defenses) != 2 or defenses[0] == defenses[1]:
        raise ArgumentError(f"--defenses needs two different targets, got {','.join(defenses)}")
    for d in defenses:
        if d not in targets:
            raise ArgumentError(f"target '{d}' has no '{attack}' reconstructions; choose from: {', '.join(sorted(targets))}")
    return art, attack, defenses, targets


def _pick(mask: torch.Tensor, gen: torch.Generator) -> int:
    idx = mask.nonzero().flatten()
    return int(idx[torch.randint(len(idx), (1,), generator=gen)].item())


@dataclass
class Pair:
    id: str
    identity: int
    left: str                 # target name shown as Image A
    right: str                # target name shown as Image B
    private_index: int        # index into the private training split
    recon_index: dict         # target name -> row of its Reconstructions


def _pairs(recs: dict[str, Any], private: Any, defenses: list[str], max_identities: int | None,
           seed: int) -> list[Pair]:
    a, b = defenses
    ids = sorted(set(recs[a].identity.tolist()) & set(recs[b].identity.tolist()))
    labels = torch.as_tensor(getattr(private, "targets"))
    ids = [i for i in ids if bool((labels == i).any())]
    if max_identities is not None:
        ids = ids[:max_identities]
    if not ids:
        raise DataError(f"targets '{a}' and '{b}' share no attacked identity with private images; "
                        "check the run's attacks")
    gen = torch.Generator().manual_seed(derive_seed(seed, "userstudy"))
    pairs = []
    for n, i in enumerate(ids):
        rows = {d: _pick(recs[d].identity == i, gen) for d in defenses}   # paper: one random image per identity
        swap = bool(torch.rand(1, generator=gen).item() < 0.5)
        left, right = (b, a) if swap else (a, b)
        pairs.append(Pair(f"p{n:04d}", i, left, right, _pick(labels == i, gen), rows))
    order = torch.randperm(len(pairs), generator=gen).tolist()     # presentation order, also seeded
    return [pairs[k] for k in order]


# ============================================================================ writing the study
def _png(img: torch.Tensor) -> bytes:
    from torchvision.transforms.functional import to_pil_image

    buf = io.BytesIO()
    to_pil_image(img.detach().float().clamp(0, 1).cpu()).save(buf, format="PNG")
    return buf.getvalue()


def make_study(run_dir: str | Path, out: str | Path | None = None, *, attack: str | None = None,
               defenses: Sequence[str] | None = None, max_identities: int | None = None, seed: int = 0,
               base_url: str = "", title: str | None = None) -> Path:
    """Build the study page, key, CSV and images from ``run_dir``; returns the output directory."""

    run_dir = Path(run_dir)
    if max_identities is not None and max_identities < 1:
        raise ArgumentError(f"--max-identities must be at least 1, got {max_identities}")
    art, attack, defenses, targets = _choose(run_dir, attack, defenses)
    out = Path(out) if out is not None else run_dir / "userstudy" / f"{attack}-{defenses[0]}-vs-{defenses[1]}"
    check_out(out, "user study", lambda d: record_format(d / "key.json") == KEY_FORMAT,
              hint=" (an earlier study's --out is rebuilt)")
    recs = {d: Reconstructions.load(targets[d]) for d in defenses}
    private = private_images(art)
    if private is None or getattr(private, "targets", None) is None:
        raise DataError(f"the private images of '{run_dir}' cannot be rebuilt (dataset missing or moved); "
                        "make the dataset root available as recorded in the run's config.yaml")
    pairs = _pairs(recs, private, defenses, max_identities, seed)
    study_id = config_hash({"run": str(run_dir.resolve()), "attack": attack, "defenses": defenses, "seed": seed,
                            "pairs": [(p.id, p.identity, p.left, p.private_index, p.recon_index) for p in pairs]})
    shown, rows = [], []
    for p in pairs:
        imgs = {"private": _png(private[p.private_index][0]),
                "a": _png(recs[p.left].images[p.recon_index[p.left]]),
                "b": _png(recs[p.right].images[p.recon_index[p.right]])}
        files = {}
        for k, data in imgs.items():
            files[k] = f"images/{p.id}-{k}.png"
            atomic_write_bytes(out / files[k], data)
        shown.append({"id": p.id, **{k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in imgs.items()}})
        rows.append({"pair_id": p.id, "study_id": study_id,
                     **{f"image_{k}_url": base_url + f for k, f in files.items()}})
    key = {"format": KEY_FORMAT, "study_id": study_id, "run_dir": str(run_dir.resolve()), "attack": attack,
           "defenses": defenses, "seed": seed, "answers": list(ANSWERS), "question": QUESTION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "pairs": [{"id": p.id, "identity": p.identity, "left": p.left, "right": p.right,
                      "private_index": p.private_index, "recon_index": p.recon_index} for p in pairs]}
    atomic_write_json(out / "key.json", key)
    kept = {f"{p.id}-{k}.png" for p in pairs for k in ("private", "a", "b")}
    for old in (out / "images").glob("*.png"):   # images of an earlier study in the same directory
        if old.name not in kept:
            old.unlink()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "pairs.csv", buf.getvalue())
    page = {"study_id": study_id, "question": QUESTION, "pairs": shown}   # blinded: no target names, no key path
    atomic_write_text(out / "study.html", render_page(page, title or "Face similarity study"))
    return out


def render_page(study: dict, title: str) -> str:
    """The self-contained HTML page (no network: inline CSS, JS and images)."""

    data = json.dumps(study).replace("</", "<\\/")
    head, tail = PAGE.split("__STUDY_JSON__")
    return head.replace("__TITLE__", html.escape(title)) + data + tail


# ============================================================================ tally
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArgumentError(f"votes file '{path}' does not exist; give the JSON exported by the study page") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"'{path}' is not JSON; give the file exported by the study page (or a results CSV)") from None


def _csv_votes(path: Path) -> tuple[dict | None, list[tuple[str, str, str]]]:
    """(rater, pair, answer) rows of a crowd-sourcing results CSV (MTurk: WorkerId, Input.pair_id, Answer.answer;
    an Input.study_id / study_id column, as pairs.csv gives it, is checked against the key)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArgumentError(f"votes file '{path}' does not exist") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    cols = {c.lower(): c for c in (rows[0].keys() if rows else [])}
    pick = lambda *names: next((cols[n] for n in names if n in cols), None)   # noqa: E731
    rc, pc, ac = pick("workerid", "rater"), pick("input.pair_id", "pair_id", "pair"), pick("answer.answer", "answer")
    if not rows or pc is None or ac is None or rc is None:
        raise DataError(f"'{path}' needs a header with pair_id, answer and rater (or WorkerId, Input.pair_id, "
                        "Answer.answer) and at least one row")
    sc = pick("input.study_id", "study_id")
    ids = {r[sc] for r in rows} if sc else set()
    if len(ids) > 1:
        raise DataError(f"'{path}' mixes votes of several studies ({', '.join(sorted(ids))}); tally one study at a time")
    head = {"study_id": ids.pop()} if ids else None
    return head, [(r[rc], r[pc], r[ac]) for r in rows]


def _load_votes(path: Path) -> tuple[dict | None, list[tuple[str, str, str]]]:
    if path.suffix.lower() == ".csv":
        return _csv_votes(path)
    v = _read_json(path)
    if not isinstance(v, dict) or v.get("format") != VOTES_FORMAT or not isinstance(v.get("votes"), list):
        raise DataError(f"'{path}' is not a midre user-study votes file; export it with the page's 'Export votes' button")
    rater = str(v.get("rater") or path.stem)
    try:
        return v, [(rater, str(x["pair"]), str(x["answer"])) for x in v["votes"]]
    except (KeyError, TypeError):
        raise DataError(f"'{path}' has a vote without 'pair' and 'answer'; re-export it from the page") from None


def _load_key(key: str | Path | None) -> dict:
    if key is None:
        raise ArgumentError("no study key: pass --key STUDY_DIR/key.json (written by `midre userstudy make`)")
    p = Path(key)
    if p.is_dir():
        p = p / "key.json"
    if not p.exists():
        raise ArgumentError(f"study key '{p}' does not exist; pass --key STUDY_DIR/key.json")
    k = _read_json(p)
    if not isinstance(k, dict) or k.get("format") != KEY_FORMAT:
        raise DataError(f"'{p}' is not a midre user-study key; pass the key.json of `midre userstudy make`")
    return k


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of an items x categories count table (raters per item may vary, >= 2 each).

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1));  p_j = sum_i n_ij / sum_i n_i;
    kappa = (mean P_i - sum_j p_j^2) / (1 - sum_j p_j^2)  (Fleiss 1971).
    """
    rows = [list(map(int, r)) for r in table if sum(r) >= 2]
    if not rows:
        return float("nan")
    total = sum(sum(r) for r in rows)
    p = [sum(r[j] for r in rows) / total for j in range(len(rows[0]))]
    pbar = sum((sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows) / len(rows)
    pe = sum(x * x for x in p)
    return float("nan") if math.isclose(pe, 1.0) else (pbar - pe) / (1 - pe)


def tally(vote_files: Sequence[str | Path], key: str | Path | None) -> dict[str, Any]:
    """Counts per defense / neither / both, the sign test and Fleiss' kappa of exported votes."""
    from scipy.stats import binomtest

    if not vote_files:
        raise ArgumentError("no votes given; pass the JSON files exported by the study page")
    loaded = [(Path(f), *_load_votes(Path(f))) for f in vote_files]
    k = _load_key(key)
    pairs = {p["id"]: p for p in k["pairs"]}
    A, B = k["defenses"]
    cats = [A, B, "neither", "both"]
    votes: dict[tuple[str, str], str] = {}                # (rater, pair) -> category
    for path, v, rows in loaded:
        if v is not None and v.get("study_id") != k["study_id"]:
            raise DataError(f"'{path}' holds votes of another study ({v.get('study_id')}); pass the key of that study")
        for rater, pid, ans in rows:
            if pid not in pairs:
                raise DataError(f"'{path}' votes on pair '{pid}', which this study does not have; check --key")
            if ans not in ANSWERS:
                raise DataError(f"'{path}': answer '{ans}' for pair '{pid}' is not one of {', '.join(ANSWERS)}")
            if (rater, pid) in votes:
                raise DataError(f"rater '{rater}' voted twice on pair '{pid}' (the same file given twice?); "
                                "keep one vote file per rater")
            votes[(rater, pid)] = pairs[pid][ans] if ans in ("left", "right") else ans
    counts = {c: sum(1 for x in votes.values() if x == c) for c in cats}
    n_one = counts[A] + counts[B]
    table = [[sum(1 for (r, p), x in votes.items() if p == pid and x == c) for c in cats] for pid in pairs]
    p_value = float(binomtest(counts[A], n_one, 0.5).pvalue) if n_one else float("nan")
    return {"study_id": k["study_id"], "attack": k["attack"], "defenses": [A, B], "counts": counts,
            "votes": len(votes), "raters": len({r for r, _ in votes}), "pairs": len(pairs),
            "pairs_rated": sum(1 for row in table if sum(row)),
            "sign_test": {"favour": A, "k": counts[A], "n": n_one, "p_value": p_value,
                          "note": "two-sided binomial test, p=0.5, over votes choosing exactly one defense"},
            "fleiss_kappa": fleiss_kappa(table),
            "kappa_items": sum(1 for row in table if sum(row) >= 2)}


def format_tally(t: dict[str, Any]) -> str:
    """The paper's Tab. B.11 / B.12 layout plus the tests, as Markdown."""
    A, B = t["defenses"]
    c, s = t["counts"], t["sign_test"]
    lines = [f"User study: attack {t['attack']}, {t['votes']} votes by {t['raters']} raters on "
             f"{t['pairs_rated']}/{t['pairs']} pairs", "",
             "| Defense | Num of samples selected by users as more similar to private data |", "|---|---:|",
             f"| {A} | {c[A]} |", f"| {B} | {c[B]} |", f"| Neither | {c['neither']} |", f"| Both | {c['both']} |", "",
             f"Sign test ({A} vs {B}, votes for exactly one): {s['k']}/{s['n']}, two-sided p = {s['p_value']:.4g}",
             f"Fleiss' kappa over {t['kappa_items']} pairs with >= 2 raters: {t['fleiss_kappa']:.3f}",
             "(the defense chosen LESS often leaks less: its reconstructions resemble the private person less)"]
    return "\n".join(lines)
