# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Accuracy: the fraction of predictions equal to their references (an `evaluate` metric that loads offline).

The Hub's `evaluate.load("accuracy")` needs a network connection; this local module has the same inputs and output
and depends on numpy only: `evaluate.load("<path to this folder>")`, or `dino_hf.evaluation.load_metric("accuracy")`.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = "Accuracy = (number of predictions equal to their reference) / (number of predictions)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    normalize (`bool`, defaults to `True`): return the fraction; with `False`, the number of correct predictions.
    sample_weight (`list` of `float`, *optional*): per-sample weights.
Returns:
    accuracy (`float`): in [0, 1] (or a count with `normalize=False`).
Example:
    >>> metric = evaluate.load("dino_hf/evaluation/metrics/accuracy")  # from the repository root
    >>> metric.compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        total = float((correct * weights).sum())
        return {"accuracy": total / float(weights.sum()) if normalize else total}
