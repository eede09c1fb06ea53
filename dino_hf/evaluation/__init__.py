"""Downstream use of DINO features: k-NN and linear evaluation, attention maps, feature extraction.

- [`knn_classify`], [`knn_evaluate`]: the paper's weighted k-NN classifier, chunked for large training sets.
- [`LinearClassifier`], [`LinearProbeConfig`], [`extract_linear_features`], [`train_linear_probe`],
  [`evaluate_linear_probe`]: linear evaluation on frozen features, on accelerate.
- [`load_metric`], [`top_k_accuracies`]: offline `evaluate` metrics.
"""

from .knn import knn_classify, knn_evaluate
from .linear import (
    LinearClassifier,
    LinearProbeConfig,
    LinearProbeResult,
    evaluate_linear_probe,
    extract_linear_features,
    train_linear_probe,
    unpack_batch,
)
from .metrics import load_metric, top_k_accuracies


__all__ = [
    "LinearClassifier",
    "LinearProbeConfig",
    "LinearProbeResult",
    "evaluate_linear_probe",
    "extract_linear_features",
    "knn_classify",
    "knn_evaluate",
    "load_metric",
    "top_k_accuracies",
    "train_linear_probe",
    "unpack_batch",
]
