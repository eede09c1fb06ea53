# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers").

- [`DinoViTModel`]: the pre-norm ViT backbone; its `pooler_output` is the final-LayerNorm [CLS] token, the DINO
  feature. Its blocks run in one place, [`DinoEncoder`]`.forward`, whose options serve every feature API; hidden
  states and attentions are recorded by transformers' output capture.
- [`DinoBackbone`]: the same ViT as a transformers backbone (`AutoBackbone`): feature maps `(B, D, H/p, W/p)` of
  the stem and any blocks, for dense models (UperNet, DPT); it runs the same encoder forward.
- [`DinoHead`]: the projection head (MLP -> L2-normalised bottleneck -> weight-normalised prototypes).
- [`DinoLoss`] and [`DinoCenter`]: the multi-crop cross-entropy with a centred, sharpened teacher.
- [`DinoForSelfDistillation`]: student and EMA teacher (backbone + head each), the center, and the loss.
- [`DinoForImageClassification`]: the backbone with a linear classifier on the linear-evaluation features.

This file depends on torch and transformers only, so that a saved model folder can be loaded with
`trust_remote_code=True` by someone who never installed `dino_hf`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ResNetModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_dino import DinoConfig


logger = logging.get_logger(__name__)


def float32_region(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on `tensor`'s device, so operations run in their inputs' dtype.

    Under autocast a matrix product runs in half precision whatever its inputs' dtype: casting the inputs to float32
    is not enough. The loss, the center and the head's last layer run inside this context with float32 inputs.
    """
    device_type = tensor.device.type
    # A string test, not torch.amp.is_autocast_available: under torch.compile on torch 2.6 that call breaks the
    # graph and the head recompiles every step.
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


# ---------------------------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------------------------


class DinoPatchEmbeddings(nn.Module):
    """`(B, C, H, W)` images -> `(B, H/p * W/p, D)` patch tokens, by a stride-`p` convolution."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"Expected pixel_values of shape (batch, {self.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Input size {height}x{width} is not divisible by the patch size {self.patch_size}; "
                "resize or crop the images to a multiple of the patch size."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class DinoEmbeddings(nn.Module):
    """[CLS] token + patch tokens + learnable position embeddings, interpolated to the input resolution."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.patch_embeddings = DinoPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.patch_embeddings.num_patches + 1, config.hidden_size)
        )
        self.patch_size = config.patch_size

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an `height x width` input, `(1, 1 + num_patches, D)`.

        Bicubic interpolation of the patch grid exactly as the reference implementation does it (scale factors with a
        +0.1 offset, see facebookresearch/dino#8), so features match the released models at every resolution.
        """
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        class_pos_embed = self.position_embeddings[:, :1]
        patch_pos_embed = self.position_embeddings[:, 1:]
        dim = patch_pos_embed.shape[-1]
        side = int(math.sqrt(num_positions))
        new_height = height // self.patch_size
        new_width = width // self.patch_size
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        # Bicubic resampling in half precision shifts the embeddings: always interpolate in float32.
        patch_pos_embed = F.interpolate(
            patch_pos_embed.float(),
            scale_factor=((new_height + 0.1) / side, (new_width + 0.1) / side),
            mode="bicubic",
            align_corners=False,
        ).to(self.position_embeddings.dtype)
        if patch_pos_embed.shape[-2:] != (new_height, new_width):
            raise RuntimeError(
                f"Position embedding interpolation produced {tuple(patch_pos_embed.shape[-2:])}, "
                f"expected {(new_height, new_width)}."
            )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1).to(embeddings.dtype)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        return embeddings + self.interpolate_pos_encoding(embeddings.shape[1] - 1, height, width)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention that also returns the probabilities `(B, heads, N, N)`."""
    attn_weights = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = attn_weights.softmax(dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class DinoSelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection (the reference layout)."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)

        attention_interface: Callable = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, scaling=self.scaling, dropout=0.0, is_causal=False
        )
        attn_output = self.proj(attn_output.reshape(batch_size, seq_len, -1))
        return attn_output, attn_weights

    def forward_cls(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The attention output of the [CLS] token only, `(B, 1, D)`: keys and values from every token, one query.

        Equal to `forward(hidden_states)[0][:, :1]` (up to rounding) without the queries, attention rows and output
        projection of the other tokens.
        """
        batch_size, seq_len, dim = hidden_states.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        query = F.linear(hidden_states[:, :1], weight[:dim], None if bias is None else bias[:dim])
        key_value = F.linear(hidden_states, weight[dim:], None if bias is None else bias[dim:])
        query = query.reshape(batch_size, 1, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = key_value.reshape(batch_size, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query, key, value, None, scaling=self.scaling, dropout=0.0, is_causal=False
        )
        return self.proj(attn_output.reshape(batch_size, 1, -1))


class DinoMLP(nn.Module):
    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class DinoDropPath(nn.Module):
    """Stochastic depth: drops the residual branch for whole samples with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        # The same probability as a (non-persistent) tensor, for torch.compile: a float attribute is a constant that
        # every block with another rate would recompile for; a buffer is a graph input, so all blocks share one graph.
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return hidden_states
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        if torch.compiler.is_compiling():
            # Same distribution from the float32 buffer; the float attribute is not even read, so it is not guarded.
            mask = torch.empty(shape, dtype=self.keep_prob.dtype, device=hidden_states.device)
            mask = mask.bernoulli_(self.keep_prob) / self.keep_prob
            return hidden_states * mask.to(hidden_states.dtype)
        if self.drop_prob == 0.0:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class DinoLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`."""

    def __init__(self, config: DinoConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DinoSelfAttention(config)
        self.drop_path = DinoDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DinoMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attention(self.norm1(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + self.drop_path(attn_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, attn_weights

    def forward_cls(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The block's output for the [CLS] token only, `(B, 1, D)`, from all `(B, N, D)` input tokens.

        Equal to `forward(hidden_states)[0][:, :1]` up to rounding (the same drop-path draws in training), for the
        last block when only the [CLS] feature is needed: every other token's MLP, output projection, query and
        attention row is skipped.
        """
        cls_token = hidden_states[:, :1]
        cls_token = cls_token + self.drop_path(self.attention.forward_cls(self.norm1(hidden_states)))
        return cls_token + self.drop_path(self.mlp(self.norm2(cls_token)))


@dataclass
class DinoEncoderOutput(ModelOutput):
    """
    Output of [`DinoEncoder`]: block outputs before the final LayerNorm.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`):
            The last block's output; `(batch_size, 1, hidden_size)`, the [CLS] token, with `cls_only_last_block`.
        last_block_outputs (`tuple(torch.FloatTensor)`):
            The outputs of the last `n_last_blocks` blocks in order, the last one being `last_hidden_state`.
        last_attention (`torch.FloatTensor` of shape `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`):
            The last block's attention probabilities, with `return_last_attention`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    last_block_outputs: tuple[torch.FloatTensor, ...] | None = None
    last_attention: torch.FloatTensor | None = None


class DinoEncoder(nn.Module):
    """The transformer blocks, with stochastic depth growing linearly from 0 to `config.drop_path_rate`."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        # Stochastic depth grows linearly with depth, as in the reference.
        # On the CPU explicitly, so that building the model under a `torch.device("meta")` context works.
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layer = nn.ModuleList([DinoLayer(config, drop_path=rate) for rate in rates])
        if config.drop_path_rate > 0.0:
            # The first block's rate is 0: give it a (no-op) DinoDropPath rather than an Identity anyway, so that every
            # block has the same structure and compiled blocks share one graph (see `compile_blocks`).
            self.layer[0].drop_path = DinoDropPath(rates[0])

    def disable_drop_path(self) -> None:
        """Make every block's stochastic depth an identity, as the EMA teacher has it (the reference builds the teacher
        with `drop_path_rate=0`); the teacher shares the student's config, so its rate stays in the config."""
        for layer in self.layer:
            layer.drop_path = nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        n_last_blocks: int = 1,
        cls_only_last_block: bool = False,
        return_last_attention: bool = False,
    ) -> DinoEncoderOutput:
        """Run every block on `hidden_states`, `(B, 1 + num_patches, D)` tokens, [CLS] first.

        Args:
            n_last_blocks: how many of the last blocks' outputs to return in `last_block_outputs` (the
                linear-evaluation features read the last 4 or 1).
            cls_only_last_block: run the last block for the [CLS] token only ([`DinoLayer.forward_cls`]): the DINO
                feature depends on every token's keys and values in that block, but on no other token's MLP, query
                or output projection (about 6% of a ViT-S/16 training step's FLOPs).
            return_last_attention: the last block computes explicit attention probabilities (`last_attention`); the
                other blocks keep the configured (fused) attention.

        Hidden states and attentions of every block are recorded by `DinoViTModel.forward`'s `output_hidden_states`
        and `output_attentions` (transformers' output capture), not here.
        """
        num_blocks = len(self.layer)
        if not 1 <= n_last_blocks <= num_blocks:
            raise ValueError(f"n_last_blocks must be between 1 and {num_blocks} (the blocks), got {n_last_blocks}.")
        if cls_only_last_block and return_last_attention:
            raise ValueError("cls_only_last_block computes no attention row but the [CLS] token's.")
        *blocks, last = self.layer
        last_block_outputs = []
        for index, layer in enumerate(blocks):
            hidden_states, _ = layer(hidden_states)
            if index >= num_blocks - n_last_blocks:
                last_block_outputs.append(hidden_states)
        if cls_only_last_block:
            hidden_states, attention = last.forward_cls(hidden_states), None
        else:
            hidden_states, attention = last(hidden_states, return_last_attention)
        return DinoEncoderOutput(
            last_hidden_state=hidden_states,
            last_block_outputs=(*last_block_outputs, hidden_states),
            last_attention=attention if return_last_attention else None,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# ---------------------------------------------------------------------------------------------------------------------


class MissingWeightsError(ValueError):
    """A load would leave weights of a DINO model at their random initialisation (the message names them)."""


class DinoPreTrainedModel(PreTrainedModel):
    config_class = DinoConfig
    config: DinoConfig
    base_model_prefix = "dino"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DinoEmbeddings", "DinoLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Regular expressions of tensor names that a load may leave at their initialisation without an error, for models
    # that add new trainable parts to a pretrained backbone (a classifier, say). Empty: every tensor must be loaded.
    _keys_new_on_load: tuple[str, ...] = ()
    # transformers' output capture (`capture_outputs` on `DinoViTModel.forward`): `output_hidden_states` records every
    # block's output (index 0 of its `(hidden_states, attn_weights)`), `output_attentions` every attention's weights.
    _can_record_outputs = {
        "hidden_states": OutputRecorder(DinoLayer, index=0),
        "attentions": OutputRecorder(DinoSelfAttention, index=1),
    }
    # What `from_pretrained` does with sources in another layout than the class's own (released models' names, the
    # Hub's ViTModels, a training folder loaded as a backbone): `import dino_hf` registers `dino_hf.hub`'s loader
    # (`register_foreign_loader`). This file alone, as a saved folder's remote code, has none and loads its own layout.
    _foreign_loader: Callable[..., Any] | None = None

    @classmethod
    def register_foreign_loader(cls, loader: Callable[..., Any] | None) -> None:
        """Set the function `from_pretrained` of every DINO class asks first (`None` removes it).

        `loader(cls, name_or_path, model_args, kwargs, allow_missing_weights)` returns the loaded model, or `None` when
        `name_or_path` is in `cls`'s own layout and transformers' loading applies.
        """
        DinoPreTrainedModel._foreign_loader = staticmethod(loader) if loader is not None else None

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, allow_missing_weights: bool = False, **kwargs
    ):
        """`PreTrainedModel.from_pretrained`, that never silently leaves weights random, and with dino_hf imported
        also takes the released models' names and other layouts (see `dino_hf.hub.load_foreign_pretrained`).

        - Names: `"dino-vits16"`, `"dino_vits16"` (torch.hub's), ... resolve to their Hub ids (`dino_hf.releases`).
        - A transformers `ViTModel` (the Hub's `facebook/dino-vits16`, `-vits8`, `-vitb16`, `-vitb8`) is converted
          while loading, with DINO's LayerNorm epsilon (1e-6); a training folder (`DinoForSelfDistillation`) loaded as
          [`DinoViTModel`] gives its teacher backbone.
        - A load that leaves any weight missing (or re-initialised for a shape mismatch) raises
          [`MissingWeightsError`] naming them; `allow_missing_weights=True` downgrades it to a warning.
        """
        loader = DinoPreTrainedModel._foreign_loader
        if loader is not None and pretrained_model_name_or_path is not None:
            loaded = loader(cls, pretrained_model_name_or_path, model_args, kwargs, allow_missing_weights)
            if loaded is not None:
                return loaded
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        model._check_loaded_weights(info, pretrained_model_name_or_path, allow_missing_weights)
        return (model, info) if output_loading_info else model

    def _check_loaded_weights(self, info: dict, source, allow_missing_weights: bool) -> None:
        """Raise (or with `allow_missing_weights`, warn) when `from_pretrained` left weights at their initialisation."""
        missing = set(info.get("missing_keys") or ()) | {entry[0] for entry in info.get("mismatched_keys") or ()}
        missing = sorted(k for k in missing if not any(re.search(p, k) for p in self._keys_new_on_load))
        if not missing:
            return
        message = (
            f"Loading {type(self).__name__} from {source} leaves {len(missing)} tensors at their random "
            f"initialisation (missing or of another shape in the checkpoint): {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}."
        )
        if not allow_missing_weights:
            raise MissingWeightsError(
                message + " Check that the checkpoint is a DINO model of this configuration; pass "
                "allow_missing_weights=True to load it anyway."
            )
        logger.warning("%s They stay random (allow_missing_weights=True).", message)

    def _check_attentions_supported(self, output_attentions: bool) -> None:
        if output_attentions and (self.config._attn_implementation or "sdpa") != "eager":
            raise ValueError(
                "output_attentions=True needs the eager attention path; load the model with "
                "attn_implementation='eager' or call model.set_attn_implementation('eager'). "
                "get_last_selfattention() works with any attention implementation."
            )

    def _init_weights(self, module: nn.Module) -> None:
        """The reference initialisation: truncated normal (std 0.02) for linear layers, tokens and positions."""
        std = self.config.initializer_range
        if isinstance(module, DinoWeightNormLinear):
            init.kaiming_uniform_(module.weight_v, a=math.sqrt(5))
            init.ones_(module.weight_g)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # The reference leaves the patch projection at PyTorch's default initialisation.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, DinoEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embeddings, std=std)
        elif isinstance(module, DinoCenter):
            init.zeros_(module.center)


def _add_vit_modules(model: nn.Module, config: DinoConfig) -> None:
    """Give `model` the DINO ViT's modules, `embeddings`, `encoder` and the final `layernorm`: [`DinoViTModel`] and
    [`DinoBackbone`] have these and no other weights, so a folder of either loads into the other with every weight
    used."""
    model.embeddings = DinoEmbeddings(config)
    model.encoder = DinoEncoder(config)
    model.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


@dataclass
class DinoModelOutput(BaseModelOutputWithPooling):
    """
    Output of [`DinoViTModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`):
            All tokens after the final LayerNorm, [CLS] first.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The final-LayerNorm [CLS] token: the DINO feature.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The embeddings and the output of every block (before the final LayerNorm), each
            `(batch_size, 1 + num_patches, hidden_size)`; returned with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities of every block, each `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`;
            returned with `output_attentions=True` on the eager attention path.
    """


class DinoViTModel(DinoPreTrainedModel):
    """The DINO Vision Transformer backbone (DeiT-style pre-norm ViT).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                 num_attention_heads=4)).eval()
    >>> out = model(torch.randn(2, 3, 32, 24))  # any size divisible by the patch size
    >>> out.pooler_output.shape, out.last_hidden_state.shape
    (torch.Size([2, 64]), torch.Size([2, 13, 64]))
    ```
    """

    def __init__(self, config: DinoConfig) -> None:
        super().__init__(config)
        _add_vit_modules(self, config)
        self.post_init()

    def get_input_embeddings(self) -> DinoPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> DinoModelOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; height and width must be multiples of `config.patch_size`.
            output_attentions (`bool`, *optional*): return every block's attention probabilities (eager path only).
            output_hidden_states (`bool`, *optional*): return the embeddings and every block's output.
            return_dict (`bool`, *optional*): return a [`DinoModelOutput`] instead of a tuple.
        """
        # The decorator records the outputs; weights come from eager attention only, so SDPA would return none.
        self._check_attentions_supported(kwargs.get("output_attentions", self.config.output_attentions))
        encoder_output = self.encoder(self.embeddings(pixel_values))
        sequence_output = self.layernorm(encoder_output.last_hidden_state)
        return DinoModelOutput(last_hidden_state=sequence_output, pooler_output=sequence_output[:, 0])

    def get_cls_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The DINO feature, `(B, D)`: `forward(pixel_values).pooler_output` (up to rounding), without the work that
        does not reach it.

        The last block runs for the [CLS] token only (`DinoEncoder`'s `cls_only_last_block`), and the final
        LayerNorm, which acts on each token alone, too. The training forward uses this; other blocks run (and
        compile, and checkpoint) as usual.
        """
        encoder_output = self.encoder(self.embeddings(pixel_values), cls_only_last_block=True)
        return self.layernorm(encoder_output.last_hidden_state[:, 0])

    def get_intermediate_layers(self, pixel_values: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, ...]:
        """The last `n` blocks' outputs, each through the final LayerNorm: `n` tensors `(B, 1 + num_patches, D)`.

        Linear evaluation of ViT-S concatenates the [CLS] token (`[:, 0]`) of the last 4.
        """
        encoder_output = self.encoder(self.embeddings(pixel_values), n_last_blocks=n)
        return tuple(self.layernorm(block_output) for block_output in encoder_output.last_block_outputs)

    def get_linear_features(
        self, pixel_values: torch.Tensor, n_last_blocks: int | None = None, avgpool_patchtokens: bool | None = None
    ) -> torch.Tensor:
        """The linear-evaluation features of the reference's `eval_linear.py`, `(B, D * (n_last_blocks + avgpool))`.

        The [CLS] tokens of the last `n_last_blocks` blocks (each through the final LayerNorm), concatenated. With
        `avgpool_patchtokens` and one block (the reference's ViT-B setting) the [CLS] token and the average of the
        last block's patch tokens are *interleaved*, as the reference stacks them on a last axis and flattens:
        `[cls_0, avg_0, cls_1, avg_1, ...]` (its released ViT-B linear weights expect exactly this). The reference
        cannot pool with several blocks (its stacking fails); here the average then follows the concatenated [CLS]
        tokens, `[cls^1 | ... | cls^n | avg]`, as in DINOv2's linear evaluation.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
            n_last_blocks (`int`, *optional*): defaults to `config.n_last_blocks` (4 for ViT-S, 1 for ViT-B).
            avgpool_patchtokens (`bool`, *optional*): defaults to `config.avgpool_patchtokens` (True for ViT-B).

        Example:

        ```python
        >>> import torch
        >>> from dino_hf import DinoConfig, DinoViTModel
        >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4,
        ...                                 num_attention_heads=4)).eval()
        >>> model.get_linear_features(torch.randn(2, 3, 32, 32), n_last_blocks=4).shape  # ViT-S layout
        torch.Size([2, 256])
        >>> model.get_linear_features(torch.randn(2, 3, 32, 32), 1, avgpool_patchtokens=True).shape  # ViT-B layout
        torch.Size([2, 128])
        ```
        """
        n_last_blocks = self.config.n_last_blocks if n_last_blocks is None else n_last_blocks
        avgpool = self.config.avgpool_patchtokens if avgpool_patchtokens is None else avgpool_patchtokens
        blocks = self.get_intermediate_layers(pixel_values, n_last_blocks)
        cls_tokens = torch.cat([tokens[:, 0] for tokens in blocks], dim=-1)
        if not avgpool:
            return cls_tokens
        average = blocks[-1][:, 1:].mean(dim=1)
        if n_last_blocks == 1:
            return torch.stack((cls_tokens, average), dim=-1).flatten(1)
        return torch.cat((cls_tokens, average), dim=-1)

    def get_last_selfattention(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of the last block, `(B, heads, 1 + num_patches, 1 + num_patches)`, [CLS] first.

        Every other block keeps the configured (fused) attention; only the last one computes explicit weights.
        """
        return self.encoder(self.embeddings(pixel_values), return_last_attention=True).last_attention


class DinoBackbone(BackboneMixin, DinoPreTrainedModel):
    """The DINO ViT as a transformers backbone (`AutoBackbone`), for dense models such as UperNet or DPT.

    The same modules and weight names as [`DinoViTModel`] (a saved `DinoViTModel` loads into it with every weight
    used) and the same encoder forward; `feature_maps` holds the outputs of the stages in `config.out_features`
    (`"stem"`: the embeddings, `"stage<i>"`: block `i`), each through the final LayerNorm as the reference's
    `get_intermediate_layers` gives them (`config.apply_layernorm`), as `(B, hidden_size, H / patch_size,
    W / patch_size)` patch grids (`config.reshape_hidden_states`; [CLS] dropped) for any input size divisible by the
    patch size (position embeddings interpolated). `channels`, `out_feature_channels` and `stage_names` come from
    transformers' `BackboneMixin`.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoBackbone, DinoConfig
    >>> config = DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    ...                     out_indices=[2, 4])
    >>> backbone = DinoBackbone(config).eval()
    >>> [tuple(m.shape) for m in backbone(torch.randn(1, 3, 32, 48)).feature_maps], backbone.channels
    ([(1, 64, 4, 6), (1, 64, 4, 6)], [64, 64])
    ```
    """

    def __init__(self, config: DinoConfig) -> None:
        if config.backbone != "vit":
            raise ValueError(
                f"DinoBackbone is the DINO ViT; a config with backbone={config.backbone!r} is a ResNet, whose backbone "
                "is transformers' ResNetBackbone (AutoBackbone of an exported ResNet folder gives it)."
            )
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        _add_vit_modules(self, config)
        self.post_init()

    def get_input_embeddings(self) -> DinoPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @classmethod
    def from_backbone(cls, backbone: DinoViTModel, **config_overrides: Any) -> DinoBackbone:
        """A backbone with `backbone`'s weights (all of them, loaded strictly), dtype and mode.

        Args:
            backbone: a [`DinoViTModel`].
            **config_overrides: e.g. `out_indices=[4, 8, 12]`, `out_features=["stage12"]`, `apply_layernorm=False`,
                `reshape_hidden_states=False`.
        """
        stages = {name: config_overrides.pop(name, None) for name in ("out_features", "out_indices")}
        config = _config_for_backbone(backbone.config, cls.__name__, config_overrides)
        if any(value is not None for value in stages.values()):
            config.set_output_features_output_indices(**stages)  # both at once: they must agree
        model = cls(config)
        model.load_state_dict(backbone.state_dict())
        return model.to(backbone.dtype).train(backbone.training)

    @capture_outputs(tie_last_hidden_states=False)
    def _run_encoder(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        """The encoder forward, whose every block output (and attention) transformers' output capture records."""
        return BaseModelOutput(last_hidden_state=self.encoder(self.embeddings(pixel_values)).last_hidden_state)

    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; height and width must be multiples of `config.patch_size`.
            output_hidden_states (`bool`, *optional*): also return the embeddings and every block's output (before
                the final LayerNorm), as [`DinoViTModel`] does.
            output_attentions (`bool`, *optional*): return every block's attention probabilities (eager path only).
            return_dict (`bool`, *optional*): return a `BackboneOutput` instead of a tuple.

        Returns:
            `BackboneOutput` with `feature_maps`, one per stage of `config.out_features`, in that order.
        """
        self._check_attentions_supported(kwargs.get("output_attentions", self.config.output_attentions))
        # `filter_output_hidden_states` asked for every hidden state: the stages' outputs come from them.
        output = self._run_encoder(pixel_values, **{**kwargs, "return_dict": True})
        height, width = pixel_values.shape[-2:]
        feature_maps = tuple(
            self._feature_map(hidden_state, height, width)
            for stage, hidden_state in zip(self.stage_names, output.hidden_states)
            if stage in self.out_features
        )
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=output.hidden_states, attentions=output.attentions
        )

    def _feature_map(self, hidden_state: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.config.apply_layernorm:
            hidden_state = self.layernorm(hidden_state)
        if not self.config.reshape_hidden_states:
            return hidden_state
        patch_size = self.config.patch_size
        # Patch tokens are in row-major order of the (height / p, width / p) grid, as the patch projection flattens it.
        grid = hidden_state[:, 1:].reshape(hidden_state.shape[0], height // patch_size, width // patch_size, -1)
        return grid.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------------------------
# Projection head
# ---------------------------------------------------------------------------------------------------------------------


class DinoWeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, `W = g * v / ||v||` row-wise.

    Parameters keep the names of the reference's `torch.nn.utils.weight_norm` (`weight_g` `(out, 1)`, `weight_v`
    `(out, in)`), so reference checkpoints load as they are. With `fix_scale=True` (the paper's `norm_last_layer`),
    `g` stays 1: it is then a buffer, so no optimizer, EMA or checkpoint loader can make it trainable.
    """

    def __init__(self, in_features: int, out_features: int, fix_scale: bool = True) -> None:
        super().__init__()
        if fix_scale:
            self.register_buffer("weight_g", torch.ones(out_features, 1))
        else:
            self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * (self.weight_v / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.weight)


class DinoHead(nn.Module):
    """The DINO projection head: MLP (GELU) -> bottleneck -> L2 normalisation -> weight-normalised prototypes.

    Args:
        in_dim: backbone width.
        out_dim: number of prototypes K (65536 in the paper).
        hidden_dim: MLP width (2048).
        bottleneck_dim: bottleneck width (256).
        num_layers: MLP layers, the bottleneck projection included (3).
        use_bn: BatchNorm after each hidden layer (False for ViTs).
        norm_last_layer: freeze the weight-norm scale of the last layer at 1 (True).
        float32_last_layer: run the L2 normalisation and the last layer in float32 under autocast (see
            `DinoConfig.float32_last_layer`); False lets autocast choose (bf16/fp16 logits).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoHead
    >>> head = DinoHead(in_dim=64, out_dim=256, hidden_dim=128, bottleneck_dim=32)
    >>> head(torch.randn(6, 64)).shape
    torch.Size([6, 256])
    ```
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = DinoConfig.out_dim,
        hidden_dim: int = DinoConfig.head_hidden_dim,
        bottleneck_dim: int = DinoConfig.head_bottleneck_dim,
        num_layers: int = DinoConfig.head_num_layers,
        use_bn: bool = DinoConfig.use_bn_in_head,
        norm_last_layer: bool = DinoConfig.norm_last_layer,
        float32_last_layer: bool = DinoConfig.float32_last_layer,
    ) -> None:
        super().__init__()
        self.float32_last_layer = float32_last_layer
        num_layers = max(num_layers, 1)
        if num_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = []
            width = in_dim
            for _ in range(num_layers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        # A Sequential keeps the reference's parameter names (mlp.0, mlp.2, mlp.4 without BN).
        self.mlp = nn.Sequential(*layers)
        self.last_layer = DinoWeightNormLinear(bottleneck_dim, out_dim, fix_scale=norm_last_layer)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, config: DinoConfig) -> DinoHead:
        return cls(
            in_dim=config.feature_size,
            out_dim=config.out_dim,
            hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim,
            num_layers=config.head_num_layers,
            use_bn=config.use_bn_in_head,
            norm_last_layer=config.norm_last_layer,
            float32_last_layer=config.float32_last_layer,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(N, in_dim)` features -> `(N, out_dim)` logits (before any temperature); float32 logits with
        `float32_last_layer` whatever autocast is active."""
        hidden = self.mlp(features)
        if not self.float32_last_layer:
            return self.last_layer(F.normalize(hidden, dim=-1, p=2))
        # The logits are cosines divided by a temperature of 0.04-0.1: bf16's 8-bit mantissa would move the teacher's
        # logits by ~0.1 (docs/performance.md, "Precision"); float32 keeps them as the reference's fp16 or better.
        with float32_region(hidden):
            return self.last_layer(F.normalize(hidden.float(), dim=-1, p=2))


# ---------------------------------------------------------------------------------------------------------------------
# Loss and center
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DinoLossOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` scalar): mean over (teacher view, other student view) pairs of the batch-mean
            cross-entropy `H(P_t, P_s)`.
        teacher_entropy (`torch.FloatTensor` scalar): mean entropy of the teacher distributions `P_t`
            (-> ln K when the teacher collapses to uniform, -> 0 when it collapses to one-hot).
        kl_divergence (`torch.FloatTensor` scalar): mean `KL(P_t || P_s)` over the same pairs, `loss - entropy`.
        teacher_mean_entropy (`torch.FloatTensor` scalar): entropy of the teacher distribution averaged over all
            rows; its exponential is the effective number of prototypes in use (-> 1 when every image goes to the
            same prototype).
    """

    loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    kl_divergence: torch.FloatTensor | None = None
    teacher_mean_entropy: torch.FloatTensor | None = None


class DinoLoss(nn.Module):
    """The DINO multi-crop cross-entropy between a centred, sharpened teacher and the student.

    For each teacher view `t` and each student view `s != t`:
    `H(P_t, P_s) = -sum_k softmax((g_t - c) / tau_t)_k * log_softmax(g_s / tau_s)_k`, averaged over the batch and
    then over all such pairs. Every log-softmax is computed once per view and all pairs come from one matrix product.

    Inputs are view-major: rows `v*B .. (v+1)*B - 1` are view `v` of every image. The first `num_teacher_views`
    student views are the same crops the teacher saw.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoLoss
    >>> loss_fn = DinoLoss(student_temp=0.1)
    >>> out = loss_fn(torch.randn(6 * 4, 16), torch.randn(2 * 4, 16), center=torch.zeros(1, 16), teacher_temp=0.04)
    >>> out.loss.shape
    torch.Size([])
    ```
    """

    def __init__(self, student_temp: float = 0.1, centering: str = "center", sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations

    def teacher_log_targets(
        self, teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float | torch.Tensor
    ) -> torch.Tensor:
        """`(N, K)` float32 log-probabilities of the teacher's targets: `log_softmax((g_t - c) / tau_t)`, or with
        `centering="sinkhorn_knopp"` [`log_sinkhorn_knopp`]`(g_t / tau_t)` (the center is then ignored)."""
        logits = teacher_logits.detach().float()
        if self.centering == "sinkhorn_knopp":
            return log_sinkhorn_knopp(logits / teacher_temp, self.sinkhorn_iterations)
        return F.log_softmax((logits - center.float()) / teacher_temp, dim=-1)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        center: torch.Tensor,
        teacher_temp: float | torch.Tensor,
        num_teacher_views: int = 2,
    ) -> DinoLossOutput:
        """
        Args:
            student_logits: `(S * B, K)`, all student views, the teacher's views first.
            teacher_logits: `(T * B, K)`, the teacher's views (no gradient flows into them).
            center: `(1, K)`.
            teacher_temp: teacher temperature (a float, or a 0-d tensor).
            num_teacher_views: T.
        """
        num_teacher_rows, num_student_rows = teacher_logits.shape[0], student_logits.shape[0]
        if num_teacher_views < 1 or num_teacher_rows % num_teacher_views:
            raise ValueError(
                f"teacher_logits has {num_teacher_rows} rows, not a multiple of {num_teacher_views} views."
            )
        batch_size = num_teacher_rows // num_teacher_views
        if batch_size == 0 or num_student_rows % batch_size:
            raise ValueError(
                f"student_logits has {num_student_rows} rows, not a multiple of the batch size {batch_size}; "
                "both inputs must be view-major stacks of (views * batch) rows."
            )
        student_views = num_student_rows // batch_size
        num_pairs = num_teacher_views * student_views - min(num_teacher_views, student_views)
        if num_pairs == 0:
            raise ValueError("The DINO loss needs at least one (teacher view, other student view) pair.")

        # Everything in float32 whatever autocast is active: under autocast the pair product below would run in
        # bf16/fp16 even with float32 inputs (1.7e-3 relative error in the loss at K = 16384).
        with float32_region(student_logits):
            return self._float32_loss(
                student_logits, teacher_logits, center, teacher_temp, (num_teacher_views, student_views, batch_size)
            )

    def _float32_loss(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        center: torch.Tensor,
        teacher_temp: float | torch.Tensor,
        shape: tuple[int, int, int],
    ) -> DinoLossOutput:
        num_teacher_views, student_views, batch_size = shape
        num_pairs = num_teacher_views * student_views - min(num_teacher_views, student_views)
        if isinstance(teacher_temp, torch.Tensor):
            teacher_temp = teacher_temp.float()
        with torch.no_grad():
            teacher_log_probs = self.teacher_log_targets(teacher_logits, center, teacher_temp)
            teacher_probs = teacher_log_probs.exp()
        student_log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)

        # cross[t, s] = mean_b H(P_t[b], P_s[b]) for every pair at once: one (T, B*K) x (B*K, S) product.
        cross = teacher_probs.reshape(num_teacher_views, -1) @ student_log_probs.reshape(student_views, -1).T
        cross = cross / -batch_size
        same_view = torch.eye(num_teacher_views, student_views, dtype=torch.bool, device=cross.device)
        loss = cross.masked_fill(same_view, 0.0).sum() / num_pairs
        with torch.no_grad():
            entropy = -(teacher_probs * teacher_log_probs).sum(dim=-1).mean()
            # Every teacher view meets the same number of student views, so the pair-averaged teacher entropy is the
            # plain mean, and the pair-averaged KL(P_t || P_s) is loss - entropy.
            kl = loss.detach() - entropy
            mean_probs = teacher_probs.mean(dim=0)
            mean_entropy = -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum()
        return DinoLossOutput(loss=loss, teacher_entropy=entropy, kl_divergence=kl, teacher_mean_entropy=mean_entropy)


@torch.no_grad()
def log_sinkhorn_knopp(scores: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp teacher targets, as log-probabilities: `(N, K)` scores (logits / temperature) in,
    `(N, K)` float32 `log Q` out, the way `log_softmax` is to `softmax`.

    `Q = exp(scores)` is scaled alternately so that every prototype gets the same total mass (columns sum to N / K)
    and every row is a distribution (rows sum to 1, exactly, after the last iteration): the targets use every prototype
    equally, per batch, instead of by a running center, so they can collapse neither to uniform rows nor to one
    prototype. The same iterates as DINOv2's `sinkhorn_knopp_teacher`, computed in the log domain so that large
    scores cannot overflow. Across processes the column sums and N are all-reduced (the batch is the global one).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.modeling_dino import log_sinkhorn_knopp
    >>> targets = log_sinkhorn_knopp(torch.randn(8, 4) / 0.07).exp()
    >>> targets.sum(dim=1)
    tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
    ```
    """
    with float32_region(scores):
        log_q = scores.float()
        distributed = _in_process_group()
        if distributed:  # N is the global batch; alone it stays a Python number (no host-to-device copy per step)
            num_rows = log_q.new_tensor(float(log_q.shape[0]))
            dist.all_reduce(num_rows)
            log_column_mass = (num_rows / log_q.shape[1]).log()
        else:
            log_column_mass = math.log(log_q.shape[0] / log_q.shape[1])
        for _ in range(iterations):
            log_q = log_q - _column_logsumexp(log_q, distributed) + log_column_mass
            log_q = log_q - log_q.logsumexp(dim=1, keepdim=True)
        return log_q


def _in_process_group() -> bool:
    """Whether statistics must be all-reduced: a `torch.distributed` group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _column_logsumexp(log_q: torch.Tensor, distributed: bool) -> torch.Tensor:
    """`(1, K)` log of the column sums of `exp(log_q)`, over the rows of every process."""
    peak = log_q.amax(dim=0, keepdim=True)
    if distributed:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    sums = (log_q - peak).exp().sum(dim=0, keepdim=True)
    if distributed:
        dist.all_reduce(sums)
    return peak + sums.log()


class DinoCenter(nn.Module):
    """The running center `c` of the teacher outputs, `(1, K)`.

    `update(teacher_logits)` sets `c <- m * c + (1 - m) * mean(teacher_logits)`, with the batch mean all-reduced
    across processes when `torch.distributed` is initialised (so every process keeps the same center). It is
    `accumulate(teacher_logits)` then `commit()`: the training step accumulates the teacher outputs of every
    micro-batch of a gradient-accumulation step and commits once per optimizer step, with a device-side flag that
    leaves the center unchanged when the step was not finite. Everything is float32, under any autocast.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoCenter
    >>> center = DinoCenter(out_dim=4, momentum=0.9)
    >>> center.update(torch.ones(8, 4))
    >>> center.center
    tensor([[0.1000, 0.1000, 0.1000, 0.1000]])
    ```
    """

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._pending_sum: torch.Tensor | None = None
        self._pending_count = 0

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        self.accumulate(teacher_logits)
        self.commit()

    @torch.no_grad()
    def accumulate(self, teacher_logits: torch.Tensor) -> None:
        """Add `(N, K)` teacher outputs to the pending batch mean (float32, without a float32 copy of the logits)."""
        with float32_region(teacher_logits):
            batch_sum = teacher_logits.detach().sum(dim=0, keepdim=True, dtype=torch.float32)
        self._pending_sum = batch_sum if self._pending_sum is None else self._pending_sum + batch_sum
        self._pending_count += teacher_logits.shape[0]

    @torch.no_grad()
    def commit(self, apply: torch.Tensor | None = None) -> None:
        """Move the center towards the mean of everything accumulated since the last commit, then clear it.

        Args:
            apply: optional 0-d bool tensor; where False the center stays as it is (no host synchronisation).
        """
        if self._pending_sum is None:
            return
        batch_sum, count = self._pending_sum, self._pending_count
        self._pending_sum, self._pending_count = None, 0
        if _in_process_group():
            dist.all_reduce(batch_sum)
            count *= dist.get_world_size()
        with float32_region(batch_sum):
            updated = self.center * self.momentum + (batch_sum / count) * (1.0 - self.momentum)
            self.center.copy_(updated if apply is None else torch.where(apply, updated, self.center))


# ---------------------------------------------------------------------------------------------------------------------
# Self-distillation
# ---------------------------------------------------------------------------------------------------------------------


def build_backbone(config: DinoConfig) -> DinoViTModel | ResNetModel:
    """The backbone `config.backbone` names: a [`DinoViTModel`], or transformers' `ResNetModel` of
    `config.resnet_config()` (randomly initialised as torchvision's ResNet)."""
    if config.backbone == "resnet":
        return ResNetModel(config.resnet_config())
    return DinoViTModel(config)


def _backbone_config(backbone: DinoViTModel | ResNetModel) -> DinoConfig:
    """The [`DinoConfig`] of a backbone: a [`DinoViTModel`]'s own, or that of transformers' `ResNetModel`."""
    if isinstance(backbone, ResNetModel):
        return DinoConfig.from_resnet_config(backbone.config)
    return backbone.config


def _config_for_backbone(base: DinoConfig, architecture: str, overrides: Mapping[str, Any]) -> DinoConfig:
    """A copy of `base` for a model class built on a backbone, with `overrides` set; `id2label` sets `num_labels` and
    `label2id` too. Raises a `ValueError` for a name the config does not have, or for values it rejects (setting
    fields one by one skips the config's own validation, so it runs again here)."""
    config = copy.deepcopy(base)
    config.architectures = [architecture]
    overrides = dict(overrides)
    id2label = overrides.pop("id2label", None)
    if id2label is not None:
        config.id2label = {int(index): str(name) for index, name in dict(id2label).items()}
        config.label2id = {name: index for index, name in config.id2label.items()}
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"DinoConfig has no field {key!r}.")
        setattr(config, key, value)
    if overrides or id2label is not None:
        config.check_values()
    return config


def backbone_features(backbone: DinoViTModel | ResNetModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The feature DINO trains and evaluates, `(B, feature_size)`: the ViT's final-LayerNorm [CLS] token, or the
    ResNet's globally average-pooled last stage (the reference's torchvision ResNet with `fc` removed)."""
    if isinstance(backbone, ResNetModel):
        return backbone(pixel_values, return_dict=True).pooler_output.flatten(1)
    return backbone.get_cls_features(pixel_values)


class DinoBackboneWithHead(nn.Module):
    """A backbone and a head: `(N, C, H, W)` crops -> `(N, out_dim)` logits (the reference's `MultiCropWrapper`).

    One backbone pass per resolution ([`backbone_features`]; a ViT runs its last block for [CLS] only), then one head
    pass on all the features. A ResNet's BatchNorm statistics are therefore those of each resolution group, as in
    the reference.
    """

    def __init__(self, backbone: DinoViTModel | ResNetModel, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, *crops: torch.Tensor | None, return_features: bool = False):
        """`(N, out_dim)` logits of all crops in order; with `return_features`, also their `(N, feature_size)`
        backbone features."""
        features = [backbone_features(self.backbone, c) for c in crops if c is not None]
        features = torch.cat(features) if len(features) > 1 else features[0]
        logits = self.head(features)
        return (logits, features) if return_features else logits


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeo regulariser (Kozachenko-Leonenko entropy estimator) of one view: `-mean_i log(d_i + eps)`,
    where `d_i` is the distance from the L2-normalised `features[i]` to its nearest neighbour in the batch.
    Minimising it spreads the `(B, D)` features uniformly over the sphere. Float32 under any autocast.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.modeling_dino import koleo_loss
    >>> koleo_loss(torch.eye(4))  # four orthogonal unit vectors: every neighbour at distance sqrt(2)
    tensor(-0.3466)
    ```
    """
    with float32_region(features):
        features = F.normalize(features.float(), dim=-1, eps=eps)
        with torch.no_grad():
            similarities = features @ features.T
            similarities.fill_diagonal_(-2.0)
            nearest = similarities.argmax(dim=1)
        distances = (features - features[nearest] + eps).norm(dim=-1)
        return -(distances + eps).log().mean()


@dataclass
class DinoSelfDistillationOutput(ModelOutput):
    """
    Output of [`DinoForSelfDistillation`].

    Args:
        loss (`torch.FloatTensor` scalar): the DINO loss, plus `koleo_loss_weight * koleo_loss` when that is on.
        teacher_entropy (`torch.FloatTensor` scalar): mean entropy of the teacher distributions.
        kl_divergence (`torch.FloatTensor` scalar): mean KL(teacher || student) over the loss pairs.
        teacher_mean_entropy (`torch.FloatTensor` scalar): entropy of the batch-mean teacher distribution.
        student_logits (`torch.FloatTensor` of shape `((G + L) * B, out_dim)`): student outputs, view-major, global
            views first.
        teacher_logits (`torch.FloatTensor` of shape `(G * B, out_dim)`): teacher outputs on the global views.
        koleo_loss (`torch.FloatTensor` scalar, *optional*): the KoLeo regulariser summed over the global views (only
            when `config.koleo_loss_weight > 0`).
    """

    loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    kl_divergence: torch.FloatTensor | None = None
    teacher_mean_entropy: torch.FloatTensor | None = None
    student_logits: torch.FloatTensor | None = None
    teacher_logits: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None


class DinoForSelfDistillation(DinoPreTrainedModel):
    """DINO: a student and an exponential-moving-average teacher with the same architecture, and the loss.

    The student (`student.backbone`, `student.head`) is trained by gradient descent; the teacher
    (`teacher.backbone`, `teacher.head`) gets no gradient and follows the student through
    [`~DinoForSelfDistillation.update_teacher`]. The released model is the teacher backbone, see
    [`~DinoForSelfDistillation.export_teacher_backbone`].

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoForSelfDistillation
    >>> config = DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                     out_dim=256, head_hidden_dim=128, head_bottleneck_dim=32)
    >>> model = DinoForSelfDistillation(config)
    >>> batch = 3
    >>> out = model(torch.randn(2 * batch, 3, 32, 32), torch.randn(4 * batch, 3, 16, 16), teacher_temp=0.04)
    >>> out.loss.backward()
    >>> model.update_teacher(momentum=0.996)
    ```
    """

    def __init__(self, config: DinoConfig) -> None:
        super().__init__(config)
        self.student = DinoBackboneWithHead(build_backbone(config), DinoHead.from_config(config))
        # The teacher shares the config, so attention settings apply to both networks, but never drops paths.
        teacher_backbone = build_backbone(config)
        if isinstance(teacher_backbone, DinoViTModel):
            teacher_backbone.encoder.disable_drop_path()
        self.teacher = DinoBackboneWithHead(teacher_backbone, DinoHead.from_config(config))
        self.center = DinoCenter(config.out_dim, config.center_momentum)
        self.loss_fn = DinoLoss(config.student_temp, config.centering, config.sinkhorn_iterations)
        self.post_init()
        self.copy_student_to_teacher()
        self._ema_params: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def _apply(self, fn, *args, **kwargs):
        # Moving or casting replaces parameter tensors; the cached EMA lists must follow.
        self._ema_params = None
        return super()._apply(fn, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """See [`DinoPreTrainedModel.from_pretrained`]; a backbone (a `DinoViTModel` folder or the Hub's
        `facebook/dino-*`) gives student and teacher that backbone and a new head only with
        `allow_missing_weights=True` (head fields such as `out_dim=...` may then be passed)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # Loading recreates parameters as trainable; the teacher only ever follows the student by EMA.
        model.teacher.requires_grad_(False)
        return loaded

    @classmethod
    def from_backbone(
        cls, backbone: DinoViTModel | ResNetModel, config: DinoConfig | None = None, **config_overrides: Any
    ) -> DinoForSelfDistillation:
        """A model whose student and teacher backbones are `backbone` (copied) and whose heads are new: the paper's
        initialisation, the same for student and teacher; the center starts at zero.

        Args:
            backbone: a [`DinoViTModel`], or transformers' `ResNetModel`.
            config: the configuration to build, e.g. a run's (default: the backbone's); its backbone fields must be the
                backbone's, whose weights are loaded strictly.
            **config_overrides: fields set on it: head (`out_dim=...`), loss, `drop_path_rate`.
        """
        base = _backbone_config(backbone) if config is None else config
        model = cls(_config_for_backbone(base, cls.__name__, config_overrides))
        with torch.no_grad():
            model.student.backbone.load_state_dict(backbone.state_dict())
            model.copy_student_to_teacher()
        return model.to(backbone.dtype)

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        """Make the teacher an exact copy of the student (the paper's initialisation)."""
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        teacher_temp: float | torch.Tensor | None = None,
        num_global_crops: int = 2,
        update_center: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool = True,
        commit_center: bool = True,
    ) -> DinoSelfDistillationOutput | tuple:
        """
        Args:
            global_crops (`torch.FloatTensor` of shape `(G * B, 3, H, W)`): view-major global crops (rows `0..B-1`
                are the first view of every image). The teacher sees only these.
            local_crops (`torch.FloatTensor` of shape `(L * B, 3, h, w)`, *optional*): view-major local crops.
            teacher_temp (`float`, *optional*): teacher temperature for this step (defaults to
                `config.teacher_temp`; the training loop passes its warm-up schedule).
            num_global_crops (`int`, defaults to 2): G.
            update_center (`bool`, *optional*): update the center after the loss; defaults to `self.training`.
            return_dict (`bool`, *optional*): return a [`DinoSelfDistillationOutput`] instead of a tuple.
            return_logits (`bool`, defaults to `True`): include `student_logits` and `teacher_logits` in the output.
                The training step passes False: the logits are `((G + L) * B, out_dim)`, and returning them would
                keep them alive after the step (and under accelerate's mixed precision, copy them to float32).
            commit_center (`bool`, defaults to `True`): with `update_center`, apply the center update now; False only
                accumulates the teacher outputs, and `self.center.commit()` applies them later (the training step
                does, once per optimizer step, after checking that the step is finite).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        update_center = self.training if update_center is None else update_center
        teacher_temp = self.config.teacher_temp if teacher_temp is None else teacher_temp
        if num_global_crops < 1 or global_crops.shape[0] % num_global_crops:
            raise ValueError(
                f"global_crops has {global_crops.shape[0]} rows, not a multiple of num_global_crops={num_global_crops}."
            )
        batch_size = global_crops.shape[0] // num_global_crops
        if local_crops is not None and local_crops.shape[0] % batch_size:
            raise ValueError(
                f"local_crops has {local_crops.shape[0]} rows, not a multiple of the batch size {batch_size} "
                f"({global_crops.shape[0]} global rows / {num_global_crops} views)."
            )

        with torch.no_grad():
            teacher_logits = self.teacher(global_crops)
        student_logits, student_features = self.student(global_crops, local_crops, return_features=True)
        loss_output = self.loss_fn(
            student_logits, teacher_logits, self.center.center, teacher_temp, num_teacher_views=num_global_crops
        )
        loss, koleo = loss_output.loss, None
        if self.config.koleo_loss_weight > 0:
            # Summed over the global views, each its own batch (as DINOv2: never between two views of one image).
            views = student_features[: global_crops.shape[0]].chunk(num_global_crops)
            koleo = torch.stack([koleo_loss(view) for view in views]).sum()
            loss = loss + self.config.koleo_loss_weight * koleo
        if update_center and self.config.centering == "center":
            self.center.accumulate(teacher_logits)
            if commit_center:
                self.center.commit()

        output = DinoSelfDistillationOutput(
            loss=loss,
            koleo_loss=koleo,
            teacher_entropy=loss_output.teacher_entropy,
            kl_divergence=loss_output.kl_divergence,
            teacher_mean_entropy=loss_output.teacher_mean_entropy,
            student_logits=student_logits if return_logits else None,
            teacher_logits=teacher_logits if return_logits else None,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def update_teacher(self, momentum: float | torch.Tensor, apply: torch.Tensor | None = None) -> None:
        """EMA of the student into the teacher: `theta_t <- m * theta_t + (1 - m) * theta_s` (fused `_foreach`).

        `apply` (optional 0-d bool tensor): where False the teacher stays exactly as it is (m = 1), decided on the
        device without a host synchronisation. The EMA runs in the parameters' dtype (float32), never under autocast.
        """
        if self._ema_params is None:
            teacher_params = list(self.teacher.parameters())
            student_params = list(self.student.parameters())
            if len(teacher_params) != len(student_params):
                raise RuntimeError("Student and teacher do not have the same parameters.")
            self._ema_params = (teacher_params, student_params)
        teacher_params, student_params = self._ema_params
        if apply is None:
            torch._foreach_mul_(teacher_params, momentum)
            torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
            return
        # As the reference rounds: teacher * m + ((1 - m) * student); m = 1 and 1 - m = 0 leave the teacher unchanged.
        keep = torch.where(apply, momentum, 1.0)
        take = torch.where(apply, 1.0 - momentum, 0.0)
        torch._foreach_mul_(teacher_params, keep)
        torch._foreach_add_(teacher_params, torch._foreach_mul(student_params, take))

    def export_teacher_backbone(self) -> DinoViTModel | ResNetModel:
        """The teacher backbone as a standalone model (what DINO releases), on the CPU in float32: a
        [`DinoViTModel`], or for `backbone="resnet"` transformers' `ResNetModel` (BatchNorm running statistics
        included)."""
        if self.config.backbone == "resnet":
            backbone = ResNetModel(self.config.resnet_config())
        else:
            config = copy.deepcopy(self.config)
            config.architectures = ["DinoViTModel"]
            backbone = DinoViTModel(config)
        state = {k: v.detach().to("cpu", torch.float32) for k, v in self.teacher.backbone.state_dict().items()}
        backbone.load_state_dict(state)
        return backbone.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Image classification
# ---------------------------------------------------------------------------------------------------------------------


class DinoForImageClassification(DinoPreTrainedModel):
    """A DINO backbone with a linear classifier on the reference's linear-evaluation features.

    The features are [`DinoViTModel.get_linear_features`] with the config's `n_last_blocks` / `avgpool_patchtokens`
    (ViT-S: the last 4 [CLS] tokens; ViT-B: [CLS] and averaged patch tokens, interleaved as in the reference); the
    head is the reference's `LinearClassifier`, one `nn.Linear` initialised `N(0, 0.01)` with zero bias. Fine-tune it
    whole, or freeze `model.dino` for linear evaluation. `num_labels`, `id2label`, `label2id` and `problem_type` (and
    hence the loss: cross-entropy, BCE or MSE) work as in transformers' classifiers, as do `pipeline(
    "image-classification")` and `Trainer`. Loading a backbone folder with `from_pretrained` gives the backbone's
    weights and a new head; [`~DinoForImageClassification.from_linear_probe`] turns a trained probe into a model.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoForImageClassification
    >>> config = DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    ...                     id2label={0: "cat", 1: "dog", 2: "bird"})
    >>> model = DinoForImageClassification(config).eval()
    >>> out = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    >>> out.logits.shape, model.classifier.in_features  # 4 [CLS] tokens of width 64
    (torch.Size([2, 3]), 256)
    ```
    """

    # A backbone folder has no head: loading it gives a new one (any other missing weight still raises).
    _keys_new_on_load = (r"^classifier\.",)

    def __init__(self, config: DinoConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dino = build_backbone(config)
        self.classifier = (
            nn.Linear(config.linear_feature_dim, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None) and isinstance(module, nn.Linear):
            # The reference LinearClassifier's initialisation, not the backbone's truncated normal.
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the cross-entropy
                loss; float `(batch_size, num_labels)` targets for `problem_type="multi_label_classification"`, or
                values for regression (`num_labels == 1`).
            return_dict (`bool`, *optional*): return an `ImageClassifierOutput` instead of a tuple.

        Returns:
            `ImageClassifierOutput` with `logits` `(batch_size, num_labels)` and `loss` when `labels` are given.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if isinstance(self.dino, ResNetModel):  # the pooled last stage, as the reference's linear evaluation
            features = backbone_features(self.dino, pixel_values)
        else:
            features = self.dino.get_linear_features(
                pixel_values, self.config.n_last_blocks, self.config.avgpool_patchtokens
            )
        logits = self.classifier(features)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return ImageClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_backbone(
        cls, backbone: DinoViTModel | ResNetModel, **config_overrides: Any
    ) -> DinoForImageClassification:
        """A classifier with `backbone`'s weights (copied, on the CPU in float32) and a new head.

        Args:
            backbone: a [`DinoViTModel`], or transformers' `ResNetModel` (a DINO ResNet-50: the classifier reads its
                pooled 2048-d feature).
            **config_overrides: config fields, e.g. `id2label={0: "cat", 1: "dog"}` (sets `num_labels` and
                `label2id` too), `num_labels=10`, `n_last_blocks=1`, `avgpool_patchtokens=True`, `problem_type`.
        """
        config = _config_for_backbone(_backbone_config(backbone), cls.__name__, config_overrides)
        model = cls(config)
        state = {key: value.detach().to("cpu", torch.float32) for key, value in backbone.state_dict().items()}
        model.dino.load_state_dict(state)
        return model

    @classmethod
    def from_linear_probe(
        cls,
        backbone: DinoViTModel | ResNetModel,
        probe: nn.Linear,
        *,
        id2label: Mapping[int, str] | None = None,
        **config_overrides: Any,
    ) -> DinoForImageClassification:
        """A trained linear probe on `backbone` as one classifier model, ready for `save_pretrained` / `pipeline`.

        Args:
            backbone: the frozen backbone the probe was trained on.
            probe: the probe's `nn.Linear`. `dino_hf.conversion.read_linear_probe` gives it from the other forms a
                probe comes in: dino_hf's `LinearProbeResult` / `LinearClassifier`, a state dict, or a file such as
                the reference's released `*_linearweights.pth`.
            id2label: class names by index (their number must match the probe's outputs); default `LABEL_i`.
            **config_overrides: e.g. `n_last_blocks=4, avgpool_patchtokens=False` when the probe was trained on
                another feature layout than the backbone config's default.

        Raises:
            ValueError: when the probe's input width is not the feature width of the layout.

        Example:

        ```python
        >>> from dino_hf.conversion import read_linear_probe
        >>> probe = read_linear_probe("dino_vitbase16_linearweights.pth")  # doctest: +SKIP
        >>> model = DinoForImageClassification.from_linear_probe(backbone, probe, id2label=classes)  # doctest: +SKIP
        ```
        """
        if not isinstance(probe, nn.Linear) or probe.bias is None:
            raise TypeError(
                f"The probe must be an nn.Linear with a bias (the reference's LinearClassifier), got "
                f"{type(probe).__name__}; dino_hf.conversion.read_linear_probe reads it from its other forms."
            )
        weight, bias = probe.weight.detach().float().cpu(), probe.bias.detach().float().cpu()
        if id2label is not None and len(id2label) != weight.shape[0]:
            raise ValueError(f"id2label has {len(id2label)} names but the probe has {weight.shape[0]} outputs.")
        overrides = {"id2label": id2label} if id2label is not None else {"num_labels": weight.shape[0]}
        model = cls.from_backbone(backbone, **overrides, **config_overrides)
        expected = model.config.linear_feature_dim
        if weight.shape[1] != expected:
            raise ValueError(
                f"The probe takes {weight.shape[1]} features but n_last_blocks={model.config.n_last_blocks}, "
                f"avgpool_patchtokens={model.config.avgpool_patchtokens} give {expected} (hidden size "
                f"{model.config.hidden_size}); pass the n_last_blocks / avgpool_patchtokens it was trained with."
            )
        with torch.no_grad():
            model.classifier.weight.copy_(weight)
            model.classifier.bias.copy_(bias)
        return model.eval()


__all__ = [
    "backbone_features",
    "build_backbone",
    "DinoBackbone",
    "DinoBackboneWithHead",
    "DinoCenter",
    "DinoForImageClassification",
    "DinoForSelfDistillation",
    "DinoHead",
    "DinoLoss",
    "DinoLossOutput",
    "DinoModelOutput",
    "DinoPreTrainedModel",
    "DinoSelfDistillationOutput",
    "DinoViTModel",
    "DinoWeightNormLinear",
    "MissingWeightsError",
]
