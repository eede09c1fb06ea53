# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Top-k accuracy: the fraction of samples whose reference is among the first `k` ranked predictions.

An `evaluate` metric that loads offline: `evaluate.load("<path to this folder>")`, or
`dino_hf.evaluation.load_metric("top_k_accuracy")`.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = "Top-k accuracy = (samples whose reference is among their k best-ranked classes) / (samples)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per sample, class indices ranked best first (at least `k` of them,
        fewer only when there are fewer classes to rank).
    references (`list` of `int`): true class indices.
    k (`int`, defaults to 5): how many ranked predictions count.
Returns:
    top_k_accuracy (`float`): in [0, 1].
Example:
    >>> metric = evaluate.load("dino_hf/evaluation/metrics/top_k_accuracy")  # from the repository root
    >>> metric.compute(predictions=[[3, 0, 1], [2, 1, 0]], references=[0, 1], k=2)
    {'top_k_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=5):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        hits = [reference in list(ranked)[:k] for ranked, reference in zip(predictions, references)]
        return {"top_k_accuracy": float(np.mean(hits)) if hits else 0.0}
