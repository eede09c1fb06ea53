# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Decoding in DataLoader workers: records' bytes -> RGB pixels -> padded uint8 batches, and the bad-record counts.

- [`decode_image`] with [`DecodeOptions`]: one record to an RGB `uint8` array (at a reduced JPEG scale when the image
  is much larger than the crops need; odd modes converted; bad records skipped with a reason);
- [`collate_images`]: decoded images -> one zero-padded [`ImageBatch`] with their sizes;
- [`DataStats`], [`DataQualityError`]: what was skipped or converted, and the error when too much is bad.

The streams that feed these ([`dino_hf.data.streams`]) and the loaders ([`dino_hf.data.loaders`]) build on them.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


logger = logging.getLogger(__name__)

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


def check_bad_fraction(stats: DataStats, max_bad_fraction: float, min_records: int, where: str) -> None:
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
    try:
        return _decode(data, path, options)
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


def _decode(
    data: bytes | None, path: str | None, options: DecodeOptions
) -> tuple[np.ndarray | None, str | None, list[str]]:
    """`decode_image`'s work; the errors it raises are `decode_image`'s skip reasons."""
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
    conversions = [conversion] if conversion else []
    image = _reduce_to_limits(image, options)
    if image.size != (width, height):
        conversions.append("downscaled")
    return np.asarray(image), None, conversions


def _reduce_to_limits(image: Image.Image, options: DecodeOptions) -> Image.Image:
    """Integer box reduction down to what the crops need, and below `options.max_side`."""
    reduce_by = math.floor(_reduction(*image.size, options))
    long_side = max(image.size)
    if long_side > options.max_side:
        reduce_by = max(reduce_by, math.ceil(long_side / options.max_side))
    return image.reduce(reduce_by) if reduce_by >= 2 else image


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


__all__ = [
    "DataQualityError",
    "DataStats",
    "DecodeOptions",
    "ImageBatch",
    "check_bad_fraction",
    "collate_images",
    "decode_image",
]
