"""Oracle for learner/tests/lora_train.rs: the gradient of the policy-gradient loss of one learner step
with respect to a LoRA adapter's factors (and ALP's log-scales), computed independently of alp-rl.

The base model is transformers' own (AutoModelForCausalLM, f32, frozen); the adapter is plain torch: a
forward hook on each adapted nn.Linear adds `scale * (x A^T) B^T` (A `[r, in]`, B `[out, r]` as leaf
tensors with grad); ALP's noise is a forward pre-hook on each perturbed decoder layer adding
`exp(log_sigma_l) * eps_l` to its input hidden state (eps given, since alp-rl draws it from its own
counter-based generator). Each sample runs alone, unpadded. The loss is the clipped surrogate of the
design, written out here: per trained token `d = clamp(lp - mu, -20, 20)`, `r = exp(d)`,
`max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`, summed and divided by the number of trained tokens.

Usage: lora_pg_step.py SPEC.json TENSORS.safetensors OUT_PREFIX

SPEC: {"model": dir, "jobs": [{"name", "scale", "eps_low", "eps_high", "samples": [{"prompt_ids",
"completion_ids", "loss_mask", "mu", "advantage", "row"}], "alp": null | {"log_sigma": [...],
"layer_start": l0}}]}. TENSORS: `{job}/{PEFT name}` factors and `{job}/eps.{layer}` noise
(`[rows, seq, hidden]`, indexed by the sample's "row" and its positions). Writes OUT_PREFIX{job}.safetensors
with `grad/{PEFT name}`, `grad/log_sigma` (with ALP) and `loss`.
"""
import json
import sys

import safetensors.torch as st
import torch
import transformers

PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def lora_hook(a, b, scale):
    def hook(module, args, out):
        x = args[0].float()
        return out + (x @ a.T @ b.T) * scale

    return hook


def noise_hook(state, eps, log_sigma, index):
    def hook(module, args, kwargs):
        row, n = state["row"], state["len"]
        noise = eps[row, :n].unsqueeze(0) * log_sigma[index].exp()
        if args:
            return (args[0] + noise,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"] + noise
        return args, kwargs

    return hook


def run_job(model, job, tensors):
    name = job["name"]
    factors = {
        k[len(name) + 1 :]: t.clone().requires_grad_(True)
        for k, t in tensors.items()
        if k.startswith(name + "/" + PREFIX)
    }
    modules = dict(model.named_modules())
    handles = []
    for key, a in factors.items():
        if key.endswith(A_SUFFIX):
            path = key[len(PREFIX) : -len(A_SUFFIX)]
            b = factors[path_key(path, B_SUFFIX)]
            handles.append(modules[path].register_forward_hook(lora_hook(a, b, job["scale"])))
    state = {"row": 0, "len": 0}
    log_sigma = None
    if job["alp"] is not None:
        alp = job["alp"]
        log_sigma = torch.tensor(alp["log_sigma"], dtype=torch.float32, requires_grad=True)
        for i in range(len(alp["log_sigma"])):
            layer = alp["layer_start"] + i
            eps = tensors[f"{name}/eps.{layer}"]
            hook = noise_hook(state, eps, log_sigma, i)
            handles.append(
                model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
            )
    total, tokens = torch.zeros((), dtype=torch.float32), 0
    for s in job["samples"]:
        ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
        state["row"], state["len"] = s["row"], ids.shape[1]
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        p, n = len(s["prompt_ids"]), len(s["completion_ids"])
        targets = torch.tensor(s["completion_ids"])
        lp = torch.log_softmax(logits[p - 1 : p - 1 + n], -1).gather(1, targets[:, None])[:, 0]
        mask = torch.tensor(s["loss_mask"], dtype=torch.bool)
        ratio = (lp - torch.tensor(s["mu"])).clamp(-20.0, 20.0).exp()
        adv = s["advantage"]
        clipped = ratio.clamp(1.0 - job["eps_low"], 1.0 + job["eps_high"])
        surrogate = torch.maximum(-adv * ratio, -adv * clipped)
        total = total + surrogate[mask].sum()
        tokens += int(mask.sum())
    loss = total / max(tokens, 1)
    loss.backward()
    for h in handles:
        h.remove()
    out = {f"grad/{k}": t.grad.contiguous() for k, t in factors.items()}
    if log_sigma is not None:
        out["grad/log_sigma"] = log_sigma.grad.contiguous()
    out["loss"] = loss.detach().reshape(1)
    return out


def path_key(path, suffix):
    return PREFIX + path + suffix


def main(argv):
    spec_path, tensors_path, out_prefix = argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    tensors = st.load_file(tensors_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        spec["model"], torch_dtype=torch.float32
    ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for job in spec["jobs"]:
        st.save_file(run_job(model, job, tensors), f"{out_prefix}{job['name']}.safetensors")


if __name__ == "__main__":
    main(sys.argv)
