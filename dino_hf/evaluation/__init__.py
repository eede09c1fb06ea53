"""Downstream use of DINO features: k-NN and linear evaluation, attention maps, feature extraction.

- [`knn_classify`], [`knn_evaluate`]: the paper's weighted k-NN classifier, chunked for large training sets.
- [`LinearClassifier`], [`LinearProbeConfig`], [`extract_linear_features`], [`train_linear_probe`],
  [`evaluate_linear_probe`]: linear evaluation on frozen features, on accelerate.
- [`attention_maps`], [`threshold_attention`], [`save_attention_grid`]: the last block's [CLS] attention per head.
- [`dino_image_processor`], [`save_model_with_processor`], [`extract_features`], [`load_backbone`]: pipeline-ready
  folders, feature files, and the backbone of any saved dino_hf folder.
- [`load_metric`], [`top_k_accuracies`]: offline `evaluate` metrics.
"""

from .attention import attention_maps, prepare_image, save_attention_grid, threshold_attention
from .features import (
    dino_image_processor,
    extract_features,
    load_backbone,
    load_features,
    save_features,
    save_model_with_processor,
)
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
    "attention_maps",
    "dino_image_processor",
    "evaluate_linear_probe",
    "extract_features",
    "extract_linear_features",
    "knn_classify",
    "knn_evaluate",
    "load_backbone",
    "load_features",
    "load_metric",
    "prepare_image",
    "save_attention_grid",
    "save_features",
    "save_model_with_processor",
    "threshold_attention",
    "top_k_accuracies",
    "train_linear_probe",
    "unpack_batch",
]
