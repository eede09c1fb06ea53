#!/usr/bin/env bash
# docs/own_images.md's table: the two commands of "Train on your own images" on each set, one after another, each
# pretraining with --recipe auto and an 8-minute budget, then k-NN with the raw-pixel baseline. Writes
# OUT/<set>.pretrain.log, OUT/<set>.knn.log and a line per set in OUT/times.txt; own_images_table.py makes the table.
#
#   bash benchmarks/small_sets/own_images_table.sh OUT DATA_DIR digits animals textures embedded
#
# DATA_DIR holds the sets of build_small_sets.py; "embedded" is the package's generated set.
set -uo pipefail
out=$1 data=$2
shift 2
mkdir -p "$out"
export HF_HUB_OFFLINE=1
for set in "$@"; do
  folder=$data/$set
  [ "$set" = embedded ] && folder=embedded
  rm -rf "${out:?}/$set"
  t0=$(date +%s.%N)
  dino-hf-pretrain --dataset_name "$folder" --output_dir "$out/$set" --recipe auto --time_budget_minutes 8 \
    > "$out/$set.pretrain.log" 2>&1
  t1=$(date +%s.%N)
  dino-hf-knn-eval --model_name_or_path "$out/$set/export" --dataset_name "$folder" --pixel_baseline \
    > "$out/$set.knn.log" 2>&1
  t2=$(date +%s.%N)
  echo "$set pretrain_s $(echo "$t1 - $t0" | bc) knn_eval_s $(echo "$t2 - $t1" | bc)" >> "$out/times.txt"
done
