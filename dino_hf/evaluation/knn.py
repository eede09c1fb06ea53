"""Weighted k-nearest-neighbour classification of frozen features, as in the DINO paper (Caron et al. 2021, Sec. 4.1).

Features are L2-normalised; each test feature retrieves its `k` most similar training features (cosine similarity);
neighbour `i` votes for its class with weight `exp(sim_i / T)` (T = 0.07); a class's score is the sum of its votes.
The paper reports top-1 (and top-5) accuracy for k in {10, 20, 100, 200} on ImageNet.

Memory: the test features are processed `chunk_size` rows at a time against all training features, so the peak is one
`(chunk_size, n_train)` similarity block (`chunk_size * n_train * itemsize` bytes: 128 x 1.28M x 4 B = 655 MB for the
ImageNet train set in float32) plus the normalised copy of the training features (`n_train * dim * itemsize`: 1.28M x
384 x 4 B = 1.97 GB for ViT-S) on the compute device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .metrics import top_k_accuracies


# BLAS libraries compute matrices with few rows with other kernels (GEMV, small-matrix paths) that sum in another
# order; padding every similarity block to at least this many rows keeps a test row's similarities bit-identical
# whatever the chunking (verified on MKL; a BLAS may still choose kernels by shape, see docs/evaluation.md).
_MIN_ROWS_PER_BLOCK = 16


def _check_inputs(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, k: int, chunk_size: int
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"Expected train features (N, D) and test features (M, D), got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}."
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}.")
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(
            f"k must be between 1 and the number of training features ({train_features.shape[0]}), got {k}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")


def _num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    largest = max(int(label.max()) for label in labels if label.numel())
    if num_classes is None:
        return largest + 1
    if largest >= num_classes:
        raise ValueError(f"Label {largest} does not fit num_classes={num_classes}.")
    return num_classes


def nearest_neighbours(
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    chunk_size: int = 128,
    device: str | torch.device | None = None,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """The `k` most cosine-similar training features of each test feature, one chunk of test rows at a time.

    Yields `(rows, similarities, indices)`: `rows` the slice of test rows, `similarities` `(len(rows), k)` float32,
    sorted in decreasing order, and `indices` `(len(rows), k)` into the training features, both on `device`.
    """
    device = torch.device(device) if device is not None else train_features.device
    train = F.normalize(train_features.to(device), dim=1)
    dim = train.shape[1]
    for start in range(0, test_features.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, test_features.shape[0]))
        chunk = F.normalize(test_features[rows].to(device=device, dtype=train.dtype), dim=1)
        count = chunk.shape[0]
        if count < _MIN_ROWS_PER_BLOCK:
            chunk = torch.cat([chunk, chunk.new_zeros(_MIN_ROWS_PER_BLOCK - count, dim)])
        similarities, indices = (chunk @ train.T).topk(k, dim=1, largest=True, sorted=True)
        yield rows, similarities[:count].float(), indices[:count]


def weighted_vote(
    similarities: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float, num_classes: int
) -> torch.Tensor:
    """Class scores `(n, num_classes)`: the sum over neighbours of `exp(similarity / temperature)` per class.

    Args:
        similarities: `(n, k)` cosine similarities of the neighbours.
        neighbour_labels: `(n, k)` their labels.
    """
    weights = similarities.float().div(temperature).exp()
    scores = weights.new_zeros(similarities.shape[0], num_classes)
    return scores.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Weighted k-NN vote scores of the test features, as in the DINO paper.

    Args:
        train_features: `(N, D)` features of the training set (normalised here; any scale is fine).
        train_labels: `(N,)` integer labels.
        test_features: `(M, D)` features to classify.
        k: neighbours that vote.
        temperature: `T` in the vote weight `exp(cos_sim / T)`.
        num_classes: defaults to `max(train_labels) + 1`.
        chunk_size: test rows compared with all training features at once (memory: `chunk_size * N * itemsize`
            bytes for the similarities). The result does not depend on it.
        device: where to compute (e.g. `"cuda"`); defaults to the training features' device. The normalised training
            features are copied there once.

    Returns:
        `(M, num_classes)` float32 scores on the CPU; `scores.argmax(1)` is the prediction.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.evaluation import knn_classify
    >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> scores = knn_classify(train, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.2]]), k=2, num_classes=2)
    >>> scores.shape, scores.argmax(1)
    (torch.Size([1, 2]), tensor([0]))
    ```
    """
    _check_inputs(train_features, train_labels, test_features, k, chunk_size)
    num_classes = _num_classes(num_classes, train_labels)
    labels = train_labels.to(device if device is not None else train_features.device, torch.long)
    scores = torch.empty(test_features.shape[0], num_classes)
    for rows, similarities, indices in nearest_neighbours(train_features, test_features, k, chunk_size, device):
        scores[rows] = weighted_vote(similarities, labels[indices], temperature, num_classes).cpu()
    return scores


@torch.no_grad()
def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 128,
    device: str | torch.device | None = None,
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (in percent) of the weighted k-NN classifier for several k at once.

    One neighbour search with the largest k serves every k (the neighbours come sorted by similarity, so the first k
    of them are the k nearest). Accuracies are computed with dino_hf's offline `evaluate` metrics. As in the
    reference, top-5 looks at the `min(5, k)` best classes (fewer than 5 classes: all of them).

    Args:
        test_labels: `(M,)` true labels of the test features.
        ks: the numbers of neighbours to evaluate (the paper: 10, 20, 100, 200).
        Other arguments as in [`knn_classify`].

    Returns:
        `{k: {"top1": ..., "top5": ...}}`.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.evaluation import knn_evaluate
    >>> train, labels = torch.randn(100, 8), torch.arange(100) % 4
    >>> knn_evaluate(train, labels, train[:10], labels[:10], ks=(1,))[1]["top1"]  # each point is its own neighbour
    100.0
    ```
    """
    if not ks:
        raise ValueError("ks must name at least one k.")
    largest_k = max(ks)
    _check_inputs(train_features, train_labels, test_features, largest_k, chunk_size)
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels must be ({test_features.shape[0]},), got {tuple(test_labels.shape)}.")
    num_classes = _num_classes(num_classes, train_labels, test_labels)
    labels = train_labels.to(device if device is not None else train_features.device, torch.long)
    rankings: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for _, similarities, indices in nearest_neighbours(train_features, test_features, largest_k, chunk_size, device):
        neighbour_labels = labels[indices]
        for k in ks:
            scores = weighted_vote(similarities[:, :k], neighbour_labels[:, :k], temperature, num_classes)
            rankings[k].append(scores.topk(min(5, k, num_classes), dim=1).indices.cpu())
    results = {}
    for k in ks:
        results[k] = top_k_accuracies(torch.cat(rankings[k]), test_labels, topk=(1, 5))
    return results


# The side the raw-pixel baseline pools images to: large enough to keep a character or a silhouette recognisable,
# small enough that a pixel off or a little blur does not change the nearest neighbours.
PIXEL_BASELINE_SIZE = 16


def pixel_features(pixel_values: torch.Tensor, size: int = PIXEL_BASELINE_SIZE) -> torch.Tensor:
    """The raw-pixel baseline's features `(B, 3 * size * size)` of preprocessed images `(B, 3, H, W)`.

    Each image is area-pooled to `size x size`, flattened, centred on its own mean (so a uniform change of brightness
    does not move it) and L2-normalised. k-NN on these is the floor any learned feature should clear on the same
    crops and protocol (`dino-hf-knn-eval --pixel_baseline`, and the k-NN monitor's `pixel_baseline`).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.evaluation import pixel_features
    >>> images = torch.rand(2, 3, 64, 64)
    >>> features = pixel_features(images)
    >>> features.shape, torch.allclose(features, pixel_features(images + 0.5), atol=1e-6)
    (torch.Size([2, 768]), True)
    ```
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"Expected images (B, C, H, W), got {tuple(pixel_values.shape)}.")
    pooled = F.adaptive_avg_pool2d(pixel_values.float(), size).flatten(1)
    return F.normalize(pooled - pooled.mean(dim=1, keepdim=True), dim=1)


__all__ = [
    "PIXEL_BASELINE_SIZE",
    "knn_classify",
    "knn_evaluate",
    "nearest_neighbours",
    "pixel_features",
    "weighted_vote",
]
