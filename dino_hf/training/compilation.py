"""Regional `torch.compile` of a training run (`--torch_compile`): [`compile_blocks`] compiles the repeated block (one
graph shared by every block of both networks).

The measurement harness (compiling the heads and the loss too, the FLOP count, the host-synchronisation check) lives
in `benchmarks/` and `dino_hf.testing_utils`; `docs/performance.md` says what each piece buys and how it is measured.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.resnet.modeling_resnet import ResNetBasicLayer, ResNetBottleNeckLayer

from ..modeling_dino import DinoLayer


# Graphs one compiled block needs in a run: teacher (no grad) and student (training) blocks, both crop resolutions,
# blocks with and without stochastic depth, evaluation batches (k-NN monitor)... The default limit (8) is per code
# object, so it is shared by all of them; past it dynamo silently falls back to eager for new shapes.
_RECOMPILE_LIMIT = 64


def _raise_recompile_limit(limit: int = _RECOMPILE_LIMIT) -> None:
    config = torch._dynamo.config
    # `cache_size_limit` was renamed `recompile_limit`; recent versions keep the old name as an alias.
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def compile_blocks(
    model: nn.Module, mode: str | None = None, *, backend: str = "inductor", dynamic: bool | None = False
) -> int:
    """Regional compilation: compile every [`DinoLayer`] in `model` (student and teacher backbones, or one backbone),
    or every residual block of a ResNet backbone.

    All blocks run the same code, so they share the compiled graphs; compiling takes one block's time, not the whole
    network's. Graphs are specialised on the input shape (`dynamic=False`): one per crop resolution and batch, and
    one per autograd mode (the teacher runs without gradients). Stochastic-depth rates are graph inputs (see
    `DinoDropPath`), so blocks with different rates share a graph and the step never recompiles once warm.
    Gradient checkpointing (`activation_checkpointing_enable`) works with compiled blocks.

    Args:
        model: a [`DinoForSelfDistillation`], a [`DinoViTModel`], or any module containing `DinoLayer`s.
        mode: `torch.compile` mode (`None`, `"max-autotune-no-cudagraphs"`...). CUDA-graph modes do not suit a
            training step whose blocks run at two resolutions.
        backend: `torch.compile` backend (`"inductor"`; the tests use `"aot_eager"`).
        dynamic: passed to `torch.compile`.

    Returns:
        The number of blocks compiled.
    """
    _raise_recompile_limit()
    block_types = (DinoLayer, ResNetBottleNeckLayer, ResNetBasicLayer)  # a ResNet backbone compiles per residual block
    layers = [module for module in model.modules() if isinstance(module, block_types)]
    for layer in layers:
        layer.compile(mode=mode, backend=backend, dynamic=dynamic)
    return len(layers)


__all__ = ["compile_blocks"]
