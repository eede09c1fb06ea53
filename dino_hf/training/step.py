"""One DINO training step, exactly as the training loop runs it (and as `benchmarks/bench_train_step.py` times it).

For each of the N micro-batches of an optimizer step (N = `--gradient_accumulation_steps`, 1 by default): teacher
forward on the global crops -> student forward on all crops -> loss (float32) -> backward of loss / N, the teacher
outputs accumulated into the pending center. Then, once per optimizer step: (unscale) -> clip -> drop the last
layer's gradients while it is frozen -> optimizer step -> center update -> teacher EMA, each guarded by one
device-side flag: when the loss or a gradient is NaN or infinite, the optimizer (parameters and state), the center and
the teacher stay exactly as they were. The flag is read on the host only when the loop logs or saves a checkpoint.

No host synchronisation happens here: every returned value is a device tensor (`tests/training/test_step.py` checks
this with `dino_hf.testing_utils.forbid_host_sync`).

[`build_training_step`] is the one place that assembles a step (model on the device, optimizer, `accelerator.prepare`,
`DinoTrainingStep`): the trainer and every benchmark and check in `benchmarks/` call it, so what they measure is what a
run executes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..modeling_dino import DinoForSelfDistillation, DinoSelfDistillationOutput
from .compilation import compile_blocks
from .optimization import (
    cancel_last_layer_gradients,
    clip_gradients_global,
    clip_gradients_per_parameter,
    create_optimizer,
    gradient_norm,
    set_optimizer_values,
)
from .schedules import ScheduleValues


logger = logging.getLogger(__name__)

ACCUMULATION_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
_MONITORED = ("loss", "teacher_entropy", "kl_divergence", "teacher_mean_entropy", "koleo_loss")


def resolve_gradient_accumulation_steps(flag: int | None) -> int:
    """The number of micro-batches per optimizer step: `--gradient_accumulation_steps`, else accelerate's setting
    (`accelerate config` / `accelerate launch --gradient_accumulation_steps`, passed as
    `ACCELERATE_GRADIENT_ACCUMULATION_STEPS`), else 1. Both given and different is an error, not a silent choice."""
    launcher = os.environ.get(ACCUMULATION_ENV)
    launcher_steps = int(launcher) if launcher else None
    if flag is not None and launcher_steps is not None and flag != launcher_steps:
        raise ValueError(
            f"--gradient_accumulation_steps {flag} differs from accelerate's setting {ACCUMULATION_ENV}="
            f"{launcher_steps} (from `accelerate config` or `accelerate launch`); give one of them, or the same value."
        )
    steps = flag if flag is not None else (launcher_steps or 1)
    if steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be at least 1, got {steps}.")
    return steps


@dataclass
class StepOutput:
    """What one call of [`DinoTrainingStep`] returns.

    Args:
        output: the micro-batch's output; on an optimizer step, the monitoring scalars are the means over its
            micro-batches (with `return_logits`, the logits are the last micro-batch's).
        grad_norm: total gradient norm before clipping (None on a micro-batch that is not an optimizer step).
        optimizer_step: whether this call ended an optimizer step (always, without gradient accumulation).
        non_finite: 0-d bool tensor, True when this optimizer step was skipped because the loss or a gradient was
            NaN or infinite (None on other micro-batches). With fp16 loss scaling, gradient overflow is the scaler's
            business (it skips the step and lowers the scale): only a non-finite loss counts then.
    """

    output: DinoSelfDistillationOutput
    grad_norm: torch.Tensor | None
    optimizer_step: bool = True
    non_finite: torch.Tensor | None = None


class DinoTrainingStep:
    """Callable training step over an `accelerator.prepare`d model and optimizer.

    Args:
        accelerator: the run's `Accelerator` (backward, loss scaling, `gradient_accumulation_steps`).
        model: the prepared model (possibly DDP-wrapped) whose forward computes the loss.
        optimizer: the prepared optimizer over the student's parameters.
        clip_grad: maximum gradient norm; 0 disables clipping.
        clip_grad_mode: `"per_parameter"` (the reference) or `"global"`.
        return_logits: keep the student and teacher logits in `StepOutput.output` (default: only the loss and the
            monitoring scalars, so the `(views * B, out_dim)` logits are freed before the next step).
        num_global_crops: global views per image (the augmentation's `global_crops_number`), so the loss pairs the
            views the way they were stacked.

    Call it once per micro-batch with the schedules' values of the current optimizer step. With N micro-batches of
    B images the loss, gradients, center and teacher equal one step on N * B images (float32; a head with BatchNorm
    normalises each micro-batch with its own statistics, so there they differ).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_grad: float = 3.0,
        clip_grad_mode: str = "per_parameter",
        return_logits: bool = False,
        num_global_crops: int = 2,
    ) -> None:
        if clip_grad_mode not in ("per_parameter", "global"):
            raise ValueError(f"clip_grad_mode must be per_parameter or global, got {clip_grad_mode!r}.")
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.dino: DinoForSelfDistillation = accelerator.unwrap_model(model)
        self.clip_grad = clip_grad
        self.clip = clip_gradients_per_parameter if clip_grad_mode == "per_parameter" else clip_gradients_global
        self.student_params = [p for p in self.dino.student.parameters() if p.requires_grad]
        self.return_logits = return_logits
        self.num_global_crops = num_global_crops
        self.accumulation_steps = accelerator.gradient_accumulation_steps
        self._micro_step = 0
        self._sums: dict[str, torch.Tensor] = {}

    def __call__(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, values: ScheduleValues
    ) -> StepOutput:
        self._micro_step += 1
        last = self._micro_step == self.accumulation_steps
        # The temperature changes every step during its warm-up: as a device tensor (filled by a kernel, no copy from
        # the host) it is a graph input of a compiled loss rather than a constant that would trigger a recompilation.
        teacher_temp = torch.full((), values.teacher_temp, device=global_crops.device)
        # Only the last micro-batch all-reduces the gradients across processes.
        with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
            output = self.model(
                global_crops,
                local_crops,
                teacher_temp=teacher_temp,
                num_global_crops=self.num_global_crops,
                return_logits=self.return_logits,
                commit_center=False,
            )
            self.accelerator.backward(output.loss)  # divided by the accumulation steps
        if self.accumulation_steps > 1:
            output = self._accumulate(output, last)
        if not last:
            return StepOutput(output=output, grad_norm=None, optimizer_step=False)
        self._micro_step = 0
        return self._optimizer_step(output, values)

    def _accumulate(self, output: DinoSelfDistillationOutput, last: bool) -> DinoSelfDistillationOutput:
        """Sum the monitoring scalars over the micro-batches; on the last one, return their means."""
        for name in _MONITORED:
            if getattr(output, name) is None:
                continue  # koleo_loss, when the regulariser is off
            value = getattr(output, name).detach()
            self._sums[name] = self._sums[name] + value if name in self._sums else value
        if not last:
            return output
        means = {name: total / self.accumulation_steps for name, total in self._sums.items()}
        self._sums = {}
        return DinoSelfDistillationOutput(
            **means, student_logits=output.student_logits, teacher_logits=output.teacher_logits
        )

    def _optimizer_step(self, output: DinoSelfDistillationOutput, values: ScheduleValues) -> StepOutput:
        set_optimizer_values(self.optimizer, values.lr, values.weight_decay)
        scaler = self.accelerator.scaler
        if scaler is not None:
            self.accelerator.unscale_gradients()
        if self.clip_grad > 0:
            grad_norm = self.clip(self.student_params, self.clip_grad)
        else:
            grad_norm = gradient_norm(self.student_params)
        loss_finite = torch.isfinite(output.loss.detach())
        # The norm is NaN or infinite as soon as one gradient element is.
        finite = loss_finite & torch.isfinite(grad_norm.to(loss_finite.device))
        if values.freeze_last_layer:
            cancel_last_layer_gradients(self.dino.student)
        self._guarded_optimizer_step(finite, scaler is not None)
        self.optimizer.zero_grad(set_to_none=True)
        self.dino.center.commit(apply=finite)
        self.dino.update_teacher(values.momentum, apply=finite)
        non_finite = ~loss_finite if scaler is not None else ~finite
        return StepOutput(output=output, grad_norm=grad_norm, non_finite=non_finite)

    def _guarded_optimizer_step(self, finite: torch.Tensor, scaled: bool) -> None:
        """`optimizer.step()`, skipped on the device when `finite` is False.

        Fused Adam/AdamW skip their whole update (parameters, moments and step count) when given a non-zero
        `found_inf` tensor, the mechanism `GradScaler` uses; with a scaler, the scaler passes its own (set when
        unscaling found a non-finite gradient). Optimizers without that support read the flag on the host.
        """
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        if scaled:
            self.optimizer.step()
        elif getattr(inner, "_step_supports_amp_scaling", False):
            inner.found_inf = (~finite).float()
            try:
                self.optimizer.step()
            finally:
                del inner.found_inf
        elif bool(finite):  # a host synchronisation, only for non-fused optimizers
            self.optimizer.step()


@dataclass
class TrainingStepSetup:
    """What [`build_training_step`] returns.

    Args:
        model: the prepared model (DDP-wrapped on several processes): what the step calls.
        dino: the same model unwrapped: what checkpoints, exports and evaluations read.
        optimizer: the prepared optimizer over the student's parameters.
        step: the [`DinoTrainingStep`] over `model` and `optimizer`.
    """

    model: torch.nn.Module
    dino: DinoForSelfDistillation
    optimizer: torch.optim.Optimizer
    step: DinoTrainingStep


def build_training_step(
    accelerator: Accelerator,
    model: DinoForSelfDistillation,
    *,
    lr: float,
    weight_decay: float,
    optimizer: str = "adamw",
    fused: bool | None = None,
    clip_grad: float = 3.0,
    clip_grad_mode: str = "per_parameter",
    num_global_crops: int = 2,
    gradient_checkpointing: bool = False,
    torch_compile: bool = False,
) -> TrainingStepSetup:
    """A model ready to train, exactly as a pretraining run prepares it: gradient checkpointing, the device (a ResNet in
    channels-last memory format), synchronised BatchNorm across GPUs, the optimizer over the student
    (`create_optimizer`), `accelerator.prepare`, regional compilation of the blocks, and the [`DinoTrainingStep`].

    Args:
        accelerator: the run's `Accelerator`.
        model: the model to train (random, released weights or a run: `initialization.initial_model`).
        lr, weight_decay: the optimizer's initial values (the step sets the schedules' values every step).
        optimizer, fused: as for `create_optimizer`.
        clip_grad, clip_grad_mode, num_global_crops: as for [`DinoTrainingStep`].
        gradient_checkpointing: recompute the blocks' activations in the backward pass (`--gradient_checkpointing`).
        torch_compile: compile the blocks (`compile_blocks`, `--torch_compile`).
    """
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # A ResNet's convolutions run faster on NHWC weights (oneDNN on CPUs, tensor cores on GPUs; docs/own_images.md
    # measures the CPU): the crops follow the weights' layout, and checkpoints and exports are written contiguous. One
    # pass moves and converts.
    resnet = model.config.backbone == "resnet"
    model.to(accelerator.device, memory_format=torch.channels_last if resnet else torch.preserve_format)
    if model.config.has_batch_norm and accelerator.num_processes > 1:
        if accelerator.device.type in ("cuda", "xpu"):
            # As the reference: BatchNorm statistics (ResNet, head) over the global batch, not each process's.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("SyncBatchNorm needs GPUs: BatchNorm uses per-process batch statistics here.")
    student_optimizer = create_optimizer(model.student, lr, weight_decay, fused=fused, optimizer=optimizer)
    prepared, student_optimizer = accelerator.prepare(model, student_optimizer)
    dino: DinoForSelfDistillation = accelerator.unwrap_model(prepared)
    if torch_compile:
        compile_blocks(dino)
    step = DinoTrainingStep(
        accelerator, prepared, student_optimizer, clip_grad, clip_grad_mode, num_global_crops=num_global_crops
    )
    return TrainingStepSetup(prepared, dino, student_optimizer, step)
