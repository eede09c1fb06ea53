"""Batches that mix like random sampling: the global permutation of random-access sources, its exact and elastic
resume, and the warning for class-ordered streams."""

import json
import logging

import datasets
import numpy as np
import pytest
from data_helpers import encode, smooth_image, write_parquet

from dino_hf.data import build_pretraining_loader, load_image_dataset
from dino_hf.data.diversity import BatchDiversityCheck, expected_distinct, file_name_prefix


NUM_CLASSES, PER_CLASS = 20, 100


@pytest.fixture(scope="module")
def class_ordered_folder(tmp_path_factory):
    """ImageNet's layout in small: `train/<class>/<class>_<i>.png`, 20 classes x 100 images."""
    root = tmp_path_factory.mktemp("folder")
    image = encode(smooth_image(20, 20, seed=0))
    for c in range(NUM_CLASSES):
        folder = root / "train" / f"c{c:02d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            (folder / f"c{c:02d}_{i:03d}.png").write_bytes(image)
    return root


@pytest.fixture(scope="module")
def folder_source(class_ordered_folder):
    # The folder's Arrow table of paths goes into a temporary cache, not the user's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", class_ordered_folder / "cache")
        return load_image_dataset(str(class_ordered_folder / "train"), "train")


def _distinct_per_batch(batches):
    return float(np.mean([len(set(b.labels.tolist())) for b in batches]))


def _random_distinct(batch_size: int) -> float:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    return float(np.mean([len(set(rng.permutation(labels)[:batch_size])) for _ in range(2000)]))


def _take(loader, n):
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(n)]
    del iterator
    return batches


def _ids(batches):
    return [i for b in batches for i in b.ids]


def test_class_ordered_folder_mixes_like_random_sampling(folder_source, caplog):
    source = folder_source
    assert source.num_examples == NUM_CLASSES * PER_CLASS and not source.streaming
    with caplog.at_level(logging.WARNING, logger="dino_hf"):
        batches = _take(build_pretraining_loader(source, 32, num_workers=0, seed=0, shuffle_buffer_size=64), 40)
    random = _random_distinct(32)  # 16.2
    assert _distinct_per_batch(batches) >= 0.8 * random
    assert "BIASED DATA ORDER" not in caplog.text
    # Every record once per epoch (62 full batches of 32 in 2000 records; the 63rd straddles epochs).
    assert len(set(_ids(batches))) == len(_ids(batches)) == 40 * 32


def test_class_ordered_stream_warns_loudly(tmp_path, caplog):
    image = encode(smooth_image(20, 20, seed=0))
    labels = [c for c in range(NUM_CLASSES) for _ in range(PER_CLASS)]
    source = load_image_dataset(write_parquet(tmp_path / "sorted.parquet", [image] * len(labels), labels))
    assert source.streaming and source.num_examples == 2000
    with caplog.at_level(logging.WARNING, logger="dino_hf"):
        batches = _take(build_pretraining_loader(source, 32, num_workers=0, seed=0, shuffle_buffer_size=64), 32)
    assert _distinct_per_batch(batches) < 0.5 * _random_distinct(32)
    assert "BIASED DATA ORDER" in caplog.text and "--streaming false" in caplog.text


def test_diversity_check_measures_against_random_sampling():
    assert expected_distinct([1, 1], 1) == pytest.approx(1.0)
    assert expected_distinct([50, 50], 2) == pytest.approx(1.5)
    assert file_name_prefix("train/00001:17:n01440764_10026.JPEG") == "n01440764"
    assert file_name_prefix("train/00001:17:000123.jpg") is None and file_name_prefix("train/00001:17") is None
    rng = np.random.default_rng(0)
    mixed = BatchDiversityCheck(num_batches=8)
    for _ in range(8):
        mixed.observe(rng.integers(0, 20, 32).tolist(), [])
    assert not mixed.report.biased and mixed.report.ratio > 0.9
    # Without labels, the file-name prefix stands in for the class.
    ordered = BatchDiversityCheck(num_batches=8)
    for b in range(8):
        ordered.observe([-1] * 32, [f"train/0:{i}:n{b // 2:08d}_{i}.JPEG" for i in range(32)])
    assert ordered.report.key == "file-name prefix" and ordered.report.biased


@pytest.mark.parametrize("num_workers", [0, 2])
def test_global_permutation_resumes_exactly(folder_source, num_workers):
    source = folder_source
    kwargs = dict(num_workers=num_workers, seed=5, rank=1, world_size=2)
    reference = _take(build_pretraining_loader(source, 48, **kwargs), 26)  # 1000 records per rank: 2+ epochs
    assert max(e for b in reference for e, _ in b.stream_state["streams"]) >= 1
    state = json.loads(json.dumps(reference[11].stream_state))
    resumed = _take(build_pretraining_loader(source, 48, resume_state=state, **kwargs), 14)
    assert [b.ids for b in resumed] == [b.ids for b in reference[12:]]


@pytest.mark.parametrize("before, after", [((2, 1), (1, 2)), ((1, 2), (2, 0))])
def test_elastic_resume_continues_the_permutation(folder_source, before, after):
    """Saved by `before` = (processes, workers), resumed by `after`: no record of the epoch is skipped, and at most
    about one batch per old stream is read twice."""
    source = folder_source
    (old_world, old_workers), (new_world, new_workers) = before, after
    consumed, states = [], []
    for rank in range(old_world):
        batches = _take(
            build_pretraining_loader(source, 25, num_workers=old_workers, seed=1, rank=rank, world_size=old_world),
            13,
        )
        consumed += _ids(batches)
        states.append(json.loads(json.dumps(batches[-1].stream_state)))
    remaining = 2000 - len(consumed)
    continued = []
    for rank in range(new_world):
        loader = build_pretraining_loader(
            source, 25, num_workers=new_workers, seed=1, rank=rank, world_size=new_world, resume_state=states
        )
        continued += _ids(_take(loader, (remaining // 25 + 4) // new_world))
    epoch = set(consumed) | set(continued[: remaining + 2 * 25])
    assert len(epoch) == 2000  # every record of the epoch is read before any is read a third time
    old_streams = old_world * max(1, old_workers)
    assert len(set(consumed) & set(continued[:remaining])) <= old_streams * 25


def test_streams_interleave_rows_of_several_shards():
    from dino_hf.data.streams import _INTERLEAVE, _interleave

    pieces = {p: [f"{p}:{r}" for r in range(10)] for p in range(6)}
    order = list(_interleave(list(pieces), lambda p: iter(pieces[p]), np.random.default_rng(0)))
    assert sorted(order) == sorted(r for rows in pieces.values() for r in rows)  # every row once
    assert len({r.split(":")[0] for r in order[:12]}) == _INTERLEAVE  # the first rows mix 4 shards
    for p, rows in pieces.items():  # each shard keeps its own order
        assert [r for r in order if r.startswith(f"{p}:")] == rows
