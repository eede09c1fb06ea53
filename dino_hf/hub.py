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
- [`auto_backbone_from_pretrained`]: `AutoBackbone.from_pretrained` once dino_hf is imported
  ([`install_auto_backbone_loader`]): the released models by name, and local folders by their config.json.
  [`DinoBackbone`] takes every layout above, like [`DinoViTModel`].

Example:

```python
>>> from dino_hf import DinoViTModel
>>> from dino_hf.hub import load_backbone
>>> model = DinoViTModel.from_pretrained("dino-vits16")  # doctest: +SKIP
>>> resnet = load_backbone("dino-resnet50")  # doctest: +SKIP
>>> from transformers import AutoBackbone
>>> dense = AutoBackbone.from_pretrained("dino-vits16", out_indices=[3, 6, 9, 12])  # doctest: +SKIP
```
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from transformers import AutoBackbone, AutoModel, PreTrainedConfig, ResNetBackbone, ResNetModel
from transformers.models.auto.auto_factory import _BaseAutoBackboneClass, _BaseAutoModelClass

from .configuration_dino import HEAD_FIELDS, DinoConfig
from .conversion import DINO_LAYER_NORM_EPS, from_official_checkpoint, from_vit_model
from .modeling_dino import DinoBackbone, DinoForSelfDistillation, DinoViTModel, MissingWeightsError
from .releases import RELEASED_MODELS, release_from_official_files, released_model, resolve_model_id
from .run_folders import CHECKPOINT_PREFIX, TRAINER_STATE_NAME, list_checkpoints, load_model_state, load_trainer_state


logger = logging.getLogger(__name__)

# from_pretrained arguments that locate files; they apply to the config and to the weights alike.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# Further arguments a transformers ViTModel (or ResNetModel) load takes as they are.
_VIT_LOAD_KWARGS = (*_HUB_KWARGS, "dtype", "torch_dtype", "weights_only", "use_safetensors")
# Fields `from_pretrained` of a backbone as DinoForSelfDistillation takes as keyword arguments.
_NEW_HEAD_KWARGS = (
    *HEAD_FIELDS,
    "student_temp",
    "teacher_temp",
    "center_momentum",
    "centering",
    "sinkhorn_iterations",
    "koleo_loss_weight",
    "drop_path_rate",
)
# Backbone fields that choose the feature maps, not the weights (BackboneConfigMixin's, and DINO's flags).
_FEATURE_MAP_KWARGS = ("out_features", "out_indices", "apply_layernorm", "reshape_hidden_states")


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
    - a `DinoViTModel` folder loaded as [`DinoForSelfDistillation`]: the backbone with a new head;
    - as [`DinoBackbone`]: whatever [`DinoViTModel`] loads from another layout (a released name, the Hub's
      `ViTModel`, a training run's teacher), every weight used; `DinoViTModel` folders load natively.

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
    if cls is DinoBackbone:
        return _load_as_dense_backbone(name_or_path, model_args, kwargs, allow_missing_weights)
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
    if training_folder(name_or_path) is not None:
        return load_training_folder(name_or_path, **kwargs)
    values = _source_config(name_or_path, kwargs)
    if values.get("model_type") == "resnet":
        return ResNetModel.from_pretrained(name_or_path, **_only(kwargs, _VIT_LOAD_KWARGS)).eval()
    if _is_training_run(values):
        allow_missing_weights = kwargs.pop("allow_missing_weights", False)
        return _teacher_backbone(name_or_path, (), kwargs, allow_missing_weights).eval()
    return DinoViTModel.from_pretrained(name_or_path, **kwargs).eval()


def training_folder(name_or_path: Any) -> tuple[str, Path] | None:
    """What a local folder without `config.json` is in a dino_hf training run, if anything:
    `("checkpoint", folder)` for a `checkpoint-N` (its `trainer_state.json` holds the model config, `model.safetensors`
    student, teacher, head and center), `("run", folder)` for a run's `output_dir` (`export/` and `checkpoint-N`
    folders); `None` for anything else."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.path.isdir(name_or_path):
        return None
    folder = Path(name_or_path)
    if (folder / "config.json").is_file():
        return None
    if (folder / TRAINER_STATE_NAME).is_file():
        return "checkpoint", folder
    if (folder / "export" / "config.json").is_file() or any(folder.glob(f"{CHECKPOINT_PREFIX}*")):
        return "run", folder
    return None


def load_training_folder(name_or_path: Any, **kwargs: Any) -> DinoViTModel | ResNetModel:
    """The teacher backbone of a training run's `output_dir` (its `export/`, else its newest checkpoint) or of one of
    its `checkpoint-N` folders, in eval mode, as [`load_backbone`] returns it. `kwargs` go to `from_pretrained` of an
    export."""
    kind, folder = training_folder(name_or_path) or (None, Path(str(name_or_path)))
    if kind == "run":
        if (folder / "export" / "config.json").is_file():
            logger.info("%s is a training run's output folder: loading its exported teacher, %s.", folder, "export/")
            return load_backbone(folder / "export", **kwargs)
        checkpoints = list_checkpoints(folder)
        if not checkpoints:
            raise FileNotFoundError(
                f"{folder} is a training run's output folder without an export/ or a complete checkpoint-N: nothing "
                "to load. Finish the run (it writes export/) or export a checkpoint with `dino-hf-export "
                f"{folder}/checkpoint-<step> <output folder>`."
            )
        folder = checkpoints[-1]
    if kind is None:
        raise ValueError(f"{name_or_path} is not a dino_hf training run or checkpoint.")
    config = DinoConfig.from_dict(load_trainer_state(folder)["model_config"])
    run = DinoForSelfDistillation(config)
    run.load_state_dict(load_model_state(folder))
    logger.info(
        "%s is a training checkpoint: loaded its teacher backbone. `dino-hf-export %s <output folder>` writes it as a "
        "model folder (with its image processor and model card); the run's own export is in its export/ folder.",
        folder,
        folder,
    )
    return run.export_teacher_backbone().eval()


def auto_model_from_pretrained(auto_class: type, name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
    """`AutoModel.from_pretrained` once dino_hf is imported: transformers' own, except that a dino_hf training run's
    `output_dir` or `checkpoint-N` folder (no `config.json`) gives its teacher backbone ([`load_training_folder`]), as
    it does for `DinoViTModel.from_pretrained` and [`load_backbone`]."""
    if training_folder(name_or_path) is not None:
        return load_training_folder(name_or_path, **kwargs)
    return _BaseAutoModelClass.from_pretrained.__func__(auto_class, name_or_path, *model_args, **kwargs)


def install_auto_model_loader() -> None:
    """Make `AutoModel.from_pretrained` [`auto_model_from_pretrained`] (`import dino_hf` does, once); other sources
    go to transformers' unchanged."""
    AutoModel.from_pretrained = classmethod(auto_model_from_pretrained)


def auto_backbone_from_pretrained(auto_class: type, name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
    """`AutoBackbone.from_pretrained` once dino_hf is imported: transformers' own, except for two kinds of source.

    - A released DINO model, by name (`"dino-vits16"`, `"dino_vitb8"`, ...) or Hub id (`"facebook/dino-vits16"`, a
      transformers `ViTModel`, which `AutoBackbone` cannot map): a [`DinoBackbone`] as `DinoBackbone.from_pretrained`
      loads it; the ResNet-50 (official files): transformers' `ResNetBackbone` with its weights.
    - A local folder: loaded by its config.json, as the other Auto classes do (a `DinoViTModel` or training folder
      gives a [`DinoBackbone`], an exported DINO ResNet transformers' `ResNetBackbone`). transformers 5's
      `AutoBackbone.from_pretrained` first asks the Hub whether the name is a repository (`repo_exists`) and sends
      everything else to timm, so a local path fails (an invalid repository id, or no Hub access when offline).

    Any other name goes to transformers' `AutoBackbone.from_pretrained` unchanged.
    """
    if _is_dino_release(name_or_path):
        if release_from_official_files(name_or_path) is not None:
            return _resnet_backbone(load_backbone(name_or_path), kwargs)
        return DinoBackbone.from_pretrained(name_or_path, *model_args, **kwargs)
    if isinstance(name_or_path, (str, os.PathLike)) and os.path.isdir(name_or_path):
        return _BaseAutoModelClass.from_pretrained.__func__(auto_class, name_or_path, *model_args, **kwargs)
    return _BaseAutoBackboneClass.from_pretrained.__func__(auto_class, name_or_path, *model_args, **kwargs)


def install_auto_backbone_loader() -> None:
    """Make `AutoBackbone.from_pretrained` [`auto_backbone_from_pretrained`] (`import dino_hf` does, once).

    Only `AutoBackbone` changes (not the other backbone Auto classes), and only for the sources that function names.
    """
    AutoBackbone.from_pretrained = classmethod(auto_backbone_from_pretrained)


def _is_dino_release(name: Any) -> bool:
    return released_model(name) is not None or any(name == m.hub_id for m in RELEASED_MODELS.values() if m.hub_id)


def _resnet_backbone(resnet: ResNetModel, kwargs: dict[str, Any]) -> ResNetBackbone:
    """transformers' `ResNetBackbone` with a DINO `ResNetModel`'s weights (all of them: the pooler has none)."""
    unknown = sorted(set(kwargs) - {"out_features", "out_indices"})
    if unknown:
        raise TypeError(f"A released DINO ResNet as ResNetBackbone takes out_features and out_indices, not {unknown}.")
    config = copy.deepcopy(resnet.config)
    config.set_output_features_output_indices(kwargs.get("out_features"), kwargs.get("out_indices"))
    backbone = ResNetBackbone(config)
    backbone.load_state_dict(resnet.state_dict())
    return backbone.to(resnet.dtype).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Sources by class
# ---------------------------------------------------------------------------------------------------------------------


def _load_as_vit_backbone(
    source: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> DinoViTModel | None:
    release = release_from_official_files(source)
    if release is not None:  # every release on official files only is a ResNet (the ViTs are on the Hub)
        raise _not_a_vit_error(source, f"the released {release.arch}, a ResNet", loads_with_auto_model=False)
    if training_folder(source) is not None:
        backbone = load_training_folder(source)
        if not isinstance(backbone, DinoViTModel):
            raise _not_a_vit_error(source, "a ResNet training run", loads_with_auto_model=True)
        return _with_loading_info(backbone, kwargs)
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


def _load_as_dense_backbone(
    source: Any, model_args: tuple, kwargs: dict[str, Any], allow_missing_weights: bool
) -> DinoBackbone | None:
    values = _source_config(source, kwargs)
    if values.get("model_type") == DinoConfig.model_type and not _is_training_run(values):
        return None  # a DinoViTModel or DinoBackbone folder: transformers' loading, every weight checked
    if release_from_official_files(source) is not None or "resnet" in (
        values.get("model_type"),
        values.get("backbone"),
    ):
        raise ValueError(
            f"{source} is a ResNet, not a DINO ViT: DinoBackbone.from_pretrained gives a DinoBackbone or nothing. "
            "AutoBackbone.from_pretrained gives transformers' ResNetBackbone for a released name or an exported "
            "ResNet folder (a training run: export it first with dino-hf-export)."
        )
    feature_maps = _feature_map_fields(kwargs)
    loading = {k: v for k, v in kwargs.items() if k not in ("config", "output_loading_info")}
    vit = DinoViTModel.from_pretrained(source, *model_args, allow_missing_weights=allow_missing_weights, **loading)
    return _with_loading_info(DinoBackbone.from_backbone(vit, **feature_maps), kwargs)


def _feature_map_fields(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The feature-map fields asked for (removed from `kwargs`), over those of a DINO `config` passed along (as
    `AutoBackbone.from_pretrained` passes the one it read, with its own keyword arguments applied)."""
    config = kwargs.get("config")
    fields = {}
    if isinstance(config, DinoConfig):
        fields = {"out_features": config.out_features, "apply_layernorm": config.apply_layernorm}
        fields["reshape_hidden_states"] = config.reshape_hidden_states
    given = {k: kwargs.pop(k) for k in _FEATURE_MAP_KWARGS if k in kwargs}
    if "out_features" in given or "out_indices" in given:
        fields.pop("out_features", None)
    return {**fields, **given}


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
    check_model_location(config or name_or_path)
    try:
        values, _ = PreTrainedConfig.get_config_dict(config or name_or_path, **_only(kwargs, _HUB_KWARGS))
    except HFValidationError as error:  # not a folder here, and not a valid Hub id either
        raise FileNotFoundError(_no_such_model(config or name_or_path)) from error
    except OSError:
        return {}  # from_pretrained itself reports what is missing
    return values


def _no_such_model(name: Any) -> str:
    return (
        f"{name}: no such folder. A model is a local folder (a run's export/ or output folder, a checkpoint-N, a saved "
        f"backbone), a Hub repository id ('owner/name') or a released model's name ({', '.join(RELEASED_MODELS)}); "
        "check the path."
    )


def check_model_location(name_or_path: Any) -> None:
    """Raise `FileNotFoundError` saying the path does not exist when `name_or_path` is clearly a local path (absolute,
    `./`, `../`, `~`, a trailing slash or more than one `/`, which no Hub id has) and nothing is there; anything else
    may be a Hub id or a released name, which the loaders resolve."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return
    text = os.fspath(name_or_path)
    if os.path.exists(os.path.expanduser(text)):
        return
    if text.startswith(("/", "./", "../", "~", ".\\")) or text.endswith(("/", os.sep)) or text.count("/") > 1:
        raise FileNotFoundError(_no_such_model(text))


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


__all__ = [
    "auto_backbone_from_pretrained",
    "auto_model_from_pretrained",
    "install_auto_backbone_loader",
    "install_auto_model_loader",
    "load_backbone",
    "load_foreign_pretrained",
    "load_training_folder",
    "training_folder",
]
