#!/usr/bin/env bash
# The quick-start demo (until `alp-rl train` lands): a tiny random model with a character tokenizer,
# then batched sampling with per-token log-probs through the chat template.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/alp-rl
OUT=runs/demo
mkdir -p "$OUT"
"$BIN" new-model --preset tiny --out "$OUT/model" --seed 0
cat > "$OUT/prompts.jsonl" <<'JSONL'
{"prompt": "What is 12 + 30?"}
{"prompt": "Name a prime number."}
{"messages": [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "7 + 8 = ?"}]}
JSONL
"$BIN" generate --model "$OUT/model" --prompts "$OUT/prompts.jsonl" --chat \
  --max-new-tokens 24 --temperature 1.0 --top-p 0.95 --seed 0 --out "$OUT/completions.jsonl"
cat "$OUT/completions.jsonl"
echo "completions written to $OUT/completions.jsonl" >&2
