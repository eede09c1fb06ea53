"""Decoding and the loaders: bad inputs, statistics, sharding across processes, exact resume, evaluation order."""

import json

import numpy as np
import pytest
import torch
from data_helpers import embedded_options, encode, smooth_image, write_parquet
from PIL import Image

from dino_hf.data import (
    DataQualityError,
    DataStats,
    DecodeOptions,
    ImageBatch,
    build_eval_loader,
    build_pretraining_loader,
    decode_image,
    load_image_dataset,
)
from dino_hf.data.decoding import collate_images
from dino_hf.data.synthetic import SHAPES


RGB = smooth_image(48, 64, seed=0, noise=2.0)  # JPEG-friendly content


def _decode(value, **options):
    return decode_image(value, DecodeOptions(**options))


def _record(data: bytes) -> dict:
    return {"bytes": data, "path": None}


# ---------------------------------------------------------------------------------------------------------------------
# Decoding every kind of bad or unusual input
# ---------------------------------------------------------------------------------------------------------------------


def test_decodes_rgb_jpeg_and_png():
    pixels, reason, conversions = _decode(_record(encode(RGB, "PNG")))
    assert reason is None and conversions == []
    np.testing.assert_array_equal(pixels, RGB)
    pixels, _, _ = _decode(_record(encode(RGB, "JPEG", quality=95)))
    assert pixels.shape == (48, 64, 3) and np.abs(pixels.astype(float) - RGB).mean() < 4


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "missing"),
        ({"bytes": None, "path": None}, "missing"),
        (_record(b"definitely not an image"), "undecodable"),
        (_record(encode(RGB, "JPEG")[: len(encode(RGB, "JPEG")) * 2 // 3]), "truncated"),
        (_record(encode(RGB, "PNG")[: len(encode(RGB, "PNG")) // 2]), "truncated"),
        (_record(encode(np.zeros((1, 1, 3), np.uint8))), "too_small"),
        (_record(encode(np.zeros((10, 300, 3), np.uint8))), "too_small"),
        ({"bytes": None, "path": "/nonexistent/dir/image.jpg"}, "unreadable"),
    ],
)
def test_bad_records_are_skipped_with_a_reason(value, reason):
    pixels, skip_reason, _ = _decode(value)
    assert pixels is None and skip_reason == reason


def test_decompression_bombs_are_skipped_before_decoding():
    # 9500 x 9500 = 90.25 M pixels, above PIL's MAX_IMAGE_PIXELS (89.5 M); 11 kB as a bilevel PNG.
    assert Image.MAX_IMAGE_PIXELS < 9500 * 9500
    bomb = encode(Image.new("1", (9500, 9500)))
    assert _decode(_record(bomb))[1] == "decompression_bomb"


def test_odd_modes_are_converted_to_rgb_and_named():
    gray = RGB[..., 0]
    pixels, _, conversions = _decode(_record(encode(Image.fromarray(gray, "L"))))
    assert conversions == ["grayscale"] and pixels.shape == (48, 64, 3)
    assert (pixels == gray[..., None]).all()

    palette = Image.fromarray(RGB).quantize(16)
    pixels, _, conversions = _decode(_record(encode(palette)))
    assert conversions == ["palette"]
    np.testing.assert_array_equal(pixels, np.asarray(palette.convert("RGB")))

    cmyk = Image.fromarray(RGB).convert("CMYK")
    pixels, _, conversions = _decode(_record(encode(cmyk, "JPEG", quality=95)))
    assert conversions == ["cmyk"] and np.abs(pixels.astype(float) - RGB).mean() < 6

    sixteen = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    pixels, _, conversions = _decode(_record(encode(Image.fromarray(sixteen))))
    assert conversions == ["16bit"]
    np.testing.assert_array_equal(pixels[..., 0], (sixteen >> 8).astype(np.uint8))


def test_transparent_pixels_are_composited_on_white():
    rgba = np.concatenate([RGB, np.full((48, 64, 1), 255, np.uint8)], axis=-1)
    rgba[:, :32, 3] = 0  # left half fully transparent
    rgba[:, 32:40, 3] = 128  # a half-transparent band
    pixels, _, conversions = _decode(_record(encode(Image.fromarray(rgba, "RGBA"))))
    assert conversions == ["alpha"]
    assert (pixels[:, :32] == 255).all()
    np.testing.assert_array_equal(pixels[:, 40:], RGB[:, 40:])
    blended = (RGB[:, 32:40].astype(float) * 128 + 255 * 127) / 255
    assert np.abs(pixels[:, 32:40] - blended).max() <= 1.0

    la = Image.fromarray(np.stack([RGB[..., 1], np.zeros((48, 64), np.uint8)], -1), "LA")
    pixels, _, conversions = _decode(_record(encode(la)), background=(0, 0, 0))
    assert conversions == ["alpha"] and (pixels == 0).all()


def test_large_jpegs_are_decoded_at_reduced_scale_keeping_the_needed_pixels():
    big = np.asarray(Image.fromarray(smooth_image(150, 200, seed=4)).resize((2000, 1500)))
    min_pixels = 245_760
    pixels, _, conversions = _decode(_record(encode(big, "JPEG", quality=90)), min_pixels=min_pixels)
    assert conversions == ["downscaled"]
    height, width = pixels.shape[:2]
    assert height * width >= min_pixels and height * width < 4 * min_pixels
    assert width / height == pytest.approx(4 / 3, rel=0.01)
    # The short-side rule of the evaluation loader.
    pixels, _, _ = _decode(_record(encode(big, "JPEG", quality=90)), min_short_side=256)
    assert 256 <= min(pixels.shape[:2]) < 512
    # Images already small enough are untouched.
    pixels, _, conversions = _decode(_record(encode(RGB, "JPEG")), min_pixels=min_pixels)
    assert pixels.shape == RGB.shape and conversions == []


def test_extreme_aspect_ratios_are_capped_at_max_side():
    panorama = encode(np.zeros((40, 3000, 3), np.uint8) + 100)
    pixels, _, conversions = _decode(_record(panorama), max_side=1024)
    assert max(pixels.shape[:2]) <= 1024 and conversions == ["downscaled"]


def test_data_stats_count_and_merge():
    stats = DataStats(seen=3)
    stats.record_skip("a", "truncated")
    stats.record_conversions("b", ["cmyk"])
    other = DataStats(seen=2)
    other.record_skip("c", "truncated")
    other.record_skip("d", "missing")
    stats += other
    assert (stats.seen, stats.skipped, stats.converted) == (5, 3, 1)
    assert stats.skipped_by_reason == {"truncated": 2, "missing": 1}
    assert stats.first_skipped_ids == ["a", "c", "d"]
    assert stats.skipped_ids_by_reason == {"truncated": ["a", "c"], "missing": ["d"]}
    assert stats.bad_fraction == pytest.approx(0.6)
    assert "truncated: 2 [a, c]" in stats.summary() and "cmyk: 1" in stats.summary()
    assert json.loads(json.dumps(stats.to_dict()))["converted_by_reason"] == {"cmyk": 1}


def test_collate_pads_with_zeros_and_records_sizes():
    a = np.full((3, 5, 3), 7, np.uint8)
    b = np.full((4, 2, 3), 9, np.uint8)
    batch = collate_images([a, b], [1, -1], ["x", "y"], DataStats(seen=2))
    assert batch.images.shape == (2, 3, 4, 5) and batch.images.dtype == torch.uint8
    assert batch.sizes.tolist() == [[3, 5], [4, 2]] and batch.labels.tolist() == [1, -1]
    assert (batch.images[0, :, :3, :5] == 7).all() and (batch.images[0, :, 3:] == 0).all()
    assert (batch.images[1, :, :, :2] == 9).all() and (batch.images[1, :, :, 2:] == 0).all()
    moved = batch.to("cpu")
    assert isinstance(moved, ImageBatch) and torch.equal(moved.images, batch.images) and moved.ids == ["x", "y"]


# ---------------------------------------------------------------------------------------------------------------------
# Loaders on small local datasets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_train():
    return load_image_dataset("embedded", "train", embedded_options=embedded_options())


@pytest.fixture(scope="module")
def embedded_validation():
    return load_image_dataset("embedded", "validation", embedded_options=embedded_options())


def test_embedded_dataset_loads_with_labels(embedded_train):
    source = embedded_train
    assert (source.image_column, source.label_column) == ("image", "label")
    assert source.num_examples == 200 and source.num_shards == 8 and source.class_names == list(SHAPES)
    batch = next(iter(build_pretraining_loader(source, 20, num_workers=0, shuffle_buffer_size=1)))
    assert batch.images.shape == (20, 3, 64, 64) and batch.sizes.tolist() == [[64, 64]] * 20
    assert batch.labels.min() >= 0 and batch.labels.max() < 10 and len(set(batch.labels.tolist())) > 3
    assert batch.stats.seen == 20 and batch.stats.skipped == 0


def _take(loader, n):
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(n)]
    del iterator  # stops the workers
    return batches


def _ids(batches):
    return [i for b in batches for i in b.ids]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_read_disjoint_parts_covering_the_dataset(embedded_train, num_workers):
    # 200 records, 8 shards; with batch 10 each rank's epoch is exactly 10 batches.
    epochs = {0: [], 1: []}  # epoch -> the ids each rank read in it
    for rank in (0, 1):
        loader = build_pretraining_loader(
            embedded_train, 10, num_workers=num_workers, seed=3, rank=rank, world_size=2, shuffle_buffer_size=64
        )
        batches = _take(loader, 20)
        assert {tuple(s) for s in batches[9].stream_state["streams"]} == {(0, 100 // max(1, num_workers))}
        for epoch, part in ((0, batches[:10]), (1, batches[10:])):
            ids = _ids(part)
            assert len(ids) == len(set(ids)) == 100  # no record twice within an epoch
            epochs[epoch].append(ids)
        assert epochs[1][rank] != epochs[0][rank]  # a new epoch is a new order
    every_record = {f"train/{s:05d}:{r}" for s in range(8) for r in range(25)}
    for rank_0, rank_1 in epochs.values():
        assert not set(rank_0) & set(rank_1)
        assert set(rank_0) | set(rank_1) == every_record


def test_few_shards_fall_back_to_splitting_records(tmp_path):
    # 3 shards cannot be split evenly between 2 processes: each keeps every other record of a shared order.
    files = [
        write_parquet(
            tmp_path / f"part-{i}.parquet",
            [encode(smooth_image(20, 20, seed=10 * i + j)) for j in range(10)],
            [0] * 10,
        )
        for i in range(3)
    ]
    source = load_image_dataset(str(tmp_path / "*.parquet"))
    assert source.num_shards == 3
    epochs = []
    for rank in (0, 1):
        loader = build_pretraining_loader(
            source, 5, num_workers=0, seed=0, rank=rank, world_size=2, shuffle_buffer_size=8
        )
        batches = _take(loader, 3)
        assert batches[-1].stream_state["mode"] == "examples"
        epochs.append(_ids(batches))
    assert len(files) == 3 and not set(epochs[0]) & set(epochs[1])
    assert len(set(epochs[0]) | set(epochs[1])) == 30


def _assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        assert a.ids == b.ids
        assert torch.equal(a.labels, b.labels) and torch.equal(a.sizes, b.sizes) and torch.equal(a.images, b.images)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_yields_exactly_the_next_batches_across_epochs(embedded_train, num_workers):
    # Batch 16 does not divide a stream's epoch (200 or 100 records): batches straddle epoch boundaries.
    kwargs = dict(num_workers=num_workers, seed=11, shuffle_buffer_size=40)
    reference = _take(build_pretraining_loader(embedded_train, 16, **kwargs), 30)
    epochs = {e for b in reference for e, _ in b.stream_state["streams"]}
    assert max(epochs) >= 2
    for stop in (7, 18):
        state = json.loads(json.dumps(reference[stop - 1].stream_state))  # survives a checkpoint file
        resumed = _take(build_pretraining_loader(embedded_train, 16, resume_state=state, **kwargs), 30 - stop)
        _assert_same_batches(reference[stop:], resumed)


def test_loader_state_dict_continues_where_iteration_stopped(embedded_train):
    loader = build_pretraining_loader(embedded_train, 16, num_workers=0, seed=2, shuffle_buffer_size=20)
    reference = _take(build_pretraining_loader(embedded_train, 16, num_workers=0, seed=2, shuffle_buffer_size=20), 6)
    first = _take(loader, 4)
    assert loader.state_dict() == first[-1].stream_state
    _assert_same_batches(reference, first + _take(loader, 2))


def test_resume_state_must_describe_the_same_data(embedded_train):
    state = _take(build_pretraining_loader(embedded_train, 8, num_workers=0, seed=0), 1)[0].stream_state
    with pytest.raises(ValueError, match="another seed"):
        build_pretraining_loader(embedded_train, 8, num_workers=0, seed=1, resume_state=state)
    two = [
        _take(build_pretraining_loader(embedded_train, 8, num_workers=0, rank=r, world_size=2), 1)[0] for r in (0, 1)
    ]
    with pytest.raises(ValueError, match="pass the list of every process's state"):
        build_pretraining_loader(embedded_train, 8, num_workers=0, resume_state=two[0].stream_state)
    # Another worker count is an elastic resume: a streamed source restarts its epoch in progress.
    loader = build_pretraining_loader(embedded_train, 8, num_workers=2, seed=0, resume_state=state)
    assert loader.state_dict()["streams"] == [[0, 0], [0, 0]]


def _mixed_dataset(tmp_path, num_bad: int, total: int = 40) -> str:
    good = encode(smooth_image(24, 24, seed=1), "JPEG")
    kinds = [b"garbage", None, encode(np.zeros((2, 2, 3), np.uint8)), good[: len(good) // 2]]
    images = [kinds[i % 4] if i < num_bad else good for i in range(total)]
    order = np.random.default_rng(0).permutation(total)
    path = write_parquet(tmp_path / "mixed.parquet", [images[i] for i in order], [int(i) % 3 for i in order])
    return path


def test_bad_records_are_counted_per_batch_and_replaced(tmp_path):
    source = load_image_dataset(_mixed_dataset(tmp_path, num_bad=8))
    batches = _take(build_pretraining_loader(source, 8, num_workers=0, shuffle_buffer_size=1), 4)
    assert all(len(b) == 8 for b in batches)
    total = DataStats()
    for b in batches:
        total += b.stats
        assert b.stats.seen == len(b) + b.stats.skipped
    assert total.skipped_by_reason == {"undecodable": 2, "missing": 2, "too_small": 2, "truncated": 2}
    assert all(i.startswith("train/00000:") for i in total.first_skipped_ids)
    assert not set(total.first_skipped_ids) & set(_ids(batches))


def test_mostly_bad_data_stops_with_a_clear_error(tmp_path):
    source = load_image_dataset(_mixed_dataset(tmp_path, num_bad=36))
    loader = build_pretraining_loader(source, 8, num_workers=0, bad_fraction_min_records=40)
    with pytest.raises(DataQualityError, match=r"max_bad_fraction=50%.*undecodable: \d+ \[train/00000:"):
        _take(loader, 1)


def test_mostly_bad_data_error_crosses_worker_processes(tmp_path):
    source = load_image_dataset(_mixed_dataset(tmp_path, num_bad=40))
    loader = build_pretraining_loader(source, 8, num_workers=1, bad_fraction_min_records=20)
    with pytest.raises(DataQualityError, match="could not be used"):
        _take(loader, 1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_yields_every_record_once_in_a_fixed_order(embedded_validation, num_workers):
    batches = list(build_eval_loader(embedded_validation, 8, num_workers=num_workers))
    ids = _ids(batches)
    assert len(ids) == len(set(ids)) == 50
    assert ids == _ids(build_eval_loader(embedded_validation, 8, num_workers=num_workers))
    labels = torch.cat([b.labels for b in batches])
    assert labels.min() >= 0 and torch.bincount(labels).tolist() == [5] * 10
    assert all(b.stream_state == {} for b in batches)


def test_eval_loader_splits_ranks_and_honours_max_images(embedded_validation):
    parts = [_ids(build_eval_loader(embedded_validation, 7, num_workers=0, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) + len(parts[1]) == 50
    first = [
        _ids(build_eval_loader(embedded_validation, 4, num_workers=0, rank=r, world_size=2, max_images=9))
        for r in (0, 1)
    ]
    assert sorted(first[0] + first[1]) == sorted(_ids(build_eval_loader(embedded_validation, 50, num_workers=0,
                                                                     max_images=9)))  # fmt: skip
    assert len(first[0]) == 5 and len(first[1]) == 4


def _class_sorted_parquet(folder, files=1, per_class=10, classes=6):
    """`classes` classes of `per_class` images each, stored class after class (as an image folder lists them),
    over `files` parquet files."""
    labels = [c for c in range(classes) for _ in range(per_class)]
    images = [encode(smooth_image(20, 20, seed=i)) for i in range(len(labels))]
    step = len(labels) // files
    return [
        write_parquet(
            folder / f"part-{f}.parquet", images[f * step : (f + 1) * step], labels[f * step : (f + 1) * step]
        )
        for f in range(files)
    ]


def test_evenly_spread_indices_are_seeded_distinct_and_cover_every_stratum():
    from dino_hf.data import evenly_spread_indices

    picked = evenly_spread_indices(60, 12, seed=3)
    assert picked == evenly_spread_indices(60, 12, seed=3) != evenly_spread_indices(60, 12, seed=4)
    assert len(set(picked)) == 12 and picked == sorted(picked)
    assert [i // 5 for i in picked] == list(range(12))  # one in each fifth of the range
    assert evenly_spread_indices(7, 10) == list(range(7))
    assert sorted(set(evenly_spread_indices(1000, 999))) == evenly_spread_indices(1000, 999)


def test_eval_loader_max_images_spreads_over_a_class_sorted_folder(tmp_path):
    # The first 12 records in storage order hold 2 of the 6 classes: the k-NN bank of a class-sorted folder was
    # that. The limit now takes a seeded subset spread over the whole split: 2 images of every class.
    (path,) = _class_sorted_parquet(tmp_path)
    source = load_image_dataset(path, streaming=False)
    labels = torch.cat([b.labels for b in build_eval_loader(source, 5, num_workers=0, max_images=12)])
    assert sorted(labels.tolist()) == [c for c in range(6) for _ in range(2)]
    ids = [_ids(build_eval_loader(source, 4, num_workers=0, max_images=12, seed=s)) for s in (0, 0, 1)]
    assert ids[0] == ids[1] and ids[0] != ids[2]  # seeded: the same subset every time, another with another seed
    parts = [_ids(build_eval_loader(source, 4, num_workers=0, max_images=12, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == sorted(ids[0])  # two processes share the same subset
    assert all(i.startswith("train/row") for i in ids[0])  # ids name the rows of the whole split
    rows = sorted(int(i.split("row")[1]) for i in ids[0])
    assert [r // 5 for r in rows] == list(range(12))


def test_eval_loader_max_images_of_a_stream_takes_every_file_and_warns(tmp_path, caplog):
    _class_sorted_parquet(tmp_path, files=3)  # classes 0-1, 2-3, 4-5
    source = load_image_dataset(str(tmp_path / "*.parquet"))
    assert source.streaming
    with caplog.at_level("WARNING"):
        labels = torch.cat([b.labels for b in build_eval_loader(source, 6, num_workers=0, max_images=6)])
    assert "is a stream" in caplog.text and "streaming=False" in caplog.text
    assert len(labels) == 6 and {label // 2 for label in labels.tolist()} == {0, 1, 2}  # every file contributes


def test_map_style_source_streams_the_same_records(tmp_path):
    path = write_parquet(
        tmp_path / "small.parquet", [encode(smooth_image(20, 20, seed=i)) for i in range(12)], list(range(12))
    )
    source = load_image_dataset(path, streaming=False)
    assert not source.streaming and source.num_examples == 12
    labels = torch.cat([b.labels for b in build_eval_loader(source, 5, num_workers=0)])
    assert sorted(labels.tolist()) == list(range(12))
    batch = _take(build_pretraining_loader(source, 12, num_workers=0, shuffle_buffer_size=4), 1)[0]
    assert sorted(batch.labels.tolist()) == list(range(12))


def test_image_batch_survives_pickling_between_processes():
    # What a DataLoader worker does with a batch: pickle through shared memory.
    import pickle

    batch = collate_images([np.zeros((4, 4, 3), np.uint8)], [3], ["id"], DataStats(seen=1))
    restored = pickle.loads(pickle.dumps(batch))
    assert restored.ids == ["id"] and torch.equal(restored.images, batch.images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning memory needs an accelerator")
def test_pinned_batches_keep_their_layout_and_move_to_the_gpu():
    batch = collate_images([np.full((4, 6, 3), 5, np.uint8)], [0], ["id"], DataStats(seen=1))
    pinned = batch.pin_memory()
    assert pinned.images.is_pinned() and pinned.images.stride() == batch.images.stride()
    moved = pinned.to("cuda")
    assert moved.images.is_cuda and torch.equal(moved.images.cpu(), batch.images)
