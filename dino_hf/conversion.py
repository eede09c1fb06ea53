"""Loading DINO weights from other formats, and exporting them to transformers' `ViTModel`.

Sources:

- the reference implementation (facebookresearch/dino): backbone files (`*_pretrain.pth`) name parameters `cls_token`,
  `pos_embed`, `patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*` and `norm.*`; its
  full training checkpoints hold `student` (with the DDP `module.` prefix) and `teacher` state dicts with `backbone.*`
  and `head.*`, `dino_loss` with the center, and an argparse `Namespace` under `args` (allow-listed for
  `torch.load(weights_only=True)`);
- timm's `vit_{small,base}_patch{16,8}_224.dino` state dicts: the same key layout as the reference backbone;
- transformers' `ViTModel` (the Hub's `facebook/dino-vit{s,b}{16,8}`): separate query/key/value projections.

Every converter builds the model, loads the weights strictly and raises a `ValueError` naming the keys that do not
fit, so nothing is dropped or left at its random initialisation silently.

Example:

```python
>>> from dino_hf.conversion import from_official_checkpoint, to_vit_model
>>> model = from_official_checkpoint("dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
>>> vit = to_vit_model(model)  # doctest: +SKIP
```

Command line: `dino-hf-convert --help` ([`dino_hf.cli.convert`]).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import pickle
import re
import urllib.error
import urllib.parse
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from transformers import ResNetModel, ViTConfig, ViTModel
from transformers.initialization import no_init_weights
from transformers.utils import logging

from .configuration_dino import DinoConfig
from .modeling_dino import DinoForSelfDistillation, DinoViTModel


logger = logging.get_logger(__name__)

PathOrStateDict = str | Path | Mapping[str, Any]
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

# Heads are not stored in the weights: the paper's widths fix them (ViT-T/S/B, and ViT-L for completeness).
STANDARD_NUM_HEADS: dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16}
# LayerNorm epsilon of the reference implementation (the Hub's ViTModel copies of DINO say 1e-12).
DINO_LAYER_NORM_EPS = 1e-6
# Entries of a reference full checkpoint that are not model weights.
_TRAINING_STATE_ENTRIES = ("optimizer", "epoch", "args", "fp16_scaler")

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
    # A one-layer head (`nlayers=1`): the reference's `mlp` is the Linear itself, ours a one-layer Sequential.
    (r"^mlp\.(weight|bias)$", r"mlp.0.\1"),
    (r"^last_layer\.weight_g$", "last_layer.weight_g"),
    (r"^last_layer\.weight_v$", "last_layer.weight_v"),
    # torch.nn.utils.parametrizations.weight_norm names
    (r"^last_layer\.parametrizations\.weight\.original0$", "last_layer.weight_g"),
    (r"^last_layer\.parametrizations\.weight\.original1$", "last_layer.weight_v"),
]

# Block sub-modules: DinoViTModel name -> transformers ViTModel name (`attention.qkv` is split into q/k/v_proj).
_VIT_BLOCK_NAMES: dict[str, str] = {
    "norm1": "layernorm_before",
    "attention.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_QKV_NAMES = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
_SHARED_VIT_PREFIXES = (
    "embeddings.cls_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.",
    "layernorm.",
)


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _list_keys(keys: list[str], limit: int = 10) -> str:
    return f"{keys[:limit]}{f' ... ({len(keys)} in all)' if len(keys) > limit else ''}"


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DDP `module.` and `backbone.` wrappers the reference adds around a backbone."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def convert_reference_backbone_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference backbone state dict (`*_pretrain.pth` layout) to [`DinoViTModel`] names.

    Raises `ValueError` listing any key that has no place in the model, so nothing is dropped silently. Projection-head
    parameters (`head.*`, present when a `student`/`teacher` state dict is read as a backbone) are left out, as the
    reference's own `load_pretrained_weights` does.
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
        raise ValueError(
            f"Keys not in the reference ViT layout: {_list_keys(unknown)}. Only ViT backbones convert (not the "
            "reference's ResNet-50 or XCiT checkpoints)."
        )
    return converted


# torchvision's ResNet names (the reference's convnets) <-> transformers' ResNetModel names, as (pattern, replacement).
_TORCHVISION_TO_RESNET = [
    (r"^conv1\.", "embedder.embedder.convolution."),
    (r"^bn1\.", "embedder.embedder.normalization."),
    (r"^layer(\d+)\.(\d+)\.downsample\.0\.", "encoder.stages.{stage}.layers.\\2.shortcut.convolution."),
    (r"^layer(\d+)\.(\d+)\.downsample\.1\.", "encoder.stages.{stage}.layers.\\2.shortcut.normalization."),
    (r"^layer(\d+)\.(\d+)\.conv(\d+)\.", "encoder.stages.{stage}.layers.\\2.layer.{conv}.convolution."),
    (r"^layer(\d+)\.(\d+)\.bn(\d+)\.", "encoder.stages.{stage}.layers.\\2.layer.{conv}.normalization."),
]
_RESNET_TO_TORCHVISION = [
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", "layer{stage}.\\2.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", "layer{stage}.\\2.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", "layer{stage}.\\2.conv{conv}."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", "layer{stage}.\\2.bn{conv}."),
]


def _rename_resnet(key: str, rules: list[tuple[str, str]], offset: int) -> str | None:
    """Rename one key; stage and convolution indices shift by `offset` (torchvision counts from 1)."""
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
            groups = match.groups()
            stage = int(groups[0]) + offset if groups else 0
            conv = int(groups[2]) + offset if len(groups) > 2 else 0
            return re.sub(pattern, replacement.format(stage=stage, conv=conv), key)
    return None


def _rename_resnet_state(
    state_dict: Mapping[str, torch.Tensor], rules: list[tuple[str, str]], offset: int, layout: str
) -> dict[str, torch.Tensor]:
    """Rename every key by `rules`; a key no rule matches raises a `ValueError` (nothing is dropped silently)."""
    converted = {_rename_resnet(key, rules, offset): value for key, value in state_dict.items()}
    unknown = [key for key in state_dict if _rename_resnet(key, rules, offset) is None]
    if unknown:
        raise ValueError(f"Keys not in {layout}: {_list_keys(unknown)}.")
    return converted


def is_torchvision_resnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a backbone state dict (DDP/`backbone.` prefixes allowed) is a torchvision-layout ResNet."""
    keys = _strip_prefixes(state_dict)
    return "conv1.weight" in keys and "layer1.0.conv1.weight" in keys


def convert_torchvision_resnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet state dict (`dino_resnet50_pretrain.pth`: `conv1`, `bn1`, `layerN.M.*`, optional
    `module.`/`backbone.` prefixes) -> transformers `ResNetModel` names. The classifier `fc.*` (absent from the
    released backbone, whose `fc` the reference replaced by an identity) and `head.*` are left out, as the reference's
    own loaders do; any other unknown key raises a `ValueError`."""
    backbone = {k: v for k, v in _strip_prefixes(state_dict).items() if not k.startswith(("head.", "fc."))}
    return _rename_resnet_state(backbone, _TORCHVISION_TO_RESNET, -1, "torchvision's ResNet layout")


def resnet_state_dict_to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The other direction: transformers `ResNetModel` names -> torchvision's (the reference's backbone layout, loadable
    by `torchvision.models.resnet50()` with `strict=False` for the missing `fc`)."""
    return _rename_resnet_state(state_dict, _RESNET_TO_TORCHVISION, 1, "transformers' ResNetModel layout")


def infer_resnet_config_fields(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """[`DinoConfig`] fields of a ResNet backbone read off a torchvision-layout state dict (stem width, stage widths
    and depths, bottleneck or basic blocks)."""
    keys = _strip_prefixes(state_dict)
    bottleneck = "layer1.0.conv3.weight" in keys
    last_conv = "conv3" if bottleneck else "conv2"
    hidden_sizes, depths = [], []
    while f"layer{len(depths) + 1}.0.conv1.weight" in keys:
        stage = len(depths) + 1
        hidden_sizes.append(keys[f"layer{stage}.0.{last_conv}.weight"].shape[0])
        depths.append(1 + max(int(m.group(1)) for k in keys if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))))
    return dict(
        backbone="resnet",
        num_channels=keys["conv1.weight"].shape[1],
        resnet_embedding_size=keys["conv1.weight"].shape[0],
        resnet_hidden_sizes=hidden_sizes,
        resnet_depths=depths,
        resnet_layer_type="bottleneck" if bottleneck else "basic",
    )


def convert_reference_network_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
        raise ValueError(f"Keys not in the reference DINO layout: {_list_keys(unknown)}")
    convert = (
        convert_torchvision_resnet_state_dict
        if is_torchvision_resnet_state_dict(backbone)
        else convert_reference_backbone_state_dict
    )
    for key, value in convert(backbone).items():
        converted[f"backbone.{key}"] = value
    return converted


def head_state_dict_to_reference(head_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The other direction for the head: [`DinoHead`] names -> the reference's `DINOHead` names.

    Only a one-layer head differs (`mlp.0.*` -> `mlp.*`: the reference's `mlp` is then a bare Linear).
    """
    linear_layers = [k for k, v in head_state.items() if re.match(r"^mlp\.\d+\.weight$", k) and v.ndim == 2]
    if len(linear_layers) != 1:
        return dict(head_state)
    return {re.sub(r"^mlp\.0\.", "mlp.", k): v for k, v in head_state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | Path, *, allow_unpickling: bool = False) -> dict[str, Any]:
    """Read a `.safetensors` file, or a `torch.save` file with `torch.load(weights_only=True)`; a URL is downloaded
    first ([`download_checkpoint`]).

    `weights_only=True` allows tensors, containers and primitive values, and here also argparse's `Namespace` (the
    reference's full training checkpoints store their `args` in one), which holds only such values. Files that pickle
    any other Python object raise a `ValueError` unless `allow_unpickling=True`: unpickling can run arbitrary code, so
    only opt in for files you trust.
    """
    if str(path).startswith(("https://", "http://")):
        path = download_checkpoint(str(path))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not allow_unpickling)
    except pickle.UnpicklingError as error:
        if allow_unpickling:
            raise
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise ValueError(
            f"{path} pickles Python objects besides tensors, containers and argparse Namespaces "
            f"({found.group(1) if found else 'see the error above'}), so torch.load(weights_only=True) refuses it. "
            "Unpickling can run arbitrary code: if you trust this file, pass allow_unpickling=True (command line: "
            "--allow-unpickling)."
        ) from error


def download_checkpoint(url: str) -> Path:
    """Download a checkpoint URL (e.g. an official DINO file) once, with torch.hub's downloader and into its cache
    (`torch.hub.get_dir()/checkpoints`, as `torch.hub.load_state_dict_from_url` does); returns the local file."""
    filename = Path(urllib.parse.urlparse(url).path).name
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not target.is_file():
        help_text = (
            f"Download {url} on a machine with network access and put the file at {target} (torch.hub's cache, "
            "read before any download), or load the file directly: "
            f"dino_hf.conversion.from_official_checkpoint('path/to/{filename}')."
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        logger.info("Downloading %s to %s", url, target)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=True)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:  # HTTPError is a URLError
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
            where = " (HF_HUB_OFFLINE is set: this machine is meant to be offline)" if offline else ""
            raise OSError(
                f"Could not download {url} ({error}): the network or the server is unreachable{where}. {help_text}"
            ) from error
    return target


def _read(path_or_state_dict: PathOrStateDict, allow_unpickling: bool = False) -> Mapping[str, Any]:
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict
    return load_checkpoint_file(path_or_state_dict, allow_unpickling=allow_unpickling)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested mappings of tensors -> one flat dict with dotted keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            raise ValueError(f"Unexpected checkpoint entry {name!r} of type {type(value).__name__}; expected tensors.")
    return flat


def _split_training_state(checkpoint: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """Flat weights and the reference's `args` (or `None`); optimizer state, epoch and loss scaler are left out."""
    weights = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE_ENTRIES}
    return _flatten(weights), checkpoint.get("args")


def _select(flat: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in flat.items() if k.startswith(prefix + ".")}


def read_linear_probe(probe: Any) -> torch.nn.Linear:
    """The `nn.Linear` of a trained linear probe, for [`DinoForImageClassification.from_linear_probe`], from any
    form it comes in.

    Accepts dino_hf's `LinearProbeResult` (its `.classifier`), a `LinearClassifier` (its `.linear`), an `nn.Linear`
    (returned as it is), a state dict (the reference's `{"state_dict": {"module.linear.weight": ...}}` or any dict
    whose keys end in `linear.weight`/`linear.bias` or are `weight`/`bias`), or the path of such a state dict, read
    with [`load_checkpoint_file`] (`.safetensors`, or `torch.load(weights_only=True)`: no code is unpickled).

    Example:

    ```python
    >>> from dino_hf import DinoForImageClassification
    >>> from dino_hf.conversion import read_linear_probe
    >>> probe = read_linear_probe("dino_vitbase16_linearweights.pth")  # doctest: +SKIP
    >>> model = DinoForImageClassification.from_linear_probe(backbone, probe, id2label=classes)  # doctest: +SKIP
    ```
    """
    if isinstance(probe, (str, Path)):
        probe = load_checkpoint_file(probe)
    if not isinstance(probe, torch.nn.Module) and hasattr(probe, "classifier"):
        probe = probe.classifier
    if isinstance(probe, torch.nn.Module) and isinstance(getattr(probe, "linear", None), torch.nn.Linear):
        probe = probe.linear
    if isinstance(probe, Mapping):
        probe = _linear_from_state_dict(probe)
    if not isinstance(probe, torch.nn.Linear):
        raise TypeError(f"Cannot read linear-probe weights from a {type(probe).__name__}.")
    if probe.bias is None:
        raise ValueError("The linear probe has no bias; the reference's LinearClassifier always has one.")
    return probe


def _linear_from_state_dict(checkpoint: Mapping[str, Any]) -> torch.nn.Linear:
    state = checkpoint.get("state_dict", checkpoint)
    state = {key.removeprefix("module.").removeprefix("linear."): value for key, value in state.items()}
    weight, bias = state.get("weight"), state.get("bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ValueError(
            f"No linear-probe weights in the state dict (keys: {sorted(checkpoint.get('state_dict', checkpoint))})."
        )
    # skip_init: the weights are copied in next, and a random initialisation would advance the global generator.
    linear = torch.nn.utils.skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0], dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


# ---------------------------------------------------------------------------------------------------------------------
# Configuration inference
# ---------------------------------------------------------------------------------------------------------------------


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{what} has {count} positions, not a square grid; pass config=DinoConfig(...).")
    return side


def num_heads_for_width(hidden_size: int) -> int:
    """The number of attention heads of the paper's ViT of this width (192 -> 3, 384 -> 6, 768 -> 12, 1024 -> 16)."""
    if hidden_size not in STANDARD_NUM_HEADS:
        raise ValueError(
            f"The number of attention heads is not stored in the weights and hidden size {hidden_size} is not one of "
            f"the standard ViT widths {STANDARD_NUM_HEADS}; pass config=DinoConfig(hidden_size={hidden_size}, "
            "num_attention_heads=..., ...)."
        )
    return STANDARD_NUM_HEADS[hidden_size]


def infer_backbone_config_fields(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Backbone fields of a [`DinoConfig`] read off a reference-layout backbone state dict (`cls_token`, ...)."""
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"Not a ViT backbone in the reference layout: missing {missing}.")
    hidden_size = state_dict["cls_token"].shape[-1]
    kernel = state_dict["patch_embed.proj.weight"].shape
    if kernel[-1] != kernel[-2]:
        raise ValueError(f"Non-square patch kernel {tuple(kernel[-2:])} is not supported.")
    patch_size = kernel[-1]
    side = _square_side(state_dict["pos_embed"].shape[1] - 1, "pos_embed")
    mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"^blocks\.(\d+)\.", k)))
    return dict(
        image_size=side * patch_size,
        patch_size=patch_size,
        num_channels=kernel[1],
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=num_heads_for_width(hidden_size),
        mlp_ratio=mlp_hidden // hidden_size if mlp_hidden % hidden_size == 0 else mlp_hidden / hidden_size,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        layer_norm_eps=DINO_LAYER_NORM_EPS,
    )


def infer_head_config_fields(head_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Head fields of a [`DinoConfig`] read off a head state dict in [`DinoHead`] names (`mlp.N.*`, `last_layer.*`)."""
    if "last_layer.weight_v" not in head_state:
        raise ValueError(f"No head.last_layer.weight_v in the head weights {_list_keys(sorted(head_state))}.")
    linear_indices = sorted(
        int(m.group(1)) for k, v in head_state.items() if (m := re.match(r"^mlp\.(\d+)\.weight$", k)) and v.ndim == 2
    )
    if not linear_indices:
        raise ValueError("The head has no MLP layers (head.mlp.N.weight).")
    first, last = (head_state[f"mlp.{i}.weight"] for i in (linear_indices[0], linear_indices[-1]))
    fields = dict(
        out_dim=head_state["last_layer.weight_v"].shape[0],
        head_num_layers=len(linear_indices),
        head_bottleneck_dim=last.shape[0],
        use_bn_in_head=any(k.endswith("running_mean") for k in head_state),
    )
    if len(linear_indices) > 1:
        fields["head_hidden_dim"] = first.shape[0]
    return fields


def _fields_from_reference_args(args: Any) -> dict[str, Any]:
    """Non-weight settings the reference stores in its `args`: stochastic depth, teacher temperature, ..."""
    if args is None:
        return {}
    names = {
        "drop_path_rate": "drop_path_rate",
        "teacher_temp": "teacher_temp",
        "norm_last_layer": "norm_last_layer",
    }
    return {ours: getattr(args, theirs) for theirs, ours in names.items() if hasattr(args, theirs)}


# ---------------------------------------------------------------------------------------------------------------------
# Loading into our models
# ---------------------------------------------------------------------------------------------------------------------


def _build_and_load(
    model_class: Callable[[Any], ModelT], config: Any, state_dict: Mapping[str, torch.Tensor], source: str
) -> ModelT:
    """Build a model without its random initialisation (every tensor is then loaded, strictly) and load the weights."""
    with no_init_weights():
        model = model_class(config)
    _load_strictly(model, state_dict, source)
    return model


def _load_strictly(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(
            f"{source} does not fit {type(module).__name__} with this configuration ({error}). Pass the "
            "checkpoint's configuration as config=..., or config=None to infer it from the weights."
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not fit {type(module).__name__}: missing {_list_keys(result.missing_keys)}, "
            f"unexpected {_list_keys(result.unexpected_keys)}."
        )


def _backbone_from_reference_layout(
    state_dict: Mapping[str, torch.Tensor], config: DinoConfig | None, source: str
) -> DinoViTModel | ResNetModel:
    if is_torchvision_resnet_state_dict(state_dict):
        config = config or DinoConfig(**infer_resnet_config_fields(state_dict))
        converted = convert_torchvision_resnet_state_dict(state_dict)
        return _build_and_load(ResNetModel, config.resnet_config(), converted, source).eval()
    converted = convert_reference_backbone_state_dict(state_dict)
    if config is None:
        # Released backbones are used frozen; fine-tuning users set drop_path_rate themselves.
        config = DinoConfig(**infer_backbone_config_fields(_strip_prefixes(state_dict)), drop_path_rate=0.0)
    config.architectures = ["DinoViTModel"]
    return _build_and_load(DinoViTModel, config, converted, source).eval()


def _self_distillation_from_reference(
    flat: Mapping[str, torch.Tensor], args: Any, config: DinoConfig | None, source: str
) -> DinoForSelfDistillation:
    known = ("student.", "teacher.", "dino_loss.")
    unexpected = [k for k in flat if not k.startswith(known)]
    missing = [k for k in ("dino_loss.center",) if k not in flat]
    student, teacher = _select(flat, "student"), _select(flat, "teacher")
    if not student or not teacher:
        missing.append("student.*" if not student else "teacher.*")
    if unexpected or missing:
        raise ValueError(
            f"{source} is not a reference training checkpoint (student, teacher, dino_loss.center): missing "
            f"{missing}, unexpected {_list_keys(unexpected)}. For one network's backbone pass checkpoint_key=..."
        )
    converted = {"center.center": flat["dino_loss.center"]}
    for name, network in (("student", student), ("teacher", teacher)):
        converted.update({f"{name}.{k}": v for k, v in convert_reference_network_state_dict(network).items()})
    scales = [v for k, v in converted.items() if k.endswith("last_layer.weight_g")]
    scales_are_one = all(bool((g == 1).all()) for g in scales)
    if config is None:
        stripped = _strip_prefixes(student)
        is_resnet = is_torchvision_resnet_state_dict(stripped)
        fields = (infer_resnet_config_fields if is_resnet else infer_backbone_config_fields)(stripped)
        head = {k[len("student.head.") :]: v for k, v in converted.items() if k.startswith("student.head.")}
        fields.update(infer_head_config_fields(head))
        # The reference's own settings win; without them a weight-norm scale still at 1 means it was frozen.
        fields.update({"norm_last_layer": scales_are_one, **_fields_from_reference_args(args)})
        config = DinoConfig(**fields)
    if config.norm_last_layer and not scales_are_one:
        raise ValueError(
            f"{source} has trained last-layer scales (last_layer.weight_g != 1), but norm_last_layer=True would "
            "freeze them at 1; use a config with norm_last_layer=False."
        )
    config.architectures = ["DinoForSelfDistillation"]
    model = _build_and_load(DinoForSelfDistillation, config, converted, source)
    model.teacher.requires_grad_(False)
    return model


def from_official_checkpoint(
    path_or_state_dict: PathOrStateDict,
    config: DinoConfig | None = None,
    *,
    allow_unpickling: bool = False,
    checkpoint_key: str | None = None,
) -> DinoViTModel | DinoForSelfDistillation:
    """Load a checkpoint of the reference implementation (facebookresearch/dino).

    Args:
        path_or_state_dict: a `.pth` file (read with `torch.load(weights_only=True)`, argparse `Namespace`
            allowed), its official URL (downloaded into torch.hub's cache), a `.safetensors` file, or the loaded dict. A backbone file (`dino_deitsmall16_pretrain.pth`, ...: `cls_token`, `pos_embed`,
            `patch_embed.proj.*`, `blocks.N.*`, `norm.*`) gives a [`DinoViTModel`]; a full training checkpoint
            (`student`, `teacher`, `dino_loss`, plus `optimizer`, `epoch`, `args`, `fp16_scaler` which are not
            converted) gives a [`DinoForSelfDistillation`] to continue training from. A safetensors file may hold a
            full checkpoint flattened (`student.module.backbone.cls_token`, ..., `dino_loss.center`).
        config: the model configuration. By default it is inferred from the weights: width, depth, MLP ratio, patch
            size (conv kernel), image size (position embeddings), number of heads (from the standard widths; any other
            width needs a config), head dimensions, BatchNorm in the head, and `norm_last_layer`. A full checkpoint's
            `args` also supplies `drop_path_rate`, `teacher_temp` and `norm_last_layer`. Backbones get
            `drop_path_rate=0.0`.
        allow_unpickling: allow `torch.load(weights_only=False)`, for files that pickle objects other than tensors,
            containers and the argparse `Namespace` of the reference's full checkpoints (which load without it);
            unpickling can run arbitrary code, so only opt in for files you trust.
        checkpoint_key: read only this network's backbone, e.g. `"teacher"` (what the reference's evaluation scripts
            load); the result is a [`DinoViTModel`].

    Returns:
        A [`DinoViTModel`] (in eval mode) or a [`DinoForSelfDistillation`] (in train mode).

    Example:

    ```python
    >>> from dino_hf.conversion import from_official_checkpoint
    >>> backbone = from_official_checkpoint("dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
    >>> teacher = from_official_checkpoint("checkpoint.pth", checkpoint_key="teacher")  # doctest: +SKIP
    >>> model = from_official_checkpoint("dino_deitsmall16_pretrain_full_checkpoint.pth")  # doctest: +SKIP
    ```
    """
    source = str(path_or_state_dict) if not isinstance(path_or_state_dict, Mapping) else "The state dict"
    config = copy.deepcopy(config)  # architectures is set on it below; the caller's object stays as it was
    flat, args = _split_training_state(_read(path_or_state_dict, allow_unpickling))
    if checkpoint_key is not None:
        selected = _select(flat, checkpoint_key)
        if not selected:
            available = sorted({k.split(".")[0] for k in flat})
            raise ValueError(f"{source} has no entries under {checkpoint_key!r}; top-level names: {available}.")
        return _backbone_from_reference_layout(selected, config, f"{source}[{checkpoint_key!r}]")
    if any(k.startswith(("student.", "teacher.")) for k in flat):
        return _self_distillation_from_reference(flat, args, config, source)
    return _backbone_from_reference_layout(flat, config, source)


def from_timm_checkpoint(path_or_state_dict: PathOrStateDict, config: DinoConfig | None = None) -> DinoViTModel:
    """Load timm's `vit_{small,base}_patch{16,8}_224.dino` weights (a `VisionTransformer` state dict).

    The key layout is the reference's (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.N.*`, `norm.*`); timm's
    LayerNorm epsilon is DINO's 1e-6. An empty classifier head (`head.*` with zero elements) is dropped; a real one
    (a model created with `num_classes > 0`) is an error, since DINO backbones have none.

    Args:
        path_or_state_dict: a `.safetensors` file, a `.pth`/`.bin` file (read with `weights_only=True`), or the dict.
        config: as in [`from_official_checkpoint`]; inferred from the weights by default.

    Example:

    ```python
    >>> from dino_hf.conversion import from_timm_checkpoint
    >>> model = from_timm_checkpoint("vit_small_patch16_224.dino/model.safetensors")  # doctest: +SKIP
    ```
    """
    source = str(path_or_state_dict) if not isinstance(path_or_state_dict, Mapping) else "The state dict"
    state = dict(_read(path_or_state_dict))
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    if any(v.numel() for v in head.values()):
        shapes = {k: tuple(v.shape) for k, v in head.items()}
        raise ValueError(
            f"{source} has a classifier head {shapes}; DINO backbones have none (timm's .dino weights use "
            "num_classes=0). Remove the head.* entries to convert the backbone alone."
        )
    backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
    return _backbone_from_reference_layout(backbone, copy.deepcopy(config), source)


# ---------------------------------------------------------------------------------------------------------------------
# transformers ViTModel
# ---------------------------------------------------------------------------------------------------------------------


def _as_int_size(value: int | list[int] | tuple[int, ...], name: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"Non-square ViT {name} {value} is not supported.")
    return int(value[0])


def _dino_state_from_vit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted, qkv, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(_SHARED_VIT_PREFIXES):
            converted[key] = value  # same names in both models
        elif key.startswith(("pooler.", "embeddings.mask_token")):
            continue  # ViT's tanh pooler and masked-image-modelling token are not part of DINO
        elif m := re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            layer, name, param = m.groups()
            if name in _VIT_QKV_NAMES:
                qkv.setdefault((layer, param), {})[name] = value
            elif name in _VIT_BLOCK_NAMES.values():
                dino_name = next(k for k, v in _VIT_BLOCK_NAMES.items() if v == name)
                converted[f"encoder.layer.{layer}.{dino_name}.{param}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (layer, param), parts in qkv.items():
        if len(parts) != 3:
            raise ValueError(f"Layer {layer} lacks some of query/key/value {param}: has {sorted(parts)}.")
        # DINO's fused projection is [query; key; value] stacked along the output dimension.
        converted[f"encoder.layer.{layer}.attention.qkv.{param}"] = torch.cat([parts[n] for n in _VIT_QKV_NAMES])
    if unknown:
        raise ValueError(f"Keys not in the transformers ViTModel layout: {_list_keys(unknown)}")
    return converted


def _vit_state_from_dino(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None:
            converted[key] = value  # embeddings.* and layernorm.* have the same names
            continue
        layer, name, param = m.groups()
        if name == "attention.qkv":
            for vit_name, part in zip(_VIT_QKV_NAMES, value.chunk(3, dim=0)):
                converted[f"layers.{layer}.{vit_name}.{param}"] = part.clone()
        else:
            converted[f"layers.{layer}.{_VIT_BLOCK_NAMES[name]}.{param}"] = value
    return converted


def from_vit_model(
    model_or_path: ViTModel | str | Path,
    *,
    layer_norm_eps: float | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> DinoViTModel:
    """Convert a transformers `ViTModel` (e.g. the Hub's `facebook/dino-vits16`) to a [`DinoViTModel`].

    Query, key and value are fused into one `qkv` projection. ViT's pooler (dense + tanh) is dropped whether or not
    the model has one: the DINO feature is the final-LayerNorm [CLS] token, our `pooler_output`, which equals
    `ViTModel(...).last_hidden_state[:, 0]`.

    LayerNorm epsilon: the Hub's DINO checkpoints say `layer_norm_eps=1e-12` in their config, while DINO was trained
    with 1e-6. By default the source's epsilon is kept, so the converted model reproduces the `ViTModel` it came from
    exactly; pass `layer_norm_eps=1e-6` ([`DINO_LAYER_NORM_EPS`]) to reproduce the reference implementation instead.
    (LayerNorm divides by `sqrt(var + eps)`, so the two differ by about `eps / (2 var)` relative: negligible for a
    trained model's activations, visible on tiny ones such as a freshly initialised model's.)

    `DinoViTModel.from_pretrained("facebook/dino-vits16")` (or `"dino-vits16"`) calls this while loading, with
    `layer_norm_eps=1e-6`.

    Args:
        model_or_path: a `ViTModel` (or a model whose `base_model` is one, e.g. `ViTForImageClassification`, whose
            classifier is dropped), or a folder / Hub id for `ViTModel.from_pretrained`.
        layer_norm_eps: override of the LayerNorm epsilon, see above.
        config_overrides: other [`DinoConfig`] fields of the result (e.g. `drop_path_rate`); architecture fields
            must agree with the weights.
        from_pretrained_kwargs: for a folder / Hub id, arguments of `ViTModel.from_pretrained` (`revision`,
            `cache_dir`, `dtype`, ...). A `pytorch_model.bin` is read as transformers reads it, with
            `torch.load(weights_only=True)`; a source that leaves any ViT weight missing is an error.

    Example:

    ```python
    >>> from dino_hf.conversion import from_vit_model
    >>> model = from_vit_model("facebook/dino-vits16")  # doctest: +SKIP
    >>> model_like_reference = from_vit_model("facebook/dino-vits16", layer_norm_eps=1e-6)  # doctest: +SKIP
    ```
    """
    if isinstance(model_or_path, (str, Path)):
        source = _load_vit_model(model_or_path, from_pretrained_kwargs)
    else:
        source = getattr(model_or_path, "base_model", model_or_path)
    if not isinstance(source, ViTModel):
        raise TypeError(f"Expected a transformers ViTModel, got {type(model_or_path).__name__}.")
    config = _dino_config_from_vit(source.config, layer_norm_eps, config_overrides or {})
    state = _dino_state_from_vit({k: v.detach() for k, v in source.state_dict().items()})
    return _build_and_load(DinoViTModel, config, state, f"The {type(source).__name__}").to(source.dtype).eval()


def _load_vit_model(path: str | Path, kwargs: Mapping[str, Any]) -> ViTModel:
    """`ViTModel.from_pretrained` (pooler left out: DINO does not use it) that refuses to leave weights random."""
    # transformers' load report would list the pooler as unexpected; the keys are checked here instead.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        source, info = ViTModel.from_pretrained(path, add_pooling_layer=False, output_loading_info=True, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    missing = sorted(set(info["missing_keys"]) | {entry[0] for entry in info["mismatched_keys"]})
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith("pooler."))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the transformers ViTModel layout: missing (would stay random) "
            f"{_list_keys(missing)}, unexpected {_list_keys(unexpected)}."
        )
    return source


def _dino_config_from_vit(vit_config: ViTConfig, layer_norm_eps: float | None, overrides: Mapping) -> DinoConfig:
    if vit_config.intermediate_size % vit_config.hidden_size == 0:
        mlp_ratio: float | int = vit_config.intermediate_size // vit_config.hidden_size
    else:
        mlp_ratio = vit_config.intermediate_size / vit_config.hidden_size
    fields = dict(
        image_size=_as_int_size(vit_config.image_size, "image_size"),
        patch_size=_as_int_size(vit_config.patch_size, "patch_size"),
        num_channels=vit_config.num_channels,
        hidden_size=vit_config.hidden_size,
        num_hidden_layers=vit_config.num_hidden_layers,
        num_attention_heads=vit_config.num_attention_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=vit_config.qkv_bias,
        hidden_act=vit_config.hidden_act,
        layer_norm_eps=vit_config.layer_norm_eps if layer_norm_eps is None else layer_norm_eps,
        drop_path_rate=0.0,
    )
    config = DinoConfig(**{**fields, **overrides})
    config.architectures = ["DinoViTModel"]
    return config


def to_vit_model(model: DinoViTModel) -> ViTModel:
    """Export a [`DinoViTModel`] as a transformers `ViTModel` (no pooler), for users without `dino_hf`.

    `qkv` is split into query/key/value and the LayerNorm epsilon is kept, so at the native resolution
    `to_vit_model(model)(x).last_hidden_state` equals `model(x).last_hidden_state` (and `[:, 0]` is the DINO feature).
    At other resolutions `ViTModel` needs `interpolate_pos_encoding=True` and resamples the position embeddings to the
    target size directly, while DINO (and `DinoViTModel`) uses the reference's scale factors: outputs then differ
    slightly.

    Example:

    ```python
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> from dino_hf.conversion import to_vit_model
    >>> vit = to_vit_model(DinoViTModel(DinoConfig.from_preset("vit_small")))
    >>> vit.save_pretrained("dino-vits16-vit")  # doctest: +SKIP
    ```
    """
    config = model.config
    vit_config = ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=int(config.hidden_size * config.mlp_ratio),
        hidden_act=config.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=config.layer_norm_eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        encoder_stride=config.patch_size,
        architectures=["ViTModel"],
    )
    state = _vit_state_from_dino({k: v.detach() for k, v in model.state_dict().items()})
    vit = _build_and_load(partial(ViTModel, add_pooling_layer=False), vit_config, state, f"The {type(model).__name__}")
    return vit.to(model.dtype).eval()


__all__ = [
    "convert_torchvision_resnet_state_dict",
    "infer_resnet_config_fields",
    "is_torchvision_resnet_state_dict",
    "resnet_state_dict_to_torchvision",
    "DINO_LAYER_NORM_EPS",
    "STANDARD_NUM_HEADS",
    "convert_reference_backbone_state_dict",
    "convert_reference_network_state_dict",
    "download_checkpoint",
    "head_state_dict_to_reference",
    "from_official_checkpoint",
    "from_timm_checkpoint",
    "from_vit_model",
    "infer_backbone_config_fields",
    "infer_head_config_fields",
    "load_checkpoint_file",
    "read_linear_probe",
    "num_heads_for_width",
    "to_vit_model",
]
