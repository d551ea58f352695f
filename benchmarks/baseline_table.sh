#!/usr/bin/env bash
# The all-methods comparison (README "Baselines"): every recipe under recipes/<dataset>/ -- joint,
# uniform, unimodal-*, bogc and each baseline -- 3 seeds on avdigits and mfeat weak3, one run at a
# time (the step-time column is only meaningful when runs do not share the CPU), then the report.
# Runs that already have an eval.json are skipped, so an interrupted table resumes.
#   bash benchmarks/baseline_table.sh [RESULTS_DIR] [DATASETS] [METHODS]
# Needs the prepared caches data/avdigits and data/mfeat (see README).
set -euo pipefail
out=${1:-results/baselines}
datasets=${2:-"mfeat avdigits"}
methods=${3:-""}
for d in $datasets; do
  for recipe in recipes/"$d"/*.yaml; do
    name=$(basename "$recipe" .yaml)
    if [[ -n "$methods" && " $methods " != *" $name "* ]]; then continue; fi
    for seed in 0 1 2; do
      label=$d; [[ $d == mfeat ]] && label=mfeat-weak3
      if [[ -f "$out/baselines/$label/$name/seed$seed/eval.json" ]]; then continue; fi
      bogc train "$recipe" --out "$out" --set experiment=baselines --seeds "$seed" --overwrite  # an unfinished run restarts
    done
  done
done
bogc report "$out"
