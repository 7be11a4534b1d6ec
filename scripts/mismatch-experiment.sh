#!/usr/bin/env bash
# The ALP-vs-corrections experiment: regenerates docs/results.md and its figures (docs/results/) from
# runs it makes itself. One warm start (`alp-rl sft configs/math.toml`), then the five variants of
# configs/experiments/mismatch/ (bypass, tis, mis, token-alp, seq-alp, and bypass-noclip: the check of
# why TIS and MIS fell behind) with seeds 0, 1 and 2 each,
# all from that warm start; then `alp-rl report` over the runs and scripts/results_md.py for the page.
#
#   scripts/mismatch-experiment.sh           # about 45 minutes on a 2-core CPU
#
# Runs land in runs/experiments/mismatch/ (ignored by git). A finished run (its `done` marker) is kept,
# so an interrupted grid continues where it stopped, and a rerun with every run done only regenerates
# the page; FRESH=1 redoes everything. The wall time the page states is that of the invocations that
# trained something, summed in runs/experiments/mismatch/grid_seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=runs/experiments/mismatch
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=(bypass tis mis token-alp seq-alp bypass-noclip)
PY=.venv/bin/python

scripts/setup.sh >/dev/null
cargo build --release -q
BIN=target/release/alp-rl
if [ "${FRESH:-0}" = 1 ]; then
  rm -rf "$OUT"
fi
mkdir -p "$OUT"
start=$(date +%s)
trained=0

warm="$OUT/warm-start"
if [ ! -f "$warm/done" ]; then
  rm -rf "$warm"
  echo "warm start: alp-rl sft configs/math.toml" >&2
  RUST_LOG=warn "$BIN" sft configs/math.toml --out "$warm"
  touch "$warm/done"
  trained=1
fi

runs=()
for variant in "${VARIANTS[@]}"; do
  for seed in $SEEDS; do
    run="$OUT/$variant-seed$seed"
    runs+=("$run")
    if [ -f "$run/done" ]; then
      continue
    fi
    rm -rf "$run"
    echo "$variant, seed $seed" >&2
    RUST_LOG=warn "$BIN" train "configs/experiments/mismatch/$variant.toml" \
      --set "run.seed=$seed" --out "$run"
    touch "$run/done"
    trained=1
  done
done

# Figures of seed 0 (one curve per variant keeps them readable); the table covers every seed.
seed0=()
for variant in "${VARIANTS[@]}"; do
  seed0+=("$OUT/$variant-seed${SEEDS%% *}")
done
rm -rf docs/results
RUST_LOG=warn "$BIN" report "${seed0[@]}" --figures docs/results --out "$OUT/report-seed0.html"
RUST_LOG=warn "$BIN" report "${runs[@]}" --format json --out "$OUT/report.json"
RUST_LOG=warn "$BIN" report "${runs[@]}" --out "$OUT/report.html"
grid="$OUT/grid_seconds"
total=$(cat "$grid" 2>/dev/null || echo 0)
if [ "$trained" = 1 ]; then
  total=$(( total + $(date +%s) - start ))
  echo "$total" > "$grid"
fi
"$PY" scripts/results_md.py "$OUT/report.json" docs/results "$total" > docs/results.md
echo "wrote docs/results.md and docs/results/; the grid took ${total}s (the full report: $OUT/report.html)" >&2
