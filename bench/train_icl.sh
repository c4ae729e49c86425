#!/usr/bin/env bash
# Trains and tests each icl_regression variant with the default configs (one seed), prints the
# e(k) table and records wall time and steps/s per variant in runs/icl_regression/train_times.csv.
# Usage: bench/train_icl.sh [variant ...]   (default: all five variants)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin/constrained
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(baseline myopic horizon8 concatenated_baseline concatenated_myopic)
out=runs/icl_regression/train_times.csv
mkdir -p runs/icl_regression
[ -f "$out" ] || echo "variant,steps,fit_seconds,steps_per_second,device,date" > "$out"
steps=$(grep -m1 'max_steps' configs/icl_regression/base.yaml | awk '{print $2}')
dirs=()
for v in "${variants[@]}"; do
  cfg=(--config configs/icl_regression/base.yaml --config "configs/icl_regression/$v.yaml")
  dir="runs/icl_regression/$v"
  rm -rf "$dir"
  start=$(date +%s.%N)
  $bin fit "${cfg[@]}" --trainer.enable_progress_bar false --trainer.enable_model_summary false > /dev/null 2>"$dir.fit.log" \
    || { tail -20 "$dir.fit.log"; exit 1; }
  end=$(date +%s.%N)
  $bin test "${cfg[@]}" --ckpt_path last --verbose false --trainer.enable_progress_bar false > /dev/null 2>"$dir.test.log" \
    || { tail -20 "$dir.test.log"; exit 1; }
  python3 -c "import sys; v, n, s = sys.argv[1], int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3]); \
print(f'{v},{n},{s:.1f},{n / s:.1f},cpu {sys.argv[5]} cores,{sys.argv[6]}')" \
    "$v" "$steps" "$start" "$end" "$(nproc)" "$(date -u +%F)" | tee -a "$out"
  dirs+=("$dir")
done
$bin curves "${dirs[@]}"
