"""What every evaluation asks of a backbone, whatever its architecture: the one place that knows "the DINO feature".

The trainer trains two kinds of backbone: a [`DinoViTModel`] and transformers' `ResNetModel` (`--arch resnet50`, or
any depths and widths). The evaluations read them through these functions only:

- [`dino_feature`]: the global feature DINO trains and evaluates, `(B, D)`: the ViT's final-LayerNorm [CLS] token,
  the ResNet's globally average-pooled last stage (`pooler_output` flattened);
- [`global_and_local_features`]: that feature and the spatial features beside it, `(B, h, w, D)`, in one forward:
  the ViT's final-LayerNorm patch tokens, the ResNet's last-stage feature map (copy detection's GeM, video label
  propagation);
- [`feature_size`]: the width `D` of that feature;
- [`feature_stride`]: input pixels per spatial feature (the ViT's patch size, the ResNet's total stride);
- [`default_image_size`]: the crop side when none is given (the ViT's `image_size`; a ResNet, having none, the crop
  size its saved image processor states, else 224);
- [`require_attention`]: a clear refusal for what only a ViT has (self-attention maps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import ResNetModel

from ..modeling_dino import backbone_features


RESNET_DEFAULT_IMAGE_SIZE = 224


def is_resnet(model: Any) -> bool:
    """Whether `model` is a ResNet backbone (transformers' `ResNetModel`)."""
    return isinstance(model, ResNetModel)


def dino_feature(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`(B, D)`: the DINO feature of a ViT ([CLS] after the final LayerNorm) or a ResNet (pooled last stage)."""
    return backbone_features(model, pixel_values)


def global_and_local_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, D)` DINO features and `(B, h, w, D)` spatial features of one forward pass.

    ViT: the [CLS] token and the patch tokens of the last block after the final LayerNorm, on the
    `H // patch_size x W // patch_size` grid (register tokens, if any, dropped). ResNet: the pooled last stage and the
    last stage's feature map (channels last).
    """
    output = model(pixel_values, return_dict=True)
    if is_resnet(model):
        maps = output.last_hidden_state
        return output.pooler_output.flatten(1), maps.permute(0, 2, 3, 1)
    tokens = output.last_hidden_state
    stride = feature_stride(model)
    height, width = pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride
    patches = tokens[:, tokens.shape[1] - height * width :]
    return output.pooler_output, patches.reshape(tokens.shape[0], height, width, tokens.shape[-1])


def feature_size(model: torch.nn.Module) -> int:
    """Width `D` of [`dino_feature`]: the ViT's `hidden_size`, the ResNet's last stage width."""
    return model.config.hidden_sizes[-1] if is_resnet(model) else model.config.hidden_size


def feature_stride(model: torch.nn.Module) -> int:
    """Input pixels per spatial feature: the ViT's patch size, or the ResNet's total stride (4 in the stem, then 2
    per stage after the first, 32 for a four-stage ResNet)."""
    config = model.config
    if is_resnet(model):
        halvings = len(config.depths) - 1 + int(bool(getattr(config, "downsample_in_first_stage", False)))
        return 4 * 2**halvings
    return config.patch_size


def default_image_size(model: torch.nn.Module, name_or_path: Any = None) -> int:
    """The crop side an evaluation uses unless told: the ViT's `image_size`; for a ResNet (its config has none) the
    crop size of the image processor saved with it (`name_or_path/preprocessor_config.json`), else 224."""
    size = getattr(model.config, "image_size", None)
    if size is not None:
        return int(size)
    if name_or_path is not None:
        config_file = Path(str(name_or_path)) / "preprocessor_config.json"
        if config_file.is_file():
            values = json.loads(config_file.read_text())
            crop = values.get("crop_size") or values.get("size") or {}
            if isinstance(crop, dict):
                crop = crop.get("height") or crop.get("shortest_edge")
            if crop:
                return int(crop)
    return RESNET_DEFAULT_IMAGE_SIZE


def require_attention(model: torch.nn.Module, what: str) -> None:
    """Raise a `ValueError` saying why `what` (e.g. "attention maps") does not apply when `model` is a ResNet."""
    if is_resnet(model):
        raise ValueError(
            f"{what} need a Vision Transformer's self-attention; this backbone is a ResNet (transformers' "
            "ResNetModel), which has none. Use a ViT backbone (e.g. dino-vits16 or a --arch vit_* run's export); "
            "a ResNet's spatial features are its last feature map (dino_hf.evaluation.global_and_local_features)."
        )


__all__ = [
    "RESNET_DEFAULT_IMAGE_SIZE",
    "default_image_size",
    "dino_feature",
    "feature_size",
    "feature_stride",
    "global_and_local_features",
    "is_resnet",
    "require_attention",
]
