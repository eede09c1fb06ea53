# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""A loud warning when early pretraining batches mix far less than random sampling would.

DINO's center (a running mean over ~10 batches) and its loss both assume batches drawn at random from the dataset.
A source stored class by class and read through a shuffle buffer much smaller than the data gives batches of two
or three classes where random sampling gives dozens. [`BatchDiversityCheck`] watches the first batches of a loader:
it compares the distinct labels per batch (or, without labels, distinct file-name prefixes such as ImageNet's
`n01440764` of `n01440764_10026.JPEG`) with what random batches of the same size would hold, drawn from the label
frequencies of all the batches it watched.

Example:

```python
>>> check = BatchDiversityCheck(num_batches=4)
>>> for label in range(4):  # class-ordered: each batch of 10 holds one label
...     report = check.observe([label] * 10, [])
>>> round(report.observed, 2), round(report.expected, 2), report.biased  # random batches: 3.77 labels
(1.0, 3.77, True)
```
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


logger = logging.getLogger(__name__)

# Below this fraction of random sampling's distinct labels per batch, the order is called biased.
WARN_RATIO = 0.5
# Random batches must be expected to hold at least this many labels for the comparison to mean anything.
_MIN_EXPECTED = 3.0


@dataclass(frozen=True)
class DiversityReport:
    """What the check measured over its window.

    Attributes:
        observed: mean distinct keys (labels or file-name prefixes) per batch.
        expected: mean distinct keys per batch of random sampling from the window's pooled key frequencies (a lower
            bound of the dataset's, since a biased window also sees fewer keys).
        key: "label" or "file-name prefix".
        batches: batches watched.
    """

    observed: float
    expected: float
    key: str
    batches: int

    @property
    def ratio(self) -> float:
        return self.observed / self.expected if self.expected else 1.0

    @property
    def biased(self) -> bool:
        return self.expected >= _MIN_EXPECTED and self.ratio < WARN_RATIO


def file_name_prefix(record_id: str) -> str | None:
    """`"train/00001:17:n01440764_10026.JPEG"` -> `"n01440764"`; None when the name has no non-numeric prefix."""
    parts = record_id.split(":")
    if len(parts) < 3:
        return None
    prefix = re.split(r"[_\-. ]", os.path.basename(parts[-1]))[0]
    return prefix if prefix and not prefix.isdigit() else None


def expected_distinct(counts: Sequence[int], batch_size: int) -> float:
    """Mean number of distinct keys in `batch_size` draws with the frequencies `counts` (with replacement)."""
    total = sum(counts)
    return sum(1.0 - (1.0 - c / total) ** batch_size for c in counts) if total else 0.0


class BatchDiversityCheck:
    """Watches the first `num_batches` batches and keeps a [`DiversityReport`] in `report` (None until then)."""

    def __init__(self, num_batches: int = 32) -> None:
        self.num_batches = num_batches
        self._batches: list[list[str]] = []
        self._key = "label"
        self.report: DiversityReport | None = None

    @property
    def done(self) -> bool:
        return len(self._batches) >= self.num_batches

    def observe(self, labels: Sequence[int], ids: Sequence[str]) -> DiversityReport | None:
        """Add one batch (`labels` -1 where unknown); returns the report once the window is full."""
        if self.done:
            return self.report
        if labels and all(label >= 0 for label in labels):
            keys = [str(label) for label in labels]
        else:
            self._key = "file-name prefix"
            keys = [k for k in map(file_name_prefix, ids) if k is not None]
        if keys:
            self._batches.append(keys)
        if self.done:
            self.report = self._measure()
        return self.report

    def _measure(self) -> DiversityReport:
        pooled = Counter(key for batch in self._batches for key in batch)
        observed = sum(len(set(batch)) for batch in self._batches) / len(self._batches)
        expected = sum(expected_distinct(list(pooled.values()), len(batch)) for batch in self._batches)
        return DiversityReport(observed, expected / len(self._batches), self._key, len(self._batches))


def warn_if_biased(report: DiversityReport, where: str) -> None:
    if report.biased:
        logger.warning(
            "BIASED DATA ORDER in %s: the first %d batches hold %.1f distinct %ss each, random sampling would give "
            "at least %.1f (%.0f%%). DINO's center and loss assume random batches. The source is probably stored "
            "class by class and read through a shuffle buffer much smaller than the data: load it with random access "
            "(streaming=False / --streaming false: one global permutation per epoch), raise the shuffle buffer, or "
            "reshuffle the shards (docs/data.md, 'Mixing').",
            where,
            report.batches,
            report.observed,
            report.key,
            report.expected,
            100 * report.ratio,
        )


__all__ = ["BatchDiversityCheck", "DiversityReport", "expected_distinct", "file_name_prefix", "warn_if_biased"]
