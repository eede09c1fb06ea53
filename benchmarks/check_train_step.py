# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Correctness checks of the fast training step: compiled vs eager, and no host synchronisation.

1. `compare_compiled_to_eager`: two copies of one model, one with `compile_model` regions, run the same gradient
   computation and the same `DinoTrainingStep`s (teacher temperature changing every step); the loss, gradients,
   gradient norms, student and teacher parameters (after the optimizer and the EMA) and the center must agree
   within the precision's tolerance, and the warm compiled step must not recompile.
2. `check_no_host_sync`: `DinoTrainingStep`s inside `forbid_host_sync` (on CUDA `set_sync_debug_mode("error")`).

The models and steps come from `dino_hf.testing_utils.tiny_training_step`, i.e. the trainer's `build_training_step`.
The CPU tests (`benchmarks/tests/test_check_train_step.py`) call these functions with the `aot_eager` backend;
`benchmarks/run_gpu_checks.sh` runs this script on a GPU with inductor, in bf16 and fp16:

    python benchmarks/check_train_step.py --json checks.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from step_measurement import COMPILE_REGIONS, compile_model, compile_stats  # noqa: E402

from dino_hf.configuration_dino import DinoConfig  # noqa: E402
from dino_hf.testing_utils import (  # noqa: E402
    fresh_accelerator,
    relative_difference,
    steps_without_host_sync,
    synthetic_crops,
    tiny_training_step,
    warmup_values,
)


# Relative differences (||a - b|| / ||b|| over all tensors of a kind) allowed between compiled and eager. float32:
# the same mathematics up to reordered reductions. bf16: fused kernels keep float32 where eager rounds every
# intermediate to bf16 (8 bits of mantissa, ~0.4% per rounding).
TOLERANCES = {
    "no": {"loss": 1e-4, "grads": 1e-3, "params": 1e-4},
    "bf16": {"loss": 2e-2, "grads": 5e-2, "params": 2e-2},
}


def check_config(**overrides: Any) -> DinoConfig:
    """A small model with realistic attention heads (64 channels), for checks that must be quick."""
    values = {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "out_dim": 4096,
        "head_hidden_dim": 256,
        "head_bottleneck_dim": 64,
        "drop_path_rate": 0.0,
    }
    values.update(overrides)
    return DinoConfig(**values)


def compare_compiled_to_eager(
    device: str = "cpu",
    mixed_precision: str = "no",
    regions: Sequence[str] = COMPILE_REGIONS,
    backend: str = "inductor",
    steps: int = 3,
    batch_size: int = 4,
    config: DinoConfig | None = None,
    crops: tuple[int, int, int, int] = (2, 64, 4, 32),
) -> dict[str, Any]:
    """Run eager and compiled copies of one model side by side; return the relative differences and whether each is
    within `TOLERANCES[mixed_precision]` (`"passed"`). Stochastic depth is off in `check_config` so that both
    copies compute exactly the same function."""
    accelerator = fresh_accelerator(mixed_precision, cpu=device == "cpu")
    config = config or check_config()
    eager_setup, compiled_setup = (tiny_training_step(accelerator, config) for _ in range(2))
    eager_model, eager, eager_step = eager_setup.model, eager_setup.dino, eager_setup.step
    compiled_model, compiled, compiled_step = compiled_setup.model, compiled_setup.dino, compiled_setup.step
    compile_model(compiled, regions, backend=backend)
    global_crops, local_crops = synthetic_crops(batch_size, *crops, accelerator.device)

    grads, losses = {}, {}
    for name, model, dino in (("eager", eager_model, eager), ("compiled", compiled_model, compiled)):
        temp = torch.full((), 0.04, device=accelerator.device)
        output = model(global_crops, local_crops, teacher_temp=temp, update_center=False, return_logits=False)
        accelerator.backward(output.loss)
        losses[name] = output.loss.detach()
        grads[name] = [p.grad.detach().clone() for p in dino.student.parameters()]
        dino.zero_grad(set_to_none=True)

    step_losses, grad_norms = {"eager": [], "compiled": []}, {"eager": [], "compiled": []}
    graphs_after_first_step = None
    for index in range(steps):
        values = warmup_values(index)
        for name, step in (("eager", eager_step), ("compiled", compiled_step)):
            result = step(global_crops, local_crops, values)
            step_losses[name].append(result.output.loss.detach())
            grad_norms[name].append(result.grad_norm.detach())
        if index == 0:
            graphs_after_first_step = compile_stats()["unique_graphs"]
    recompiled = compile_stats()["unique_graphs"] - graphs_after_first_step

    diffs = {
        "loss": relative_difference([losses["compiled"]], [losses["eager"]]),
        "grads": relative_difference(grads["compiled"], grads["eager"]),
        "step_losses": relative_difference(step_losses["compiled"], step_losses["eager"]),
        "grad_norms": relative_difference(grad_norms["compiled"], grad_norms["eager"]),
        "student": relative_difference(list(compiled.student.parameters()), list(eager.student.parameters())),
        "teacher": relative_difference(list(compiled.teacher.parameters()), list(eager.teacher.parameters())),
        "center": relative_difference([compiled.center.center], [eager.center.center]),
    }
    tolerance = TOLERANCES.get(mixed_precision, TOLERANCES["bf16"])
    kinds = {
        "loss": "loss",
        "step_losses": "loss",
        "grads": "grads",
        "grad_norms": "grads",
        "student": "params",
        "teacher": "params",
        "center": "params",
    }
    failures = [
        f"{key} {value:.3g} > {tolerance[kinds[key]]:g}"
        for key, value in diffs.items()
        if not value <= tolerance[kinds[key]]
    ]
    if recompiled:
        failures.append(f"{recompiled} graphs compiled after the first step")
    return {
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "regions": list(regions),
        "backend": backend,
        "relative_differences": diffs,
        "tolerances": tolerance,
        "graphs_compiled_after_first_step": recompiled,
        "passed": not failures,
        "failures": failures,
    }


def check_no_host_sync(
    device: str = "cpu",
    mixed_precision: str = "no",
    regions: Sequence[str] = (),
    backend: str = "inductor",
    steps: int = 2,
    batch_size: int = 4,
    config: DinoConfig | None = None,
    crops: tuple[int, int, int, int] = (2, 64, 4, 32),
    clip_grad_mode: str = "per_parameter",
    fused: bool | None = True,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """`steps_without_host_sync`: a warm-up step (compilation and lazy initialisation may synchronise), then `steps`
    training steps inside `forbid_host_sync`, with the last layer frozen in one of them. Raises on the first
    synchronisation; returns what ran. `fused=True` uses the fused AdamW (the GPU default) also on the CPU: the CPU's
    foreach AdamW reads its step counters on the host, which is harmless there but would be flagged."""
    accelerator = accelerator or fresh_accelerator(mixed_precision, cpu=device == "cpu")
    config = config or check_config(drop_path_rate=0.1)
    setup = tiny_training_step(accelerator, config, clip_grad_mode=clip_grad_mode, fused=fused)
    step = setup.step
    if regions:
        compile_model(setup.dino, regions, backend=backend)
    global_crops, local_crops = synthetic_crops(batch_size, *crops, accelerator.device)
    output = steps_without_host_sync(step, global_crops, local_crops, steps).output
    loss = float(output.loss.detach())
    return {
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "scaler": accelerator.scaler is not None,
        "regions": list(regions),
        "clip_grad_mode": clip_grad_mode,
        "steps": steps,
        "final_loss": loss,
        "passed": bool(torch.isfinite(torch.tensor(loss))),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_precision = "bf16" if args.device != "cpu" else "no"
    results: dict[str, Any] = {}
    checks = {
        f"compiled_vs_eager_{compile_precision}": lambda: compare_compiled_to_eager(
            args.device, compile_precision, COMPILE_REGIONS, args.backend
        ),
        f"no_host_sync_eager_{compile_precision}": lambda: check_no_host_sync(args.device, compile_precision),
        # The compared model's configuration and shapes: its compiled graphs are reused, nothing compiles again.
        # (The benchmark's --forbid_host_sync run covers compiled stochastic depth.)
        f"no_host_sync_compiled_{compile_precision}": lambda: check_no_host_sync(
            args.device, compile_precision, COMPILE_REGIONS, args.backend, config=check_config()
        ),
        "no_host_sync_global_clipping": lambda: check_no_host_sync(
            args.device, compile_precision, clip_grad_mode="global"
        ),
    }
    if args.device != "cpu":
        # fp16 autocast with GradScaler: unscaling, inf checks and the skipped step must not synchronise either.
        checks["no_host_sync_eager_fp16"] = lambda: check_no_host_sync(args.device, "fp16")
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as error:  # report every check, then fail
            results[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        status = "PASS" if results[name]["passed"] else "FAIL"
        details = results[name].get("relative_differences") or results[name].get("error") or ""
        print(f"{status} {name} {details}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
