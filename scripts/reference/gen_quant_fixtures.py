#!/usr/bin/env python3
"""Block-format fixtures from the `gguf` package (numpy), one oracle independent of ledge.

Writes into tests/fixtures/quant/:
  src.f32                     16 rows x 256 float32, deliberately varied (fixed seed)
  <T>.gguf-py.q / .deq.f32    gguf's quantize of src.f32 and its dequantize, for the types
                              the package can quantize
  <T>.random.q / .deq.f32     random well-formed blocks and gguf's dequantize of them
  type_sizes.json             {name: [id, block_size, type_size]} from gguf's tables
The ggml C oracle (ggml_quant_ref.c) then adds <T>.ggml.* from the same src.f32.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

OUT = sys.argv[1]
ROWS, N = 16, 256
rng = np.random.default_rng(20261122)


def make_src():
    rows = []
    for r in range(ROWS):
        kind = r % 8
        scale = 10.0 ** rng.uniform(-3, 2)
        if kind == 0:
            x = rng.normal(0, scale, N)
        elif kind == 1:  # a few large outliers
            x = rng.normal(0, 1, N)
            x[rng.integers(0, N, 4)] *= 40
        elif kind == 2:  # an all-zero block and an all-equal block
            x = rng.normal(0, scale, N)
            x[0:32] = 0.0
            x[64:96] = 0.37
        elif kind == 3:
            x = rng.uniform(-scale, scale, N)
        elif kind == 4:  # tiny values
            x = rng.normal(0, 1e-6, N)
        elif kind == 5:  # negative-dominated
            x = -np.abs(rng.normal(0, scale, N))
        elif kind == 6:  # positive-only with an offset (exercises the minimum of _1/K types)
            x = np.abs(rng.normal(3 * scale, scale, N))
        else:  # heavy tails
            x = rng.standard_t(2, N) * scale
        rows.append(x)
    return np.concatenate(rows).astype(np.float32)


QUANTIZABLE = [Q.BF16, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
DEQUANT_ONLY = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K,
                Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS, Q.BF16, Q.F16]
# Byte offsets of the f16 scale fields in each block (ggml-common.h): random bytes there would
# make NaN/Inf scales, which no real file has.
F16_FIELDS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
              Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
              Q.IQ4_NL: [0], Q.IQ4_XS: [0]}


def write(name, arr):
    np.ascontiguousarray(arr).tofile(os.path.join(OUT, name))


def dequant(data, t):
    if t == Q.F16:
        return data.view(np.float16).astype(np.float32)
    return quants.dequantize(data, t).astype(np.float32).reshape(-1)


def main():
    os.makedirs(OUT, exist_ok=True)
    src = make_src()
    write("src.f32", src)
    for t in QUANTIZABLE:
        if t == Q.F16:
            q = src.astype(np.float16).view(np.uint8)
        else:
            q = quants.quantize(src.reshape(ROWS, N), t).reshape(-1).view(np.uint8)
        write(f"{t.name}.gguf-py.q", q)
        write(f"{t.name}.gguf-py.deq.f32", dequant(q, t))
    for t in DEQUANT_ONLY:
        bs, ts = gguf.GGML_QUANT_SIZES[t]
        nblocks = ROWS * N // bs
        if t == Q.F16:
            raw = rng.normal(0, 2, ROWS * N).astype(np.float16).view(np.uint8)
        elif t == Q.BF16:
            raw = (rng.normal(0, 2, ROWS * N).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = rng.integers(0, 256, (nblocks, ts), dtype=np.uint8)
            for off in F16_FIELDS[t]:
                mag = 10.0 ** rng.uniform(-3, 0, nblocks)
                sign = np.where(rng.random(nblocks) < 0.2, -1.0, 1.0)
                raw[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
            raw = raw.reshape(-1)
        write(f"{t.name}.random.q", raw)
        write(f"{t.name}.random.deq.f32", dequant(raw, t))
    sizes = {t.name: [int(t.value), *map(int, gguf.GGML_QUANT_SIZES[t])] for t in Q
             if t in gguf.GGML_QUANT_SIZES}
    with open(os.path.join(OUT, "type_sizes.json"), "w") as f:
        json.dump(sizes, f, indent=1)


if __name__ == "__main__":
    main()
