"""The head-precision benchmark: a quick run, and the demo recipe's schedules and crops read from the recipe."""

import json

import bench_head_precision
from summarize_train_step import head_precision_table

from dino_hf.training import DEMO_RECIPE


def test_head_precision_benchmark_quick(tmp_path):
    results = bench_head_precision.main(["--quick", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == results
    targets, curves = results["teacher_targets"], results["loss_curves"]
    assert set(targets) == set(curves) == set(bench_head_precision.PRECISIONS)
    assert targets["float32"]["temp_0.04"]["top1_agreement"] == 1.0 and curves["float32"]["mean_abs_difference"] == 0
    for precision in ("bf16", "bf16_last_layer", "fp16_last_layer"):  # half precision moves the targets a little
        row = targets[precision]["temp_0.04"]
        assert 0 < row["max_logit_error"] < 0.05 and 0.5 <= row["top1_agreement"] <= 1.0
    assert head_precision_table(results).count("\n") == len(bench_head_precision.PRECISIONS)


def test_schedules_and_crops_are_the_demo_recipes():
    _, training_args = bench_head_precision.demo_arguments()
    schedules = bench_head_precision.demo_schedules(training_args, steps=200)
    assert schedules.epochs == DEMO_RECIPE["epochs"] and schedules.steps_per_epoch == 200 // DEMO_RECIPE["epochs"]
    assert schedules.lr == DEMO_RECIPE["lr"] * DEMO_RECIPE["per_device_train_batch_size"] / 256
    assert schedules.momentum_teacher == DEMO_RECIPE["momentum_teacher"]
    assert schedules.teacher_temp == DEMO_RECIPE["teacher_temp"]
    assert schedules.freeze_last_layer == DEMO_RECIPE["freeze_last_layer"]
    global_crops, local_crops = bench_head_precision.make_crops(1, 2, 3, seed=0, device="cpu")[0]
    size = DEMO_RECIPE["global_crops_size"]
    assert global_crops.shape == (2 * 2, 3, size, size)
    assert local_crops.shape[0] == 3 * 2 and local_crops.shape[-1] == DEMO_RECIPE["local_crops_size"]
