"""transformers `generate` timing for the engine benchmark (rollout/benches/generate.rs).

Usage: bench_generate.py MODEL_DIR PROMPTS_JSON DTYPE THREADS NEW_TOKENS REPEATS [DEVICE]
Prints one JSON line: {"tokens_per_s": ..., "seconds": ..., "new_tokens": ...} for the fastest of
REPEATS timed runs (best-of-N, as for our engine, because a shared machine adds noise, never speed).
Sampling at temperature 1 with no stop token, so every row generates exactly NEW_TOKENS tokens.
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402


def main():
    model_dir, prompts_path, dtype, threads, new_tokens, repeats = sys.argv[1:7]
    device = torch.device(sys.argv[7] if len(sys.argv) > 7 else "cpu")
    torch.set_num_threads(int(threads))
    new_tokens = int(new_tokens)
    kind = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=kind).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    prompts = json.load(open(prompts_path))
    ids = torch.tensor(prompts, device=device)  # equal lengths: no padding needed
    mask = torch.ones_like(ids)
    torch.manual_seed(0)
    with torch.inference_mode():
        # Warm-up (allocations, kernel selection) outside the timed region, as for our engine.
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=True, top_k=0, top_p=1.0)
        seconds = float("inf")
        for _ in range(int(repeats)):
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = min(seconds, time.perf_counter() - start)
    generated = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    print(json.dumps({"tokens_per_s": generated / seconds, "seconds": seconds, "new_tokens": generated}))


if __name__ == "__main__":
    main()
