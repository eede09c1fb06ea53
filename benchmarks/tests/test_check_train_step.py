"""The compiled-vs-eager and no-host-sync checks of the GPU script, on the CPU with the `aot_eager` backend."""

import json

import check_train_step
from step_measurement import COMPILE_REGIONS

from dino_hf.testing_utils import tiny_config


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


def test_compiled_step_never_synchronises_with_the_host():
    result = check_train_step.check_no_host_sync(
        "cpu", "no", COMPILE_REGIONS, "aot_eager", config=tiny_config(), crops=CROPS, batch_size=BATCH
    )
    assert result["passed"] and result["regions"] == list(COMPILE_REGIONS)


def test_a_failing_check_is_reported_and_fails_the_script(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("synchronised")

    monkeypatch.setattr(check_train_step, "check_no_host_sync", broken)
    monkeypatch.setattr(check_train_step, "compare_compiled_to_eager", lambda *a, **k: {"passed": True})
    assert (
        check_train_step.main(["--device", "cpu", "--backend", "aot_eager", "--json", str(tmp_path / "c.json")]) == 1
    )
    checks = json.loads((tmp_path / "c.json").read_text())
    assert checks["no_host_sync_global_clipping"] == {"passed": False, "error": "RuntimeError: synchronised"}
