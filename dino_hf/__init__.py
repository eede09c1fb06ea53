"""dino_hf: DINO (self-distillation with no labels, Caron et al. 2021) the Hugging Face way."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_dino import DinoConfig
from .hub import install_auto_backbone_loader, install_auto_model_loader, load_foreign_pretrained
from .image_processing_dino import dino_image_processor
from .modeling_dino import (
    DinoBackbone,
    DinoCenter,
    DinoForImageClassification,
    DinoForSelfDistillation,
    DinoHead,
    DinoLoss,
    DinoLossOutput,
    DinoModelOutput,
    DinoPreTrainedModel,
    DinoSelfDistillationOutput,
    DinoViTModel,
    MissingWeightsError,
)
from .releases import RELEASED_MODELS, resolve_model_id


__version__ = "0.1.0"

AutoConfig.register("dino", DinoConfig, exist_ok=True)
AutoModel.register(DinoConfig, DinoViTModel, exist_ok=True)
AutoModelForPreTraining.register(DinoConfig, DinoForSelfDistillation, exist_ok=True)
AutoModelForImageClassification.register(DinoConfig, DinoForImageClassification, exist_ok=True)
AutoBackbone.register(DinoConfig, DinoBackbone, exist_ok=True)
# Saved folders name these files in `auto_map`, so they load with trust_remote_code=True without dino_hf.
DinoConfig.register_for_auto_class()
DinoViTModel.register_for_auto_class("AutoModel")
DinoForSelfDistillation.register_for_auto_class("AutoModelForPreTraining")
DinoForImageClassification.register_for_auto_class("AutoModelForImageClassification")
DinoBackbone.register_for_auto_class("AutoBackbone")
# `from_pretrained` of the DINO classes also takes the released models' names and other layouts (the Hub's ViTModels,
# training folders as backbones); the modeling file, also a saved folder's remote code, cannot import dino_hf itself.
DinoPreTrainedModel.register_foreign_loader(load_foreign_pretrained)
# `AutoBackbone.from_pretrained` takes the released models' names too, and local folders, which transformers 5's own
# sends to the Hub and timm (see `dino_hf.hub.auto_backbone_from_pretrained`).
install_auto_backbone_loader()
# `AutoModel.from_pretrained` takes a training run's output_dir or checkpoint-N folder too (no config.json there):
# its teacher backbone, as the README promises (see `dino_hf.hub.auto_model_from_pretrained`).
install_auto_model_loader()

__all__ = [
    "DinoBackbone",
    "DinoCenter",
    "DinoConfig",
    "DinoForImageClassification",
    "DinoForSelfDistillation",
    "DinoHead",
    "DinoLoss",
    "DinoLossOutput",
    "DinoModelOutput",
    "DinoPreTrainedModel",
    "DinoSelfDistillationOutput",
    "DinoViTModel",
    "MissingWeightsError",
    "RELEASED_MODELS",
    "dino_image_processor",
    "resolve_model_id",
]
