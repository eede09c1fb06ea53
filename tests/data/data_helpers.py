"""Shared helpers of the data-pipeline tests: small images, encoded files and datasets written on the fly."""

from __future__ import annotations

import functools
import io
import tempfile

import numpy as np
from PIL import Image


def smooth_image(height: int, width: int, seed: int = 0, noise: float = 25.0) -> np.ndarray:
    """An `(H, W, 3)` uint8 image of smooth random colour blobs plus pixel noise of std `noise` (fine detail)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    detail = rng.normal(0, noise, size=(height, width, 3))
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, format: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def write_parquet(path, images: list, labels: list[int] | None = None, extra_columns: dict | None = None) -> str:
    """A parquet shard with a `datasets` Image column (`images`: encoded bytes or None) and a ClassLabel column."""
    import datasets

    columns: dict = {"image": [None if b is None else {"bytes": b, "path": None} for b in images]}
    features: dict = {"image": datasets.Image()}
    if labels is not None:
        columns["label"] = labels
        features["label"] = datasets.ClassLabel(num_classes=max(labels) + 1)
    for name, values in (extra_columns or {}).items():
        columns[name] = values
        features[name] = datasets.Value("string")
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(path))
    return str(path)


@functools.lru_cache(maxsize=1)
def embedded_cache_dir() -> str:
    """A per-session cache folder for the embedded dataset, so tests never touch the user's cache."""
    return tempfile.mkdtemp(prefix="dino_hf_embedded_")


def embedded_options(**overrides) -> dict:
    """Small embedded dataset: 200 train / 50 validation images of 64 px in 8 shards each."""
    return {"train_per_class": 20, "validation_per_class": 5, "cache_dir": embedded_cache_dir(), **overrides}
