# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Markdown table of `bench_train_step.py --json` results and `check_train_step.py --json` checks in a folder.

Usage: `python benchmarks/summarize_train_step.py OUT_DIR`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def benchmark_row(name: str, result: dict[str, Any]) -> str:
    c = result["config"]
    mfu = result.get("mfu")
    mfu_text = f"{100 * mfu:.1f}% of {result['peak_tflops']:g}" if mfu is not None else "n/a"
    stats = result.get("compile_stats", {})
    cells = [
        name,
        result["environment"]["device"],
        f"{c['arch']}/{c['patch_size']}",
        str(c["batch_size"]),
        result["mixed_precision"],
        ",".join(result["compiled_regions"]) or "none",
        _number(result["images_per_s"], 1),
        f"{_number(result['ms_per_step_median'], 1)} / {_number(result['ms_per_step_mean'], 1)}",
        _number(result["peak_memory_gib"], 2),
        _number(result["gflop_per_image"], 2),
        mfu_text,
        _number(result.get("first_step_s"), 1),
        f"{stats.get('unique_graphs', 'n/a')} / {stats.get('graph_breaks', 'n/a')}",
    ]
    return "| " + " | ".join(cells) + " |"


def summarize(folder: Path) -> str:
    lines = [
        "| run | device | arch | batch | precision | compiled | images/s | ms/step median / mean | peak GiB "
        "| GFLOP/image | MFU (TFLOP/s peak) | first step s | graphs / breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):  # in the order they ran
        data = json.loads(path.read_text())
        if "images_per_s" in data:
            lines.append(benchmark_row(path.stem, data))
        else:
            for name, check in data.items():
                status = "PASS" if check.get("passed") else "FAIL"
                detail = check.get("relative_differences") or check.get("error") or ""
                checks.append(f"- {status} {name} {detail}")
    return "\n".join(lines + [""] + checks)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
