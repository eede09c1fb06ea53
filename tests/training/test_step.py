"""The training step and its factory: no host synchronisation, clipping, bf16, a non-finite step changes nothing,
gradient accumulation over N micro-batches equals one step on the whole batch."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dino_hf import DinoForSelfDistillation, DinoViTModel
from dino_hf.testing_utils import (
    forbid_host_sync,
    fresh_accelerator,
    relative_difference,
    steps_without_host_sync,
    synthetic_crops,
    tiny_config,
    tiny_training_step,
    warmup_values,
)
from dino_hf.training.step import (
    ACCUMULATION_ENV,
    DinoTrainingStep,
    build_training_step,
    resolve_gradient_accumulation_steps,
)


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
    accelerator = fresh_accelerator("no", cpu=True)
    setup = tiny_training_step(accelerator, tiny_config(drop_path_rate=0.1))
    dino, step = setup.dino, setup.step
    global_crops, local_crops = synthetic_crops(BATCH, *CROPS, accelerator.device)
    first = step(global_crops, local_crops, warmup_values(0))
    assert not first.non_finite  # a good step moves everything
    before = snapshot(dino, step.optimizer)

    if poison == "crop":
        global_crops = global_crops.clone()
        global_crops[0, 0, 0, 0] = float("nan")
    else:  # a finite loss whose gradient is NaN in one parameter
        param = dino.student.backbone.encoder.layer[0].mlp.fc1.weight
        handle = param.register_hook(lambda grad: grad * float("nan"))
    with forbid_host_sync("cpu"):
        bad = step(global_crops, local_crops, warmup_values(1))
    if poison == "gradient":
        handle.remove()
        assert torch.isfinite(bad.output.loss)
    assert bad.non_finite and not torch.isfinite(bad.grad_norm)
    assert_unchanged(before, snapshot(dino, step.optimizer))

    # The run can go on: the next good step updates the model again.
    clean = synthetic_crops(BATCH, *CROPS, accelerator.device)
    assert not step(*clean, warmup_values(2)).non_finite
    after = snapshot(dino, step.optimizer)
    assert not torch.equal(after["model.center.center"], before["model.center.center"])


def micro_batch(crops: torch.Tensor, views: int, batch: int, index: int, size: int) -> torch.Tensor:
    """Images `index*size .. (index+1)*size - 1` of a view-major `(views * batch, ...)` stack, still view-major."""
    return crops.reshape(views, batch, *crops.shape[1:])[:, index * size : (index + 1) * size].flatten(0, 1)


def run_steps(accumulation: int, batches: list, total_batch: int) -> tuple[list, list, dict]:
    accelerator = fresh_accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    setup = tiny_training_step(accelerator, tiny_config())
    dino, step = setup.dino, setup.step
    grads, losses = [], []
    inner = step.optimizer.optimizer
    original = inner.step

    def recording_step(*args, **kwargs):  # the clipped gradients the optimizer receives
        grads.append([p.grad.clone() for p in step.student_params if p.grad is not None])
        return original(*args, **kwargs)

    inner.step = recording_step
    size = total_batch // accumulation
    for index, (global_crops, local_crops) in enumerate(batches):
        values = warmup_values(index)
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
    batches = [synthetic_crops(total_batch, *CROPS, "cpu", seed=seed) for seed in (1, 2)]
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
    accelerator = fresh_accelerator("no", cpu=True)
    setup = tiny_training_step(accelerator, tiny_config(), num_global_crops=3)
    # 3 global views of 2 images: 6 rows; read as 2 views the batch would be 3 and the 4 local rows would not fit.
    global_crops, local_crops = synthetic_crops(2, 3, 32, 2, 16, accelerator.device)
    values = warmup_values(0)
    expected = setup.dino(global_crops, local_crops, values.teacher_temp, num_global_crops=3, update_center=False).loss
    out = setup.step(global_crops, local_crops, values)
    torch.testing.assert_close(out.output.loss, expected)


def test_the_factory_prepares_what_the_step_needs():
    accelerator = fresh_accelerator("no", cpu=True)
    torch.manual_seed(0)
    model = DinoForSelfDistillation(tiny_config())
    setup = build_training_step(
        accelerator, model, lr=0.5, weight_decay=0.1, clip_grad=2.0, clip_grad_mode="global", num_global_crops=2
    )
    assert setup.dino is model and isinstance(setup.step, DinoTrainingStep)
    assert setup.step.model is setup.model and setup.step.optimizer is setup.optimizer and setup.step.clip_grad == 2.0
    # The optimizer covers exactly the student's trainable parameters, weight decay on the first group only.
    groups = setup.optimizer.param_groups
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.student.parameters()}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all(g["lr"] == 0.5 for g in groups)
    assert not _checkpointing(model)
    checkpointed = build_training_step(accelerator, DinoForSelfDistillation(tiny_config()), lr=0.1, weight_decay=0.0,
                                       gradient_checkpointing=True)  # fmt: skip
    assert _checkpointing(checkpointed.dino)


def _checkpointing(model) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


@pytest.mark.parametrize(
    "mixed_precision, clip_grad_mode", [("no", "per_parameter"), ("no", "global"), ("bf16", "per_parameter")]
)
def test_training_step_never_synchronises_with_the_host(mixed_precision, clip_grad_mode):
    accelerator = fresh_accelerator(mixed_precision, cpu=True)
    # Fused AdamW, the GPU default, also on the CPU: the CPU's foreach AdamW reads its step counters on the host.
    setup = tiny_training_step(accelerator, tiny_config(drop_path_rate=0.1), clip_grad_mode=clip_grad_mode, fused=True)
    result = steps_without_host_sync(setup.step, *synthetic_crops(BATCH, *CROPS, accelerator.device))
    assert torch.isfinite(result.output.loss)


def test_fp16_grad_scaler_step_never_synchronises_with_the_host():
    # accelerate enables fp16 autocast and its GradScaler on GPUs only; switch them on by hand to run the same code
    # path on the CPU (fp16 autocast, scaled backward, unscale, clip, fused AdamW skipping non-finite steps).
    accelerator = fresh_accelerator("fp16", cpu=True)
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    setup = tiny_training_step(accelerator, tiny_config(), fused=True)
    result = steps_without_host_sync(setup.step, *synthetic_crops(BATCH, *CROPS, accelerator.device))
    assert torch.isfinite(result.output.loss)
    assert accelerator.scaler.get_scale() <= 2.0**16  # the scaler ran (and backed off if a step overflowed)


@pytest.mark.parametrize("clip_grad_mode", ["per_parameter", "global"])
def test_clipping_inside_the_step(clip_grad_mode):
    accelerator = fresh_accelerator("no", cpu=True)
    max_norm = 1e-3
    step = tiny_training_step(accelerator, tiny_config(), clip_grad_mode=clip_grad_mode, clip_grad=max_norm).step
    seen = {}
    inner = step.optimizer.optimizer  # accelerate's wrapper around the AdamW
    original_step = inner.step

    def recording_step(*args, **kwargs):
        seen["norms"] = torch.stack([p.grad.norm() for p in step.student_params if p.grad is not None])
        return original_step(*args, **kwargs)

    inner.step = recording_step
    crops = synthetic_crops(BATCH, *CROPS, accelerator.device)
    total = step(*crops, warmup_values(0)).grad_norm
    norms = seen["norms"]
    assert total > 100 * max_norm  # the gradients were far above the threshold
    if clip_grad_mode == "per_parameter":
        assert (norms <= max_norm * (1 + 1e-4)).all() and (norms > 0.5 * max_norm).any()
    else:
        torch.testing.assert_close(norms.norm(), torch.tensor(max_norm), rtol=1e-4, atol=0)


class _LogitsAudit(TorchDispatchMode):
    """Records the dtype of every new tensor of shape `(rows, out_dim)` (the full-size logits); views are skipped."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and tuple(out.shape) == self.shape:
            inputs = [a for a in args if isinstance(a, torch.Tensor)]
            if not any(a.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for a in inputs):
                self.dtypes.append((str(func), out.dtype))
        return out


def _forward_backward(mixed_precision, return_logits=False, audit_shape=None):
    accelerator = fresh_accelerator(mixed_precision, cpu=True)
    setup = tiny_training_step(accelerator, tiny_config())
    crops = synthetic_crops(BATCH, *CROPS, accelerator.device)
    audit = _LogitsAudit(audit_shape or (0,))
    with audit:
        output = setup.model(*crops, teacher_temp=torch.tensor(0.04), return_logits=return_logits)
    accelerator.backward(output.loss)
    grads = [p.grad for p in setup.dino.student.parameters()]
    return output, grads, setup.dino, audit.dtypes


def test_bf16_autocast_matches_float32_and_keeps_the_loss_in_float32():
    rows, out_dim = (CROPS[0] + CROPS[2]) * BATCH, tiny_config().out_dim
    reference, reference_grads, _, _ = _forward_backward("no")
    output, grads, dino, logits = _forward_backward("bf16", audit_shape=(rows, out_dim))
    assert output.loss.dtype == torch.float32 and dino.center.center.dtype == torch.float32
    # The backbone and the head's MLP run in bf16: the end-to-end difference is bf16's (the loss itself, given the
    # head outputs, is float32-exact: tests/test_modeling_dino.py).
    assert relative_difference([output.loss], [reference.loss]) < 1e-2
    assert relative_difference(grads, reference_grads) < 5e-2
    # The head's last layer makes float32 logits (DinoConfig.float32_last_layer); the loss makes only the copies it
    # needs (temperature, log-softmax), and no cast copies the full-size logits.
    assert [dtype for _, dtype in logits] == [torch.float32] * len(logits)
    assert len(logits) <= 3, logits
    # Returning float32 logits costs no further copy (accelerate's output conversion has nothing to convert).
    *_, with_logits = _forward_backward("bf16", return_logits=True, audit_shape=(rows, out_dim))
    assert len(with_logits) == len(logits)


def test_cls_features_equal_the_pooled_output_with_their_gradients():
    """The step computes the last block for the [CLS] token only (`get_cls_features`): the same feature and gradients as
    the full output's."""
    model = DinoViTModel(tiny_config(drop_path_rate=0.2, num_hidden_layers=3)).train()
    pixels = torch.randn(4, 3, 32, 24)
    weights = torch.randn(4, model.config.hidden_size)
    params = list(model.parameters())
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        results = []
        for features in (lambda: model(pixels).pooler_output, lambda: model.get_cls_features(pixels)):
            torch.manual_seed(3)  # the same drop-path draws
            out = features()
            results.append((out, torch.autograd.grad((out * weights).sum(), params)))
        (full, full_grads), (cls, cls_grads) = results
        torch.testing.assert_close(cls, full, rtol=1e-5, atol=1e-6)
        assert relative_difference(cls_grads, full_grads) < 1e-5


def test_a_resnet_trains_in_channels_last_with_the_same_numbers_and_saves_contiguous(tmp_path):
    from safetensors.torch import load_file

    from dino_hf.training.checkpointing import load_optimizer_state, save_model_and_optimizer

    resnet = dict(backbone="resnet", resnet_embedding_size=8, resnet_hidden_sizes=[8, 16], resnet_depths=[1, 1])
    # No BatchNorm in the head: a bias before BatchNorm has a zero gradient in exact arithmetic, that AdamW turns
    # into an update of rounding noise's size (the ResNet's convolutions have no bias).
    config = tiny_config(out_dim=32, **resnet)
    torch.manual_seed(0)
    reference = DinoForSelfDistillation(config)
    model = DinoForSelfDistillation(config)
    model.load_state_dict(reference.state_dict())
    setup = build_training_step(fresh_accelerator("no", cpu=True), model, lr=0.01, weight_decay=0.0)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # 1 x 1 kernels are both; the 3 x 3 ones are NHWC only
    expected = build_training_step(fresh_accelerator("no", cpu=True), reference, lr=0.01, weight_decay=0.0)
    for p in reference.parameters():  # the same model kept in the default layout
        p.data = p.data.contiguous()
    for index in range(2):
        global_crops, local_crops = synthetic_crops(4, *CROPS, "cpu", seed=index)
        out = setup.step(global_crops, local_crops, warmup_values(index))
        ref = expected.step(global_crops, local_crops, warmup_values(index))
        torch.testing.assert_close(out.output.loss, ref.output.loss, rtol=1e-5, atol=1e-5)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # A checkpoint round trip restores the same numbers into the channels-last model; the export is contiguous.
    save_model_and_optimizer(tmp_path, model.state_dict(), setup.optimizer.state_dict())
    saved_model, saved_optimizer = load_file(str(tmp_path / "model.safetensors")), load_optimizer_state(tmp_path)
    resumed = DinoForSelfDistillation(config)
    resumed_setup = build_training_step(fresh_accelerator("no", cpu=True), resumed, lr=0.01, weight_decay=0.0)
    resumed.load_state_dict(saved_model)
    resumed_setup.optimizer.load_state_dict(saved_optimizer)
    global_crops, local_crops = synthetic_crops(4, *CROPS, "cpu", seed=2)
    torch.testing.assert_close(
        resumed_setup.step(global_crops, local_crops, warmup_values(2)).output.loss,
        setup.step(global_crops, local_crops, warmup_values(2)).output.loss,
        rtol=0,
        atol=0,
    )
    assert all(p.is_contiguous() for p in model.export_teacher_backbone().parameters())
