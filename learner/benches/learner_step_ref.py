"""PyTorch eager reference of one learner step for learner/benches/learner_step.rs.

Usage: learner_step_ref.py MODEL_DIR BATCH_JSON THREADS STEPS
Prints one JSON line: {"tokens_per_s": ..., "seconds": ..., "tokens": ...}.

The step is the bypass step of alp-learner written the way verl's dp_actor does it: a transformers
forward over the whole sequence, completion-position logits sliced, f32 log_softmax and gather, entropy
without grad for the metric, token ratio against mu clamped to [-20, 20], clipped surrogate (0.2 / 0.28)
with dual clip 3 for negative advantages, token-mean, backward, clip_grad_norm_(1.0), AdamW(lr 1e-6,
wd 0.01), and the same kind of metrics pulled to the host (ratio quantiles, clip fractions, entropy,
loss, grad norm).
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402

EPS_LOW, EPS_HIGH, DUAL_CLIP = 0.2, 0.28, 3.0
QUANTILES = torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999], dtype=torch.float64)


def main():
    model_dir, batch_path, threads, steps = sys.argv[1:5]
    device = torch.device(sys.argv[5] if len(sys.argv) > 5 else "cpu")
    torch.set_num_threads(int(threads))
    steps = int(steps)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.to(device).train()
    batch = json.load(open(batch_path))
    prompt = torch.tensor(batch["prompt_ids"], device=device)
    completion = torch.tensor(batch["completion_ids"], device=device)
    mu = torch.tensor(batch["mu"], dtype=torch.float32, device=device)
    adv = torch.tensor(batch["advantages"], dtype=torch.float32, device=device).unsqueeze(1)
    ids = torch.cat([prompt, completion], dim=1)
    attn = torch.ones_like(ids)
    p, c = prompt.shape[1], completion.shape[1]
    mask = torch.ones_like(mu)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

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
            metrics = {
                "q": torch.quantile(rd, QUANTILES.to(device)).tolist(),
                "mean": rd.mean().item(),
                "high": ((adv > 0) & (r > 1 + EPS_HIGH)).float().mean().item(),
                "low": ((adv < 0) & (r < 1 - EPS_LOW)).float().mean().item(),
                "entropy": entropy.mean().item(),
                "loss": loss.item(),
                "norm": norm.item(),
            }
        return metrics

    step()  # warm-up, as on the Rust side
    # The fastest of ROUNDS rounds of `steps` steps: a shared machine only ever adds time.
    seconds = float("inf")
    for _ in range(int(sys.argv[6]) if len(sys.argv) > 6 else 1):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = min(seconds, time.perf_counter() - start)
    tokens = ids.numel() * steps
    print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}))


if __name__ == "__main__":
    main()
