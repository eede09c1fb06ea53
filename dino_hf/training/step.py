"""One DINO training step, exactly as the training loop runs it (and as `benchmarks/bench_train_step.py` times it).

teacher forward on the global crops -> student forward on all crops -> loss and center update -> backward ->
(unscale) -> clip -> drop the last layer's gradients while it is frozen -> optimizer step -> teacher EMA.
No host synchronisation happens here: every returned value is a device tensor (`tests/training/test_performance.py`
checks this with `forbid_host_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..modeling_dino import DinoForSelfDistillation, DinoSelfDistillationOutput
from .optimization import (
    cancel_last_layer_gradients,
    clip_gradients_global,
    clip_gradients_per_parameter,
    gradient_norm,
    set_optimizer_values,
)
from .schedules import ScheduleValues


@dataclass
class StepOutput:
    output: DinoSelfDistillationOutput
    grad_norm: torch.Tensor


class DinoTrainingStep:
    """Callable training step over an `accelerator.prepare`d model and optimizer.

    Args:
        accelerator: the run's `Accelerator` (backward, loss scaling).
        model: the prepared model (possibly DDP-wrapped) whose forward computes the loss.
        optimizer: the prepared optimizer over the student's parameters.
        clip_grad: maximum gradient norm; 0 disables clipping.
        clip_grad_mode: `"per_parameter"` (the reference) or `"global"`.
        return_logits: keep the student and teacher logits in `StepOutput.output` (default: only the loss and the
            monitoring scalars, so the `(views * B, out_dim)` logits are freed before the next step).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_grad: float = 3.0,
        clip_grad_mode: str = "per_parameter",
        return_logits: bool = False,
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

    def __call__(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, values: ScheduleValues
    ) -> StepOutput:
        set_optimizer_values(self.optimizer, values.lr, values.weight_decay)
        # The temperature changes every step during its warm-up: as a device tensor (filled by a kernel, no copy from
        # the host) it is a graph input of a compiled loss rather than a constant that would trigger a recompilation.
        teacher_temp = torch.full((), values.teacher_temp, device=global_crops.device)
        output = self.model(global_crops, local_crops, teacher_temp=teacher_temp, return_logits=self.return_logits)
        self.accelerator.backward(output.loss)
        if self.accelerator.scaler is not None:
            self.accelerator.unscale_gradients()
        if self.clip_grad > 0:
            grad_norm = self.clip(self.student_params, self.clip_grad)
        else:
            grad_norm = gradient_norm(self.student_params)
        if values.freeze_last_layer:
            cancel_last_layer_gradients(self.dino.student)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.dino.update_teacher(values.momentum)
        return StepOutput(output=output, grad_norm=grad_norm)
