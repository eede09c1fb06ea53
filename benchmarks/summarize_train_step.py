# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Markdown summary of the GPU checks' results in a folder: the `bench_train_step.py --json` table, the
`check_train_step.py --json` checks and the `bench_head_precision.py --json` figures.

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


def check_lines(checks: dict[str, Any]) -> list[str]:
    """One line per check of `check_train_step.py --json`."""
    lines = []
    for name, check in checks.items():
        status = "PASS" if check.get("passed") else "FAIL"
        detail = check.get("relative_differences") or check.get("error") or ""
        lines.append(f"- {status} {name} {detail}")
    return lines


def head_precision_table(results: dict[str, Any]) -> str:
    """One line per precision of `bench_head_precision.py --json` (the figures docs/performance.md quotes)."""
    lines = ["precision: top-1 agreement T=0.04 | KL from float32 | largest cosine error | loss mean rel. diff"]
    for precision, targets in results["teacher_targets"].items():
        row, curve = targets["temp_0.04"], results["loss_curves"][precision]
        lines.append(
            f"{precision}: {row['top1_agreement']:.4f} | {row['kl_from_float32']:.2e} | {row['max_logit_error']:.2e}"
            f" | {curve['mean_relative_difference']:.2e}"
        )
    return "\n".join(lines)


def result_kind(data: Any) -> str:
    """Which script wrote `data`: `"benchmark"`, `"head_precision"` or `"checks"`; a `ValueError` for anything else."""
    if isinstance(data, dict) and "images_per_s" in data:
        return "benchmark"
    if isinstance(data, dict) and "teacher_targets" in data and "loss_curves" in data:
        return "head_precision"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "passed" in v for v in data.values()):
        return "checks"
    raise ValueError("not a result of bench_train_step.py, check_train_step.py or bench_head_precision.py")


def summarize(folder: Path) -> str:
    """The benchmark table, then the checks, then the head-precision figures, of every `*.json` in `folder`."""
    lines = [
        "| run | device | arch | batch | precision | compiled | images/s | ms/step median / mean | peak GiB "
        "| GFLOP/image | MFU (TFLOP/s peak) | first step s | graphs / breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks, precision = [], []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):  # in the order they ran
        data = json.loads(path.read_text())
        try:
            kind = result_kind(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if kind == "benchmark":
            lines.append(benchmark_row(path.stem, data))
        elif kind == "checks":
            checks += check_lines(data)
        else:
            precision += ["", f"Head precision ({path.name}):", "", head_precision_table(data)]
    return "\n".join(lines + [""] + checks + precision)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
