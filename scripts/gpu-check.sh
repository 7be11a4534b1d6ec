#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md): binaries built on this machine, run on a GPU machine
# with the torch 2.11.0 libraries of that machine's own Python, within 8 minutes on one GPU (the time
# limits of its five checks add up to 8 minutes).
#
#   scripts/gpu-check.sh prepare   here: builds the five binaries into gpu-check/bin (ignored by git,
#                                  about 40 MB, small enough to carry to the device)
#   scripts/gpu-check.sh           on the GPU machine, from the repository root: runs
#                                  1. the CUDA parity tests (rollout/tests/cuda.rs)
#                                  2. the generation benchmark against transformers `generate` on a
#                                     Qwen2.5-0.5B-shaped model in bf16
#                                  3. continuous batching against the chunked schedule (256 requests
#                                     of 8 to 128 tokens, batch 64) on the 8x512 and the 0.5B shape
#                                  4. the learner step benchmark (against PyTorch eager, ALP vs bypass)
#                                  5. 20 steps of `alp-rl train configs/math.toml` on CUDA
#                                  6. the data-parallel learner's NCCL path: 3 steps of
#                                     configs/math-tiny.toml as one rank of an NCCL group
#                                     (alp-rl-nccl: alp-dist built with NCCL, see docs/scale-out.md)
#                                  and prints one summary line per check at the end.
#
# transformers is the reference of checks 2 and 4; where the machine's Python lacks it, those checks
# run our side alone and their summary line says so. PYTHON picks the Python (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=gpu-check/bin

if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p "$BIN"
  executable() { # cargo's JSON messages -> the path of the one executable they built
    python3 -c 'import json, sys
paths = [m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")]
assert len(paths) == 1, paths
print(paths[0])'
  }
  cargo build --release --bin alp-rl
  cp target/release/alp-rl "$BIN/alp-rl"
  cp "$(cargo test --release -p alp-rollout --test cuda --no-run --message-format=json | executable)" "$BIN/cuda-tests"
  cp "$(cargo bench -p alp-rollout --bench generate --no-run --message-format=json | executable)" "$BIN/generate"
  cp "$(cargo bench -p alp-rollout --bench continuous --no-run --message-format=json | executable)" "$BIN/continuous"
  cp "$(cargo bench -p alp-learner --bench learner_step --no-run --message-format=json | executable)" "$BIN/learner_step"
  # alp-rl with NCCL compiled into alp-dist: the CUDA wheels of the venv lack crt/host_config.h and
  # CCCL's nv/target, so their header wheels (matching the CUDA of torch 2.11.0, 13.0) are fetched
  # into a cache; the next plain build rebuilds alp-dist without NCCL.
  headers=$HOME/.cache/alp-rl/cuda-headers
  if [ ! -d "$headers/nvidia/cu13/include/crt" ] || [ ! -d "$headers/nvidia/cu13/include/cccl" ]; then
    mkdir -p "$headers/wheels"
    .venv/bin/python -m pip download --no-deps --quiet "nvidia-cuda-crt==13.0.*" \
      "nvidia-cuda-cccl==13.0.*" -d "$headers/wheels"
    for w in "$headers"/wheels/*.whl; do .venv/bin/python -m zipfile -e "$w" "$headers"; done
  fi
  site=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
  include=$(find "$headers/nvidia" "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name include | paste -sd: -)
  ALP_DIST_NCCL=1 ALP_DIST_CUDA_INCLUDE="$include" cargo build --release --bin alp-rl
  cp target/release/alp-rl "$BIN/alp-rl-nccl"
  strip "$BIN"/*
  du -sh "$BIN"
  echo "carry gpu-check to the GPU machine and run scripts/gpu-check.sh there"
  exit 0
fi

for b in alp-rl alp-rl-nccl cuda-tests generate continuous learner_step; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing: run scripts/gpu-check.sh prepare on the build machine first"; exit 2; }
done
PYTHON=${PYTHON:-python3}
torch_lib=$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "$PYTHON has no torch: set PYTHON to the Python with torch 2.11.0"; exit 2; }
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The benchmarks find their Python reference scripts and interpreter here, not where they were built.
export ALP_WORKSPACE_ROOT=$PWD ALP_ORACLE_PYTHON=$(command -v "$PYTHON")
reference=1
"$PYTHON" -c 'import transformers' 2>/dev/null || reference=0
logs=$(mktemp -d)
summary=()
echo "gpu-check: torch $torch_version ($torch_lib), transformers $([ $reference = 1 ] && echo present || echo absent)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

run_check() { # name, timeout seconds, command...: runs it, keeps its log, prints it as it goes
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "[$name: rc $rc in $((SECONDS - start)) s]"
  return "$rc"
}

# 1. CUDA parity tests.
run_check cuda-parity 60 "$BIN/cuda-tests" --ignored --test-threads 1 --nocapture
rc=$?
result=$(grep -E '^test result' "$logs/cuda-parity.log" | tail -1)
summary+=("cuda parity (rc $rc): ${result:-no test result}")

# 2. Generation on a 0.5B-shaped model in bf16, 16 prompts x 128 new tokens.
if run_check generate 120 env BENCH_DEVICE=cuda BENCH_SHAPE=qwen2.5-0.5b BENCH_DTYPES=bf16 \
  BENCH_VOCABS=151936 BENCH_REFERENCE=$reference BENCH_REPEATS=2 BENCH_ROUNDS=1 "$BIN/generate"; then
  summary+=("generate 0.5B bf16: $(grep -E '^vocab' "$logs/generate.log" | tail -1 | sed 's/  */ /g')")
else
  summary+=("generate 0.5B bf16: FAILED (rc above)")
fi

# 3. Continuous batching vs the chunked schedule, bf16 (target: continuous / chunked >= 1.5x).
if run_check continuous 60 env BENCH_DEVICE=cuda BENCH_MODELS=8x512,qwen2.5-0.5b BENCH_DTYPE=bf16 \
  BENCH_REPEATS=2 "$BIN/continuous"; then
  summary+=("continuous batching: $(grep -E 'continuous / chunked' "$logs/continuous.log" | sed -E 's/  +/ /g; s/.*\(qwen2 ([^,]*),.*continuous \/ chunked ([0-9.]+x).*/\1: \2/' | paste -sd ';' -)")
else
  summary+=("continuous batching: FAILED (rc above)")
fi

# 4. Learner step (needs the PyTorch reference, which needs transformers).
if [ $reference = 1 ]; then
  if run_check learner 90 env BENCH_DEVICE=cuda BENCH_STEPS=10 "$BIN/learner_step"; then
    summary+=("learner step: $(grep -E 'vs pytorch|vs bypass' "$logs/learner.log" | sed 's/  */ /g' | paste -sd ';' -)")
  else
    summary+=("learner step: FAILED (rc above)")
  fi
else
  summary+=("learner step: not run (no transformers in $PYTHON for the PyTorch reference)")
fi

# 5. 20 RL steps of the default on CUDA (a shorter warm start so it fits the budget).
out=$(mktemp -d)/run
if run_check train 150 "$BIN/alp-rl" train configs/math.toml --set model.device=cuda \
  --set run.steps=20 --set sft.steps=300 --set eval.every=10 --out "$out"; then
  summary+=("train 20 steps on CUDA: $(grep -E 'held-out accuracy' "$logs/train.log" | tail -1 | sed 's/.*INFO //')")
else
  summary+=("train 20 steps on CUDA: FAILED (rc above)")
fi

# 6. The NCCL path of the data-parallel learner: one rank is enough to run every collective of a step.
out=$(mktemp -d)/run
if run_check nccl 60 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
  "$BIN/alp-rl-nccl" train configs/math-tiny.toml --set model.device=cuda --set run.steps=3 \
  --out "$out"; then
  summary+=("NCCL rank: $(grep -E 'joined the ranks' "$logs/nccl.log" | tail -1 | sed 's/.*INFO //')")
else
  summary+=("NCCL rank: FAILED (rc above)")
fi

echo
echo "== gpu-check summary =="
printf '%s\n' "${summary[@]}"
