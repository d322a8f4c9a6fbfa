#!/usr/bin/env bash
# flanx MFU check on one GPU, in about 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repo root; results in $OUT (default benchmarks/results/gpu)
#   TOY=1 bash benchmarks/gpu_check.sh      # CPU dry run of the script: tiny model, seconds per run
#
# Needs jax with CUDA, flax, optax and numpy; flanx need not be installed (PYTHONPATH=src), and
# TensorFlow, seqio and gin are not used. Runs benchmarks/mfu.py for t5_1_1_large and t5_1_1_base
# (and t5_1_1_xl) at 512/128, packed synthetic batches, bf16 activations, with scan and remat choices
# and attention experiments (one relative position bias for all rows; jax.nn.dot_product_attention,
# which picks cuDNN's fused kernel where it can; cuDNN forced), most important first; each run is its
# own process with a time limit, and no new run starts once BUDGET_S seconds (default 450) have
# passed. Batch sizes are for ~78 GiB (H100 80GB); a run that runs out of memory halves its batch
# and retries (mfu.py --oom_retries).
#
# MFU = model FLOPs per step (benchmarks/mfu.py: model_flops, the matmuls of forward + backward,
# recomputation not counted) / step seconds / the device's dense bf16 peak.
# TOY=1 runs three tiny configurations instead (a CPU dry run of the script itself: trace, no-scan,
# jax.nn.dot_product_attention on its XLA path), with a made-up 1 TFLOP/s peak.
# Writes to $OUT: mfu.jsonl (one JSON result per run), table.md, <run>.log, devices.txt, nvidia-smi.txt,
# trace_large/ (jax.profiler trace of one t5_1_1_large step + its HLO). Split that trace by model
# part on a machine with TensorFlow: python -m benchmarks.profile_step --attribute <OUT>/trace_large
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export TF_CPP_MIN_LOG_LEVEL=2
START=$(date +%s)

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import jax; d = jax.devices()[0]; print(jax.__version__, d.platform, d.device_kind, jax.device_count())" \
    > "$OUT/devices.txt" 2>&1
cat "$OUT/devices.txt"

# run NAME LIMIT_S mfu.py-args...
run() {
    local name=$1 limit=$2
    shift 2
    local elapsed=$(( $(date +%s) - START ))
    local left=$(( BUDGET_S - elapsed ))
    if (( left < 45 )); then
        echo "skip $name: ${elapsed}s of the ${BUDGET_S}s budget used"
        echo "{\"status\": \"skipped\", \"reason\": \"time budget\", \"name\": \"$name\"}" >> "$OUT/mfu.jsonl"
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit}s, ${elapsed}s elapsed)"
    timeout --kill-after=10 "$limit" "$PY" -m benchmarks.mfu "$@" --out "$OUT/mfu.jsonl" > "$OUT/$name.log" 2>&1
    local rc=$?
    if (( rc == 124 || rc == 137 )); then
        echo "{\"status\": \"failed\", \"reason\": \"timed out after ${limit}s\", \"name\": \"$name\"}" >> "$OUT/mfu.jsonl"
    fi
    tail -n 3 "$OUT/$name.log"
}

if [[ "${TOY:-0}" == 1 ]]; then  # CPU dry run of this script: toy sizes, made-up 1 TFLOP/s peak
    run toy_scan_dots 240 --model tiny --batch_size 2 --inputs_length 32 --targets_length 16 --steps 1 \
        --windows 2 --warmup 1 --peak_tflops 1 --scan_layers true --remat dots_saveable --trace_dir "$OUT/trace_toy"
    run toy_noscan 240 --model tiny --batch_size 2 --inputs_length 32 --targets_length 16 --steps 1 \
        --windows 2 --warmup 1 --peak_tflops 1 --scan_layers false --remat full --no_dot_count --no_positions
    run toy_jax_attention 240 --model tiny --batch_size 2 --inputs_length 32 --targets_length 16 --steps 1 \
        --windows 2 --warmup 1 --peak_tflops 1 --scan_layers true --remat dots_saveable --no_positions \
        --no_dot_count --attention jax
    "$PY" -m benchmarks.mfu --summarize "$OUT/mfu.jsonl" | tee "$OUT/table.md"
    exit 0
fi

# 1. the measured baseline (16% MFU on H100, docs/performance.md), with a profile of one step
run large_dots        150 --model t5_1_1_large --batch_size 48  --remat dots_saveable --trace_dir "$OUT/trace_large"
# 2. one relative position bias for all rows (same logits): no per-row [B, heads, T, S] bias and its scatter
run large_dots_nopos  120 --model t5_1_1_large --batch_size 48  --remat dots_saveable --no_positions
# 3. jax.nn.dot_product_attention (cuDNN where it can), then cuDNN forced (experiment: bias cast to bf16)
run large_dots_jax    120 --model t5_1_1_large --batch_size 48  --remat dots_saveable --no_positions --attention jax
run large_dots_cudnn  120 --model t5_1_1_large --batch_size 48  --remat dots_saveable --no_positions --attention cudnn
# 4. remat choices
run large_none        120 --model t5_1_1_large --batch_size 32  --remat none --no_positions
run large_full        120 --model t5_1_1_large --batch_size 96  --remat full --no_positions
run base_none         90  --model t5_1_1_base  --batch_size 64  --remat none --no_positions
run xl_dots           150 --model t5_1_1_xl    --batch_size 16  --remat dots_saveable --no_positions
run large_noscan_dots 150 --model t5_1_1_large --batch_size 48  --remat dots_saveable --no_positions \
    --scan_layers false --no_dot_count

"$PY" -m benchmarks.mfu --summarize "$OUT/mfu.jsonl" | tee "$OUT/table.md"
echo "total $(( $(date +%s) - START ))s; results in $OUT"
