#!/usr/bin/env python3
"""Reference data from llama.cpp for ledge's forward-pass tests.

For each real model and prompt: llama.cpp's token ids, the top-K logits at every prompt
position, and a greedy continuation with the top-K logits at each step. Written to
tests/fixtures/reference/<model-stem>.json. The same again for each model converted to F32
by llama-quantize (<model-stem>.f32.json, shorter continuations): with no quantized kernels
in play, llama.cpp and ledge should agree to rounding, which isolates the architecture code
from the quantized kernels' numerics. Run through scripts/reference/gen_model_fixtures.sh
(needs scripts/reference/build-llamacpp.sh to have run once on this machine).
"""
import json
import os
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPK = 20
N_GEN = 32
N_GEN_F32 = 16

PROMPTS = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The quick brown fox jumps over the lazy dog. Once upon a time,",
        "def fibonacci(n):\n    ",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
        "Water boils at",
    ],
    "gemma-3-270m-q4_k_m.gguf": [
        "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
        "The capital of France is",
        "1, 2, 3, 4, 5,",
        "Once upon a time, in a small village,",
        "Question: What is the largest planet in the solar system?\nAnswer:",
    ],
}


def topk(row):
    idx = np.argsort(-row, kind="stable")[:TOPK]
    return {"ids": [int(i) for i in idx], "logits": [float(row[i]) for i in idx]}


def main():
    out_dir = os.environ.get("FIXTURE_DIR", os.path.join(ROOT, "tests", "fixtures", "reference"))
    os.makedirs(out_dir, exist_ok=True)
    bin_dir = os.environ.get("LLAMA_QUANTIZE_DIR", os.environ["LLAMA_CPP_LIB_PATH"])
    sfx = os.environ.get("FIXTURE_SUFFIX", "")
    for name, prompts in PROMPTS.items():
        stem = os.path.splitext(name)[0]
        path = os.path.join(ROOT, "models", name)
        run(path, prompts, N_GEN, os.path.join(out_dir, f"{stem}{sfx}.json"), name)
        f32 = os.path.join(ROOT, "target", f"{stem}.f32.gguf")
        subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--allow-requantize", path, f32,
                        "F32"], check=True, capture_output=True,
                       env={**os.environ, "LD_LIBRARY_PATH": bin_dir})
        run(f32, prompts, N_GEN_F32, os.path.join(out_dir, f"{stem}.f32{sfx}.json"), name + " (F32)")
        os.remove(f32)


def run(path, prompts, n_gen, out, label):
    if True:
        llm = Llama(model_path=path, n_ctx=512, n_threads=os.cpu_count(), logits_all=True,
                    verbose=False, seed=0)
        cases = []
        for prompt in prompts:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
            prompt_top = [topk(r) for r in scores]
            gen, gen_top = [], []
            last = scores[-1]
            for _ in range(n_gen):
                tok = int(np.argmax(last))
                gen.append(tok)
                gen_top.append(topk(last))
                if llm.token_is_eog(tok) if hasattr(llm, "token_is_eog") else tok == llm.token_eos():
                    break
                llm.eval([tok])
                last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            text = llm.detokenize(gen).decode("utf-8", errors="replace")
            cases.append({"prompt": prompt, "ids": ids, "prompt_top": prompt_top,
                          "greedy": gen, "greedy_top": gen_top, "greedy_text": text})
            print(f"{label}: {len(ids)} prompt tokens -> {text!r}", file=sys.stderr)
        with open(out, "w") as f:
            json.dump({"model": label, "topk": TOPK, "llama_cpp_python": "0.3.36",
                       "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
