# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""The two loaders: records of a source -> padded uint8 batches, decoded in DataLoader workers.

- [`build_pretraining_loader`]: an endless, shuffled, exactly resumable stream of [`ImageBatch`]es.
- [`build_eval_loader`]: every record exactly once, in a fixed order (k-NN, linear probe, feature export).

Workers do only what cannot be batched on the device: read the encoded bytes, decode them (at a reduced JPEG scale
when the image is much larger than the crops need), convert odd modes to RGB, and copy the pixels into a
zero-padded batch. Everything else runs on the device ([`DinoMultiCropAugmentation`], [`EvalTransform`]).

How the stream is laid out (pretraining). A random-access source (a map-style `datasets.Dataset`: local image
folders, or any source opened with `streaming=False`) gets one permutation of all its records per epoch, seeded
with `(seed, epoch)`, like a `DistributedSampler`: with `W = max(1, num_workers)` streams per process and
`N = world_size * W` streams in all, stream `g = rank * W + worker` reads positions `g, g + N, g + 2N, ...` of it
("global" mode; no shuffle buffer is needed). For streamed sources, the dataset's pieces (files, or row ranges of a map-style dataset) are
permuted with `(seed, epoch)`. With `W = max(1, num_workers)` streams per process and `N = world_size * W` streams
in all, stream `g = rank * W + worker` reads pieces `g, g + N, g + 2N, ...` of that permutation ("shards" mode,
used when there are at least `8 N` pieces or a multiple of `N`), or, for datasets with few pieces, every stream
reads every piece and keeps the records at positions `g mod N` ("examples" mode, the fallback of
`datasets.distributed.split_dataset_by_node`). Each stream reads 4 of its pieces at once, taking each next record from a random one of them, and passes its
records through its own shuffle buffer seeded
with `(seed, epoch, g)` (in "examples" mode the buffer is shared, so that positions agree across streams). So
streams are disjoint, together cover the dataset every epoch, and are each a deterministic function of
`(seed, epoch)`. A stream that reaches its end starts its next epoch: the loader never ends.

Resume. The DataLoader takes batches from its workers in turn (worker 0, 1, ..., W-1, 0, ...). Each batch carries
`stream_state`: for every stream, its epoch and the number of records it has consumed in that epoch, plus which
stream yields the next batch. A loader built with that state re-reads each stream's epoch from its beginning,
skips the consumed records without decoding them, and renumbers its workers so that the right stream goes first:
it yields exactly the batches the uninterrupted loader would have yielded next.

Elastic resume. Given the states of every process of a run saved with another number of processes or workers, a
loader in "global" mode continues that epoch's permutation from the first position some old stream had not
consumed, cut between the new streams: no record is skipped, and the records the faster old streams had already
consumed beyond that point (at most about one batch per old stream) are read again. Streamed sources restart the
earliest epoch in progress with the new layout (the reference implementation resumes at epoch granularity).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import torch

from .decoding import DecodeOptions, ImageBatch
from .diversity import BatchDiversityCheck, warn_if_biased
from .sources import ImageSource
from .streams import (
    SUBSET_INDEX_COLUMN,
    BatchDecoder,
    Record,
    StreamLayout,
    count_pieces,
    global_positions,
    identity_collate,
    iter_piece,
    prepare_worker,
    stream_positions,
)


logger = logging.getLogger(__name__)

_STATE_FORMAT = "dino_hf.data.stream/1"

# ---------------------------------------------------------------------------------------------------------------------
# Pretraining loader
# ---------------------------------------------------------------------------------------------------------------------


class _PretrainingStreams(torch.utils.data.IterableDataset):
    """The per-worker streams of one process, as a torch IterableDataset yielding ImageBatches."""

    def __init__(self, source: ImageSource, settings: dict, state: dict) -> None:
        super().__init__()
        self.source = source
        self.settings = settings
        self.state = state

    def __iter__(self) -> Iterator[ImageBatch]:
        s = self.settings
        info = torch.utils.data.get_worker_info()
        prepare_worker(info)
        physical = info.id if info is not None else 0
        # Renumber workers so that the stream due next after a resume is served by worker 0, which the DataLoader
        # asks first.
        local = (physical + self.state["next_stream"]) % s["num_streams"]
        stream = s["rank"] * s["num_streams"] + local
        layout = StreamLayout(**s["layout"])
        epoch, consumed = self.state["streams"][local]
        decoder = BatchDecoder(
            s["batch_size"],
            DecodeOptions(**s["decode"]),
            s["max_bad_fraction"],
            s["min_records"],
            f"stream {local} of rank {s['rank']} ({self.source.name}/{self.source.split})",
        )
        while True:
            own_records = 0
            for position, record in self._positions(layout, stream, epoch, consumed):
                if record is None:
                    continue
                own_records += 1
                if position <= consumed:
                    continue  # consumed before the resume: read, not decoded
                if decoder.add(record):
                    yield decoder.batch({"stream": local, "epoch": epoch, "consumed": position})
            if own_records == 0 and consumed == 0:
                raise ValueError(
                    f"Stream {local} of rank {s['rank']} received no records from {self.source.name!r} "
                    f"({layout.num_pieces} pieces, {layout.num_streams_total} streams in all): the dataset is "
                    "empty or has fewer records than streams; use fewer workers or processes."
                )
            epoch, consumed = epoch + 1, 0

    def _positions(self, layout: StreamLayout, stream: int, epoch: int, consumed: int) -> Iterator[tuple[int, Any]]:
        s = self.settings
        if layout.mode == "global":
            start = self.state.get("epoch_start")
            offset = start[1] if start and start[0] == epoch else 0
            return global_positions(self.source, layout, stream, s["seed"], epoch, offset, consumed)
        positions = stream_positions(self.source, layout, stream, s["seed"], epoch, s["buffer_size"])
        return enumerate(positions, start=1)


class PretrainingLoader:
    """Endless iterable of [`ImageBatch`]es; see [`build_pretraining_loader`].

    `state_dict()` returns the position after the last batch yielded (the same as that batch's `stream_state`);
    iterating again continues from there.
    """

    def __init__(self, source: ImageSource, settings: dict, state: dict, dataloader_kwargs: dict) -> None:
        self.source = source
        self.settings = settings
        self._state = state
        self.dataloader_kwargs = dataloader_kwargs

    def state_dict(self) -> dict:
        return _copy_state(self._state)

    def __iter__(self) -> Iterator[ImageBatch]:
        state = self._state
        dataset = _PretrainingStreams(self.source, self.settings, _copy_state(state))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            collate_fn=identity_collate,
            # A private generator: creating the iterator must not draw from the global RNG that training uses
            # (drop-path masks), or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.settings["seed"]),
            **self.dataloader_kwargs,
        )
        num_streams = self.settings["num_streams"]
        # Every process sees the same kind of order; one warning is enough.
        diversity = BatchDiversityCheck() if self.settings["rank"] == 0 else None
        for batch in loader:
            stamp = batch.stream_state
            if stamp["stream"] != state["next_stream"]:
                raise RuntimeError(
                    f"Expected a batch of stream {state['next_stream']}, got one of stream {stamp['stream']}: "
                    "the DataLoader no longer serves workers in turn, so resume would not be exact."
                )
            state["streams"][stamp["stream"]] = [stamp["epoch"], stamp["consumed"]]
            state["next_stream"] = (stamp["stream"] + 1) % num_streams
            batch.stream_state = _copy_state(state)
            if diversity is not None and not diversity.done:
                report = diversity.observe(batch.labels.tolist(), batch.ids)
                if report is not None:
                    warn_if_biased(report, f"{self.source.name}/{self.source.split}")
            yield batch


def _copy_state(state: dict) -> dict:
    return {**state, "streams": [list(s) for s in state["streams"]]}


def _resume_point(saved: list[dict]) -> tuple[int, int]:
    """`(epoch, position)` of the first record of the global permutation that some stream of `saved` (the states
    of every process of a run in "global" mode) has not consumed: everything before it was consumed."""
    first_unread = []
    for state in saved:
        total = state["world_size"] * state["num_streams"]
        start = state.get("epoch_start")
        for local, (epoch, consumed) in enumerate(state["streams"]):
            offset = start[1] if start and start[0] == epoch else 0
            stream = state["rank"] * state["num_streams"] + local
            first_unread.append((epoch, offset + stream + consumed * total))
    epoch = min(e for e, _ in first_unread)
    position = min(p for e, p in first_unread if e == epoch)
    if position >= saved[0]["num_pieces"]:
        return epoch + 1, 0
    return epoch, position


def _elastic_state(saved: list[dict], identity: dict) -> dict:
    """The state of this process continuing a run saved with other processes, workers or buffer sizes.

    "global" mode (random-access sources): continue the same permutation from the first record some old stream had
    not consumed, so nothing is skipped and at most about one batch per old stream is read twice. Streamed sources:
    restart the earliest epoch in progress (the reference implementation's granularity).
    """
    for key in ("format", "dataset", "seed"):
        if any(state.get(key) != identity[key] for state in saved):
            raise ValueError(
                f"resume_state was saved with another {key} ({saved[0].get(key)!r}, now {identity[key]!r}); a run "
                "can change its number of processes or workers, not its data."
            )
    old_world = {state["world_size"] for state in saved}
    if len(old_world) != 1 or len(saved) != old_world.pop():
        raise ValueError("An elastic resume needs the stream states of every process of the saved run.")
    same_order = all(s["mode"] == identity["mode"] == "global" for s in saved) and all(
        s["num_pieces"] == identity["num_pieces"] for s in saved
    )
    if same_order:
        epoch, position = _resume_point(saved)
    else:
        epoch, position = min(e for s in saved for e, _ in s["streams"]), 0
    logger.warning(
        "Data: resuming a run saved by %d processes x %d streams on %d x %d: continuing at epoch %d, %s.",
        len(saved),
        saved[0]["num_streams"],
        identity["world_size"],
        identity["num_streams"],
        epoch,
        f"record {position} of its permutation" if same_order else "from the start of that epoch",
    )
    streams = [[epoch, 0] for _ in range(identity["num_streams"])]
    return {**identity, "next_stream": 0, "streams": streams, "epoch_start": [epoch, position]}


def _initial_state(identity: dict, resume_state: dict | list[dict] | None) -> dict:
    """The loader's starting position: fresh, exact (the same layout), or elastic (another layout)."""
    if resume_state is None:
        return {**identity, "next_stream": 0, "streams": [[0, 0] for _ in range(identity["num_streams"])]}
    saved = resume_state if isinstance(resume_state, list) else [resume_state]
    mine = saved[identity["rank"]] if len(saved) == identity["world_size"] else saved[0]
    if all(mine.get(k) == v for k, v in identity.items()) and len(saved) in (1, identity["world_size"]):
        return _copy_state(mine)
    if saved[0].get("world_size") != len(saved):
        raise ValueError(
            f"resume_state is the position of one of {saved[0].get('world_size')} processes; to continue with "
            f"another layout (now {identity['world_size']} processes x {identity['num_streams']} streams), pass "
            "the list of every process's state."
        )
    return _elastic_state(saved, identity)


def _check_loader_arguments(batch_size: int, num_workers: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")


# Records held for shuffling a stream (the pretraining arguments read this default).
DEFAULT_SHUFFLE_BUFFER_SIZE = 10_000


def _default_pin_memory() -> bool:
    return torch.cuda.is_available()


def build_pretraining_loader(
    source: ImageSource,
    batch_size: int,
    *,
    num_workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
    resume_state: dict | None = None,
    max_bad_fraction: float = 0.5,
    bad_fraction_min_records: int = 100,
    pin_memory: bool | None = None,
    decode_min_pixels: int | None = None,
    max_side: int = 1024,
    min_side: int = 16,
    prefetch_factor: int = 2,
) -> PretrainingLoader:
    """An endless, shuffled stream of decoded batches for pretraining, resumable exactly.

    Args:
        source: from [`load_image_dataset`].
        batch_size: images per batch (per process); bad records are replaced by the next good ones.
        num_workers: DataLoader worker processes that read and decode (0: in this process).
        seed: shuffling seed; the same on every process.
        rank, world_size: this process and the number of processes. Each reads a disjoint part of the data (do not
            let accelerate shard or dispatch this loader again).
        shuffle_buffer_size: records held for shuffling by this process, split between its workers (each holds
            `shuffle_buffer_size // max(1, num_workers)` undecoded records).
        resume_state: a batch's `stream_state` (or `loader.state_dict()`): continue right after that batch. Or
            the list of every process's state (what a checkpoint holds): the same layout continues exactly, another
            number of processes, workers or buffer size continues elastically (see the module docstring).
        max_bad_fraction: raise [`DataQualityError`] when a worker's skipped fraction exceeds this after
            `bad_fraction_min_records` records.
        pin_memory: page-locked batches for fast host-to-device copies (default: when CUDA is available).
        decode_min_pixels: decode large JPEGs only down to this many pixels (default: what the paper's crops need,
            `MultiCropConfig().decode_min_pixels`; pass your config's value if you change crop sizes or scales).
        max_side, min_side: see [`DecodeOptions`].
        prefetch_factor: batches each worker prepares ahead.

    Returns:
        A [`PretrainingLoader`]: iterate it for [`ImageBatch`]es; it never ends (each stream starts a new epoch,
        with a new order, when it runs out). Every batch's `stream_state` is the JSON-serialisable position after
        it; `build_pretraining_loader(..., resume_state=batch.stream_state)` yields exactly the batches that would
        have come next. The state is per process; an exact resume needs the same dataset, `seed`, `num_workers`,
        `world_size`, `rank` and `shuffle_buffer_size`, an elastic one the same dataset and `seed`.
    """
    _check_loader_arguments(batch_size, num_workers, rank, world_size)
    if decode_min_pixels is None:
        from .augmentation import MultiCropConfig

        decode_min_pixels = MultiCropConfig().decode_min_pixels
    num_streams = max(1, num_workers)
    layout = StreamLayout.for_source(source, world_size * num_streams)
    if layout.mode == "global" and layout.num_pieces < layout.num_streams_total:
        raise ValueError(
            f"{source.name!r} has {layout.num_pieces} records, fewer than the {layout.num_streams_total} data streams "
            "(processes x workers); use fewer workers or processes."
        )
    settings = {
        "batch_size": batch_size,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "num_streams": num_streams,
        "buffer_size": max(1, shuffle_buffer_size // num_streams),
        "layout": {
            "num_pieces": layout.num_pieces,
            "num_streams_total": layout.num_streams_total,
            "mode": layout.mode,
        },
        "decode": {"min_pixels": decode_min_pixels, "max_side": max_side, "min_side": min_side},
        "max_bad_fraction": max_bad_fraction,
        "min_records": bad_fraction_min_records,
    }
    identity = {
        "format": _STATE_FORMAT,
        "dataset": f"{source.name}/{source.split}",
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "num_streams": num_streams,
        "num_pieces": layout.num_pieces,
        "mode": layout.mode,
        "shuffle_buffer_size": shuffle_buffer_size,
    }
    state = _initial_state(identity, resume_state)
    if pin_memory is None:
        pin_memory = _default_pin_memory()
    dataloader_kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        dataloader_kwargs["prefetch_factor"] = prefetch_factor
    return PretrainingLoader(source, settings, state, dataloader_kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation loader
# ---------------------------------------------------------------------------------------------------------------------


class _EvalStreams(torch.utils.data.IterableDataset):
    def __init__(self, source: ImageSource, settings: dict) -> None:
        super().__init__()
        self.source = source
        self.settings = settings

    def _records(self, stream: int) -> Iterator[Record]:
        s = self.settings
        total, num_pieces, max_images = s["num_streams_total"], s["num_pieces"], s["max_images"]
        if s["mode"] == "shards":
            for piece in range(stream, num_pieces, total):
                yield from iter_piece(self.source, piece, num_pieces)
            return
        if max_images is None:
            records = itertools.chain.from_iterable(iter_piece(self.source, p, num_pieces) for p in range(num_pieces))
        else:  # a stream: the first records of every piece, spread over the pieces (see `subsample_source`)
            quotas = [max_images // num_pieces + (p < max_images % num_pieces) for p in range(num_pieces)]
            records = itertools.chain.from_iterable(
                itertools.islice(iter_piece(self.source, p, num_pieces), quotas[p]) for p in range(num_pieces)
            )
        for position, record in enumerate(records):
            if position % total == stream:
                yield record

    def __iter__(self) -> Iterator[ImageBatch]:
        s = self.settings
        info = torch.utils.data.get_worker_info()
        prepare_worker(info)
        worker = info.id if info is not None else 0
        stream = s["rank"] * s["num_streams"] + worker
        decoder = BatchDecoder(
            s["batch_size"],
            DecodeOptions(**s["decode"]),
            s["max_bad_fraction"],
            s["min_records"],
            f"evaluation stream {worker} of rank {s['rank']} ({self.source.name}/{self.source.split})",
        )
        for record in self._records(stream):
            if decoder.add(record):
                yield decoder.batch({})
        if decoder.pixels:
            yield decoder.batch({})


def evenly_spread_indices(num_examples: int, count: int, seed: int = 0) -> list[int]:
    """`count` sorted distinct indices of `range(num_examples)`, one drawn (seeded) in each of `count` equal strata:
    a random subset spread over the whole range, so a class-sorted dataset keeps every class in proportion."""
    if count >= num_examples:
        return list(range(num_examples))
    rng = torch.Generator().manual_seed(seed)
    starts = torch.arange(count, dtype=torch.float64) * num_examples / count
    ends = torch.arange(1, count + 1, dtype=torch.float64) * num_examples / count
    starts, ends = starts.ceil().long(), ends.ceil().long()  # [start, end): non-empty since count < num_examples
    offsets = (torch.rand(count, generator=rng, dtype=torch.float64) * (ends - starts)).long()
    return (starts + offsets).tolist()


def subsample_source(source: ImageSource, max_images: int | None, seed: int = 0) -> ImageSource:
    """At most `max_images` records of `source`: a seeded subset spread evenly over the dataset
    ([`evenly_spread_indices`]) for a random-access (map-style) source, so the first records of a class-sorted image
    folder do not stand for the whole set; each record's id then names its row in the whole split
    (`<split>/row<index>`, and the file name for a file source). A stream cannot be sampled without reading it whole: it is returned as it is, and
    [`build_eval_loader`] takes the first records of each of its pieces (files), `max_images` in all, with a warning
    that this subset is only as mixed as the files are.
    """
    if max_images is None or (source.num_examples is not None and max_images >= source.num_examples):
        return source
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}.")
    if source.streaming:
        logger.warning(
            "%s (%s) is a stream: the %d-image limit takes the first records of each of its %d pieces (files), "
            "which represent the whole set only as far as the files mix its classes. Load it without streaming "
            "(streaming=False) for a seeded subset spread evenly over the whole set.",
            source.name,
            source.split,
            max_images,
            count_pieces(source),
        )
        return source  # the loader takes `max_images` records, spread over the pieces
    indices = evenly_spread_indices(len(source.dataset), max_images, seed)
    subset = source.dataset.select(indices)
    if SUBSET_INDEX_COLUMN not in subset.column_names:  # ids name the rows of the whole split (`split/row<i>`)
        subset = subset.add_column(SUBSET_INDEX_COLUMN, indices)
    return dataclasses.replace(
        source,
        dataset=subset,
        num_examples=len(indices),
        num_shards=max(1, min(source.num_shards, len(indices))),
    )


def build_eval_loader(
    source: ImageSource,
    batch_size: int,
    *,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    max_images: int | None = None,
    seed: int = 0,
    resize_size: int = 256,
    max_bad_fraction: float = 0.5,
    bad_fraction_min_records: int = 100,
    pin_memory: bool | None = None,
    max_side: int = 1024,
    min_side: int = 16,
) -> torch.utils.data.DataLoader:
    """A finite loader that yields every record of `source` exactly once, in a fixed order.

    Args:
        source: from [`load_image_dataset`].
        batch_size: images per batch; the last batch of each worker may be smaller.
        num_workers: DataLoader worker processes (0: in this process).
        rank, world_size: each process gets a disjoint part; together they cover the dataset once.
        max_images: at most this many records across all processes: a seeded subset spread evenly over a
            random-access dataset; of a stream, the first records of each piece (with a warning); see
            [`subsample_source`].
        seed: the subset's seed.
        resize_size: large JPEGs are decoded at reduced scale, keeping the shorter side >= this (the resize of
            [`EvalTransform`]).
        max_bad_fraction, bad_fraction_min_records, pin_memory, max_side, min_side: as in
            [`build_pretraining_loader`]; skipped records are counted in each batch's `stats`.

    Returns:
        A `torch.utils.data.DataLoader` of [`ImageBatch`]es with labels (-1 where the dataset has none).
    """
    _check_loader_arguments(batch_size, num_workers, rank, world_size)
    source = subsample_source(source, max_images, seed)
    if not source.streaming:
        max_images = None  # the subset holds exactly the images asked for
    num_streams = max(1, num_workers)
    num_pieces = count_pieces(source)
    # One pass has no sampling frequency to balance, so pieces split whenever there are enough; a stream's
    # `max_images` counts records in storage order, which only the "examples" layout sees.
    mode = "shards" if num_pieces >= world_size * num_streams and max_images is None else "examples"
    settings = {
        "batch_size": batch_size,
        "rank": rank,
        "num_streams": num_streams,
        "num_streams_total": world_size * num_streams,
        "num_pieces": num_pieces,
        "mode": mode,
        "max_images": max_images,
        "decode": {"min_short_side": resize_size, "max_side": max_side, "min_side": min_side},
        "max_bad_fraction": max_bad_fraction,
        "min_records": bad_fraction_min_records,
    }
    if pin_memory is None:
        pin_memory = _default_pin_memory()
    return torch.utils.data.DataLoader(
        _EvalStreams(source, settings),
        batch_size=None,
        collate_fn=identity_collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG of a training run untouched
    )


__all__ = [
    "PretrainingLoader",
    "build_eval_loader",
    "build_pretraining_loader",
    "evenly_spread_indices",
    "subsample_source",
]
