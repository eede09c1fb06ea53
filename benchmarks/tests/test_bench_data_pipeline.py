"""The data-pipeline benchmark's quick mode: every measurement runs and is reported."""

import json

import bench_data_pipeline


def test_quick_run_measures_every_stage(tmp_path):
    results = bench_data_pipeline.main(["--quick", "--workers", "1", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == results
    assert results["decode_only"]["images_per_cpu_second"] > 0
    assert results["reference_pil_crops"]["images_per_cpu_second"] > 0
    (loader,) = results["loader"]
    assert loader["num_workers"] == 1 and loader["images"] == 3 * 16 and loader["images_per_s"] > 0
    assert all(row["images_per_s"] > 0 and row["device"] == "cpu" for row in results["augmentation"])
