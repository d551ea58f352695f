#!/usr/bin/env bash
# The all-methods comparison (README "All methods compared"): accuracy from the sweep
# recipes/paper/all-methods.yaml (every method's own recipe under recipes/<dataset>/, 3 seeds, on
# mfeat weak3, avdigits-avmnist and avdigits; finished cells are skipped, so an interrupted table
# resumes), then the report, then the step-time ratios to joint from benchmarks/step_time.py: every
# method interleaved in one process per dataset shape, so each ratio shares one machine load (the
# sweep's own step times do not when --jobs is above 1).
#   bash benchmarks/baseline_table.sh [RESULTS_DIR] [JOBS]
# Needs the prepared caches data/avdigits, data/avdigits-avmnist and data/mfeat (see the sweep's header).
set -euo pipefail
out=${1:-results}
jobs=${2:-2}
export OMP_NUM_THREADS=1   # one single-threaded run per core
bogc reproduce recipes/paper/all-methods.yaml --out "$out" --jobs "$jobs"
for preset in mfeat-cpu avmnist-cpu avdigits-cpu; do
  echo "== step time, preset $preset (CPU time per step, ratio to joint)"
  python benchmarks/step_time.py --preset "$preset" --clock cpu
done
