"""k-NN accuracy of a backbone on a fixed labelled subset: the progress signal the DINO authors advise watching.

The images (a memory bank from one split, queries from another) are decoded once with the paper's evaluation
preprocessing and kept in memory when small enough, so each evaluation costs only two forward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..data import ImageSource, load_image_dataset
from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD
from .backbones import dino_feature
from .batches import eval_batches
from .knn import knn_classify, pixel_features


logger = logging.getLogger(__name__)


class KnnMonitor:
    """`monitor(backbone) -> top-1 accuracy` of the weighted k-NN classifier (k, T = 0.07) on fixed images.

    Args:
        train_source, eval_source: labelled sources from `load_image_dataset` (memory bank and queries).
        image_size: side of the evaluation crops (the model's resolution).
        train_samples, eval_samples: how many images of each split to use (a fixed subset spread evenly over
            the split; a stream's first ones).
        k: neighbours.
        batch_size, num_workers: feature extraction batches and decoding workers.
        mean, std: normalisation (the training one).
        cache_limit_bytes: keep the preprocessed images in memory below this size; stream them again otherwise.
    """

    def __init__(
        self,
        train_source: ImageSource,
        eval_source: ImageSource,
        image_size: int,
        *,
        train_samples: int,  # the sizes and k have their defaults in one place: the --knn_* flags
        eval_samples: int,
        k: int,
        batch_size: int = 256,
        num_workers: int = 2,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        device: torch.device | str = "cpu",
        cache_limit_bytes: int = 512 * 2**20,
    ) -> None:
        self.image_size = image_size
        self.mean = tuple(mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(std) if std is not None else IMAGENET_STD
        self.device = torch.device(device)
        self.k = k
        self.splits = {
            "train": (train_source, train_samples),
            "eval": (eval_source, eval_samples),
        }
        self.batch_size = batch_size
        self.num_workers = num_workers
        per_image = 3 * image_size * image_size * 2  # float16 cache
        self.cache_enabled = (train_samples + eval_samples) * per_image <= cache_limit_bytes
        self._cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @classmethod
    def from_dataset(
        cls,
        name: str,
        image_size: int,
        *,
        train_split: str = "train",
        eval_split: str = "validation",
        load_options: dict[str, Any] | None = None,
        **monitor_options: Any,
    ) -> KnnMonitor | None:
        """The monitor on the splits `train_split` (memory bank) and `eval_split` (queries) of the dataset `name`;
        None (with a log line) when they cannot be loaded or have no labels.

        Args:
            name: what `load_image_dataset` takes (a Hub id, a local folder, files, `"embedded"`).
            image_size: side of the evaluation crops.
            load_options: further keyword arguments of `load_image_dataset` (`data_files`, `streaming`,
                `image_column`, `label_column`, `embedded_options`).
            **monitor_options: keyword arguments of `KnnMonitor` (`train_samples`, `k`, `device`, ...).
        """
        try:
            sources = [
                load_image_dataset(name, split=split, **(load_options or {})) for split in (train_split, eval_split)
            ]
        except (ValueError, FileNotFoundError, KeyError) as error:
            logger.info("k-NN monitor off: %s", error)
            return None
        if any(source.label_column is None for source in sources):
            logger.info("k-NN monitor off: %s has no label column.", name)
            return None
        return cls(sources[0], sources[1], image_size, **monitor_options)

    def _batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split in self._cache:
            yield from self._cache[split]
            return
        source, samples = self.splits[split]
        cached = []
        for pixels, labels, _ in eval_batches(
            source,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            max_images=samples,
        ):
            keep = labels >= 0
            pixels, labels = pixels[keep], labels[keep]
            if self.cache_enabled:
                # Round to the cache's float16 now too, so the first evaluation sees the same inputs as later ones.
                pixels = pixels.to("cpu", torch.float16)
                cached.append((pixels, labels.cpu()))
            yield pixels, labels
        if self.cache_enabled:
            self._cache[split] = cached

    @torch.no_grad()
    def features(self, backbone: torch.nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised DINO features `(N, D)` ([`dino_feature`]: a ViT's [CLS], a ResNet's pooled last stage) and
        labels `(N,)` of one split."""
        return self._features(split, lambda pixels: dino_feature(backbone, pixels).float())

    def _features(self, split: str, feature_of) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = [], []
        for pixels, batch_labels in self._batches(split):
            output = feature_of(pixels.to(self.device, torch.float32))  # cached batches are float16 on the CPU
            features.append(F.normalize(output, dim=-1))
            labels.append(batch_labels.to(self.device))
        return torch.cat(features), torch.cat(labels)

    def _accuracy(self, feature_of) -> float:
        train_features, train_labels = self._features("train", feature_of)
        eval_features, eval_labels = self._features("eval", feature_of)
        scores = knn_classify(
            train_features, train_labels, eval_features, k=min(self.k, len(train_labels)), temperature=0.07
        )
        return (scores.argmax(dim=1) == eval_labels.cpu()).float().mean().item()

    @torch.no_grad()
    def __call__(self, backbone: torch.nn.Module) -> float:
        was_training = backbone.training
        backbone.eval()
        try:
            return self._accuracy(lambda pixels: dino_feature(backbone, pixels).float())
        finally:
            backbone.train(was_training)

    @torch.no_grad()
    def pixel_baseline(self) -> float:
        """The same k-NN top-1 on the raw pixels of the same images ([`pixel_features`]): the floor to clear."""
        return self._accuracy(pixel_features)
