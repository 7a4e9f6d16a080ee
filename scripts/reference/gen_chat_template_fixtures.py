#!/usr/bin/env python3
"""llama.cpp's renderings of real chat templates -> tests/fixtures/chat_templates/renders.json.

For each template of data/llamacpp-vocab/templates (scripts/fetch-vocab.sh: the templates
llama.cpp ships with its own tests), starts llama-server with `--jinja --chat-template-file`
on the tiny model of the template's family (tests/fixtures/families/<fam>/<fam>.f32.gguf, so
bos_token / eos_token are that model's), and asks its /apply-template for a few
conversations. tests/chat_templates.rs renders the same with ledge. Needs llama.cpp built by
scripts/reference/build-llamacpp.sh. Run once per machine, never in CI:

    python3 scripts/reference/gen_chat_template_fixtures.py
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOME = os.environ.get("LLAMACPP_HOME", os.path.expanduser("~/.cache/ledge/llamacpp"))
SERVER = os.path.join(HOME, "build", "bin", "llama-server")
TEMPLATES = os.path.join(ROOT, "data", "llamacpp-vocab", "templates")
OUT = os.path.join(ROOT, "tests", "fixtures", "chat_templates", "renders.json")

# template -> the family whose tiny model supplies bos/eos.
FAMILY = {
    "Qwen-Qwen2.5-7B-Instruct": "qwen2",
    "Qwen-Qwen3-0.6B": "qwen3",
    "Qwen-QwQ-32B": "qwen2",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "qwen2",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "llama",
    "meta-llama-Llama-3.1-8B-Instruct": "llama",
    "meta-llama-Llama-3.2-3B-Instruct": "llama",
    "meta-llama-Llama-3.3-70B-Instruct": "llama",
    "microsoft-Phi-3.5-mini-instruct": "phi3",
    "google-gemma-2-2b-it": "gemma2",
    "mistralai-Mistral-Nemo-Instruct-2407": "llama",
    "HuggingFaceTB-SmolLM3-3B": "llama",
}

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello, who are you?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "What is 2+2?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And of Japan? Grüße 🦙 中文\n  indented"}],
     "add_generation_prompt": True},
    # Without the generation prompt (a conversation ending in an assistant message is a
    # prefill to continue in llama-server, not a rendering, so the last turn is the user's).
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "  Tell me a joke.  "}],
     "add_generation_prompt": False},
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main():
    today = time.strftime("%d %b %Y", time.gmtime())
    out = {"date": today, "templates": []}
    for name, fam in FAMILY.items():
        model = os.path.join(ROOT, "tests", "fixtures", "families", fam, f"{fam}.f32.gguf")
        port = free_port()
        proc = subprocess.Popen([SERVER, "-m", model, "--jinja", "--chat-template-file",
                                 os.path.join(TEMPLATES, f"{name}.jinja"), "--port", str(port),
                                 "-c", "512", "-t", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except Exception:
                    if proc.poll() is not None:
                        sys.exit(f"{name}: llama-server exited: {proc.stderr.read().decode()[-2000:]}")
                    time.sleep(0.1)
            cases = []
            for conv in CONVERSATIONS:
                status, body = post(port, "/apply-template", conv)
                case = dict(conv)
                if status == 200:
                    case["prompt"] = body["prompt"]
                else:
                    case["error"] = body.get("error", {}).get("message", str(body))
                cases.append(case)
            out["templates"].append({"name": name, "family": fam, "cases": cases})
            print(name, [("ok" if "prompt" in c else "error") for c in cases])
        finally:
            proc.terminate()
            proc.wait()
    with open(OUT + ".tmp", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    os.replace(OUT + ".tmp", OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
