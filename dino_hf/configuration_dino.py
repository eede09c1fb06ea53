# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""DINO configuration.

This file depends on transformers only, so that a saved model folder can be loaded with
`trust_remote_code=True` by someone who never installed `dino_hf`.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, ResNetConfig
from transformers.backbone_utils import BackboneConfigMixin


# The paper's backbones (Caron et al. 2021, Table 1 / the reference `vision_transformer.py`).
_PRESETS: dict[str, dict[str, Any]] = {
    "vit_tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3},
    "vit_small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit_base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    # torchvision's resnet50 (v1.5: stride on the 3x3 convolution), the reference's convnet; the resnet_* defaults.
    "resnet50": {"backbone": "resnet"},
}
BACKBONES = ("vit", "resnet")
# How the teacher targets avoid collapse: the paper's running center, or DINOv2's Sinkhorn-Knopp normalisation.
CENTERINGS = ("center", "sinkhorn_knopp")
# DinoConfig fields of the projection head's architecture: a backbone does not fix them, a pretrained head does.
HEAD_FIELDS = (
    "out_dim",
    "head_hidden_dim",
    "head_bottleneck_dim",
    "head_num_layers",
    "use_bn_in_head",
    "norm_last_layer",
)


@strict
class DinoConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a DINO model: the backbone (the DINO ViT, [`DinoViTModel`], or transformers' `ResNetModel`), the
    projection head ([`DinoHead`]) and the self-distillation loss ([`DinoForSelfDistillation`]). The defaults are the
    paper's ViT-S/16 set-up.

    Backbone:
        backbone (`str`, defaults to `"vit"`): `"vit"` (the fields below) or `"resnet"` (transformers' `ResNetModel`
            built from the `resnet_*` fields, see [`~DinoConfig.resnet_config`]; its pooled feature feeds the head).
        image_size (`int`, defaults to 224): resolution of the position embeddings. Other resolutions divisible by
            `patch_size` work through bicubic interpolation of the position embeddings.
        patch_size (`int`, defaults to 16): side of the square patches.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size (`int`, defaults to 384): token width.
        num_hidden_layers (`int`, defaults to 12): transformer blocks.
        num_attention_heads (`int`, defaults to 6): heads per block; must divide `hidden_size`.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width over `hidden_size`.
        qkv_bias (`bool`, defaults to `True`): bias in the query/key/value projection.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon (DINO used 1e-6; the Hub's `ViTModel`
            copies of DINO say 1e-12).
        drop_path_rate (`float`, defaults to 0.1): stochastic depth rate of the last block, linearly increasing
            from 0 over the blocks. It applies to the student only; the teacher never drops paths.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.

    ResNet backbone (`backbone="resnet"`; the defaults are ResNet-50, whose pooled feature has 2048 channels):
        resnet_embedding_size (`int`, defaults to 64): channels of the stem (7x7 convolution).
        resnet_hidden_sizes (`list[int]`, defaults to `[256, 512, 1024, 2048]`): output channels of each stage.
        resnet_depths (`list[int]`, defaults to `[3, 4, 6, 3]`): residual blocks per stage.
        resnet_layer_type (`str`, defaults to `"bottleneck"`): `"bottleneck"` or `"basic"` blocks.

    Projection head:
        out_dim (`int`, defaults to 65536): number of prototypes K.
        head_hidden_dim (`int`, defaults to 2048): hidden width of the head MLP.
        head_bottleneck_dim (`int`, defaults to 256): width of the L2-normalised bottleneck.
        head_num_layers (`int`, defaults to 3): MLP layers before the bottleneck output.
        use_bn_in_head (`bool`, defaults to `False`): BatchNorm after each hidden MLP layer.
        norm_last_layer (`bool`, defaults to `True`): fix the weight-norm scale of the last layer to 1 (the
            reference's default; its README trains ViT-S/16 with `False` for the best results, at the cost of
            stability).
        float32_last_layer (`bool`, defaults to `True`): the head's L2 normalisation and last layer run in float32
            under autocast (mixed precision), so the logits (cosines / temperature) are not rounded to bf16. Chosen
            by measurement (docs/performance.md, "Precision of the head's last layer"); False lets autocast run the
            last layer in bf16/fp16.

    Loss:
        student_temp (`float`, defaults to 0.1): student softmax temperature.
        teacher_temp (`float`, defaults to 0.07): teacher softmax temperature after warm-up (the paper warms it up
            linearly from 0.04 over the first 30 epochs).
        center_momentum (`float`, defaults to 0.9): momentum of the teacher-output center.
        centering (`str`, defaults to `"center"`): how the teacher's outputs are kept from collapsing: `"center"`,
            the paper's running center subtracted before the sharpened softmax; or `"sinkhorn_knopp"`, DINOv2's
            Sinkhorn-Knopp normalisation of each batch, whose targets use every prototype equally (the center is then
            not used).
        sinkhorn_iterations (`int`, defaults to 3): Sinkhorn-Knopp iterations (DINOv2's value).
        koleo_loss_weight (`float`, defaults to 0.0): weight of DINOv2's KoLeo regulariser, which spreads the
            student's features of each global view over the sphere (0: off, the paper; DINOv2 uses 0.1).

    Classification ([`DinoForImageClassification`], linear evaluation):
        n_last_blocks (`int`, *optional*): blocks whose [CLS] tokens make the linear-evaluation features. Defaults by
            width as in the reference: 1 for ViT-B and wider (`hidden_size >= 768`), else 4 (or every block of a
            shallower model). A ResNet has one feature, its pooled last stage: 1 (and no `avgpool_patchtokens`).
        avgpool_patchtokens (`bool`, *optional*): add the average of the last block's patch tokens to the features.
            Defaults by width: True for ViT-B and wider, else False.
        The classifier also honours transformers' `num_labels`, `id2label`, `label2id` and `problem_type`.

    Dense features ([`DinoBackbone`], `AutoBackbone`; transformers' `BackboneConfigMixin`, as `Dinov2Config`):
        out_features (`list[str]`, *optional*): stages whose outputs become feature maps, among `stage_names`:
            `"stem"` (the embeddings: patch tokens plus position embeddings) and `"stage1"` ... `"stageN"` (the
            output of block 1 ... N). Defaults to the last block.
        out_indices (`list[int]`, *optional*): the same stages by index into `stage_names` (0 is the stem, `i` block
            `i`; negative indices count from the end). Give either, or both if they agree.
        apply_layernorm (`bool`, defaults to `True`): pass each feature map through the final LayerNorm, as the
            reference's `get_intermediate_layers` does for its outputs.
        reshape_hidden_states (`bool`, defaults to `True`): feature maps as `(batch, hidden_size, H / patch_size,
            W / patch_size)` patch grids ([CLS] dropped); False keeps the `(batch, 1 + num_patches, hidden_size)`
            token sequences, [CLS] first (what DPT's reassemble stage reads).
        `stage_names` is derived from `num_hidden_layers`; configs saved before these fields existed load with the
        defaults.

    Example:

    ```python
    >>> from dino_hf import DinoConfig
    >>> config = DinoConfig.from_preset("vit_small", patch_size=8)
    >>> config.hidden_size, config.patch_size
    (384, 8)
    ```
    """

    model_type = "dino"

    backbone: str = "vit"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    drop_path_rate: float | int = 0.1
    initializer_range: float = 0.02

    resnet_embedding_size: int = 64
    resnet_hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    resnet_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    resnet_layer_type: str = "bottleneck"

    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_num_layers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    float32_last_layer: bool = True

    student_temp: float = 0.1
    teacher_temp: float = 0.07
    center_momentum: float = 0.9
    centering: str = "center"
    sinkhorn_iterations: int = 3
    koleo_loss_weight: float = 0.0

    n_last_blocks: int | None = None
    avgpool_patchtokens: bool | None = None

    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs):
        # The reference's linear-evaluation features by width (eval_linear.py help: n=4 for ViT-S, n=1 + avgpool for
        # ViT-B); resolved once here, so a saved config states the layout its classifier was trained on.
        # A ResNet has one feature, its pooled last stage (the reference's eval_linear.py for convnets).
        resnet = self.backbone == "resnet"
        wide = isinstance(self.hidden_size, int) and self.hidden_size >= 768
        if self.n_last_blocks is None and isinstance(self.num_hidden_layers, int):
            self.n_last_blocks = 1 if wide or resnet else min(4, self.num_hidden_layers)
        if self.avgpool_patchtokens is None:
            self.avgpool_patchtokens = wide and not resnet
        self.check_values()
        # The stem (embeddings) and one stage per block, named as transformers' ViT backbones (Dinov2Config) name them.
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    def check_values(self) -> None:
        """Raise a `ValueError` naming the first invalid field, so mistakes fail here and not as a shape error."""
        self._check_backbone()
        self._check_ranges()
        self._check_linear_features()

    def _check_backbone(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"DinoConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        self.resnet_hidden_sizes, self.resnet_depths = list(self.resnet_hidden_sizes), list(self.resnet_depths)
        stages = (self.resnet_hidden_sizes, self.resnet_depths)
        if len(stages[0]) != len(stages[1]) or not all(isinstance(v, int) and v > 0 for v in (*stages[0], *stages[1])):
            raise ValueError(
                "DinoConfig.resnet_hidden_sizes and resnet_depths must be lists of positive integers of equal "
                f"length, got {self.resnet_hidden_sizes!r} and {self.resnet_depths!r}."
            )
        positive_ints = (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "out_dim",
            "head_hidden_dim",
            "head_bottleneck_dim",
            "head_num_layers",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DinoConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"DinoConfig.num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                f"({self.hidden_size})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"DinoConfig.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})."
            )

    def _check_ranges(self) -> None:
        if not self.mlp_ratio > 0:
            raise ValueError(f"DinoConfig.mlp_ratio must be positive, got {self.mlp_ratio!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"DinoConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"DinoConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}.")
        if not self.initializer_range > 0:
            raise ValueError(f"DinoConfig.initializer_range must be positive, got {self.initializer_range!r}.")
        for name in ("student_temp", "teacher_temp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DinoConfig.{name} must be a positive temperature, got {getattr(self, name)!r}.")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"DinoConfig.center_momentum must be in [0, 1], got {self.center_momentum!r}.")
        if self.centering not in CENTERINGS:
            raise ValueError(f"DinoConfig.centering must be one of {CENTERINGS}, got {self.centering!r}.")
        if not self.koleo_loss_weight >= 0:
            raise ValueError(f"DinoConfig.koleo_loss_weight must be >= 0, got {self.koleo_loss_weight!r}.")
        if isinstance(self.sinkhorn_iterations, bool) or not self.sinkhorn_iterations >= 1:
            raise ValueError(
                f"DinoConfig.sinkhorn_iterations must be a positive integer, got {self.sinkhorn_iterations!r}."
            )

    def _check_linear_features(self) -> None:
        if isinstance(self.n_last_blocks, bool) or not 1 <= self.n_last_blocks <= self.num_hidden_layers:
            raise ValueError(
                f"DinoConfig.n_last_blocks must be between 1 and num_hidden_layers ({self.num_hidden_layers}), "
                f"got {self.n_last_blocks!r}."
            )
        if self.backbone == "resnet" and (self.n_last_blocks != 1 or self.avgpool_patchtokens):
            raise ValueError(
                "A ResNet's linear-evaluation feature is its pooled last stage: DinoConfig.n_last_blocks must be 1 and "
                "avgpool_patchtokens False."
            )

    def validate_dino_values(self):
        """Part of the strict-dataclass validation that `save_pretrained` runs again."""
        self.check_values()

    @property
    def linear_feature_dim(self) -> int:
        """Width of the linear-evaluation features ([`DinoViTModel.get_linear_features`]) with this config's layout."""
        if self.backbone == "resnet":
            return self.feature_size
        return self.hidden_size * (self.n_last_blocks + int(self.avgpool_patchtokens))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def feature_size(self) -> int:
        """Width of the backbone feature the head reads: `hidden_size` (ViT [CLS]) or the last ResNet stage's
        channels (the pooled feature, 2048 for ResNet-50)."""
        return self.resnet_hidden_sizes[-1] if self.backbone == "resnet" else self.hidden_size

    @property
    def has_batch_norm(self) -> bool:
        """Whether the networks hold BatchNorm layers (a ResNet, or `use_bn_in_head`): SyncBatchNorm across GPUs."""
        return self.backbone == "resnet" or self.use_bn_in_head

    def resnet_config(self) -> ResNetConfig:
        """The transformers `ResNetConfig` of the ResNet backbone: torchvision's layout (stride on the 3x3
        convolution, `downsample_in_bottleneck=False`; no stride in the first stage)."""
        return ResNetConfig(
            num_channels=self.num_channels,
            embedding_size=self.resnet_embedding_size,
            hidden_sizes=list(self.resnet_hidden_sizes),
            depths=list(self.resnet_depths),
            layer_type=self.resnet_layer_type,
            hidden_act="relu",
            downsample_in_first_stage=False,
            downsample_in_bottleneck=False,
        )

    @classmethod
    def from_resnet_config(cls, resnet_config: ResNetConfig, **overrides: Any) -> DinoConfig:
        """The DINO configuration of a transformers `ResNetConfig` backbone (torchvision layout only)."""
        if resnet_config.downsample_in_bottleneck or resnet_config.downsample_in_first_stage:
            raise ValueError("Only torchvision-layout ResNets (stride on the 3x3 convolution, none in stage 1) train.")
        return cls(
            backbone="resnet",
            num_channels=resnet_config.num_channels,
            resnet_embedding_size=resnet_config.embedding_size,
            resnet_hidden_sizes=list(resnet_config.hidden_sizes),
            resnet_depths=list(resnet_config.depths),
            resnet_layer_type=resnet_config.layer_type,
            **overrides,
        )

    @classmethod
    def from_preset(cls, name: str, patch_size: int | None = None, **overrides: Any) -> DinoConfig:
        """Build the configuration of one of the paper's backbones.

        Args:
            name: `"vit_tiny"`, `"vit_small"`, `"vit_base"` or `"resnet50"`.
            patch_size: 16 or 8 in the paper (any divisor of `image_size` works; unused by the ResNet); defaults to
                the field's default.
            **overrides: any other field, e.g. `out_dim=4096` or `drop_path_rate=0.0`.
        """
        if name not in _PRESETS:
            raise ValueError(f"Unknown DINO preset {name!r}; choose one of {sorted(_PRESETS)}.")
        if patch_size is not None:
            overrides["patch_size"] = patch_size
        return cls(**{**_PRESETS[name], **overrides})


__all__ = ["HEAD_FIELDS", "DinoConfig"]
