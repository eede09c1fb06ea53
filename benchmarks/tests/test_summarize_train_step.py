"""The summary of the GPU checks' folder: benchmark rows, checks and head-precision figures; unknown files refused."""

import json
import os

import pytest
from summarize_train_step import summarize


BENCHMARK = {
    "config": {"arch": "tiny", "patch_size": 8, "batch_size": 8},
    "environment": {"device": "cpu"},
    "mixed_precision": "no",
    "compiled_regions": ["blocks"],
    "images_per_s": 250.0,
    "ms_per_step_median": 31.5,
    "ms_per_step_mean": 31.2,
    "peak_memory_gib": None,
    "gflop_per_image": 0.03,
    "mfu": None,
    "first_step_s": 0.1,
    "compile_stats": {"unique_graphs": 3, "graph_breaks": 0},
}
CHECKS = {"compiled_vs_eager_no": {"passed": True, "relative_differences": {"loss": 0.0}}, "sync": {"passed": False}}
TARGETS = {"top1_agreement": 1.0, "kl_from_float32": 6e-05, "max_logit_error": 2e-03}
HEAD_PRECISION = {
    "device": "cpu",
    "torch": "2.13",
    "settings": {"steps": 6},
    "teacher_targets": {"float32": {"temp_0.04": TARGETS}, "bf16": {"temp_0.04": TARGETS}},
    "loss_curves": {"float32": {"mean_relative_difference": 0.0}, "bf16": {"mean_relative_difference": 7e-04}},
}


def _write(folder, files):
    for index, (name, data) in enumerate(files.items()):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(data))
        os.utime(path, (index, index))  # the order the parts ran in


def test_every_kind_of_result_reaches_the_summary(tmp_path):
    _write(tmp_path, {"checks": CHECKS, "head_precision": HEAD_PRECISION, "tiny-eager": BENCHMARK})
    text = summarize(tmp_path)
    assert (
        "| tiny-eager | cpu | tiny/8 | 8 | no | blocks | 250.0 | 31.5 / 31.2 | n/a | 0.03 | n/a | 0.1 | 3 / 0 |"
        in text
    )
    assert "- PASS compiled_vs_eager_no {'loss': 0.0}" in text and "- FAIL sync" in text
    assert "Head precision (head_precision.json):" in text and "bf16: 1.0000 | 6.00e-05 | 2.00e-03 | 7.00e-04" in text


def test_an_unknown_results_file_is_refused_by_name(tmp_path):
    _write(tmp_path, {"stray": {"device": "cpu"}})
    with pytest.raises(ValueError, match="stray.json: not a result"):
        summarize(tmp_path)
