"""The train-step benchmark on its CPU preset: what it measures and writes."""

import json

import bench_train_step
import pytest


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


def test_three_global_crops_reach_the_step():
    """The step pairs the views as the crops were stacked: with 3 global crops the loss is still finite and the FLOPs
    grow."""
    base = ["--preset", "tiny-cpu", "--cpu", "--steps", "1", "--warmup", "0"]
    two = bench_train_step.main(base)
    three = bench_train_step.main([*base, "--global_crops", "3"])
    assert three["gflop_per_image"] > two["gflop_per_image"]


def test_auto_cpu_preset_times_the_auto_recipes_resnet_in_either_memory_format():
    config = bench_train_step.auto_recipe_config(64, 1024)
    assert config.backbone == "resnet" and config.resnet_hidden_sizes == [32, 64, 128, 256] and config.use_bn_in_head
    base = ["--preset", "auto-cpu", "--cpu", "--batch_size", "4", "--steps", "1", "--warmup", "0"]
    for memory_format in ("default", "contiguous"):
        result = bench_train_step.main([*base, "--memory_format", memory_format])
        assert result["config"]["memory_format"] == memory_format and result["images_per_s"] > 0
