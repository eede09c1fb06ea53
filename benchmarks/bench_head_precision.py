# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""What half precision in the head's last layer does to DINO's teacher targets and training loss.

The head's last layer turns an L2-normalised bottleneck into cosines with the prototypes; the teacher divides them by
0.04-0.07, so a rounding of the cosines by bf16's 8-bit mantissa (steps of 2^-8 near 1) moves the teacher's logits
by up to ~0.1. The reference ran that layer in fp16 (11-bit mantissa) under `torch.cuda.amp`. This script compares,
on the same weights and the same crops:

- **teacher targets**: a small DINO is trained in float32 on the embedded shapes images, then its teacher's
  centred, sharpened distributions on held-out crops are computed under each precision and compared with float32:
  mean entropy, top-1 prototype agreement, KL(P_float32 || P) and the largest logit error;
- **the loss curve**: the same model trained from the same initialisation on the same crops for `--steps` steps
  under each precision (the full `DinoTrainingStep`: loss, clipping, AdamW, center, EMA); the mean absolute and
  relative loss difference from the float32 run, over all steps and over the last quarter.

Precisions: `float32` (no autocast, the baseline), `bf16` (autocast, float32 last layer: the default,
`DinoConfig.float32_last_layer=True`), `bf16_last_layer` (autocast including the last layer), and `fp16_last_layer`
(fp16 autocast including the last layer: the reference's precision). On a CPU, bf16 and fp16 autocast run through
oneDNN; on a GPU pass `--device cuda` (the GPU script does).

    python benchmarks/bench_head_precision.py --json head_precision.json          # minutes on one CPU core
    python benchmarks/bench_head_precision.py --quick                             # seconds (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from summarize_train_step import head_precision_table  # noqa: E402

from dino_hf.configuration_dino import DinoConfig  # noqa: E402
from dino_hf.data import DinoMultiCropAugmentation  # noqa: E402
from dino_hf.data.synthetic import SHAPES, render_image  # noqa: E402
from dino_hf.modeling_dino import DinoForSelfDistillation  # noqa: E402
from dino_hf.testing_utils import fresh_accelerator  # noqa: E402
from dino_hf.training import DinoDataArguments, DinoModelArguments, DinoTrainingArguments  # noqa: E402
from dino_hf.training.recipes import recipe_defaults  # noqa: E402
from dino_hf.training.schedules import DinoSchedules  # noqa: E402
from dino_hf.training.step import build_training_step  # noqa: E402
from dino_hf.training.trainer import build_schedules, multicrop_config  # noqa: E402


# name -> (autocast dtype or None, float32 last layer)
PRECISIONS: dict[str, tuple[torch.dtype | None, bool]] = {
    "float32": (None, True),
    "bf16": (torch.bfloat16, True),
    "bf16_last_layer": (torch.bfloat16, False),
    "fp16_last_layer": (torch.float16, False),
}


def model_config(out_dim: int) -> DinoConfig:
    """A small ViT (3 blocks of width 128, patch 8 on 32-pixel crops) with the paper's bottleneck of 256 (the width
    that sets the rounding of the cosines), and BatchNorm in the head as the offline demo recipe (`DEMO_RECIPE`): with
    the paper's ViT head a run this short stays at a uniform teacher, whose targets would say nothing."""
    return DinoConfig(
        image_size=32,
        patch_size=8,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        out_dim=out_dim,
        head_hidden_dim=512,
        head_bottleneck_dim=256,
        use_bn_in_head=True,
        drop_path_rate=0.0,
    )


def demo_arguments() -> tuple[DinoDataArguments, DinoTrainingArguments]:
    """The data and optimisation flags of the offline demo recipe (`--recipe demo`, `DEMO_RECIPE`), which learns within
    a few hundred steps: crops of 32 and 16 px with the blur scaled to them, lr 1e-3 after a short warm-up, teacher
    momentum 0.99, teacher temperature 0.04, random prototypes kept frozen."""
    _, data_args, training_args = HfArgumentParser(
        (DinoModelArguments, DinoDataArguments, DinoTrainingArguments)
    ).parse_dict(recipe_defaults("demo"))
    return data_args, training_args


def demo_schedules(training_args: DinoTrainingArguments, steps: int) -> DinoSchedules:
    """The demo recipe's schedules as the trainer builds them (`build_schedules`, the recipe's total batch), with its
    epochs compressed into `steps` steps."""
    steps_per_epoch = max(1, steps // int(training_args.epochs))
    return build_schedules(training_args, steps_per_epoch, total_batch=training_args.per_device_train_batch_size)


def make_crops(num_batches: int, batch_size: int, local_crops: int, seed: int, device: torch.device) -> list:
    """`num_batches` batches of view-major multi-crops (the demo recipe's: 2 x 32 + `local_crops` x 16 px) of embedded
    shapes images."""
    rng = np.random.default_rng(seed)
    data_args, _ = demo_arguments()
    data_args.local_crops_number = local_crops
    augment = DinoMultiCropAugmentation(multicrop_config(data_args)).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        labels = rng.integers(0, len(SHAPES), size=batch_size)
        images = np.stack([np.asarray(render_image(int(label), rng)) for label in labels])
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        sizes = torch.tensor([[images.shape[2], images.shape[3]]] * batch_size, device=device)
        crops = augment(images, sizes, generator=generator)
        batches.append((crops.global_crops, crops.local_crops))
    return batches


def train(precision: str, args: argparse.Namespace, batches: list, device: torch.device) -> dict[str, Any]:
    """Train from the seed's initialisation under `precision`; returns the loss curve and the trained model."""
    dtype, float32_last_layer = PRECISIONS[precision]
    accelerator = fresh_accelerator("no", cpu=device.type == "cpu")
    torch.manual_seed(args.seed)
    config = model_config(args.out_dim)
    config.float32_last_layer = float32_last_layer
    _, training_args = demo_arguments()
    schedules = demo_schedules(training_args, args.steps)
    setup = build_training_step(
        accelerator,
        DinoForSelfDistillation(config),
        lr=schedules.lr,
        weight_decay=schedules.weight_decay,
        optimizer=training_args.optimizer,
        clip_grad=training_args.clip_grad,
        clip_grad_mode=training_args.clip_grad_mode,
    )
    step = setup.step
    losses = []
    start = time.perf_counter()
    for index in range(args.steps):
        global_crops, local_crops = batches[index % len(batches)]
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            result = step(global_crops, local_crops, schedules(index))
        losses.append(result.output.loss.detach())
        if (index + 1) % 50 == 0:
            print(f"{precision}: step {index + 1}, loss {float(losses[-1]):.4f}", flush=True)
    losses = torch.stack(losses).double().cpu()
    return {"losses": losses, "model": setup.dino, "seconds": time.perf_counter() - start}


@torch.no_grad()
def teacher_targets(dino: DinoForSelfDistillation, crops: torch.Tensor, precision: str, temp: float) -> torch.Tensor:
    """The teacher's centred, sharpened log-probabilities `(N, K)` (float32) under `precision`."""
    dtype, float32_last_layer = PRECISIONS[precision]
    dino.teacher.head.float32_last_layer = float32_last_layer
    with torch.autocast(crops.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = dino.teacher(crops)
    dino.teacher.head.float32_last_layer = True
    return torch.log_softmax((logits.float() - dino.center.center) / temp, dim=-1)


def compare_targets(dino: DinoForSelfDistillation, crops: torch.Tensor, temps: tuple[float, ...]) -> dict:
    dino.eval()
    out: dict[str, dict] = {}
    for temp in temps:
        reference = teacher_targets(dino, crops, "float32", temp)
        for precision in PRECISIONS:
            log_probs = teacher_targets(dino, crops, precision, temp)
            probs = log_probs.exp()
            ref_probs = reference.exp()
            out.setdefault(precision, {})[f"temp_{temp}"] = {
                "entropy": float(-(probs * log_probs).sum(-1).mean()),
                "top1_agreement": float((log_probs.argmax(-1) == reference.argmax(-1)).float().mean()),
                "kl_from_float32": float((ref_probs * (reference - log_probs)).sum(-1).mean()),
                "max_logit_error": float(((log_probs - reference) * temp).abs().max()),
            }
    return out


def compare_losses(runs: dict[str, dict]) -> dict[str, dict]:
    reference = runs["float32"]["losses"]
    tail = slice(3 * len(reference) // 4, None)
    out = {}
    for precision, run in runs.items():
        diff = (run["losses"] - reference).abs()
        out[precision] = {
            "first_loss": float(run["losses"][0]),
            "final_loss": float(run["losses"][-1]),
            "mean_abs_difference": float(diff.mean()),
            "mean_relative_difference": float((diff / reference.abs()).mean()),
            "last_quarter_mean_loss": float(run["losses"][tail].mean()),
            "last_quarter_mean_relative_difference": float((diff[tail] / reference[tail].abs()).mean()),
            "seconds": round(run["seconds"], 1),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--local_crops", type=int, default=4)
    parser.add_argument("--out_dim", type=int, default=4096)
    parser.add_argument("--data_batches", type=int, default=50, help="distinct batches of crops, cycled")
    parser.add_argument("--eval_images", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of a tiny run (smoke test)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.data_batches, args.eval_images, args.out_dim, args.batch_size = 6, 2, 16, 512, 4
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    batches = make_crops(args.data_batches, args.batch_size, args.local_crops, args.seed, device)
    runs = {precision: train(precision, args, batches, device) for precision in PRECISIONS}
    held_out = make_crops(1, args.eval_images, 0, args.seed + 1, device)[0][0]
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "teacher_targets": compare_targets(runs["float32"]["model"], held_out, (0.04, 0.07)),
        "loss_curves": compare_losses(runs),
    }
    print(json.dumps(results, indent=2))
    print(head_precision_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
