# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Mean intersection over union for semantic segmentation, from a confusion matrix accumulated batch by batch.

The definitions of `evaluate`'s `mean_iou` (which `evaluate.load` fetches from the Hub) and mmsegmentation's: per
class, IoU = |prediction ∩ reference| / |prediction ∪ reference| over the pixels whose reference is not
`ignore_index`; a class absent from both predictions and references has no IoU (NaN) and is left out of the means.
The confusion matrix holds every figure, so any split is scored without keeping its pixels.
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(
    predictions: torch.Tensor, references: torch.Tensor, num_labels: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 counts, `[reference, prediction]`, of the pixels whose reference is not
    `ignore_index`.

    Args:
        predictions: class indices, any shape.
        references: class indices, the same shape; values other than `ignore_index` must be in `[0, num_labels)`.

    Example:

    ```python
    >>> import torch
    >>> confusion_matrix(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 255]), num_labels=2)
    tensor([[1, 1],
            [0, 1]])
    ```
    """
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and references {tuple(references.shape)} differ.")
    predictions, references = predictions.reshape(-1).long(), references.reshape(-1).long()
    if ignore_index is not None:
        keep = references != ignore_index
        predictions, references = predictions[keep], references[keep]
    if references.numel() and not 0 <= int(references.min()) <= int(references.max()) < num_labels:
        raise ValueError(
            f"References hold classes outside [0, {num_labels}) other than ignore_index={ignore_index}: "
            f"{sorted(set(references.unique().tolist()) - set(range(num_labels)))[:10]}."
        )
    if predictions.numel() and not 0 <= int(predictions.min()) <= int(predictions.max()) < num_labels:
        raise ValueError(f"Predictions hold classes outside [0, {num_labels}).")
    counts = torch.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels).cpu()


def mean_iou(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """The segmentation figures of a [`confusion_matrix`]: `mean_iou`, `mean_accuracy` (mean per-class recall),
    `overall_accuracy` (pixel accuracy), and `per_category_iou` / `per_category_accuracy` (NaN where undefined).

    Example:

    ```python
    >>> import torch
    >>> figures = mean_iou(torch.tensor([[1, 1], [0, 1]]))
    >>> round(figures["mean_iou"], 4), round(figures["overall_accuracy"], 4)
    (0.5, 0.6667)
    ```
    """
    confusion = confusion.double()
    intersection = confusion.diagonal()
    references, predictions = confusion.sum(dim=1), confusion.sum(dim=0)
    union = references + predictions - intersection
    nan = torch.full_like(intersection, math.nan)
    iou = torch.where(union > 0, intersection / union.clamp_min(1), nan)
    accuracy = torch.where(references > 0, intersection / references.clamp_min(1), nan)
    total = float(references.sum())
    return {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": float(intersection.sum()) / total if total else math.nan,
        "per_category_iou": iou.tolist(),
        "per_category_accuracy": accuracy.tolist(),
    }


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


__all__ = ["confusion_matrix", "mean_iou"]
