"""Erasure geometry (midre.analysis.geometry, `midre analyze geometry`): a box equal to the frame loses
exactly the square's area share; the synthetic inner-face box is about a quarter of the frame; the CelebA box
is larger, so the same a_e erases a smaller share of it."""
import pytest

from midre.analysis.geometry import box_mask, celeba_box, erased_share, synthetic_box


def test_whole_frame_box_loses_the_area_share():
    r = erased_share((-1, -1, 1, 1), 64, 0.4, n=4000)
    assert r["box_frame_share"] == 1.0
    assert r["mean"] == pytest.approx((0.1 + 0.4) / 2, abs=0.01)     # s ~ U(0.1, a_e), rounded to whole pixels
    assert r["over_80"] == 0.0


def test_face_boxes_and_ordering():
    syn, cel = synthetic_box(), celeba_box()
    assert float(box_mask(syn, 64).double().mean()) == pytest.approx(0.26, abs=0.01)
    assert all(-1 <= v <= 1 for v in cel) and cel[3] == 1.0          # the 108 crop ends just below the mouth
    assert float(box_mask(cel, 64).double().mean()) > 0.35
    s04, s08 = erased_share(syn, 64, 0.4, n=4000), erased_share(syn, 64, 0.8, n=4000)
    assert 0.45 < s04["mean"] < s08["mean"]
    assert erased_share(cel, 64, 0.4, n=4000)["mean"] < s04["mean"]
