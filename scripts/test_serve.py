#!/usr/bin/env python3
"""`ledge serve` driven by the official `openai` Python package (scripts/test.sh runs it).

Starts target/release/ledge serve on a free loopback port with an API key, then checks:
models.list; a greedy chat whose answer equals `ledge run` on the same rendered prompt;
the same chat streamed (deltas join to the same text, usage in the last chunk); a greedy
completion (plain and streamed) equal to `ledge run`; seeded sampling repeats; and that the
client raises its usual exceptions for a bad key and a bad parameter. Ends with SIGTERM and
expects a clean exit.

    python scripts/test_serve.py [--ledge target/release/ledge] [--model models/...gguf]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "test-key-123"
CTX = 1024


def start_server(ledge, model):
    proc = subprocess.Popen(
        [ledge, "serve", "-m", model, "--port", "0", "--ctx", str(CTX), "--parallel", "2",
         "--api-key", KEY],
        stderr=subprocess.PIPE, text=True)
    addr = None
    for line in proc.stderr:
        sys.stderr.write("[server] " + line)
        if line.startswith("listening on http://"):
            addr = line.split()[2][len("http://"):]
            break
    if addr is None:
        raise SystemExit("the server exited before listening")
    log = []

    def drain():
        for line in proc.stderr:
            log.append(line)
            sys.stderr.write("[server] " + line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.time() > deadline:
            raise SystemExit("the server never became ready")
        time.sleep(0.05)
    return proc, addr, log


def ledge_run(ledge, model, prompt, n):
    """`ledge run`'s greedy continuation (its stdout echoes the prompt, then a newline)."""
    out = subprocess.run(
        [ledge, "run", "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "-c", str(CTX)],
        capture_output=True, text=True, check=True).stdout
    assert out.startswith(prompt) and out.endswith("\n"), repr(out)
    return out[len(prompt):-1]


def chatml(system, user):
    """SmolLM2's chat template (ChatML) rendered for one system and one user turn."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what.splitlines()[0][:100]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ledge", default=os.path.join(ROOT, "target/release/ledge"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    a = ap.parse_args()

    # The expected prompt below is ChatML: make sure that is the model's template.
    import gguf
    reader = gguf.GGUFReader(a.model)
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    assert "<|im_start|>" in template, "not a ChatML model: the expected prompt would be wrong"

    proc, addr, log = start_server(a.ledge, a.model)
    try:
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key=KEY, max_retries=0)

        models = client.models.list()
        ids = [m.id for m in models.data]
        check(ids == ["SmolLM2-135M-Instruct.Q4_1"], f"models.list -> {ids}")
        model = ids[0]

        system, user = "You are a helpful assistant.", "What are the three primary colors?"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        n = 48
        r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=n)
        answer = r.choices[0].message.content
        expected = ledge_run(a.ledge, a.model, chatml(system, user), n)
        check(answer == expected,
              f"greedy chat equals ledge run on the rendered prompt: {answer!r}\n"
              f"vs {expected!r}")
        check(r.choices[0].message.role == "assistant" and r.object == "chat.completion",
              "chat completion object")
        u = r.usage
        check(u.total_tokens == u.prompt_tokens + u.completion_tokens
              and 0 < u.completion_tokens <= n, f"usage {u}")
        check(r.choices[0].finish_reason == ("length" if u.completion_tokens == n else "stop"),
              f"finish_reason {r.choices[0].finish_reason} with {u.completion_tokens} tokens")

        chunks = list(client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=n, stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(text == answer, f"streamed chat joins to the same answer ({len(chunks)} chunks)")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        check(finishes[-1] == r.choices[0].finish_reason and not any(finishes[:-1]),
              "only the last chunk has a finish_reason")
        check(chunks[-1].usage is not None
              and chunks[-1].usage.completion_tokens == u.completion_tokens,
              "usage chunk at the end of the stream")

        prompt = "The three primary colors are"
        c = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=24)
        expected = ledge_run(a.ledge, a.model, prompt, 24)
        check(c.choices[0].text == expected,
              f"greedy completion equals ledge run: {c.choices[0].text!r} vs {expected!r}")
        streamed = "".join(ch.choices[0].text for ch in client.completions.create(
            model=model, prompt=prompt, temperature=0, max_tokens=24, stream=True))
        check(streamed == expected, "streamed completion joins to the same text")

        sampled = [client.chat.completions.create(
            model=model, messages=messages, temperature=0.9, seed=42, max_tokens=24
        ).choices[0].message.content for _ in range(2)]
        check(sampled[0] == sampled[1], "the same seed gives the same sampled answer")

        try:
            openai.OpenAI(base_url=f"http://{addr}/v1", api_key="wrong",
                          max_retries=0).models.list()
            check(False, "a wrong key is refused")
        except openai.AuthenticationError as e:
            check(e.status_code == 401 and e.code == "invalid_api_key",
                  "a wrong key raises AuthenticationError (401)")
        try:
            client.chat.completions.create(model=model, messages=messages, temperature=5)
            check(False, "temperature 5 is refused")
        except openai.BadRequestError as e:
            body = e.body or {}
            check(e.status_code == 400 and body.get("param") == "temperature",
                  f"temperature=5 raises BadRequestError naming the param: {json.dumps(body)}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    check(rc == 0, f"the server exits cleanly on SIGTERM (rc {rc})")
    print("test_serve.py: all checks passed")


if __name__ == "__main__":
    main()
