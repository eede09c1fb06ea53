"""Metric accumulation, non-finite detection and collapse warnings."""

import logging
import math

import torch

from dino_hf.training.monitoring import CollapseMonitor, MetricAccumulator


def test_accumulator_means_and_non_finite():
    acc = MetricAccumulator()
    acc.add(loss=torch.tensor(1.0), teacher_entropy=torch.tensor(2.0))
    acc.add(loss=torch.tensor(3.0), teacher_entropy=torch.tensor(4.0))
    means, non_finite = acc.pop()
    assert means == {"loss": 2.0, "teacher_entropy": 3.0} and not non_finite
    assert acc.pop() == ({}, False)
    acc.add(loss=torch.tensor(float("nan")))
    acc.add(loss=torch.tensor(1.0))
    assert acc.pop()[1]


def test_uniform_collapse_warning(caplog):
    monitor = CollapseMonitor(out_dim=1024, patience=2)
    ln_k = math.log(1024)
    with caplog.at_level(logging.WARNING):
        assert monitor.check(0.5 * ln_k, 3.0, step=10) == []
        assert monitor.check(0.99 * ln_k, 3.0, step=20) == []
        warnings = monitor.check(0.99 * ln_k, 3.0, step=30)
    assert len(warnings) == 1 and "uniform" in warnings[0] and "step 30" in warnings[0]
    assert "uniform" in caplog.text
    # Not repeated while the condition lasts; again after it cleared and came back.
    assert monitor.check(0.99 * ln_k, 3.0, step=40) == []
    monitor.check(0.5 * ln_k, 3.0, step=50)
    monitor.check(0.99 * ln_k, 3.0, step=60)
    assert len(monitor.check(0.99 * ln_k, 3.0, step=70)) == 1


def test_one_hot_collapse_warning():
    monitor = CollapseMonitor(out_dim=1024, patience=1)
    warnings = monitor.check(0.01, 0.05, step=5)
    assert len(warnings) == 1 and "same prototype" in warnings[0]
    healthy = CollapseMonitor(out_dim=1024, patience=1)
    # Sharp per-image distributions spread over many prototypes are healthy.
    assert healthy.check(0.01, math.log(200), step=5) == []
