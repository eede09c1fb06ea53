"""The embedded dataset's generator (`dino_hf.data.synthetic`): its segmentation masks, without changing its images."""

import datasets
import numpy as np
import pyarrow.parquet as pq

from dino_hf.data.synthetic import (
    SEGMENTATION_CLASSES,
    SHAPES,
    generate_shapes_dataset,
    render_image,
    render_image_and_mask,
)


def test_the_mask_covers_the_dark_shapes_of_the_same_image():
    image, mask = render_image_and_mask(4, np.random.default_rng(7))
    assert np.array_equal(np.asarray(image), np.asarray(render_image(4, np.random.default_rng(7))))
    assert mask.shape == (64, 64) and mask.dtype == bool and 0.03 < mask.mean() < 0.5
    pixels = np.asarray(image, dtype=np.float32).mean(axis=-1)
    assert pixels[mask].mean() + 60 < pixels[~mask].mean()  # dark shapes on a light background


def test_with_masks_adds_class_maps_and_keeps_every_image_byte(tmp_path):
    options = dict(train_per_class=2, validation_per_class=1, num_shards=2)
    plain = generate_shapes_dataset(tmp_path / "plain", **options)
    masked = generate_shapes_dataset(tmp_path / "masked", **options, with_masks=True)
    for split in ("train", "validation"):
        for without, with_masks in zip(plain[split], masked[split]):
            a, b = pq.read_table(without).to_pydict(), pq.read_table(with_masks).to_pydict()
            assert a["image"] == b["image"] and a["label"] == b["label"] and "mask" not in a
    records = datasets.load_dataset("parquet", data_files=masked["train"], split="train")
    assert ("background", *SHAPES) == SEGMENTATION_CLASSES
    for record in records:
        assert set(np.unique(np.asarray(record["mask"]))) == {0, record["label"] + 1}
