"""Reference for tests/smollm2.rs: transformers renders each chat with the model's chat template and
generates greedily, in f32, each prompt alone (no padding).

Usage: chat_generate.py MODEL_DIR PROMPTS_JSONL MAX_NEW_TOKENS
PROMPTS_JSONL: one {"messages": [...]} per line. Prints one JSON object per prompt: the rendered text,
its ids (encoded without special tokens, as apply_chat_template does), the new ids (up to and including
the first end-of-sequence token) and their text.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, prompts_path, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    # One thread unless told otherwise: on a 2-core machine that is busy with other work, two OpenMP
    # threads ran this ten times slower (24 s instead of 2 s for 32 tokens).
    torch.set_num_threads(int(os.environ.get("ORACLE_THREADS", "1")))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with open(prompts_path) as f:
        chats = [json.loads(line)["messages"] for line in f if line.strip()]
    for messages in chats:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompt = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, len(ids):].tolist()
        print(json.dumps({
            "text": text,
            "prompt_ids": ids,
            "completion_ids": new,
            "completion": tok.decode(new, skip_special_tokens=True),
            "eos_token_id": model.generation_config.eos_token_id,
        }))


if __name__ == "__main__":
    main()
