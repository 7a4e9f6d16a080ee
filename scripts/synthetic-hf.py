#!/usr/bin/env python3
"""Writes a synthetic llama-shaped Hugging Face folder with random F16 weights, for measuring
`ledge convert` (speed, peak memory) at real layer sizes without a real checkpoint.

usage: synthetic-hf.py OUT_DIR TOKENIZER_DIR [--layers N] [--hidden D] [--ff F] [--heads H] [--kv-heads K]
TOKENIZER_DIR supplies tokenizer.json / tokenizer_config.json (e.g. a `ledge export-hf` of
SmolLM2); the vocabulary size is taken from it. Needs numpy only.
"""
import argparse, json, os, shutil, struct
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("tok")
p.add_argument("--layers", type=int, default=4); p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--ff", type=int, default=11008); p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=8)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(a.tok, f), a.out)
vocab = json.load(open(os.path.join(a.tok, "config.json")))["vocab_size"]
d, hd = a.hidden, a.hidden // a.heads
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
           "intermediate_size": a.ff, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
           "num_key_value_heads": a.kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 4096, "vocab_size": vocab, "tie_word_embeddings": False,
           "hidden_act": "silu", "torch_dtype": "float16"}, open(os.path.join(a.out, "config.json"), "w"))
shapes = [("model.embed_tokens.weight", (vocab, d))]
for i in range(a.layers):
    L = f"model.layers.{i}."
    shapes += [(L + "input_layernorm.weight", (d,)), (L + "post_attention_layernorm.weight", (d,)),
               (L + "self_attn.q_proj.weight", (a.heads * hd, d)), (L + "self_attn.k_proj.weight", (a.kv_heads * hd, d)),
               (L + "self_attn.v_proj.weight", (a.kv_heads * hd, d)), (L + "self_attn.o_proj.weight", (d, a.heads * hd)),
               (L + "mlp.gate_proj.weight", (a.ff, d)), (L + "mlp.up_proj.weight", (a.ff, d)),
               (L + "mlp.down_proj.weight", (d, a.ff))]
shapes += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
header, off = {}, 0
for n, s in shapes:
    size = int(np.prod(s)) * 2
    header[n] = {"dtype": "F16", "shape": list(s), "data_offsets": [off, off + size]}
    off += size
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
rng = np.random.default_rng(0)
with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for n, s in shapes:
        count = int(np.prod(s))
        for start in range(0, count, 1 << 24):  # 16 Mi values at a time
            k = min(1 << 24, count - start)
            f.write((rng.standard_normal(k, dtype=np.float32) * 0.02).astype(np.float16).tobytes())
print(f"{a.out}: {off / 2**30:.2f} GiB of weights, largest tensor {max(int(np.prod(s)) for _, s in shapes) * 2 / 2**20:.0f} MiB (F16)")
