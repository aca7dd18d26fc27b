"""Datasets: synthetic identities, sklearn digits, and every real-data layout on tiny fake trees."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from midre.data import DATASETS, ImageSet, TensorImageSet, load_dataset
from midre.data.folders import PUBLIC_SETS, FileImageSet, ResizeCrop, load_public
from midre.data.synthetic import identity_vectors, sample_identities
from midre.errors import ArgumentError, DataError, MidreError, UnknownNameError


# =========================================================================================== synthetic
def _syn(**kw):
    opts = dict(num_private=6, num_public=4, images_per_id=10)
    opts.update(kw)
    return load_dataset("synthetic", **opts)


def test_synthetic_shapes_counts_ranges():
    s = _syn(test_fraction=0.2)
    assert s.num_classes == 6 and s.resolution == 32
    assert len(s.private_train) == 6 * 8 and len(s.private_test) == 6 * 2 and len(s.public) == 4 * 10
    for part in (s.private_train, s.private_test):
        assert isinstance(part, TensorImageSet)
        assert part.images.shape[1:] == (3, 32, 32)
    assert torch.equal(s.private_train.targets.bincount(), torch.full((6,), 8))
    assert torch.equal(s.private_test.targets.bincount(), torch.full((6,), 2))
    assert torch.equal(s.public.targets.bincount(), torch.full((4,), 10))
    x, y = s.private_train[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and isinstance(y, int)
    # real content: images are not flat
    assert s.private_train.images.float().std() > 20


@pytest.mark.parametrize("res", [16, 64])
def test_synthetic_any_resolution(res):
    s = load_dataset("synthetic", resolution=res, num_private=2, num_public=1, images_per_id=3)
    assert s.private_train.images.shape[1:] == (3, res, res)
    assert s.public.images.shape[1:] == (3, res, res)


def test_synthetic_deterministic_from_seed():
    a, b, c = _syn(seed=3), _syn(seed=3), _syn(seed=4)
    assert torch.equal(a.private_train.images, b.private_train.images)
    assert torch.equal(a.public.images, b.public.images)
    assert not torch.equal(a.private_train.images, c.private_train.images)


def test_synthetic_identity_independent_of_dataset_size():
    small = _syn(num_private=3, num_public=2)
    big = _syn(num_private=6, num_public=5)
    keep = small.private_train.targets
    assert torch.equal(small.private_train.images, big.private_train.images[big.private_train.targets < 3])
    assert torch.equal(small.public.images, big.public.images[big.public.targets < 2])
    assert torch.equal(keep, big.private_train.targets[big.private_train.targets < 3])


def test_synthetic_private_public_identities_disjoint():
    priv = identity_vectors(sample_identities(0, "private", 50))
    pub = identity_vectors(sample_identities(0, "public", 50))
    assert priv.shape == pub.shape and priv.shape[1] > 30
    # every public identity differs from every private one (and identities differ among themselves)
    assert torch.cdist(priv, pub).min() > 0.1
    d = torch.cdist(priv, priv) + torch.eye(50) * 1e3
    assert d.min() > 0.1
    # and the rendered sets share no image
    s = _syn()
    a = s.private_train.images.flatten(1).float()
    b = s.public.images.flatten(1).float()
    assert torch.cdist(a, b).min() > 0


def _colour_stats(feat, y, n):
    means = torch.stack([feat[y == c].mean(0) for c in range(n)])
    within = torch.stack([feat[y == c].var(0) for c in range(n)]).mean(0)
    return within, means.var(0)


def _nearest_centroid(feat, y, n, k):
    tr = (torch.arange(len(y)) % k) < k // 2
    cents = torch.stack([feat[tr & (y == c)].mean(0) for c in range(n)])
    pred = torch.cdist(feat[~tr], cents).argmin(1)
    return (pred == y[~tr]).float().mean().item()


@pytest.fixture(scope="module")
def faces20():
    s = load_dataset("synthetic", num_private=20, num_public=0, images_per_id=20, test_fraction=0.1)
    return s.private_train.images.float() / 255, s.private_train.targets


def test_synthetic_colour_varies_more_within_identity_than_between(faces20):
    x, y = faces20
    whole = x.mean((2, 3))
    centre = x[:, :, 10:22, 10:22].mean((2, 3))       # the middle of the face: skin, eyes, nose
    for feat in (whole, centre):
        within, between = _colour_stats(feat, y, 20)
        assert (within >= between).all(), (within, between)
    # colour alone barely identifies a person
    assert _nearest_centroid(centre, y, 20, 18) < 0.25


def test_synthetic_identity_recoverable_from_geometry(faces20):
    x, y = faces20
    g = x.mean(1, keepdim=True)
    g = (g - g.mean((2, 3), keepdim=True)) / (g.std((2, 3), keepdim=True) + 1e-6)   # no colour, no brightness
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    e = (F.conv2d(g, kx, padding=1) ** 2 + F.conv2d(g, kx.transpose(2, 3), padding=1) ** 2).sqrt()
    feat = F.avg_pool2d(e, 2).flatten(1)
    feat = (feat - feat.mean(0)) / (feat.std(0) + 1e-6)
    acc = _nearest_centroid(feat, y, 20, 18)
    assert acc > 0.30, acc          # chance is 0.05


def test_synthetic_variation_option_scales_nuisance():
    calm = _syn(variation=0.2, num_public=0)
    wild = _syn(variation=1.5, num_public=0)

    def spread(s):
        x = s.private_train.images.float()
        return torch.stack([x[s.private_train.targets == c].std(0).mean() for c in range(6)]).mean()

    assert spread(calm) < spread(wild)


def test_synthetic_empty_public_and_errors():
    s = _syn(num_public=0)
    assert len(s.public) == 0
    with pytest.raises(ArgumentError, match="num_private, num_public, images_per_id"):
        _syn(identities=3)
    with pytest.raises(ArgumentError, match="test_fraction"):
        _syn(test_fraction=1.5)
    with pytest.raises(ArgumentError, match="num_private"):
        _syn(num_private=1)
    with pytest.raises(ArgumentError, match="images_per_id"):
        _syn(images_per_id=2.5)
    with pytest.raises(ArgumentError, match="resolution"):
        load_dataset("synthetic", resolution=4)


def test_unknown_dataset_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean 'synthetic'"):
        load_dataset("synthetc")


# =========================================================================================== digits
def test_digits_protocol_split():
    s = load_dataset("digits")
    assert s.num_classes == 5 and s.resolution == 32
    assert s.private_train.images.shape[1:] == (3, 32, 32)
    x = s.private_train.images
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])        # grey -> 3 channels
    n_priv = len(s.private_train) + len(s.private_test)
    assert n_priv == 901 and len(s.public) == 1797 - 901                             # sklearn's digit counts
    assert set(s.private_train.targets.tolist()) == set(range(5))
    assert set(s.public.targets.tolist()) == set(range(5)) and s.info["public_classes"] == [5, 6, 7, 8, 9]
    frac = s.private_test.targets.bincount().float() / (s.private_test.targets.bincount()
                                                         + s.private_train.targets.bincount())
    assert ((frac - 0.2).abs() < 0.01).all()                                          # stratified
    img = torch.cat([s.private_train.images, s.private_test.images]).flatten(1)
    assert torch.unique(img, dim=0).shape[0] == n_priv                                 # no image in both splits


def test_digits_deterministic_and_options():
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    assert torch.equal(a.private_test.images, b.private_test.images)
    assert not torch.equal(a.private_test.images, c.private_test.images)
    d = load_dataset("digits", private_classes="0-2", resolution=16, test_fraction=0.5)
    assert d.num_classes == 3 and d.resolution == 16 and d.info["public_classes"] == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ArgumentError, match="allowed options"):
        load_dataset("digits", bogus=1)
    with pytest.raises(ArgumentError, match="at least 2"):
        load_dataset("digits", private_classes="3")


# =========================================================================================== fake trees
def _img(path: Path, size=(8, 8), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    if value is None:
        arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    else:
        arr = torch.full((size[1], size[0], 3), value, dtype=torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


def _celeba(tmp_path: Path, counts=(5, 3, 6, 2, 4), ext=".jpg"):
    root = tmp_path / "celeba"
    lines, k = [], 1
    for ident, n in zip((10, 20, 30, 40, 50), counts):
        for _ in range(n):
            name = f"{k:06d}{ext}"
            _img(root / "img_align_celeba" / name, seed=k)
            lines.append(f"{name} {ident}")
            k += 1
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("")
    return root


def test_celeba_standard_split(tmp_path):
    root = _celeba(tmp_path)
    s = load_dataset("celeba", root=str(root), resolution=16, num_private=3)
    # the 3 identities with most images (30: 6, 10: 5, 50: 4) are private, relabelled by identity number
    assert s.class_names == ["10", "30", "50"] and s.num_classes == 3
    counts = s.private_train.targets.bincount() + s.private_test.targets.bincount()
    assert counts.tolist() == [5, 6, 4]
    assert s.private_test.targets.bincount().tolist() == [1, 1, 1]                   # ~10 %, at least one
    assert len(s.public) == 5 and sorted(set(s.public.targets.tolist())) == [0, 1]     # identities 20 and 40
    priv_files = set(s.private_train.files) | set(s.private_test.files)
    assert not priv_files & set(s.public.files)
    assert not set(s.private_train.files) & set(s.private_test.files)
    x, y = s.private_train[0]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    # deterministic from the seed, different seeds give other test images
    s2 = load_dataset("celeba", root=str(root), resolution=16, num_private=3)
    assert s2.private_test.files == s.private_test.files
    others = [load_dataset("celeba", root=str(root), resolution=16, num_private=3, seed=k).private_test.files
              for k in range(1, 6)]
    assert any(o != s.private_test.files for o in others)
    # default resolution is 64 and the whole set decodes
    t = load_dataset("celeba", root=str(root), num_private=2).private_train.to_tensors()
    assert t.images.shape[1:] == (3, 64, 64)


def test_celeba_center_crop_108(tmp_path):
    root = tmp_path / "c"
    arr = torch.zeros(218, 178, 3, dtype=torch.uint8)
    arr[55:163, 35:143] = 255                                    # the 108 x 108 crop region is white
    (root / "img_align_celeba").mkdir(parents=True)
    for i in (1, 2, 3, 4):
        Image.fromarray(arr.numpy()).save(root / "img_align_celeba" / f"{i:06d}.png")
    (root / "identity_CelebA.txt").write_text("000001.png 1\n000002.png 1\n000003.png 2\n000004.png 2\n")
    s = load_dataset("celeba", root=str(root), resolution=108, num_private=2)
    x, _ = s.private_train[0]
    assert x.shape == (3, 108, 108) and x.min() == 1.0          # exactly the crop, nothing of the border
    x64, _ = load_dataset("celeba", root=str(root), num_private=2).private_train[0]
    assert x64.min() == 1.0


def test_celeba_split_file(tmp_path):
    root = _celeba(tmp_path)
    split = tmp_path / "split.txt"
    split.write_text("# file label split\n000001.jpg 0 train\n000002.jpg 0 test\n000006.jpg 1 train\n"
                     "000007.jpg 1 test\n")
    s = load_dataset("celeba", root=str(root), resolution=8, split_file=str(split))
    assert s.num_classes == 2 and len(s.private_train) == 2 and len(s.private_test) == 2
    assert s.private_test.targets.tolist() == [0, 1]
    # identities 10 and 20 are private, so the public set holds only 30, 40, 50
    assert len(s.public) == 6 + 2 + 4
    split.write_text("000001.jpg 0 train\n999999.jpg 1 test\n")
    with pytest.raises(DataError, match="999999.jpg"):
        load_dataset("celeba", root=str(root), split_file=str(split))
    split.write_text("000001.jpg zero train\n")
    with pytest.raises(DataError, match="line 1"):
        load_dataset("celeba", root=str(root), split_file=str(split))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("celeba", root=str(root), split_file=str(tmp_path / "nope.txt"))


def test_celeba_errors(tmp_path):
    with pytest.raises(DataError, match="needs --root"):
        load_dataset("celeba")
    with pytest.raises(DataError, match="does not exist.*identity_CelebA"):
        load_dataset("celeba", root=str(tmp_path / "missing"))
    root = _celeba(tmp_path)
    with pytest.raises(DataError, match="only 5 identities"):
        load_dataset("celeba", root=str(root), num_private=6)
    (root / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(DataError, match="000003.jpg"):
        load_dataset("celeba", root=str(root), num_private=2)
    (root / "identity_CelebA.txt").unlink()
    with pytest.raises(DataError, match="identity_CelebA.txt"):
        load_dataset("celeba", root=str(root))
    with pytest.raises(ArgumentError, match="allowed options.*split_file"):
        load_dataset("celeba", root=str(root), splitfile="x")


def test_corrupt_image_named(tmp_path):
    root = _celeba(tmp_path)
    bad = root / "img_align_celeba" / "000001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    s = load_dataset("celeba", root=str(root), num_private=5, resolution=8)
    ds = [d for d in (s.private_train, s.private_test) if str(bad) in d.files][0]
    with pytest.raises(DataError, match="000001.jpg.*corrupt"):
        ds[ds.files.index(str(bad))]
    with pytest.raises(DataError, match="000001.jpg"):
        ds.to_tensors()


def _facescrub(tmp_path, groups=("actors", "actresses")):
    root = tmp_path / "facescrub"
    k = 0
    for group, names in (("actors", ["Bob", "Al"]), ("actresses", ["Cy", "Di"])):
        if group not in groups:
            continue
        for name in names:
            for i in range(10):
                k += 1
                _img(root / group / "faces" / name / f"{name}_{i}.jpg", size=(12, 10), seed=k)
            (root / group / "faces" / name / "notes.txt").write_text("not an image")   # skipped
    return root


def test_facescrub_layout(tmp_path):
    root = _facescrub(tmp_path)
    s = load_dataset("facescrub", root=str(root), resolution=8)
    assert s.class_names == ["actors/Al", "actors/Bob", "actresses/Cy", "actresses/Di"]
    assert s.private_train.targets.bincount().tolist() == [9, 9, 9, 9]
    assert s.private_test.targets.bincount().tolist() == [1, 1, 1, 1]
    assert s.info["split_seed"] == 42 and len(s.public) == 0 and "ffhq" in s.info["note"]
    assert all(f.endswith(".jpg") for f in s.private_train.files)
    assert s.private_train[0][0].shape == (3, 8, 8)
    assert load_dataset("facescrub", root=str(root)).resolution == 224
    # the split depends on split_seed, not on the run seed
    assert load_dataset("facescrub", root=str(root), seed=5).private_test.files == s.private_test.files
    others = [load_dataset("facescrub", root=str(root), split_seed=k).private_test.files for k in range(3)]
    assert any(o != s.private_test.files for o in others)
    only = load_dataset("facescrub", root=str(_facescrub(tmp_path / "b", groups=("actresses",))))
    assert only.class_names == ["actresses/Cy", "actresses/Di"]


def test_facescrub_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="actors.*actresses"):
        load_dataset("facescrub", root=str(tmp_path / "empty"))
    root = _facescrub(tmp_path)
    (root / "actors" / "faces" / "Zed").mkdir()
    (root / "actors" / "faces" / "Zed" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="Zed.*no images"):
        load_dataset("facescrub", root=str(root))


def test_vggface2_layout(tmp_path):
    root = tmp_path / "vgg"
    for j, ident in enumerate(["n000002", "n000001", "n000003"]):
        for i in range(5):
            _img(root / "train" / ident / f"{i:04d}_01.jpg", seed=10 * j + i)
    s = load_dataset("vggface2", root=str(root), resolution=16, num_private=2)
    assert s.class_names == ["n000001", "n000002"] and len(s.public) == 5
    assert s.info["public_classes"] == ["n000003"]
    assert len(s.private_train) + len(s.private_test) == 10
    with pytest.raises(DataError, match="test"):
        load_dataset("vggface2", root=str(root), split="test")
    with pytest.raises(ArgumentError, match="split"):
        load_dataset("vggface2", root=str(root), split="val")


def _afhq(tmp_path):
    root = tmp_path / "afhq"
    for split in ("train", "val"):
        for animal in ("cat", "dog"):
            for i in range(3):
                _img(root / split / animal / f"{animal}_{i}.png", size=(20, 16), seed=i)
    return root


def test_stanford_dogs_with_afhq_public(tmp_path):
    root = tmp_path / "dogs"
    for j, breed in enumerate(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]):
        for i in range(4):
            _img(root / "Images" / breed / f"{breed.split('-')[0]}_{i}.jpg", seed=j * 10 + i)
    afhq = _afhq(tmp_path)
    s = load_dataset("stanford_dogs", root=str(root), resolution=16, public=f"afhq:{afhq}")
    assert s.class_names == ["Chihuahua", "Japanese_spaniel"] and s.resolution == 16
    assert len(s.public) == 3 and all("/train/dog/" in f for f in s.public.files)
    assert (s.public.targets == -1).all() and s.public[0][0].shape == (3, 16, 16)
    s2 = load_dataset("stanford_dogs", root=str(root), public={"name": "afhq", "root": str(afhq), "split": "all"},
                      public_images=4)
    assert len(s2.public) == 4
    (root / "Images" / "badname").mkdir()
    _img(root / "Images" / "badname" / "a.jpg")
    with pytest.raises(DataError, match="badname.*wnid"):
        load_dataset("stanford_dogs", root=str(root))
    with pytest.raises(DataError, match="Images"):
        load_dataset("stanford_dogs", root=str(tmp_path))


def test_public_sets(tmp_path):
    ffhq = tmp_path / "ffhq"
    _img(ffhq / "00000" / "00000.png", size=(32, 32))
    _img(ffhq / "00000" / "00001.png", size=(32, 32), seed=1)
    _img(ffhq / "00002.png", size=(32, 32), seed=2)
    (ffhq / "LICENSE.txt").write_text("x")
    p = load_public(f"ffhq:{ffhq}", resolution=8)
    assert len(p) == 3 and p[0][0].shape == (3, 8, 8) and (p.targets == -1).all()
    assert len(load_public("images", root=str(ffhq), resolution=8)) == 3
    afhq = _afhq(tmp_path)
    assert len(load_public("afhq", root=str(afhq), resolution=8, animal="cat", split="val")) == 3
    with pytest.raises(DataError, match="wild"):
        load_public("afhq", root=str(afhq), resolution=8, animal="wild")
    with pytest.raises(ArgumentError, match="animal"):
        load_public("afhq", root=str(afhq), resolution=8, animal="cow")
    with pytest.raises(ArgumentError, match="allowed"):
        load_public("ffhq", root=str(ffhq), resolution=8, animal="dog")
    with pytest.raises(UnknownNameError, match="did you mean 'ffhq'"):
        load_public(f"ffhg:{ffhq}")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_public(f"ffhq:{tmp_path / 'nothing'}")
    assert set(PUBLIC_SETS.names()) == {"ffhq", "afhq", "images"}


def test_celeba_with_ffhq_public(tmp_path):
    root = _celeba(tmp_path)
    ffhq = tmp_path / "ffhq"
    for i in range(4):
        _img(ffhq / f"{i:05d}.png", size=(16, 16), seed=i)
    s = load_dataset("celeba", root=str(root), num_private=2, resolution=8, public=f"ffhq:{ffhq}",
                     public_images=2)
    assert len(s.public) == 2 and all(str(ffhq) in f for f in s.public.files)
    again = load_dataset("celeba", root=str(root), num_private=2, resolution=8, public=f"ffhq:{ffhq}",
                         public_images=2)
    assert again.public.files == s.public.files


def _folder(tmp_path, classes=("cat", "dog", "eel", "fox"), n=6):
    root = tmp_path / "tree"
    for j, c in enumerate(classes):
        for i in range(n):
            _img(root / c / f"{i}.png", size=(10, 14), seed=j * 100 + i)
    return root


def test_imagefolder_private_public(tmp_path):
    root = _folder(tmp_path)
    s = load_dataset("imagefolder", root=str(root), resolution=8)
    assert s.class_names == ["cat", "dog", "eel", "fox"] and len(s.public) == 0 and s.resolution == 8
    s = load_dataset("imagefolder", root=str(root), num_private=2)
    assert s.class_names == ["cat", "dog"] and s.info["public_classes"] == ["eel", "fox"]
    assert s.public.targets.bincount().tolist() == [6, 6] and s.resolution == 64
    s = load_dataset("imagefolder", root=str(root), private_classes="fox,cat")
    assert s.class_names == ["cat", "fox"]
    a = load_dataset("imagefolder", root=str(root), num_private=2, shuffle_classes=True, seed=7)
    b = load_dataset("imagefolder", root=str(root), num_private=2, shuffle_classes=True, seed=7)
    assert a.class_names == b.class_names
    assert not set(a.class_names) & set(a.info["public_classes"])
    with pytest.raises(ArgumentError, match="did you mean 'fox'"):
        load_dataset("imagefolder", root=str(root), private_classes="cat,fxo")
    with pytest.raises(DataError, match="num_private"):
        load_dataset("imagefolder", root=str(root), num_private=9)
    with pytest.raises(ArgumentError, match="num_private"):
        load_dataset("imagefolder", root=str(root), num_private="two")
    with pytest.raises(ArgumentError, match="test_fraction"):
        load_dataset("imagefolder", root=str(root), test_fraction=0)
    with pytest.raises(ArgumentError, match="resolution"):
        load_dataset("imagefolder", root=str(root), resolution=4)


def test_imagefolder_layout_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", root=str(tmp_path / "flat"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("imagefolder", root=str(f))
    one = _folder(tmp_path, classes=("solo",))
    with pytest.raises(DataError, match="at least 2"):
        load_dataset("imagefolder", root=str(one))


def test_file_image_set_contract(tmp_path):
    root = _folder(tmp_path, n=3)
    s = load_dataset("imagefolder", root=str(root), resolution=8)
    ds = s.private_train
    assert isinstance(ds, ImageSet) and isinstance(ds, FileImageSet)
    clone = pickle.loads(pickle.dumps(ds))                          # DataLoader workers
    assert torch.equal(clone[0][0], ds[0][0])
    t = ds.to_tensors()
    assert isinstance(t, TensorImageSet) and t.images.shape == (len(ds), 3, 8, 8)
    assert torch.equal(t.targets, ds.targets)
    assert len(ds.subset([0, 1])) == 2
    # resize shorter side + centre crop keeps the middle of a non-square image
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 20, 10))
    x = ResizeCrop(10)(img)
    assert x.shape == (3, 10, 10) and x.min() == 1.0


def test_every_registered_family_rejects_unknown_options(tmp_path):
    root = _folder(tmp_path)
    for name in DATASETS.names():
        with pytest.raises(MidreError):
            load_dataset(name, root=str(root), not_an_option=1)
