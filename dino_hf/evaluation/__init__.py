"""Downstream use of DINO features: k-NN and linear evaluation, attention maps, feature extraction.

- [`knn_classify`], [`knn_evaluate`]: the paper's weighted k-NN classifier, chunked for large training sets.
- [`LinearClassifier`], [`LinearProbeConfig`], [`extract_linear_features`], [`train_linear_probe`],
  [`evaluate_linear_probe`]: linear evaluation on frozen features, on accelerate, a grid of learning rates at once;
  [`extract_probe_features`], [`train_linear_probe_on_features`]: the same heads on stored features.
- [`attention_maps`], [`threshold_attention`], [`save_attention_grid`]: the last block's [CLS] attention per head.
- [`save_model_with_processor`], [`extract_features`], [`load_backbone`]: pipeline-ready
  folders, feature files, and the backbone of any saved dino_hf folder.
- [`dino_image_processor`], [`prepare_image`]: re-exported from `dino_hf.image_processing_dino`, where the
  preprocessing (mean/std, the 256/224 resize) is defined once.
- [`load_metric`], [`top_k_accuracies`]: offline `evaluate` metrics.
- [`global_features`], [`evaluate_retrieval`], [`compute_map`]: image retrieval, revisited Oxford/Paris protocol.
- [`copy_detection_descriptor`], [`gem`], [`PCAWhitening`], [`evaluate_copy_detection`]: copy detection (Copydays).
- [`propagate_video`], [`segment_davis`], [`region_similarity`], [`boundary_f_measure`]: video object segmentation
  by label propagation, DAVIS J and F.
- [`attention_video`]: the attention maps of every frame of a video, as images and an animation.
"""

from ..image_processing_dino import dino_image_processor, prepare_image  # the evaluation-facing names, re-exported
from .attention import attention_maps, attention_video, save_attention_grid, threshold_attention
from .copy_detection import PCAWhitening, copy_detection_descriptor, evaluate_copy_detection, gem
from .features import (
    extract_features,
    load_backbone,
    load_features,
    save_features,
    save_model_with_processor,
)
from .knn import knn_classify, knn_evaluate
from .linear import (
    LinearClassifier,
    LinearHeads,
    LinearProbeConfig,
    LinearProbeResult,
    evaluate_linear_probe,
    extract_linear_features,
    extract_probe_features,
    train_linear_probe,
    train_linear_probe_on_features,
    unpack_batch,
)
from .metrics import load_metric, top_k_accuracies
from .retrieval import compute_map, evaluate_retrieval, evaluate_retrieval_dataset, global_features
from .video_segmentation import boundary_f_measure, propagate_video, region_similarity, segment_davis


__all__ = [
    "LinearClassifier",
    "LinearHeads",
    "LinearProbeConfig",
    "LinearProbeResult",
    "PCAWhitening",
    "attention_maps",
    "attention_video",
    "boundary_f_measure",
    "compute_map",
    "copy_detection_descriptor",
    "dino_image_processor",
    "evaluate_copy_detection",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "evaluate_retrieval_dataset",
    "extract_features",
    "extract_linear_features",
    "extract_probe_features",
    "gem",
    "global_features",
    "knn_classify",
    "knn_evaluate",
    "load_backbone",
    "load_features",
    "load_metric",
    "prepare_image",
    "propagate_video",
    "region_similarity",
    "save_attention_grid",
    "save_features",
    "save_model_with_processor",
    "segment_davis",
    "threshold_attention",
    "top_k_accuracies",
    "train_linear_probe",
    "train_linear_probe_on_features",
    "unpack_batch",
]
