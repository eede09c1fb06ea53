# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""DINO's multi-crop augmentation, batched on the training device.

[`DinoMultiCropAugmentation`] turns a padded batch of decoded uint8 images into the paper's views (Caron et al.
2021; the reference `DataAugmentationDINO`): for each image, `global_crops_number` random resized crops of the
original image at 224 px and `local_crops_number` at 96 px, each followed by a horizontal flip, colour jitter in a
random order, random grayscale, Gaussian blur, solarisation (second global crop only) and normalisation. Every
crop draws its own random parameters. The work is a handful of batched tensor operations per view group, with no
Python loop over images and no host synchronisation, so it runs at GPU speed; the same code runs on the CPU.

The photometric operations follow torchvision's tensor definitions (`torchvision.transforms.functional`), which
are the float versions of the PIL operations the reference applies; they are exposed as functions taking a
per-crop factor, e.g. [`adjust_saturation`].

Example:

```python
>>> import torch
>>> from dino_hf.data import DinoMultiCropAugmentation, MultiCropConfig
>>> augment = DinoMultiCropAugmentation(MultiCropConfig(local_crops_number=4))
>>> images = torch.randint(0, 256, (2, 3, 300, 400), dtype=torch.uint8)     # zero-padded batch
>>> sizes = torch.tensor([[300, 400], [250, 180]])                         # true (height, width)
>>> out = augment(images, sizes, generator=torch.Generator().manual_seed(0))
>>> out.global_crops.shape, out.local_crops.shape                          # view-major
(torch.Size([4, 3, 224, 224]), torch.Size([8, 3, 96, 96]))
```
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration_dino import DinoConfig
from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size
from .resample import bicubic_resample_weights, resample


# torchvision's `rgb_to_grayscale` weights (ITU-R 601-2 luma).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Attempts at a random crop before falling back to a centre crop (torchvision's RandomResizedCrop).
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


def _as_float_tuple(value, length: int | None, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * (length or 1)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"MultiCropConfig.{name} must be a number or a sequence of numbers, got {value!r}.")
    values = tuple(float(v) for v in value)
    if length is not None and len(values) != length:
        raise ValueError(f"MultiCropConfig.{name} must have {length} values, got {len(values)} ({value!r}).")
    return values


@dataclass
class MultiCropConfig:
    """Every parameter of DINO's multi-crop augmentation; the defaults are the paper's.

    Crops (torchvision `RandomResizedCrop` semantics, bicubic antialiased resampling):
        global_crops_number (`int`, 2): large views per image; the teacher sees only these.
        global_crops_size (`int`, 224): side of the global crops in pixels.
        global_crops_scale (`(float, float)`, (0.4, 1.0)): range of the crop area as a fraction of the image area.
        local_crops_number (`int`, 10): small views per image (0 disables multi-crop).
        local_crops_size (`int`, 96): side of the local crops.
        local_crops_scale (`(float, float)`, (0.05, 0.4)): area fraction range of the local crops.
        ratio (`(float, float)`, (3/4, 4/3)): aspect ratio (width / height) range, sampled log-uniformly.

    Photometric operations, in this order (each crop draws its own parameters):
        flip_p (`float`, 0.5): probability of a horizontal flip.
        color_jitter_p (`float`, 0.8): probability of applying colour jitter; its four operations run in a random
            order per crop, like torchvision's `ColorJitter`.
        brightness, contrast, saturation (`float`, 0.4, 0.4, 0.2): jitter factors are uniform in
            `[max(0, 1 - x), 1 + x]`.
        hue (`float`, 0.1): hue shift uniform in `[-hue, hue]` (fraction of the colour wheel, at most 0.5).
        grayscale_p (`float`, 0.2): probability of converting to grayscale (torchvision's luma weights).
        blur_sigma (`(float, float)`, (0.1, 2.0)): Gaussian blur standard deviation range (pixels of the crop).
        blur_p_global (`float` or one per global crop, (1.0, 0.1)): blur probability of each global crop.
        blur_p_local (`float`, 0.5): blur probability of the local crops.
        solarize_p_global (`float` or one per global crop, (0.0, 0.2)): solarisation probability of each global crop.
        solarize_threshold (`float`, 128/255): pixels at or above it are inverted (PIL's `solarize(128)`).
        mean, std (`(float, float, float)`, ImageNet's): normalisation of the output.

    `blur_p_global` and `solarize_p_global` give global crop i the i-th value; the last value repeats for further
    global crops and extra values are unused (a single number applies to all). Lists (from JSON or YAML) are
    accepted wherever a tuple is expected; `__post_init__` normalises them to tuples.
    """

    global_crops_number: int = 2
    global_crops_size: int = DinoConfig.image_size  # the model's resolution
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 10
    local_crops_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p_global: tuple[float, ...] = (1.0, 0.1)
    blur_p_local: float = 0.5
    solarize_p_global: tuple[float, ...] = (0.0, 0.2)
    solarize_threshold: float = 128.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self._check_crops()
        self._check_photometric()
        self.mean = _as_float_tuple(self.mean, 3, "mean")
        self.std = _as_float_tuple(self.std, 3, "std")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"MultiCropConfig.std must be positive, got {self.std!r}.")

    def _check_crops(self) -> None:
        """Validate the crop counts, sizes, scales and aspect ratios; normalise sequences to tuples."""
        for name in ("global_crops_number", "global_crops_size", "local_crops_number", "local_crops_size"):
            value = getattr(self, name)
            minimum = 0 if name == "local_crops_number" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MultiCropConfig.{name} must be an integer >= {minimum}, got {value!r}.")
        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = _as_float_tuple(getattr(self, name), 2, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"MultiCropConfig.{name} must satisfy 0 < low <= high <= 1, got {(low, high)}.")
            setattr(self, name, (low, high))
        low, high = _as_float_tuple(self.ratio, 2, "ratio")
        if not 0.0 < low <= high:
            raise ValueError(f"MultiCropConfig.ratio must satisfy 0 < low <= high, got {(low, high)}.")
        self.ratio = (low, high)

    def _check_photometric(self) -> None:
        """Validate the probabilities and strengths of the photometric operations; normalise them to floats."""
        for name in ("flip_p", "color_jitter_p", "grayscale_p", "blur_p_local", "solarize_threshold"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MultiCropConfig.{name} must be in [0, 1], got {value!r}.")
            setattr(self, name, value)
        for name in ("brightness", "contrast", "saturation"):
            value = float(getattr(self, name))
            if value < 0.0:
                raise ValueError(f"MultiCropConfig.{name} must be >= 0, got {value!r}.")
            setattr(self, name, value)
        self.hue = float(self.hue)
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"MultiCropConfig.hue must be in [0, 0.5], got {self.hue!r}.")
        low, high = _as_float_tuple(self.blur_sigma, 2, "blur_sigma")
        if not 0.0 < low <= high:
            raise ValueError(f"MultiCropConfig.blur_sigma must satisfy 0 < low <= high, got {(low, high)}.")
        self.blur_sigma = (low, high)
        for name in ("blur_p_global", "solarize_p_global"):
            values = _as_float_tuple(getattr(self, name), None, name)
            if not values:
                raise ValueError(f"MultiCropConfig.{name} must not be empty.")
            # Entry i is global crop i's probability; the last entry repeats for any further global crops.
            values = (values + values[-1:] * self.global_crops_number)[: self.global_crops_number]
            if not all(0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"MultiCropConfig.{name} must hold probabilities in [0, 1], got {values!r}.")
            setattr(self, name, values)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> MultiCropConfig:
        """Inverse of [`to_dict`]; unknown keys raise a `ValueError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown MultiCropConfig fields: {unknown}. Known fields: {sorted(known)}.")
        return cls(**values)

    @property
    def decode_min_pixels(self) -> int:
        """Fewest decoded pixels (width x height) that keep every crop at or above its output resolution.

        The smallest crop of a kind covers `min_scale` of the image area with an aspect ratio up to the extreme of
        `ratio`, so its shorter side is `sqrt(min_scale * area / r)` with `r = max(ratio_high, 1 / ratio_low)`;
        requiring it to be at least the output size gives `area >= size**2 * r / min_scale`. Decoding larger
        images only down to this area (JPEG DCT scaling, then an integer box reduction) loses no detail the crops
        can use. For the paper's settings: 96**2 * 4/3 / 0.05 = 245,760 pixels, about 573 x 430 at 4:3.
        """
        stretch = max(self.ratio[1], 1.0 / self.ratio[0])
        needs = [self.global_crops_size**2 * stretch / self.global_crops_scale[0]]
        if self.local_crops_number > 0:
            needs.append(self.local_crops_size**2 * stretch / self.local_crops_scale[0])
        return math.ceil(max(needs))


@dataclass
class MultiCropOutput:
    """The views of a batch, view-major: rows `v * B .. v * B + B - 1` hold view `v` of every image.

    Attributes:
        global_crops: `(G * B, 3, S, S)` float32, normalised.
        local_crops: `(L * B, 3, s, s)` float32, normalised; None when `local_crops_number == 0`.
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor | None


# ---------------------------------------------------------------------------------------------------------------------
# Photometric operations on float images in [0, 1]; `x` is (N, 3, H, W) and factors are (N,) (one per image).
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor, copied to `device` once: a host-to-device copy inside the augmentation would make
    the host wait for the device on every call."""
    return torch.tensor(values, dtype=dtype, device=device)


def _per_image(values: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    if not isinstance(values, torch.Tensor):
        return float(values)  # Python scalars broadcast without a device copy
    return values.to(x.dtype).reshape(-1, 1, 1, 1) if values.ndim else values.to(x.dtype)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """`(N, 3, H, W)` -> `(N, 1, H, W)` luma `0.2989 R + 0.587 G + 0.114 B` (torchvision's weights)."""
    weights = _constant(_GRAY_WEIGHTS, x.device, x.dtype).view(1, 3, 1, 1)
    # A 1x1 convolution: one kernel instead of five elementwise ones.
    return F.conv2d(x, weights)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`clamp(factor * x + (1 - factor) * other, 0, 1)` (torchvision's `_blend`), as one lerp and one clamp."""
    return torch.lerp(other, x, factor).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """`clamp(factor * x)`: blend with black."""
    return (x * _per_image(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the mean luma of each image."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the grayscale image (factor 0: grayscale, 1: unchanged)."""
    return _blend(x, rgb_to_grayscale(x), _per_image(factor, x))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """Rotate the HSV hue by `shift` (fraction of the colour wheel, in [-0.5, 0.5]); saturation and value stay.

    Equal to torchvision's RGB -> HSV -> shift -> RGB, written without the HSV round trip: a pixel keeps its
    maximum and minimum channel, and channel `n` (R: 5, G: 3, B: 1) becomes
    `max - (max - min) * clamp(min(k, 4 - k), 0, 1)` with `k = (n + 6 * hue) mod 6`.
    """
    minc, maxc = torch.aminmax(x, dim=-3, keepdim=True)
    chroma = maxc - minc
    inverse = torch.where(chroma > 0, 1.0 / chroma, torch.zeros_like(chroma))
    r, g, b = x.split(1, dim=-3)
    # Hue in sextants (0..6) times the chroma, as in torchvision's _rgb2hsv: red, else green, else blue is the max.
    scaled = torch.where(maxc == r, g - b, torch.where(maxc == g, 2.0 * chroma + b - r, 4.0 * chroma + r - g))
    sextant = scaled * inverse + 6.0 * _per_image(shift, x)
    offsets = _constant((5.0, 3.0, 1.0), x.device, x.dtype).view(3, 1, 1)
    k = torch.remainder(sextant + offsets, 6.0)
    return torch.addcmul(maxc, chroma, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), value=-1.0)


def solarize(x: torch.Tensor, threshold: float = 128.0 / 255.0) -> torch.Tensor:
    """Invert pixels at or above `threshold` (per channel), like PIL's `ImageOps.solarize`."""
    return torch.where(x >= threshold, 1.0 - x, x)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur_matrices(sigma: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """`(N, size, size)` matrices `M` such that `M @ row` is a Gaussian blur with edge replication.

    Args:
        sigma: `(N,)` standard deviations in pixels.
        size: length of the blurred axis.
        radius: the kernel is truncated to `2 * radius + 1` taps.
    """
    kernels = _gaussian_kernels(sigma, radius)  # (N, K)
    rows = torch.arange(size, device=sigma.device)
    taps = torch.arange(-radius, radius + 1, device=sigma.device)
    # Edge replication (like PIL's blur): taps beyond the border read the border pixel.
    columns = (rows[:, None] + taps[None, :]).clamp_(0, size - 1)  # (size, K)
    matrices = torch.zeros(sigma.shape[0], size, size, device=sigma.device, dtype=torch.float32)
    index = columns.expand(sigma.shape[0], size, -1)
    return matrices.scatter_add_(2, index, kernels[:, None, :].expand(-1, size, -1).contiguous())


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of square or rectangular images, one standard deviation per image.

    Borders replicate the edge pixel (what PIL's `GaussianBlur`, used by the reference, does). The kernel is
    truncated at `radius` (default `ceil(3 * max sigma)`, computed on the host: pass it explicitly on a device).
    """
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
    else:
        sigma = torch.full((x.shape[0],), float(sigma), device=x.device)
    if radius is None:
        radius = max(1, math.ceil(3.0 * float(sigma.max())))
    n, c, h, w = x.shape
    rows = blur_matrices(sigma, h, radius)
    cols = rows if h == w else blur_matrices(sigma, w, radius)
    # Horizontal: (N, C*H, W) @ (N, W, W)^T; vertical: (N*C, H, H) @ (N*C, H, W).
    out = torch.bmm(x.reshape(n, c * h, w), cols.transpose(1, 2))
    out = torch.bmm(rows.repeat_interleave(c, dim=0), out.view(n * c, h, w))
    return out.view(n, c, h, w)


# Colour-jitter operation ids, in torchvision's ColorJitter order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def color_jitter(
    x: torch.Tensor,
    order: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """torchvision's `ColorJitter` with its four operations applied in a per-image order.

    Args:
        x: `(N, 3, H, W)` in [0, 1].
        order: `(N, 4)` a permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE) per image.
        brightness, contrast, saturation: `(N,)` blend factors (1 = unchanged).
        hue: `(N,)` hue shifts (0 = unchanged).

    Brightness, contrast and saturation are all `clamp(f * x + (1 - f) * other)`, with `other` black, the mean
    luma or the luma image; so each of the (up to 3) steps before and after the hue shift is one generic blend, in
    which every image uses its own operation (a factor of 1 where it has none at that step). The hue shift, the
    costly one, then runs exactly once for every image. The result equals applying the four operations one after
    the other in each image's order.
    """
    n = x.shape[0]
    factors = torch.stack([brightness, contrast, saturation, torch.ones_like(brightness)], dim=1).to(x.dtype)
    hue_position = (order == HUE).to(torch.int64).argmax(dim=1)  # (N,)

    def blend_step(x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # `position` (N,): the slot of `order` applied now by each image; out-of-range slots do nothing.
        valid = (position >= 0) & (position < 4)
        op = order.gather(1, position.clamp(0, 3)[:, None])[:, 0]
        op = torch.where(valid, op, torch.full_like(op, HUE))  # HUE here means "no blend"
        factor = factors.gather(1, op[:, None]).view(n, 1, 1, 1)
        gray = rgb_to_grayscale(x)
        use_gray = (op == SATURATION).to(x.dtype).view(n, 1, 1, 1)
        use_mean = (op == CONTRAST).to(x.dtype).view(n, 1, 1, 1)
        other = torch.addcmul(use_mean * gray.mean(dim=(-3, -2, -1), keepdim=True), use_gray, gray)
        return _blend(x, other, factor)

    for step in range(3):
        x = blend_step(x, torch.where(step < hue_position, torch.full_like(hue_position, step), -1))
    x = adjust_hue(x, hue)
    for step in range(3):
        x = blend_step(x, hue_position + 1 + step)
    return x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(x - mean) / std` per channel."""
    mean_t = _constant(tuple(mean), x.device, x.dtype).view(1, 3, 1, 1)
    inv_std = _constant(tuple(1.0 / s for s in std), x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) * inv_std


# ---------------------------------------------------------------------------------------------------------------------
# Random parameters
# ---------------------------------------------------------------------------------------------------------------------


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def sample_crop_boxes(
    sizes: torch.Tensor,
    uniforms: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """torchvision's `RandomResizedCrop.get_params`, batched: `(..., B)` crops -> `(..., B, 4)` boxes.

    Up to 10 attempts draw an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`; the
    first crop that fits is placed uniformly at random. If none fits, the box is the central crop clamped to the
    ratio range (or the whole image).

    Args:
        sizes: `(B, 2)` (height, width) of each image.
        uniforms: `(..., B, 22)` uniforms in [0, 1): 10 area fractions, 10 ratios, then top and left.
        scale, ratio: ranges as in [`MultiCropConfig`].

    Returns:
        float32 boxes `(top, left, height, width)` in whole pixels.
    """
    height = sizes[:, 0].to(torch.float32)
    width = sizes[:, 1].to(torch.float32)
    area = height * width
    fraction = _uniform(uniforms[..., :_CROP_ATTEMPTS], *scale)
    log_ratio = _uniform(uniforms[..., _CROP_ATTEMPTS : 2 * _CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    target = area[:, None] * fraction
    crop_w = torch.round(torch.sqrt(target * aspect))
    crop_h = torch.round(torch.sqrt(target / aspect))
    fits = (crop_w > 0) & (crop_w <= width[:, None]) & (crop_h > 0) & (crop_h <= height[:, None])
    first = fits.to(torch.int64).argmax(dim=-1, keepdim=True)  # first attempt that fits (0 if none)
    found = fits.any(dim=-1)
    crop_w = crop_w.gather(-1, first)[..., 0]
    crop_h = crop_h.gather(-1, first)[..., 0]
    u_top, u_left = uniforms[..., 2 * _CROP_ATTEMPTS], uniforms[..., 2 * _CROP_ATTEMPTS + 1]
    top = torch.minimum(torch.floor(u_top * (height - crop_h + 1)), height - crop_h)
    left = torch.minimum(torch.floor(u_left * (width - crop_w + 1)), width - crop_w)

    in_ratio = width / height
    too_tall = in_ratio < ratio[0]
    too_wide = in_ratio > ratio[1]
    fallback_w = torch.where(too_wide, torch.round(height * ratio[1]), width)
    fallback_h = torch.where(too_tall, torch.round(width / ratio[0]), height)
    fallback_top = torch.floor((height - fallback_h) / 2)
    fallback_left = torch.floor((width - fallback_w) / 2)
    return torch.stack(
        [
            torch.where(found, top, fallback_top.expand_as(top)),
            torch.where(found, left, fallback_left.expand_as(left)),
            torch.where(found, crop_h, fallback_h.expand_as(crop_h)),
            torch.where(found, crop_w, fallback_w.expand_as(crop_w)),
        ],
        dim=-1,
    )


@dataclass
class ViewParameters:
    """Random parameters of `V` views of `B` images (every tensor has leading dims `(V, B)`).

    Attributes:
        boxes: `(V, B, 4)` crop boxes `(top, left, height, width)`.
        flip: horizontal flip.
        jitter: whether colour jitter applies; `order` `(V, B, 4)` its operation order; `brightness`,
            `contrast`, `saturation`, `hue` its factors (identity values where `jitter` is False).
        grayscale: random grayscale.
        blur: whether to blur; `sigma` its standard deviation.
        solarize: whether to solarise.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def flatten(self) -> ViewParameters:
        """Merge the `(V, B)` dims into one of `V * B` (view-major), the layout of the crops."""
        return ViewParameters(**{f.name: getattr(self, f.name).flatten(0, 1) for f in fields(self)})


# Columns of the uniforms drawn per crop.
_BOX = slice(0, 2 * _CROP_ATTEMPTS + 2)
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(22, 28)
_FACTORS = slice(28, 32)  # brightness, contrast, saturation, hue
_ORDER = slice(32, 36)
_NUM_UNIFORMS = 36


# ---------------------------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------------------------


class DinoMultiCropAugmentation(nn.Module):
    """DINO's multi-crop augmentation on batches of decoded images, on the device of its inputs.

    Args:
        config: a [`MultiCropConfig`] (the paper's defaults if None).
        compile: compile the photometric stage with `torch.compile` (fuses its elementwise kernels: worth it on a
            GPU; the first call of each batch shape then takes tens of seconds).

    Call it with `images` uint8 `(B, 3, H, W)` (zero-padded, any memory layout), `sizes` int64 `(B, 2)` (true
    height and width of each image) and optionally a `torch.Generator` on the images' device. It returns a
    [`MultiCropOutput`] of normalised float32 crops, view-major. It computes in float32 even under autocast, and
    never synchronises with the host. [`sample_parameters`] and [`apply`] split the call, for inspection.
    """

    def __init__(self, config: MultiCropConfig | None = None, compile: bool = False) -> None:
        super().__init__()
        self.config = config if config is not None else MultiCropConfig()
        # Static kernel size (no data-dependent shapes): 3 sigma of the widest blur.
        self.blur_radius = max(1, math.ceil(3.0 * self.config.blur_sigma[1]))
        # The photometric stage is ~30 memory-bound elementwise kernels per crop; torch.compile fuses them.
        self._photometric = torch.compile(self.photometric, dynamic=False) if compile else self.photometric

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"global={c.global_crops_number}x{c.global_crops_size}, local={c.local_crops_number}x{c.local_crops_size}"
        )

    def _sample_group(
        self,
        sizes: torch.Tensor,
        num_views: int,
        scale: tuple[float, float],
        blur_p: torch.Tensor | float,
        solarize_p: torch.Tensor | float,
        generator: torch.Generator | None,
    ) -> ViewParameters:
        c = self.config
        batch = sizes.shape[0]
        u = torch.rand(num_views, batch, _NUM_UNIFORMS, generator=generator, device=sizes.device)
        jitter = u[..., _JITTER] < c.color_jitter_p
        factors = u[..., _FACTORS]
        identity = _constant((1.0, 1.0, 1.0, 0.0), sizes.device)
        low = _constant(
            (max(0.0, 1.0 - c.brightness), max(0.0, 1.0 - c.contrast), max(0.0, 1.0 - c.saturation), -c.hue),
            sizes.device,
        )
        high = _constant((1.0 + c.brightness, 1.0 + c.contrast, 1.0 + c.saturation, c.hue), sizes.device)
        factors = torch.where(jitter[..., None], low + (high - low) * factors, identity)
        return ViewParameters(
            boxes=sample_crop_boxes(sizes, u[..., _BOX], scale, c.ratio),
            flip=u[..., _FLIP] < c.flip_p,
            jitter=jitter,
            order=u[..., _ORDER].argsort(dim=-1),  # a uniformly random permutation per crop
            brightness=factors[..., 0],
            contrast=factors[..., 1],
            saturation=factors[..., 2],
            hue=factors[..., 3],
            grayscale=u[..., _GRAY] < c.grayscale_p,
            blur=u[..., _BLUR] < blur_p,
            sigma=_uniform(u[..., _SIGMA], *c.blur_sigma),
            solarize=u[..., _SOLARIZE] < solarize_p,
        )

    def sample_parameters(
        self, sizes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[ViewParameters, ViewParameters | None]:
        """Draw the random parameters of every crop: `(global views, local views or None)`, each `(V, B, ...)`."""
        c = self.config
        device = sizes.device
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"The generator is on {generator.device} but the images are on {device}.")
        global_params = self._sample_group(
            sizes,
            c.global_crops_number,
            c.global_crops_scale,
            _constant(c.blur_p_global, device)[:, None],
            _constant(c.solarize_p_global, device)[:, None],
            generator,
        )
        local_params = None
        if c.local_crops_number > 0:
            local_params = self._sample_group(
                sizes, c.local_crops_number, c.local_crops_scale, c.blur_p_local, 0.0, generator
            )
        return global_params, local_params

    def render(self, images: torch.Tensor, params: ViewParameters, size: int) -> torch.Tensor:
        """Crops of one view group: `(B, 3, H, W)` float images in [0, 255] -> `(V * B, 3, size, size)` normalised."""
        num_views, batch = params.flip.shape
        height, width = images.shape[-2:]
        boxes = params.boxes.reshape(num_views * batch, 4)
        weights_y = bicubic_resample_weights(boxes[:, 0], boxes[:, 2], size, height)
        # A horizontal flip is a reversal of the output columns, folded into the weights for free.
        weights_x = bicubic_resample_weights(boxes[:, 1], boxes[:, 3], size, width, flip=params.flip.reshape(-1))
        crops = resample(
            images,
            weights_y.view(num_views, batch, size, height),
            weights_x.view(num_views, batch, size, width),
            value_range=(0.0, 255.0),
        )
        p = params.flatten()
        return self._photometric(
            crops,
            p.jitter,
            p.order,
            p.brightness,
            p.contrast,
            p.saturation,
            p.hue,
            p.grayscale,
            p.blur,
            p.sigma,
            p.solarize,
        )

    def photometric(
        self,
        crops: torch.Tensor,
        jitter: torch.Tensor,
        order: torch.Tensor,
        brightness: torch.Tensor,
        contrast: torch.Tensor,
        saturation: torch.Tensor,
        hue: torch.Tensor,
        grayscale: torch.Tensor,
        blur: torch.Tensor,
        sigma: torch.Tensor,
        solarize_flags: torch.Tensor,
    ) -> torch.Tensor:
        """Colour jitter, grayscale, blur, solarisation and normalisation of `(N, 3, S, S)` crops in [0, 255].

        Every other argument is `(N,)` (`order` `(N, 4)`): the per-crop parameters of [`ViewParameters`]. A pure
        tensor function with static shapes, which `compile=True` hands to `torch.compile`.
        """
        c = self.config
        crops = crops * (1.0 / 255.0)
        jittered = color_jitter(crops, order, brightness, contrast, saturation, hue)
        crops = torch.where(jitter.view(-1, 1, 1, 1), jittered, crops)
        crops = torch.where(grayscale.view(-1, 1, 1, 1), rgb_to_grayscale(crops).expand_as(crops), crops)
        # Crops that are not blurred get a delta kernel (sigma -> 0), so all crops share one batched product.
        sigma = torch.where(blur, sigma, torch.full_like(sigma, 1e-3))
        crops = gaussian_blur(crops, sigma, radius=min(self.blur_radius, crops.shape[-1] - 1))
        crops = torch.where(solarize_flags.view(-1, 1, 1, 1), solarize(crops, c.solarize_threshold), crops)
        return normalize(crops, c.mean, c.std)

    def apply(
        self,
        images: torch.Tensor,
        global_params: ViewParameters,
        local_params: ViewParameters | None,
    ) -> MultiCropOutput:
        """Render the crops described by [`sample_parameters`]."""
        c = self.config
        with torch.autocast(device_type=images.device.type, enabled=False):
            pixels = images.to(torch.float32, memory_format=torch.contiguous_format)
            global_crops = self.render(pixels, global_params, c.global_crops_size)
            local_crops = None
            if local_params is not None:
                local_crops = self.render(pixels, local_params, c.local_crops_size)
        return MultiCropOutput(global_crops=global_crops, local_crops=local_crops)

    def forward(
        self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator | None = None
    ) -> MultiCropOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images of shape (batch, 3, height, width), got {tuple(images.shape)}.")
        if sizes.shape != (images.shape[0], 2):
            raise ValueError(f"Expected sizes of shape ({images.shape[0]}, 2), got {tuple(sizes.shape)}.")
        global_params, local_params = self.sample_parameters(sizes.to(images.device), generator)
        return self.apply(images, global_params, local_params)


class EvalTransform(nn.Module):
    """The paper's evaluation preprocessing, batched on the device: resize the shorter side to `resize_size`
    (bicubic, antialiased), center-crop `image_size`, normalise. Same resampling code as the crops.

    Equal to torchvision's `Resize(resize_size, BICUBIC)` + `CenterCrop(image_size)` on PIL images (the
    reference's k-NN and linear evaluation), computed as one crop-and-resize per image. `resize_size` defaults to
    `dino_hf.image_processing_dino.eval_resize_size(image_size)` (256 for 224).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.data import EvalTransform
    >>> images = torch.randint(0, 256, (2, 3, 375, 500), dtype=torch.uint8)
    >>> sizes = torch.tensor([[375, 500], [300, 200]])
    >>> EvalTransform()(images, sizes).shape
    torch.Size([2, 3, 224, 224])
    ```
    """

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        resize_size = eval_resize_size(image_size) if resize_size is None else resize_size
        if image_size <= 0 or resize_size < image_size:
            raise ValueError(f"Need 0 < image_size <= resize_size, got image_size={image_size}, resize={resize_size}.")
        self.image_size = image_size
        self.resize_size = resize_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def extra_repr(self) -> str:
        return f"resize={self.resize_size}, crop={self.image_size}"

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """`images` uint8 `(B, 3, H, W)` padded, `sizes` `(B, 2)` -> `(B, 3, image_size, image_size)` float32."""
        sizes = sizes.to(images.device)
        height, width = sizes[:, 0], sizes[:, 1]
        short = torch.minimum(height, width)
        # torchvision: the shorter side becomes resize_size, the longer int(resize_size * long / short).
        new_h = torch.where(
            height <= width, torch.full_like(height, self.resize_size), self.resize_size * height // short
        )
        new_w = torch.where(
            width <= height, torch.full_like(width, self.resize_size), self.resize_size * width // short
        )
        crop = self.image_size
        top = torch.round((new_h - crop).to(torch.float32) / 2.0)
        left = torch.round((new_w - crop).to(torch.float32) / 2.0)
        zeros = torch.zeros_like(top)
        weights_y = bicubic_resample_weights(
            zeros, height, crop, images.shape[-2], scale=height.float() / new_h.float(), out_offset=top
        )
        weights_x = bicubic_resample_weights(
            zeros, width, crop, images.shape[-1], scale=width.float() / new_w.float(), out_offset=left
        )
        with torch.autocast(device_type=images.device.type, enabled=False):
            pixels = images.to(torch.float32, memory_format=torch.contiguous_format)
            out = resample(pixels, weights_y[None], weights_x[None], value_range=(0.0, 255.0)).mul_(1.0 / 255.0)
        return normalize(out, self.mean, self.std)


__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "HUE",
    "SATURATION",
    "DinoMultiCropAugmentation",
    "EvalTransform",
    "MultiCropConfig",
    "MultiCropOutput",
    "ViewParameters",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_matrices",
    "color_jitter",
    "gaussian_blur",
    "normalize",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "solarize",
]
