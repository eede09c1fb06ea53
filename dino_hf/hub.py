"""The released DINO models by name, and loading checkpoints of other layouts straight into the DINO classes.

- [`RELEASED_MODELS`]: every model of the reference implementation's model zoo (facebookresearch/dino) with its Hub
  id (the four ViTs are on the Hub as transformers `ViTModel`s), official download URLs, size and the paper's
  ImageNet k-NN / linear top-1. docs/model_zoo.md shows the same table.
- [`resolve_model_id`]: paper and torch.hub names (`"dino-vits16"`, `"dino_vits16"`, `"dino_deitsmall16"`, ...) ->
  Hub ids (`"facebook/dino-vits16"`). [`DinoViTModel.from_pretrained`] and [`DinoForSelfDistillation.from_pretrained`]
  call it, so every `--model_name_or_path` accepts those names.
- [`load_foreign_pretrained`]: what `from_pretrained` does when the folder or Hub repo is not the class's own layout:
  a transformers `ViTModel` (the Hub's `facebook/dino-*`) is converted while loading, a training folder
  (`DinoForSelfDistillation`) gives its teacher backbone, a backbone gives a self-distillation model only with a new
  head, which must be asked for (`allow_missing_weights=True`).

Example:

```python
>>> from dino_hf.hub import resolve_model_id
>>> resolve_model_id("dino_vits16")
'facebook/dino-vits16'
>>> from dino_hf import DinoViTModel
>>> model = DinoViTModel.from_pretrained("dino-vits16")  # doctest: +SKIP
```
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedConfig, ResNetModel

from .configuration_dino import DinoConfig
from .modeling_dino import DinoForSelfDistillation, DinoViTModel, MissingWeightsError


logger = logging.getLogger(__name__)

OFFICIAL_URL_ROOT = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class ReleasedModel:
    """One model of the DINO model zoo (facebookresearch/dino README, "Pretrained models").

    Attributes:
        name: our name, `dino-<arch>`; torch.hub's is the same with underscores.
        arch: the paper's architecture name.
        hub_id: the Hugging Face Hub repository (transformers `ViTModel` layout), or `None`.
        file_stem: the reference's file name stem, e.g. `dino_deitsmall16` (`<stem>_pretrain.pth`).
        params: backbone parameters as the reference README states them.
        knn_top1, linear_top1: the paper's ImageNet top-1 (%) of k-NN (k=20) and linear evaluation.
    """

    name: str
    arch: str
    hub_id: str | None
    file_stem: str
    params: str
    knn_top1: float
    linear_top1: float

    @property
    def backbone_url(self) -> str:
        return f"{OFFICIAL_URL_ROOT}/{self.file_stem}_pretrain/{self.file_stem}_pretrain.pth"

    @property
    def full_checkpoint_url(self) -> str:
        """Student, teacher (backbone + head), the center and the run's `args`: to continue pretraining from."""
        return f"{OFFICIAL_URL_ROOT}/{self.file_stem}_pretrain/{self.file_stem}_pretrain_full_checkpoint.pth"


RELEASED_MODELS: dict[str, ReleasedModel] = {
    m.name: m
    for m in (
        ReleasedModel("dino-vits16", "ViT-S/16", "facebook/dino-vits16", "dino_deitsmall16", "21M", 74.5, 77.0),
        ReleasedModel("dino-vits8", "ViT-S/8", "facebook/dino-vits8", "dino_deitsmall8", "21M", 78.3, 79.7),
        ReleasedModel("dino-vitb16", "ViT-B/16", "facebook/dino-vitb16", "dino_vitbase16", "85M", 76.1, 78.2),
        ReleasedModel("dino-vitb8", "ViT-B/8", "facebook/dino-vitb8", "dino_vitbase8", "85M", 77.4, 80.1),
        ReleasedModel("dino-resnet50", "ResNet-50", None, "dino_resnet50", "23M", 67.5, 75.3),
        ReleasedModel("dino-xcit-small-12-p16", "XCiT-S12/16", None, "dino_xcit_small_12_p16", "26M", 76.0, 77.8),
        ReleasedModel("dino-xcit-small-12-p8", "XCiT-S12/8", None, "dino_xcit_small_12_p8", "26M", 77.1, 79.2),
        ReleasedModel("dino-xcit-medium-24-p16", "XCiT-M24/16", None, "dino_xcit_medium_24_p16", "84M", 76.4, 78.8),
        ReleasedModel("dino-xcit-medium-24-p8", "XCiT-M24/8", None, "dino_xcit_medium_24_p8", "84M", 77.9, 80.3),
    )
}

# Other spellings: the reference README's older torch.hub names and its file names (dashes stand for underscores).
_ALIASES: dict[str, str] = {
    "dino-deits16": "dino-vits16",
    "dino-deits8": "dino-vits8",
    **{m.file_stem.replace("_", "-"): m.name for m in RELEASED_MODELS.values()},
}


def released_model(name: str) -> ReleasedModel | None:
    """The [`ReleasedModel`] a paper, torch.hub or file name refers to (`"dino_vits16"`, `"dino-vitb8"`, ...)."""
    key = name.strip().lower().replace("_", "-")
    return RELEASED_MODELS.get(_ALIASES.get(key, key))


def resolve_model_id(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The Hub id of a released model's name; anything else (local paths first) is returned unchanged.

    Raises `ValueError` for released models that are not on the Hub (ResNet-50, XCiT), naming their official URL.

    Example:

    ```python
    >>> from dino_hf.hub import resolve_model_id
    >>> resolve_model_id("dino-vitb8"), resolve_model_id("dino_deitsmall16"), resolve_model_id("my/model")
    ('facebook/dino-vitb8', 'facebook/dino-vits16', 'my/model')
    ```
    """
    if not isinstance(name_or_path, str) or os.path.exists(name_or_path):
        return name_or_path
    model = released_model(name_or_path)
    if model is None:
        return name_or_path
    if model.hub_id is None and model.name in OFFICIAL_ONLY_LOADABLE:
        return name_or_path  # loaded from its official URL by load_foreign_pretrained
    if model.hub_id is None:
        raise ValueError(
            f"{name_or_path!r} ({model.arch}) has no Hub repository and dino_hf implements only the DINO ViTs and ResNet-50, so it "
            f"cannot be loaded here: its weights are at {model.backbone_url} (full checkpoint: "
            f"{model.full_checkpoint_url}); use torch.hub.load('facebookresearch/dino:main', "
            f"'{model.name.replace('-', '_')}'). ViT checkpoints of the reference convert with "
            "dino_hf.conversion.from_official_checkpoint."
        )
    return model.hub_id


# Released models that are not on the Hub but load from their official files (torchvision-layout ResNet-50).
OFFICIAL_ONLY_LOADABLE = ("dino-resnet50",)


def official_only_release(name: Any) -> ReleasedModel | None:
    """The released model `name` refers to when it loads from official files only (ResNet-50), else `None`."""
    model = released_model(name) if isinstance(name, str) and not os.path.exists(name) else None
    return model if model is not None and model.name in OFFICIAL_ONLY_LOADABLE else None


def load_official_release(cls: type, name: Any) -> Any | None:
    """A released model that only exists as official files (ResNet-50), downloaded once and converted: as
    [`DinoForSelfDistillation`] its full checkpoint (student, teacher, heads and center), otherwise its backbone,
    transformers' `ResNetModel`. `None` for any other name."""
    model = official_only_release(name)
    if model is None:
        return None
    from .conversion import from_official_checkpoint

    url = model.full_checkpoint_url if cls is DinoForSelfDistillation else model.backbone_url
    return from_official_checkpoint(url)


# ---------------------------------------------------------------------------------------------------------------------
# from_pretrained of other layouts
# ---------------------------------------------------------------------------------------------------------------------

# from_pretrained arguments that locate files; they apply to the config and to the weights alike.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# Further arguments a transformers ViTModel load takes as they are.
_VIT_LOAD_KWARGS = (*_HUB_KWARGS, "dtype", "torch_dtype", "weights_only", "use_safetensors")


def _source_config(name_or_path: Any, kwargs: dict[str, Any]) -> tuple[str | None, list[str]]:
    """`model_type` and `architectures` of what `from_pretrained` is about to load (`None` if unreadable)."""
    config = kwargs.get("config")
    if isinstance(config, PreTrainedConfig):
        return config.model_type, list(config.architectures or [])
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        values, _ = PreTrainedConfig.get_config_dict(config or name_or_path, **hub_kwargs)
    except OSError:
        return None, []  # from_pretrained itself reports what is missing
    return values.get("model_type"), list(values.get("architectures") or [])


def load_foreign_pretrained(
    cls: type, name_or_path: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> Any | None:
    """`cls.from_pretrained(name_or_path, ...)` for sources not in `cls`'s own layout; `None` for native ones.

    - `model_type: vit` (the Hub's `facebook/dino-*`): [`DinoViTModel`] converted while loading
      ([`~dino_hf.conversion.from_vit_model`], LayerNorm epsilon restored to DINO's 1e-6); for
      [`DinoForSelfDistillation`] that backbone with a new head (see [`self_distillation_from_backbone`]).
    - a `DinoForSelfDistillation` folder loaded as [`DinoViTModel`] (e.g. by `AutoModel`): the teacher backbone.
    - a `DinoViTModel` folder loaded as [`DinoForSelfDistillation`]: the backbone with a new head.

    A new head leaves weights at their random initialisation, so it raises [`MissingWeightsError`] naming them unless
    `allow_missing_weights=True`, which downgrades it to a warning.
    """
    resolved = resolve_model_id(name_or_path)
    if resolved != name_or_path:  # a released model's name: load its Hub repository as if it had been named
        return cls.from_pretrained(resolved, *model_args, allow_missing_weights=allow_missing_weights, **kwargs)
    if cls not in (DinoViTModel, DinoForSelfDistillation):
        return None
    released = load_official_release(cls, name_or_path)
    if released is not None:
        return _with_loading_info(released, kwargs)
    model_type, architectures = _source_config(name_or_path, kwargs)
    is_training_folder = model_type == DinoConfig.model_type and "DinoForSelfDistillation" in architectures
    if cls is DinoViTModel and model_type == "resnet":  # an exported ResNet backbone: transformers' own class
        hub_kwargs = {k: v for k, v in kwargs.items() if k in _VIT_LOAD_KWARGS}
        return _with_loading_info(ResNetModel.from_pretrained(name_or_path, **hub_kwargs), kwargs)
    if cls is DinoViTModel and model_type == "vit":
        return _with_loading_info(_backbone_from_vit(name_or_path, dict(kwargs)), kwargs)
    if cls is DinoViTModel and is_training_folder:
        kwargs = {k: v for k, v in kwargs.items() if k != "output_loading_info"}
        run = DinoForSelfDistillation.from_pretrained(
            name_or_path, *model_args, allow_missing_weights=allow_missing_weights, **kwargs
        )
        logger.info("%s is a DinoForSelfDistillation (a training run): loaded its teacher backbone.", name_or_path)
        backbone = run.export_teacher_backbone().to(run.dtype)
        return _with_loading_info(backbone, kwargs)
    is_backbone = model_type == "vit" or (model_type == DinoConfig.model_type and "DinoViTModel" in architectures)
    if cls is DinoForSelfDistillation and is_backbone:
        head_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _NEW_HEAD_KWARGS}
        kwargs.pop("output_loading_info", None)
        backbone = DinoViTModel.from_pretrained(name_or_path, *model_args, **kwargs)
        config = self_distillation_config(backbone.config, head_fields)
        _require_new_head_opt_in(config, name_or_path, allow_missing_weights)
        return self_distillation_from_backbone(backbone, config)
    return None


def _with_loading_info(model: Any, kwargs: dict[str, Any]) -> Any:
    if not kwargs.get("output_loading_info"):
        return model
    empty = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model, empty


def _backbone_from_vit(name_or_path: Any, kwargs: dict[str, Any]) -> DinoViTModel:
    from .conversion import DINO_LAYER_NORM_EPS, from_vit_model

    kwargs.pop("output_loading_info", None)
    kwargs.pop("config", None)  # the ViTConfig: from_vit_model reads it from the source
    attn_implementation = kwargs.pop("attn_implementation", None)
    vit_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _VIT_LOAD_KWARGS}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in DinoConfig.__dataclass_fields__}
    if kwargs:
        raise TypeError(f"Loading a transformers ViTModel as DinoViTModel does not take {sorted(kwargs)}.")
    overrides.setdefault("layer_norm_eps", DINO_LAYER_NORM_EPS)
    model = from_vit_model(name_or_path, config_overrides=overrides, **vit_kwargs)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    logger.info(
        "Converted the transformers ViTModel %s to DinoViTModel while loading (query/key/value fused, pooler "
        "dropped, LayerNorm epsilon %g as DINO was trained).",
        name_or_path,
        model.config.layer_norm_eps,
    )
    return model


# DinoConfig fields of the projection head's architecture, which a backbone does not fix.
HEAD_FIELDS = (
    "out_dim",
    "head_hidden_dim",
    "head_bottleneck_dim",
    "head_num_layers",
    "use_bn_in_head",
    "norm_last_layer",
)
# Fields `from_pretrained` of a backbone as DinoForSelfDistillation takes as keyword arguments.
_NEW_HEAD_KWARGS = (*HEAD_FIELDS, "student_temp", "teacher_temp", "center_momentum", "drop_path_rate")


def self_distillation_config(backbone_config: DinoConfig, fields: dict[str, Any]) -> DinoConfig:
    """A [`DinoForSelfDistillation`] configuration: the backbone's, with head (and other) fields replaced."""
    config = copy.deepcopy(backbone_config)
    for name, value in fields.items():
        if name not in DinoConfig.__dataclass_fields__:
            raise ValueError(f"DinoConfig has no field {name!r}.")
        setattr(config, name, value)
    config.check_values()
    config.architectures = ["DinoForSelfDistillation"]
    return config


def _require_new_head_opt_in(config: DinoConfig, source: Any, allow_missing_weights: bool) -> None:
    with torch.device("meta"):  # only the names are needed
        names = list(DinoForSelfDistillation(config).state_dict())
    new = [n for n in names if not n.startswith(("student.backbone.", "teacher.backbone."))]
    message = (
        f"{source} is a backbone without DINO head or center: loading it as DinoForSelfDistillation leaves "
        f"{len(new)} tensors at their random initialisation: {', '.join(new)}."
    )
    if not allow_missing_weights:
        raise MissingWeightsError(
            f"{message} Pass allow_missing_weights=True to start a new head on purpose (pretraining with "
            "--model_name_or_path does), or load an official full checkpoint (head and center) with "
            "dino_hf.conversion.from_official_checkpoint."
        )
    logger.warning("%s Starting a new head (allow_missing_weights=True).", message)


@torch.no_grad()
def self_distillation_from_backbone(backbone: DinoViTModel, config: DinoConfig) -> DinoForSelfDistillation:
    """A [`DinoForSelfDistillation`] whose student and teacher backbones are `backbone` and whose heads are new.

    `config` must have the backbone's architecture (its head, drop-path and loss fields may differ, see
    [`self_distillation_config`]); the backbone weights are copied strictly, the heads keep their initialisation
    (the same for student and teacher, as in the paper) and the center starts at zero.
    """
    model = DinoForSelfDistillation(config)
    model.student.backbone.load_state_dict(backbone.state_dict())
    model.copy_student_to_teacher()
    return model.to(backbone.dtype)


__all__ = [
    "HEAD_FIELDS",
    "RELEASED_MODELS",
    "ReleasedModel",
    "load_foreign_pretrained",
    "official_only_release",
    "released_model",
    "resolve_model_id",
    "self_distillation_config",
    "self_distillation_from_backbone",
]
