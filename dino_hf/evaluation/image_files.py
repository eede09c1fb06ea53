"""Image files of the retrieval, copy-detection, video and attention evaluations: listing, loading, cropping to whole
patches.

These evaluations run the backbone on whole images of varying sizes (one at a time, as the reference does), not on
the fixed 224 center crops of k-NN and linear evaluation; their normalisation is
`dino_hf.image_processing_dino.to_pixel_values`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, ImageFile


logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (the reference's extensions, any case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB. A truncated file loads as far as it goes, with a warning (the reference's retrieval
    dataset loads them too); a file that is no image raises."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.UnidentifiedImageError:
        raise
    except OSError:
        with _truncated_images_allowed(), Image.open(path) as image:
            loaded = image.convert("RGB")
        logger.warning("%s is truncated or damaged: loaded as far as it goes.", path)
        return loaded


@contextlib.contextmanager
def _truncated_images_allowed() -> Iterator[None]:
    """PIL's switch for truncated files is one global (`ImageFile.LOAD_TRUNCATED_IMAGES`): on inside the block only, so
    the data pipeline, which skips and counts truncated records, never inherits it."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def crop_to_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Drop the bottom rows and right columns that do not fill a whole patch.

    The reference's stride-`patch_size` patch convolution ignores them silently; ours refuses partial patches, so the
    crop makes the same tokens explicit.
    """
    height, width = pixel_values.shape[-2:]
    height, width = height - height % patch_size, width - width % patch_size
    if height == 0 or width == 0:
        raise ValueError(f"An input of {tuple(pixel_values.shape[-2:])} is smaller than one {patch_size}px patch.")
    return pixel_values[..., :height, :width]


__all__ = ["IMAGE_EXTENSIONS", "crop_to_patches", "list_images", "load_rgb"]
