#!/usr/bin/env bash
# The round-2 GPU benchmark in one run: LLaMA-7B + CLIP ViT-L/14 + SAM ViT-H with random weights built on
# the GPU in bf16 (no checkpoint needed), the fast (eager), graphs (static shapes + CUDA graphs) and
# baseline paths in one process, a click vs a query and a warmed vs a cold first query
# (benchmarks/bench_refine.py), brush RLE on smooth masks (CPU), then the graphs path with SAM's encoder
# compiled. Writes JSON under docs/ (bench-round2-7b.json, bench-round2-refine.json, bench-round2-rle.json,
# bench-round2-7b-compiled.json).
#
#   bash benchmarks/gpu_round2.sh              # on a GPU machine; two steps, < 12 minutes in all
#   bash benchmarks/gpu_round2.sh --tiny DIR   # the same steps at tiny size on the CPU, JSON into DIR
#
# Step 1 (~6 min on an H100): every path, batch sizes 1/8/16/32, n=50 latencies. Step 2 (what is left of
# BUDGET_S, default 690 s): graphs path with torch.compile on SAM's encoder (compiles 3 batch sizes).
# Each step has its own timeout, so step 1's JSON survives a slow compile in step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUDGET_S=${BUDGET_S:-690}
if [[ "${1:-}" == "--tiny" ]]; then
    OUT_DIR=${2:?usage: gpu_round2.sh --tiny OUT_DIR}
    COMMON=(--size tiny --device cpu --image-size 96x128 --repeats 4)
    STEP1=(--batch-sizes 1,4 --buckets 1,2,4)
    STEP2=(--batch-sizes 1,4 --buckets 1,4)
    REFINE=(--size tiny --device cpu --dtype float32 --repeats 2 --image-size 96x128)
    BUDGET_S=${BUDGET_S_TINY:-300}
else
    OUT_DIR=docs
    COMMON=(--size 7b --device cuda --dtype bfloat16 --repeats 50)
    STEP1=(--batch-sizes 1,8,16,32 --buckets 1,2,4,8,16,32)
    STEP2=(--batch-sizes 1,8,32 --buckets 1,8,32)
    REFINE=(--size 7b --device cuda --dtype bfloat16 --repeats 20 --image-size 768x1024)
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
fi
mkdir -p "$OUT_DIR"
started=$(date +%s)
echo "== step 1: fast, graphs, baseline"
timeout --signal=INT "$((BUDGET_S * 6 / 10))" "$PYTHON" -m cores.bench "${COMMON[@]}" "${STEP1[@]}" \
    --json "$OUT_DIR/bench-round2-7b.json"
echo "== click vs query, warmed vs cold first query"
timeout --signal=INT "$((BUDGET_S * 15 / 100))" "$PYTHON" benchmarks/bench_refine.py "${REFINE[@]}" \
    --json "$OUT_DIR/bench-round2-refine.json"
echo "== brush RLE on smooth masks (CPU)"
"$PYTHON" benchmarks/bench_rle.py --sdk-repeats 1 --json "$OUT_DIR/bench-round2-rle.json"
left=$((BUDGET_S - ($(date +%s) - started)))
if ((left < 60)); then
    echo "== step 2 skipped: ${left} s of the budget left"
    exit 0
fi
echo "== step 2: graphs path with SAM's encoder compiled (${left} s left)"
timeout --signal=INT "$left" "$PYTHON" -m cores.bench "${COMMON[@]}" "${STEP2[@]}" --compile-sam \
    --skip-baseline --json "$OUT_DIR/bench-round2-7b-compiled.json"
echo "== done: $OUT_DIR/bench-round2-7b.json $OUT_DIR/bench-round2-7b-compiled.json"
