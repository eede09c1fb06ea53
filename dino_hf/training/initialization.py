"""Where pretraining starts: random weights, released weights (a new head), or a whole run (head and center too).

`--model_name_or_path` takes

- a backbone: a Hub id or paper name of the released models (`facebook/dino-vits16`, `dino-vits16`, `dino_vitb8`,
  ...), or a `DinoViTModel` folder. Student and teacher start from its weights, the head is new (the paper's
  initialisation, the same for both) and the center starts at zero;
- a whole run: a `DinoForSelfDistillation` folder (a training run's export or `dino-hf-convert official`)
  or an official full checkpoint (`*_full_checkpoint.pth`: a local file, or its URL, downloaded with torch.hub's
  downloader and read with `torch.load(weights_only=True)`, only argparse's `Namespace` allowed). Student, teacher,
  both heads and the center continue; the model settings of the run (its `args` or config) are the model's.

Flags that shape the model and contradict the loaded one (`--arch`, `--patch_size`, `--config_overrides` on backbone
fields; for a whole run also `--out_dim`, `--norm_last_layer`, `--use_bn_in_head`, `--drop_path_rate` and head
overrides) raise a `ValueError`. A flag left at its default follows the loaded model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from transformers import ResNetModel

from ..configuration_dino import HEAD_FIELDS, DinoConfig
from ..hub import load_backbone
from ..modeling_dino import DinoForSelfDistillation
from ..releases import release_from_official_files, resolve_model_id
from .arguments import DinoModelArguments


logger = logging.getLogger(__name__)

_RESNET_FIELDS = ("backbone", "resnet_embedding_size", "resnet_hidden_sizes", "resnet_depths", "resnet_layer_type")
# DinoConfig fields fixed by a pretrained backbone (a pretrained head also fixes HEAD_FIELDS). `image_size` is not among them: the
# position embeddings are interpolated to any crop size.
BACKBONE_FIELDS = (
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
    *_RESNET_FIELDS,
)
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", *_RESNET_FIELDS)
# The model flags of DinoModelArguments named as the DinoConfig fields they set (`--arch` sets _ARCH_FIELDS).
_FIELD_FLAGS = ("patch_size", "out_dim", "norm_last_layer", "use_bn_in_head", "drop_path_rate")


@dataclass
class InitialModel:
    """The model a run starts from.

    Attributes:
        model: student and teacher (and heads, center) to train.
        model_args: the arguments with `arch`, `patch_size`, `out_dim`, ... as the model has them (a loaded model's
            settings replace flags left at their defaults).
        base_model: what `--model_name_or_path` named (the Hub id for a released model's name), for the run's
            metadata and model card (`base_model`); `None` for a random start.
        kind: `"random"`, `"backbone"` (released weights, new head) or `"run"` (head and center continued).
    """

    model: DinoForSelfDistillation
    model_args: DinoModelArguments
    base_model: str | None
    kind: str


def initial_model(model_args: DinoModelArguments, config: DinoConfig) -> InitialModel:
    """The model to pretrain: `DinoForSelfDistillation(config)`, or one started from `--model_name_or_path`.

    Args:
        model_args: the model flags (`model_name_or_path`, `attn_implementation`, and the flags `config` came from).
        config: the configuration the flags ask for (`build_model_config`).
    """
    source = model_args.model_name_or_path
    if not source:
        config._attn_implementation = model_args.attn_implementation
        return InitialModel(DinoForSelfDistillation(config), model_args, None, "random")
    source = str(resolve_model_id(source))
    released = release_from_official_files(source)
    source = released.backbone_url if released else source  # dino_resnet50: the released backbone file
    requested = requested_fields(model_args)
    if _is_checkpoint_file(source):
        from ..conversion import from_official_checkpoint

        loaded = from_official_checkpoint(source)  # weights_only=True, argparse.Namespace allowed
        kind = "run" if isinstance(loaded, DinoForSelfDistillation) else "backbone"
        backbone = loaded if kind == "backbone" else None
        model = loaded if kind == "run" else None
    elif _is_training_run(source):
        model, backbone, kind = DinoForSelfDistillation.from_pretrained(source), None, "run"
    else:
        backbone, model, kind = load_backbone(source), None, "backbone"
    if kind == "run":
        check_flags_agree(config, model.config, requested, (*BACKBONE_FIELDS, *HEAD_FIELDS, "drop_path_rate"), source)
        logger.info("Continuing the run %s: student, teacher, heads and center.", source)
    else:
        backbone_config = backbone.config
        if isinstance(backbone, ResNetModel):
            backbone_config = DinoConfig.from_resnet_config(backbone.config, image_size=config.image_size)
        check_flags_agree(config, backbone_config, requested, BACKBONE_FIELDS, source)
        model = DinoForSelfDistillation.from_backbone(backbone, _backbone_run_config(config, backbone_config))
        logger.info("Student and teacher start from the backbone %s, with a new head.", source)
    if model.config.backbone == "vit":  # a ResNet has no attention
        model.set_attn_implementation(model_args.attn_implementation)
    return InitialModel(model, effective_model_args(model_args, model.config), source, kind)


def _arch_matches(preset: DinoConfig, config: DinoConfig) -> bool:
    return all(getattr(preset, name) == getattr(config, name) for name in _ARCH_FIELDS)


def _is_checkpoint_file(source: str) -> bool:
    return source.startswith(("https://", "http://")) or (
        os.path.isfile(source) and source.endswith((".pth", ".pt", ".safetensors", ".bin"))
    )


def _is_training_run(source: str) -> bool:
    config = DinoConfig.get_config_dict(source)[0]
    return config.get("model_type") == DinoConfig.model_type and "DinoForSelfDistillation" in (
        config.get("architectures") or []
    )


def requested_fields(model_args: DinoModelArguments) -> dict[str, str]:
    """DinoConfig fields that flags set away from their defaults, each with the flag that set it."""
    defaults = DinoModelArguments()
    fields: dict[str, str] = {}
    if model_args.arch != defaults.arch:
        fields.update(dict.fromkeys(_ARCH_FIELDS, "--arch"))
    fields.update({name: f"--{name}" for name in _FIELD_FLAGS if getattr(model_args, name) != getattr(defaults, name)})
    for item in filter(None, (model_args.config_overrides or "").split(",")):
        fields[item.partition("=")[0].strip()] = "--config_overrides"
    return fields


def check_flags_agree(
    config: DinoConfig, loaded: DinoConfig, requested: dict[str, str], names: tuple[str, ...], source: str
) -> None:
    """Raise a `ValueError` listing every field in `names` that a flag set to another value than the loaded model's."""
    conflicts = [
        f"{flag} gives {name}={getattr(config, name)!r}, the model has {getattr(loaded, name)!r}"
        for name, flag in requested.items()
        if name in names and getattr(config, name) != getattr(loaded, name)
    ]
    if conflicts:
        raise ValueError(
            f"--model_name_or_path {source} fixes the model, but " + "; ".join(conflicts) + ". Drop those flags "
            "(the loaded model's values apply) or start from random weights."
        )


def _backbone_run_config(config: DinoConfig, backbone_config: DinoConfig) -> DinoConfig:
    """The flags' configuration with the backbone's architecture (and the size of its position embeddings)."""
    run_config = copy.deepcopy(config)
    for name in (*BACKBONE_FIELDS, "image_size"):
        setattr(run_config, name, getattr(backbone_config, name))
    run_config.architectures = ["DinoForSelfDistillation"]
    return run_config


def effective_model_args(model_args: DinoModelArguments, config: DinoConfig) -> DinoModelArguments:
    """`model_args` with the settings the model really has (for logs, the run summary and the model card)."""
    values: dict[str, Any] = {name: getattr(config, name) for name in _FIELD_FLAGS}
    names = ("vit_tiny", "vit_small", "vit_base", "resnet50")
    presets = [n for n in names if _arch_matches(DinoConfig.from_preset(n), config)]
    values["arch"] = presets[0] if presets else "custom"  # "custom": no preset has this width and depth
    return dataclasses.replace(model_args, **values)


__all__ = ["InitialModel", "check_flags_agree", "effective_model_args", "initial_model", "requested_fields"]
