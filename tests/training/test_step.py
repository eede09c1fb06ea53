"""The training step: a non-finite step changes nothing (without a host sync), and gradient accumulation over N
micro-batches equals one step on the whole batch."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import tiny_config

import dino_hf.training.benchmark as bench_train_step
import dino_hf.training.step_checks as check_train_step
from dino_hf.training.performance import forbid_host_sync
from dino_hf.training.step import ACCUMULATION_ENV, DinoTrainingStep, resolve_gradient_accumulation_steps


BATCH = 2
CROPS = (2, 32, 2, 16)


def snapshot(dino, optimizer) -> dict[str, torch.Tensor]:
    """Every tensor a step may change: student, teacher, center, and the optimizer's moments and step counts."""
    state = {f"model.{k}": v.detach().clone() for k, v in dino.state_dict().items()}
    inner = getattr(optimizer, "optimizer", optimizer)
    for index, values in enumerate(inner.state.values()):
        state.update({f"optimizer.{index}.{k}": v.detach().clone() for k, v in values.items()})
    return state


def assert_unchanged(before: dict, after: dict) -> None:
    assert sorted(before) == sorted(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]


@pytest.mark.parametrize("poison", ["crop", "gradient"])
def test_a_non_finite_step_changes_nothing_and_never_syncs(poison):
    accelerator = bench_train_step.make_accelerator("no", cpu=True)
    model, dino, step = check_train_step.build_training(accelerator, tiny_config(drop_path_rate=0.1))
    global_crops, local_crops = bench_train_step.synthetic_crops(BATCH, *CROPS, accelerator.device)
    first = step(global_crops, local_crops, check_train_step.schedule_values(0))
    assert not first.non_finite  # a good step moves everything
    before = snapshot(dino, step.optimizer)

    if poison == "crop":
        global_crops = global_crops.clone()
        global_crops[0, 0, 0, 0] = float("nan")
    else:  # a finite loss whose gradient is NaN in one parameter
        param = dino.student.backbone.encoder.layer[0].mlp.fc1.weight
        handle = param.register_hook(lambda grad: grad * float("nan"))
    with forbid_host_sync("cpu"):
        bad = step(global_crops, local_crops, check_train_step.schedule_values(1))
    if poison == "gradient":
        handle.remove()
        assert torch.isfinite(bad.output.loss)
    assert bad.non_finite and not torch.isfinite(bad.grad_norm)
    assert_unchanged(before, snapshot(dino, step.optimizer))

    # The run can go on: the next good step updates the model again.
    clean = bench_train_step.synthetic_crops(BATCH, *CROPS, accelerator.device)
    assert not step(*clean, check_train_step.schedule_values(2)).non_finite
    after = snapshot(dino, step.optimizer)
    assert not torch.equal(after["model.center.center"], before["model.center.center"])


def make_accumulating_accelerator(steps: int) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True, gradient_accumulation_steps=steps)


def micro_batch(crops: torch.Tensor, views: int, batch: int, index: int, size: int) -> torch.Tensor:
    """Images `index*size .. (index+1)*size - 1` of a view-major `(views * batch, ...)` stack, still view-major."""
    return crops.reshape(views, batch, *crops.shape[1:])[:, index * size : (index + 1) * size].flatten(0, 1)


def run_steps(accumulation: int, batches: list, total_batch: int) -> tuple[list, list, dict]:
    accelerator = make_accumulating_accelerator(accumulation)
    model, dino, step = check_train_step.build_training(accelerator, tiny_config())
    grads, losses = [], []
    inner = step.optimizer.optimizer
    original = inner.step

    def recording_step(*args, **kwargs):  # the clipped gradients the optimizer receives
        grads.append([p.grad.clone() for p in step.student_params if p.grad is not None])
        return original(*args, **kwargs)

    inner.step = recording_step
    size = total_batch // accumulation
    for index, (global_crops, local_crops) in enumerate(batches):
        values = check_train_step.schedule_values(index)
        for micro in range(accumulation):
            out = step(
                micro_batch(global_crops, CROPS[0], total_batch, micro, size),
                micro_batch(local_crops, CROPS[2], total_batch, micro, size),
                values,
            )
            assert out.optimizer_step == (micro == accumulation - 1)
        losses.append(out.output.loss.detach())
    return losses, grads, snapshot(dino, step.optimizer)


def test_gradient_accumulation_equals_one_large_batch():
    total_batch = 4
    batches = [bench_train_step.synthetic_crops(total_batch, *CROPS, "cpu", seed=seed) for seed in (1, 2)]
    one_losses, one_grads, one_state = run_steps(1, batches, total_batch)
    acc_losses, acc_grads, acc_state = run_steps(2, batches, total_batch)
    torch.testing.assert_close(torch.stack(acc_losses), torch.stack(one_losses), rtol=1e-6, atol=1e-6)
    for step_grads, expected in zip(acc_grads, one_grads, strict=True):
        for grad, ref in zip(step_grads, expected, strict=True):
            torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-6)
    # Student, teacher (EMA once per optimizer step), center (from all micro-batches) and AdamW state.
    width = tiny_config().hidden_size
    for name, value in one_state.items():
        actual = acc_state[name]
        if name.startswith("model.student.") and name.endswith("attention.qkv.bias"):
            # The key bias's gradient is zero in exact arithmetic (a softmax ignores a constant per query), so its
            # float32 gradient is rounding noise (< 1e-6, checked above) that AdamW divides by its own size: its
            # update is noise too. Compare the query and value biases.
            actual, value = (torch.cat([t[:width], t[2 * width :]]) for t in (actual, value))
        torch.testing.assert_close(actual, value, rtol=1e-6, atol=1e-6, msg=name)


def test_gradient_accumulation_setting(monkeypatch):
    monkeypatch.delenv(ACCUMULATION_ENV, raising=False)
    assert resolve_gradient_accumulation_steps(None) == 1
    assert resolve_gradient_accumulation_steps(4) == 4
    monkeypatch.setenv(ACCUMULATION_ENV, "8")  # what `accelerate launch` sets from `accelerate config`
    assert resolve_gradient_accumulation_steps(None) == 8
    assert resolve_gradient_accumulation_steps(8) == 8
    with pytest.raises(ValueError, match="differs from accelerate's setting"):
        resolve_gradient_accumulation_steps(4)


def test_global_crops_number_reaches_the_loss():
    accelerator = bench_train_step.make_accelerator("no", cpu=True)
    model, dino, _ = check_train_step.build_training(accelerator, tiny_config())
    step = DinoTrainingStep(accelerator, model, _optimizer(dino), num_global_crops=3)
    # 3 global views of 2 images: 6 rows; read as 2 views the batch would be 3 and the 4 local rows would not fit.
    global_crops, local_crops = bench_train_step.synthetic_crops(2, 3, 32, 2, 16, accelerator.device)
    values = check_train_step.schedule_values(0)
    expected = dino(global_crops, local_crops, values.teacher_temp, num_global_crops=3, update_center=False).loss
    out = step(global_crops, local_crops, values)
    torch.testing.assert_close(out.output.loss, expected)


def _optimizer(dino):
    from dino_hf.training.optimization import create_optimizer

    return create_optimizer(dino.student, lr=1e-3, weight_decay=0.04)
