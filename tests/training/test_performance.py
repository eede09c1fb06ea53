"""The fast paths of the training step give the plain path's results: compiled vs eager, bf16 vs float32, no host
synchronisation, both clipping modes; the FLOP count; the benchmark's CPU preset.

Compiled paths use the `aot_eager` backend here (dynamo capture, AOTAutograd and the recompilation behaviour, without
minutes of C++ compilation on a CPU); `benchmarks/run_gpu_checks.sh` runs the same checks with inductor on a GPU.
"""

import json

import pytest
import torch
from conftest import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import dino_hf.training.benchmark as bench_train_step
import dino_hf.training.step_checks as check_train_step
from dino_hf import DinoConfig, DinoForSelfDistillation, DinoViTModel
from dino_hf.modeling_dino import DinoDropPath
from dino_hf.training.performance import (
    COMPILE_REGIONS,
    HostSyncError,
    compile_blocks,
    count_step_flops,
    forbid_host_sync,
    parse_compile_regions,
)


BATCH = 2
CROPS = (2, 32, 2, 16)  # 2 global crops at the tiny config's 32 px, 2 local crops at 16 px


def test_compiled_step_matches_eager():
    result = check_train_step.compare_compiled_to_eager(
        "cpu", "no", COMPILE_REGIONS, backend="aot_eager", steps=2, batch_size=BATCH, config=tiny_config(), crops=CROPS
    )
    assert result["passed"], result["failures"]
    # Same aten operations in float32: equal to rounding, far below the check's tolerance.
    assert max(result["relative_differences"].values()) < 1e-6
    assert result["graphs_compiled_after_first_step"] == 0


def test_compiled_blocks_share_one_graph_per_resolution_with_drop_path_and_checkpointing():
    graphs = []
    eager_backend = torch._dynamo.lookup_backend("aot_eager")

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return eager_backend(graph_module, example_inputs)

    accelerator = bench_train_step.make_accelerator("no", cpu=True)
    config = tiny_config(drop_path_rate=0.2, num_hidden_layers=3)
    model, dino, step = check_train_step.build_training(accelerator, config)
    dino.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert compile_blocks(dino, backend=counting_backend) == 6
    crops = bench_train_step.synthetic_crops(BATCH, *CROPS, accelerator.device)
    losses = [step(*crops, check_train_step.schedule_values(0)).output.loss.detach()]
    # Teacher blocks at 32 px (no gradient), student blocks at 32 px and at 16 px: one graph each, whatever the
    # block's drop-path rate (0, 0.1, 0.2) -- no graph break, no recompilation per block.
    assert len(graphs) == 3
    for index in range(1, 4):  # a new teacher temperature, learning rate and drop-path mask every step
        losses.append(step(*crops, check_train_step.schedule_values(index)).output.loss.detach())
    assert len(graphs) == 3
    assert torch.isfinite(torch.stack(losses)).all()


def test_compiled_drop_path_keeps_the_distribution():
    drop = DinoDropPath(0.25).train()
    compiled = torch.compile(drop, backend="aot_eager", dynamic=False)
    hidden = torch.ones(20000, 1, 3)
    out = compiled(hidden)
    kept = out[:, 0, 0] != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))


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
    accelerator = bench_train_step.make_accelerator(mixed_precision, cpu=True)
    model, dino, _ = check_train_step.build_training(accelerator, tiny_config())
    crops = bench_train_step.synthetic_crops(BATCH, *CROPS, accelerator.device)
    audit = _LogitsAudit(audit_shape or (0,))
    with audit:
        output = model(*crops, teacher_temp=torch.tensor(0.04), return_logits=return_logits)
    accelerator.backward(output.loss)
    grads = [p.grad for p in dino.student.parameters()]
    return output, grads, dino, audit.dtypes


def test_bf16_autocast_matches_float32_and_keeps_the_loss_in_float32():
    rows, out_dim = (CROPS[0] + CROPS[2]) * BATCH, tiny_config().out_dim
    reference, reference_grads, _, _ = _forward_backward("no")
    output, grads, dino, logits = _forward_backward("bf16", audit_shape=(rows, out_dim))
    assert output.loss.dtype == torch.float32 and dino.center.center.dtype == torch.float32
    # The backbone and the head's MLP run in bf16: the end-to-end difference is bf16's (the loss itself, given the
    # head outputs, is float32-exact: tests/test_modeling_dino.py).
    assert check_train_step.relative_difference([output.loss], [reference.loss]) < 1e-2
    assert check_train_step.relative_difference(grads, reference_grads) < 5e-2
    # The head's last layer makes float32 logits (DinoConfig.float32_last_layer); the loss makes only the copies it
    # needs (temperature, log-softmax), and no cast copies the full-size logits.
    assert [dtype for _, dtype in logits] == [torch.float32] * len(logits)
    assert len(logits) <= 3, logits
    # Returning float32 logits costs no further copy (accelerate's output conversion has nothing to convert).
    *_, with_logits = _forward_backward("bf16", return_logits=True, audit_shape=(rows, out_dim))
    assert len(with_logits) == len(logits)


def test_host_sync_guard_catches_synchronisations():
    t = torch.ones(3)
    with forbid_host_sync("cpu"):
        for sync in (
            lambda: t.sum().item(),
            lambda: bool(t.sum() > 0),
            lambda: float(t.sum()),
            lambda: t.tolist(),
            lambda: t.numpy(),
            lambda: t.cpu(),
            lambda: t.nonzero(),
            lambda: t[t > 0],
            lambda: torch.equal(t, t),
        ):
            with pytest.raises(HostSyncError):
                sync()
        doubled = (t * 2).sum()  # device work without a synchronisation runs
    assert doubled.item() == 6.0 and t.tolist() == [1.0, 1.0, 1.0]  # and everything is restored afterwards


@pytest.mark.parametrize(
    "mixed_precision, clip_grad_mode", [("no", "per_parameter"), ("no", "global"), ("bf16", "per_parameter")]
)
def test_training_step_never_synchronises_with_the_host(mixed_precision, clip_grad_mode):
    result = check_train_step.check_no_host_sync(
        "cpu",
        mixed_precision,
        config=tiny_config(drop_path_rate=0.1),
        crops=CROPS,
        batch_size=BATCH,
        clip_grad_mode=clip_grad_mode,
    )
    assert result["passed"] and result["steps"] == 2


def test_fp16_grad_scaler_step_never_synchronises_with_the_host():
    # accelerate enables fp16 autocast and its GradScaler on GPUs only; switch them on by hand to run the same code
    # path on the CPU (fp16 autocast, scaled backward, unscale, clip, fused AdamW skipping non-finite steps).
    accelerator = bench_train_step.make_accelerator("fp16", cpu=True)
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    result = check_train_step.check_no_host_sync(
        "cpu", "fp16", config=tiny_config(), crops=CROPS, batch_size=BATCH, accelerator=accelerator
    )
    assert result["passed"] and result["scaler"]
    assert accelerator.scaler.get_scale() <= 2.0**16  # the scaler ran (and backed off if a step overflowed)


@pytest.mark.parametrize("clip_grad_mode", ["per_parameter", "global"])
def test_clipping_inside_the_step(clip_grad_mode):
    accelerator = bench_train_step.make_accelerator("no", cpu=True)
    max_norm = 1e-3
    model, dino, step = check_train_step.build_training(
        accelerator, tiny_config(), clip_grad_mode=clip_grad_mode, clip_grad=max_norm
    )
    seen = {}
    inner = step.optimizer.optimizer  # accelerate's wrapper around the AdamW
    original_step = inner.step

    def recording_step(*args, **kwargs):
        seen["norms"] = torch.stack([p.grad.norm() for p in step.student_params if p.grad is not None])
        return original_step(*args, **kwargs)

    inner.step = recording_step
    crops = bench_train_step.synthetic_crops(BATCH, *CROPS, accelerator.device)
    total = step(*crops, check_train_step.schedule_values(0)).grad_norm
    norms = seen["norms"]
    assert total > 100 * max_norm  # the gradients were far above the threshold
    if clip_grad_mode == "per_parameter":
        assert (norms <= max_norm * (1 + 1e-4)).all() and (norms > 0.5 * max_norm).any()
    else:
        torch.testing.assert_close(norms.norm(), torch.tensor(max_norm), rtol=1e-4, atol=0)


def _full_path_step_flops(model, global_crops, local_crops):
    """FLOPs of the step as the reference computes it: every backbone to its full output, then the heads and loss."""
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            teacher = model.teacher.head(model.teacher.backbone(global_crops).pooler_output)
        features = [model.student.backbone(crops).pooler_output for crops in (global_crops, local_crops)]
        student = model.student.head(torch.cat(features))
        model.loss_fn(student, teacher, model.center.center, 0.04).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def test_flop_count_of_vits16_matches_the_reference_figure():
    """The anchor (123.8 GFLOP per image for ViT-S/16, 2x224 + 10x96) is the full computation with the input gradient
    of the patch convolution; the step computes neither that gradient (the crops need none) nor the last block and
    final LayerNorm for tokens other than [CLS]."""
    config = DinoConfig.from_preset("vit_small", patch_size=16)
    with torch.device("meta"):
        model = DinoForSelfDistillation(config).train()
        global_crops, local_crops = torch.empty(2, 3, 224, 224), torch.empty(10, 3, 96, 96)
    executed = count_step_flops(model, global_crops, local_crops) / 1e9
    global_crops.requires_grad_(True)
    local_crops.requires_grad_(True)
    reference = _full_path_step_flops(model, global_crops, local_crops) / 1e9
    assert reference == pytest.approx(123.8, abs=0.05)
    patch_conv_input_grad = (2 * 2 * 196 + 10 * 2 * 36) * 768 * 384 / 1e9  # 2 FLOPs per multiply-add, per patch
    assert 0.05 < 1 - executed / (reference - patch_conv_input_grad) < 0.08  # the [CLS]-only last block


def test_cls_features_equal_the_pooled_output_with_their_gradients():
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
        assert check_train_step.relative_difference(cls_grads, full_grads) < 1e-5


def test_benchmark_tiny_cpu_preset(tmp_path):
    out = tmp_path / "tiny.json"
    result = bench_train_step.main(
        ["--preset", "tiny-cpu", "--cpu", "--steps", "3", "--warmup", "1", "--json", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["images_per_s"] == pytest.approx(result["images_per_s"]) and result["images_per_s"] > 0
    assert len(saved["ms_per_step"]) == 3 and saved["ms_per_step_median"] > 0
    assert saved["peak_memory_gib"] is None and saved["peak_rss_gib"] > 0  # CPU: no device memory counter
    assert (
        saved["gflop_per_image"] > 0 and saved["mfu"] is None and "pass --peak_tflops" in saved["peak_tflops_source"]
    )
    assert saved["config"]["batch_size"] == 8 and saved["config"]["local_crops"] == 4
    with_peak = bench_train_step.main(
        ["--preset", "tiny-cpu", "--cpu", "--steps", "2", "--warmup", "0", "--peak_tflops", "1.0"]
    )
    assert with_peak["mfu"] == pytest.approx(with_peak["achieved_tflops"] / 1.0)


def test_compile_regions_are_parsed_and_checked():
    assert parse_compile_regions("none") == ()
    assert parse_compile_regions("all") == COMPILE_REGIONS
    assert parse_compile_regions("blocks, loss") == ("blocks", "loss")
    with pytest.raises(ValueError, match="Unknown compile regions"):
        parse_compile_regions("blocks,backbone")


def test_head_precision_benchmark_quick(tmp_path):
    import dino_hf.training.head_precision as bench_head_precision

    results = bench_head_precision.main(["--quick", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == results
    targets, curves = results["teacher_targets"], results["loss_curves"]
    assert set(targets) == set(curves) == set(bench_head_precision.PRECISIONS)
    assert targets["float32"]["temp_0.04"]["top1_agreement"] == 1.0 and curves["float32"]["mean_abs_difference"] == 0
    for precision in ("bf16", "bf16_last_layer", "fp16_last_layer"):  # half precision moves the targets a little
        row = targets[precision]["temp_0.04"]
        assert 0 < row["max_logit_error"] < 0.05 and 0.5 <= row["top1_agreement"] <= 1.0
