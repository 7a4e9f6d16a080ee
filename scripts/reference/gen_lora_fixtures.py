"""LoRA adapters made by the Python ecosystem, and what the references compute with them.

For the tiny llama and phi3 checkpoints of tests/fixtures/families (gen_family_fixtures.py):
a random LoRA made with `peft` (rank 4, alpha 8, on attention and FFN projections; Phi-3's
fused qkv_proj and gate_up_proj included), saved as a PEFT adapter and converted by
llama.cpp's own convert_lora_to_gguf.py (F32) to tests/fixtures/lora/<fam>.lora.gguf.
tests/fixtures/lora/<fam>.json records, for the family's three prompt id lists:

  transformers   float32 logits of the HF model with the adapter (peft): top-20 per position
  llamacpp       the same from llama.cpp (llama-cpp-python, lora_path=) on <fam>.f32.gguf
  base_llamacpp  llama.cpp without the adapter, so a test can tell the adapter mattered

Run via gen_lora_fixtures.sh (once per machine, never in CI).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOME = os.environ.get("LLAMACPP_HOME", os.path.expanduser("~/.cache/ledge/llamacpp"))
LSRC = os.path.join(HOME, "llama_cpp_python-0.3.36", "vendor", "llama.cpp")
FAM = os.path.join(ROOT, "tests", "fixtures", "families")
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")
TOPK = 20
TARGETS = {
    "llama": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def top(row):
    idx = np.argsort(-row, kind="stable")[:TOPK]
    return {"ids": [int(i) for i in idx], "logits": [round(float(row[i]), 6) for i in idx],
            "range": round(float(row.max() - row.min()), 6)}


def make_adapter(fam, hf, adapter_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[fam], lora_dropout=0.0,
                     init_lora_weights=False, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    # peft's non-default init is small; make the adapter's effect clearly visible.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    model.eval()
    model.save_pretrained(adapter_dir)
    return model


def convert(hf, adapter_dir, out):
    code = f"""
import os, sys, runpy
sys.path.insert(0, {LSRC!r}); sys.path.insert(0, os.path.join({LSRC!r}, 'gguf-py'))
sys.argv = ['convert_lora_to_gguf.py', {adapter_dir!r}, '--base', {hf!r}, '--outfile', {out!r}, '--outtype', 'f32']
runpy.run_path(os.path.join({LSRC!r}, 'convert_lora_to_gguf.py'), run_name='__main__')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])


def run_llamacpp(path, lora, ids_list):
    code = f"""
import json, sys
import numpy as np
from llama_cpp import Llama
kw = dict(lora_path={lora!r}) if {lora!r} else {{}}
llm = Llama(model_path={path!r}, n_ctx=128, n_threads=2, logits_all=True, verbose=False, seed=0, **kw)
res = []
for ids in json.loads(sys.stdin.read()):
    llm.reset(); llm.eval(ids)
    res.append(np.array(llm.scores[:len(ids)], dtype=np.float32).tolist())
print(json.dumps(res))
"""
    lib = os.path.join(HOME, "build", "bin")
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": lib}
    py = os.path.join(HOME, "venv", "bin", "python")
    r = subprocess.run([py, "-c", code], input=json.dumps(ids_list), capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])
    return [{"prompt_top": [top(np.array(p, dtype=np.float32)) for p in c]}
            for c in json.loads(r.stdout)]


def run_transformers(model, ids_list):
    import torch

    out = []
    with torch.no_grad():
        for ids in ids_list:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            out.append({"prompt_top": [top(r) for r in logits]})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for fam in sys.argv[1:] or ["llama", "phi3"]:
        hf = os.path.join(FAM, fam, "hf")
        base = os.path.join(FAM, fam, f"{fam}.f32.gguf")
        with open(os.path.join(FAM, fam, "reference.json")) as f:
            ids = json.load(f)["ids"]
        gguf = os.path.join(OUT, f"{fam}.lora.gguf")
        with tempfile.TemporaryDirectory() as tmp:
            model = make_adapter(fam, hf, tmp)
            convert(hf, tmp, gguf)
        ref = {"family": fam, "llama_cpp_python": "0.3.36", "topk": TOPK, "rank": 4,
               "alpha": 8, "targets": TARGETS[fam], "ids": ids,
               "transformers": run_transformers(model, ids),
               "llamacpp": run_llamacpp(base, gguf, ids),
               "base_llamacpp": run_llamacpp(base, None, ids)}
        with open(os.path.join(OUT, f"{fam}.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        t = ref["transformers"][0]["prompt_top"][-1]
        l = ref["llamacpp"][0]["prompt_top"][-1]
        print(f"{fam}: last-position top ids transformers {t['ids'][:3]} llama.cpp {l['ids'][:3]}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
