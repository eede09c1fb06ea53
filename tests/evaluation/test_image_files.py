"""Image files of the whole-image evaluations: listing, loading (truncated files too, without changing PIL's global
setting), cropping to whole patches."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dino_hf.data import DecodeOptions, decode_image
from dino_hf.evaluation.image_files import crop_to_patches, list_images, load_rgb


def _jpeg(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_list_images_sorted_by_name_with_the_reference_extensions(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", "d.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "e.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "d.webp"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_a_truncated_file_loads_as_before_and_pil_is_left_as_it_was(tmp_path, caplog):
    whole, truncated = tmp_path / "whole.jpg", tmp_path / "truncated.jpg"
    whole.write_bytes(_jpeg())
    truncated.write_bytes(_jpeg()[:-600])
    assert load_rgb(whole).size == (64, 48) and not caplog.records
    with caplog.at_level(logging.WARNING):
        image = load_rgb(truncated)
    assert image.size == (64, 48) and "truncated.jpg is truncated" in caplog.text
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # The pixels are what the former global switch gave.
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(truncated) as reference:
            expected = np.asarray(reference.convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert np.array_equal(np.asarray(image), expected)
    # The data pipeline in the same process still skips (and counts) truncated records.
    assert decode_image({"bytes": truncated.read_bytes(), "path": None}, DecodeOptions())[1] == "truncated"


def test_a_file_that_is_no_image_raises(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(Image.UnidentifiedImageError):
        load_rgb(tmp_path / "notes.jpg")


def test_crop_to_patches_drops_partial_patches():
    assert crop_to_patches(torch.zeros(1, 3, 35, 50), 16).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="smaller than one 16px patch"):
        crop_to_patches(torch.zeros(1, 3, 8, 50), 16)
