"""Image files for the retrieval, copy-detection and video evaluations: listing, loading, normalising.

Their normalisation is `dino_hf.image_processing_dino.to_pixel_values`. These evaluations run the backbone on whole images of varying sizes (one at a time, as the reference does), not on
the fixed 224 center crops of k-NN and linear evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageFile


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (the reference's extensions, any case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB; truncated JPEGs load (as in the reference's retrieval dataset)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    with Image.open(path) as image:
        return image.convert("RGB")


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
