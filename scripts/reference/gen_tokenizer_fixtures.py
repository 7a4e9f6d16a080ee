#!/usr/bin/env python3
"""Reference data from llama.cpp's tokenizer for ledge's tokenizer tests.

For each real model, and for variants of its tokenizer metadata (another pre-tokenizer name,
flags set or removed; written as vocab-only GGUF copies in a temporary directory): llama.cpp's
token ids for a list of texts under every combination of add_special and parse_special, its
detokenization of those ids, its special ids and end-of-generation set, and the piece and
attributes of a sample of tokens. Written to tests/fixtures/tokenizer/<stem>.json.

Run through scripts/reference/gen_tokenizer_fixtures.sh (needs
scripts/reference/build-llamacpp.sh to have run once on this machine).
"""
import ctypes
import json
import os
import random
import sys
import tempfile

import gguf
import llama_cpp as L

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOL = "SmolLM2-135M-Instruct.Q4_1"
GEMMA = "gemma-3-270m-q4_k_m"

# (fixture stem, model stem, metadata overrides; None removes the key)
VARIANTS = [
    (SMOL, SMOL, {}),
    # SmolLM2's vocabulary behind the other pre-tokenizers: checks their regexes, and the
    # defaults that follow from the name (llama-bpe: add_bos when the GGUF does not say).
    (SMOL + ".pre-llama-bpe", SMOL, {"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": None}),
    (SMOL + ".pre-qwen2", SMOL, {"tokenizer.ggml.pre": "qwen2"}),
    (SMOL + ".pre-gpt-2", SMOL, {"tokenizer.ggml.pre": "gpt-2"}),
    (SMOL + ".pre-default", SMOL, {"tokenizer.ggml.pre": "default", "tokenizer.ggml.add_eos_token": True}),
    (GEMMA, GEMMA, {}),
    # SentencePiece with a space prefix (Llama 2 style), and EOS added.
    (GEMMA + ".space-prefix", GEMMA, {"tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_eos_token": True}),
]

LONG = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness, it was the spring of hope, it was the winter "
    "of despair, we had everything before us, we had nothing before us, we were all going direct "
    "to Heaven, we were all going direct the other way \u2014 in short, the period was so far like "
    "the present period, that some of its noisiest authorities insisted on its being received, "
    "for good or for evil, in the superlative degree of comparison only.\n\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne of England; "
    "there were a king with a large jaw and a queen with a fair face, on the throne of France. "
    "In 1775, the year of Our Lord one thousand seven hundred and seventy-five..."
)

TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    "Hello world",
    "Hello, world!",
    " Hello world",
    "Hello world ",
    "  leading and trailing  ",
    "multiple   spaces    between     words",
    "line one\nline two\n\nline four\r\nwindows\rmac",
    "\ttab\tseparated\tvalues\n\t\tindented twice",
    "1234567",
    "3.14159 and 2,718,281 and 0.5% and 1e-9 and 42nd",
    "phone: +1 (555) 123-4567",
    "don't I'M we'LL they've she'd it's you're I'm",
    "'s 't 're 've 'm 'll 'd",
    "Hello , world ! it ' s ok . I 'm here , you 're there ? they 've gone",
    "punctuation!!! ??? ... ;;; ::: --- ((())) [[]] {{}} <<>> @#$%^&*_+=|\\/~`",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe \u00e5ngstr\u00f6m",
    "e\u0301 (decomposed)",
    "\u0301",
    "a\u0301\u0302\u0303",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002 \u4e2d\u6587\u6587\u672c\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "Hello \U0001f44b\U0001f3fd world \U0001f389\U0001f1eb\U0001f1f7 \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f600\U0001f601\U0001f602",
    "math: \u2211 \u222b \u221a \u221e \u2248 \u2260 \u00b1 \u00d7 \u00f7 \u03c0 \u03b1\u03b2\u03b3",
    "nbsp:\u00a0here, ideographic:\u3000here, line sep:\u2028here, zwsp:\u200bhere",
    "\u2581 literal lower one eighth block \u2581\u2581",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "      \n      \n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
    "text<|im_end|>text<|im_start|>text",
    "<|endoftext|>",
    " <|im_end|> ",
    "<|im_start|",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWrite a poem.<end_of_turn>\n",
    "<eos>",
    "hello<eos>world",
    "<unused0> <unused12>",
    "<start_of_image>",
    "<0x41>",
    "<pad><mask><unk>",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "\t\t\t\t\t\t\t\t\t\t",
    "                                                                ",
    LONG,
]


def random_texts(n, seed):
    """Deterministic mixed-script strings, for coverage of the character classes."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " " * 8 + "\n\t\r",
        "'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`",
        "\u00e0\u00e9\u00ee\u00f5\u00fc\u00e7\u00f1\u00df\u00f8\u00e6",
        "\u4e00\u4e8c\u4e09\u56db\u4e94\u6c34\u706b\u5c71\u5ddd\u65e5\u6708",
        "\u3042\u3044\u3046\u30a2\u30a4\u30a6",
        "\u0430\u0431\u0432\u0433\u0434\u0435\u0436",
        "\u0627\u0628\u062a\u062b\u062c",
        "\u0661\u0662\u0663\u2460\u2461\u00bd\u00b2",
        "\U0001f600\U0001f680\u2764\ufe0f\u2728\U0001f44d\U0001f3fb",
        "\u0300\u0301\u0308\u200d\u200b\u00a0\u2003\u3000",
        "\u2581\u2500\u00a9\u00ae\u2122\u20ac\u00a3",
    ]
    out = []
    for _ in range(n):
        length = rng.randint(1, 40)
        s = []
        while len(s) < length:
            pool = rng.choice(pools)
            run = rng.randint(1, 6)
            s.extend(rng.choice(pool) for _ in range(run))
        out.append("".join(s[:length]))
    return out


RANDOM_TEXTS = random_texts(150, 20240601)


def write_variant(src, overrides, dst):
    """A vocab-only copy of src's metadata with overrides applied (no tensors)."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in overrides:
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), vtype)
    for name, val in overrides.items():
        if val is None:
            continue
        if isinstance(val, bool):
            w.add_key_value(name, val, gguf.GGUFValueType.BOOL)
        elif isinstance(val, str):
            w.add_key_value(name, val, gguf.GGUFValueType.STRING)
        else:
            raise ValueError(f"override {name}: unsupported value {val!r}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


def tokenize(vocab, data, add_special, parse_special):
    n_max = len(data) + 16
    while True:
        buf = (L.llama_token * n_max)()
        n = L.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n >= 0:
            return [int(t) for t in buf[:n]]
        n_max = -n


def detokenize(vocab, ids, remove_special, unparse_special):
    arr = (L.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 8 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = L.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def piece(vocab, tid, special):
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = L.llama_token_to_piece(vocab, tid, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def as_json_bytes(b):
    """Text when the bytes are UTF-8, else {"hex": ...}."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": b.hex()}


def opt(tid):
    return None if tid < 0 else int(tid)


def fixture(vocab, model_file, overrides, with_pieces):
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out = {
        "generator": "scripts/reference/gen_tokenizer_fixtures.py (llama.cpp from llama-cpp-python "
        + L.__version__ + ")",
        "model": model_file,
        "overrides": overrides,
        "n_vocab": n_vocab,
        "bos": opt(L.llama_vocab_bos(vocab)),
        "eos": opt(L.llama_vocab_eos(vocab)),
        "eot": opt(L.llama_vocab_eot(vocab)),
        "add_bos": bool(L.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(L.llama_vocab_get_add_eos(vocab)),
        "eog": [t for t in range(n_vocab) if L.llama_vocab_is_eog(vocab, t)],
        "encode": [],
    }
    cases = [(t, a, p) for t in TEXTS for a in (False, True) for p in (False, True)]
    cases += [(t, False, False) for t in RANDOM_TEXTS]
    for text, add_special, parse_special in cases:
        ids = tokenize(vocab, text.encode("utf-8"), add_special, parse_special)
        out["encode"].append({
            "text": text,
            "add_special": add_special,
            "parse_special": parse_special,
            "ids": ids,
            # llama_detokenize(ids, remove_special, unparse_special) for three settings.
            "detok": as_json_bytes(detokenize(vocab, ids, False, False)),
            "detok_special": as_json_bytes(detokenize(vocab, ids, False, True)),
            "detok_removed": as_json_bytes(detokenize(vocab, ids, True, False)),
        })
    if with_pieces:
        rng = random.Random(7)
        sample = set(range(min(600, n_vocab)))
        sample |= {rng.randrange(n_vocab) for _ in range(2000)}
        sample |= {t for t in range(n_vocab) if L.llama_vocab_get_attr(vocab, t) != 4}  # non-NORMAL
        out["pieces"] = [
            {
                "id": t,
                "attr": int(L.llama_vocab_get_attr(vocab, t)),
                "special": piece(vocab, t, True).hex(),
                "plain": piece(vocab, t, False).hex(),
            }
            for t in sorted(sample)
        ]
    return out


def dump(obj, path):
    """One encode case / piece per line: readable diffs, modest size."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(obj)
        for i, k in enumerate(keys):
            v = obj[k]
            sep = "," if i + 1 < len(keys) else ""
            if isinstance(v, list) and v and isinstance(v[0], dict):
                f.write(f"  {json.dumps(k)}: [\n")
                for j, item in enumerate(v):
                    tail = "," if j + 1 < len(v) else ""
                    f.write("    " + json.dumps(item, ensure_ascii=False) + tail + "\n")
                f.write(f"  ]{sep}\n")
            else:
                f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{sep}\n")
        f.write("}\n")


def main():
    out_dir = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    L.llama_backend_init()
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for stem, model_stem, overrides in VARIANTS:
            if only and stem not in only:
                continue
            model_file = model_stem + ".gguf"
            src = os.path.join(ROOT, "models", model_file)
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: run scripts/fetch-models.sh")
            path = src
            if overrides:
                path = os.path.join(tmp, stem + ".gguf")
                write_variant(src, overrides, path)
            params = L.llama_model_default_params()
            params.vocab_only = True
            model = L.llama_model_load_from_file(path.encode(), params)
            if not model:
                sys.exit(f"llama.cpp could not load {path}")
            vocab = L.llama_model_get_vocab(model)
            fx = fixture(vocab, model_file, overrides, with_pieces=not overrides)
            L.llama_model_free(model)
            dst = os.path.join(out_dir, stem + ".json")
            dump(fx, dst)
            print(f"wrote {dst}: {len(fx['encode'])} encode cases")


if __name__ == "__main__":
    main()
