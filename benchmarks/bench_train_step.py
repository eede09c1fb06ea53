# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of the complete DINO training step, exactly as the training loop runs it.

The model, fused AdamW, `accelerator.prepare` and `DinoTrainingStep` come from `build_training_step`, the factory the
trainer builds its step with; the step runs with the schedules' values of a real run (learning rate and teacher temperature in their warm-up, so they change every step): teacher
forward on the global crops, student forward and backward on all crops, loss and center update, clipping,
optimizer step, teacher EMA. The crops are synthetic, already augmented and generated once on the device (or, with
`--data`, produced by the real data pipeline: decoding in DataLoader workers + `DinoMultiCropAugmentation` on the
device).

Reports images/s, ms/step (median and mean, CUDA events on GPU), peak memory, the FLOPs of one step per image
(`torch.utils.flop_counter.FlopCounterMode` over the same forward and backward, on the meta device) and the model
FLOP utilisation against a peak (`--peak_tflops`, else known from the GPU's name).

Run from the repository root:

    python benchmarks/bench_train_step.py --preset vits16-b128 --compile blocks --json vits16-b128.json
    python benchmarks/bench_train_step.py --preset tiny-cpu            # seconds on a CPU
    python benchmarks/bench_train_step.py --preset vits16-b64 --data embedded --num_workers 8

Presets (2 x 224 + 10 x 96 crops, out_dim 65536 unless noted): vits16-b64, vits16-b128, vitb16-b64, tiny-cpu
(a 2-block width-64 ViT on 2 x 32 + 4 x 16 crops) and auto-cpu (the ResNet-10 `--recipe auto` trains on a small set
on a CPU, 64 images of 2 x 64 + 4 x 32 crops). Every preset value can be overridden by its flag.
`--memory_format contiguous` keeps a ResNet's weights NCHW, to measure what the trainer's channels-last gains:

    python benchmarks/bench_train_step.py --preset auto-cpu --cpu
    python benchmarks/bench_train_step.py --preset auto-cpu --cpu --memory_format contiguous
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from step_measurement import compile_model, compile_stats, count_step_flops, parse_compile_regions  # noqa: E402

from dino_hf.configuration_dino import DinoConfig  # noqa: E402
from dino_hf.modeling_dino import DinoForSelfDistillation  # noqa: E402
from dino_hf.testing_utils import forbid_host_sync, fresh_accelerator, synthetic_crops, tiny_config  # noqa: E402
from dino_hf.training.arguments import DinoDataArguments, DinoModelArguments  # noqa: E402
from dino_hf.training.auto_recipe import DataProfile, MachineProfile, auto_recipe  # noqa: E402
from dino_hf.training.schedules import DinoSchedules  # noqa: E402
from dino_hf.training.step import DinoTrainingStep, build_training_step  # noqa: E402
from dino_hf.training.trainer import build_model_config  # noqa: E402


PRESETS: dict[str, dict[str, Any]] = {
    "vits16-b64": {"arch": "vit_small", "patch_size": 16, "batch_size": 64},
    "vits16-b128": {"arch": "vit_small", "patch_size": 16, "batch_size": 128},
    "vitb16-b64": {"arch": "vit_base", "patch_size": 16, "batch_size": 64},
    "tiny-cpu": {
        "arch": "tiny",
        "patch_size": 8,
        "batch_size": 8,
        "global_size": 32,
        "local_size": 16,
        "local_crops": 4,
        "out_dim": 1024,
        "steps": 5,
        "warmup": 2,
        # Too small to gain from threads; on a shared machine OpenMP threads waiting for each other cost 100x.
        "threads": 1,
    },
    # The small-data network of `--recipe auto` on a 2-core CPU (a ResNet-10, BatchNorm head; 2 x 64 + 4 x 32 crops).
    "auto-cpu": {
        "arch": "auto",
        "patch_size": 16,
        "batch_size": 64,
        "global_size": 64,
        "local_size": 32,
        "local_crops": 4,
        "out_dim": 1024,
        "drop_path_rate": 0.0,
        "steps": 20,
        "warmup": 3,
    },
}
DEFAULTS: dict[str, Any] = {
    "arch": "vit_small",
    "patch_size": 16,
    "batch_size": 64,
    "global_crops": 2,
    "local_crops": 10,
    "global_size": 224,
    "local_size": 96,
    "out_dim": 65536,
    "drop_path_rate": 0.1,
    "steps": 20,
    "warmup": 5,
    "threads": None,
}
# What the results record of the arguments.
CONFIG_KEYS = (
    "arch",
    "patch_size",
    "batch_size",
    "global_crops",
    "local_crops",
    "global_size",
    "local_size",
    "out_dim",
    "drop_path_rate",
    "mixed_precision",
    "attn_implementation",
    "compile",
    "compile_mode",
    "compile_backend",
    "gradient_checkpointing",
    "memory_format",
    "clip_grad",
    "clip_grad_mode",
    "steps",
    "warmup",
    "threads",
    "data",
)

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (without sparsity), matched against the device name in order.
KNOWN_PEAK_TFLOPS: list[tuple[str, float, str]] = [
    ("H200", 989.4, "H200 dense bf16, datasheet"),
    ("H100 PCIe", 756.0, "H100 PCIe dense bf16, datasheet"),
    ("H100 NVL", 835.0, "H100 NVL dense bf16, datasheet"),
    ("H100", 989.4, "H100 SXM dense bf16, datasheet"),
    ("A100", 312.0, "A100 dense bf16, datasheet"),
]


# ---------------------------------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vits16-b64")
    parser.add_argument(
        "--arch",
        choices=["tiny", "auto", "vit_tiny", "vit_small", "vit_base"],
        help="tiny: the tests' ViT; auto: the network of --recipe auto on a small set and a CPU",
    )
    parser.add_argument("--patch_size", type=int)
    parser.add_argument("--batch_size", type=int, help="images per step (per device)")
    parser.add_argument("--global_crops", type=int)
    parser.add_argument("--local_crops", type=int)
    parser.add_argument("--global_size", type=int)
    parser.add_argument("--local_size", type=int)
    parser.add_argument("--out_dim", type=int)
    parser.add_argument("--drop_path_rate", type=float)
    parser.add_argument("--steps", type=int, help="timed steps")
    parser.add_argument("--warmup", type=int, help="untimed steps first (compilation happens there)")
    parser.add_argument(
        "--mixed_precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on CUDA, no (float32) on the CPU",
    )
    parser.add_argument("--attn_implementation", default="sdpa", help="sdpa, eager, flash_attention_2...")
    parser.add_argument(
        "--compile",
        default="none",
        help="regions to torch.compile: none, blocks, all, or a comma list of blocks,heads,loss",
    )
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode (default: None)")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--memory_format",
        choices=["default", "contiguous"],
        default="default",
        help="default: as the trainer (a ResNet channels-last); contiguous: every weight NCHW, to measure the gain",
    )
    parser.add_argument("--clip_grad", type=float, default=3.0)
    parser.add_argument("--clip_grad_mode", choices=["per_parameter", "global"], default="per_parameter")
    parser.add_argument(
        "--forbid_host_sync",
        action="store_true",
        help="run the timed steps under forbid_host_sync (on CUDA: set_sync_debug_mode('error'))",
    )
    parser.add_argument("--peak_tflops", type=float, help="peak for the MFU (default: known from the GPU name)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        metavar="DATASET",
        help="time the full path with the data pipeline on this dataset (load_image_dataset name)",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    for key, value in {**DEFAULTS, **PRESETS[args.preset]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.compile_regions = parse_compile_regions(args.compile)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0.")
    return args


def build_config(args: argparse.Namespace) -> DinoConfig:
    overrides = {
        "image_size": args.global_size,
        "out_dim": args.out_dim,
        "drop_path_rate": args.drop_path_rate,
    }
    if args.arch == "tiny":
        return tiny_config(patch_size=args.patch_size, **overrides)  # the tests' 2-block, width-64 ViT
    if args.arch == "auto":
        return auto_recipe_config(args.global_size, args.out_dim)
    return DinoConfig.from_preset(args.arch, patch_size=args.patch_size, **overrides)


def auto_recipe_config(global_size: int, out_dim: int) -> DinoConfig:
    """The `DinoConfig` that `--recipe auto` trains on a small labelled grayscale set on a 2-core CPU, built from the
    recipe's own flags (so the benchmark follows the recipe)."""
    data = DataProfile(num_images=3000, image_side=28, color=False, labelled=True)
    flags = {c.flag: c.value for c in auto_recipe(data, MachineProfile("cpu", 1, 2), time_budget_minutes=8)}
    model_args = DinoModelArguments(
        arch=flags["arch"],
        config_overrides=flags["config_overrides"],
        out_dim=out_dim,
        use_bn_in_head=flags["use_bn_in_head"],
    )
    return build_model_config(model_args, DinoDataArguments(global_crops_size=global_size))


def flops_per_image(args: argparse.Namespace, config: DinoConfig) -> float:
    """FLOPs of one step per image: the step's forward and backward for one image's crops, counted on the meta device
    (no memory, no device time; every operation is linear in the batch). Without gradient checkpointing's
    recomputation: model FLOPs, the numerator of MFU."""
    config = copy.deepcopy(config)
    config._attn_implementation = "sdpa"  # the same FLOPs as any attention kernel, and it runs on meta tensors
    with torch.device("meta"):
        model = DinoForSelfDistillation(config).train()
        global_crops = torch.empty(args.global_crops, 3, args.global_size, args.global_size)
        local_crops = None
        if args.local_crops:
            local_crops = torch.empty(args.local_crops, 3, args.local_size, args.local_size)
    return float(count_step_flops(model, global_crops, local_crops, num_global_crops=args.global_crops))


def peak_tflops(args: argparse.Namespace, device: torch.device) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak_tflops"
    if device.type != "cuda":
        return None, "no known peak for this device (pass --peak_tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value, source in KNOWN_PEAK_TFLOPS:
        if key in name:
            return value, source
    return None, f"no known peak for {name!r} (pass --peak_tflops)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    import accelerate
    import transformers

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_type": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepTimer:
    """Per-step times without a host synchronisation per step: CUDA events on GPU (read after the loop)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_ms(self) -> list[float]:
        if self.cuda:
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000.0 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model and the step as the training loop does, warm up, time `args.steps` steps; return the results."""
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = fresh_accelerator(args.mixed_precision, cpu=args.cpu)
    device = accelerator.device
    torch.manual_seed(args.seed)
    config = build_config(args)
    config._attn_implementation = args.attn_implementation
    # The recipe's learning rate scaling; the values do not change the speed.
    schedules = DinoSchedules(steps_per_epoch=1000, epochs=100, lr=5e-4 * args.batch_size / 256.0)
    setup = build_training_step(
        accelerator,
        DinoForSelfDistillation(config),
        lr=schedules.lr,
        weight_decay=schedules.weight_decay,
        clip_grad=args.clip_grad,
        clip_grad_mode=args.clip_grad_mode,
        num_global_crops=args.global_crops,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    model, train_step = setup.model, setup.step
    if args.memory_format == "contiguous":
        for parameter in setup.dino.parameters():  # before the first step creates the optimizer's state
            parameter.data = parameter.data.contiguous()
    compiled = []
    if args.compile_regions:
        compiled = compile_model(
            setup.dino, args.compile_regions, mode=args.compile_mode, backend=args.compile_backend
        )
    model.train()

    next_crops, data_info = _crop_source(args, device)
    # Start in epoch 1: the last layer is trained (it is frozen in epoch 0) and the teacher temperature and learning
    # rate are still warming up, so both change at every step as in a real run.
    values = [schedules(schedules.steps_per_epoch + index) for index in range(args.warmup + args.steps)]

    first_step_s, warmup_peak = _warm_up(train_step, next_crops, values[: args.warmup], device)

    timer = _StepTimer(device)
    data_s = 0.0
    guard = forbid_host_sync(device) if args.forbid_host_sync else contextlib.nullcontext()
    start = time.perf_counter()
    timer.mark()
    with guard:
        for index in range(args.warmup, args.warmup + args.steps):
            tic = time.perf_counter()
            crops = next_crops()
            data_s += time.perf_counter() - tic
            output = train_step(*crops, values[index]).output
            timer.mark()
    _synchronize(device)
    elapsed = time.perf_counter() - start
    steady_peak = _peak_memory_gib(device)
    loss = float(output.loss.detach())
    if not math.isfinite(loss):
        raise RuntimeError(f"The loss is not finite after the benchmark ({loss}).")

    steps_ms = timer.step_ms()
    images_per_s = args.steps * args.batch_size / elapsed
    flops = flops_per_image(args, config)
    peak, peak_source = peak_tflops(args, device)
    result = {
        "preset": args.preset,
        "config": {key: getattr(args, key) for key in CONFIG_KEYS},
        "mixed_precision": accelerator.mixed_precision,
        "compiled_regions": compiled,
        "compile_stats": compile_stats(),
        "environment": environment(device),
        "images_per_s": images_per_s,
        "ms_per_step_median": statistics.median(steps_ms),
        "ms_per_step_mean": statistics.fmean(steps_ms),
        "ms_per_step": steps_ms,
        "first_step_s": first_step_s,
        # Peak over the whole run (warm-up and compilation included) and over the timed steps only.
        "peak_memory_gib": max(warmup_peak, steady_peak) if steady_peak is not None else None,
        "peak_memory_steady_gib": steady_peak,
        "peak_rss_gib": _peak_rss_gib(),
        "gflop_per_image": flops / 1e9,
        "achieved_tflops": flops * images_per_s / 1e12,
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "mfu": flops * images_per_s / (peak * 1e12) if peak else None,
        "final_loss": loss,
        "data_s": data_s if args.data else None,
        "forbid_host_sync": args.forbid_host_sync,
        **data_info,
    }
    return result


def _warm_up(
    train_step: DinoTrainingStep, next_crops: Callable[[], tuple], values: Sequence[Any], device: torch.device
) -> tuple[float | None, float | None]:
    """Run the warm-up steps (the first compiles, when asked to, and allocates the optimizer state); returns the
    first step's seconds and the peak memory so far, then resets the peak for the timed steps."""
    first_step_s = None
    for index, value in enumerate(values):
        tic = time.perf_counter()
        train_step(*next_crops(), value)
        if index == 0:
            _synchronize(device)
            first_step_s = time.perf_counter() - tic
    _synchronize(device)
    warmup_peak = _peak_memory_gib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return first_step_s, warmup_peak


def _crop_source(args: argparse.Namespace, device: torch.device) -> tuple[Callable[[], tuple], dict[str, Any]]:
    """A function returning the next `(global_crops, local_crops)`: the same synthetic crops every step, or the next
    batch of the data pipeline (copied to the device without blocking, augmented there)."""
    if not args.data:
        crops = synthetic_crops(
            args.batch_size, args.global_crops, args.global_size, args.local_crops, args.local_size, device, args.seed
        )
        return (lambda: crops), {}
    # Only this mode needs the data pipeline (and `datasets`).
    from dino_hf.data import DinoMultiCropAugmentation, MultiCropConfig, build_pretraining_loader, load_image_dataset

    source = load_image_dataset(args.data, split=args.split)
    loader = build_pretraining_loader(
        source, args.batch_size, num_workers=args.num_workers, seed=args.seed, pin_memory=device.type == "cuda"
    )
    augment = DinoMultiCropAugmentation(
        MultiCropConfig(
            global_crops_number=args.global_crops,
            global_crops_size=args.global_size,
            local_crops_number=args.local_crops,
            local_crops_size=args.local_size,
        )
    ).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batches = iter(loader)

    def next_crops() -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = next(batches).to(device, non_blocking=True)
        crops = augment(batch.images, batch.sizes, generator=generator)
        return crops.global_crops, crops.local_crops

    return next_crops, {"dataset": args.data, "num_workers": args.num_workers}


def format_result(result: dict[str, Any]) -> str:
    c = result["config"]
    crops = f"{c['global_crops']}x{c['global_size']}+{c['local_crops']}x{c['local_size']}"
    memory, steady = result["peak_memory_gib"], result["peak_memory_steady_gib"]
    memory_text = (
        f"{memory:.2f} GiB allocated ({steady:.2f} GiB over the timed steps)"
        if memory is not None
        else f"n/a on this device (peak RSS of the process {result['peak_rss_gib']:.2f} GiB)"
    )
    first = result["first_step_s"]
    first_text = f"; first step {first:.1f} s" if first is not None else ""
    mfu = result["mfu"]
    mfu_text = (
        f"{100 * mfu:.1f}% of {result['peak_tflops']:g} TFLOP/s ({result['peak_tflops_source']})"
        if mfu is not None
        else f"n/a: {result['peak_tflops_source']}"
    )
    lines = [
        f"{result['preset']}: {c['arch']}/{c['patch_size']}, batch {c['batch_size']}, crops {crops}, "
        f"out_dim {c['out_dim']}, {result['mixed_precision']}, attention {c['attn_implementation']}, "
        f"compile {','.join(result['compiled_regions']) or 'none'}"
        + (", gradient checkpointing" if c["gradient_checkpointing"] else "")
        + f", clip {c['clip_grad_mode']}"
        + (f", data {c['data']}" if c["data"] else ", synthetic crops"),
        f"  device: {result['environment']['device']} (torch {result['environment']['torch']})",
        f"  images/s: {result['images_per_s']:.1f}   ms/step: median {result['ms_per_step_median']:.2f}, "
        f"mean {result['ms_per_step_mean']:.2f} ({c['steps']} steps after {c['warmup']} warm-up{first_text})",
        f"  peak memory: {memory_text}",
        f"  FLOPs: {result['gflop_per_image']:.2f} GFLOP/image -> {result['achieved_tflops']:.2f} TFLOP/s, "
        f"MFU {mfu_text}",
    ]
    if result.get("data_s") is not None:
        lines.append(
            f"  host time in the data path (waiting for the loader, copy and augmentation launches): "
            f"{result['data_s']:.2f} s of {c['steps']} timed steps"
        )
    if result["forbid_host_sync"]:
        lines.append("  timed steps ran under forbid_host_sync: no host synchronisation")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(format_result(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
