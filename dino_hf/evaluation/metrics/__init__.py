"""Offline `evaluate` metrics shipped with dino_hf, top-k accuracy from ranked predictions, and segmentation's mean IoU.

`evaluate.load("accuracy")` fetches its script from the Hub; the modules in this folder (`accuracy/accuracy.py`,
`top_k_accuracy/top_k_accuracy.py`) load from disk with `evaluate.load(<folder>)`, so evaluation runs offline.
[`confusion_matrix`] and [`mean_iou`] (`iou.py`) score segmentations from counts accumulated batch by batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .iou import confusion_matrix, mean_iou


if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).parent
AVAILABLE_METRICS = ("accuracy", "top_k_accuracy")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load one of dino_hf's local `evaluate` metrics (`"accuracy"` or `"top_k_accuracy"`), without the Hub.

    Example:

    ```python
    >>> from dino_hf.evaluation import load_metric
    >>> load_metric("accuracy").compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
    ```
    """
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"Unknown local metric {name!r}; choose one of {AVAILABLE_METRICS}.")
    import evaluate  # imports all of transformers.pipelines: only pay for it when a metric is used

    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def top_k_accuracies(
    rankings: torch.Tensor, references: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies in percent, computed with the local `evaluate` metrics.

    Args:
        rankings: `(N, r)` class indices, best first (`r >= max(topk)` unless there are fewer classes).
        references: `(N,)` true class indices.
        topk: which accuracies; `k=1` uses the `accuracy` metric, larger `k` the `top_k_accuracy` metric.

    Returns:
        `{"top1": ..., "top5": ...}`, in percent as the paper reports them.

    Example:

    ```python
    >>> import torch
    >>> top_k_accuracies(torch.tensor([[2, 0, 1], [0, 1, 2]]), torch.tensor([2, 1]), topk=(1, 2))
    {'top1': 50.0, 'top2': 100.0}
    ```
    """
    if rankings.ndim != 2 or rankings.shape[0] != references.shape[0]:
        raise ValueError(
            f"rankings must be (N, r) and references (N,), got {tuple(rankings.shape)} and {tuple(references.shape)}."
        )
    rankings, references = rankings.cpu(), references.cpu()
    results = {}
    for k in topk:
        if k == 1:
            value = load_metric("accuracy").compute(predictions=rankings[:, 0].numpy(), references=references.numpy())[
                "accuracy"
            ]
        else:
            value = load_metric("top_k_accuracy").compute(
                predictions=rankings[:, :k].tolist(), references=references.numpy(), k=k
            )["top_k_accuracy"]
        results[f"top{k}"] = 100.0 * value
    return results


__all__ = ["AVAILABLE_METRICS", "METRICS_DIR", "confusion_matrix", "load_metric", "mean_iou", "top_k_accuracies"]
