"""`--time_budget_minutes`: a run that fits a wall-clock budget, with its schedules laid over the steps that fit.

The budget counts from the process start (data preparation included) to the end of the export. The run measures its
own speed after a few warm-up steps, plans how many optimizer steps fit before the deadline (keeping the time the end
of the run needs: the last k-NN evaluation, checkpoint and export), and lays every schedule (learning rate, weight
decay, teacher momentum and temperature, last-layer freezing) over those steps as it would over `--epochs`. While it
measures, the schedules stay at their first value. Every `check_every` steps it compares the projected end with the
deadline and plans again when they drift apart by more than `drift` of the budget (another job took the CPU, say).
A resumed run keeps the plan it started with.

Example (a fake clock: 1 s per step, a 1-minute budget, 4 s of work after the last step):

```python
>>> from dino_hf.training.time_budget import TimeBudget
>>> now = [0.0]
>>> budget = TimeBudget(1.0, started_at=0.0, clock=lambda: now[0], skipped_steps=2, measure_steps=4)
>>> budget.begin(step=0, finish_seconds=4.0)
>>> planned = None
>>> for step in range(1, 60):
...     now[0] += 1.0
...     planned = budget.observe(step) or planned
...     if planned and step >= planned:
...         break
>>> planned, step, budget.plan.schedule_offset
(56, 56, 6)
```
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetPlan:
    """How a budgeted run spends its time.

    Attributes:
        total_steps: optimizer steps of the whole run.
        schedule_offset: steps run while measuring, before the schedules started; schedule position =
            `step - schedule_offset`, and the schedules span `total_steps - schedule_offset` steps.
        seconds_per_step: the measured time per optimizer step (evaluations and checkpoints included).
        finish_seconds: the time kept for the end of the run.
        minutes: the budget.
    """

    total_steps: int
    schedule_offset: int
    seconds_per_step: float
    finish_seconds: float
    minutes: float

    @property
    def schedule_steps(self) -> int:
        return max(1, self.total_steps - self.schedule_offset)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BudgetPlan:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


class TimeBudget:
    """Plans the number of optimizer steps of a run that must end `minutes` after `started_at`.

    Call `begin(step, finish_seconds)` when training starts, then after every optimizer step `observe(step)`: it
    returns the (new) planned total of steps when it plans, else None, and it plans only at `is_decision_step(step)`.
    In a run of many processes each process observes, the main process's answer is shared, and every process passes it
    to `accept(step, total)` (`observe` does so itself for a single process: `accept=True`); the decision steps follow
    from the accepted plans, so all processes meet at the same steps.

    Args:
        minutes: the budget.
        started_at: when the run started (`clock()` time; the process start, so data preparation counts).
        clock: seconds, e.g. `time.time`.
        skipped_steps: warm-up steps not measured (first-call costs: compilation, allocator, workers starting).
        measure_steps: steps measured before the first plan.
        check_every: at most this many steps between checks of the projected end (fewer near the end: a quarter of
            the steps left).
        drift: plan again when the projected end is off the deadline by more than this fraction of the budget.
    """

    def __init__(
        self,
        minutes: float,
        started_at: float,
        *,
        clock: Callable[[], float] = time.time,
        skipped_steps: int = 3,
        measure_steps: int = 10,
        check_every: int = 10,
        drift: float = 0.02,
    ) -> None:
        if minutes <= 0:
            raise ValueError(f"--time_budget_minutes must be positive, got {minutes}.")
        self.minutes, self.clock = minutes, clock
        self.deadline = started_at + 60.0 * minutes
        self.skipped_steps, self.measure_steps = skipped_steps, measure_steps
        self.check_every, self.drift = check_every, drift
        self.plan: BudgetPlan | None = None
        self.finish_seconds = 0.0
        self._mark: tuple[int, float] | None = None
        self._next_decision = skipped_steps
        self._seconds_per_step = 0.0

    def begin(self, step: int, finish_seconds: float) -> None:
        """Training starts at `step`; `finish_seconds` is what the end of the run will take."""
        self.finish_seconds = finish_seconds
        if self.skipped_steps == 0:
            self._mark, self._next_decision = (step, self.clock()), step + self.measure_steps
        else:
            self._next_decision = step + self.skipped_steps
        if self.clock() + finish_seconds >= self.deadline:
            logger.warning(
                "The time budget of %.3g minutes is already spent before training (setup and the k-NN baseline): "
                "the run will stop after its first measured steps. Give a larger --time_budget_minutes.",
                self.minutes,
            )

    def is_decision_step(self, step: int) -> bool:
        return step == self._next_decision

    def observe(self, step: int, accept: bool = True) -> int | None:
        """After optimizer step `step`: the planned total of steps when this step plans (or re-plans), else None.
        `accept=False`: only propose it (the caller shares it and calls `accept`)."""
        if not self.is_decision_step(step):
            return None
        now = self.clock()
        total = None
        if self._mark is None:
            self._mark = (step, now)
        else:
            mark_step, mark_time = self._mark
            self._seconds_per_step = (now - mark_time) / max(step - mark_step, 1)
            total = self._proposal(step, now)
        if accept:
            self.accept(step, total)
        return total

    def _proposal(self, step: int, now: float) -> int | None:
        if self.plan is not None:
            projected_end = now + (self.plan.total_steps - step) * self._seconds_per_step + self.finish_seconds
            if abs(projected_end - self.deadline) <= self.drift * 60.0 * self.minutes:
                return None
        steps_left = math.floor((self.deadline - now - self.finish_seconds) / max(self._seconds_per_step, 1e-9))
        return step + max(0, steps_left)  # a spent budget stops the run now

    def accept(self, step: int, total: int | None) -> None:
        """Take `total` (the main process's proposal at decision step `step`, or None) and set the next decision."""
        if total:
            offset = self.plan.schedule_offset if self.plan is not None else step
            self.plan = BudgetPlan(total, offset, self._seconds_per_step, self.finish_seconds, self.minutes)
        if self.plan is None:
            self._next_decision = step + self.measure_steps
        else:
            self._next_decision = step + max(1, min(self.check_every, (self.plan.total_steps - step) // 4))


def schedule_position(step: float, plan: BudgetPlan | None, measuring: bool) -> float:
    """Where on the schedules a budgeted run is at `step`: 0 while it measures, then the steps since the plan."""
    if measuring:
        return 0.0
    return max(0.0, step - plan.schedule_offset) if plan is not None else step


__all__ = ["BudgetPlan", "TimeBudget", "schedule_position"]
