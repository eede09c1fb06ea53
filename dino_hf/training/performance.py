"""Training-step performance: regional `torch.compile`, host-synchronisation checks and the FLOP count of a step.

- [`compile_model`] / [`compile_blocks`]: compile the repeated transformer block (one graph shared by every block of
  both networks), and optionally the projection heads and the loss.
- [`forbid_host_sync`]: a context in which anything that would make the host wait for the device raises.
- [`count_step_flops`]: FLOPs of one training step (student forward and backward on all crops, teacher forward),
  the numerator of the model FLOP utilisation.

See `docs/performance.md` for what each piece buys and how it is measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.resnet.modeling_resnet import ResNetBasicLayer, ResNetBottleNeckLayer

from ..modeling_dino import DinoForSelfDistillation, DinoLayer


COMPILE_REGIONS = ("blocks", "heads", "loss")

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
    Gradient checkpointing (`gradient_checkpointing_enable`) works with compiled blocks.

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


def compile_model(
    model: DinoForSelfDistillation,
    regions: Sequence[str] = COMPILE_REGIONS,
    mode: str | None = None,
    *,
    backend: str = "inductor",
    dynamic: bool | None = False,
) -> list[str]:
    """Compile the regions of a [`DinoForSelfDistillation`] that the training step spends its time in.

    - `"blocks"`: every transformer block ([`compile_blocks`]).
    - `"heads"`: student and teacher [`DinoHead`] (fuses the weight normalisation of the last layer and the L2
      normalisation of the bottleneck).
    - `"loss"`: [`DinoLoss`] (fuses the float32 cast, temperatures, centering and both log-softmaxes, forward and
      backward, over the `(views * B, out_dim)` logits). Pass the teacher temperature as a 0-d tensor (as
      `DinoTrainingStep` does) so that its schedule never causes a recompilation.

    The center update (an all-reduce across processes) and the teacher EMA stay eager. Returns the regions compiled.
    """
    unknown = set(regions) - set(COMPILE_REGIONS)
    if unknown:
        raise ValueError(f"Unknown compile regions {sorted(unknown)}; choose from {COMPILE_REGIONS}.")
    options = {"mode": mode, "backend": backend, "dynamic": dynamic}
    if "blocks" in regions:
        compile_blocks(model, **options)
    if "heads" in regions:
        model.student.head.compile(**options)
        model.teacher.head.compile(**options)
    if "loss" in regions:
        model.loss_fn.compile(**options)
    return [region for region in COMPILE_REGIONS if region in regions]


def parse_compile_regions(value: str) -> tuple[str, ...]:
    """`"none"` -> `()`, `"all"` -> every region, else a comma-separated subset of `COMPILE_REGIONS`."""
    value = value.strip().lower()
    if value in ("", "none", "no", "false"):
        return ()
    if value in ("all", "yes", "true"):
        return COMPILE_REGIONS
    regions = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = set(regions) - set(COMPILE_REGIONS)
    if unknown:
        raise ValueError(f"Unknown compile regions {sorted(unknown)}; choose from {COMPILE_REGIONS}, all or none.")
    return regions


# ---------------------------------------------------------------------------------------------------------------------
# Host synchronisation
# ---------------------------------------------------------------------------------------------------------------------


class HostSyncError(RuntimeError):
    """Raised inside [`forbid_host_sync`] by an operation that would make the host wait for the device."""


# Operators that read device memory on the host (`.item()`, `bool(t)`, `float(t)` all reach `_local_scalar_dense`) or
# whose output size depends on the data (the host must read it to allocate the output).
_SYNCING_OPS = {
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.equal,
    torch.ops.aten.nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten._unique2,
    torch.ops.aten.unique_dim,
    torch.ops.aten.unique_consecutive,
    torch.ops.aten.repeat_interleave,
}
_INDEXING_OPS = {torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_}
# Tensor methods that copy to host memory without going through an operator when the tensor is already there.
_SYNCING_METHODS = ("tolist", "numpy", "cpu")


class _HostSyncGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _SYNCING_OPS:
            raise HostSyncError(f"{func} synchronises the host with the device.")
        if packet in _INDEXING_OPS:
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                raise HostSyncError(f"{func} with a boolean mask synchronises the host with the device.")
        return func(*args, **(kwargs or {}))


def _raising_method(name: str):
    def method(self, *args, **kwargs):
        raise HostSyncError(f"Tensor.{name}() synchronises the host with the device.")

    return method


@contextlib.contextmanager
def forbid_host_sync(device: torch.device | str | None = None) -> Iterator[None]:
    """Make every host synchronisation inside the block raise.

    On CUDA this is `torch.cuda.set_sync_debug_mode("error")`, which catches every synchronising CUDA call (and
    works around compiled code). On other devices (the CPU tests) a dispatch mode raises [`HostSyncError`] on the
    operators that would synchronise on a GPU (`.item()`, `bool(tensor)`, `nonzero`, boolean-mask indexing...), and
    `Tensor.tolist`, `.numpy` and `.cpu` raise; run eager code there (a dispatch mode does not see into compiled
    graphs).
    """
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    originals = {name: getattr(torch.Tensor, name) for name in _SYNCING_METHODS}
    try:
        for name in _SYNCING_METHODS:
            setattr(torch.Tensor, name, _raising_method(name))
        with _HostSyncGuard():
            yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------------


def count_step_flops(
    model: DinoForSelfDistillation,
    global_crops: torch.Tensor,
    local_crops: torch.Tensor | None,
    teacher_temp: float | torch.Tensor = 0.04,
    num_global_crops: int = 2,
) -> int:
    """FLOPs of one training step: teacher forward on the global crops, student forward and backward on all crops,
    heads and loss included (optimizer, clipping and EMA are memory-bound and not counted, as usual for MFU).

    Counted with `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and attention; a
    multiply-add is 2 FLOPs). Run it on the eager model (before compiling); it works on the `meta` device, so the
    count of a large configuration needs no memory. The center is not updated and the gradients are dropped
    afterwards, so the model is left as it was (apart from the random state).
    """
    counter = FlopCounterMode(display=False)
    with counter:
        output = model(
            global_crops,
            local_crops,
            teacher_temp=teacher_temp,
            num_global_crops=num_global_crops,
            update_center=False,
            return_logits=False,
        )
        output.loss.backward()
    for param in model.parameters():
        param.grad = None
    return counter.get_total_flops()


__all__ = [
    "COMPILE_REGIONS",
    "HostSyncError",
    "compile_blocks",
    "compile_model",
    "count_step_flops",
    "forbid_host_sync",
    "parse_compile_regions",
]
