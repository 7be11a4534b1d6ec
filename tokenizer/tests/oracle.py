"""Reference answers from HF transformers for the alp-tokenizer parity tests.

Usage: python oracle.py REQUEST.json RESPONSE.json (run offline, see tests/common/mod.rs).

REQUEST = {"jobs": [{"dir": TOKENIZER_DIR,
                     "chat": [{"messages": [...], "tools": [...] | null,
                               "add_generation_prompt": bool, "kwargs": {...}}],
                     "encode": [{"text": str, "add_special_tokens": bool}],
                     "decode": [{"ids": [int], "skip_special_tokens": bool}],
                     "templates": [{"template": str, "messages": [...], "tools": ...,
                                    "add_generation_prompt": bool, "kwargs": {...}}]}]}
RESPONSE = {"jobs": [{"info": {...}, "chat": [{"text": str, "ids": [int]}],
                      "encode": [[int]], "decode": [str],
                      "templates": [{"text": str} | {"error": str}]}]}
All cases go in one call so transformers is imported once per test run.
"""

import json
import sys

from transformers import AutoTokenizer


def ids_of(out):
    # apply_chat_template(tokenize=True) returns a list in 4.x; BatchEncoding if return_dict.
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return [int(i) for i in out]


def run_job(job):
    tok = AutoTokenizer.from_pretrained(job["dir"])
    info = {
        "len": len(tok),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "class": type(tok).__name__,
    }
    chat = []
    for case in job.get("chat", []):
        kwargs = dict(
            tools=case.get("tools"),
            add_generation_prompt=case["add_generation_prompt"],
            **case.get("kwargs", {}),
        )
        text = tok.apply_chat_template(case["messages"], tokenize=False, **kwargs)
        ids = ids_of(tok.apply_chat_template(case["messages"], tokenize=True, **kwargs))
        chat.append({"text": text, "ids": ids})
    encode = [
        tok.encode(c["text"], add_special_tokens=c["add_special_tokens"])
        for c in job.get("encode", [])
    ]
    decode = [
        tok.decode(c["ids"], skip_special_tokens=c["skip_special_tokens"])
        for c in job.get("decode", [])
    ]
    templates = []
    for case in job.get("templates", []):
        try:
            text = tok.apply_chat_template(
                case["messages"],
                chat_template=case["template"],
                tools=case.get("tools"),
                add_generation_prompt=case["add_generation_prompt"],
                tokenize=False,
                **case.get("kwargs", {}),
            )
            templates.append({"text": text})
        except Exception as e:  # the Rust side checks that it fails too
            templates.append({"error": f"{type(e).__name__}: {e}"})
    return {"info": info, "chat": chat, "encode": encode, "decode": decode, "templates": templates}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    response = {"jobs": [run_job(job) for job in request["jobs"]]}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(response, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
