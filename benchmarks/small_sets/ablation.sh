#!/usr/bin/env bash
# One row of docs/own_images.md's table of choices: `--recipe auto` with a short budget and some flags changed, on
# several sets, one after another. Appends "NAME SET random -> trained (steps) teacher entropy wall" to OUT/results.txt.
#
#   bash benchmarks/small_sets/ablation.sh OUT DATA_DIR NAME MINUTES "digits animals" [flags...]
#   bash benchmarks/small_sets/ablation.sh /tmp/ablate /data/sets koleo 3 "digits animals" \
#       --config_overrides "...,koleo_loss_weight=0.1"
#
# DATA_DIR holds the sets of build_small_sets.py; "embedded" is the package's generated set.
set -uo pipefail
out=$1 data=$2 name=$3 minutes=$4 sets=$5
shift 5
mkdir -p "$out"
export HF_HUB_OFFLINE=1
for set in $sets; do
  folder=$data/$set
  [ "$set" = embedded ] && folder=embedded
  run=$out/$name-$set
  rm -rf "${run:?}"
  t0=$(date +%s)
  dino-hf-pretrain --dataset_name "$folder" --output_dir "$run" --recipe auto --time_budget_minutes "$minutes" \
    --no_progress_bar "$@" > "$run.log" 2>&1
  knn=$(grep -o "random init (step 0) .*" "$run.log")
  entropy=$(grep -o "teacher_entropy [0-9.]*" "$run.log" | tail -1)
  echo "$name $set $knn $entropy $(( $(date +%s) - t0 ))s" >> "$out/results.txt"
done
