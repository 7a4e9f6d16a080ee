#!/usr/bin/env python3
"""Exit 0 if the `gguf` package reads two GGUF files as identical: the same keys in the same
order, with the same value types and values, and the same tensors (name, type, shape, bytes).

Used by tests/real_models.rs as an oracle independent of ledge's own reader."""
import sys

import numpy as np
from gguf import GGUFReader


def fields(r):
    out = []
    for name, f in r.fields.items():
        if name.startswith("GGUF."):  # header pseudo-fields (version, counts)
            continue
        parts = [bytes(np.asarray(f.parts[i]).tobytes()) for i in f.data]
        out.append((name, [int(t) for t in f.types], parts))
    return out


def tensors(r):
    return [(t.name, int(t.tensor_type), [int(d) for d in t.shape], t.data.tobytes()) for t in r.tensors]


def main():
    a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    fa, fb = fields(a), fields(b)
    if fa != fb:
        for x, y in zip(fa, fb):
            if x != y:
                print(f"metadata differs at {x[0]!r} / {y[0]!r}")
                break
        else:
            print(f"metadata counts differ: {len(fa)} vs {len(fb)}")
        return 1
    ta, tb = tensors(a), tensors(b)
    if len(ta) != len(tb):
        print(f"tensor counts differ: {len(ta)} vs {len(tb)}")
        return 1
    for x, y in zip(ta, tb):
        if x != y:
            print(f"tensor {x[0]!r} differs")
            return 1
    print(f"identical: {len(fa)} keys, {len(ta)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
