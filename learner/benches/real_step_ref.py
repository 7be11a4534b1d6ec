"""PyTorch eager reference of one learner step on a real-size model, for learner/benches/real_step.rs.

Usage: real_step_ref.py MODEL_DIR BATCH_JSON MODE THREADS
MODE: full | ckpt | lora | lora-ckpt (ckpt: transformers' gradient_checkpointing_enable(); lora: a
PEFT adapter, rank 16, alpha 32, every linear projection of the decoder, no dropout).

The model loads in f32, runs one warm-up step, prints {"ready": true} and then waits on stdin: each
line "step N" runs N steps and prints one JSON line {"seconds": ..., "cpu_seconds": ...} (wall time,
and the user + system CPU time of the process); "quit" ends. The Rust benchmark
alternates rounds of this process with rounds of its own learner, so a slow spell of the shared machine
falls on both; both sides' model stays loaded between rounds (glibc's free heap is given back after
every round, as the Rust side does).

The step is the bypass step of alp-learner written the way verl's dp_actor does it (as in
learner_step_ref.py): a transformers forward over the whole sequence, completion-position logits
sliced, f32 log_softmax and gather, entropy without grad for the metric, token ratio against mu clamped
to [-20, 20], clipped surrogate (0.2 / 0.28) with dual clip 3 for negative advantages, token-mean,
backward, clip_grad_norm_(1.0), AdamW(lr 1e-6, wd 0.01), and the same kind of metrics pulled to the
host.
"""
import ctypes
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402

EPS_LOW, EPS_HIGH, DUAL_CLIP = 0.2, 0.28, 3.0
QUANTILES = torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999], dtype=torch.float64)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cpu_seconds():
    """User and system CPU seconds of this process, all threads."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def load(model_dir, mode):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    if mode.startswith("lora"):
        import peft

        config = peft.LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none"
        )
        model = peft.get_peft_model(model, config)
    if mode.endswith("ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def main():
    model_dir, batch_path, mode, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    model = load(model_dir, mode)
    batch = json.load(open(batch_path))
    prompt = torch.tensor(batch["prompt_ids"])
    completion = torch.tensor(batch["completion_ids"])
    mu = torch.tensor(batch["mu"], dtype=torch.float32)
    adv = torch.tensor(batch["advantages"], dtype=torch.float32).unsqueeze(1)
    ids = torch.cat([prompt, completion], dim=1)
    attn = torch.ones_like(ids)
    p, c = prompt.shape[1], completion.shape[1]
    mask = torch.ones_like(mu)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    libc = ctypes.CDLL("libc.so.6")

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=attn).logits
        comp = logits[:, p - 1 : p + c - 1, :]
        logp = comp.float().log_softmax(-1)
        lp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
        log_r = (lp - mu).clamp(-20.0, 20.0)
        r = log_r.exp()
        l1 = -adv * r
        l2 = -adv * r.clamp(1 - EPS_LOW, 1 + EPS_HIGH)
        loss = torch.maximum(l1, l2)
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * DUAL_CLIP), loss)
        loss = (loss * mask).sum() / mask.sum()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            rd = r.detach()[mask > 0].double()
            return {
                "q": torch.quantile(rd, QUANTILES).tolist(),
                "mean": rd.mean().item(),
                "high": ((adv > 0) & (r > 1 + EPS_HIGH)).float().mean().item(),
                "low": ((adv < 0) & (r < 1 - EPS_LOW)).float().mean().item(),
                "entropy": entropy.mean().item(),
                "loss": loss.item(),
                "norm": norm.item(),
            }

    first = step()  # warm-up, as on the Rust side
    libc.malloc_trim(0)
    trained = sum(q.numel() for q in params)
    print(json.dumps({"ready": True, "loss": first["loss"], "trained_params": trained}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        n = int(words[1])
        cpu = cpu_seconds()
        start = time.perf_counter()
        for _ in range(n):
            step()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
        libc.malloc_trim(0)
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}), flush=True)


if __name__ == "__main__":
    main()
