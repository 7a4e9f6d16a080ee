"""The issue-15 case: SmolLM2 with Llama 3.1-style `rope_freqs.weight` added.

Writes tests/fixtures/rope_freqs/smollm2.json: llama.cpp's (native build) greedy
continuations on an F32 copy of models/SmolLM2-135M-Instruct.Q4_1.gguf with the tensor
`rope_freqs.weight` = 1 + 7·i/31 (i = 0..31) appended, and on the same copy without it. Each
case records `decisive_prefix`: the greedy steps before llama.cpp's top-two margin first falls
below 0.5 (past that, the rounding of any two correct implementations may pick either token).
tests/rope_freqs.rs builds the same file in Rust. Run with the llama.cpp venv:
  LLAMA_CPP_LIB_PATH=~/.cache/ledge/llamacpp/build/bin ~/.cache/ledge/llamacpp/venv/bin/python \
      scripts/reference/gen_rope_freqs_fixture.py
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ["LLAMA_CPP_LIB_PATH"]
sys.path.insert(0, os.path.join(os.path.dirname(LIB), "..", "llama_cpp_python-0.3.36", "vendor",
                                "llama.cpp", "gguf-py"))
from gguf import GGUFReader, GGUFWriter, GGUFValueType  # noqa: E402
from llama_cpp import Llama  # noqa: E402

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. Once upon a time,",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
]
N_GEN = 32


def with_rope_freqs(src, out):
    r = GGUFReader(src)
    w = GGUFWriter(out, arch="llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), t, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), t)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data).reshape(list(reversed([int(d) for d in t.shape]))),
                     raw_dtype=t.tensor_type)
    w.add_tensor("rope_freqs.weight", np.array([1 + 7 * i / 31 for i in range(32)], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def greedy(path):
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0)
    cases = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[len(ids) - 1], np.float32)
        gen, margins = [], []
        for _ in range(N_GEN):
            s = np.sort(last)
            margins.append(float(s[-1] - s[-2]))
            t = int(np.argmax(last))
            gen.append(t)
            llm.eval([t])
            last = np.array(llm.scores[llm.n_tokens - 1], np.float32)
        prefix = next((i for i, m in enumerate(margins) if m < 0.5), N_GEN)
        cases.append({"prompt": p, "ids": ids, "greedy": gen, "margins": margins,
                      "decisive_prefix": prefix})
    return cases


def main():
    src = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    f32 = os.path.join(ROOT, "target", "smollm2.f32.gguf")
    rf = os.path.join(ROOT, "target", "smollm2.rope_freqs.f32.gguf")
    subprocess.run([os.path.join(LIB, "llama-quantize"), "--allow-requantize", src, f32, "F32"],
                   check=True, capture_output=True, env={**os.environ, "LD_LIBRARY_PATH": LIB})
    with_rope_freqs(f32, rf)
    plain, freqs = greedy(f32), greedy(rf)
    for a, b in zip(plain, freqs):
        print(f"differ: {a['greedy'] != b['greedy']}, decisive {b['decisive_prefix']}",
              file=sys.stderr)
    os.makedirs(os.path.join(ROOT, "tests", "fixtures", "rope_freqs"), exist_ok=True)
    with open(os.path.join(ROOT, "tests", "fixtures", "rope_freqs", "smollm2.json"), "w") as f:
        json.dump({"rope_freqs": [1 + 7 * i / 31 for i in range(32)], "with": freqs,
                   "without": plain}, f, indent=1)
    os.remove(f32)
    os.remove(rf)


if __name__ == "__main__":
    main()
