"""Loading DINO checkpoints of other layouts, by path, Hub id or released model name, into the DINO classes.

- [`load_foreign_pretrained`]: what `from_pretrained` of the DINO classes asks first (`dino_hf/__init__.py` registers
  it with `DinoPreTrainedModel.register_foreign_loader`). A released model's name loads its Hub repository
  ([`~dino_hf.releases.resolve_model_id`]), or for [`DinoForSelfDistillation`] its official full checkpoint
  (ResNet-50); a transformers `ViTModel` (the Hub's `facebook/dino-*`) is converted while loading; a training folder
  (`DinoForSelfDistillation`) loaded as [`DinoViTModel`] gives its teacher backbone; a backbone loaded as
  [`DinoForSelfDistillation`] gets a new head, which must be asked for (`allow_missing_weights=True`). A ResNet is
  not a `DinoViTModel`: it is refused, with the way to load it.
- [`load_backbone`]: any DINO backbone in eval mode, whatever its architecture: a [`DinoViTModel`] (from every layout
  above) or transformers' `ResNetModel` (an exported ResNet, a ResNet run's teacher, the released ResNet-50).

Example:

```python
>>> from dino_hf import DinoViTModel
>>> from dino_hf.hub import load_backbone
>>> model = DinoViTModel.from_pretrained("dino-vits16")  # doctest: +SKIP
>>> resnet = load_backbone("dino-resnet50")  # doctest: +SKIP
```
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedConfig, ResNetModel

from .configuration_dino import HEAD_FIELDS, DinoConfig
from .conversion import DINO_LAYER_NORM_EPS, from_official_checkpoint, from_vit_model
from .modeling_dino import DinoForSelfDistillation, DinoViTModel, MissingWeightsError
from .releases import release_from_official_files, resolve_model_id


logger = logging.getLogger(__name__)

# from_pretrained arguments that locate files; they apply to the config and to the weights alike.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# Further arguments a transformers ViTModel (or ResNetModel) load takes as they are.
_VIT_LOAD_KWARGS = (*_HUB_KWARGS, "dtype", "torch_dtype", "weights_only", "use_safetensors")
# Fields `from_pretrained` of a backbone as DinoForSelfDistillation takes as keyword arguments.
_NEW_HEAD_KWARGS = (*HEAD_FIELDS, "student_temp", "teacher_temp", "center_momentum", "drop_path_rate")


def load_foreign_pretrained(
    cls: type, name_or_path: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> Any | None:
    """`cls.from_pretrained(name_or_path, *model_args, **kwargs)` for sources not in `cls`'s own layout; `None` for
    native ones, which transformers' loading then reads.

    - a released model's name: its Hub repository (any class), or as [`DinoForSelfDistillation`] the official full
      checkpoint of a release without one (ResNet-50);
    - `model_type: vit` (the Hub's `facebook/dino-*`): [`DinoViTModel`] converted while loading
      ([`~dino_hf.conversion.from_vit_model`], LayerNorm epsilon restored to DINO's 1e-6); for
      [`DinoForSelfDistillation`] that backbone with a new head;
    - a `DinoForSelfDistillation` folder loaded as [`DinoViTModel`] (e.g. by `AutoModel`): the teacher backbone;
    - a `DinoViTModel` folder loaded as [`DinoForSelfDistillation`]: the backbone with a new head.

    A new head leaves weights at their random initialisation, so it raises [`MissingWeightsError`] naming them unless
    `allow_missing_weights=True`, which downgrades it to a warning. Loading a ResNet (an exported one, a ResNet run,
    the released ResNet-50) as [`DinoViTModel`] raises a `ValueError` that says how to load it.
    """
    resolved = resolve_model_id(name_or_path)
    if resolved != name_or_path:  # a released model's name: load its Hub repository as if it had been named
        return cls.from_pretrained(resolved, *model_args, allow_missing_weights=allow_missing_weights, **kwargs)
    if cls is DinoViTModel:
        return _load_as_vit_backbone(name_or_path, model_args, kwargs, allow_missing_weights)
    if cls is DinoForSelfDistillation:
        return _load_as_self_distillation(name_or_path, model_args, kwargs, allow_missing_weights)
    return None


def load_backbone(name_or_path: Any, **kwargs: Any) -> DinoViTModel | ResNetModel:
    """The DINO backbone a folder, Hub repository or released model's name holds, in eval mode.

    A [`DinoViTModel`] as `DinoViTModel.from_pretrained` loads it (a backbone folder, the Hub's `facebook/dino-*`
    `ViTModel`s, a training run's teacher), or transformers' `ResNetModel`: an exported ResNet backbone, the teacher of
    a ResNet training run, or the released ResNet-50 (`"dino-resnet50"`, downloaded once from its official files).
    `kwargs` go to `from_pretrained` (e.g. `attn_implementation="eager"`; a ResNet takes the file-locating ones).

    Example:

    ```python
    >>> from dino_hf.hub import load_backbone
    >>> model = load_backbone("outputs/dino-run")  # doctest: +SKIP
    ```
    """
    name_or_path = resolve_model_id(name_or_path)
    release = release_from_official_files(name_or_path)
    if release is not None:
        return from_official_checkpoint(release.backbone_url).eval()
    values = _source_config(name_or_path, kwargs)
    if values.get("model_type") == "resnet":
        return ResNetModel.from_pretrained(name_or_path, **_only(kwargs, _VIT_LOAD_KWARGS)).eval()
    if _is_training_run(values):
        allow_missing_weights = kwargs.pop("allow_missing_weights", False)
        return _teacher_backbone(name_or_path, (), kwargs, allow_missing_weights).eval()
    return DinoViTModel.from_pretrained(name_or_path, **kwargs).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Sources by class
# ---------------------------------------------------------------------------------------------------------------------


def _load_as_vit_backbone(
    source: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> DinoViTModel | None:
    release = release_from_official_files(source)
    if release is not None:  # every release on official files only is a ResNet (the ViTs are on the Hub)
        raise _not_a_vit_error(source, f"the released {release.arch}, a ResNet", loads_with_auto_model=False)
    values = _source_config(source, kwargs)
    if values.get("model_type") == "resnet":
        raise _not_a_vit_error(source, "a ResNet backbone", loads_with_auto_model=True)
    if values.get("model_type") == "vit":
        return _with_loading_info(_backbone_from_vit(source, dict(kwargs)), kwargs)
    if _is_training_run(values):
        if values.get("backbone") == "resnet":
            raise _not_a_vit_error(source, "a ResNet training run", loads_with_auto_model=False)
        return _with_loading_info(_teacher_backbone(source, model_args, kwargs, allow_missing_weights), kwargs)
    return None


def _load_as_self_distillation(
    source: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> DinoForSelfDistillation | None:
    release = release_from_official_files(source)
    if release is not None:
        return _with_loading_info(from_official_checkpoint(release.full_checkpoint_url), kwargs)
    values = _source_config(source, kwargs)
    is_dino_backbone = values.get("model_type") == DinoConfig.model_type and "DinoViTModel" in _architectures(values)
    if values.get("model_type") != "vit" and not is_dino_backbone:
        return None
    head_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _NEW_HEAD_KWARGS}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k != "output_loading_info"}
    backbone = DinoViTModel.from_pretrained(source, *model_args, **backbone_kwargs)
    model = DinoForSelfDistillation.from_backbone(backbone, **head_fields)
    new = _require_new_head_opt_in(model, source, allow_missing_weights)
    return _with_loading_info(model, kwargs, missing_keys=new)


def _not_a_vit_error(source: Any, what: str, loads_with_auto_model: bool) -> ValueError:
    ways = f"dino_hf.hub.load_backbone({str(source)!r}) (any DINO backbone)"
    if loads_with_auto_model:
        ways = f"AutoModel.from_pretrained({str(source)!r}) or {ways}"
    return ValueError(
        f"{source} is {what} (transformers' ResNetModel), not a DinoViTModel; DinoViTModel.from_pretrained gives a "
        f"DinoViTModel or nothing. Load it with {ways}."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _source_config(name_or_path: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config.json values of what `from_pretrained` is about to load (`{}` if there is none to read)."""
    config = kwargs.get("config")
    if isinstance(config, PreTrainedConfig):
        return config.to_dict()
    try:
        values, _ = PreTrainedConfig.get_config_dict(config or name_or_path, **_only(kwargs, _HUB_KWARGS))
    except OSError:
        return {}  # from_pretrained itself reports what is missing
    return values


def _architectures(values: dict[str, Any]) -> list[str]:
    return list(values.get("architectures") or [])


def _is_training_run(values: dict[str, Any]) -> bool:
    return values.get("model_type") == DinoConfig.model_type and "DinoForSelfDistillation" in _architectures(values)


def _only(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in names}


def _with_loading_info(model: Any, kwargs: dict[str, Any], missing_keys: list[str] | tuple = ()) -> Any:
    if not kwargs.get("output_loading_info"):
        return model
    info = {"missing_keys": set(missing_keys), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model, info


def _teacher_backbone(
    source: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> DinoViTModel | ResNetModel:
    kwargs = {k: v for k, v in kwargs.items() if k != "output_loading_info"}
    run = DinoForSelfDistillation.from_pretrained(
        source, *model_args, allow_missing_weights=allow_missing_weights, **kwargs
    )
    logger.info("%s is a DinoForSelfDistillation (a training run): loaded its teacher backbone.", source)
    return run.export_teacher_backbone().to(run.dtype)


def _backbone_from_vit(name_or_path: Any, kwargs: dict[str, Any]) -> DinoViTModel:
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


def _require_new_head_opt_in(model: DinoForSelfDistillation, source: Any, allow_missing_weights: bool) -> list[str]:
    """The names of `model`'s tensors that no checkpoint gave (heads, center); raise unless that was asked for."""
    new = [n for n in model.state_dict() if not n.startswith(("student.backbone.", "teacher.backbone."))]
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
    return new


__all__ = ["load_backbone", "load_foreign_pretrained"]
