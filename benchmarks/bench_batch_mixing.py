# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""How well pretraining batches mix on class-ordered data: distinct classes per batch against random sampling.

Writes 20 classes x 100 small PNGs, class by class, as an image folder and as 20 parquet shards (one class each),
and reads 40 batches of 32 with a 64-record shuffle buffer (the ratio ImageNet has to the default buffer) from:

1. random sampling (the target);
2. the image folder as `load_image_dataset` opens it (random access: a global permutation per epoch);
3. the image folder streamed in storage order (how it was read before random access);
4. the parquet shards streamed, one shard at a time into the buffer, and 4 shards interleaved (now).

Run from the repository root (about a minute on 2 CPU cores):

    python benchmarks/bench_batch_mixing.py
    python benchmarks/bench_batch_mixing.py --classes 4 --per_class 16 --batch 8 --buffer 16 --batches 4  # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import dino_hf.data.streams as streams  # noqa: E402
from dino_hf.data import ImageSource, build_pretraining_loader, load_image_dataset  # noqa: E402


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(root: Path, classes: int, per_class: int) -> tuple[Path, str]:
    image = _png()
    for c in range(classes):
        folder = root / "folder" / "train" / f"c{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"c{c:02d}_{i:03d}.png").write_bytes(image)
        table = {"image": [{"bytes": image, "path": None}] * per_class, "label": [c] * per_class}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)})
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / f"part-{c:02d}.parquet"))
    return root / "folder", str(root / "part-*.parquet")


def _distinct(source: ImageSource, args: argparse.Namespace) -> float:
    loader = build_pretraining_loader(source, args.batch, num_workers=0, shuffle_buffer_size=args.buffer, seed=0)
    iterator = iter(loader)
    return float(np.mean([len(set(next(iterator).labels.tolist())) for _ in range(args.batches)]))


def _streamed_folder(folder: Path) -> ImageSource:
    stream = datasets.load_dataset(str(folder), split="train", streaming=True)
    stream = stream.cast_column("image", datasets.Image(decode=False))
    return ImageSource(stream, "image", "label", None, stream.num_shards, None, str(folder), "train")


@contextlib.contextmanager
def _interleaving(width: int) -> Iterator[None]:
    """Streams read `width` shards at a time inside the block (the pipeline's `_INTERLEAVE`, restored after)."""
    previous, streams._INTERLEAVE = streams._INTERLEAVE, width
    try:
        yield
    finally:
        streams._INTERLEAVE = previous


@contextlib.contextmanager
def _datasets_cache(folder: Path) -> Iterator[None]:
    """`datasets` caches what it builds in `folder` inside the block (the user's cache is left alone and restored)."""
    previous, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, folder
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = previous


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per_class", type=int, default=100, help="images per class")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--buffer", type=int, default=64, help="shuffle buffer (records)")
    parser.add_argument("--batches", type=int, default=40, help="batches read per layout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print and return the mean number of distinct classes per batch of each way of reading."""
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.classes), args.per_class)
    results = {
        "random sampling": float(np.mean([len(set(rng.permutation(labels)[: args.batch])) for _ in range(2000)]))
    }
    with tempfile.TemporaryDirectory() as tmp, _datasets_cache(Path(tmp) / "cache"):
        folder, shards = _write(Path(tmp), args.classes, args.per_class)
        results["image folder, random access (global permutation)"] = _distinct(load_image_dataset(str(folder)), args)
        results["image folder, streamed in storage order"] = _distinct(_streamed_folder(folder), args)
        for width in (1, streams._INTERLEAVE):
            with _interleaving(width):
                results[f"parquet shards streamed, {width} shard(s) at a time"] = _distinct(
                    load_image_dataset(shards), args
                )
    print(
        f"{args.classes} classes x {args.per_class} images, batch {args.batch}, buffer {args.buffer}: "
        "distinct classes per batch"
    )
    for label, value in results.items():
        print(f"  {label:<50} {value:5.1f}")
    return results


if __name__ == "__main__":
    main()
