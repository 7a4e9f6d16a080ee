#!/usr/bin/env python3
"""Dequantized slices of real tensors, by the `gguf` package: for each model and each tensor
type in it, the first 4096 values (or fewer) of one tensor, plus per-model tensor counts.
Writes tests/fixtures/quant/real/. Run: target/refenv/bin/python scripts/reference/gen_real_fixtures.py
"""
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "quant", "real")
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
LIMIT = 4096


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"models": {}, "slices": []}
    for name in MODELS:
        r = GGUFReader(os.path.join(ROOT, "models", name))
        counts = {}
        picked = {}
        for t in r.tensors:
            ty = t.tensor_type.name
            counts[ty] = counts.get(ty, 0) + 1
            # Prefer a 2-D weight with at least LIMIT elements for each type.
            if len(t.shape) == 2 and t.n_elements >= LIMIT and ty not in picked:
                picked[ty] = t
        for t in r.tensors:
            picked.setdefault(t.tensor_type.name, t)
        manifest["models"][name] = {"tensor_count": len(r.tensors), "types": counts}
        for ty, t in sorted(picked.items()):
            deq = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            n = min(LIMIT, deq.size)
            stem = os.path.splitext(name)[0]
            fname = f"{stem}.{t.name}.deq.f32"
            deq[:n].tofile(os.path.join(OUT, fname))
            manifest["slices"].append({"model": name, "tensor": t.name, "type": ty,
                                       "elements": int(n), "file": fname})
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
