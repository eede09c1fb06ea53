# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Batched, antialiased bicubic crop-and-resize on the training device.

Every output crop is `W_y @ image @ W_x^T`, where `W_y` (`(out_h, H)`) and `W_x` (`(out_w, W)`) hold the 1-D
resampling weights of that crop. The weights reproduce PIL's bicubic resize (`Image.resize(size, BICUBIC)`,
Keys cubic with a = -0.5): when shrinking, the kernel is stretched by the scale factor (support 2 * scale input
pixels), which is what makes the result antialiased; input pixels outside the crop window get no weight and each
row is renormalised, exactly like PIL resizing an image that was cropped first (`image.crop(box).resize(size)`,
what torchvision's `RandomResizedCrop` does on PIL images). Because the crop window is encoded in the weights,
crops of different positions, sizes and aspect ratios, from images of different sizes zero-padded into one batch,
are all computed by two batched matrix products, with no Python loop over images and no host synchronisation.

Example:

```python
>>> import torch
>>> from dino_hf.data.resample import bicubic_resample_weights, resample
>>> images = torch.rand(2, 3, 40, 50) * 255
>>> top, left = torch.tensor([0.0, 5.0]), torch.tensor([0.0, 10.0])
>>> height, width = torch.tensor([40.0, 20.0]), torch.tensor([50.0, 30.0])
>>> wy = bicubic_resample_weights(top, height, 16, 40)       # (2, 16, 40)
>>> wx = bicubic_resample_weights(left, width, 16, 50)       # (2, 16, 50)
>>> resample(images, wy[None], wx[None]).shape               # one view of 2 images
torch.Size([2, 3, 16, 16])
```
"""

from __future__ import annotations

import math

import torch


# Keys' cubic convolution parameter used by PIL (and by torchvision's antialiased bicubic).
_CUBIC_A = -0.5


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5, zero outside (-2, 2)."""
    x = x.abs()
    near = ((_CUBIC_A + 2.0) * x - (_CUBIC_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * _CUBIC_A
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def bicubic_resample_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    out_size: int,
    in_size: int,
    *,
    scale: torch.Tensor | None = None,
    out_offset: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Antialiased bicubic weights of a batch of 1-D crop-and-resize operations.

    Output sample `i` of crop `n` is centred on input coordinate `start + (out_offset + i + 0.5) * scale`, and only
    the input pixels `start <= p < start + length` contribute (the crop window).

    Args:
        start: `(N,)` first input pixel of each crop window (integer-valued).
        length: `(N,)` number of input pixels in each crop window (integer-valued, >= 1).
        out_size: number of output samples per crop.
        in_size: length of the (padded) input axis; the weights have this many columns.
        scale: `(N,)` input pixels per output sample; defaults to `length / out_size` (resize the window to
            `out_size`). Resize-then-center-crop passes the scale of the full resize and an `out_offset`.
        out_offset: `(N,)` index, in the full resized output, of the first output sample; defaults to 0.
        flip: `(N,)` bool: reverse the order of the output samples (a mirrored crop).

    Returns:
        `(N, out_size, in_size)` float32 weights; each row sums to 1.
    """
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    scale = length / out_size if scale is None else scale.to(torch.float32)
    offset = torch.zeros_like(start) if out_offset is None else out_offset.to(torch.float32)
    device = start.device
    outputs = torch.arange(out_size, device=device, dtype=torch.float32).expand(start.shape[0], -1)
    if flip is not None:
        outputs = torch.where(flip[:, None], (out_size - 1) - outputs, outputs)
    centers = start[:, None] + (offset[:, None] + outputs + 0.5) * scale[:, None]  # (N, out)
    # Shrinking stretches the kernel by the scale factor (antialiasing); enlarging keeps it at one input pixel.
    stretch = scale.clamp(min=1.0)[:, None, None]
    # Only 2 * ceil(support) + 1 input pixels can be under the kernel (PIL's `ksize`). The largest possible scale
    # follows from the shapes alone (a window never exceeds the input), so the tap count is static: no host sync.
    max_support = 2.0 * max(in_size / out_size, 1.0)
    num_taps = 2 * math.ceil(max_support) + 1
    first = torch.floor(centers - 2.0 * stretch[..., 0] + 0.5)  # PIL's `xmin`
    taps = first[:, :, None] + torch.arange(num_taps, device=device, dtype=torch.float32)  # (N, out, K)
    weights = _cubic((taps + 0.5 - centers[:, :, None]) / stretch)
    inside = (taps >= start[:, None, None]) & (taps < (start + length)[:, None, None]) & (taps < in_size)
    weights = weights * inside
    weights = weights / weights.sum(dim=-1, keepdim=True)
    dense = torch.zeros(start.shape[0], out_size, in_size, device=device, dtype=torch.float32)
    # Taps outside the window carry zero weight, so clamping their index only adds zeros.
    return dense.scatter_add_(2, taps.clamp(0, in_size - 1).long(), weights)


def resample(
    images: torch.Tensor,
    weights_y: torch.Tensor,
    weights_x: torch.Tensor,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Apply per-crop separable resampling to a batch of images, for several views at once.

    Like PIL, the horizontal pass runs first and, when `value_range` is given, its result is clamped to that range
    before the vertical pass (bicubic overshoots near sharp edges; PIL stores the intermediate as uint8).

    Args:
        images: `(B, C, H, W)` float32 images (padded regions must not be referenced by the weights).
        weights_y: `(V, B, S_h, H)` row weights of view `v` of image `b`.
        weights_x: `(V, B, S_w, W)` column weights.
        value_range: `(low, high)` to clamp the intermediate and the output to, e.g. `(0, 255)`; None: no clamp.

    Returns:
        `(V * B, C, S_h, S_w)` float32 crops, view-major (rows `v * B .. v * B + B - 1` are view `v`).
    """
    num_views, batch, out_h, height = weights_y.shape
    out_w, width = weights_x.shape[2], weights_x.shape[3]
    channels = images.shape[1]
    if images.shape[0] != batch or images.shape[2] != height or images.shape[3] != width:
        raise ValueError(
            f"images {tuple(images.shape)} do not match weights_y {tuple(weights_y.shape)} and "
            f"weights_x {tuple(weights_x.shape)}."
        )
    images = images.contiguous()
    # The horizontal product is shared by all views (their weights are concatenated), so the image is read once:
    # (B, C*H, W) @ (B, W, V*S_w) -> (B, C*H, V*S_w).
    all_x = weights_x.permute(1, 3, 0, 2).reshape(batch, width, num_views * out_w)
    columns = torch.bmm(images.view(batch, channels * height, width), all_x)
    if value_range is not None:
        columns.clamp_(*value_range)
    columns = columns.view(batch * channels, height, num_views * out_w)
    out = images.new_empty(num_views, batch, channels, out_h, out_w)
    for view in range(num_views):
        wy = weights_y[view].repeat_interleave(channels, dim=0)  # (B*C, S_h, H)
        part = columns[:, :, view * out_w : (view + 1) * out_w]
        torch.bmm(wy, part, out=out[view].view(batch * channels, out_h, out_w))
    if value_range is not None:
        out.clamp_(*value_range)
    return out.view(num_views * batch, channels, out_h, out_w)


__all__ = ["bicubic_resample_weights", "resample"]
