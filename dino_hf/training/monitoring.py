"""What a user watches during pretraining: running metrics, collapse warnings, and a stop on non-finite losses.

Metrics are summed on the device every step and read back (one host synchronisation) only when they are logged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch


logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss became NaN or infinite; the last checkpoint on disk predates it."""


# The reference's words when its loss is not finite (main_dino.py), then what to change.
NON_FINITE_STOP = "Loss is nan, stopping training."
NON_FINITE_ADVICE = (
    "Things that usually help: a lower --lr or longer --warmup_epochs; keep --clip_grad (3.0); "
    "--mixed_precision bf16 instead of fp16; a lower --teacher_temp (e.g. 0.04) or --warmup_teacher_temp_epochs; "
    "--freeze_last_layer 1 (or more); --norm_last_layer true; check that the inputs are normalised images. "
    "Resume from the last checkpoint with --resume_from_checkpoint latest after changing them."
)


def non_finite_error(first_step: int, last_step: int, output_dir: object) -> NonFiniteLossError:
    """The error that stops a run whose loss or gradients were not finite between two steps."""
    return NonFiniteLossError(
        f"{NON_FINITE_STOP} The loss or the gradients were NaN or infinite between steps {first_step} and "
        f"{last_step}; those updates were skipped (the teacher, center and optimizer state never saw them) and the "
        f"last checkpoint in {output_dir} is untouched. " + NON_FINITE_ADVICE
    )


class MetricAccumulator:
    """Sums per-step scalar tensors on the device; `pop()` averages them with a single transfer to the host.

    The non-finite flag is the training step's (`non_finite=`, a 0-d bool tensor: a skipped step), or else whether the
    loss was finite.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._non_finite: torch.Tensor | None = None

    def add(self, non_finite: torch.Tensor | None = None, **values: torch.Tensor | None) -> None:
        """Add one step's scalars; a `None` value (a metric this run does not compute, e.g. `koleo_loss`) is skipped."""
        values = {name: value for name, value in values.items() if value is not None}
        for name, value in values.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        if non_finite is None and values.get("loss") is not None:
            non_finite = ~torch.isfinite(values["loss"].detach())
        if non_finite is not None:
            self._non_finite = non_finite if self._non_finite is None else self._non_finite | non_finite
        self._count += 1

    def saw_non_finite(self) -> bool:
        """Whether a step since the last `pop()` was not finite (one host synchronisation, e.g. before a checkpoint)."""
        return self._non_finite is not None and bool(self._non_finite)

    def pop(self) -> tuple[dict[str, float], bool]:
        """Mean of each metric since the last call, and whether any loss in that window was not finite."""
        if self._count == 0:
            return {}, False
        names = list(self._sums)
        flag = self._non_finite if self._non_finite is not None else torch.zeros((), dtype=torch.bool)
        stacked = torch.stack([self._sums[n] for n in names] + [flag.float().to(self._sums[names[0]].device)])
        stacked = stacked.cpu().tolist()
        means = {name: value / self._count for name, value in zip(names, stacked[:-1])}
        # A skipped step's gradient norm may be infinite (fp16 overflow, handled by the loss scaler): only the flag
        # and the loss decide.
        non_finite = bool(stacked[-1]) or not math.isfinite(means.get("loss", 0.0))
        self._sums, self._count, self._non_finite = {}, 0, None
        return means, non_finite


@dataclass
class CollapseMonitor:
    """Warns when the teacher collapses.

    - **uniform**: the teacher's distributions approach uniform: mean entropy above `uniform_fraction * ln K`
      (the loss then sits at ln K and the student learns nothing);
    - **one-hot**: every image goes to the same few prototypes: the entropy of the batch-mean teacher distribution
      falls below `ln(min_prototypes)` (exp of it is the effective number of prototypes in use).

    A warning needs `patience` consecutive bad readings, so the first noisy steps do not trigger it, and is repeated
    at most once per kind until the condition clears.
    """

    out_dim: int
    uniform_fraction: float = 0.97
    min_prototypes: float = 2.0
    patience: int = 3
    _streaks: dict[str, int] = field(default_factory=lambda: {"uniform": 0, "one-hot": 0})
    _warned: set = field(default_factory=set)

    def check(self, teacher_entropy: float, teacher_mean_entropy: float, step: int) -> list[str]:
        """Update with one logged reading; returns the warnings issued now (also sent to the logger)."""
        conditions = {
            "uniform": teacher_entropy > self.uniform_fraction * math.log(self.out_dim),
            "one-hot": teacher_mean_entropy < math.log(self.min_prototypes),
        }
        issued = []
        for kind, bad in conditions.items():
            self._streaks[kind] = self._streaks[kind] + 1 if bad else 0
            if not bad:
                self._warned.discard(kind)
            elif self._streaks[kind] >= self.patience and kind not in self._warned:
                self._warned.add(kind)
                issued.append(self._message(kind, teacher_entropy, teacher_mean_entropy, step))
        for message in issued:
            logger.warning(message)
        return issued

    def _message(self, kind: str, entropy: float, mean_entropy: float, step: int) -> str:
        ln_k = math.log(self.out_dim)
        if kind == "uniform":
            return (
                f"Possible collapse at step {step}: the teacher output is close to uniform (entropy {entropy:.3f}, "
                f"ln K = {ln_k:.3f}). The loss cannot fall below ln K in this state. Try a lower --teacher_temp, "
                "a smaller --out_dim for small data, a lower --momentum_teacher for short runs, or more steps."
            )
        return (
            f"Possible collapse at step {step}: the teacher sends every image to the same prototype(s) (batch-mean "
            f"distribution entropy {mean_entropy:.3f}, about {math.exp(mean_entropy):.1f} prototypes in use). "
            "Try a higher --teacher_temp, a larger center momentum, or --norm_last_layer true."
        )
