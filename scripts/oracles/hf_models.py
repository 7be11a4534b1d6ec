"""HF transformers as the reference oracle for the policy model and the generation engine.

Used by the Rust tests (never at run time). Subcommands:
  make ARCH OUT [--tied] [--kv-heads N] [--seed S] [--run CASES RESULT]
                                                     tiny random checkpoint via save_pretrained (f32),
                                                     then optionally `run` on it in the same process
  run MODEL CASES OUT                                per-row unpadded logits and greedy generations
  warp IN OUT                                        transformers' logits warpers on given logits
CASES is JSON: {"prompts": [[ids...], ...], "new_tokens": N}. OUT gets JSON with, per prompt,
"logits" ([len][vocab]), "greedy_ids" and "greedy_logprobs" (log-softmax of the raw logits).
warp IN is JSON {"logits": [[...], ...], "cases": [{"temperature", "top_p", "top_k"}, ...]}; OUT gets
{"probs": [case][row][vocab]}: softmax after TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper in the order `generate` applies them.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402


def make(arch, out, tied=False, kv_heads=2, seed=0, vocab=256):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        # Larger than HF's 0.02 so greedy argmax margins are wide and ties cannot flip tokens.
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(rope_theta=10000.0, **common)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=32, rope_theta=1000000.0, **common)
        cls = transformers.Qwen3ForCausalLM
    elif arch == "llama":
        cfg = transformers.LlamaConfig(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        )
        cls = transformers.LlamaForCausalLM
    else:
        raise SystemExit(f"unknown arch {arch}")
    model = cls(cfg).eval()
    # Random non-trivial norm weights and biases, so those code paths are really compared.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)


@torch.no_grad()
def run(model_dir, cases_path, out_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    cases = json.load(open(cases_path))
    results = []
    for prompt in cases["prompts"]:
        ids = torch.tensor([prompt])
        logits = model(ids).logits[0]
        entry = {"logits": logits.tolist()}
        n = cases.get("new_tokens", 0)
        if n:
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=True,
            )
            new_ids = gen.sequences[0, len(prompt):]
            lps = [
                torch.log_softmax(step_logits[0].float(), -1)[tok].item()
                for step_logits, tok in zip(gen.logits, new_ids)
            ]
            entry["greedy_ids"] = new_ids.tolist()
            entry["greedy_logprobs"] = lps
        results.append(entry)
    json.dump({"results": results}, open(out_path, "w"))


def warp(in_path, out_path):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    spec = json.load(open(in_path))
    logits = torch.tensor(spec["logits"], dtype=torch.float32)
    out = []
    for case in spec["cases"]:
        warpers = LogitsProcessorList()
        if case["temperature"] != 1.0:
            warpers.append(TemperatureLogitsWarper(case["temperature"]))
        if case["top_k"] > 0:
            warpers.append(TopKLogitsWarper(case["top_k"]))
        if case["top_p"] < 1.0:
            warpers.append(TopPLogitsWarper(case["top_p"]))
        ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
        scores = warpers(ids, logits.clone())
        out.append(torch.softmax(scores, -1).tolist())
    json.dump({"probs": out}, open(out_path, "w"))


def main(argv):
    cmd = argv[1]
    if cmd == "make":
        args = argv[2:]
        arch, out = args[0], args[1]
        opts = {"tied": "--tied" in args}
        if "--kv-heads" in args:
            opts["kv_heads"] = int(args[args.index("--kv-heads") + 1])
        if "--seed" in args:
            opts["seed"] = int(args[args.index("--seed") + 1])
        make(arch, out, **opts)
        if "--run" in args:
            i = args.index("--run")
            run(out, args[i + 1], args[i + 2])
    elif cmd == "run":
        run(argv[2], argv[3], argv[4])
    elif cmd == "warp":
        warp(argv[2], argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
