"""The distillation student's whole backward, from PyTorch autograd through transformers.

For the tiny llama checkpoint of tests/fixtures/families/llama/hf (float32): LoRA pairs
(rank 4, alpha 8) on v_proj, o_proj, gate_proj and down_proj of every layer, with random A and
B, and trainable RMSNorm weights. For the first prompt of the fixture's reference.json and
random teacher targets per position (top-5 ids and log-probabilities, the tail mass at T, the
next token), the loss

  sum over positions of  alpha T^2 KL(p_T || q_T) + (1 - alpha) CE(next | q)

where p_T is the top 5 at T scaled to 1 - tail plus the tail as one bucket, and q_T is the
student's softmax(z / T) summed over the same partition (src/train/grad.rs, distill_loss).
Writes tests/fixtures/train/student_torch.json: the pairs (in GGUF layout: A as r x k rows,
B as m x r rows), the targets, the loss, and autograd's gradient of every A, B and norm weight.
q and k are left out: the GGUF converter permutes their rows for ggml's RoPE, which would
make the layouts differ (finite differences cover them in tests/distill.rs).

Run with the venv of gen_family_fixtures.sh: ~/.cache/ledge/hfvenv/bin/python this file.
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAM = os.path.join(ROOT, "tests", "fixtures", "families", "llama")
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "student_torch.json")
RANK, ALPHA, T, A_KD, K = 4, 8.0, 2.0, 0.7, 5
TARGETS = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down"}


def lst(t):
    return [float(v) for v in t.detach().flatten().float()]


def main():
    torch.manual_seed(23)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(FAM, "hf"),
                                                 torch_dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with open(os.path.join(FAM, "reference.json")) as f:
        ids = json.load(f)["ids"][0]
    n, nv = len(ids), model.config.vocab_size
    s = ALPHA / RANK
    pairs = []
    for il, layer in enumerate(model.model.layers):
        for path, name in TARGETS.items():
            mod = layer.get_submodule(path)
            m, k = mod.weight.shape
            a = (torch.randn(RANK, k) * 0.2).float().requires_grad_()
            b = (torch.randn(m, RANK) * 0.2).float().requires_grad_()
            pairs.append((il, name, mod, a, b))
    for (_, _, mod, a, b) in pairs:
        def hook(module, inp, out, a=a, b=b):
            return out + s * (inp[0] @ a.t()) @ b.t()
        mod.register_forward_hook(hook)
    norms = []
    for il, layer in enumerate(model.model.layers):
        for nm, mod in (("attn_norm", layer.input_layernorm),
                        ("ffn_norm", layer.post_attention_layernorm)):
            mod.weight.requires_grad_(True)
            norms.append((f"blk.{il}.{nm}.weight", mod.weight))
    model.model.norm.weight.requires_grad_(True)
    norms.append(("output_norm.weight", model.model.norm.weight))

    # Teacher targets: a random top 5 per position with log-probabilities and tail mass at T.
    targets = []
    for t in range(n):
        tid = torch.randperm(nv)[:K]
        tz = torch.randn(nv, dtype=torch.float64) * 2.0
        lp = torch.log_softmax(tz, -1)
        soft = torch.softmax(tz / T, -1)
        mask = torch.ones(nv, dtype=torch.bool)
        mask[tid] = False
        targets.append(dict(ids=[int(i) for i in tid], logp=[float(lp[i]) for i in tid],
                            tail=float(soft[mask].sum()), next=int(torch.randint(nv, ()))))

    z = model(input_ids=torch.tensor([ids])).logits[0].double()
    loss = torch.zeros((), dtype=torch.float64)
    for t, tg in enumerate(targets):
        tid = torch.tensor(tg["ids"])
        logp = torch.tensor(tg["logp"], dtype=torch.float64)
        tail = tg["tail"]
        p = torch.softmax(logp / T, -1) * (1.0 - tail)
        lq = torch.log_softmax(z[t] / T, -1)
        q_tail = 1.0 - lq[tid].exp().sum()
        kl = (p * (p.log() - lq[tid])).sum() + tail * (torch.log(torch.tensor(tail)) - q_tail.log())
        ce = -torch.log_softmax(z[t], -1)[tg["next"]]
        loss = loss + A_KD * T * T * kl + (1.0 - A_KD) * ce
    loss.backward()
    out = dict(ids=ids, rank=RANK, alpha=ALPHA, temperature=T, distill_alpha=A_KD,
               targets=targets, loss=float(loss),
               pairs=[dict(layer=il, target=name, a=lst(a), b=lst(b), da=lst(a.grad),
                           db=lst(b.grad)) for (il, name, _, a, b) in pairs],
               norms=[dict(name=nm, w=lst(w), dw=lst(w.grad)) for nm, w in norms])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f)
    print(f"wrote {OUT}: loss {float(loss):.6f}")


if __name__ == "__main__":
    main()
