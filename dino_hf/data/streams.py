# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Streams of records: how a source's pieces are sharded, interleaved and shuffled, and how records become batches.

A stream is one DataLoader worker of one process. The layout (which records each stream reads, in which order, and
how a saved position resumes) is described in [`dino_hf.data.loaders`]; this module holds its pieces.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .decoding import DataStats, DecodeOptions, ImageBatch, check_bad_fraction, collate_images, decode_image
from .sources import ImageSource


# Pieces above this count are grouped into contiguous runs (image folders have one piece per file).
_MAX_PIECES = 4096
# Pieces a stream reads at once (each holds one block of rows; with remote data, one connection).
_INTERLEAVE = 4
# Rows per `iter` call while reading a piece.
_READ_BATCH = 64


# ---------------------------------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    image: Any
    label: int
    id: str


# The column [`~dino_hf.data.subsample_source`] adds to a subset: each row's index in the whole split, for its id.
SUBSET_INDEX_COLUMN = "_dino_hf_row"


def count_pieces(source: ImageSource) -> int:
    return max(1, min(source.num_shards, _MAX_PIECES))


def iter_piece(source: ImageSource, piece: int, num_pieces: int) -> Iterator[Record]:
    """The records of one piece, in storage order, without decoding."""
    part = source.dataset.shard(num_shards=num_pieces, index=piece, contiguous=True)
    row = 0
    # `iter(batch_size=...)` rather than `iter(part)`: inside a DataLoader worker, datasets would otherwise split
    # the piece again between workers.
    for rows in part.iter(batch_size=_READ_BATCH):
        images = rows[source.image_column]
        labels = rows[source.label_column] if source.label_column else [None] * len(images)
        originals = rows.get(SUBSET_INDEX_COLUMN)  # a subset's rows keep the index they had in the whole split
        for position, (image, label) in enumerate(zip(images, labels)):
            if originals is not None:
                record_id = f"{source.split}/row{originals[position]}"
            else:
                record_id = f"{source.split}/{piece:05d}:{row}"
            path = image.get("path") if isinstance(image, dict) else None
            if path:
                record_id += ":" + os.path.basename(path)
            yield Record(image, -1 if label is None else int(label), record_id)
            row += 1


def _shuffle_buffer(records: Iterator[Record], size: int, rng: np.random.Generator) -> Iterator[Record]:
    """Approximate shuffle: a random record of a `size`-record buffer leaves for each one that enters."""
    if size <= 1:
        yield from records
        return
    buffer: list[Record] = []
    draws: Iterator[int] = iter(())
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        index = next(draws, None)
        if index is None:
            draws = iter(rng.integers(0, size, size=1024).tolist())
            index = next(draws)
        buffer[index], record = record, buffer[index]
        yield record
    rng.shuffle(buffer)
    yield from buffer


def _interleave(
    pieces: list[int], open_piece: Callable[[int], Iterator[Record]], rng: np.random.Generator
) -> Iterator[Record]:
    """The records of `pieces`, read `_INTERLEAVE` at a time, each next record from a random open piece: rows of
    different shards mix before the shuffle buffer (a class-ordered shard alone would fill it with one class)."""
    pending = iter(pieces)
    active = [open_piece(p) for p in itertools.islice(pending, _INTERLEAVE)]
    draws: Iterator[float] = iter(())
    try:
        while active:
            draw = next(draws, None)
            if draw is None:
                draws = iter(rng.random(1024).tolist())
                draw = next(draws)
            index = int(draw * len(active))
            record = next(active[index], None)
            if record is not None:
                yield record
                continue
            following = next(pending, None)
            if following is None:
                active.pop(index)
            else:
                active[index] = open_piece(following)
    finally:
        for piece in active:  # close the readers now, not at interpreter exit
            piece.close()


@dataclass(frozen=True)
class StreamLayout:
    """Which records a stream reads (see the module docstring)."""

    num_pieces: int
    num_streams_total: int  # N = world_size * W
    mode: str  # "shards" or "examples"

    @classmethod
    def for_source(cls, source: ImageSource, num_streams_total: int) -> StreamLayout:
        if not source.streaming:
            # Random access: one permutation of every record per epoch, like a DistributedSampler.
            return cls(len(source.dataset), num_streams_total, "global")
        pieces = count_pieces(source)
        # Streams loop over their own pieces, so uneven piece counts would sample some records more often than
        # others; beyond 8 pieces per stream the imbalance is at most 1/8 and the per-epoch reshuffle averages it.
        balanced = pieces >= 8 * num_streams_total or pieces % num_streams_total == 0
        return cls(pieces, num_streams_total, "shards" if balanced else "examples")


def global_positions(
    source: ImageSource, layout: StreamLayout, stream: int, seed: int, epoch: int, start: int, consumed: int
) -> Iterator[tuple[int, Record]]:
    """One epoch of a stream of a random-access source, from its record `consumed + 1` on: `(position, record)`.

    The epoch's permutation of all records is cut from `start` (non-zero only in the epoch an elastic resume
    landed in); stream `g` reads positions `start + g, start + g + N, ...` of it.
    """
    order = np.random.default_rng([seed, epoch, 3]).permutation(layout.num_pieces)
    mine = order[start + stream :: layout.num_streams_total]
    for begin in range(consumed, len(mine), _READ_BATCH):
        rows = mine[begin : begin + _READ_BATCH].tolist()
        columns = source.dataset[rows]
        images = columns[source.image_column]
        labels = columns[source.label_column] if source.label_column else [None] * len(rows)
        for offset, (row, image, label) in enumerate(zip(rows, images, labels)):
            record_id = f"{source.split}/00000:{row}"
            path = image.get("path") if isinstance(image, dict) else None
            if path:
                record_id += ":" + os.path.basename(path)
            yield begin + offset + 1, Record(image, -1 if label is None else int(label), record_id)


def stream_positions(
    source: ImageSource, layout: StreamLayout, stream: int, seed: int, epoch: int, buffer_size: int
) -> Iterator[Record | None]:
    """One epoch of a pretraining stream: a record per position, None at positions of other streams."""
    order = np.random.default_rng([seed, epoch]).permutation(layout.num_pieces)
    if layout.mode == "shards":
        pieces = order[stream :: layout.num_streams_total]
        rng = np.random.default_rng([seed, epoch, stream, 1])
    else:
        pieces = order
        rng = np.random.default_rng([seed, epoch, 0, 2])  # the same for every stream, so positions agree
    records = _interleave([int(p) for p in pieces], lambda p: iter_piece(source, p, layout.num_pieces), rng)
    for position, record in enumerate(_shuffle_buffer(records, buffer_size, rng)):
        if layout.mode == "examples" and position % layout.num_streams_total != stream:
            yield None
        else:
            yield record


class BatchDecoder:
    """Decodes records into batches and keeps the statistics (one per stream)."""

    def __init__(
        self,
        batch_size: int,
        options: DecodeOptions,
        max_bad_fraction: float,
        min_records: int,
        where: str,
    ) -> None:
        self.batch_size = batch_size
        self.options = options
        self.max_bad_fraction = max_bad_fraction
        self.min_records = min_records
        self.where = where
        self.total = DataStats()
        self.reset()

    def reset(self) -> None:
        self.pixels: list[np.ndarray] = []
        self.labels: list[int] = []
        self.ids: list[str] = []
        self.stats = DataStats()

    def add(self, record: Record) -> bool:
        """Decode a record; True when a batch is full."""
        self.stats.seen += 1
        self.total.seen += 1
        pixels, skip_reason, conversions = decode_image(record.image, self.options)
        if pixels is None:
            self.stats.record_skip(record.id, skip_reason)
            self.total.record_skip(record.id, skip_reason)
            check_bad_fraction(self.total, self.max_bad_fraction, self.min_records, self.where)
            return False
        if conversions:
            self.stats.record_conversions(record.id, conversions)
            self.total.record_conversions(record.id, conversions)
        self.pixels.append(pixels)
        self.labels.append(record.label)
        self.ids.append(record.id)
        return len(self.pixels) >= self.batch_size

    def batch(self, stream_state: dict) -> ImageBatch:
        batch = collate_images(self.pixels, self.labels, self.ids, self.stats)
        batch.stream_state = stream_state
        self.reset()
        return batch


def identity_collate(batch: ImageBatch) -> ImageBatch:
    """The loaders' `collate_fn`: the workers already assemble whole `ImageBatch`es (`BatchDecoder`), which the
    DataLoader (`batch_size=None`) passes on as they are instead of running its default conversion over them. A module
    function, so that DataLoader workers can pickle it."""
    return batch


def prepare_worker(info: Any) -> None:
    if info is not None:
        import fsspec.asyn

        # A forked worker inherits fsspec's event-loop lock; remote streaming hangs unless it is reset (datasets
        # does the same in its own worker iteration, which these loaders bypass).
        fsspec.asyn.reset_lock()


__all__ = [
    "BatchDecoder",
    "Record",
    "StreamLayout",
    "count_pieces",
    "global_positions",
    "iter_piece",
    "identity_collate",
    "prepare_worker",
    "stream_positions",
]
