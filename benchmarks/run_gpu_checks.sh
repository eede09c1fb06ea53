#!/usr/bin/env bash
# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
#
# Every GPU measurement of the training step (docs/performance.md, "Training step") in ONE call on one H100/H200:
#   1. the environment;
#   2. checks (benchmarks/check_train_step.py): compiled (inductor) vs eager in bf16, and no host synchronisation in
#      the step (torch.cuda.set_sync_debug_mode("error")) in bf16 eager and compiled, with global clipping, and in
#      fp16 with GradScaler;
#   2b. precision (benchmarks/bench_head_precision.py): the teacher targets (entropy, top-1 prototype agreement, KL)
#      and 200 training steps of loss under bf16 (float32 last layer, the default), a bf16 last layer and an fp16
#      last layer (the reference's), each against float32, with K = 65536 prototypes;
#   3. the benchmark table (benchmarks/bench_train_step.py), most important first: ViT-S/16 batch 128 compiled,
#      ViT-B/16 batch 64 compiled, ViT-S/16 batch 128 eager, ViT-S/16 batch 64 compiled with the timed steps under
#      set_sync_debug_mode("error"), ViT-S/16 batch 128 with the heads and the loss compiled too.
# Results: $OUT/*.json, $OUT/*.log, $OUT/summary.txt and $OUT/table.md ($OUT defaults to ./gpu_checks_out).
#
# Needs the package's requirements (`pip install -e .` or `make install`; the scripts find `dino_hf` in the checkout).
# Each part has a timeout, and parts that would not fit in BUDGET_S seconds (default 500, for a ~9 minute call) are
# skipped and reported as such. The exit status is 1 when a part failed or timed out, or the table could not be made
# (skipped parts do not count); the table is written in every case.
#
#   bash benchmarks/run_gpu_checks.sh                         # on the GPU machine, from the repository root
#   DINO_GPU_CHECKS_CPU=1 bash benchmarks/run_gpu_checks.sh   # the same logic on a CPU: tiny model, aot_eager (CI,
#                                                             # benchmarks/tests/test_run_gpu_checks.py)

set -u -o pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu_checks_out}"
BUDGET_S="${BUDGET_S:-500}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$SECONDS
PYTHON="${PYTHON:-python}"
FAILED=0

log() { echo "[$((SECONDS - START))s] $*" | tee -a "$SUMMARY"; }

# run_part NAME TIMEOUT_S COMMAND...: run within the remaining budget, keep the log, report the exit status.
run_part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 20)); then
    log "SKIPPED $name: not enough of the ${BUDGET_S}s budget left"
    return
  fi
  ((limit > left)) && limit=$left
  log "START $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  if ((rc == 124 || rc == 137)); then
    log "TIMEOUT $name after ${limit}s"
    FAILED=1
  else
    log "END $name: exit status $rc"
    ((rc == 0)) || FAILED=1
  fi
  # The result lines, without torch's recompilation/graph-break log lines (they stay in the part's log).
  grep -Ev "^\s*$|^[VIWE][0-9]{4} " "$OUT/$name.log" | tail -n 8 | sed 's/^/    /' | tee -a "$SUMMARY"
}

if [[ "${DINO_GPU_CHECKS_CPU:-0}" == 1 ]]; then
  # Logic test on a CPU: every benchmark on the tiny preset, compiled with aot_eager, one thread.
  CHECK_ARGS=(--device cpu --backend aot_eager --threads 1)
  PRECISION_ARGS=(--device cpu --quick)
  bench_args() { echo "--preset tiny-cpu --cpu --compile_backend aot_eager --steps 3 --warmup 1"; }
else
  CHECK_ARGS=()
  PRECISION_ARGS=(--device cuda --out_dim 65536 --batch_size 32 --local_crops 10)
  bench_args() { echo "--preset $1"; }
fi

log "environment"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" - <<'PY'
import importlib.util, platform, torch, transformers, accelerate
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, accelerate {accelerate.__version__}, "
      f"datasets installed: {importlib.util.find_spec('datasets') is not None}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
          f"bf16: {torch.cuda.is_bf16_supported()}, flash SDPA: {torch.backends.cuda.flash_sdp_enabled()}")
else:
    print("no CUDA device")
PY
} 2>&1 | tee "$OUT/environment.txt" | tee -a "$SUMMARY"

run_part checks 150 "$PYTHON" benchmarks/check_train_step.py --json "$OUT/checks.json" ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"}
run_part head-precision 120 "$PYTHON" benchmarks/bench_head_precision.py --json "$OUT/head_precision.json" \
  "${PRECISION_ARGS[@]}"

# NAME PRESET TIMEOUT EXTRA-ARGS, most important first.
BENCHMARKS=(
  "vits16-b128-compile-blocks vits16-b128 150 --compile blocks"
  "vitb16-b64-compile-blocks vitb16-b64 150 --compile blocks"
  "vits16-b128-eager vits16-b128 90 --compile none"
  "vits16-b64-compile-blocks-nosync vits16-b64 150 --compile blocks --forbid_host_sync"
  "vits16-b128-compile-all vits16-b128 150 --compile all"
)
for entry in "${BENCHMARKS[@]}"; do
  read -r name preset limit extra <<<"$entry"
  # shellcheck disable=SC2046  # word splitting of the argument lists is intended
  TORCH_LOGS="${TORCH_LOGS:-recompiles,graph_breaks}" run_part "$name" "$limit" \
    "$PYTHON" benchmarks/bench_train_step.py $(bench_args "$preset") $extra --json "$OUT/$name.json"
done

if "$PYTHON" benchmarks/summarize_train_step.py "$OUT" >"$OUT/table.md" 2>"$OUT/table.log"; then
  log "table ($OUT/table.md):"
  tee -a "$SUMMARY" <"$OUT/table.md"
else
  FAILED=1
  log "FAILED table: $(tail -n 1 "$OUT/table.log")"
fi
log "done in $((SECONDS - START))s$( ((FAILED)) && echo ', with failures (exit status 1)')"
exit "$FAILED"
