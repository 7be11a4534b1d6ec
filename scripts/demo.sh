#!/usr/bin/env bash
# The quick-start main job (until the learning default of configs/math.toml lands): `alp-rl train` on
# configs/math-tiny.toml (a tiny random model it creates, the arithmetic environment, ALP), then a look
# at the run directory: the metrics table with pandas and a sample from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/alp-rl
OUT=runs/demo
rm -rf "$OUT"
"$BIN" train configs/math-tiny.toml --out "$OUT" --set run.steps=12 --set run.checkpoint_every=6
echo
echo "== $OUT/metrics.parquet (one row per step) =="
.venv/bin/python - "$OUT" <<'PY'
import sys, pandas as pd
run = sys.argv[1]
m = pd.read_parquet(f"{run}/metrics.parquet")
print(m[["step", "reward/mean", "acc", "mismatch/k3", "ratio/q99", "alp/sigma_mean", "grad/norm"]].to_string(index=False))
r = pd.read_parquet(f"{run}/rollouts/step-000012.parquet")
print(f"\n== {run}/rollouts/step-000012.parquet: {len(r)} samples, columns: {', '.join(r.columns)}")
PY
echo
echo "== a completion from the last checkpoint =="
"$BIN" generate --model "$OUT/checkpoints/$(cat "$OUT/checkpoints/latest")/model" --chat \
  --prompt "What is 3 + 4?" --max-new-tokens 16 --seed 0
