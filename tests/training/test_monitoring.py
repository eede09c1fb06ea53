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


def test_training_curves_png(tmp_path):
    from PIL import Image

    from dino_hf.training.plots import plot_history

    history = [{"step": s, "loss": 5.0 - 0.1 * s, "teacher_entropy": 3.0, "lr": 1e-3} for s in range(1, 11)]
    history += [{"step": 0, "knn_top1": 0.1}, {"step": 10, "knn_top1": 0.4}]
    path = plot_history(history, tmp_path / "curves.png")
    image = Image.open(path)
    assert image.size == (3 * 420, 2 * 240)  # loss, entropy, lr, k-NN: four panels on two rows
    assert len(set(image.convert("L").getdata())) > 5  # something was drawn
    assert plot_history([{"step": 1}], tmp_path / "none.png") is None
