"""The embedded offline dataset: labelled synthetic images generated deterministically on this machine.

Each image shows three to six dark copies of one of ten shapes (the label) at random positions and sizes on a
light background, with random grey levels and pixel noise. The class is visible in almost every crop, global or
local, because the shape is repeated across the image, while everything else that differs between images
(position, size, count, the two grey levels) is what DINO's augmentations change between views (random crops,
brightness and contrast jitter). Learning what all views of an image share therefore means learning the shape. A
randomly initialised ViT separates the classes poorly (k-NN about 34% with ten classes), and a five-minute DINO run
on two CPU cores improves on it clearly (the README has the measured numbers).

The dataset is written as parquet shards with a `datasets` `Image` column (JPEG bytes) and a `ClassLabel` column,
and loaded through the same `datasets` parquet path as a Hub dataset. With `with_masks=True` each record also has a
`mask` column: the image's semantic segmentation as a PNG class map ([`SEGMENTATION_CLASSES`]: 0 the background,
`1 + label` the pixels of its shapes), the same images as without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


EMBEDDED_DATASET_NAME = "embedded"
SHAPES = ("disk", "square", "triangle", "plus", "ring", "diamond", "frame", "cross", "star", "half_disk")
# The classes of the `mask` column: the background, then each shape (mask value `1 + label`).
SEGMENTATION_CLASSES = ("background", *SHAPES)

# Bump when the images change, so stale caches are never reused.
_GENERATOR_VERSION = 4
_DEFAULTS = {
    "image_size": 64,
    "train_per_class": 1000,
    "validation_per_class": 200,
    "seed": 0,
    "num_shards": 8,
    "jpeg_quality": 90,
    "with_masks": False,
}


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of the shape `name` on normalised coordinates (`u`, `v` in about [-1, 1])."""
    r = np.sqrt(u * u + v * v)
    a, b = np.abs(u), np.abs(v)
    if name == "disk":
        return r <= 0.95
    if name == "square":
        return np.maximum(a, b) <= 0.75
    if name == "triangle":
        return (v <= 0.75) & (a <= (v + 0.9) * 0.55)
    if name == "plus":
        return ((a <= 0.28) & (b <= 0.9)) | ((b <= 0.28) & (a <= 0.9))
    if name == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if name == "diamond":
        return a + b <= 0.95
    if name == "frame":
        m = np.maximum(a, b)
        return (m <= 0.8) & (m >= 0.5)
    if name == "cross":
        return ((np.abs(u - v) <= 0.38) | (np.abs(u + v) <= 0.38)) & (np.maximum(a, b) <= 0.8)
    if name == "star":
        theta = np.arctan2(v, u)
        return r <= 0.45 + 0.5 * np.abs(np.cos(2.5 * theta))
    if name == "half_disk":
        return (r <= 0.95) & (v >= -0.1)
    raise ValueError(f"Unknown shape {name!r}")


def render_image(label: int, rng: np.random.Generator, image_size: int = 64, **options: Any) -> Image.Image:
    """One RGB image with `min_count`..`max_count` dark copies of `SHAPES[label]` on a light background: the image of
    [`render_image_and_mask`] (`options`: its `min_count`, `max_count`, `radius_range`)."""
    return render_image_and_mask(label, rng, image_size, **options)[0]


def render_image_and_mask(
    label: int,
    rng: np.random.Generator,
    image_size: int = 64,
    min_count: int = 3,
    max_count: int = 6,
    radius_range: tuple[float, float] = (0.09, 0.16),
) -> tuple[Image.Image, np.ndarray]:
    """One RGB image with `min_count`..`max_count` dark copies of `SHAPES[label]` on a light background, and its
    shapes' mask, `(image_size, image_size)` bool: the pixels at least half covered by a shape (the image's
    box-filtered edges cut at 50%).

    Radii are fractions of the side; the two grey levels, the positions and the sizes are random.
    """
    scale = 2  # supersampling for smooth edges
    size = image_size * scale
    light, dark = rng.uniform(170, 255), rng.uniform(0, 90)
    image = np.full((size, size, 3), light, dtype=np.float32)
    covered = np.zeros((size, size), dtype=bool)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(min_count, max_count + 1))):
        # A few tries to avoid overlapping an earlier copy; overlap is allowed if they all fail.
        for _ in range(30):
            radius = rng.uniform(*radius_range) * size
            cx, cy = rng.uniform(radius, size - radius, size=2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > 0.9 * (radius + r) ** 2 for x, y, r in placed):
                break
        placed.append((cx, cy, radius))
        # Draw inside the shape's bounding box only.
        x0, x1 = int(max(cx - radius, 0)), int(min(cx + radius + 1, size))
        y0, y1 = int(max(cy - radius, 0)), int(min(cy + radius + 1, size))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        mask = _shape_mask(SHAPES[label], (xs - cx) / radius, (ys - cy) / radius)
        image[y0:y1, x0:x1][mask] = dark
        covered[y0:y1, x0:x1] |= mask
    small = Image.fromarray(image.astype(np.uint8), mode="RGB")
    small = np.asarray(small.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    small += 5.0 * rng.standard_normal(small.shape, dtype=np.float32)  # sensor-like noise at the final resolution
    coverage = covered.reshape(image_size, scale, image_size, scale).mean(axis=(1, 3))
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), mode="RGB"), coverage >= 0.5


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def generate_shapes_dataset(
    output_dir: str | os.PathLike,
    *,
    image_size: int = 64,
    train_per_class: int = 1000,
    validation_per_class: int = 200,
    seed: int = 0,
    num_shards: int = 8,
    jpeg_quality: int = 90,
    with_masks: bool = False,
) -> dict[str, list[str]]:
    """Write the shapes dataset as parquet shards under `output_dir/{train,validation}/` and return the files.

    Deterministic: the same arguments give the same bytes. Records are interleaved across classes, so every shard
    holds every class. `with_masks` adds the `mask` column (PNG class maps, [`SEGMENTATION_CLASSES`]); the images
    are the same.
    """
    import datasets
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    progress_was_enabled = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        splits = {"train": train_per_class, "validation": validation_per_class}
        return _write_shards(datasets, output_dir, image_size, splits, seed, num_shards, jpeg_quality, with_masks)
    finally:
        if progress_was_enabled:
            enable_progress_bar()


def _write_shards(datasets, output_dir, image_size, splits, seed, num_shards, quality, with_masks):
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))}
    if with_masks:
        features["mask"] = datasets.Image()
    output_dir = Path(output_dir)
    files: dict[str, list[str]] = {}
    for split_index, (split, per_class) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, split_index])
        labels = np.tile(np.arange(len(SHAPES)), per_class)
        rng.shuffle(labels)
        records = [_record(int(label), rng, image_size, quality, with_masks) for label in labels]
        split_dir = output_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        shard_count = max(1, min(num_shards, len(labels)))
        split_files = []
        for shard in range(shard_count):
            rows = [records[i] for i in range(shard, len(labels), shard_count)]
            columns = {name: [row[name] for row in rows] for name in features}
            table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
            path = split_dir / f"{split}-{shard:05d}-of-{shard_count:05d}.parquet"
            table.to_parquet(str(path))
            split_files.append(str(path))
        files[split] = split_files
    return files


def _record(label: int, rng: np.random.Generator, image_size: int, quality: int, with_masks: bool) -> dict:
    image, covered = render_image_and_mask(label, rng, image_size)
    record = {"image": {"bytes": _encode(image, "JPEG", quality=quality), "path": None}, "label": label}
    if with_masks:  # PNG: lossless, so the class values stay exact
        class_map = Image.fromarray((covered * (1 + label)).astype(np.uint8), mode="L")
        record["mask"] = {"bytes": _encode(class_map, "PNG"), "path": None}
    return record


def _default_cache_dir() -> Path:
    root = os.environ.get("DINO_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "dino_hf"
    )
    return Path(root) / "datasets"


def embedded_dataset_files(cache_dir: str | os.PathLike | None = None, **overrides) -> dict[str, list[str]]:
    """Parquet files of the embedded dataset, generated on first use and cached (atomically) afterwards.

    Returns `{"train": [...], "validation": [...]}`. Keyword arguments override the generator defaults
    (e.g. `train_per_class=100` for tests); each distinct set of arguments has its own cache entry.
    """
    params = {**_DEFAULTS, **overrides, "version": _GENERATOR_VERSION}
    unknown = set(overrides) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown embedded dataset options: {sorted(unknown)}")
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    target = root / f"shapes-{key}"
    manifest = target / "manifest.json"
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        return {split: [str(target / name) for name in names] for split, names in stored["files"].items()}
    root.mkdir(parents=True, exist_ok=True)
    # Generate into a temporary folder and rename, so an interrupted generation never leaves a half dataset.
    staging = Path(tempfile.mkdtemp(prefix=f".shapes-{key}-", dir=root))
    generator_args = {k: v for k, v in params.items() if k != "version"}
    files = generate_shapes_dataset(staging, **generator_args)
    relative = {split: [str(Path(f).relative_to(staging)) for f in paths] for split, paths in files.items()}
    (staging / "manifest.json").write_text(json.dumps({"params": params, "files": relative}, indent=2))
    try:
        os.replace(staging, target)
    except OSError:
        # Another process finished first; keep its copy.
        shutil.rmtree(staging, ignore_errors=True)
    return embedded_dataset_files(cache_dir, **overrides)
