"""The batch-mixing benchmark on a small class-ordered dataset: streaming one shard at a time mixes less than
interleaving, random access mixes like random sampling, and the process's settings are left as they were."""

import bench_batch_mixing
import datasets

import dino_hf.data.streams as streams


def test_interleaving_mixes_class_ordered_shards():
    cache, interleave = datasets.config.HF_DATASETS_CACHE, streams._INTERLEAVE
    results = bench_batch_mixing.main(["--classes", "4", "--per_class", "16", "--batch", "8", "--buffer", "8",
                                       "--batches", "4"])  # fmt: skip
    assert cache == datasets.config.HF_DATASETS_CACHE and interleave == streams._INTERLEAVE
    one_shard = results["parquet shards streamed, 1 shard(s) at a time"]
    interleaved = results[f"parquet shards streamed, {interleave} shard(s) at a time"]
    assert one_shard < interleaved <= 4
    assert results["image folder, random access (global permutation)"] > one_shard
