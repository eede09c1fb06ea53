"""The embedded offline dataset: labelled synthetic images generated deterministically on this machine.

Each image shows one of ten shapes, at a random position and size, in a random colour, on a random cluttered
background. The label is the shape. Colour, position and background dominate the pixels, so raw pixels (and the
features of a random network) separate the classes poorly; DINO's augmentations (colour jitter, grayscale, crops
of different scales) make exactly those nuisances irrelevant, so a short self-supervised run learns to group
images by shape. The dataset is written as parquet shards with a `datasets` `Image` column and a `ClassLabel`
column and loaded through the same `datasets` path as ImageNet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


EMBEDDED_DATASET_NAME = "embedded"
SHAPES = ("disk", "square", "triangle", "plus", "ring", "diamond", "frame", "cross", "star", "half_disk")

# Bump when the images change, so stale caches are never reused.
_GENERATOR_VERSION = 1
_DEFAULTS = {
    "image_size": 64,
    "train_per_class": 1000,
    "validation_per_class": 200,
    "seed": 0,
    "num_shards": 8,
    "jpeg_quality": 90,
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


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def render_image(label: int, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """One RGB image of shape `SHAPES[label]` with random colour, placement and background."""
    scale = 2  # supersampling for smooth edges
    size = image_size * scale
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # Background: a colour, a smooth gradient and random stripes, so that it carries most of the pixel energy.
    background = np.empty((size, size, 3), dtype=np.float32)
    base, other = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / size
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    background[:] = base + (other - base) * ramp[..., None] * rng.uniform(0.2, 0.8)
    stripe_angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20) * scale
    stripes = np.sin(
        2 * np.pi * (np.cos(stripe_angle) * xs + np.sin(stripe_angle) * ys) / period + rng.uniform(0, 6.3)
    )
    background += stripes[..., None] * rng.uniform(0, 40, size=3)

    # The shape: random size and position, fully inside the image, in a colour far enough from the background.
    radius = rng.uniform(0.22, 0.36) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    mask = _shape_mask(SHAPES[label], (xs - cx) / radius, (ys - cy) / radius)
    background_mean = background[mask].mean(axis=0) if mask.any() else background.mean(axis=(0, 1))
    colour = _random_colour(rng)
    for _ in range(20):
        if np.abs(colour - background_mean).sum() > 180:
            break
        colour = _random_colour(rng)
    shade = 1.0 + 0.25 * ((xs - cx) / radius)[..., None] * rng.uniform(-1, 1)
    image = np.where(mask[..., None], colour * shade, background)
    image += rng.normal(0, 6, size=image.shape)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="RGB")
    return pil.resize((image_size, image_size), Image.Resampling.BOX)


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
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
) -> dict[str, list[str]]:
    """Write the shapes dataset as parquet shards under `output_dir/{train,validation}/` and return the files.

    Deterministic: the same arguments give the same bytes. Records are interleaved across classes, so every shard
    holds every class.
    """
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))})
    output_dir = Path(output_dir)
    files: dict[str, list[str]] = {}
    for split_index, (split, per_class) in enumerate(
        (("train", train_per_class), ("validation", validation_per_class))
    ):
        rng = np.random.default_rng([seed, split_index])
        labels = np.tile(np.arange(len(SHAPES)), per_class)
        rng.shuffle(labels)
        images = [
            {"bytes": _encode_jpeg(render_image(int(label), rng, image_size), jpeg_quality), "path": None}
            for label in labels
        ]
        split_dir = output_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        shard_count = max(1, min(num_shards, len(labels)))
        split_files = []
        for shard in range(shard_count):
            rows = range(shard, len(labels), shard_count)
            table = datasets.Dataset.from_dict(
                {"image": [images[i] for i in rows], "label": [int(labels[i]) for i in rows]}, features=features
            )
            path = split_dir / f"{split}-{shard:05d}-of-{shard_count:05d}.parquet"
            table.to_parquet(str(path))
            split_files.append(str(path))
        files[split] = split_files
    return files


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
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return embedded_dataset_files(cache_dir, **overrides)
