# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Semantic segmentation on frozen DINO features: a linear head on the backbone's patch grid, scored by mean IoU.

The linear protocol of dense evaluation (DINOv2's "linear" semantic segmentation, on a DINO backbone): the backbone
stays frozen; the feature maps of its last `n_last_blocks` blocks, each through the final LayerNorm
([`DinoBackbone`]), are concatenated on channels, and a BatchNorm + 1x1 convolution predicts a class per patch.
Its logits are upsampled bilinearly to the mask's size, for the cross-entropy (pixels labelled `ignore_index` left
out) and for the prediction. Images are resized to `image_size x image_size` (bicubic; masks by nearest neighbour)
and scored at that size. Having no augmentation, the features are computed once and the head trains on them in
memory (`N x channels x (image_size / patch_size)^2` floats per split).

- [`load_segmentation_split`]: image + mask pairs: the embedded shapes with their masks, a `datasets` dataset with
  an image and a mask column (Hub id, parquet files, a saved folder), or a folder of `<split>/images/` and
  `<split>/masks/` files (masks: single-channel PNGs of class indices).
- [`dense_backbone`]: a [`DinoBackbone`] giving the last blocks' maps, from any source `DinoViTModel` loads (or at
  its random initialisation, the baseline).
- [`extract_dense_features`], [`LinearSegmentationHead`], [`train_segmentation_head`], [`evaluate_segmentation`]:
  the steps; [`frozen_feature_segmentation`]: all of them.
- [`FrozenFeatureSegmenter`]: backbone + head as one module (images -> logits), saved and loaded as a folder.

Example:

```python
>>> from dino_hf.evaluation.segmentation import dense_backbone, frozen_feature_segmentation, load_segmentation_split
>>> options = {"train_per_class": 20, "validation_per_class": 10}
>>> train = load_segmentation_split("embedded", "train", embedded_options=options)  # doctest: +SKIP
>>> validation = load_segmentation_split("embedded", "validation", embedded_options=options)  # doctest: +SKIP
>>> result = frozen_feature_segmentation(dense_backbone("outputs/demo/export"), train, validation)  # doctest: +SKIP
>>> result.figures["mean_iou"]  # doctest: +SKIP
```
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data.loaders import evenly_spread_indices
from ..data.sources import find_image_column, open_dataset
from ..data.synthetic import EMBEDDED_DATASET_NAME, SEGMENTATION_CLASSES
from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, dense_image_processor, to_pixel_values
from ..modeling_dino import DinoBackbone
from .image_files import IMAGE_EXTENSIONS
from .metrics import confusion_matrix, mean_iou
from .video_segmentation import davis_palette


# The label of pixels that no class covers (unlabelled, boundaries), as in ADE20K and transformers' image processors.
IGNORE_INDEX = 255
MASK_COLUMN_NAMES = ("mask", "annotation", "segmentation", "semantic_segmentation", "seg_map", "label", "labels")
HEAD_FILE = "segmentation_head.safetensors"
CONFIG_FILE = "segmentation_config.json"
EXAMPLES_FILE = "segmentation_examples.png"


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SegmentationSplit:
    """Image + mask pairs of one split.

    Attributes:
        dataset: a `datasets.Dataset` whose `image_column` and `mask_column` are `Image` features.
        class_names: the classes' names by index where the source states them (the embedded shapes), else None.
    """

    dataset: datasets.Dataset
    image_column: str
    mask_column: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int) -> Iterator[tuple[list[Image.Image], list[np.ndarray]]]:
        """`(RGB images, masks as 2-D integer arrays)` in order, `batch_size` at a time."""
        for start in range(0, len(self.dataset), batch_size):
            rows = self.dataset[start : start + batch_size]
            images = [image.convert("RGB") for image in rows[self.image_column]]
            yield images, [_mask_array(mask) for mask in rows[self.mask_column]]


def _mask_array(mask: Image.Image) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(
            f"A mask of mode {mask.mode!r} has {array.ndim} dimensions: masks must be single-channel maps of class "
            "indices (PNG modes L, P or I), not colour-coded."
        )
    return array


def load_segmentation_split(
    dataset_name: str,
    split: str = "train",
    *,
    data_files: Any = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    embedded_options: dict | None = None,
    max_samples: int | None = None,
) -> SegmentationSplit:
    """Image + mask pairs of one split of a segmentation dataset.

    Args:
        dataset_name: `"embedded"` (the shapes dataset with its masks: classes `SEGMENTATION_CLASSES`), a folder
            holding `<split>/images/*` and `<split>/masks/*` (pairs by file name stem), or any dataset
            `dino_hf.data.load_image_dataset` opens (Hub id, folder, parquet files) with an image and a mask column.
        image_column, mask_column: detected when None (`Image` features named as in `IMAGE_COLUMN_NAMES` /
            `MASK_COLUMN_NAMES`; a mask column must be an `Image` feature).
        embedded_options: generator options of the embedded dataset (e.g. `{"train_per_class": 100}`).
        max_samples: keep `max_samples` pairs: a seeded subset spread evenly over the split
            ([`~dino_hf.data.evenly_spread_indices`]), not the first ones of a sorted folder.
    """
    class_names = None
    if _is_image_mask_folder(dataset_name, split):
        dataset = _folder_dataset(Path(dataset_name) / split)
    else:
        if dataset_name == EMBEDDED_DATASET_NAME:
            embedded_options = {**(embedded_options or {}), "with_masks": True}
            class_names = list(SEGMENTATION_CLASSES)
        dataset = open_dataset(dataset_name, split, data_files=data_files, embedded_options=embedded_options)
    features = dataset.features
    if mask_column is None:
        candidates = [c for c in MASK_COLUMN_NAMES if isinstance(features.get(c), datasets.Image)]
        if not candidates:
            raise ValueError(
                f"No mask column found in {list(features)}: pass mask_column= (an Image feature; names tried: "
                f"{list(MASK_COLUMN_NAMES)})."
            )
        mask_column = candidates[0]
    image_column = find_image_column(
        datasets.Features({k: v for k, v in features.items() if k != mask_column}), image_column
    )
    if max_samples is not None:  # seeded and spread over the split: a sorted folder's first pairs are not a sample
        dataset = dataset.select(evenly_spread_indices(len(dataset), max_samples, seed=0))
    return SegmentationSplit(dataset, image_column, mask_column, class_names)


def _is_image_mask_folder(name: str, split: str) -> bool:
    return os.path.isdir(Path(name) / split / "images") and os.path.isdir(Path(name) / split / "masks")


def _folder_dataset(folder: Path) -> datasets.Dataset:
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    missing = [p.name for p in images if p.stem not in masks]
    if missing or not images:
        raise ValueError(
            f"{folder}: every image in images/ needs a mask of the same stem in masks/; missing {missing[:5]}."
        )
    columns = {"image": [str(p) for p in images], "mask": [str(masks[p.stem]) for p in images]}
    return datasets.Dataset.from_dict(
        columns, features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    )


def segmentation_inputs(
    images: Sequence[Image.Image],
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """The pixel values of `images` resized to `image_size x image_size` (bicubic), `(B, 3, S, S)`, normalised: what
    [`dense_image_processor`] gives, which the saved segmenter carries."""
    return torch.cat(
        [
            to_pixel_values(image.resize((image_size, image_size), Image.Resampling.BICUBIC), mean, std)
            for image in images
        ]
    )


def segmentation_targets(masks: Sequence[np.ndarray], image_size: int, reduce_labels: bool = False) -> torch.Tensor:
    """Masks resized to `image_size x image_size` by nearest neighbour, `(B, S, S)` int64. `reduce_labels` (ADE20K's
    convention, as transformers' image processors): class 0 becomes `IGNORE_INDEX` and the others move down by one."""
    resized = []
    for mask in masks:
        mode = "I" if mask.max(initial=0) > 255 else "L"
        image = Image.fromarray(mask.astype(np.int32 if mode == "I" else np.uint8), mode=mode)
        resized.append(
            torch.from_numpy(
                np.asarray(image.resize((image_size, image_size), Image.Resampling.NEAREST)).astype(np.int64)
            )
        )
    targets = torch.stack(resized)
    if reduce_labels:
        targets = torch.where(targets == 0, IGNORE_INDEX, targets - 1)
        targets[targets == IGNORE_INDEX - 1] = IGNORE_INDEX
    return targets


# ---------------------------------------------------------------------------------------------------------------------
# Features and head
# ---------------------------------------------------------------------------------------------------------------------


def dense_backbone(model_name_or_path: Any, n_last_blocks: int | None = None, **kwargs: Any) -> DinoBackbone:
    """A [`DinoBackbone`] in eval mode whose feature maps are its last `n_last_blocks` blocks' (final norm applied).

    `model_name_or_path`: anything `DinoViTModel.from_pretrained` loads (a folder, a released name, a training run).
    `n_last_blocks` defaults to the config's linear-evaluation layout (4 for ViT-S, 1 for ViT-B). `kwargs` go to
    `from_pretrained` (e.g. `attn_implementation`).
    """
    backbone = DinoBackbone.from_pretrained(model_name_or_path, **kwargs)
    n_last_blocks = n_last_blocks or backbone.config.n_last_blocks
    backbone.out_indices = list(
        range(backbone.config.num_hidden_layers - n_last_blocks + 1, backbone.config.num_hidden_layers + 1)
    )
    return backbone.eval()


def random_backbone(backbone: DinoBackbone, seed: int = 0) -> DinoBackbone:
    """The same architecture and feature maps at its random initialisation (seeded; the global generator is left as
    it was): the baseline that shows what pretraining adds."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DinoBackbone(copy.deepcopy(backbone.config)).eval()


@dataclass
class DenseFeatures:
    """Frozen features `(N, C, h, w)` float32 and targets `(N, S, S)` int64 of one split, on the CPU."""

    features: torch.Tensor
    targets: torch.Tensor


@torch.no_grad()
def extract_dense_features(
    backbone: DinoBackbone,
    split: SegmentationSplit,
    image_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    reduce_labels: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> DenseFeatures:
    """The backbone's feature maps of every image, concatenated on channels, and the resized masks."""
    if image_size % backbone.config.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {backbone.config.patch_size}.")
    backbone = backbone.eval().to(device)
    features, targets = [], []
    batches = split.batches(batch_size)
    for images, masks in tqdm(batches, total=math.ceil(len(split) / batch_size), desc="features", leave=False):
        maps = backbone(segmentation_inputs(images, image_size, mean, std).to(device)).feature_maps
        features.append(torch.cat(maps, dim=1).float().cpu())
        targets.append(segmentation_targets(masks, image_size, reduce_labels))
    return DenseFeatures(torch.cat(features), torch.cat(targets))


class LinearSegmentationHead(nn.Module):
    """BatchNorm + 1x1 convolution: `(B, C, h, w)` patch features -> `(B, num_labels, h, w)` logits."""

    def __init__(self, in_channels: int, num_labels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_labels, kernel_size=1)
        # As the linear probe's classifier: small normal weights, zero bias (seeded by `generator` when given).
        with torch.no_grad():
            self.classifier.weight.normal_(0.0, 0.01, generator=generator)
            self.classifier.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(features))


def upsampled_logits(head: nn.Module, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The head's logits, upsampled bilinearly to `size` (the mask's)."""
    return F.interpolate(head(features), size=tuple(size), mode="bilinear", align_corners=False)


@dataclass
class SegmentationHeadConfig:
    """How the head trains: AdamW with a cosine schedule over `epochs` passes on the stored features."""

    epochs: int = 30
    # Chosen on the demo (docs/dense_features.md): the head, on BatchNorm-ed features, is still underfit at 1e-2.
    lr: float = 3e-2
    weight_decay: float = 1e-4
    batch_size: int = 16
    ignore_index: int = IGNORE_INDEX


def train_segmentation_head(
    data: DenseFeatures,
    num_labels: int,
    config: SegmentationHeadConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[LinearSegmentationHead, list[float]]:
    """Train a [`LinearSegmentationHead`] on stored features; returns it (eval mode) and each epoch's mean loss.

    The initialisation and the batch order come from `seed` alone, so two backbones' features get the same head.
    """
    config = config or SegmentationHeadConfig()
    generator = torch.Generator().manual_seed(seed)
    head = LinearSegmentationHead(data.features.shape[1], num_labels, generator).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data.features) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    losses = []
    for _ in range(config.epochs):
        head.train()
        total, count = 0.0, 0
        for index in torch.randperm(len(data.features), generator=generator).split(config.batch_size):
            features, targets = data.features[index].to(device), data.targets[index].to(device)
            logits = upsampled_logits(head, features, targets.shape[-2:])
            loss = F.cross_entropy(logits, targets, ignore_index=config.ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(index), count + len(index)
        losses.append(total / count)
    return head.eval(), losses


@torch.no_grad()
def evaluate_segmentation(
    head: nn.Module,
    data: DenseFeatures,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """[`mean_iou`]'s figures of the head's predictions on stored features (pixels of `ignore_index` left out)."""
    head = head.eval().to(device)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)
    for start in range(0, len(data.features), batch_size):
        targets = data.targets[start : start + batch_size]
        logits = upsampled_logits(head, data.features[start : start + batch_size].to(device), targets.shape[-2:])
        confusion += confusion_matrix(logits.argmax(dim=1).cpu(), targets, num_labels, ignore_index)
    return mean_iou(confusion)


def infer_num_labels(targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """1 + the largest class in `targets` other than `ignore_index`."""
    labelled = targets[targets != ignore_index]
    if not labelled.numel():
        raise ValueError("The masks label no pixel (all are ignore_index).")
    return int(labelled.max()) + 1


# ---------------------------------------------------------------------------------------------------------------------
# The whole protocol, and the trained model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SegmentationResult:
    """A trained head and its figures: `figures` holds [`mean_iou`]'s (validation), `losses` the epochs' losses."""

    head: LinearSegmentationHead
    figures: dict[str, Any]
    losses: list[float]
    num_labels: int
    image_size: int
    config: SegmentationHeadConfig = field(default_factory=SegmentationHeadConfig)


def frozen_feature_segmentation(
    backbone: DinoBackbone,
    train: SegmentationSplit,
    evaluation: SegmentationSplit,
    *,
    image_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    num_labels: int | None = None,
    reduce_labels: bool = False,
    config: SegmentationHeadConfig | None = None,
    feature_batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SegmentationResult:
    """Extract both splits' features, train the head on `train`, score it on `evaluation`.

    `image_size` defaults to the backbone's; `num_labels` to [`infer_num_labels`] of both splits' masks.
    """
    config = config or SegmentationHeadConfig()
    image_size = image_size or backbone.config.image_size
    options = dict(mean=mean, std=std, reduce_labels=reduce_labels, batch_size=feature_batch_size, device=device)
    train_data = extract_dense_features(backbone, train, image_size, **options)
    eval_data = extract_dense_features(backbone, evaluation, image_size, **options)
    if num_labels is None:
        num_labels = max(infer_num_labels(d.targets, config.ignore_index) for d in (train_data, eval_data))
    head, losses = train_segmentation_head(train_data, num_labels, config, seed=seed, device=device)
    figures = evaluate_segmentation(head, eval_data, num_labels, config.ignore_index, device=device)
    return SegmentationResult(head.cpu(), figures, losses, num_labels, image_size, config)


class FrozenFeatureSegmenter(nn.Module):
    """A [`DinoBackbone`] and a trained [`LinearSegmentationHead`]: `(B, 3, S, S)` normalised images ->
    `(B, num_labels, S, S)` logits; [`segment`] takes PIL images.

    Saved as a folder: the backbone (a `DinoBackbone` folder with its image processor, loadable with
    `AutoBackbone`), `segmentation_head.safetensors`, and `segmentation_config.json` (classes, input size,
    normalisation, the figures it was saved with).
    """

    def __init__(self, backbone: DinoBackbone, head: LinearSegmentationHead, settings: dict[str, Any]) -> None:
        super().__init__()
        self.backbone, self.head, self.settings = backbone.eval(), head.eval(), dict(settings)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = torch.cat(self.backbone(pixel_values).feature_maps, dim=1)
        return upsampled_logits(self.head, features, pixel_values.shape[-2:])

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Class maps `(B, S, S)` of `images`, resized to the input size the head was trained at."""
        settings = self.settings
        pixels = segmentation_inputs(images, settings["image_size"], settings["mean"], settings["std"])
        return self(pixels.to(next(self.parameters()).device)).argmax(dim=1).cpu()

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        settings = self.settings
        dense_image_processor(settings["image_size"], settings["mean"], settings["std"]).save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, folder / HEAD_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(self.settings, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder_or_repo: str | Path, **hub_kwargs: Any) -> FrozenFeatureSegmenter:
        """Load a saved segmenter from a folder or a Hub repository (downloaded with `snapshot_download`)."""
        folder = Path(folder_or_repo)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(folder_or_repo), **hub_kwargs))
        settings = json.loads((folder / CONFIG_FILE).read_text())
        state = load_file(folder / HEAD_FILE)
        head = LinearSegmentationHead(state["classifier.weight"].shape[1], state["classifier.weight"].shape[0])
        head.load_state_dict(state)
        return cls(DinoBackbone.from_pretrained(folder), head, settings)


def segmenter_settings(
    result: SegmentationResult,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    source: str,
    out_features: Sequence[str] = (),
) -> dict[str, Any]:
    """What `segmentation_config.json` states: classes, input size, normalisation, the backbone it came from, and
    the figures (no credentials: only these values are written)."""
    return {
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "image_size": result.image_size,
        "mean": list(mean),
        "std": list(std),
        "ignore_index": result.config.ignore_index,
        "backbone": str(source),
        "out_features": list(out_features),
        "figures": result.figures,
    }


def save_segmentation_examples(
    path: str | Path,
    split: SegmentationSplit,
    segmenters: dict[str, FrozenFeatureSegmenter],
    count: int = 4,
    scale: int = 3,
    padding: int = 4,
) -> Image.Image:
    """A PNG grid, one row per image of `split`'s first `count`: the image and its true mask at the segmenters' input
    size, then each segmenter's prediction (columns in `segmenters`' order), classes in the DAVIS / VOC colours
    (0, the background, black), every tile enlarged `scale` times, `padding` white pixels between tiles."""
    first = next(iter(segmenters.values())).settings["image_size"]
    images, masks = next(split.batches(count))
    truths = segmentation_targets(masks, first).numpy()
    predictions = [segmenter.segment(images).numpy() for segmenter in segmenters.values()]
    palette = davis_palette()
    rows = []
    for index, image in enumerate(images):
        tiles = [np.asarray(image.resize((first, first), Image.Resampling.BICUBIC))]
        tiles += [palette[labels[index].clip(0, 255)] for labels in (truths, *predictions)]
        rows.append(tiles)
    side, gap = first * scale, padding
    grid = np.full((len(rows) * (side + gap) - gap, len(rows[0]) * (side + gap) - gap, 3), 255, dtype=np.uint8)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            grid[r * (side + gap) : r * (side + gap) + side, c * (side + gap) : c * (side + gap) + side] = tile.repeat(
                scale, axis=0
            ).repeat(scale, axis=1)
    picture = Image.fromarray(grid)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return picture


__all__ = [
    "CONFIG_FILE",
    "EXAMPLES_FILE",
    "HEAD_FILE",
    "IGNORE_INDEX",
    "MASK_COLUMN_NAMES",
    "DenseFeatures",
    "FrozenFeatureSegmenter",
    "LinearSegmentationHead",
    "SegmentationHeadConfig",
    "SegmentationResult",
    "SegmentationSplit",
    "dense_backbone",
    "random_backbone",
    "save_segmentation_examples",
    "evaluate_segmentation",
    "extract_dense_features",
    "frozen_feature_segmentation",
    "infer_num_labels",
    "load_segmentation_split",
    "segmentation_inputs",
    "segmentation_targets",
    "segmenter_settings",
    "train_segmentation_head",
    "upsampled_logits",
]
