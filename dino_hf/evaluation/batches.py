"""Batches of preprocessed images for the classification protocols (k-NN, linear probe, fine-tuning, feature export),
from any `datasets` source of `dino_hf.data`.

- [`eval_batches`]: every image once, in order, with the paper's evaluation preprocessing (resize 256, center crop
  224, normalise), for k-NN, feature export and the linear probe's validation;
- [`probe_train_batches`]: shuffled epochs with random-resized crops and flips, for training the linear probe;
- [`labelled_source`]: a split that must carry labels (k-NN, the linear probe).

Decoding runs in DataLoader workers; resizing, cropping and normalising run batched on `device`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..data import (
    DinoMultiCropAugmentation,
    EvalTransform,
    ImageSource,
    MultiCropConfig,
    build_eval_loader,
    build_pretraining_loader,
    load_image_dataset,
)
from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size


def labelled_source(
    dataset_name: str,
    split: str,
    *,
    data_files: Any = None,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = True,
) -> ImageSource:
    """[`load_image_dataset`] of a split the evaluation needs labels for; a clear error when it has none."""
    source = load_image_dataset(
        dataset_name,
        split=split,
        data_files=data_files,
        image_column=image_column,
        label_column=label_column,
        streaming=streaming,
    )
    if source.label_column is None:
        raise ValueError(f"{dataset_name} ({split}) has no label column; pass --label_column.")
    return source


def eval_batches(
    source: ImageSource,
    *,
    image_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 128,
    num_workers: int = 4,
    device: torch.device | str = "cpu",
    max_images: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """`(pixel_values (B, 3, S, S), labels (B,), ids)` for every image of `source` (this process's share).

    `resize_size` defaults to `image_size / 0.875` (256 for 224), the paper's evaluation resize.
    """
    resize_size = eval_resize_size(image_size) if resize_size is None else resize_size
    transform = EvalTransform(image_size=image_size, resize_size=resize_size, mean=mean, std=std)
    loader = build_eval_loader(
        source,
        batch_size,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        max_images=max_images,
        resize_size=resize_size,
    )
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        yield transform(batch.images, batch.sizes), batch.labels, batch.ids


def classification_crop_config(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.08, 1.0),
) -> MultiCropConfig:
    """One random-resized crop (area `scale`, 0.08-1 by default) and a horizontal flip, no colour changes: the
    reference's `RandomResizedCrop(224)` + `RandomHorizontalFlip()` of linear evaluation and DeiT's geometric
    augmentation."""
    return MultiCropConfig(
        global_crops_number=1,
        global_crops_size=image_size,
        global_crops_scale=tuple(scale),
        local_crops_number=0,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        blur_p_global=(0.0,),
        solarize_p_global=(0.0,),
        mean=tuple(mean),
        std=tuple(std),
    )


def probe_train_batches(
    source: ImageSource,
    *,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 128,
    num_workers: int = 4,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    steps_per_epoch: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """`epoch -> (pixel_values, labels)` batches for the linear probe: random-resized crop (`crop_scale`, the
    reference's 0.08-1 by default) and flip.

    The reference trains the probe with `RandomResizedCrop(224)` + `RandomHorizontalFlip()`; this is the same crop
    distribution with the pipeline's antialiased bicubic resampling. One epoch is `steps_per_epoch` batches
    (default: the dataset size over the total batch) of one endless shuffled stream, so every process takes the same
    number of steps.
    """
    if steps_per_epoch is None:
        if source.num_examples is None:
            raise ValueError("The dataset size is unknown: pass steps_per_epoch.")
        steps_per_epoch = max(1, source.num_examples // (batch_size * world_size))
    augment = DinoMultiCropAugmentation(classification_crop_config(image_size, mean, std, scale=crop_scale))
    generator = torch.Generator(device=device).manual_seed(seed * 1000 + rank)
    stream = iter(
        build_pretraining_loader(
            source, batch_size, num_workers=num_workers, seed=seed, rank=rank, world_size=world_size
        )
    )

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in itertools.islice(stream, steps_per_epoch):
            batch = batch.to(device, non_blocking=True)
            crops = augment(batch.images, batch.sizes, generator=generator)
            yield crops.global_crops, batch.labels

    return epoch_batches
