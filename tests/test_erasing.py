"""Statistical and exact tests of midre.erasing (MIDRE's Algorithm 1 and the ablation erasers)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from midre.erasing import (
    ERASERS,
    IMAGENET_MEAN,
    RELEASED_MEAN_PIXEL,
    BatchRandomErasing,
    Boxes,
    EntireErasing,
    FixedErasing,
    MultiPatchErasing,
    RandomErasing,
    RandomPixelMasking,
    apply_fill,
    boxes_to_mask,
    build_eraser,
    sample_boxes,
)
from midre.errors import ArgumentError, UnknownNameError

H = W = 64
LOWER, AE = 0.1, 0.4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def many_boxes():
    return sample_boxes(20000, H, W, area=AE, lower=LOWER, generator=gen(1))


def single_boxes(n, seed, h=H, w=W, **kw):
    e = RandomErasing(generator=gen(seed), **kw)
    return [e.sample_box(h, w) for _ in range(n)]


# ----------------------------------------------------------------------------------------- Algorithm 1
def test_area_fraction_within_bounds_up_to_rounding(many_boxes):
    side_lo, side_hi = round(math.sqrt(LOWER * H * W)), round(math.sqrt(AE * H * W))
    assert int(many_boxes.height.min()) == side_lo and int(many_boxes.height.max()) == side_hi
    frac = many_boxes.area().double() / (H * W)
    assert frac.min() >= (side_lo ** 2) / (H * W) - 1e-9 and frac.max() <= side_hi ** 2 / (H * W) + 1e-9
    # s ~ U(lower, a_e): the mean share sits in the middle, and the side's cdf follows sqrt(s*H*W)
    assert abs(float(frac.mean()) - (LOWER + AE) / 2) < 0.004
    s_lo = float((frac < 0.2).double().mean())
    assert abs(s_lo - (0.2 - LOWER) / (AE - LOWER)) < 0.03


def test_regions_are_square_and_inside(many_boxes):
    b = many_boxes
    assert torch.equal(b.height, b.width)
    assert (b.top >= 0).all() and (b.left >= 0).all()
    assert (b.top + b.height <= H).all() and (b.left + b.width <= W).all()


def test_position_uniform_over_valid_corners(many_boxes):
    b = many_boxes
    rng = np.random.default_rng(0)
    span = (H - b.height + 1).double().numpy()
    for start in (b.top, b.left):     # jittered position / number of valid corners ~ U(0, 1) exactly
        u = (start.double().numpy() + rng.random(len(span))) / span
        assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_exact_fill_inside_and_untouched_outside():
    x = torch.rand(16, 3, H, W, generator=gen(2))
    out, boxes = BatchRandomErasing(generator=gen(3))(x, return_boxes=True)
    m = boxes_to_mask(boxes, H, W)
    assert int(m.sum()) == int(boxes.area().sum())
    for c, v in enumerate(IMAGENET_MEAN):
        assert torch.equal(out[:, c][m], torch.full((int(m.sum()),), v))
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~m], x.permute(1, 0, 2, 3)[:, ~m])
    assert not torch.equal(out, x) and torch.equal(x, torch.rand(16, 3, H, W, generator=gen(2)))  # not in place


def test_default_fill_is_imagenet_mean_in_pixel_space_not_normalised():
    """Pitfall: fill values written after normalisation while described as pixel values."""
    from midre.models.base import IMAGENET_MEAN as MODEL_MEAN
    from midre.models.base import IMAGENET_STD

    img = torch.rand(3, 32, 32, generator=gen(4))
    out = RandomErasing(area=0.5, lower=0.4, generator=gen(5))(img)
    changed = (out != img).any(0)
    vals = out[:, changed]
    assert torch.equal(vals, torch.tensor(IMAGENET_MEAN).view(3, 1).expand_as(vals))
    # inside the model (ImageNet normalisation) the erased region is exactly zero
    normed = (vals - torch.tensor(MODEL_MEAN).view(3, 1)) / torch.tensor(IMAGENET_STD).view(3, 1)
    assert normed.abs().max() < 1e-6
    assert not torch.allclose(vals[:, 0], torch.tensor(RELEASED_MEAN_PIXEL))


def test_released_option_fills_half_plus_half_mean():
    x = torch.zeros(4, 3, 32, 32)
    out = BatchRandomErasing(released=True, generator=gen(6))(x)
    m = (out != 0).any(1)
    expect = torch.tensor([0.5 + 0.5 * v for v in IMAGENET_MEAN])
    assert torch.allclose(expect, torch.tensor([0.7425, 0.728, 0.703]))
    assert torch.equal(out.permute(1, 0, 2, 3)[:, m], expect.view(3, 1).expand(3, int(m.sum())))
    assert torch.equal(RandomErasing(released=True, fill=0.0, generator=gen(7))(x[0]).unique(), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("fill,value", [("zero", 0.0), (0, 0.0), ("one", 1.0), (1, 1.0), ((0.2, 0.3, 0.4), None)])
def test_constant_fills(fill, value):
    x = torch.full((2, 3, 16, 16), 0.5)
    out = BatchRandomErasing(fill=fill, generator=gen(8))(x)
    m = (out != 0.5).any(1)
    expect = torch.full((3,), value) if value is not None else torch.tensor(fill)
    assert m.any() and torch.equal(out.permute(1, 0, 2, 3)[:, m], expect.view(3, 1).expand(3, int(m.sum())))


def test_random_fill_uniform_values():
    x = torch.full((4, 3, 32, 32), -1.0)
    out = BatchRandomErasing(fill="random", generator=gen(9))(x)
    v = out[out != -1.0]
    assert v.numel() > 1000 and v.min() >= 0 and v.max() <= 1
    assert stats.kstest(v.numpy(), "uniform").pvalue > 1e-3


def test_inpaint_fills_plausible_non_constant_values():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 * (xx + yy)]).unsqueeze(0)   # smooth gradients
    mask = torch.zeros(1, 48, 48, dtype=torch.bool)
    mask[0, 14:30, 18:34] = True
    out = apply_fill(img, mask, "inpaint")
    inside = out[0][:, mask[0]]
    assert torch.equal(out[0][:, ~mask[0]], img[0][:, ~mask[0]])
    assert inside.std(dim=1).min() > 0.02                              # not a constant
    assert (inside - img[0][:, mask[0]]).abs().mean() < 0.06             # close to the hidden gradient
    er = BatchRandomErasing(fill="inpaint", generator=gen(10))
    gray = er(torch.rand(2, 1, 24, 24, generator=gen(11)))               # other channel counts work too
    assert gray.shape == (2, 1, 24, 24) and gray.min() >= 0 and gray.max() <= 1


def test_mean_fill_on_one_channel_uses_average_mean():
    out = BatchRandomErasing(generator=gen(12))(torch.zeros(2, 1, 16, 16))
    assert torch.allclose(out[out != 0], torch.tensor(sum(IMAGENET_MEAN) / 3))


# ----------------------------------------------------------------------------------------- two forms
def test_single_and_batched_forms_agree_in_distribution():
    n = 3000
    single = single_boxes(n, seed=13)
    a1 = np.array([h * w for _, _, h, w in single])
    c1 = np.array([t + h / 2 for t, _, h, _ in single])
    d1 = np.array([l + w / 2 for _, l, _, w in single])
    b = BatchRandomErasing().sample_boxes(n, H, W, generator=gen(14))
    a2 = b.area().numpy()
    c2 = (b.top + b.height / 2).numpy()
    d2 = (b.left + b.width / 2).numpy()
    for u, v in ((a1, a2), (c1, c2), (d1, d2)):
        assert stats.ks_2samp(u, v).pvalue > 1e-3
    # and both match torchvision's own sampler (the released code's eraser)
    import torchvision.transforms as T

    torch.manual_seed(15)
    tv = np.array([T.RandomErasing.get_params(torch.zeros(3, H, W), (LOWER, AE), (1.0, 1.0), [0.0])[2] ** 2
                   for _ in range(n)])
    assert stats.ks_2samp(tv, a2).pvalue > 1e-3


def test_single_image_module_in_a_torchvision_pipeline():
    from torchvision.transforms import v2

    pipe = v2.Compose([v2.RandomHorizontalFlip(), RandomErasing(area=0.4)])
    x = torch.rand(3, 40, 40, generator=gen(16))
    out = pipe(x)
    changed = (out != x).any(0) & (out != x.flip(-1)).any(0)
    frac = float(changed.float().mean())
    assert out.shape == x.shape and 0.05 < frac <= 0.42
    assert "RandomErasing(area=0.4, lower=0.1, ratio=(1.0, 1.0), fill='mean')" in repr(pipe)
    out2, label = pipe(x, 7)                                  # (image, label) samples pass the label through
    assert label == 7 and (out2 != x).any(0).float().mean() > 0.05


def test_seeded_generators_reproduce_and_differ():
    x = torch.rand(8, 3, 32, 32, generator=gen(17))
    e = BatchRandomErasing()
    assert torch.equal(e(x, generator=gen(1)), e(x, generator=gen(1)))
    assert not torch.equal(e(x, generator=gen(1)), e(x, generator=gen(2)))
    assert RandomErasing(generator=gen(3)).sample_box(H, W) == RandomErasing(generator=gen(3)).sample_box(H, W)
    # every call erases a new region
    boxes = {RandomErasing(generator=gen(4)).sample_box(H, W)}
    e1 = RandomErasing(generator=gen(4))
    assert len({e1.sample_box(H, W) for _ in range(20)} | boxes) > 15


def test_position_any_follows_the_papers_literal_rejection_sampling():
    """sec. 2.2's text: corner anywhere, then s; re-draw both while the square sticks out."""
    b = sample_boxes(20000, H, W, position="any", generator=gen(40))
    assert (b.top + b.height <= H).all() and (b.left + b.width <= W).all() and torch.equal(b.height, b.width)
    # accepted share density ~ U(lower, a_e) * (H - side + 1) * (W - side + 1): smaller regions win
    s = np.linspace(LOWER, AE, 200001)
    side = np.round(np.sqrt(s * H * W))
    wgt = (H - side + 1) * (W - side + 1)
    expect = float((side ** 2 / (H * W) * wgt).sum() / wgt.sum())
    got = float(b.area().double().mean() / (H * W))
    assert abs(got - expect) < 0.003 and got < (LOWER + AE) / 2 - 0.02
    single = single_boxes(2000, 41, position="any")
    assert stats.ks_2samp(np.array([x[2] for x in single]), b.height.numpy()).pvalue > 1e-3
    assert stats.ks_2samp(np.array([x[0] + x[2] / 2 for x in single]), (b.top + b.height / 2).numpy()).pvalue > 1e-3
    assert "position='any'" in repr(BatchRandomErasing(position="any"))


@pytest.mark.parametrize("r", [0.5, 2.0])
def test_aspect_ratio_variants(r):
    b = sample_boxes(4000, H, W, ratio=(r, r), generator=gen(18))
    hw = (b.height.double() / b.width.double())
    assert abs(float(hw.median()) - r) < 0.1
    assert (b.top + b.height <= H).all() and (b.left + b.width <= W).all()
    b2 = sample_boxes(4000, H, W, ratio=(0.5, 2.0), generator=gen(19))
    logr = torch.log(b2.height.double() / b2.width.double())
    assert abs(float(logr.mean())) < 0.03 and float(logr.min()) < -0.5 and float(logr.max()) > 0.5


def test_redraw_until_fits_on_non_square_images():
    # 16x64 image, squares of share up to 0.4: side up to 20 > 16, so many draws must be re-drawn
    b = sample_boxes(3000, 16, 64, area=0.4, lower=0.1, generator=gen(20))
    assert (b.height <= 16).all() and (b.height > 0).all()
    frac = b.area().double() / (16 * 64)
    assert frac.max() <= 0.25 + 1e-9 and frac.min() >= 0.09        # the truncated distribution
    single = [s[2] for s in single_boxes(1500, 21, 16, 64)]
    assert stats.ks_2samp(np.array(single), b.height.numpy()).pvalue > 1e-3


def test_max_attempts_reproduces_torchvision_leave_unchanged():
    x = torch.rand(4, 3, 8, 64, generator=gen(22))
    # sides round(sqrt(s*512)) >= 16 > 8: never fits
    out = BatchRandomErasing(area=0.4, lower=0.3, max_attempts=10, generator=gen(23))(x)
    assert torch.equal(out, x)
    img = x[0]
    assert torch.equal(RandomErasing(area=0.4, lower=0.3, max_attempts=10, generator=gen(24))(img), img)
    with pytest.raises(ArgumentError, match="fits"):
        BatchRandomErasing(area=0.4, lower=0.3)(x)
    with pytest.raises(ArgumentError, match="fits"):
        RandomErasing(area=0.4, lower=0.3)(img)
    # torchvision's strict test: a full-side square (a_e = 1) never fits there, but it does in Algorithm 1
    b = sample_boxes(500, 8, 8, area=1.0, lower=0.9, max_attempts=10, generator=gen(25))
    assert (b.height < 8).all()
    b = sample_boxes(500, 8, 8, area=1.0, lower=0.9, generator=gen(25))
    assert (b.height == 8).any()


def test_probability_p_and_explicit_size():
    b = sample_boxes(4000, 32, 32, p=0.25, generator=gen(26))
    assert abs(float((b.height > 0).double().mean()) - 0.25) < 0.03
    b = sample_boxes(100, 32, 32, size=(8, 12), generator=gen(27))
    assert (b.height == 8).all() and (b.width == 12).all() and (b.left + 12 <= 32).all()
    assert RandomErasing(size=5, generator=gen(28)).sample_box(16, 16)[2:] == (5, 5)
    with pytest.raises(ArgumentError, match="larger than"):
        sample_boxes(2, 16, 16, size=20)
    with pytest.raises(ArgumentError, match="larger than"):
        RandomErasing(size=(4, 17))(torch.rand(3, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batched_on_gpu_stays_on_device():
    x = torch.rand(64, 3, 32, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out, b = BatchRandomErasing()(x, generator=g, return_boxes=True)
    assert out.device.type == "cuda" and b.top.device.type == "cuda"
    frac = b.area().double() / 1024
    assert frac.min() >= 0.09 and frac.max() <= 0.41


# ----------------------------------------------------------------------------------------- ablations
def test_fixed_erasing_repeats_per_image_and_differs_across_images():
    fe = FixedErasing(seed=3)
    x = torch.rand(6, 3, 32, 32, generator=gen(29))
    idx = torch.tensor([0, 5, 9000, 3, 77, 12])
    a = fe(x, None, idx)
    for epoch in range(3):                                       # same region every epoch / call
        fe.set_epoch(epoch)
        assert torch.equal(fe(x, None, idx, generator=gen(epoch)), a)
    perm = torch.tensor([3, 1, 0, 5, 4, 2])                      # independent of the batch composition
    assert torch.equal(fe(x[perm], None, idx[perm]), a[perm])
    b = fe.boxes_for(torch.arange(400), 32, 32)
    keys = set(zip(b.top.tolist(), b.left.tolist(), b.height.tolist()))
    assert len(keys) > 300                                       # different images differ
    assert abs(float(b.area().double().mean() / 1024) - 0.25) < 0.02
    b2 = FixedErasing(seed=4).boxes_for(torch.arange(400), 32, 32)
    assert not torch.equal(b.top, b2.top)
    with pytest.raises(ArgumentError, match="indices"):
        fe(x)


def test_entire_erasing_exact_share_per_identity_per_epoch():
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate([10, 20, 7, 3, 40])])
    targets = targets[torch.randperm(len(targets), generator=gen(30))]
    ee = EntireErasing(share=0.3, seed=1).set_targets(targets)
    plans = []
    for epoch in range(4):
        ee.set_epoch(epoch)
        plan = ee.selection()
        for c, n in enumerate([10, 20, 7, 3, 40]):
            assert int(plan[targets == c].sum()) == math.floor(0.3 * n + 0.5)
        plans.append(plan)
    assert not torch.equal(plans[0], plans[1]) and not torch.equal(plans[1], plans[2])
    ee.set_epoch(0)
    assert torch.equal(ee.selection(), plans[0])                  # keyed by (seed, epoch): reproducible
    # forward erases WHOLE images exactly for the selected indices
    idx = torch.arange(0, 80, 3)
    x = torch.rand(len(idx), 3, 16, 16, generator=gen(31))
    out = ee(x, targets[idx], idx)
    whole = (out == torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).all(1).all(-1).all(-1)
    assert torch.equal(whole, plans[0][idx])
    assert torch.equal(out[~whole], x[~whole])
    with pytest.raises(ArgumentError, match="labels"):
        ee(x, (targets[idx] + 1) % 5, idx)
    with pytest.raises(ArgumentError, match="set_targets"):
        EntireErasing(0.3)(x, None, idx)


def test_random_pixel_masking_fraction():
    x = torch.full((8, 3, 32, 32), -1.0)
    rp = RandomPixelMasking(0.3, generator=gen(32))
    m = rp.sample_mask(x)
    assert (m.sum((1, 2)) == round(0.3 * 1024)).all()
    out = rp(x)
    changed = (out != -1).all(1)
    assert (changed.sum((1, 2)) == round(0.3 * 1024)).all()       # all channels of a masked pixel
    assert out.max() <= 1 and out[out != -1].min() >= 0
    m2 = RandomPixelMasking((0.1, 0.6), generator=gen(33)).sample_mask(torch.zeros(2000, 1, 8, 8))
    f = m2.double().mean((1, 2))
    assert f.min() >= 0.09 and f.max() <= 0.61 and abs(float(f.mean()) - 0.35) < 0.01
    assert not torch.equal(rp.sample_mask(x)[0], rp.sample_mask(x)[0])


@pytest.mark.parametrize("n", [4, 8])
def test_multi_patch_total_area_equals_one_midre_square(n):
    mp = MultiPatchErasing(patches=n, area=AE, lower=LOWER)
    b = mp.sample_boxes(5000, H, W, generator=gen(34))
    assert b.top.shape == (5000, n)
    assert (b.height == b.width).all() and (b.height == b.height[:, :1]).all()   # n equal squares per image
    total = b.area().sum(1).double() / (H * W)
    side = lambda s: math.sqrt(s * H * W / n)
    assert total.min() >= n * round(side(LOWER)) ** 2 / (H * W) - 1e-9
    assert total.max() <= n * round(side(AE)) ** 2 / (H * W) + 1e-9
    assert abs(float(total.mean()) - (LOWER + AE) / 2) < 0.01
    assert (b.top + b.height <= H).all() and (b.left + b.width <= W).all()
    x = torch.rand(4, 3, H, W, generator=gen(35))
    m = mp.sample_mask(x, generator=gen(36))
    assert m.shape == (4, H, W) and (m.double().mean((1, 2)) <= AE + 0.02).all()


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make", [
    lambda: RandomErasing(area=1.5),
    lambda: RandomErasing(area=0.05),             # a_e < lower
    lambda: RandomErasing(area=0.4, lower=0.0),
    lambda: RandomErasing(area=0.4, lower=0.5),        # lower > a_e (lower == a_e is a fixed share)
    lambda: RandomErasing(area="big"),
    lambda: RandomErasing(area=True),
    lambda: RandomErasing(ratio=(2.0, 1.0)),
    lambda: RandomErasing(ratio=(0.0, 1.0)),
    lambda: RandomErasing(ratio=(-1.0, 1.0)),
    lambda: RandomErasing(ratio="square"),
    lambda: RandomErasing(fill="meen"),
    lambda: RandomErasing(fill=(0.1, 1.5, 0.2)),
    lambda: RandomErasing(fill=[]),
    lambda: RandomErasing(fill="random", released=True),
    lambda: RandomErasing(p=1.5),
    lambda: RandomErasing(max_attempts=0),
    lambda: RandomErasing(position="anywhere"),
    lambda: sample_boxes(4, 16, 16, position="center"),
    lambda: RandomErasing(size=(0, 3)),
    lambda: RandomErasing(generator=5),
    lambda: BatchRandomErasing(fill=(0.1, 0.2))(torch.rand(2, 3, 8, 8)),       # fill length != channels
    lambda: BatchRandomErasing()(torch.rand(3, 8, 8)),                          # wrong ndim
    lambda: BatchRandomErasing()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)),   # not float
    lambda: BatchRandomErasing()(np.zeros((2, 3, 8, 8), np.float32)),           # not a tensor
    lambda: RandomErasing()(torch.rand(2, 3, 8, 8)),
    lambda: RandomErasing()(torch.zeros(3, 8, 8, dtype=torch.int64)),
    lambda: sample_boxes(4, 16, 16, size=32),                                   # region larger than image
    lambda: FixedErasing(seed="x"),
    lambda: EntireErasing(share=0.0),
    lambda: EntireErasing(share=1.0),
    lambda: EntireErasing(fill="inpaint"),
    lambda: EntireErasing(0.5).set_targets(torch.rand(5)),
    lambda: RandomPixelMasking(fraction=1.2),
    lambda: RandomPixelMasking(fraction=(0.6, 0.1)),
    lambda: RandomPixelMasking(fraction=0.0),
    lambda: MultiPatchErasing(patches=0),
    lambda: MultiPatchErasing(area=2.0),
    lambda: build_eraser("random", areaa=0.4),
])
def test_invalid_arguments_raise_one_line_argument_error(make):
    with pytest.raises(ArgumentError) as e:
        make()
    assert "\n" not in str(e.value) and len(str(e.value)) > 20


def test_unknown_fill_suggests_the_right_name():
    with pytest.raises(ArgumentError, match="did you mean 'mean'"):
        RandomErasing(fill="meen")


def test_registry_and_build_eraser():
    assert set(ERASERS.names()) == {"random", "fixed", "entire", "random_pixels", "multi_patch"}
    assert isinstance(build_eraser("random", area=0.3), BatchRandomErasing)
    assert build_eraser("multi_patch", patches=8).patches == 8
    with pytest.raises(UnknownNameError, match="did you mean 'fixed'"):
        build_eraser("fixd")
    with pytest.raises(ArgumentError, match="did you mean 'area'"):
        build_eraser("random", areaa=0.4)


def test_boxes_to_mask_matches_slicing():
    b = Boxes(torch.tensor([0, 3]), torch.tensor([2, 0]), torch.tensor([4, 5]), torch.tensor([3, 0]))
    m = boxes_to_mask(b, 8, 8)
    ref = torch.zeros(2, 8, 8, dtype=torch.bool)
    ref[0, 0:4, 2:5] = True
    assert torch.equal(m, ref)


def test_lower_equal_to_area_erases_a_fixed_share():
    """The paper's a_e sweep (Fig. 2) and its D.2 ablation erase a fixed share s = a_e; torchvision accepts
    scale=(a, a) and so does midre (the square's side is round(sqrt(a * H * W)))."""
    out = RandomErasing(area=0.25, lower=0.25, generator=gen(3))
    img = torch.rand(3, 32, 32)
    for _ in range(5):
        erased = (out(img) != img).any(0).float().mean().item()
        assert erased == pytest.approx(0.25, abs=1e-6)
