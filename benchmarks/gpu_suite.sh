#!/usr/bin/env bash
# The GPU figures of docs/performance.md, in two parts that each fit a 10-minute slot:
#   bash benchmarks/gpu_suite.sh speed      # step_time, throughput (+compile), reference_compare
#   bash benchmarks/gpu_suite.sh results    # fast path vs plain fp32 on avdigits (3 seeds), --gpus 1
# Output goes to stdout and, when $OUT is set, to $OUT/<part>.txt. Needs data/avdigits for `results`
# (bogc prepare avdigits --raw ../shared/data --out data/avdigits).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?speed or results}
log=${OUT:-/tmp}/$part.txt
export PYTHONUNBUFFERED=1
work=${BOGC_BENCH_WORK:-/tmp/bogc-bench}
mkdir -p "$work"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log"
case "$part" in
speed)
    python3 benchmarks/step_time.py --steps 10 --rounds 3 \
        --methods joint,uniform,bogc,bogc-ema,mmpareto,ogm_ge,opm,agm,pmr,cggm,gblending,mla,i2m2,mimo,lfm,dimml,mmcosine,cml,mbsd,greedy,reconboost,reconboost-rectify,relearning,inforeg,smv 2>&1 | tee -a "$log"
    python3 benchmarks/throughput.py --work "$work" --methods joint,bogc 2>&1 | tee -a "$log"
    python3 benchmarks/reference_compare.py --work "$work" 2>&1 | tee -a "$log"
    python3 benchmarks/throughput.py --work "$work" --methods joint --variants fast --compile 2>&1 | tee -a "$log"
    ;;
results)
    for method in joint bogc; do
        for variant in fast plain compiled; do
            case $variant in
            fast) extra=() ;;
            plain) extra=(--set train.precision=fp32 --set train.channels_last=false --set train.fused_optimizer=false) ;;
            compiled) extra=(--compile) ;;
            esac
            python3 -m bogc_cli train "recipes/avdigits/$method.yaml" --seeds 0,1,2 --out "$work/results" \
                --set "experiment=$variant" --overwrite "${extra[@]}" 2>&1 | grep -v "^\s*$" | tail -8 | tee -a "$log"
        done
    done
    python3 -m bogc_cli report "$work/results" 2>&1 | tail -30 | tee -a "$log" || true
    python3 -m bogc_cli train recipes/quickstart.yaml --gpus 1 --out "$work/ddp" --overwrite 2>&1 | tail -8 | tee -a "$log"
    ;;
esac
