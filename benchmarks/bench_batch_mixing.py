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
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

import dino_hf.data.streams as streams
from dino_hf.data import ImageSource, build_pretraining_loader, load_image_dataset


CLASSES, PER_CLASS, BATCH, BUFFER, BATCHES = 20, 100, 32, 64, 40


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(root: Path) -> tuple[Path, str]:
    image = _png()
    for c in range(CLASSES):
        folder = root / "folder" / "train" / f"c{c:02d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            (folder / f"c{c:02d}_{i:03d}.png").write_bytes(image)
        table = {"image": [{"bytes": image, "path": None}] * PER_CLASS, "label": [c] * PER_CLASS}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=CLASSES)})
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / f"part-{c:02d}.parquet"))
    return root / "folder", str(root / "part-*.parquet")


def _distinct(source: ImageSource) -> float:
    iterator = iter(build_pretraining_loader(source, BATCH, num_workers=0, shuffle_buffer_size=BUFFER, seed=0))
    return float(np.mean([len(set(next(iterator).labels.tolist())) for _ in range(BATCHES)]))


def _streamed_folder(folder: Path) -> ImageSource:
    stream = datasets.load_dataset(str(folder), split="train", streaming=True)
    stream = stream.cast_column("image", datasets.Image(decode=False))
    return ImageSource(stream, "image", "label", None, stream.num_shards, None, str(folder), "train")


def main() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    random = np.mean([len(set(rng.permutation(labels)[:BATCH])) for _ in range(2000)])
    print(f"{CLASSES} classes x {PER_CLASS} images, batch {BATCH}, buffer {BUFFER}: distinct classes per batch")
    print(f"  random sampling                                    {random:5.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp) / "cache"
        folder, shards = _write(Path(tmp))
        print(
            f"  image folder, random access (global permutation)   {_distinct(load_image_dataset(str(folder))):5.1f}"
        )
        print(f"  image folder, streamed in storage order            {_distinct(_streamed_folder(folder)):5.1f}")
        interleave = streams._INTERLEAVE
        for width in (1, interleave):
            streams._INTERLEAVE = width
            label = f"parquet shards streamed, {width} shard(s) at a time"
            print(f"  {label:<50} {_distinct(load_image_dataset(shards)):5.1f}")
        streams._INTERLEAVE = interleave


if __name__ == "__main__":
    main()
