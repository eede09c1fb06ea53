"""Schedules against their formulas and against the reference implementation's arrays."""

import math

import pytest
import torch

from dino_hf.training.schedules import DinoSchedules, cosine_schedule, teacher_temperature


def reference_schedules() -> DinoSchedules:
    # The configuration of the reference vectors: 5 epochs of 7 iterations, batch 64.
    return DinoSchedules(
        steps_per_epoch=7,
        epochs=5,
        lr=0.0005 * 64 / 256,
        min_lr=1e-6,
        warmup_epochs=2,
        weight_decay=0.04,
        weight_decay_end=0.4,
        momentum_teacher=0.996,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=3,
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [("lr", "schedule.lr"), ("weight_decay", "schedule.weight_decay"), ("momentum", "schedule.momentum")],
)
def test_schedules_equal_the_reference_arrays(reference, name, key):
    schedules = reference_schedules()
    ours = torch.tensor([getattr(schedules(i), name) for i in range(35)], dtype=torch.float64)
    torch.testing.assert_close(ours, reference[key], rtol=1e-12, atol=1e-15)


def test_teacher_temperature_equals_the_reference_at_every_epoch(reference):
    schedules = reference_schedules()
    ours = torch.tensor([schedules(epoch * 7).teacher_temp for epoch in range(5)], dtype=torch.float64)
    torch.testing.assert_close(ours, reference["schedule.teacher_temp_per_epoch"], rtol=1e-12, atol=1e-15)


def test_cosine_formula():
    total, warmup, base, final = 100, 10, 1.0, 0.1
    for step in range(warmup):
        assert cosine_schedule(step, base, final, total, warmup) == pytest.approx(base * step / (warmup - 1))
    for step in range(warmup, total):
        expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert cosine_schedule(step, base, final, total, warmup) == pytest.approx(expected)
    assert cosine_schedule(total + 5, base, final, total, warmup) == final
    with pytest.raises(ValueError):
        cosine_schedule(0, base, final, total, warmup_steps=total + 1)


def test_teacher_temperature_formula():
    assert teacher_temperature(0.0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(14.5, 0.04, 0.07, 30) == pytest.approx(0.04 + 0.03 * 14.5 / 29)
    assert teacher_temperature(29.0, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(100.0, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(0.0, 0.04, 0.07, 0) == pytest.approx(0.07)


def test_momentum_goes_to_one_and_weight_decay_to_its_end():
    schedules = DinoSchedules(steps_per_epoch=10, epochs=3, momentum_teacher=0.99, warmup_epochs=1)
    last = schedules(29)
    assert 0.99 < last.momentum < 1.0 and schedules(30).momentum == 1.0
    assert schedules(0).weight_decay == pytest.approx(0.04) and schedules(30).weight_decay == pytest.approx(0.4)
    assert all(schedules(i).momentum <= schedules(i + 1).momentum for i in range(30))


def test_frozen_last_layer_during_the_first_epoch():
    schedules = DinoSchedules(steps_per_epoch=10, epochs=3, warmup_epochs=1, freeze_last_layer=1)
    assert [schedules(i).freeze_last_layer for i in (0, 9, 10, 20)] == [True, True, False, False]
