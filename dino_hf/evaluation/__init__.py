"""Downstream use of DINO features: k-NN and linear evaluation, attention maps, feature extraction.

- [`knn_classify`], [`knn_evaluate`]: the paper's weighted k-NN classifier, chunked for large training sets;
  [`pixel_features`]: the raw-pixel baseline's features, the floor a learned feature should clear.
- [`LinearClassifier`], [`LinearProbeConfig`], [`extract_linear_features`], [`train_linear_probe`],
  [`evaluate_linear_probe`]: linear evaluation on frozen features, on accelerate, a grid of learning rates at once;
  [`extract_probe_features`], [`train_linear_probe_on_features`]: the same heads on stored features.
- [`attention_maps`], [`threshold_attention`], [`save_attention_grid`]: the last block's [CLS] attention per head.
- [`save_model_with_processor`], [`extract_features`], [`load_backbone`]: pipeline-ready
  folders, feature files, and the backbone of any saved dino_hf folder.
- [`dino_image_processor`], [`prepare_image`]: re-exported from `dino_hf.image_processing_dino`, where the
  preprocessing (mean/std, the 256/224 resize) is defined once.
- [`load_metric`], [`top_k_accuracies`]: offline `evaluate` metrics; [`confusion_matrix`], [`mean_iou`]: segmentation's.
- [`global_features`], [`evaluate_retrieval`], [`compute_map`]: image retrieval, revisited Oxford/Paris protocol.
- [`copy_detection_descriptor`], [`gem`], [`PCAWhitening`], [`evaluate_copy_detection`]: copy detection (Copydays).
- [`propagate_video`], [`segment_davis`], [`region_similarity`], [`boundary_f_measure`]: video object segmentation
  by label propagation, DAVIS J and F.
- [`attention_video`]: the attention maps of every frame of a video, as images and an animation.
- [`dino_feature`], [`global_and_local_features`], [`feature_stride`], [`default_image_size`]: what every
  evaluation reads of a backbone, ViT or ResNet (`evaluation/backbones.py`, the one place that knows it).
- [`eval_batches`], [`probe_train_batches`], [`labelled_source`]: evaluation data from any `dino_hf.data` source.
- [`FinetuneArguments`], [`finetune`]: full fine-tuning for classification (transformers `Trainer`).
"""

from ..image_processing_dino import dino_image_processor, prepare_image, processor_normalisation  # re-exported
from .attention import attention_maps, attention_video, read_frames, save_attention_grid, threshold_attention
from .backbones import (
    default_image_size,
    dino_feature,
    feature_size,
    feature_stride,
    global_and_local_features,
    is_resnet,
    require_attention,
)
from .batches import classification_crop_config, eval_batches, labelled_source, probe_train_batches
from .copy_detection import PCAWhitening, copy_detection_descriptor, evaluate_copy_detection, gem
from .features import (
    DinoFeatureExtractionPipeline,
    extract_features,
    extract_linear_features,
    load_backbone,
    load_features,
    save_features,
    save_model_with_processor,
    unpack_batch,
)
from .finetuning import FinetuneArguments, finetune
from .knn import PIXEL_BASELINE_SIZE, knn_classify, knn_evaluate, pixel_features
from .linear import (
    DEFAULT_BASE_LRS,
    LinearClassifier,
    LinearHeads,
    LinearProbeConfig,
    LinearProbeResult,
    evaluate_linear_probe,
    extract_probe_features,
    feature_batches,
    train_linear_probe,
    train_linear_probe_on_features,
)
from .metrics import confusion_matrix, load_metric, mean_iou, top_k_accuracies
from .retrieval import (
    REVISITED_DATASETS,
    compute_map,
    evaluate_retrieval,
    evaluate_retrieval_dataset,
    global_features,
    load_retrieval_dataset,
)
from .segmentation import (
    FrozenFeatureSegmenter,
    SegmentationHeadConfig,
    dense_backbone,
    frozen_feature_segmentation,
    load_segmentation_split,
    random_backbone,
)
from .synthetic_datasets import generate_copy_detection_demo, generate_retrieval_demo, generate_video_demo
from .video_segmentation import (
    PropagationConfig,
    boundary_f_measure,
    propagate_video,
    region_similarity,
    segment_davis,
)


__all__ = [
    "DinoFeatureExtractionPipeline",
    "default_image_size",
    "dino_feature",
    "feature_size",
    "feature_stride",
    "global_and_local_features",
    "is_resnet",
    "require_attention",
    "DEFAULT_BASE_LRS",
    "FinetuneArguments",
    "FrozenFeatureSegmenter",
    "LinearClassifier",
    "LinearHeads",
    "LinearProbeConfig",
    "LinearProbeResult",
    "PCAWhitening",
    "PIXEL_BASELINE_SIZE",
    "PropagationConfig",
    "REVISITED_DATASETS",
    "SegmentationHeadConfig",
    "attention_maps",
    "attention_video",
    "boundary_f_measure",
    "classification_crop_config",
    "compute_map",
    "confusion_matrix",
    "copy_detection_descriptor",
    "dense_backbone",
    "dino_image_processor",
    "eval_batches",
    "evaluate_copy_detection",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "evaluate_retrieval_dataset",
    "extract_features",
    "extract_linear_features",
    "extract_probe_features",
    "feature_batches",
    "finetune",
    "frozen_feature_segmentation",
    "gem",
    "generate_copy_detection_demo",
    "generate_retrieval_demo",
    "generate_video_demo",
    "global_features",
    "knn_classify",
    "knn_evaluate",
    "labelled_source",
    "load_backbone",
    "load_features",
    "load_metric",
    "load_retrieval_dataset",
    "load_segmentation_split",
    "mean_iou",
    "pixel_features",
    "prepare_image",
    "probe_train_batches",
    "processor_normalisation",
    "propagate_video",
    "random_backbone",
    "read_frames",
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
