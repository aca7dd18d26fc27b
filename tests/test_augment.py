"""train.augment: the released 224-px recipe's crop and colour jitter (midre.augment), seeded and off by default."""
from __future__ import annotations

import pytest
import torch

from midre.augment import Augment, augment_batch, color_jitter, random_resized_crop


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_full_scale_crop_and_zero_jitter_leave_the_batch_alone():
    x = torch.rand(4, 3, 16, 16, generator=_gen(1))
    assert torch.equal(random_resized_crop(x, (1.0, 1.0), _gen()), x)
    assert torch.equal(color_jitter(x, (0.0, 0.0, 0.0, 0.0), _gen()), x)


def test_crop_is_a_square_of_the_share_resized_back_per_image():
    x = torch.zeros(64, 1, 20, 20)
    x[..., :, 10:] = 1.0                                   # right half white
    out = random_resized_crop(x, (0.5, 0.5), _gen(2))
    assert out.shape == x.shape
    share = out.mean(dim=(1, 2, 3))
    assert share.min() < 0.3 and share.max() > 0.7         # per-image corners: some crops mostly black, some white
    assert (out.amin(dim=(1, 2, 3)) >= 0).all() and (out.amax(dim=(1, 2, 3)) <= 1).all()


def test_jitter_factors_follow_torchvision_ranges():
    x = torch.full((200, 3, 4, 4), 0.5)
    out = color_jitter(x, (0.2, 0.0, 0.0, 0.0), _gen(3))            # brightness only: 0.5 * U[0.8, 1.2]
    f = out[:, 0, 0, 0] / 0.5
    assert f.min() >= 0.8 - 1e-6 and f.max() <= 1.2 + 1e-6 and f.std() > 0.05


def test_same_seed_same_batch_other_seed_other_batch_and_per_image_draws():
    x = torch.rand(6, 3, 16, 16, generator=_gen(4))
    aug = Augment(crop_scale=(0.85, 1.0), color_jitter=(0.2, 0.2, 0.1, 0.1))
    a, b = augment_batch(x, aug, _gen(7)), augment_batch(x, aug, _gen(7))
    assert torch.equal(a, b) and not torch.equal(a, augment_batch(x, aug, _gen(8)))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("bad", [{"crop_scale": [0.9, 0.8]}, {"crop_scale": [0.0, 1.0]},
                                 {"color_jitter": [0.2, 0.2, 0.1, 0.7]}, {"color_jitter": [-0.1, 0, 0, 0]},
                                 {"crop": [0.8, 1.0]}])
def test_bad_settings_are_one_config_error(bad):
    from midre.config import validate_train
    from midre.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate_train("cfg.yaml", "defaults.train", {"augment": bad})
    assert "\n" not in str(e.value)


def test_unset_augment_is_left_out_of_the_train_dump_that_stage_keys_hash():
    from midre.config import validate_train

    assert "augment" not in validate_train("c", "t", {})
    full = validate_train("c", "t", {"augment": {"crop_scale": [0.85, 1.0]}})
    assert full["augment"]["crop_scale"] == [0.85, 1.0]


def test_training_with_augment_changes_the_weights_and_repeats_exactly(tmp_path):
    from midre.data import load_dataset
    from midre.models import create_model
    from midre.training import TrainConfig, train_classifier

    torch.set_num_threads(1)
    splits = load_dataset("synthetic", seed=0, num_private=4, num_public=4, images_per_id=12)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", amp=False, seed=0,
                      augment={"crop_scale": (0.85, 1.0), "color_jitter": (0.2, 0.2, 0.1, 0.1)})

    def run(out, c):
        torch.manual_seed(0)                                   # the same initial weights
        model = create_model("tinycnn", num_classes=4, resolution=32)
        return train_classifier(model, splits.private_train, splits.private_test, config=c, out_dir=out,
                                progress=False).model.state_dict()

    a, b = run(tmp_path / "a", cfg), run(tmp_path / "b", cfg)
    plain = run(tmp_path / "p", cfg.model_copy(update={"augment": None}))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
