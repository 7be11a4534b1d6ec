#!/usr/bin/env bash
# The quick-start main job: `alp-rl train configs/math.toml` (a tiny model it creates, a supervised warm
# start on worked arithmetic answers, then RL with ALP, held-out evaluation before and after), then a
# look at the run directory: the metrics tables with pandas and a sample from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/alp-rl
OUT=runs/demo
rm -rf "$OUT"
"$BIN" train configs/math.toml --out "$OUT"
echo
echo "== $OUT/sft/metrics.parquet (the warm start) and $OUT/metrics.parquet (RL, eval at step 0 and every 25 steps) =="
.venv/bin/python - "$OUT" <<'PY'
import sys, pandas as pd
run = sys.argv[1]
s = pd.read_parquet(f"{run}/sft/metrics.parquet")
print(s[["step", "sft/loss", "sft/tokens", "sft/lr"]].to_string(index=False))
m = pd.read_parquet(f"{run}/metrics.parquet")
e = m[m["eval/accuracy"].notna()]
print(e[["step", "eval/accuracy", "eval/pass@4"]].to_string(index=False))
print(m[m["step"] > 0][["step", "reward/mean", "mismatch/k3", "ratio/q99", "alp/sigma_mean"]].tail(5).to_string(index=False))
PY
echo
echo "== a completion from the last checkpoint =="
"$BIN" generate --model "$OUT/checkpoints/$(cat "$OUT/checkpoints/latest")/model" --chat \
  --prompt "3 + 4 - 2 =" --max-new-tokens 40 --seed 0
