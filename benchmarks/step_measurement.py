# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""What the train-step benchmark and checks measure with: compile regions beyond the blocks, the FLOP count of a step
and dynamo's graph counters.

- [`compile_model`]: compile the regions of a `DinoForSelfDistillation` a step spends its time in: the blocks (the
  library's `compile_blocks`, what `--torch_compile` runs), and optionally the heads and the loss.
- [`count_step_flops`]: FLOPs of one training step (student forward and backward on all crops, teacher forward),
  the numerator of the model FLOP utilisation.
- [`compile_stats`]: graphs compiled and graph breaks so far in this process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dino_hf.modeling_dino import DinoForSelfDistillation  # noqa: E402
from dino_hf.training.compilation import compile_blocks  # noqa: E402


COMPILE_REGIONS = ("blocks", "heads", "loss")


def compile_model(
    model: DinoForSelfDistillation,
    regions: Sequence[str] = COMPILE_REGIONS,
    mode: str | None = None,
    *,
    backend: str = "inductor",
    dynamic: bool | None = False,
) -> list[str]:
    """Compile the regions of a `DinoForSelfDistillation` that the training step spends its time in.

    - `"blocks"`: every transformer block (`compile_blocks`, what a run's `--torch_compile` does).
    - `"heads"`: student and teacher `DinoHead` (fuses the weight normalisation of the last layer and the L2
      normalisation of the bottleneck).
    - `"loss"`: `DinoLoss` (fuses the float32 cast, temperatures, centering and both log-softmaxes, forward and
      backward, over the `(views * B, out_dim)` logits). `DinoTrainingStep` passes the teacher temperature as a 0-d
      tensor, so its schedule never causes a recompilation.

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


def compile_stats() -> dict[str, int]:
    """Graphs dynamo compiled in this process and graph breaks: a compiled block should be 1 graph per variant."""
    counters = torch._dynamo.utils.counters
    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
