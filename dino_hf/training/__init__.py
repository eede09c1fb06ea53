"""DINO pretraining: arguments, schedules, optimisation, checkpoints, monitoring, the loop and export."""

from .arguments import DinoDataArguments, DinoModelArguments, DinoTrainingArguments
from .monitoring import CollapseMonitor, NonFiniteLossError
from .recipes import DEMO_RECIPE
from .schedules import DinoSchedules, ScheduleValues


def pretrain(*args, **kwargs):
    """See `dino_hf.training.trainer.pretrain` (imported lazily: it pulls in accelerate and the evaluation code)."""
    from .trainer import pretrain as _pretrain

    return _pretrain(*args, **kwargs)


__all__ = [
    "DEMO_RECIPE",
    "CollapseMonitor",
    "DinoDataArguments",
    "DinoModelArguments",
    "DinoSchedules",
    "DinoTrainingArguments",
    "NonFiniteLossError",
    "ScheduleValues",
    "pretrain",
]
