"""Loading DINO weights from other formats.

The reference implementation (facebookresearch/dino) names backbone parameters `cls_token`, `pos_embed`,
`patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*` and `norm.*`; its full training
checkpoints hold `student` (with the DDP `module.` prefix) and `teacher` state dicts with `backbone.*` and `head.*`,
and `dino_loss` with the center.
"""

from __future__ import annotations

import re

import torch


_REFERENCE_BACKBONE_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embeddings.projection.\1"),
    (r"^blocks\.(\d+)\.norm1\.(weight|bias)$", r"encoder.layer.\1.norm1.\2"),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"encoder.layer.\1.attention.qkv.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"encoder.layer.\1.attention.proj.\2"),
    (r"^blocks\.(\d+)\.norm2\.(weight|bias)$", r"encoder.layer.\1.norm2.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$", r"encoder.layer.\1.mlp.fc\2.\3"),
    (r"^norm\.(weight|bias)$", r"layernorm.\1"),
]

_REFERENCE_HEAD_RULES: list[tuple[str, str]] = [
    (r"^mlp\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r"mlp.\1.\2"),
    (r"^last_layer\.weight_g$", "last_layer.weight_g"),
    (r"^last_layer\.weight_v$", "last_layer.weight_v"),
    # torch.nn.utils.parametrizations.weight_norm names
    (r"^last_layer\.parametrizations\.weight\.original0$", "last_layer.weight_g"),
    (r"^last_layer\.parametrizations\.weight\.original1$", "last_layer.weight_v"),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DDP `module.` and `backbone.` wrappers the reference adds around a backbone."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def convert_reference_backbone_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference backbone state dict (`*_pretrain.pth` layout) to [`DinoViTModel`] names.

    Raises `ValueError` listing any key that has no place in the model, so nothing is dropped silently. Head
    parameters (`head.*`) left in some released files are ignored.
    """
    converted, unknown = {}, []
    for key, value in _strip_prefixes(state_dict).items():
        if key.startswith("head."):
            continue
        new_key = _rename(key, _REFERENCE_BACKBONE_RULES)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"Keys not in the reference ViT layout: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    return converted


def convert_reference_network_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference `student` or `teacher` state dict (backbone + head) to `DinoBackboneWithHead` names."""
    backbone, converted, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("backbone."):
            backbone[key[len("backbone.") :]] = value
        elif key.startswith("head."):
            new_key = _rename(key[len("head.") :], _REFERENCE_HEAD_RULES)
            if new_key is None:
                unknown.append(key)
            else:
                converted[f"head.{new_key}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Keys not in the reference DINO layout: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    for key, value in convert_reference_backbone_state_dict(backbone).items():
        converted[f"backbone.{key}"] = value
    return converted
