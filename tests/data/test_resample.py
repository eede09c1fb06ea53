"""Antialiased bicubic crop-and-resize against PIL, and the evaluation transform against torchvision's recipe."""

import numpy as np
import pytest
import torch
from data_helpers import smooth_image
from PIL import Image

from dino_hf.data import EvalTransform
from dino_hf.data.resample import bicubic_resample_weights, resample
from dino_hf.image_processing_dino import IMAGENET_MEAN, IMAGENET_STD


def _crop_resize(array: np.ndarray, box: tuple[int, int, int, int], out_h: int, out_w: int) -> np.ndarray:
    """Our resampling of the crop `(top, left, height, width)` of an `(H, W, 3)` uint8 array."""
    top, left, height, width = box
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float()
    wy = bicubic_resample_weights(torch.tensor([float(top)]), torch.tensor([float(height)]), out_h, array.shape[0])
    wx = bicubic_resample_weights(torch.tensor([float(left)]), torch.tensor([float(width)]), out_w, array.shape[1])
    out = resample(image, wy[None], wx[None], value_range=(0.0, 255.0))
    return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "box, out_size",
    [
        ((0, 0, 120, 160), (60, 80)),  # whole image, shrink x2
        ((10, 17, 70, 93), (24, 24)),  # off-centre crop, shrink ~3-4x, aspect change
        ((33, 40, 21, 17), (96, 96)),  # small crop, enlarge ~5x
        ((0, 0, 120, 160), (120, 160)),  # identity
        ((5, 9, 100, 61), (37, 50)),  # shrink one axis, enlarge the other
    ],
)
def test_crop_resize_matches_pil(box, out_size):
    array = smooth_image(120, 160, seed=1)
    top, left, height, width = box
    out_h, out_w = out_size
    # torchvision's RandomResizedCrop on a PIL image crops, then resizes the crop (bicubic, antialiased).
    expected = np.asarray(
        Image.fromarray(array).crop((left, top, left + width, top + height)).resize((out_w, out_h), Image.BICUBIC),
        dtype=np.float32,
    )
    ours = _crop_resize(array, box, out_h, out_w)
    # PIL rounds the result of its first pass to uint8 (and picks which axis goes first); we keep float32 between
    # the passes. On this deliberately noisy image that leaves isolated pixels a few grey levels apart.
    assert np.abs(ours - expected).max() <= 3.0
    assert np.abs(ours - expected).mean() <= 0.5


def test_whole_image_resize_matches_pil_resize_with_box():
    array = smooth_image(90, 130, seed=2)
    expected = np.asarray(
        Image.fromarray(array).resize((50, 40), Image.BICUBIC, box=(0, 0, 130, 90)), dtype=np.float32
    )
    ours = _crop_resize(array, (0, 0, 90, 130), 40, 50)
    assert np.abs(ours - expected).max() <= 3.0
    assert np.abs(ours - expected).mean() <= 0.5


def test_high_frequency_pattern_does_not_alias_when_shrunk():
    # One-pixel stripes shrunk 8x: a low-pass resize gives flat grey; point sampling would give stripes or solid.
    height, width = 64, 256
    stripes = np.zeros((height, width, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    ours = _crop_resize(stripes, (0, 0, height, width), 8, 32)
    expected = np.asarray(Image.fromarray(stripes).resize((32, 8), Image.BICUBIC), dtype=np.float32)
    # Away from the first and last column (where the kernel is cut by the border) the result is flat mid-grey.
    assert np.abs(ours[:, 1:-1] - 127.5).max() < 1.0
    assert np.abs(ours - expected).max() <= 1.0


def test_weights_are_normalised_and_confined_to_the_crop_window():
    start = torch.tensor([3.0, 0.0, 50.0])
    length = torch.tensor([20.0, 64.0, 7.0])
    weights = bicubic_resample_weights(start, length, 16, 64)
    assert weights.shape == (3, 16, 64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 16))
    pixels = torch.arange(64)
    outside = (pixels[None, :] < start[:, None]) | (pixels[None, :] >= (start + length)[:, None])
    assert weights.masked_select(outside[:, None, :].expand_as(weights)).abs().max() == 0


def test_flipped_weights_are_the_reversed_rows():
    start, length = torch.tensor([3.0, 3.0]), torch.tensor([20.0, 20.0])
    weights = bicubic_resample_weights(start, length, 8, 32, flip=torch.tensor([True, False]))
    torch.testing.assert_close(weights[0], weights[1].flip(0))


def test_resample_ignores_padding():
    # Whatever fills the padding, crops inside the true image are the same.
    array = smooth_image(40, 50, seed=3)
    padded = np.full((64, 70, 3), 255, dtype=np.uint8)
    padded[:40, :50] = array
    zero_padded = np.zeros_like(padded)
    zero_padded[:40, :50] = array
    box = (0, 0, 40, 50)
    np.testing.assert_array_equal(_crop_resize(padded, box, 20, 20), _crop_resize(zero_padded, box, 20, 20))


def _eval_reference(array: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision's Resize(resize, BICUBIC) + CenterCrop(crop) on a PIL image, written out."""
    height, width = array.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = Image.fromarray(array).resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32)


def test_eval_transform_matches_resize_and_center_crop():
    shapes = [(120, 160), (150, 100), (96, 96), (70, 131)]
    arrays = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    batch = torch.zeros(len(arrays), 3, 150, 160, dtype=torch.uint8)
    for i, a in enumerate(arrays):
        batch[i, :, : a.shape[0], : a.shape[1]] = torch.from_numpy(a).permute(2, 0, 1)
    sizes = torch.tensor(shapes)
    out = EvalTransform(image_size=56, resize_size=64)(batch, sizes)
    assert out.shape == (4, 3, 56, 56) and out.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = ((out * std + mean) * 255).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arrays):
        expected = _eval_reference(a, 64, 56)
        assert np.abs(pixels[i] - expected).max() <= 3.0, shapes[i]
        assert np.abs(pixels[i] - expected).mean() <= 0.5, shapes[i]


def test_eval_transform_rejects_crop_larger_than_resize():
    with pytest.raises(ValueError, match="image_size"):
        EvalTransform(image_size=256, resize_size=224)
