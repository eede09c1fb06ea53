"""DINO's batched multi-crop augmentation: configuration, crop geometry, each photometric operation against its
definition, randomness (independence, reproducibility), layout and numerics."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from data_helpers import smooth_image

from dino_hf.data import DinoMultiCropAugmentation, MultiCropConfig
from dino_hf.data.augmentation import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    rgb_to_grayscale,
    sample_crop_boxes,
    solarize,
)
from dino_hf.image_processing_dino import IMAGENET_MEAN, IMAGENET_STD


def _small_config(**overrides) -> MultiCropConfig:
    return MultiCropConfig(global_crops_size=32, local_crops_size=16, local_crops_number=3, **overrides)


def _batch(shapes, seed=0):
    """A zero-padded uint8 batch of smooth random images with the given (height, width)."""
    height = max(h for h, _ in shapes)
    width = max(w for _, w in shapes)
    images = torch.zeros(len(shapes), 3, height, width, dtype=torch.uint8)
    for i, (h, w) in enumerate(shapes):
        images[i, :, :h, :w] = torch.from_numpy(smooth_image(h, w, seed=seed + i)).permute(2, 0, 1)
    return images, torch.tensor(shapes, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers():
    c = MultiCropConfig()
    assert (c.global_crops_number, c.global_crops_size, c.global_crops_scale) == (2, 224, (0.4, 1.0))
    assert (c.local_crops_number, c.local_crops_size, c.local_crops_scale) == (10, 96, (0.05, 0.4))
    assert c.ratio == pytest.approx((3 / 4, 4 / 3))
    assert (c.flip_p, c.color_jitter_p, c.brightness, c.contrast, c.saturation, c.hue) == (
        0.5,
        0.8,
        0.4,
        0.4,
        0.2,
        0.1,
    )
    assert (c.grayscale_p, c.blur_sigma, c.blur_p_global, c.blur_p_local) == (0.2, (0.1, 2.0), (1.0, 0.1), 0.5)
    assert c.solarize_p_global == (0.0, 0.2) and c.solarize_threshold == pytest.approx(128 / 255)
    assert c.mean == IMAGENET_MEAN and c.std == IMAGENET_STD


def test_config_round_trips_through_json_and_accepts_lists():
    c = MultiCropConfig(local_crops_number=6, blur_p_global=[0.9, 0.2])
    restored = MultiCropConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert restored == c and restored.blur_p_global == (0.9, 0.2)
    assert MultiCropConfig(global_crops_number=3, solarize_p_global=0.1).solarize_p_global == (0.1, 0.1, 0.1)
    # Global crop i takes entry i; the last entry repeats, extra entries are unused.
    assert MultiCropConfig(global_crops_number=3).blur_p_global == (1.0, 0.1, 0.1)
    assert MultiCropConfig(global_crops_number=1).solarize_p_global == (0.0,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"global_crops_number": 0}, "global_crops_number"),
        ({"local_crops_size": -1}, "local_crops_size"),
        ({"global_crops_scale": (0.5, 0.4)}, "global_crops_scale"),
        ({"local_crops_scale": (0.0, 0.4)}, "local_crops_scale"),
        ({"ratio": (1.5, 1.0)}, "ratio"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.1}, "brightness"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"blur_p_global": ()}, "blur_p_global"),
        ({"solarize_p_global": (0.0, 2.0)}, "solarize_p_global"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        MultiCropConfig(**overrides)


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="local_crops"):
        MultiCropConfig.from_dict({"local_crops": 4})


def test_decode_min_pixels_keeps_the_smallest_crops_at_full_resolution():
    # 96^2 * (4/3) / 0.05 for the paper's local crops, which need more pixels than the global ones.
    assert MultiCropConfig().decode_min_pixels == math.ceil(96**2 * (4 / 3) / 0.05)
    assert MultiCropConfig(local_crops_number=0).decode_min_pixels == math.ceil(224**2 * (4 / 3) / 0.4)


# ---------------------------------------------------------------------------------------------------------------------
# Crop geometry
# ---------------------------------------------------------------------------------------------------------------------


def _torchvision_crop(height, width, u, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, written out, fed the same uniforms."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[attempt])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[10 + attempt])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_boxes_follow_torchvision_sampling():
    generator = torch.Generator().manual_seed(0)
    shapes = [(375, 500), (500, 333), (64, 64), (100, 1000), (40, 30)]
    sizes = torch.tensor(shapes * 200)
    uniforms = torch.rand(1, len(sizes), 22, generator=generator)
    for scale in ((0.4, 1.0), (0.05, 0.4)):
        boxes = sample_crop_boxes(sizes, uniforms, scale, (3 / 4, 4 / 3))[0]
        expected = torch.tensor(
            [
                _torchvision_crop(int(h), int(w), uniforms[0, i].double().tolist(), scale, (3 / 4, 4 / 3))
                for i, (h, w) in enumerate(sizes.tolist())
            ],
            dtype=torch.float32,
        )
        # float32 here vs float64 there can round a side differently at an exact .5: allow a handful.
        mismatched = (boxes != expected).any(dim=1).float().mean().item()
        assert mismatched < 0.005


def test_crop_area_and_aspect_ratio_distributions():
    generator = torch.Generator().manual_seed(1)
    n = 20_000
    sizes = torch.tensor([[400, 400]] * n)
    uniforms = torch.rand(1, n, 22, generator=generator)
    boxes = sample_crop_boxes(sizes, uniforms, (0.05, 0.4), (3 / 4, 4 / 3))[0]
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 400).all() and (left + w <= 400).all()
    area = h * w / 400**2
    log_aspect = torch.log(w / h)
    # Rounding sides to whole pixels moves the area and ratio by at most about 1 / side.
    assert area.min() >= 0.05 * 0.97 and area.max() <= 0.4 * 1.03
    assert log_aspect.abs().max() <= math.log(4 / 3) + 0.02
    # On a square image every first attempt fits, so the area fraction is uniform and the log-ratio too.
    assert area.mean().item() == pytest.approx(0.225, abs=0.003)
    assert area.std().item() == pytest.approx(0.35 / math.sqrt(12), abs=0.003)
    quartiles = torch.quantile(log_aspect, torch.tensor([0.25, 0.5, 0.75]))
    expected_quartiles = torch.tensor([-0.5, 0.0, 0.5]) * math.log(4 / 3)
    assert torch.allclose(quartiles, expected_quartiles, atol=0.01)
    # Positions are uniform over the free range.
    relative_top = top / (400 - h).clamp(min=1)
    assert relative_top.mean().item() == pytest.approx(0.5, abs=0.01)


def test_crop_fallback_is_the_ratio_clamped_centre_crop():
    # No crop with a ratio in [3/4, 4/3] and 40-100% of the area fits in a 1000x100 or 100x1000 image.
    sizes = torch.tensor([[1000, 100], [100, 1000], [300, 300]])
    uniforms = torch.full((1, 3, 22), 0.99)  # large areas: even the square image cannot fit any attempt
    boxes = sample_crop_boxes(sizes, uniforms, (0.4, 1.0), (3 / 4, 4 / 3))[0]
    tall_h = round(100 / 0.75)
    wide_w = round(100 * 4 / 3)
    expected = [[(1000 - tall_h) // 2, 0, tall_h, 100], [0, (1000 - wide_w) // 2, 100, wide_w], [0, 0, 300, 300]]
    assert boxes.tolist() == expected


# ---------------------------------------------------------------------------------------------------------------------
# Photometric operations against their definitions (torchvision's tensor formulas, written out)
# ---------------------------------------------------------------------------------------------------------------------


def _random_images(n=6, size=5, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _gray(x):
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def test_grayscale_uses_torchvision_weights():
    x = _random_images()
    torch.testing.assert_close(rgb_to_grayscale(x), _gray(x))


def test_brightness_contrast_saturation_are_clamped_blends():
    x = _random_images()
    f = torch.tensor([0.6, 1.0, 1.4, 0.0, 1.2, 0.8])
    fv = f.view(-1, 1, 1, 1)
    torch.testing.assert_close(adjust_brightness(x, f), (fv * x).clamp(0, 1))
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, f), (fv * x + (1 - fv) * mean).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, f), (fv * x + (1 - fv) * _gray(x)).clamp(0, 1))


def test_saturation_and_hue_leave_grayscale_images_unchanged():
    x = _gray(_random_images()).expand(-1, 3, -1, -1).contiguous()
    # torchvision's luma weights sum to 0.9999, so a grey pixel's luma is 0.9999 of it: unchanged within 1e-4.
    torch.testing.assert_close(adjust_saturation(x, torch.full((6,), 1.2)), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(adjust_saturation(x, torch.full((6,), 0.8)), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.linspace(-0.5, 0.5, 6)), x, atol=0, rtol=0)


def _torchvision_adjust_hue(img, hue_factor):
    """torchvision's _rgb2hsv -> shift -> _hsv2rgb, written out for one image."""
    r, g, b = img.unbind(dim=-3)
    maxc = torch.max(img, dim=-3).values
    minc = torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = (h + hue_factor) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = torch.clamp(v * (1.0 - s), 0.0, 1.0)
    q = torch.clamp(v * (1.0 - s * f), 0.0, 1.0)
    t = torch.clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    mask = i.unsqueeze(dim=-3) == torch.arange(6).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(img.dtype), torch.stack((a1, a2, a3), dim=-4))


def test_hue_matches_torchvision_hsv_round_trip():
    x = _random_images(n=8, size=7)
    shifts = torch.tensor([-0.5, -0.3, -0.1, -0.01, 0.0, 0.05, 0.25, 0.5])
    expected = torch.stack([_torchvision_adjust_hue(x[i], float(shifts[i])) for i in range(8)])
    torch.testing.assert_close(adjust_hue(x, shifts), expected, atol=2e-6, rtol=0)
    # Pure red shifted by a third of the wheel is pure green.
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1))


def test_solarize_inverts_pixels_at_or_above_the_threshold():
    x = torch.tensor([0.0, 0.2, 127 / 255, 128 / 255, 0.75, 1.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    out = solarize(x, 128 / 255)
    expected = torch.tensor([0.0, 0.2, 127 / 255, 1 - 128 / 255, 0.25, 0.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    torch.testing.assert_close(out, expected)


def test_gaussian_blur_equals_direct_convolution_with_edge_replication():
    x = _random_images(n=3, size=11, seed=3)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    radius = 6
    out = gaussian_blur(x, sigma, radius=radius)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    offsets = np.arange(-radius, radius + 1)
    for n, s in enumerate(sigma.tolist()):
        k1 = np.exp(-0.5 * (offsets / s) ** 2)
        kernel = np.outer(k1, k1) / k1.sum() ** 2
        expected = np.zeros((3, 11, 11))
        for i in range(11):
            for j in range(11):
                expected[:, i, j] = (padded[n, :, i : i + 2 * radius + 1, j : j + 2 * radius + 1] * kernel).sum((1, 2))
        np.testing.assert_allclose(out[n].numpy(), expected, atol=1e-5)
    # A blur keeps constant images and (nearly) the mean of any image.
    constant = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 1.5, radius=4), constant)


def _sequential_jitter(x, order, factors):
    ops = {
        BRIGHTNESS: lambda y, f: adjust_brightness(y, f),
        CONTRAST: lambda y, f: adjust_contrast(y, f),
        SATURATION: lambda y, f: adjust_saturation(y, f),
        HUE: lambda y, f: adjust_hue(y, f),
    }
    for op in order:
        x = ops[op](x, factors[op])
    return x


def test_color_jitter_applies_each_images_own_order():
    generator = torch.Generator().manual_seed(5)
    n = 48
    x = torch.rand(n, 3, 6, 6, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    brightness = 0.6 + 0.8 * torch.rand(n, generator=generator)
    contrast = 0.6 + 0.8 * torch.rand(n, generator=generator)
    saturation = 0.8 + 0.4 * torch.rand(n, generator=generator)
    hue = -0.1 + 0.2 * torch.rand(n, generator=generator)
    out = color_jitter(x, order, brightness, contrast, saturation, hue)
    for i in range(n):
        factors = {BRIGHTNESS: brightness[i], CONTRAST: contrast[i], SATURATION: saturation[i], HUE: hue[i]}
        expected = _sequential_jitter(x[i : i + 1], order[i].tolist(), factors)
        torch.testing.assert_close(out[i : i + 1], expected, atol=2e-6, rtol=0)
    # The order matters: brightness-then-contrast differs from contrast-then-brightness on clamped images.
    assert len({tuple(o) for o in order.tolist()}) > 12


# ---------------------------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------------------------


def test_output_shapes_dtypes_and_value_ranges_at_paper_settings():
    images, sizes = _batch([(375, 500), (240, 180)])
    out = DinoMultiCropAugmentation()(images, sizes, generator=torch.Generator().manual_seed(0))
    assert out.global_crops.shape == (4, 3, 224, 224) and out.global_crops.dtype == torch.float32
    assert out.local_crops.shape == (20, 3, 96, 96) and out.local_crops.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for crops in (out.global_crops, out.local_crops):
        pixels = crops * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert torch.isfinite(crops).all()
    no_locals = MultiCropConfig(global_crops_size=32, local_crops_number=0)
    assert DinoMultiCropAugmentation(no_locals)(images, sizes).local_crops is None


def test_identity_settings_reproduce_the_normalised_image():
    # Whole-image crops at the image's own size, every random operation off: only the normalisation remains.
    config = MultiCropConfig(
        global_crops_size=48,
        global_crops_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        local_crops_number=0,
        flip_p=0.0,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        blur_p_global=0.0,
        solarize_p_global=0.0,
    )
    images, sizes = _batch([(48, 48), (48, 48)])
    out = DinoMultiCropAugmentation(config)(images, sizes)
    expected = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(out.global_crops, torch.cat([expected, expected]), atol=1e-4, rtol=0)


def test_flip_grayscale_and_solarize_in_the_module():
    config = _small_config(
        global_crops_scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter_p=0.0, blur_p_global=0.0, blur_p_local=0.0
    )
    augment = DinoMultiCropAugmentation(config)
    images, sizes = _batch([(32, 32), (32, 32), (32, 32)])
    global_params, _ = augment.sample_parameters(sizes, torch.Generator().manual_seed(0))
    off = torch.zeros_like(global_params.flip)
    plain = dataclasses.replace(global_params, flip=off, grayscale=off, solarize=off)
    base = augment.apply(images, plain, None).global_crops
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def pixels(crops):
        return crops * std + mean

    flipped = augment.apply(images, dataclasses.replace(plain, flip=~off), None).global_crops
    torch.testing.assert_close(flipped, base.flip(-1))
    gray = augment.apply(images, dataclasses.replace(plain, grayscale=~off), None).global_crops
    torch.testing.assert_close(pixels(gray), _gray(pixels(base)).expand(-1, 3, -1, -1), atol=1e-5, rtol=0)
    solar = augment.apply(images, dataclasses.replace(plain, solarize=~off), None).global_crops
    torch.testing.assert_close(pixels(solar), solarize(pixels(base), 128 / 255), atol=1e-5, rtol=0)


def test_crops_are_view_major():
    # Constant-colour images: every crop of image b has image b's colour, whatever its box.
    colours = torch.tensor([[10, 200, 30], [250, 0, 120], [90, 90, 90]], dtype=torch.uint8)
    images = colours.view(3, 3, 1, 1).expand(3, 3, 40, 50).contiguous()
    sizes = torch.tensor([[40, 50], [30, 50], [40, 20]])
    config = _small_config(color_jitter_p=0.0, grayscale_p=0.0, solarize_p_global=0.0)
    out = DinoMultiCropAugmentation(config)(images, sizes, generator=torch.Generator().manual_seed(0))
    expected = (colours.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for crops, views in ((out.global_crops, 2), (out.local_crops, 3)):
        per_crop = crops.mean(dim=(2, 3)).view(views, 3, 3)  # (view, image, channel)
        torch.testing.assert_close(per_crop, expected.expand(views, 3, 3), atol=1e-4, rtol=0)


def test_padding_and_batch_neighbours_do_not_leak_into_crops():
    augment = DinoMultiCropAugmentation(_small_config())
    images, sizes = _batch([(30, 40), (50, 20)])
    params = augment.sample_parameters(sizes, torch.Generator().manual_seed(3))
    reference = augment.apply(images, *params)
    garbage = images.clone()
    garbage[0, :, 30:, :] = 255
    garbage[0, :, :, 40:] = 77
    garbage[1, :, :, 20:] = 255
    leaked = augment.apply(garbage, *params)
    torch.testing.assert_close(leaked.global_crops, reference.global_crops)
    torch.testing.assert_close(leaked.local_crops, reference.local_crops)


def test_random_parameters_are_independent_per_crop_with_the_configured_rates():
    augment = DinoMultiCropAugmentation()
    sizes = torch.tensor([[300, 400]] * 4000)
    global_params, local_params = augment.sample_parameters(sizes, torch.Generator().manual_seed(0))

    def rate(flags):
        return flags.float().mean().item()

    assert rate(global_params.flip) == pytest.approx(0.5, abs=0.02)
    assert rate(local_params.jitter) == pytest.approx(0.8, abs=0.02)
    assert rate(local_params.grayscale) == pytest.approx(0.2, abs=0.02)
    assert rate(global_params.blur[0]) == 1.0 and rate(global_params.blur[1]) == pytest.approx(0.1, abs=0.02)
    assert rate(local_params.blur) == pytest.approx(0.5, abs=0.02)
    assert rate(global_params.solarize[0]) == 0.0 and rate(global_params.solarize[1]) == pytest.approx(0.2, abs=0.02)
    assert rate(local_params.solarize) == 0.0
    jittered = local_params.jitter
    assert local_params.brightness[jittered].min() >= 0.6 and local_params.brightness[jittered].max() <= 1.4
    assert local_params.saturation[jittered].min() >= 0.8 and local_params.saturation[jittered].max() <= 1.2
    assert local_params.hue[jittered].abs().max() <= 0.1
    assert (local_params.brightness[~jittered] == 1).all() and (local_params.hue[~jittered] == 0).all()
    assert local_params.sigma.min() >= 0.1 and local_params.sigma.max() <= 2.0
    # Every operation comes first in about a quarter of the crops: a uniformly random order.
    first = (
        torch.bincount(local_params.order[..., 0].flatten(), minlength=4).float() / local_params.order[..., 0].numel()
    )
    assert torch.allclose(first, torch.full((4,), 0.25), atol=0.02)
    # Independence: two views of the same image agree on a coin flip half of the time, and their boxes and
    # factors are uncorrelated.
    assert rate(local_params.flip[0] == local_params.flip[1]) == pytest.approx(0.5, abs=0.03)
    corr = torch.corrcoef(torch.stack([local_params.sigma[0], local_params.sigma[1], local_params.boxes[0, :, 2]]))
    assert corr[0, 1].abs() < 0.05 and corr[0, 2].abs() < 0.05
    assert (local_params.boxes[0] != local_params.boxes[1]).any(dim=1).float().mean() > 0.95


def test_seeded_reproducibility_and_different_seeds():
    augment = DinoMultiCropAugmentation(_small_config())
    images, sizes = _batch([(40, 60), (64, 48)])
    first = augment(images, sizes, generator=torch.Generator().manual_seed(7))
    again = augment(images, sizes, generator=torch.Generator().manual_seed(7))
    other = augment(images, sizes, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(first.global_crops, again.global_crops, atol=0, rtol=0)
    torch.testing.assert_close(first.local_crops, again.local_crops, atol=0, rtol=0)
    assert (first.global_crops - other.global_crops).abs().mean() > 0.1
    assert (first.local_crops - other.local_crops).abs().mean() > 0.1


def test_autocast_does_not_lower_precision():
    augment = DinoMultiCropAugmentation(_small_config())
    images, sizes = _batch([(40, 60), (64, 48)])
    reference = augment(images, sizes, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = augment(images, sizes, generator=torch.Generator().manual_seed(1))
    assert mixed.global_crops.dtype == torch.float32
    torch.testing.assert_close(mixed.global_crops, reference.global_crops, atol=0, rtol=0)
    torch.testing.assert_close(mixed.local_crops, reference.local_crops, atol=0, rtol=0)


def test_channels_last_input_gives_the_same_crops():
    augment = DinoMultiCropAugmentation(_small_config())
    images, sizes = _batch([(40, 60), (64, 48)])
    channels_last = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    params = augment.sample_parameters(sizes, torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        augment.apply(channels_last, *params).local_crops, augment.apply(images, *params).local_crops
    )


def test_rejects_bad_inputs():
    augment = DinoMultiCropAugmentation(_small_config())
    with pytest.raises(ValueError, match="images"):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([[8, 8], [8, 8]]))
    with pytest.raises(ValueError, match="sizes"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([8, 8]))


@pytest.mark.skipif(
    not os.environ.get("DINO_HF_SLOW_TESTS"), reason="torch.compile takes about a minute on CPU; DINO_HF_SLOW_TESTS=1"
)
def test_compiled_photometric_stage_matches_eager():
    config = _small_config()
    images, sizes = _batch([(40, 60), (64, 48)])
    params = DinoMultiCropAugmentation(config).sample_parameters(sizes, torch.Generator().manual_seed(4))
    eager = DinoMultiCropAugmentation(config).apply(images, *params)
    compiled = DinoMultiCropAugmentation(config, compile=True).apply(images, *params)
    torch.testing.assert_close(compiled.global_crops, eager.global_crops, atol=1e-4, rtol=0)
    torch.testing.assert_close(compiled.local_crops, eager.local_crops, atol=1e-4, rtol=0)
