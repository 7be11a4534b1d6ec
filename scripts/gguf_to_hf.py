"""Converts a GGUF checkpoint into an HF model directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja), with transformers 5.x (+ gguf, accelerate) dequantising it.

Usage: gguf_to_hf.py GGUF_FILE OUT_DIR [--dtype bf16|f32]

Run by scripts/get-smollm2.sh in its own venv (transformers 5.x; the repo's .venv pins 4.57.6, whose
GGUF tokenizer conversion for SmolLM2 writes a post-processor that prepends <|im_start|> to every
encoding and copies the whole GGUF in as tokenizer.model). OUT_DIR must not exist yet: the caller writes
to a temporary directory and renames it. Recipe: ../shared/reference/real_models.md section 1a.
"""
import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def make_portable(out):
    """Lets transformers 4.x (the repo's oracle venv pins 4.57.6) read the directory as well as 5.x: 4.x
    knows no `rope_parameters` (it would fall back to rope_theta 10000) and no `TokenizersBackend` class.
    Both keys are what the official SmolLM2 checkpoints and transformers 4.x write; 5.x reads them too."""
    path = os.path.join(out, "config.json")
    with open(path) as f:
        config = json.load(f)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        tok_config = json.load(f)
    if tok_config.get("tokenizer_class") == "TokenizersBackend":
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w") as f:
        json.dump(tok_config, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args()
    src_dir, fname = os.path.split(os.path.abspath(args.gguf))
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.float32)
    state, config = gguf_model.state_dict(), gguf_model.config
    # save_pretrained refuses a GGUF-loaded model ("quantized with gguf and is not serializable"):
    # build a plain module from the config without the quantization entry and copy the weights over.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(gguf_model)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the tied head may be absent from the GGUF's tensors.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        sys.exit(f"gguf_to_hf: weights do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(dtype).save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    # The GGUF itself is no part of an HF directory (transformers 4.x copied it in as tokenizer.model).
    stray = os.path.join(args.out, "tokenizer.model")
    if os.path.exists(stray):
        os.remove(stray)
    make_portable(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"gguf_to_hf: {model.__class__.__name__}, {n:,} parameters, {args.dtype}, vocabulary {len(tok):,}")


if __name__ == "__main__":
    main()
