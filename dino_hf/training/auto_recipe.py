"""`--recipe auto`: every pretraining setting chosen from measurable properties of the data and the machine.

[`DataProfile.measure`] reads the number of images, the typical image side, colour or grayscale and whether there are
labels; [`MachineProfile.detect`] the device kind, the number of processes and CPU cores. [`auto_recipe`] turns
both, and the time budget, into flags, each with the reason it was chosen ([`Choice`]). It never looks at a
dataset's name. On ImageNet-sized data on GPUs it is the paper's `vits16-100ep`; below that it is the small-data
regime that docs/training.md ("Train on your own images") measured on several small sets.

Example:

```python
>>> from dino_hf.training.auto_recipe import DataProfile, MachineProfile, auto_recipe
>>> data = DataProfile(num_images=2000, image_side=64, color=False, labelled=True)
>>> choices = auto_recipe(data, MachineProfile(device="cpu", num_processes=1, cpu_count=2), time_budget_minutes=8)
>>> flags = {choice.flag: choice.value for choice in choices}
>>> flags["arch"], flags["global_crops_size"], flags["local_crops_size"]
('resnet50', 64, 32)
```
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data.sources import record_image
from .recipes import recipe_defaults


# Where the paper's recipe starts to pay: ImageNet-scale data, and a GPU to train it on.
PAPER_SCALE_IMAGES = 250_000
# Images sampled to measure sizes and colour: enough for a stable median, a second to read.
PROFILE_SAMPLE = 64
# Global crop side of the small-data recipe, whatever the image size: smaller images are upsampled to it. The
# ResNet's output stride is 32, so at 32 px its last stage would see a single position (measured: docs/own_images.md).
GLOBAL_CROP = 64
# Mean absolute difference between colour channels (0-255) above which a dataset counts as colour.
COLOR_THRESHOLD = 4.0


@dataclass(frozen=True)
class DataProfile:
    """What the recipe needs to know about the images: how many, their typical (median) shorter side in pixels,
    colour or grayscale, and whether there are labels (for the k-NN monitor)."""

    num_images: int | None
    image_side: int
    color: bool
    labelled: bool

    @classmethod
    def measure(cls, source: Any, sample: int = PROFILE_SAMPLE) -> DataProfile:
        """Profile an `ImageSource` from `sample` images spread over it (the first ones of a stream)."""
        images = sample_images(source, sample)
        if not images:
            raise ValueError(f"{source.name!r} ({source.split}) has no readable image to profile for --recipe auto.")
        return cls(
            num_images=source.num_examples,
            image_side=int(statistics.median(min(image.size) for image in images)),
            color=statistics.mean(_channel_spread(image) for image in images) > COLOR_THRESHOLD,
            labelled=source.label_column is not None,
        )

    def describe(self) -> str:
        count = f"{self.num_images} images" if self.num_images is not None else "a stream of unknown length"
        kind = "colour" if self.color else "grayscale"
        return f"{count}, median shorter side {self.image_side} px, {kind}, {'labelled' if self.labelled else 'no labels'}"


@dataclass(frozen=True)
class MachineProfile:
    """The machine a run trains on: device kind (`cuda` or `cpu`), processes of the run and CPU cores."""

    device: str
    num_processes: int
    cpu_count: int

    @classmethod
    def detect(cls) -> MachineProfile:
        import torch

        return cls(
            device="cuda" if torch.cuda.is_available() else "cpu",
            num_processes=int(os.environ.get("WORLD_SIZE", "1")),
            cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        )


@dataclass(frozen=True)
class Choice:
    """One flag of the automatic recipe, its value and why."""

    flag: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"  --{self.flag} {self.value}: {self.reason}"


def sample_images(source: Any, count: int) -> list[Image.Image]:
    """Up to `count` decoded images of `source`: spread evenly over a random-access dataset, the first ones of a
    stream. Unreadable records are skipped (the loader counts them during training)."""
    dataset = source.dataset
    if source.streaming:
        records = [record for _, record in zip(range(count), dataset)]
    else:
        size = len(dataset)
        records = [dataset[int(i)] for i in np.unique(np.linspace(0, size - 1, num=min(count, size)).astype(int))]
    images = []
    for record in records:
        try:
            images.append(record_image(record[source.image_column]))
        except (OSError, ValueError, TypeError):
            continue
    return images


def _channel_spread(image: Image.Image) -> float:
    pixels = np.asarray(image.resize((32, 32)), dtype=np.float32)
    return float(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean())


def auto_recipe(data: DataProfile, machine: MachineProfile, time_budget_minutes: float | None) -> list[Choice]:
    """The flags of `--recipe auto`, each with its reason: the paper's recipe at ImageNet scale on GPUs, else the
    small-data recipe sized to the images and the machine."""
    if machine.device == "cuda" and (data.num_images is None or data.num_images >= PAPER_SCALE_IMAGES):
        reason = (
            f"{data.describe()} on {machine.num_processes} GPU process(es): ImageNet scale, the paper's ViT-S/16 "
            "100-epoch recipe"
        )
        return [Choice(flag, value, reason) for flag, value in recipe_defaults("vits16-100ep").items()]
    return _small_data_recipe(data, machine, time_budget_minutes)


def _small_data_recipe(data: DataProfile, machine: MachineProfile, minutes: float | None) -> list[Choice]:
    batch = 64 if machine.device == "cpu" else 256
    scale = f"{data.image_side} px images"
    choices = [
        Choice(
            "arch",
            "resnet50",
            "small images and data: a convnet (transformers' ResNetModel) learns more per CPU-minute than a ViT "
            "(measured in docs/own_images.md)",
        ),
        Choice(
            "config_overrides",
            "resnet_embedding_size=32,resnet_hidden_sizes=[32,64,128,256],resnet_depths=[1,1,1,1],"
            "resnet_layer_type=basic,head_hidden_dim=512,head_bottleneck_dim=128",
            "a ResNet-10 of basic blocks, widths 32-256 (1.2M parameters): many steps fit the budget",
        ),
        Choice("out_dim", 1024, "few images: 1024 prototypes instead of 65536"),
        Choice("use_bn_in_head", True, "BatchNorm in the head, the paper's choice for convnets"),
        Choice(
            "global_crops_size",
            GLOBAL_CROP,
            f"{scale}: {GLOBAL_CROP} px global crops: the ResNet divides its input by 32, so its last stage sees 2 x 2",
        ),
        Choice("local_crops_size", GLOBAL_CROP // 2, "local crops at half the global side, as 96/224 in the paper"),
        Choice("local_crops_number", 4, "4 local crops: more views per image than compute can afford beyond"),
        Choice("local_crops_scale", [0.1, 0.4], "local crops cover 10-40% of the image"),
        Choice(
            "augmentation_overrides",
            json.dumps({"blur_sigma": [round(0.1 * GLOBAL_CROP / 224, 3), round(2.0 * GLOBAL_CROP / 224, 3)]}),
            "the paper's blur (0.1-2 px at 224 px) scaled to the crop",
        ),
        Choice("per_device_train_batch_size", batch, f"{machine.device}: {batch} images per step"),
        Choice("optimizer", "adamw", "AdamW, as the paper's ViTs: SGD needs longer schedules"),
        Choice(
            "lr",
            0.004,
            f"peak lr 0.004 x {batch}/256: 2x (two seeds) and 4x lost points on three of six small sets (docs/own_images.md)",
        ),
        Choice("weight_decay_end", 0.04, "a constant weight decay: a short run has no late phase to regularise"),
        Choice("momentum_teacher", 0.99, "teacher momentum 0.99: the teacher must follow within a thousand steps"),
        Choice("warmup_teacher_temp_epochs", 0, "no temperature warm-up in a short run"),
        Choice("teacher_temp", 0.04, "a sharp teacher (0.04) keeps small data from a uniform collapse"),
        Choice("freeze_last_layer", 0, "the last layer learns from the start: BatchNorm keeps it from collapsing"),
        Choice("mixed_precision", "no" if machine.device == "cpu" else "auto", "float32 on CPU; bf16/fp16 on GPUs"),
        Choice("num_workers", max(1, min(machine.cpu_count - 1, 4)), f"{machine.cpu_count} CPU cores"),
        Choice("knn_at_start_and_end", data.labelled, "k-NN of the random and the trained network (labels found)"),
        Choice("knn_every_steps", 0, "no k-NN during the run: the budget goes to training"),
        Choice("logging_steps", 25, "a log line every 25 steps"),
    ]
    epochs = Choice("epochs", 10, "the schedules span 10 epochs")
    if minutes is not None:
        epochs = Choice("epochs", 10, f"the schedules span 10 epochs laid over the steps that fit {minutes} minutes")
    elif data.num_images:
        steps = max(1, data.num_images // batch)
        count = max(1, min(100, 1500 // steps))
        epochs = Choice("epochs", count, f"{data.num_images} images: {count} epochs of {steps} steps (~1500 steps)")
    return [*choices, epochs, Choice("warmup_epochs", 1, "one epoch of lr warm-up")]


__all__ = ["Choice", "DataProfile", "MachineProfile", "auto_recipe", "sample_images"]
