"""Gradients from PyTorch autograd for the backward passes of src/train/grad.rs.

Writes tests/fixtures/train/grad_torch.json: for random inputs (float64 in torch, stored as
float32 values), the outputs and input gradients of

  rms_norm   y = x / sqrt(mean(x^2) + eps) * w, per row
  swiglu     h = silu(g) * u
  linear     y = x W^T + s (x A^T) B^T (W frozen, A and B trained)
  attention  causal softmax(q k^T / sqrt(hd)) v, query heads grouped over fewer KV heads
  distill    alpha T^2 KL(p_T || q_T) + (1 - alpha) CE(next | q), p_T the teacher's top-k
             renormalized at temperature T, q_T = softmax(z / T)

each against the sum of the output times fixed random weights c (so every output counts).
Run with the venv of gen_family_fixtures.sh: ~/.cache/ledge/hfvenv/bin/python this file.
"""
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "grad_torch.json")
torch.manual_seed(17)
D = torch.float64


def r(*shape, scale=1.0):
    # Values exactly representable in f32, so Rust reads the same inputs.
    return (torch.randn(*shape, dtype=D) * scale).float().double()


def lst(t):
    return [float(v) for v in t.detach().flatten().float()]


def rms_norm():
    n, rows, eps = 24, 3, 1e-5
    x, w, c = r(rows, n).requires_grad_(), r(n).requires_grad_(), r(rows, n)
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w
    (y * c).sum().backward()
    return dict(n=n, eps=eps, x=lst(x), w=lst(w), c=lst(c), y=lst(y), dx=lst(x.grad),
                dw=lst(w.grad))


def swiglu():
    g, u, c = r(40, scale=3.0).requires_grad_(), r(40).requires_grad_(), r(40)
    h = torch.nn.functional.silu(g) * u
    (h * c).sum().backward()
    return dict(g=lst(g), u=lst(u), c=lst(c), h=lst(h), dg=lst(g.grad), du=lst(u.grad))


def linear():
    k, m, n, rank, s = 32, 6, 3, 4, 1.5
    x = r(n, k).requires_grad_()
    w = r(m, k)
    a = r(rank, k, scale=0.3).requires_grad_()
    b = r(m, rank, scale=0.3).requires_grad_()
    c = r(n, m)
    y = x @ w.T + s * (x @ a.T) @ b.T
    (y * c).sum().backward()
    return dict(k=k, m=m, n=n, rank=rank, scale=s, x=lst(x), w=lst(w), a=lst(a), b=lst(b),
                c=lst(c), y=lst(y), dx=lst(x.grad), da=lst(a.grad), db=lst(b.grad))


def attention():
    n, nh, nkv, hd = 6, 4, 2, 8
    q = r(n, nh * hd).requires_grad_()
    k = r(n, nkv * hd).requires_grad_()
    v = r(n, nkv * hd).requires_grad_()
    c = r(n, nh * hd)
    qh = q.view(n, nh, hd).transpose(0, 1)
    kh = k.view(n, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
    vh = v.view(n, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
    s = qh @ kh.transpose(1, 2) / hd ** 0.5
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
    out = (p @ vh).transpose(0, 1).reshape(n, nh * hd)
    (out * c).sum().backward()
    return dict(n=n, nh=nh, nkv=nkv, hd=hd, q=lst(q), k=lst(k), v=lst(v), c=lst(c),
                out=lst(out), dq=lst(q.grad), dk=lst(k.grad), dv=lst(v.grad))


def distill():
    v, topk, nxt = 50, 10, 7
    teacher = r(v, scale=2.0)
    logp_full = torch.log_softmax(teacher, -1)
    ids = torch.argsort(-logp_full)[:topk]
    logp = logp_full[ids].float().double()
    cases = []
    for temp, alpha in [(1.0, 0.7), (2.5, 0.7), (3.0, 1.0), (2.0, 0.0)]:
        z = r(v, scale=3.0).requires_grad_()
        p = torch.softmax(logp / temp, -1)
        lq_t = torch.log_softmax(z / temp, -1)
        kl = (p * (torch.log(p) - lq_t[ids])).sum()
        ce = -torch.log_softmax(z, -1)[nxt]
        loss = alpha * temp * temp * kl + (1 - alpha) * ce
        loss.backward()
        cases.append(dict(temperature=temp, alpha=alpha, z=lst(z), loss=float(loss.detach()),
                          dz=lst(z.grad)))
    return dict(ids=[int(i) for i in ids], logp=lst(logp), next=nxt, cases=cases)


def main():
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    ref = {"_source": f"PyTorch {torch.__version__} autograd, float64; "
                      "scripts/reference/gen_grad_fixtures.py",
           "rms_norm": rms_norm(), "swiglu": swiglu(), "linear": linear(), "attention": attention(), "distill": distill()}
    with open(OUT, "w") as f:
        json.dump(ref, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
