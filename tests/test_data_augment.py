"""Batched augmentation against independent references: torchvision's functional transforms
applied image by image, and plain slicing / interpolation for crops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from subspace_fsl.data.augment import (
    CROP_RATIO,
    CROP_SCALE,
    AugmentParams,
    augment,
    color_jitter,
    crop_and_flip,
    draw_params,
)


def _params(n: int, box=(0.0, 0.0, 1.0, 1.0), flip=False, b=1.0, c=1.0, s=1.0) -> AugmentParams:
    return AugmentParams(
        box=torch.tensor([box] * n, dtype=torch.float64),
        flip=torch.full((n,), flip),
        brightness=torch.full((n,), b),
        contrast=torch.full((n,), c),
        saturation=torch.full((n,), s),
    )


def _images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_identity_parameters_return_the_images_unchanged():
    images = _images()
    torch.testing.assert_close(crop_and_flip(images, _params(4)), images, rtol=0, atol=1e-6)
    torch.testing.assert_close(color_jitter(images, _params(4)), images, rtol=0, atol=1e-6)


def test_a_flip_mirrors_the_image():
    images = _images()
    flipped = crop_and_flip(images, _params(4, flip=True))
    torch.testing.assert_close(flipped, images.flip(-1), rtol=0, atol=1e-6)


def test_a_crop_equals_bilinear_resizing_of_the_sliced_region():
    images = _images(2, 32).double()
    # the 16 x 16 region at rows 8.., columns 4.. upscaled x2
    out = crop_and_flip(images, _params(2, box=(4 / 32, 8 / 32, 0.5, 0.5)))
    region = images[:, :, 8:24, 4:20]
    reference = F.interpolate(region, size=(32, 32), mode="bilinear", align_corners=False)
    # the outermost ring may interpolate with pixels just outside the region; compare inside
    torch.testing.assert_close(out[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1])


def test_color_jitter_matches_torchvision_functional_per_image():
    images = _images(6)
    factors = torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4])
    params = AugmentParams(
        box=torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 6),
        flip=torch.zeros(6, dtype=torch.bool),
        brightness=factors,
        contrast=factors.flip(0),
        saturation=factors.roll(2),
    )
    out = color_jitter(images, params)
    for i in range(6):
        expected = TF.adjust_brightness(images[i], float(params.brightness[i]))
        expected = TF.adjust_contrast(expected, float(params.contrast[i]))
        expected = TF.adjust_saturation(expected, float(params.saturation[i]))
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5)


def test_drawn_parameters_follow_torchvisions_ranges_and_differ_per_image():
    params = draw_params(2000, 84, 84, torch.Generator().manual_seed(1))
    left, top, w, h = params.box.unbind(1)
    area, ratio = w * h, w / h
    assert ((left >= 0) & (top >= 0) & (left + w <= 1 + 1e-9) & (top + h <= 1 + 1e-9)).all()
    # rounding crop sides to whole pixels moves area and ratio by a pixel's worth
    slack = 2 / 84
    assert area.min() >= CROP_SCALE[0] - slack and area.max() <= 1.0
    assert ratio.min() >= CROP_RATIO[0] - slack and ratio.max() <= CROP_RATIO[1] + slack
    assert torch.allclose(w * 84, (w * 84).round())  # whole pixels, as torchvision's crops
    assert len(torch.unique(params.box, dim=0)) > 1500
    assert 0.45 < params.flip.float().mean() < 0.55
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor.min() >= 0.6 and factor.max() <= 1.4
        assert abs(factor.mean().item() - 1.0) < 0.02


def test_augment_is_reproducible_from_the_global_seed_and_stays_in_range():
    images = _images(8, 24)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    second = augment(images)
    assert torch.equal(first, second)
    assert first.shape == images.shape
    assert first.min() >= 0 and first.max() <= 1
    # every image is transformed differently
    deltas = (first - images).flatten(1).norm(dim=1)
    assert len({round(d, 4) for d in deltas.tolist()}) == 8


def test_float64_and_channels_last_inputs_are_handled():
    images = _images(3, 20).double().contiguous(memory_format=torch.channels_last)
    out = augment(images, _params(3, box=(0.25, 0.25, 0.5, 0.5), flip=True, b=1.2))
    assert out.dtype == torch.float64 and out.shape == images.shape
    assert math.isfinite(out.sum().item())


def test_policy_registry_names_the_three_policies_and_refuses_others():
    import pytest

    from subspace_fsl.data.augment import AUGMENT_POLICIES

    assert AUGMENT_POLICIES.names() == ["flip", "none", "standard"]
    with pytest.raises(ValueError, match="unknown augmentation policy 'jitter'"):
        AUGMENT_POLICIES.get("jitter")


def test_none_policy_is_the_identity_and_flip_policy_mirrors_per_image():
    from subspace_fsl.data.augment import AUGMENT_POLICIES, random_flip

    images = _images(6, 12)
    assert AUGMENT_POLICIES.get("none")(images) is images
    flip = torch.tensor([True, False, True, False, False, True])
    out = random_flip(images, flip)
    for i in range(6):  # torchvision's own horizontal flip, image by image
        expected = TF.horizontal_flip(images[i]) if flip[i] else images[i]
        assert torch.equal(out[i], expected)
    # a fresh draw flips about half, reproducibly from the global seed, and changes no pixel value
    many = _images(400, 8)
    torch.manual_seed(5)
    first = AUGMENT_POLICIES.get("flip")(many)
    torch.manual_seed(5)
    assert torch.equal(first, AUGMENT_POLICIES.get("flip")(many))
    flipped = (first != many).flatten(1).any(dim=1)
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(first.flatten(1).sort(dim=1).values, many.flatten(1).sort(dim=1).values)


def test_standard_policy_is_crop_flip_and_jitter():
    from subspace_fsl.data.augment import AUGMENT_POLICIES

    images = _images(5, 16)
    torch.manual_seed(9)
    expected = augment(images)
    torch.manual_seed(9)
    assert torch.equal(AUGMENT_POLICIES.get("standard")(images), expected)


def test_train_augment_takes_a_policy_name_and_refuses_the_old_boolean():
    import pytest

    from subspace_fsl.config import ConfigError, load_config

    assert load_config()["train"]["augment"] == "standard"
    assert load_config(overrides=["train.augment=flip"])["train"]["augment"] == "flip"
    with pytest.raises(ConfigError, match=r"train\.augment: True is not one of"):
        load_config(overrides=["train.augment=true"])
