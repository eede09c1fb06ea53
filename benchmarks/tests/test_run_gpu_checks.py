"""The GPU checks' CPU dry run (`DINO_GPU_CHECKS_CPU=1 bash benchmarks/run_gpu_checks.sh`): every part runs on the tiny
model with `aot_eager` and the script ends with its table, so the checks are ready the day a GPU is lent."""

import os
import sys
from pathlib import Path

from dino_hf.testing_utils import run_process_tree


SCRIPT = Path(__file__).resolve().parents[1] / "run_gpu_checks.sh"
BENCHMARKS = ("vits16-b128-compile-blocks", "vitb16-b64-compile-blocks", "vits16-b128-eager")


def test_cpu_dry_run_runs_every_part_and_ends_with_its_table(tmp_path):
    env = {**os.environ, "DINO_GPU_CHECKS_CPU": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = run_process_tree(["bash", str(SCRIPT)], timeout=570, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "TIMEOUT" not in summary and "SKIPPED" not in summary and "FAILED" not in summary
    table = (tmp_path / "table.md").read_text()
    for name in BENCHMARKS:
        assert f"| {name} | " in table
    assert table.count("- PASS ") == 4 and "- FAIL" not in table  # the four CPU checks
    assert "Head precision (head_precision.json):" in table
    assert summary.rstrip().splitlines()[-1].endswith("s") and "table (" in summary
