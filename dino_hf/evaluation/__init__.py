"""Downstream use of DINO features: k-NN and linear evaluation, attention maps, feature extraction.

- [`knn_classify`], [`knn_evaluate`]: the paper's weighted k-NN classifier, chunked for large training sets.
- [`load_metric`], [`top_k_accuracies`]: offline `evaluate` metrics.
"""

from .knn import knn_classify, knn_evaluate
from .metrics import load_metric, top_k_accuracies


__all__ = ["knn_classify", "knn_evaluate", "load_metric", "top_k_accuracies"]
