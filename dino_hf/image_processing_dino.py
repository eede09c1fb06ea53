"""The DINO image processing: normalisation constants, the evaluation resize ratio, and the evaluation preprocessing.

Every part of dino_hf that turns an image into pixel values takes its numbers from here: the augmentation's
normalisation, the device-side [`EvalTransform`](dino_hf.data.EvalTransform) of k-NN / linear evaluation and
fine-tuning, the saved image processor of exports, conversion and the pipeline, and the whole-image preprocessing of
attention maps, retrieval, copy detection and video segmentation.

- [`dino_image_processor`]: the paper's evaluation preprocessing (resize the shorter side to `image_size / 0.875`,
  center crop `image_size`, normalise) as a transformers image processor, saved next to every exported model;
- [`eval_resize_size`]: that resize (256 for 224), also used by the batched, on-device `EvalTransform`;
- [`dense_image_processor`]: the whole image resized to a square (no crop) and normalised, for per-pixel outputs
  (frozen-feature segmentation, `dino_hf.evaluation.segmentation`);
- [`to_pixel_values`] / [`prepare_image`]: whole images (no fixed crop) for attention maps and the retrieval,
  copy-detection and video evaluations;
- [`processor_normalisation`]: the mean and std a saved model was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil


# ImageNet's per-channel mean and std, the normalisation of the paper (and of torchvision's `Normalize` there).
IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)

# The paper's evaluation crop: resize the shorter side to 256, center crop 224 (ratio 0.875).
EVAL_CROP_RATIO = 224 / 256


def eval_resize_size(image_size: int) -> int:
    """The shorter side before the evaluation center crop: `round(image_size / 0.875)` (256 for 224, 110 for 96)."""
    return round(image_size / EVAL_CROP_RATIO)


def dino_image_processor(
    image_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> BitImageProcessorPil:
    """The DINO evaluation preprocessing as a transformers image processor that needs no torchvision.

    Bicubic resize of the shorter side to `resize_size`, center crop `image_size x image_size`, scale to [0, 1],
    normalise with the ImageNet mean and std: the reference's `Resize(256, interpolation=3)`, `CenterCrop(224)`,
    `ToTensor()`, `Normalize(...)`. It is transformers' PIL-backend `BitImageProcessorPil`; its saved
    `preprocessor_config.json` says `"image_processor_type": "BitImageProcessor"`, which `AutoImageProcessor` loads back
    as the PIL class when torchvision is absent (and as the torchvision class, same preprocessing, when present).
    The center crop's offset rounds down where torchvision's rounds to nearest, so for some image sizes the crop
    sits one pixel apart from the reference's.

    Args:
        image_size: crop side (224).
        resize_size: shorter side after resizing; defaults to [`eval_resize_size`] (256 for 224).
        mean, std: normalisation (ImageNet's).

    Example:

    ```python
    >>> from dino_hf import dino_image_processor
    >>> processor = dino_image_processor()
    >>> processor.size["shortest_edge"], processor.crop_size["height"], int(processor.resample)  # 3: bicubic
    (256, 224, 3)
    ```
    """
    resize_size = eval_resize_size(image_size) if resize_size is None else resize_size
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be at least image_size ({image_size}).")
    crop = {"height": image_size, "width": image_size}
    return _bicubic_processor({"shortest_edge": resize_size}, crop, mean, std)


def dense_image_processor(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> BitImageProcessorPil:
    """The whole image resized to `image_size x image_size` (bicubic, no crop: every pixel gets a prediction), scaled
    to [0, 1] and normalised; a transformers image processor, as [`dino_image_processor`]."""
    return _bicubic_processor({"height": image_size, "width": image_size}, None, mean, std)


def _bicubic_processor(
    size: dict[str, int], crop_size: dict[str, int] | None, mean: Sequence[float], std: Sequence[float]
) -> BitImageProcessorPil:
    """transformers' PIL `BitImageProcessorPil`: bicubic resize to `size`, center crop `crop_size` (None: none), RGB
    scaled to [0, 1] and normalised."""
    return BitImageProcessorPil(
        do_resize=True,
        size=size,
        resample=PILImageResampling.BICUBIC,
        do_center_crop=crop_size is not None,
        **({"crop_size": crop_size} if crop_size is not None else {}),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def processor_normalisation(model_name_or_path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std saved with a model (its `preprocessor_config.json`), or ImageNet's when it has none.

    The exported models carry the normalisation they were trained with; evaluation must use the same.
    """
    config_file = Path(model_name_or_path) / "preprocessor_config.json"
    if config_file.is_file():
        values = json.loads(config_file.read_text())
        if "image_mean" in values and "image_std" in values:
            return tuple(values["image_mean"]), tuple(values["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def to_pixel_values(
    image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """A PIL image -> `(1, 3, H, W)` float32, scaled to [0, 1] and normalised (`ToTensor` + `Normalize`)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def prepare_image(
    image: Image.Image,
    image_size: int | Sequence[int] | None,
    patch_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Image.Image, torch.Tensor]:
    """Resize an image for attention maps and crop it to a multiple of the patch size.

    Args:
        image: a PIL image (converted to RGB).
        image_size: `(height, width)`, or one int for the shorter side (aspect ratio kept), or `None` to keep the size.
            Resizing is bicubic.
        patch_size: the model's patch size; the image is center-cropped to the largest multiple of it.

    Returns:
        The resized, cropped RGB image and its `(1, 3, H, W)` normalised pixel values.
    """
    image = image.convert("RGB")
    if image_size is not None:
        if isinstance(image_size, int):
            scale = image_size / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        else:
            size = (int(image_size[1]), int(image_size[0]))
        image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = (side - side % patch_size for side in image.size)
    if width == 0 or height == 0:
        raise ValueError(f"The image ({image.width}x{image.height}) is smaller than one {patch_size}px patch.")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return image, to_pixel_values(image, mean, std)


__all__ = [
    "EVAL_CROP_RATIO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "dense_image_processor",
    "dino_image_processor",
    "eval_resize_size",
    "prepare_image",
    "processor_normalisation",
    "to_pixel_values",
]
