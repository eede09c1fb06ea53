"""`--time_budget_minutes`: the planner on a fake clock, then real tiny runs: the wall time, the schedules laid over
the planned steps, and a resumed run keeping its plan."""

import time

import pytest
from test_pretrain import tiny_run

from dino_hf.training import DinoTrainingArguments, pretrain
from dino_hf.training import checkpointing as ckpt
from dino_hf.training.time_budget import BudgetPlan, TimeBudget, schedule_position


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_steps(budget, clock, seconds_per_step, last_step=10_000, first_step=1):
    """Steps at `seconds_per_step(step)` until the planned total; returns (planned total, last step, plans made)."""
    planned, plans = None, []
    for step in range(first_step, last_step):
        clock.now += seconds_per_step(step)
        new = budget.observe(step)
        if new is not None:
            planned = new
            plans.append((step, new))
        if planned is not None and step >= planned:
            return planned, step, plans
    raise AssertionError("never reached the planned total")


def test_plan_fills_the_budget_after_measuring():
    clock = FakeClock()
    budget = TimeBudget(2.0, started_at=-10.0, clock=clock, skipped_steps=3, measure_steps=10)  # 10 s of set-up
    budget.begin(0, finish_seconds=6.0)
    planned, last, plans = run_steps(budget, clock, lambda step: 5.0 if step <= 3 else 0.5)  # slow warm-up steps
    # 3 warm-up steps (15 s) + 10 measured (5 s) = 30 s after set-up; (120 - 10 - 20 - 6) / 0.5 = 168 more steps.
    assert plans[0] == (13, 181) and len(plans) == 1
    assert budget.plan == BudgetPlan(181, 13, 0.5, 6.0, 2.0)
    assert clock.now + budget.finish_seconds == pytest.approx(110.0)  # the deadline: started_at + 120 s


def test_replans_when_the_speed_changes_and_not_for_noise():
    clock = FakeClock()
    budget = TimeBudget(1.0, started_at=0.0, clock=clock, skipped_steps=0, measure_steps=10, check_every=10)
    budget.begin(0, finish_seconds=0.0)
    # 1% jitter: no new plan; then the machine gets twice as slow at step 30: plans shrink to meet the deadline.
    planned, last, plans = run_steps(budget, clock, lambda step: (0.2 if step < 30 else 0.4) * (1 + 0.01 * (step % 2)))
    assert plans[0][1] == pytest.approx(300, abs=3)
    assert len(plans) >= 2 and plans[-1][1] < plans[0][1]
    assert clock.now == pytest.approx(60.0, rel=0.05)
    assert budget.plan.schedule_offset == 10  # the schedules' start does not move when the plan does


def test_decisions_come_every_check_and_closer_near_the_end():
    clock = FakeClock()
    budget = TimeBudget(1.0, started_at=0.0, clock=clock, skipped_steps=3, measure_steps=10, check_every=5)
    budget.begin(100, finish_seconds=0.0)  # e.g. resumed at step 100 without a plan
    decisions = []
    for step in range(101, 200):
        clock.now += 1.0
        if budget.is_decision_step(step):
            decisions.append(step)
        budget.observe(step)
        if budget.plan is not None and step >= budget.plan.total_steps:
            break
    assert budget.plan.total_steps == 160 and budget.plan.schedule_offset == 113
    assert decisions[:5] == [103, 113, 118, 123, 128]
    assert decisions[-4:] == [157, 158, 159, 160]  # a quarter of the steps left, at least one


def test_a_budget_spent_before_training_warns_and_stops_after_measuring(caplog):
    clock = FakeClock()
    clock.now = 100.0
    budget = TimeBudget(1.0, started_at=0.0, clock=clock, skipped_steps=0, measure_steps=2)
    budget.begin(0, finish_seconds=1.0)
    assert "already spent" in caplog.text
    assert run_steps(budget, clock, lambda step: 1.0)[:2] == (2, 2)


def test_schedule_position_holds_while_measuring():
    plan = BudgetPlan(100, 13, 0.5, 5.0, 1.0)
    assert schedule_position(7.0, None, measuring=True) == 0.0
    assert schedule_position(20.0, plan, measuring=False) == 7.0
    assert schedule_position(20.0, None, measuring=False) == 20.0


def test_arguments_refuse_a_budget_with_max_steps():
    with pytest.raises(ValueError, match="give one of them"):
        DinoTrainingArguments(output_dir="x", time_budget_minutes=1.0, max_steps=10)
    with pytest.raises(ValueError, match="must be positive"):
        DinoTrainingArguments(output_dir="x", time_budget_minutes=0.0)


def budget_run(tmp_path, cache, minutes, **training):
    return tiny_run(
        tmp_path,
        cache,
        data={"knn_at_start_and_end": True, "knn_train_samples": 40, "knn_eval_samples": 20, "knn_k": 5},
        training={"time_budget_minutes": minutes, "logging_steps": 1, "epochs": 4, "warmup_epochs": 1, **training},
    )


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def test_a_tiny_run_fits_its_budget_and_lays_the_schedules_over_it(tmp_path, embedded_cache):
    started = time.time()
    result = pretrain(*budget_run(tmp_path / "run", embedded_cache, 0.5), started_at=started)
    wall = time.time() - started
    assert abs(wall - 30.0) <= 3.0, f"a 30 s budget took {wall:.1f} s"
    steps = [r for r in result.history if "loss" in r]
    plan = BudgetPlan.from_dict(
        ckpt.load_trainer_state(tmp_path / "run" / f"checkpoint-{result.global_step}")["time_budget"]
    )
    assert plan.total_steps == result.global_step == steps[-1]["step"] >= plan.schedule_offset
    measuring = [r for r in steps if r["step"] <= plan.schedule_offset]
    assert all(r["lr"] == 0.0 and r["epoch"] == 0.0 and r["momentum"] == 0.996 for r in measuring)
    # The schedules end near where they would at the end of --epochs (exactly, unless the last check shortened the
    # plan after the last step's values were taken: a loaded machine): lr near its minimum, momentum near 1.
    last = steps[-1]
    if plan.schedule_steps < 10:  # only on a machine so loaded that a tiny model takes seconds a step
        return
    assert 0.75 * 4 <= last["epoch"] <= 4 * (1 - 1 / plan.schedule_steps) + 1e-4  # the log rounds to 4 decimals
    assert last["lr"] < 0.5 * max(r["lr"] for r in steps) and last["momentum"] > 0.999
    assert result.final_metrics["pixel_knn_top1"] >= 0.0


def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path, embedded_cache):
    first = pretrain(
        *budget_run(tmp_path / "run", embedded_cache, 0.4, checkpointing_steps=3, save_total_limit=100),
        started_at=time.time(),
    )
    planned = [
        path
        for path in ckpt.list_checkpoints(tmp_path / "run")
        if path.name != f"checkpoint-{first.global_step}" and ckpt.load_trainer_state(path)["time_budget"]
    ]
    assert planned, "no checkpoint between the plan and the end"
    middle = planned[-1]
    saved = ckpt.load_trainer_state(middle)
    # Resumed on a "faster machine" with a larger budget: the plan of the first run still decides.
    resumed = pretrain(
        *budget_run(tmp_path / "run", embedded_cache, 5.0, resume_from_checkpoint=str(middle)), started_at=time.time()
    )
    plan = BudgetPlan.from_dict(saved["time_budget"])
    assert resumed.global_step == plan.total_steps  # not re-measured, not re-planned for the new budget
    again = [r for r in resumed.history if "loss" in r and r["step"] > saved["global_step"]]
    assert again and all(
        r["epoch"] == pytest.approx(4 * (r["step"] - 1 - plan.schedule_offset) / plan.schedule_steps, abs=1e-4)
        for r in again
    )
