"""The paper's per-iteration schedules (learning rate, weight decay, teacher momentum, teacher temperature).

Each schedule is a pure function of the iteration, equal to the reference implementation's precomputed arrays
(`utils.cosine_scheduler` in facebookresearch/dino), so a run can resume at any step without replaying history.

Example:

```python
>>> from dino_hf.training.schedules import DinoSchedules
>>> schedules = DinoSchedules(steps_per_epoch=100, epochs=10, lr=5e-4, warmup_epochs=1)
>>> values = schedules(0)
>>> values.lr, values.momentum
(0.0, 0.996)
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configuration_dino import DinoConfig
from .defaults import field_default


def cosine_schedule(
    step: int,
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
) -> float:
    """Linear warm-up from `start_warmup_value` to `base_value` over `warmup_steps` (both ends included, as
    `np.linspace`), then a half cosine from `base_value` to `final_value` over the remaining steps. Steps past the end
    stay at `final_value`.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}.")
    if step >= total_steps:
        return float(final_value)
    if step < warmup_steps:
        if warmup_steps == 1:
            return float(start_warmup_value)
        return start_warmup_value + (base_value - start_warmup_value) * step / (warmup_steps - 1)
    decay_steps = total_steps - warmup_steps
    progress = (step - warmup_steps) / decay_steps
    return final_value + 0.5 * (base_value - final_value) * (1.0 + math.cos(math.pi * progress))


def teacher_temperature(epoch: float, warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int) -> float:
    """Linear warm-up of the teacher temperature over `warmup_epochs`, then constant.

    The reference evaluates `np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)` once per epoch; this is the
    same line evaluated at the fractional epoch, so it equals the reference at every epoch start and moves smoothly
    within an epoch.
    """
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return float(teacher_temp)
    if warmup_epochs == 1:
        return float(warmup_teacher_temp)
    return warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * min(epoch / (warmup_epochs - 1), 1.0)


@dataclass(frozen=True)
class ScheduleValues:
    """The values of every schedule at one iteration."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    epoch: float
    freeze_last_layer: bool


@dataclass(frozen=True)
class DinoSchedules:
    """All of DINO's schedules, indexed by the global iteration.

    Args:
        steps_per_epoch: optimizer steps per epoch (fractional when a time budget spreads the epochs over the steps
            that fit).
        epochs: length of the schedules in epochs (the cosine reaches its final value at `epochs`).
        lr: peak learning rate, already scaled by the total batch size (`base_lr * total_batch / 256`).
        min_lr: final learning rate.
        warmup_epochs: linear learning-rate warm-up from 0.
        weight_decay, weight_decay_end: cosine from the first to the second.
        momentum_teacher: teacher EMA momentum at the start; cosine to 1.
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: teacher temperature warm-up.
        freeze_last_layer: epochs during which the head's last layer gets no update.
    """

    steps_per_epoch: float
    epochs: int
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = field_default(DinoConfig, "teacher_temp")
    warmup_teacher_temp_epochs: int = 30
    freeze_last_layer: float = 1

    def __post_init__(self):
        if self.steps_per_epoch <= 0 or self.epochs <= 0:
            raise ValueError(
                f"steps_per_epoch and epochs must be positive, got {self.steps_per_epoch}, {self.epochs}."
            )
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}).")

    @property
    def total_steps(self) -> int:
        return round(self.epochs * self.steps_per_epoch)

    def __call__(self, step: float) -> ScheduleValues:
        """The values at iteration `step`; a fractional step (images seen / total batch, after a resume with
        another total batch) lies on the same curves."""
        total = self.total_steps
        epoch = step / self.steps_per_epoch
        return ScheduleValues(
            lr=cosine_schedule(step, self.lr, self.min_lr, total, round(self.warmup_epochs * self.steps_per_epoch)),
            weight_decay=cosine_schedule(step, self.weight_decay, self.weight_decay_end, total),
            momentum=cosine_schedule(step, self.momentum_teacher, 1.0, total),
            teacher_temp=teacher_temperature(
                epoch, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs
            ),
            epoch=epoch,
            freeze_last_layer=epoch < self.freeze_last_layer,
        )
