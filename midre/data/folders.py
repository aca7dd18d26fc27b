"""Real data sets read from a local root, in their native layouts (nothing is ever downloaded).

Private families (registered in :data:`DATASETS`)::

    celeba         ROOT/img_align_celeba/*.jpg + ROOT/identity_CelebA.txt  (64 px, centre crop 108)
    facescrub      ROOT/actors/faces/<name>/*.jpg and/or ROOT/actresses/faces/<name>/*.jpg  (224 px)
    vggface2       ROOT/<train|test>/<id>/*.jpg  (224 px)
    stanford_dogs  ROOT/Images/<wnid>-<breed>/*.jpg  (224 px)
    imagefolder    ROOT/<class>/<images>  (64 px)

Public-only sets (registered in :data:`PUBLIC_SETS`, loaded with :func:`load_public`)::

    ffhq    ROOT/**/<images>  (recursive: 00000/00000.png or flat)
    afhq    ROOT/<train|val>/<cat|dog|wild>/<images>  (option animal="dog", split="train")
    images  ROOT/**/<images>  (any folder of images)

Every private family accepts ``public="ffhq:/path/to/ffhq"`` (or a dict ``{"name": "afhq", "root": ...,
"animal": "dog"}``) to take its public set from another source, and ``public_images=N`` to keep a
seeded random subset of N public images.

Images are decoded lazily with PIL (:class:`FileImageSet`), converted to RGB, cropped / resized to
the resolution and returned as float tensors in [0, 1]; call ``to_tensors()`` to cache a set in memory.
Files whose extension is not an image extension (``IMAGE_EXTENSIONS``) and hidden files are skipped,
so stray ``.txt`` / ``.DS_Store`` files do no harm.  Every problem a user can cause (missing root, wrong
layout, missing or corrupt file, empty identity folder, too few identities, a bad split file) raises a
one-line :class:`~midre.errors.DataError` naming the file or folder and the expected layout.

Private train / test splits are per identity (stratified): ``round(n * test_fraction)`` images of each
identity (at least one, never all) go to the test split, chosen with a generator seeded from the split
seed, so the same seed always gives the same split.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArgumentError, DataError
from ..registry import Registry
from ..utils import derive_seed
from .base import DATASETS, ImageSet, MISplits
from .digits import stratified_split
from .pixels import limit_text, pixel_limit, split_oversized, warn_skipped

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})

CELEBA_LAYOUT = "ROOT/img_align_celeba/*.jpg and ROOT/identity_CelebA.txt"
FACESCRUB_LAYOUT = "ROOT/actors/faces/<name>/*.jpg and/or ROOT/actresses/faces/<name>/*.jpg"
VGGFACE2_LAYOUT = "ROOT/<train|test>/<identity>/*.jpg"
DOGS_LAYOUT = "ROOT/Images/<wnid>-<breed>/*.jpg"
IMAGEFOLDER_LAYOUT = "ROOT/<class>/<images>"
FFHQ_LAYOUT = "ROOT/**/<images> (e.g. ROOT/00000/00000.png, or flat)"
AFHQ_LAYOUT = "ROOT/<train|val>/<cat|dog|wild>/<images>"


# ----------------------------------------------------------------------------------- decoding
class ResizeCrop:
    """PIL image -> float tensor (3, R, R) in [0, 1].

    With ``crop`` (and ``ref_width``): take the central square of side ``crop * width / ref_width``
    (CelebA: 108 px of the 178x218 aligned image, i.e. rows 55-162 and columns 35-142) and resize it to R.
    Without: resize the shorter side to R and take the central R x R square (torchvision's Resize +
    CenterCrop).  Resampling is bilinear with antialiasing (PIL).
    """

    def __init__(self, resolution: int, crop: int | None = None, ref_width: int | None = None):
        self.resolution = int(resolution)
        self.crop = crop
        self.ref_width = ref_width

    def __call__(self, img) -> torch.Tensor:
        from PIL import Image

        img = img.convert("RGB")
        w, h = img.size
        r = self.resolution
        if self.crop is not None:
            side = self.crop if (self.ref_width is None or w == self.ref_width) else round(self.crop * w / self.ref_width)
            side = max(1, min(side, w, h))
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((r, r), Image.BILINEAR)
        else:
            s = r / min(w, h)
            nw, nh = max(r, round(w * s)), max(r, round(h * s))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - r) // 2, (nh - r) // 2
            img = img.crop((left, top, left + r, top + r))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        extra = f", crop={self.crop}, ref_width={self.ref_width}" if self.crop else ""
        return f"ResizeCrop(resolution={self.resolution}{extra})"


class _TooLarge(Exception):
    """An image over the pixel limit met while decoding (becomes a DataError naming the file)."""


class FileImageSet(ImageSet):
    """Images on disk, decoded lazily with PIL; ``transform`` maps a PIL image to a (3, R, R) tensor.

    A file that is missing or cannot be decoded raises a DataError naming it.  Picklable (DataLoader
    workers).  ``files`` and ``targets`` are aligned; ``subset(idx)`` keeps a selection.
    """

    def __init__(self, files: Sequence[os.PathLike | str], targets: Sequence[int] | torch.Tensor, resolution: int,
                 transform: Callable[[Any], torch.Tensor] | None = None):
        self.files = [str(f) for f in files]
        self.targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if len(self.targets) != len(self.files):
            raise ValueError("files and targets differ in length")
        self.resolution = int(resolution)
        self.channels = 3
        self.transform = transform if transform is not None else ResizeCrop(resolution)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        limit = pixel_limit()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # Pillow's notes (palette transparency, EXIF) stay off the console
                with Image.open(path) as img:
                    if limit is not None and img.size[0] * img.size[1] > limit:
                        raise _TooLarge(f"{img.size[0]:,} x {img.size[1]:,} px")
                    img.load()
                    x = self.transform(img)
        except FileNotFoundError:
            raise DataError(f"image file '{path}' is missing; restore it or rebuild the dataset folder") from None
        except (_TooLarge, Image.DecompressionBombError) as e:
            size = str(e) if isinstance(e, _TooLarge) else "a decompression bomb"
            raise DataError(f"image file '{path}' ({size}) is over {limit_text(limit or 0)}; shrink or remove "
                            "it, or raise the limit") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot decode image file '{path}' ({type(e).__name__}); it is corrupt or not an "
                            f"image: re-extract it or delete it") from None
        return x, int(self.targets[i])

    def subset(self, idx: Sequence[int] | torch.Tensor) -> FileImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return FileImageSet([self.files[j] for j in idx.tolist()], self.targets[idx], self.resolution, self.transform)

    def __repr__(self) -> str:
        return f"FileImageSet({len(self)} images, {self.resolution} px, {self.transform!r})"


# ----------------------------------------------------------------------------------- scanning helpers
def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _require_root(name: str, root: str | None, layout: str) -> Path:
    if root is None or str(root) == "":
        raise DataError(f"dataset '{name}' needs --root: a local folder laid out as {layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset root '{path}' does not exist; point --root at a folder laid out as {layout}")
    if not path.is_dir():
        raise DataError(f"dataset root '{path}' is not a folder; point --root at a folder laid out as {layout}")
    return path


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and _is_image(p))


def _public_images(folder: Path, files: list[Path], layout: str) -> list[Path]:
    """The images ``files`` of a public set in ``folder``, less those over the pixel limit (skipped with one
    warning line); none left is a one-line DataError."""
    limit = pixel_limit()
    kept, dropped = split_oversized(files, limit)
    if files and not kept:
        raise DataError(f"'{folder}' holds only images over {limit_text(limit or 0)} (e.g. '{dropped[0][0]}', "
                        f"{dropped[0][1]}); shrink them, or raise the limit")
    if not files:
        raise DataError(f"'{folder}' holds no images; expected the layout {layout}")
    warn_skipped(dropped, limit)
    return kept


def scan_class_folders(folder: Path, layout: str, what: str = "identity") -> list[tuple[str, list[Path]]]:
    """Sorted ``(class name, sorted image files)`` for every sub-folder of ``folder``.

    Hidden folders are skipped; a class folder without images is an error naming it.
    """
    if not folder.is_dir():
        raise DataError(f"folder '{folder}' is missing; expected the layout {layout}")
    classes, skipped, limit = [], [], pixel_limit()
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _images_in(sub)
        if not files:
            raise DataError(f"{what} folder '{sub}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            f"add images or remove the folder")
        files, dropped = split_oversized(files, limit)
        if not files:
            raise DataError(f"{what} folder '{sub}' holds only images over {limit_text(limit or 0)} (e.g. "
                            f"'{dropped[0][0].name}', {dropped[0][1]}); shrink them, or raise the limit")
        skipped += dropped
        classes.append((sub.name, files))
    if not classes:
        raise DataError(f"folder '{folder}' holds no {what} sub-folders; expected the layout {layout}")
    warn_skipped(skipped, limit)
    return classes


def _check_resolution(name: str, resolution: Any, default: int) -> int:
    res = default if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 8:
        raise ArgumentError(f"{name} resolution must be an integer >= 8, got {res!r}")
    return res


def _check_options(name: str, options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ArgumentError(f"unknown {name} option '{unknown[0]}'; allowed options: {', '.join(allowed)}")
    return {**allowed, **options}


def _fraction(name: str, value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} option test_fraction must be a number in (0, 1), got {value!r}") from None
    if not 0 < f < 1:
        raise ArgumentError(f"{name} option test_fraction must be in (0, 1), got {f}")
    return f


def _opt_int(name: str, key: str, value: Any, low: int) -> int | None:
    if value is None:
        return None
    try:
        iv = int(value)
        ok = iv == float(value) and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok or iv < low:
        raise ArgumentError(f"{name} option {key} must be an integer >= {low}, got {value!r}")
    return iv


def _split_private(name: str, classes: list[tuple[str, list[Path]]], resolution: int, transform, test_fraction: float,
                   split_seed: int) -> tuple[FileImageSet, FileImageSet]:
    files = [f for _, fs in classes for f in fs]
    labels = torch.tensor([c for c, (_, fs) in enumerate(classes) for _ in fs], dtype=torch.long)
    is_test = stratified_split(labels, test_fraction, split_seed, name)
    keep_tr = (~is_test).nonzero().flatten().tolist()
    keep_te = is_test.nonzero().flatten().tolist()
    return (FileImageSet([files[i] for i in keep_tr], labels[keep_tr], resolution, transform),
            FileImageSet([files[i] for i in keep_te], labels[keep_te], resolution, transform))


def _empty(resolution: int) -> FileImageSet:
    return FileImageSet([], [], resolution)


def _finish_public(name: str, own: FileImageSet | None, spec: Any, limit: Any, resolution: int, seed: int,
                   info: dict[str, Any]) -> FileImageSet:
    """The public set: ``spec`` (another source) if given, else ``own``; optionally a seeded subset."""
    if spec not in (None, ""):
        public = load_public(spec, resolution=resolution, seed=seed)
        info["public_source"] = public_spec_str(spec)
    elif own is not None:
        public = own
        info["public_source"] = f"{name} (identities disjoint from the private ones)"
    else:
        public = _empty(resolution)
        info["public_source"] = None
        info["note"] = (f"{name} has no public identities of its own; pass public='ffhq:/path' (faces) or "
                        f"public='afhq:/path' (dogs) for attacks that need public data")
    n = _opt_int(name, "public_images", limit, 1)
    if n is not None and n < len(public):
        g = torch.Generator().manual_seed(derive_seed(seed, "public-subset", name))
        public = public.subset(torch.randperm(len(public), generator=g)[:n].sort().values)
    return public


_COMMON = {"test_fraction": 0.1, "split_seed": None, "public": None, "public_images": None}


# ----------------------------------------------------------------------------------- CelebA
def _read_identity_file(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror}; expected the layout {CELEBA_LAYOUT}") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"'{path}' line {n} is not '<file name> <identity>': {line.strip()[:60]!r}")
        ids[parts[0]] = int(parts[1])
    if not ids:
        raise DataError(f"'{path}' lists no images; expected lines '000001.jpg 2880'")
    return ids


def _read_split_file(path: Path) -> list[tuple[str, int, bool]]:
    """Lines ``<file name> <label> <train|test>`` (``#`` comments and blank lines skipped)."""
    if not path.is_file():
        raise DataError(f"split file '{path}' does not exist; give a text file of '<file> <label> <train|test>' lines")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit() or parts[2].lower() not in ("train", "test"):
            raise DataError(f"split file '{path}' line {n} is not '<file> <label> <train|test>': {line[:60]!r}")
        rows.append((parts[0], int(parts[1]), parts[2].lower() == "test"))
    if not rows:
        raise DataError(f"split file '{path}' lists no images; give '<file> <label> <train|test>' lines")
    return rows


def _celeba_paths(base: Path) -> tuple[Path, Path]:
    """The aligned-image folder (a nested copy is accepted) and the identity file (ROOT or ROOT/Anno)."""
    img_dir = base / "img_align_celeba"
    if (img_dir / "img_align_celeba").is_dir():
        img_dir = img_dir / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"CelebA image folder '{img_dir}' is missing; expected the layout {CELEBA_LAYOUT}")
    id_file = base / "identity_CelebA.txt"
    if not id_file.is_file():
        alt = base / "Anno" / "identity_CelebA.txt"
        if not alt.is_file():
            raise DataError(f"CelebA identity file '{id_file}' is missing; expected the layout {CELEBA_LAYOUT}")
        id_file = alt
    return img_dir, id_file


def _celeba_from_split_file(split_file: Any, img_dir: Path, on_disk: set[str], identity: dict[str, int], res: int,
                            transform: Any) -> tuple[Any, Any, set[int], list[str]]:
    """Private train / test from a split file (``<file> <label> <train|test>`` lines)."""
    rows = _read_split_file(Path(split_file).expanduser())
    for fname, _, _ in rows:
        if fname not in on_disk:
            raise DataError(f"split file '{split_file}' names '{fname}', which is not in '{img_dir}'; "
                            f"fix the split file or restore the image")
    labels = sorted({lab for _, lab, _ in rows})
    if labels != list(range(len(labels))):
        raise DataError(f"split file '{split_file}' labels must be 0..N-1 without gaps "
                        f"(found {len(labels)} labels up to {labels[-1]})")
    if len(labels) < 2:
        raise DataError(f"split file '{split_file}' names fewer than 2 identities; an MI benchmark needs 2+")
    tr = [(img_dir / f, lab) for f, lab, t in rows if not t]
    te = [(img_dir / f, lab) for f, lab, t in rows if t]
    train = FileImageSet([f for f, _ in tr], [lab for _, lab in tr], res, transform)
    test = FileImageSet([f for f, _ in te], [lab for _, lab in te], res, transform)
    private_ids = {identity[f] for f, _, _ in rows if f in identity}
    return train, test, private_ids, [str(i) for i in range(len(labels))]


def _celeba_most_images(identity: dict[str, int], num_private: Any, id_file: Path, img_dir: Path, res: int,
                        transform: Any, tf: float, split_seed: int) -> tuple[Any, Any, set[int], list[str]]:
    """The standard split: the ``num_private`` identities with the most images, seeded train / test."""
    counts: dict[int, int] = {}
    for ident in identity.values():
        counts[ident] = counts.get(ident, 0) + 1
    n_priv = _opt_int("celeba", "num_private", num_private, 2)
    if n_priv > len(counts):
        raise DataError(f"'{id_file}' lists only {len(counts)} identities but num_private={n_priv}; "
                        f"lower num_private or use the full identity file")
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    private_sorted = sorted(ranked[:n_priv])
    classes: list[tuple[str, list[Path]]] = [(str(i), []) for i in private_sorted]
    lab = {ident: c for c, ident in enumerate(private_sorted)}
    for f in sorted(identity):
        if identity[f] in lab:
            classes[lab[identity[f]]][1].append(img_dir / f)
    train, test = _split_private("celeba", classes, res, transform, tf, split_seed)
    return train, test, set(private_sorted), [str(i) for i in private_sorted]


@DATASETS.register("celeba", kind="folder", default_resolution=64, layout=CELEBA_LAYOUT,
                   options={**_COMMON, "num_private": 1000, "split_file": None})
def celeba(root: str | None = None, resolution: int | None = None, seed: int = 0,
           **options: Any) -> MISplits:
    """CelebA, the standard MI split: the 1,000 identities with the most images are private, the rest public.

    Layout: ROOT/img_align_celeba/*.jpg (a nested img_align_celeba/img_align_celeba/ is accepted) and
    ROOT/identity_CelebA.txt.  Images: centre crop 108 of the 178x218 aligned image (rows 55-162, cols
    35-142), resized to 64 px.  Private identities: the ``num_private`` (1000) with the most images (ties:
    smaller identity number first), relabelled 0..N-1 in ascending CelebA identity number; public: every
    other identity (labels 0..M-1, ascending identity number).  Private train/test: seeded per identity
    (``test_fraction`` 0.1, ``split_seed`` defaults to ``seed``), or ``split_file=PATH`` with lines
    ``<file name> <label> <train|test>`` (then the split file's identities are private and its labels are
    used).  list_eval_partition.txt, if present, is ignored: CelebA's official partition separates
    identities, which an MI private train/test split must not.
    """
    opt = _check_options("celeba", options, {**_COMMON, "num_private": 1000, "split_file": None})
    res = _check_resolution("celeba", resolution, 64)
    base = _require_root("celeba", root, CELEBA_LAYOUT)
    img_dir, id_file = _celeba_paths(base)
    identity = _read_identity_file(id_file)
    on_disk = {p.name for p in img_dir.iterdir() if _is_image(p)}
    missing = sorted(f for f in identity if f not in on_disk)
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in '{id_file.name}' are missing from '{img_dir}' "
                        f"(first: {missing[0]}); re-extract img_align_celeba or fix the identity file")
    transform = ResizeCrop(res, crop=108, ref_width=178)
    tf = _fraction("celeba", opt["test_fraction"])
    split_seed = seed if opt["split_seed"] is None else int(opt["split_seed"])
    info: dict[str, Any] = {"family": "celeba", "root": str(base), "seed": int(seed), "split_seed": split_seed,
                            "preprocess": "centre crop 108 (rows 55-162, cols 35-142 at 178x218) -> resize"}

    if opt["split_file"] not in (None, ""):
        train, test, private_ids, class_names = _celeba_from_split_file(opt["split_file"], img_dir, on_disk,
                                                                         identity, res, transform)
        info["split_file"] = str(opt["split_file"])
    else:
        train, test, private_ids, class_names = _celeba_most_images(identity, opt["num_private"], id_file, img_dir,
                                                                     res, transform, tf, split_seed)
    num_classes = len(class_names)
    pub_ids = sorted({i for i in identity.values() if i not in private_ids})
    pub_lab = {ident: c for c, ident in enumerate(pub_ids)}
    pub_files = sorted(f for f in identity if identity[f] in pub_lab)
    own_public = FileImageSet([img_dir / f for f in pub_files], [pub_lab[identity[f]] for f in pub_files], res,
                              transform)
    public = _finish_public("celeba", own_public, opt["public"], opt["public_images"], res, seed, info)
    info["private_identities"] = len(private_ids)
    info["public_identities"] = len(pub_ids)
    return MISplits(name="celeba", resolution=res, num_classes=num_classes, private_train=train, private_test=test,
                    public=public, class_names=class_names, info=info)


# ----------------------------------------------------------------------------------- FaceScrub
@DATASETS.register("facescrub", kind="folder", default_resolution=224, layout=FACESCRUB_LAYOUT,
                   options={**_COMMON, "split_seed": 42})
def facescrub(root: str | None = None, resolution: int | None = None, seed: int = 0,
              **options: Any) -> MISplits:
    """FaceScrub cropped faces (PPA setting): every identity private, 90/10 train/test split seeded 42.

    Layout: ROOT/actors/faces/<name>/*.jpg and/or ROOT/actresses/faces/<name>/*.jpg.  Labels: actors in
    name order, then actresses in name order.  Images: resize shorter side to 224 + centre crop.  The
    public set comes from elsewhere (FFHQ in the paper): ``public="ffhq:/path"``; without it it is empty.
    """
    opt = _check_options("facescrub", options, {**_COMMON, "split_seed": 42})
    res = _check_resolution("facescrub", resolution, 224)
    base = _require_root("facescrub", root, FACESCRUB_LAYOUT)
    classes: list[tuple[str, list[Path]]] = []
    found = False
    for group in ("actors", "actresses"):
        folder = base / group / "faces"
        if folder.is_dir():
            found = True
            classes += [(f"{group}/{n}", fs) for n, fs in scan_class_folders(folder, FACESCRUB_LAYOUT)]
    if not found:
        raise DataError(f"neither '{base / 'actors' / 'faces'}' nor '{base / 'actresses' / 'faces'}' exists; "
                        f"expected the layout {FACESCRUB_LAYOUT}")
    if len(classes) < 2:
        raise DataError(f"'{base}' holds {len(classes)} identity folder; an MI benchmark needs 2+ identities")
    tf = _fraction("facescrub", opt["test_fraction"])
    split_seed = seed if opt["split_seed"] is None else int(opt["split_seed"])
    transform = ResizeCrop(res)
    train, test = _split_private("facescrub", classes, res, transform, tf, split_seed)
    info: dict[str, Any] = {"family": "facescrub", "root": str(base), "seed": int(seed), "split_seed": split_seed}
    public = _finish_public("facescrub", None, opt["public"], opt["public_images"], res, seed, info)
    return MISplits(name="facescrub", resolution=res, num_classes=len(classes), private_train=train,
                    private_test=test, public=public, class_names=[c for c, _ in classes], info=info)


# ----------------------------------------------------------------------------------- class-per-folder families
def _select_private(name: str, classes: list[tuple[str, list[Path]]], num_private: Any, private_classes: Any,
                    shuffle: bool, seed: int) -> tuple[list[int], list[int]]:
    """Indices of private and public classes (both in folder-name order)."""
    n = len(classes)
    if private_classes not in (None, ""):
        wanted = [s.strip() for s in private_classes.split(",")] if isinstance(private_classes, str) \
            else [str(s) for s in private_classes]
        names = [c for c, _ in classes]
        bad = [w for w in wanted if w not in names]
        if bad:
            from ..errors import did_you_mean
            raise ArgumentError(f"{name} option private_classes names '{bad[0]}', which is not a class folder"
                                f"{did_you_mean(bad[0], names)}")
        priv = sorted({names.index(w) for w in wanted})
    else:
        k = _opt_int(name, "num_private", num_private, 2)
        k = n if k is None else k
        if k > n:
            raise DataError(f"{name} root holds {n} classes but num_private={k}; lower num_private")
        order = list(range(n))
        if shuffle:
            g = torch.Generator().manual_seed(derive_seed(seed, "private-classes", name))
            order = torch.randperm(n, generator=g).tolist()
        priv = sorted(order[:k])
    if len(priv) < 2:
        raise DataError(f"{name} needs at least 2 private classes, got {len(priv)}")
    pub = [i for i in range(n) if i not in set(priv)]
    return priv, pub


def _class_family(name: str, classes: list[tuple[str, list[Path]]], res: int, seed: int, opt: dict[str, Any],
                  info: dict[str, Any], class_label: Callable[[str], str] = lambda c: c) -> MISplits:
    priv, pub = _select_private(name, classes, opt.get("num_private"), opt.get("private_classes"),
                                bool(opt.get("shuffle_classes", False)), seed)
    tf = _fraction(name, opt["test_fraction"])
    split_seed = seed if opt["split_seed"] is None else int(opt["split_seed"])
    transform = ResizeCrop(res)
    train, test = _split_private(name, [classes[i] for i in priv], res, transform, tf, split_seed)
    own = None
    if pub:
        files = [f for i in pub for f in classes[i][1]]
        labels = [j for j, i in enumerate(pub) for _ in classes[i][1]]
        own = FileImageSet(files, labels, res, transform)
        info["public_classes"] = [class_label(classes[i][0]) for i in pub]
    info["split_seed"] = split_seed
    public = _finish_public(name, own, opt["public"], opt["public_images"], res, seed, info)
    return MISplits(name=name, resolution=res, num_classes=len(priv), private_train=train, private_test=test,
                    public=public, class_names=[class_label(classes[i][0]) for i in priv], info=info)


_FOLDER_OPTS = {**_COMMON, "num_private": None, "private_classes": None, "shuffle_classes": False}


@DATASETS.register("vggface2", kind="folder", default_resolution=224, layout=VGGFACE2_LAYOUT,
                   options={**_FOLDER_OPTS, "split": "train"})
def vggface2(root: str | None = None, resolution: int | None = None, seed: int = 0,
             **options: Any) -> MISplits:
    """VGGFace2: ROOT/<split>/<identity>/*.jpg; identities of ``split`` (train) are private.

    ``num_private=N`` keeps the first N identities (in folder order, or seeded with shuffle_classes=True)
    private and makes the others public; ``private_classes`` names them explicitly.  224 px.
    """
    opt = _check_options("vggface2", options, {**_FOLDER_OPTS, "split": "train"})
    res = _check_resolution("vggface2", resolution, 224)
    base = _require_root("vggface2", root, VGGFACE2_LAYOUT)
    if opt["split"] not in ("train", "test"):
        raise ArgumentError(f"vggface2 option split must be 'train' or 'test', got {opt['split']!r}")
    folder = base / opt["split"]
    if not folder.is_dir():
        raise DataError(f"VGGFace2 split folder '{folder}' is missing; expected the layout {VGGFACE2_LAYOUT}")
    classes = scan_class_folders(folder, VGGFACE2_LAYOUT)
    info = {"family": "vggface2", "root": str(base), "seed": int(seed), "split": opt["split"]}
    return _class_family("vggface2", classes, res, seed, opt, info)


@DATASETS.register("stanford_dogs", kind="folder", default_resolution=224, layout=DOGS_LAYOUT,
                   options=dict(_FOLDER_OPTS))
def stanford_dogs(root: str | None = None, resolution: int | None = None, seed: int = 0,
                  **options: Any) -> MISplits:
    """Stanford Dogs: ROOT/Images/<wnid>-<breed>/*.jpg; every breed private (public: ``public="afhq:/path"``).

    Class names are the breeds (the part after the WordNet id).  224 px.
    """
    opt = _check_options("stanford_dogs", options, dict(_FOLDER_OPTS))
    res = _check_resolution("stanford_dogs", resolution, 224)
    base = _require_root("stanford_dogs", root, DOGS_LAYOUT)
    folder = base / "Images"
    if not folder.is_dir():
        raise DataError(f"Stanford Dogs folder '{folder}' is missing; expected the layout {DOGS_LAYOUT}")
    classes = scan_class_folders(folder, DOGS_LAYOUT, what="breed")
    bad = [c for c, _ in classes if "-" not in c]
    if bad:
        raise DataError(f"breed folder '{folder / bad[0]}' is not named <wnid>-<breed> (e.g. n02085620-Chihuahua); "
                        f"expected the layout {DOGS_LAYOUT}")
    info = {"family": "stanford_dogs", "root": str(base), "seed": int(seed)}
    return _class_family("stanford_dogs", classes, res, seed, opt, info, class_label=lambda c: c.split("-", 1)[1])


@DATASETS.register("imagefolder", kind="folder", default_resolution=64, layout=IMAGEFOLDER_LAYOUT,
                   options=dict(_FOLDER_OPTS))
def imagefolder(root: str | None = None, resolution: int | None = None, seed: int = 0,
                **options: Any) -> MISplits:
    """A generic class-per-folder tree ROOT/<class>/<images>.

    Private classes: ``private_classes="a,b,c"`` (folder names), or the first ``num_private`` folders in name
    order (``shuffle_classes=True``: a seeded random choice); default: all classes private.  Remaining
    classes form the public set (labels index them in name order).  64 px (resize + centre crop).
    """
    opt = _check_options("imagefolder", options, dict(_FOLDER_OPTS))
    res = _check_resolution("imagefolder", resolution, 64)
    base = _require_root("imagefolder", root, IMAGEFOLDER_LAYOUT)
    classes = scan_class_folders(base, IMAGEFOLDER_LAYOUT, what="class")
    info = {"family": "imagefolder", "root": str(base), "seed": int(seed)}
    return _class_family("imagefolder", classes, res, seed, opt, info)


# ----------------------------------------------------------------------------------- public-only sets
PUBLIC_SETS: Registry[Callable[..., FileImageSet]] = Registry("public dataset")


@PUBLIC_SETS.register("ffhq", layout=FFHQ_LAYOUT)
def ffhq(root: str | None, resolution: int, seed: int = 0) -> FileImageSet:
    """FFHQ (public faces): every image under ROOT, recursively; labels -1 (no identities)."""
    base = _require_root("ffhq", root, FFHQ_LAYOUT)
    files = _public_images(base, _images_in(base, recursive=True), FFHQ_LAYOUT)
    return FileImageSet(files, [-1] * len(files), resolution, ResizeCrop(resolution))


@PUBLIC_SETS.register("images", layout="ROOT/**/<images>")
def images(root: str | None, resolution: int, seed: int = 0) -> FileImageSet:
    """Any folder of images (recursive), labels -1."""
    base = _require_root("images", root, "ROOT/**/<images>")
    files = _public_images(base, _images_in(base, recursive=True), "ROOT/**/<images> (image files under it)")
    return FileImageSet(files, [-1] * len(files), resolution, ResizeCrop(resolution))


@PUBLIC_SETS.register("afhq", layout=AFHQ_LAYOUT)
def afhq(root: str | None, resolution: int, seed: int = 0, animal: str = "dog", split: str = "train") -> FileImageSet:
    """AFHQ: ROOT/<train|val>/<cat|dog|wild>/; ``animal`` (dog) and ``split`` (train, val or all); labels -1."""
    base = _require_root("afhq", root, AFHQ_LAYOUT)
    if animal not in ("cat", "dog", "wild"):
        raise ArgumentError(f"afhq option animal must be cat, dog or wild, got {animal!r}")
    if split not in ("train", "val", "all"):
        raise ArgumentError(f"afhq option split must be train, val or all, got {split!r}")
    files: list[Path] = []
    for sp in (("train", "val") if split == "all" else (split,)):
        folder = base / sp / animal
        if not folder.is_dir():
            raise DataError(f"AFHQ folder '{folder}' is missing; expected the layout {AFHQ_LAYOUT}")
        files += _images_in(folder)
    files = _public_images(base / split / animal, files, AFHQ_LAYOUT)
    return FileImageSet(files, [-1] * len(files), resolution, ResizeCrop(resolution))


def public_spec_str(spec: Any) -> str:
    if isinstance(spec, dict):
        return ", ".join(f"{k}={v}" for k, v in spec.items())
    return str(spec)


def load_public(spec: Any, root: str | None = None, resolution: int = 64, seed: int = 0,
                **options: Any) -> FileImageSet:
    """A public image set from ``PUBLIC_SETS``.

    ``spec`` is a name (``"ffhq"`` with ``root=``), a ``"name:root"`` string (``"afhq:/data/afhq"``), or a dict
    ``{"name": ..., "root": ..., **options}``.  Labels are -1 (public sets carry no identities).
    """
    if isinstance(spec, dict):
        d = dict(spec)
        if "name" not in d:
            raise ArgumentError(f"public dataset spec {d} needs a 'name' (one of: {', '.join(PUBLIC_SETS.names())})")
        name = d.pop("name")
        root = d.pop("root", root)
        options = {**d, **options}
    else:
        spec = str(spec)
        name, sep, rest = spec.partition(":")
        if sep:
            root = rest
    factory = PUBLIC_SETS.get(name)
    import inspect

    accepted = [p for p in inspect.signature(factory).parameters if p not in ("root", "resolution", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ArgumentError(f"unknown option '{unknown[0]}' for public dataset '{name}'; allowed: "
                            f"{', '.join(accepted) if accepted else 'none'}")
    return factory(root, resolution, seed, **options)
