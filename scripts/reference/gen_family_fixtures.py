"""Tiny random-weight checkpoints of every family ledge runs, and what the references say.

For each family: a Hugging Face checkpoint built with `transformers` (hidden size 64, two
layers, a few hundred tokens of a tokenizer trained here on the repository's README, so each
file stays small), written to tests/fixtures/families/<fam>/hf/; converted by llama.cpp's own
convert_hf_to_gguf.py to <fam>.f32.gguf and <fam>.f16.gguf; quantized by llama-quantize to
<fam>.q8_0.gguf and <fam>.q4_k_m.gguf. reference.json records, for three prompts:

  ids                      llama.cpp's token ids (BOS added as the file says)
  transformers             float32 logits of the HF model: top-20 per prompt position and a
                           16-token greedy continuation (with per-step top-2 margins)
  llamacpp[variant]        the same from llama.cpp for f32/f16/q8_0/q4_k_m (n_ctx 128)
  llamacpp_generic[...]    the same from llama.cpp's generic build (its own rounding spread)
  (phi3) llamacpp_longctx  f32 with n_ctx 512 > original_max_position_embeddings 256: the
                           LongRoPE long factors
  (gemma2) transformers_qpas_head_dim
                           transformers with query_pre_attn_scalar = head_dim, which is what
                           llama.cpp (and the GGUF, that has no key for it) computes

Random weights give flat distributions; the weights are initialised with std 0.25 so greedy
steps are decisive (the margins are in the file). Run via gen_family_fixtures.sh (once per
machine, never in CI).
"""
import json
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOME = os.environ.get("LLAMACPP_HOME", os.path.expanduser("~/.cache/ledge/llamacpp"))
LSRC = os.path.join(HOME, "llama_cpp_python-0.3.36", "vendor", "llama.cpp")
OUT = os.path.join(ROOT, "tests", "fixtures", "families")
TOPK = 20
N_GEN = 16
STD = 0.25

PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and the model runs on the CPU",
    "ledge runs compressed language models: quantization, calibration and pruning",
    "Edge boxes serve apps. Memory is tight; speed matters. 12345 tokens per second?",
]

BPE_SPECIALS = {
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


def corpus():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def bpe_tokenizer(hf_dir, specials, bos, eos):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(hf_dir)
    return tok.get_vocab_size()


def spm_tokenizer(hf_dir, specials):
    import sentencepiece as spm

    txt = os.path.join(hf_dir, "corpus.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(corpus())
    spm.SentencePieceTrainer.train(
        input=txt, model_prefix=os.path.join(hf_dir, "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, user_defined_symbols=specials, split_digits=True,
        add_dummy_prefix=True, minloglevel=2)
    os.remove(txt)
    os.remove(os.path.join(hf_dir, "tokenizer.vocab"))
    return 400


def build(fam, hf_dir):
    """The HF checkpoint of one family; returns (model, pre-tokenizer name or None)."""
    import torch
    import transformers as tf

    torch.manual_seed(1234)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5,
                  initializer_range=STD, max_position_embeddings=1024)
    pre = None
    if fam == "llama":
        n = bpe_tokenizer(hf_dir, BPE_SPECIALS["llama"], "<|begin_of_text|>", "<|end_of_text|>")
        cfg = tf.LlamaConfig(vocab_size=n, bos_token_id=n - 3, eos_token_id=n - 2,
                             rope_theta=500000.0, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64}, **common)
        # the specials were added first: ids 0..2
        cfg.bos_token_id, cfg.eos_token_id = 0, 1
        model, pre = tf.LlamaForCausalLM(cfg), "llama-bpe"
    elif fam in ("qwen2", "qwen3", "qwen3moe"):
        n = bpe_tokenizer(hf_dir, BPE_SPECIALS["qwen"], None, "<|im_end|>")
        # Qwen checkpoints pad the embedding rows past the tokenizer (llama.cpp adds [PADn])
        n_pad = n + 64
        pre = "qwen2"
        if fam == "qwen2":
            cfg = tf.Qwen2Config(vocab_size=n_pad, rope_theta=1e6, tie_word_embeddings=False,
                                 eos_token_id=2, **common)
            model = tf.Qwen2ForCausalLM(cfg)
        elif fam == "qwen3":
            cfg = tf.Qwen3Config(vocab_size=n_pad, rope_theta=1e6, tie_word_embeddings=True,
                                 head_dim=32, eos_token_id=2, **common)
            model = tf.Qwen3ForCausalLM(cfg)
        else:
            cfg = tf.Qwen3MoeConfig(vocab_size=n_pad, rope_theta=1e6, tie_word_embeddings=False,
                                    head_dim=16, num_experts=8, num_experts_per_tok=2,
                                    moe_intermediate_size=32, norm_topk_prob=True,
                                    decoder_sparse_step=1, mlp_only_layers=[], eos_token_id=2,
                                    **common)
            model = tf.Qwen3MoeForCausalLM(cfg)
    elif fam == "phi3":
        n = spm_tokenizer(hf_dir, ["<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"])
        half = 64 // 4 // 2
        short = [1.0 + 0.05 * i for i in range(half)]
        long = [1.0 + 0.9 * i for i in range(half)]
        common["max_position_embeddings"] = 1024
        cfg = tf.Phi3Config(vocab_size=n, original_max_position_embeddings=256,
                            rope_scaling={"type": "longrope", "short_factor": short,
                                          "long_factor": long},
                            rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, sliding_window=None, **common)
        model = tf.Phi3ForCausalLM(cfg)
    elif fam == "gemma2":
        n = spm_tokenizer(hf_dir, ["<start_of_turn>", "<end_of_turn>"])
        common["rms_norm_eps"] = 1e-6
        cfg = tf.Gemma2Config(vocab_size=n, head_dim=16, query_pre_attn_scalar=24,
                              sliding_window=8, attn_logit_softcapping=4.0,
                              final_logit_softcapping=8.0, hidden_activation="gelu_pytorch_tanh",
                              bos_token_id=1, eos_token_id=2, pad_token_id=0,
                              attn_implementation="eager", **common)
        model = tf.Gemma2ForCausalLM(cfg)
    else:
        raise SystemExit(f"unknown family {fam}")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms (and biases): around their neutral value, not flat
                p.add_(torch.randn_like(p) * 0.1)
    model = model.float().eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    return model, pre


def convert(hf_dir, out, outtype, pre):
    code = f"""
import os, sys, runpy
sys.path.insert(0, {LSRC!r}); sys.path.insert(0, os.path.join({LSRC!r}, 'gguf-py'))
import conversion.base as b
pre = {pre!r}
if pre:
    b.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ['convert_hf_to_gguf.py', {hf_dir!r}, '--outfile', {out!r}, '--outtype', {outtype!r}]
runpy.run_path(os.path.join({LSRC!r}, 'convert_hf_to_gguf.py'), run_name='__main__')
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def top(row):
    idx = np.argsort(-row, kind="stable")[:TOPK]
    return {"ids": [int(i) for i in idx], "logits": [round(float(row[i]), 6) for i in idx],
            "range": round(float(row.max() - row.min()), 6)}


def margin(row):
    s = np.sort(row)
    return round(float(s[-1] - s[-2]), 6)


def run_llamacpp(lib, path, ids_list, n_ctx=128, kv_f32=False):
    code = f"""
import json, sys, os
import numpy as np
from llama_cpp import Llama
kw = dict(type_k=0, type_v=0) if {kv_f32!r} else {{}}
llm = Llama(model_path={path!r}, n_ctx={n_ctx}, n_threads=2, logits_all=True, verbose=False, seed=0, **kw)
res = []
for ids in json.loads(sys.stdin.read()):
    llm.reset(); llm.eval(ids)
    prompt = np.array(llm.scores[:len(ids)], dtype=np.float32)
    last = prompt[-1]; gen = []; steps = []
    for _ in range({N_GEN}):
        t = int(np.argmax(last)); gen.append(t); steps.append(last.tolist())
        llm.eval([t]); last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    res.append(dict(prompt=prompt.tolist(), greedy=gen, steps=steps))
print(json.dumps(res))
"""
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": lib}
    py = os.path.join(HOME, "venv", "bin", "python")
    r = subprocess.run([py, "-c", code], input=json.dumps(ids_list), capture_output=True,
                       text=True, env=env, check=True)
    out = []
    for c in json.loads(r.stdout):
        steps = [np.array(s, dtype=np.float32) for s in c["steps"]]
        out.append({"prompt_top": [top(np.array(p, dtype=np.float32)) for p in c["prompt"]],
                    "greedy": c["greedy"], "margins": [margin(s) for s in steps]})
    return out


def tokenize(lib, path, prompts):
    code = f"""
import json, sys
from llama_cpp import Llama
llm = Llama(model_path={path!r}, vocab_only=True, verbose=False)
print(json.dumps([llm.tokenize(p.encode(), add_bos=True, special=True) for p in json.loads(sys.stdin.read())]))
"""
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": lib}
    py = os.path.join(HOME, "venv", "bin", "python")
    r = subprocess.run([py, "-c", code], input=json.dumps(prompts), capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(r.stdout)


def run_transformers(model, ids_list):
    import torch

    out = []
    with torch.no_grad():
        for ids in ids_list:
            seq = list(ids)
            logits = model(torch.tensor([seq])).logits[0].float().numpy()
            prompt_top = [top(r) for r in logits]
            gen, margins = [], []
            last = logits[-1]
            for _ in range(N_GEN):
                t = int(np.argmax(last))
                gen.append(t)
                margins.append(margin(last))
                seq.append(t)
                last = model(torch.tensor([seq])).logits[0, -1].float().numpy()
            out.append({"prompt_top": prompt_top, "greedy": gen, "margins": margins})
    return out


def main():
    fams = sys.argv[1:] or ["llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma2"]
    native = os.path.join(HOME, "build", "bin")
    generic = os.path.join(HOME, "build-generic", "bin")
    for fam in fams:
        d = os.path.join(OUT, fam)
        hf = os.path.join(d, "hf")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(hf)
        model, pre = build(fam, hf)
        files = {}
        for v in ["f32", "f16"]:
            files[v] = os.path.join(d, f"{fam}.{v}.gguf")
            convert(hf, files[v], v, pre)
        for v, ty in [("q8_0", "Q8_0"), ("q4_k_m", "Q4_K_M")]:
            files[v] = os.path.join(d, f"{fam}.{v}.gguf")
            subprocess.run([os.path.join(native, "llama-quantize"), files["f32"], files[v], ty],
                           check=True, capture_output=True,
                           env={**os.environ, "LD_LIBRARY_PATH": native})
        ids = tokenize(native, files["f32"], PROMPTS)
        ref = {"family": fam, "llama_cpp_python": "0.3.36", "topk": TOPK, "prompts": PROMPTS,
               "ids": ids, "transformers": run_transformers(model, ids),
               "llamacpp": {}, "llamacpp_generic": {}}
        for v, path in files.items():
            ref["llamacpp"][v] = run_llamacpp(native, path, ids)
            ref["llamacpp_generic"][v] = run_llamacpp(generic, path, ids)
        ref["llamacpp_kv_f32"] = run_llamacpp(native, files["f32"], ids, kv_f32=True)
        if fam == "phi3":
            ref["llamacpp_longctx"] = run_llamacpp(native, files["f32"], ids, n_ctx=512)
        if fam == "gemma2":
            model.config.query_pre_attn_scalar = 16
            for layer in model.model.layers:
                layer.self_attn.scaling = 16 ** -0.5
            ref["transformers_qpas_head_dim"] = run_transformers(model, ids)
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        t, l = ref["transformers"], ref["llamacpp"]["f32"]
        agree = sum(a["greedy"] == b["greedy"] for a, b in zip(t, l))
        mins = min(min(c["margins"]) for c in l)
        print(f"{fam}: transformers vs llama.cpp f32 greedy equal {agree}/3, min margin {mins:.3f}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
