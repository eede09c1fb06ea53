# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""From records to padded uint8 batches: decoding in DataLoader workers, bad-record handling, and the two loaders.

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

import io
import itertools
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .diversity import BatchDiversityCheck, warn_if_biased
from .sources import ImageSource


logger = logging.getLogger(__name__)

_STATE_FORMAT = "dino_hf.data.stream/1"
# Pieces above this count are grouped into contiguous runs (image folders have one piece per file).
_MAX_PIECES = 4096
# Pieces a stream reads at once (each holds one block of rows; with remote data, one connection).
_INTERLEAVE = 4
# Rows per `iter` call while reading a piece.
_READ_BATCH = 64
# How many record ids DataStats keeps, in all and per reason.
_MAX_IDS = 8
_MAX_IDS_PER_REASON = 3


# ---------------------------------------------------------------------------------------------------------------------
# Statistics and errors
# ---------------------------------------------------------------------------------------------------------------------


class DataQualityError(RuntimeError):
    """Too many records of a dataset could not be decoded."""


@dataclass
class DataStats:
    """Counts of the records a loader consumed, and what happened to the bad ones.

    Attributes:
        seen: records read.
        skipped: records dropped (undecodable, truncated, missing, too small, decompression bomb, ...).
        converted: records kept after a conversion (grayscale, CMYK, palette, alpha, 16-bit) or a size reduction.
        skipped_by_reason, converted_by_reason: the same counts per reason.
        first_skipped_ids: ids of the first skipped records.
        skipped_ids_by_reason: up to 3 ids per skip reason.
        first_converted_ids: ids of the first converted records.

    `stats += other` merges counts (e.g. a trainer summing `batch.stats` over a run).
    """

    seen: int = 0
    skipped: int = 0
    converted: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    converted_by_reason: dict[str, int] = field(default_factory=dict)
    first_skipped_ids: list[str] = field(default_factory=list)
    skipped_ids_by_reason: dict[str, list[str]] = field(default_factory=dict)
    first_converted_ids: list[str] = field(default_factory=list)

    def record_skip(self, record_id: str, reason: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        if len(self.first_skipped_ids) < _MAX_IDS:
            self.first_skipped_ids.append(record_id)
        examples = self.skipped_ids_by_reason.setdefault(reason, [])
        if len(examples) < _MAX_IDS_PER_REASON:
            examples.append(record_id)

    def record_conversions(self, record_id: str, reasons: list[str]) -> None:
        self.converted += 1
        for reason in reasons:
            self.converted_by_reason[reason] = self.converted_by_reason.get(reason, 0) + 1
        if len(self.first_converted_ids) < _MAX_IDS:
            self.first_converted_ids.append(record_id)

    def __iadd__(self, other: DataStats) -> DataStats:
        self.seen += other.seen
        self.skipped += other.skipped
        self.converted += other.converted
        for mine, theirs in (
            (self.skipped_by_reason, other.skipped_by_reason),
            (self.converted_by_reason, other.converted_by_reason),
        ):
            for reason, count in theirs.items():
                mine[reason] = mine.get(reason, 0) + count
        self.first_skipped_ids = (self.first_skipped_ids + other.first_skipped_ids)[:_MAX_IDS]
        self.first_converted_ids = (self.first_converted_ids + other.first_converted_ids)[:_MAX_IDS]
        for reason, ids in other.skipped_ids_by_reason.items():
            mine_ids = self.skipped_ids_by_reason.setdefault(reason, [])
            mine_ids.extend(ids[: _MAX_IDS_PER_REASON - len(mine_ids)])
        return self

    @property
    def bad_fraction(self) -> float:
        return self.skipped / self.seen if self.seen else 0.0

    def summary(self) -> str:
        """One line for a training log, e.g. `seen 1000, skipped 2 (truncated: 2 [train/00003:17, ...]), ...`."""
        text = f"seen {self.seen}, skipped {self.skipped}"
        if self.skipped:
            parts = [
                f"{reason}: {count} [{', '.join(self.skipped_ids_by_reason.get(reason, []))}]"
                for reason, count in sorted(self.skipped_by_reason.items())
            ]
            text += f" ({'; '.join(parts)})"
        text += f", converted {self.converted}"
        if self.converted:
            text += f" ({', '.join(f'{r}: {c}' for r, c in sorted(self.converted_by_reason.items()))})"
        return text

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": self.skipped,
            "converted": self.converted,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "converted_by_reason": dict(self.converted_by_reason),
            "first_skipped_ids": list(self.first_skipped_ids),
            "skipped_ids_by_reason": {k: list(v) for k, v in self.skipped_ids_by_reason.items()},
            "first_converted_ids": list(self.first_converted_ids),
        }


def _check_bad_fraction(stats: DataStats, max_bad_fraction: float, min_records: int, where: str) -> None:
    if stats.seen >= min_records and stats.bad_fraction > max_bad_fraction:
        raise DataQualityError(
            f"{stats.skipped} of {stats.seen} records read by {where} could not be used "
            f"({stats.bad_fraction:.0%} > max_bad_fraction={max_bad_fraction:.0%}): {stats.summary()}. "
            "Check that the image column holds encoded images and that the files are intact."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeOptions:
    """How workers decode images.

    Attributes:
        min_pixels: decode large images only down to this many pixels (width x height) - see
            `MultiCropConfig.decode_min_pixels`; None keeps the full size.
        min_short_side: decode large images only down to this shorter side (evaluation: the resize size).
        max_side: longer sides beyond this are reduced further (bounds the padded batch of extreme aspect ratios).
        min_side: images whose shorter side is below this are skipped as `too_small` (1x1 placeholders, icons).
        background: RGB colour that transparent pixels are composited on.
    """

    min_pixels: int | None = None
    min_short_side: int | None = None
    max_side: int = 1024
    min_side: int = 16
    background: tuple[int, int, int] = (255, 255, 255)


def _reduction(width: int, height: int, options: DecodeOptions) -> float:
    """Largest factor by which the image can shrink and still satisfy the options' size floors."""
    factor = math.inf
    if options.min_pixels:
        factor = min(factor, math.sqrt(width * height / options.min_pixels))
    if options.min_short_side:
        factor = min(factor, min(width, height) / options.min_short_side)
    return max(1.0, factor) if factor != math.inf else 1.0


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to RGB; the conversion's name (None when already RGB)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image, None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas, "alpha"
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if mode.startswith("I;16"):
            array = array.astype(np.uint16) >> 8
        elif mode == "F" and array.size and float(array.max()) <= 1.0:
            array = array * 255.0
        elif array.size and float(array.max()) > 255:
            array = array / 257.0  # 16-bit samples stored as 32-bit integers
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), "16bit"
    reason = {"L": "grayscale", "1": "grayscale", "CMYK": "cmyk", "P": "palette"}.get(mode, "other_mode")
    return image.convert("RGB"), reason


def decode_image(value: Any, options: DecodeOptions) -> tuple[np.ndarray | None, str | None, list[str]]:
    """Decode one record's image.

    Args:
        value: the record's image, `{"bytes": ..., "path": ...}` (`Image(decode=False)`), raw bytes, or None.
        options: [`DecodeOptions`].

    Returns:
        `(pixels, skip_reason, conversions)`: `pixels` is an `(H, W, 3)` uint8 array, or None with `skip_reason`
        one of `missing`, `unreadable`, `undecodable`, `truncated`, `decompression_bomb`, `too_small`, `error`;
        `conversions` names what was changed (`grayscale`, `cmyk`, `palette`, `alpha`, `16bit`, `other_mode`,
        `downscaled`).
    """
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if data is None and not path:
        return None, "missing", []
    conversions: list[str] = []
    try:
        if data is None:
            import fsspec

            with fsspec.open(path, "rb") as handle:
                data = handle.read()
        with warnings.catch_warnings():
            # PIL warns above Image.MAX_IMAGE_PIXELS and raises above twice that; both are skipped.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if min(width, height) < options.min_side:
            return None, "too_small", []
        factor = _reduction(width, height, options)
        if factor >= 2.0:
            # JPEG: DCT-domain scaling by 1/2, 1/4 or 1/8: much cheaper than a full decode, and antialiased.
            image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        image.load()
        image, conversion = _to_rgb(image, options.background)
        if conversion:
            conversions.append(conversion)
        reduce_by = math.floor(_reduction(*image.size, options))
        long_side = max(image.size)
        if long_side > options.max_side:
            reduce_by = max(reduce_by, math.ceil(long_side / options.max_side))
        if reduce_by >= 2:
            image = image.reduce(reduce_by)
        if image.size != (width, height):
            conversions.append("downscaled")
        pixels = np.asarray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb", []
    except UnidentifiedImageError:
        return None, "undecodable", []
    except FileNotFoundError:
        return None, "unreadable", []
    except OSError as err:
        return None, "truncated" if "truncated" in str(err).lower() else "undecodable", []
    except Exception:  # a bad record must never stop a run; it is counted and named instead
        logger.debug("Unexpected error while decoding an image", exc_info=True)
        return None, "error", []
    return pixels, None, conversions


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """One batch of decoded images, as the CPU side hands it to the device.

    Attributes:
        images: uint8 `(B, 3, H, W)`, each image at the top-left of a zero-padded canvas of the batch's largest
            height and width. The memory is channels-last (a permuted view of `(B, H, W, 3)`, what decoders
            produce); device code must not assume contiguity.
        sizes: int64 `(B, 2)`: the true (height, width) of each image.
        labels: int64 `(B,)`: the label, -1 where the dataset has none.
        ids: record identifiers `"<split>/<piece>:<row>[:<file name>]"`.
        stats: [`DataStats`] of the records consumed since the previous batch of the same worker.
        stream_state: JSON-serialisable position of the stream after this batch (see
            [`build_pretraining_loader`]); empty for evaluation batches.
    """

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    stats: DataStats
    stream_state: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> ImageBatch:
        """Page-locked copies of the tensors (called by `DataLoader(pin_memory=True)`)."""
        return ImageBatch(
            self.images.pin_memory(),
            self.sizes.pin_memory(),
            self.labels.pin_memory(),
            self.ids,
            self.stats,
            self.stream_state,
        )

    def to(self, device: torch.device | str, non_blocking: bool = True) -> ImageBatch:
        return ImageBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.sizes.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.ids,
            self.stats,
            self.stream_state,
        )


def _new_canvas(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a DataLoader worker, allocated directly in shared memory."""
    if torch.utils.data.get_worker_info() is not None:
        # What torch's default_collate does: a batch built in shared memory is not copied again to reach the main
        # process (an otherwise ~1 ms/MB copy per batch in every worker).
        numel = math.prod(shape)
        storage = torch.UntypedStorage._new_shared(numel, device="cpu")
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    return torch.empty(shape, dtype=torch.uint8)


def collate_images(pixels: list[np.ndarray], labels: list[int], ids: list[str], stats: DataStats) -> ImageBatch:
    """Pad `(H, W, 3)` uint8 arrays into an [`ImageBatch`]."""
    height = max(p.shape[0] for p in pixels)
    width = max(p.shape[1] for p in pixels)
    canvas = _new_canvas((len(pixels), height, width, 3))
    view = canvas.numpy()  # shares memory; numpy copies from PIL's read-only arrays without a warning
    for i, p in enumerate(pixels):
        h, w = p.shape[:2]
        # Each byte is written once: the image, then only the padding is zeroed.
        view[i, :h, :w] = p
        view[i, :h, w:] = 0
        view[i, h:] = 0
    sizes = torch.tensor([p.shape[:2] for p in pixels], dtype=torch.int64).reshape(len(pixels), 2)
    return ImageBatch(
        images=canvas.permute(0, 3, 1, 2),
        sizes=sizes,
        labels=torch.tensor(labels, dtype=torch.int64),
        ids=ids,
        stats=stats,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    image: Any
    label: int
    id: str


def _num_pieces(source: ImageSource) -> int:
    return max(1, min(source.num_shards, _MAX_PIECES))


def _iter_piece(source: ImageSource, piece: int, num_pieces: int) -> Iterator[_Record]:
    """The records of one piece, in storage order, without decoding."""
    part = source.dataset.shard(num_shards=num_pieces, index=piece, contiguous=True)
    row = 0
    # `iter(batch_size=...)` rather than `iter(part)`: inside a DataLoader worker, datasets would otherwise split
    # the piece again between workers.
    for rows in part.iter(batch_size=_READ_BATCH):
        images = rows[source.image_column]
        labels = rows[source.label_column] if source.label_column else [None] * len(images)
        for image, label in zip(images, labels):
            record_id = f"{source.split}/{piece:05d}:{row}"
            path = image.get("path") if isinstance(image, dict) else None
            if path:
                record_id += ":" + os.path.basename(path)
            yield _Record(image, -1 if label is None else int(label), record_id)
            row += 1


def _shuffle_buffer(records: Iterator[_Record], size: int, rng: np.random.Generator) -> Iterator[_Record]:
    """Approximate shuffle: a random record of a `size`-record buffer leaves for each one that enters."""
    if size <= 1:
        yield from records
        return
    buffer: list[_Record] = []
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
    pieces: list[int], open_piece: Callable[[int], Iterator[_Record]], rng: np.random.Generator
) -> Iterator[_Record]:
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
class _Layout:
    """Which records a stream reads (see the module docstring)."""

    num_pieces: int
    num_streams_total: int  # N = world_size * W
    mode: str  # "shards" or "examples"

    @classmethod
    def for_source(cls, source: ImageSource, num_streams_total: int) -> _Layout:
        if not source.streaming:
            # Random access: one permutation of every record per epoch, like a DistributedSampler.
            return cls(len(source.dataset), num_streams_total, "global")
        pieces = _num_pieces(source)
        # Streams loop over their own pieces, so uneven piece counts would sample some records more often than
        # others; beyond 8 pieces per stream the imbalance is at most 1/8 and the per-epoch reshuffle averages it.
        balanced = pieces >= 8 * num_streams_total or pieces % num_streams_total == 0
        return cls(pieces, num_streams_total, "shards" if balanced else "examples")


def _global_positions(
    source: ImageSource, layout: _Layout, stream: int, seed: int, epoch: int, start: int, consumed: int
) -> Iterator[tuple[int, _Record]]:
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
            yield begin + offset + 1, _Record(image, -1 if label is None else int(label), record_id)


def _stream_positions(
    source: ImageSource, layout: _Layout, stream: int, seed: int, epoch: int, buffer_size: int
) -> Iterator[_Record | None]:
    """One epoch of a pretraining stream: a record per position, None at positions of other streams."""
    order = np.random.default_rng([seed, epoch]).permutation(layout.num_pieces)
    if layout.mode == "shards":
        pieces = order[stream :: layout.num_streams_total]
        rng = np.random.default_rng([seed, epoch, stream, 1])
    else:
        pieces = order
        rng = np.random.default_rng([seed, epoch, 0, 2])  # the same for every stream, so positions agree
    records = _interleave([int(p) for p in pieces], lambda p: _iter_piece(source, p, layout.num_pieces), rng)
    for position, record in enumerate(_shuffle_buffer(records, buffer_size, rng)):
        if layout.mode == "examples" and position % layout.num_streams_total != stream:
            yield None
        else:
            yield record


class _Decoder:
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

    def add(self, record: _Record) -> bool:
        """Decode a record; True when a batch is full."""
        self.stats.seen += 1
        self.total.seen += 1
        pixels, skip_reason, conversions = decode_image(record.image, self.options)
        if pixels is None:
            self.stats.record_skip(record.id, skip_reason)
            self.total.record_skip(record.id, skip_reason)
            _check_bad_fraction(self.total, self.max_bad_fraction, self.min_records, self.where)
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


def _identity(batch: ImageBatch) -> ImageBatch:
    return batch


def _prepare_worker(info: Any) -> None:
    if info is not None:
        import fsspec.asyn

        # A forked worker inherits fsspec's event-loop lock; remote streaming hangs unless it is reset (datasets
        # does the same in its own worker iteration, which these loaders bypass).
        fsspec.asyn.reset_lock()


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
        _prepare_worker(info)
        physical = info.id if info is not None else 0
        # Renumber workers so that the stream due next after a resume is served by worker 0, which the DataLoader
        # asks first.
        local = (physical + self.state["next_stream"]) % s["num_streams"]
        stream = s["rank"] * s["num_streams"] + local
        layout = _Layout(**s["layout"])
        epoch, consumed = self.state["streams"][local]
        decoder = _Decoder(
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

    def _positions(self, layout: _Layout, stream: int, epoch: int, consumed: int) -> Iterator[tuple[int, Any]]:
        s = self.settings
        if layout.mode == "global":
            start = self.state.get("epoch_start")
            offset = start[1] if start and start[0] == epoch else 0
            return _global_positions(self.source, layout, stream, s["seed"], epoch, offset, consumed)
        positions = _stream_positions(self.source, layout, stream, s["seed"], epoch, s["buffer_size"])
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
            collate_fn=_identity,
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
    shuffle_buffer_size: int = 10_000,
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
    layout = _Layout.for_source(source, world_size * num_streams)
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

    def _records(self, stream: int) -> Iterator[_Record]:
        s = self.settings
        total, num_pieces, max_images = s["num_streams_total"], s["num_pieces"], s["max_images"]
        if s["mode"] == "shards":
            for piece in range(stream, num_pieces, total):
                yield from _iter_piece(self.source, piece, num_pieces)
            return
        records = itertools.chain.from_iterable(_iter_piece(self.source, p, num_pieces) for p in range(num_pieces))
        if max_images is not None:
            records = itertools.islice(records, max_images)
        for position, record in enumerate(records):
            if position % total == stream:
                yield record

    def __iter__(self) -> Iterator[ImageBatch]:
        s = self.settings
        info = torch.utils.data.get_worker_info()
        _prepare_worker(info)
        worker = info.id if info is not None else 0
        stream = s["rank"] * s["num_streams"] + worker
        decoder = _Decoder(
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


def build_eval_loader(
    source: ImageSource,
    batch_size: int,
    *,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    max_images: int | None = None,
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
        max_images: only the first `max_images` records of the dataset (in storage order), across all processes.
        resize_size: large JPEGs are decoded at reduced scale, keeping the shorter side >= this (the resize of
            [`EvalTransform`]).
        max_bad_fraction, bad_fraction_min_records, pin_memory, max_side, min_side: as in
            [`build_pretraining_loader`]; skipped records are counted in each batch's `stats`.

    Returns:
        A `torch.utils.data.DataLoader` of [`ImageBatch`]es with labels (-1 where the dataset has none).
    """
    _check_loader_arguments(batch_size, num_workers, rank, world_size)
    num_streams = max(1, num_workers)
    num_pieces = _num_pieces(source)
    # One pass has no sampling frequency to balance, so pieces split whenever there are enough; `max_images`
    # counts records in storage order, which only the "examples" layout sees.
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
        collate_fn=_identity,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG of a training run untouched
    )


__all__ = [
    "DataQualityError",
    "DataStats",
    "DecodeOptions",
    "ImageBatch",
    "PretrainingLoader",
    "build_eval_loader",
    "build_pretraining_loader",
    "collate_images",
    "decode_image",
]
