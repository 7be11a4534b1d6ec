"""PEFT as the reference oracle for alp-rl's LoRA adapters (Rust tests only, never at run time).

Usage: peft_lora.py JOBS OUT. JOBS is JSON {"prompts": [[ids...], ...], "jobs": [...]}, run in order in
one process; OUT gets {"results": [...]}, one entry per job:
  {"op": "make_model", "arch", "out", "tied", "kv_heads", "seed"}
      a tiny random checkpoint (hf_models.make); result {}
  {"op": "make_adapter", "model", "out", "r", "lora_alpha", "target_modules", "use_rslora", "seed",
   "random_b"}
      get_peft_model on the checkpoint with PEFT's own initialisation (torch seed `seed`), B set to
      N(0, 0.1^2) values when random_b (so the adapter changes the logits), saved with save_pretrained;
      result {}
  {"op": "logits", "model", "adapter" (or null), "merged"}
      the logits of each prompt run alone, [prompt][len][vocab], of the base model with the adapter
      loaded by PeftModel.from_pretrained (merged with merge_and_unload when "merged"); result
      {"logits": ...}
  {"op": "merge_save", "model", "adapter", "out"}
      the base model loaded in bf16, the adapter loaded onto it (PEFT keeps the factors in f32) and
      merged with merge_and_unload(), saved with save_pretrained; result {}
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_models  # noqa: E402


def load_base(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def make_adapter(job):
    torch.manual_seed(job["seed"])
    base = load_base(job["model"])
    config = peft.LoraConfig(
        r=job["r"],
        lora_alpha=job["lora_alpha"],
        target_modules=job["target_modules"],
        use_rslora=job["use_rslora"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(base, config)
    if job["random_b"]:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.1)
    model.save_pretrained(job["out"])
    return {}


@torch.no_grad()
def logits(job, prompts):
    model = load_base(job["model"])
    if job.get("adapter"):
        model = peft.PeftModel.from_pretrained(model, job["adapter"]).eval()
        if job.get("merged"):
            model = model.merge_and_unload()
    return {"logits": [model(torch.tensor([p])).logits[0].tolist() for p in prompts]}


@torch.no_grad()
def merge_save(job):
    base = transformers.AutoModelForCausalLM.from_pretrained(job["model"], torch_dtype=torch.bfloat16)
    model = peft.PeftModel.from_pretrained(base, job["adapter"]).merge_and_unload()
    model.save_pretrained(job["out"])
    return {}


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    spec = json.load(open(argv[1]))
    results = []
    for job in spec["jobs"]:
        op = job["op"]
        if op == "make_model":
            hf_models.make(job["arch"], job["out"], tied=job["tied"], kv_heads=job["kv_heads"], seed=job["seed"])
            results.append({})
        elif op == "make_adapter":
            results.append(make_adapter(job))
        elif op == "merge_save":
            results.append(merge_save(job))
        elif op == "logits":
            results.append(logits(job, spec["prompts"]))
        else:
            raise SystemExit(f"unknown op {op}")
    json.dump({"results": results}, open(argv[2], "w"))


if __name__ == "__main__":
    main(sys.argv)
